"""Faults of the PostgreSQL server itself, on a server of this module's own
(tests/brokers.py): crashed (``pg_ctl stop -m immediate``) mid-job and restarted, and the
sink's session terminated (``pg_terminate_backend``) during PREPARE TRANSACTION and during
COMMIT PREPARED; and every server process frozen (SIGSTOP) for 15 s, then thawed.

The job is tests/pgjobs.py (Range → events (insert) and per-key totals (upsert), both
exactly-once through PREPARE TRANSACTION). After each test the tables equal a failure-free
run's (pgjobs.check), and the witness, ``pg_prepared_xacts``, holds nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from brokers import OwnPostgres, wait_for
from test_postgres import PgJob

RECORDS = 20_000


@pytest.fixture(scope="module")
def server() -> Iterator[OwnPostgres]:
    s = OwnPostgres()
    s.start()
    yield s
    s.remove()


@pytest.fixture
def conn(server: OwnPostgres) -> Iterator[psycopg.Connection[Any]]:
    server.start()  # idempotent: a test that failed mid-crash leaves it down
    c = psycopg.connect(server.dsn, autocommit=True)
    yield c
    c.close()


def _finish(job: PgJob, server: OwnPostgres) -> dict[str, Any]:
    code, result = job.wait(timeout=300)
    assert code == 0, job.tail()
    assert result is not None
    job.reconnect()  # the test's session may have died with the server
    job.check_exact()
    assert server.prepared() == [], "pg_prepared_xacts is not empty after the job"
    return result


@pytest.mark.timeout(300)
def test_server_crashed_mid_job_and_restarted(server: OwnPostgres, tmp_path: Path,
                                              conn: psycopg.Connection[Any]) -> None:
    job = PgJob(tmp_path, server.dsn, conn, "--rate", "3000", records=RECORDS)
    job.start()
    # the sink must be at work (a checkpoint committed), however slow the start under load
    wait_for(lambda: any((tmp_path / "ckpt").rglob("_metadata"))
             or job.proc.poll() is not None, 120, "a first checkpoint")
    assert job.proc is not None and job.proc.poll() is None, job.tail()
    server.kill()
    time.sleep(2.0)
    server.start()
    result = _finish(job, server)
    assert result["restarts"] >= 1, "losing the server went unnoticed"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["sink.pre_commit@subtask=0", "sink.commit@subtask=1"])
def test_session_terminated_during_prepare_and_commit_prepared(
        server: OwnPostgres, tmp_path: Path, conn: psycopg.Connection[Any], fault: str) -> None:
    """The sink pauses just before PREPARE TRANSACTION / COMMIT PREPARED; meanwhile every
    session of the job is terminated; then the sink sends it on a dead session."""
    token = tmp_path / "fault.token"
    job = PgJob(tmp_path, server.dsn, conn, "--rate", "3000", records=RECORDS)
    job.start(env={"ONCEFLOW_FAULT": fault, "ONCEFLOW_FAULT_TOKEN": str(token),
                   "ONCEFLOW_FAULT_ACTION": "pause"})
    wait_for(lambda: token.exists() or job.proc.poll() is not None, 120, f"fault {fault}")
    assert token.exists(), job.tail()
    killed = server.terminate_sessions("onceflow:")
    assert killed, "no session of the job to terminate"
    Path(f"{token}.go").touch()
    result = _finish(job, server)
    assert result["restarts"] >= 1, f"terminated sessions {killed} went unnoticed"


@pytest.mark.timeout(300)
def test_server_frozen_mid_job_then_thawed(server: OwnPostgres, tmp_path: Path,
                                           conn: psycopg.Connection[Any]) -> None:
    """Every process of the server stopped (SIGSTOP) for 15 s: sessions stay open and
    statements hang instead of failing, as with a frozen VM. After SIGCONT the job must
    finish by itself with exact tables and no prepared transaction left."""
    import os
    import signal

    import psutil

    job = PgJob(tmp_path, server.dsn, conn, "--rate", "3000", records=RECORDS)
    job.start()
    wait_for(lambda: any((tmp_path / "ckpt").rglob("_metadata"))
             or job.proc.poll() is not None, 120, "a first checkpoint")
    assert job.proc is not None and job.proc.poll() is None, job.tail()
    pid = int((server.dir / "postmaster.pid").read_text().split()[0])
    frozen = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    for p in frozen:
        os.kill(p, signal.SIGSTOP)
    try:
        time.sleep(15.0)
        still_running = job.proc.poll() is None  # the freeze caught the job at work
    finally:
        for p in frozen:
            os.kill(p, signal.SIGCONT)
    assert still_running, job.tail()
    _finish(job, server)


@pytest.mark.timeout(300)
def test_server_down_when_the_job_starts_is_waited_for_as_the_restart_strategy_allows(
        server: OwnPostgres, tmp_path: Path, conn: psycopg.Connection[Any]) -> None:
    """The server crashes after the tables exist and before the job starts: run() must not
    fail at its start-up checks (a Flink job restarts too), but log that it cannot reach
    the server, try again, and once the server is back run to exact tables."""
    import re

    job = PgJob(tmp_path, server.dsn, conn, "--attempts", "200", "--delay", "1",
                records=RECORDS)
    server.kill()
    job.start()
    wait_for(lambda: "cannot start yet" in job.tail() or job.proc.poll() is not None, 120,
             "the job's first failed start-up check")
    assert job.proc is not None and job.proc.poll() is None, job.tail()
    assert re.search(r"cannot connect to PostgreSQL at 127\.0\.0\.1:\d+/\w+.*trying again "
                     r"in 1\.0s", job.tail()), job.tail()
    time.sleep(2.0)
    assert job.proc.poll() is None, job.tail()
    server.start()
    _finish(job, server)
