"""PostgresSink against a real PostgreSQL 15 (``scripts/postgres start``).

Crash tests run ``pgjobs.py`` (a keyed running total upserted into one table and an
append-only event table) as a subprocess and kill its workers at seeded random moments and
at the named points of the commit protocol, kill the driver, or crash PostgreSQL itself;
afterwards both tables must equal a failure-free run's exactly, and ``pg_prepared_xacts``
must hold nothing of the job. Each test uses its own tables and flow name.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgjobs
import psycopg
import pytest
from jobproc import JobProcess, assert_no_orphans, kill_randomly
from psycopg import sql

import onceflow as of
from onceflow.connectors.postgres import (
    GID_MAX,
    PostgresAutocommitSink,
    _session_prefix,
    check_max_prepared_transactions,
)
from onceflow.postgres import PostgresSink, PostgresTxn, gid_prefix
from onceflow.testing import check_sink_exactly_once

ROOT = Path(__file__).resolve().parent.parent
JOB = str(Path(__file__).with_name("pgjobs.py"))
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261127"))
RECORDS = 60_000


def _pg(cmd: str) -> str:
    p = subprocess.run([str(ROOT / "scripts" / "postgres"), cmd], capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"scripts/postgres {cmd} failed (exit {p.returncode}):\n"
                    f"{p.stdout}\n{p.stderr}")
    return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""


@pytest.fixture(scope="module")
def dsn() -> str:
    out = _pg("start")
    if not out.startswith("postgresql://"):
        pytest.fail(f"scripts/postgres start printed no DSN: {out!r}")
    return out


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    c = psycopg.connect(dsn, autocommit=True)
    yield c
    c.close()


def _rollback_prepared(conn: psycopg.Connection[Any], flow: str) -> None:
    for gid in pgjobs.prepared_of(conn, flow):
        conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


class PgJob(JobProcess):
    """One flow (unique name and tables) run as ``pgjobs.py`` subprocesses."""

    def __init__(self, tmp: Path, dsn: str, conn: psycopg.Connection[Any], *extra: str,
                 records: int = RECORDS, env: dict[str, str] | None = None) -> None:
        super().__init__(tmp, env)
        tag = uuid.uuid4().hex[:8]
        self.flow, self.totals, self.events = f"pgtest-{tag}", f"totals_{tag}", f"events_{tag}"
        self.dsn, self.conn, self.records = dsn, conn, records
        self.extra = list(extra)
        self._own: list[psycopg.Connection[Any]] = []
        pgjobs.create_tables(conn, self.totals, self.events)

    def command(self) -> list[str]:
        return [JOB, "--dsn", self.dsn, "--flow", self.flow, "--totals", self.totals,
                "--events", self.events, "--ckpt", str(self.tmp / "ckpt"),
                "--records", str(self.records), *self.extra]

    def check_exact(self) -> None:
        problems = pgjobs.check(self.conn, self.flow, self.totals, self.events, self.records)
        assert not problems, "\n".join(problems) + f"\nlog:\n{self.tail()}"

    def reconnect(self) -> None:
        """A new session (after the server was restarted)."""
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        self._own.append(self.conn)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with psycopg.connect(self.dsn, autocommit=True) as c:
            _rollback_prepared(c, self.flow)  # a failed test must not leave locks
            pgjobs.drop_tables(c, self.totals, self.events)
        for c in self._own:
            c.close()


@pytest.fixture
def make_job(tmp_path: Path, dsn: str,
             conn: psycopg.Connection[Any]) -> Iterator[Any]:
    jobs: list[PgJob] = []

    def make(*extra: str, **kw: Any) -> PgJob:
        j = PgJob(tmp_path, dsn, conn, *extra, **kw)
        jobs.append(j)
        return j

    yield make
    for j in jobs:
        j.cleanup()


def _finish_ok(job: PgJob) -> dict[str, Any]:
    code, result = job.wait()
    assert code == 0, job.tail()
    assert result is not None
    assert result["events_in"] == job.records and result["totals_in"] == job.records
    return result


# --- crash tests -------------------------------------------------------------------------
def test_failure_free_run_is_exact(make_job: Any) -> None:
    job = make_job("--rate", "50000")
    job.start()
    result = _finish_ok(job)
    assert result["restarts"] == 0
    job.check_exact()


_kill_randomly = kill_randomly


@pytest.mark.parametrize("case", ["a", "b"])
def test_random_worker_kills_leave_tables_exact(make_job: Any, case: str) -> None:
    rng = random.Random(f"{SEED}-pg-{case}")
    job = make_job("--rate", "8000")
    job.start()
    delivered = _kill_randomly(job, rng, kills=3)
    result = _finish_ok(job)
    assert delivered >= 1, "the job ended before any kill landed; make it longer"
    assert result["restarts"] >= 1
    job.check_exact()


NAMED_POINTS = [
    # prepared, checkpoint 3 not complete: recovery rolls the prepared transaction back
    ("sink.after_pre_commit@checkpoint=3,subtask=0", "rolled back 1 prepared"),
    # checkpoint 2 complete, COMMIT PREPARED not yet sent: recovery commits it
    ("sink.before_commit@checkpoint=2,subtask=1", "left prepared by an earlier attempt"),
    # COMMIT PREPARED done, the worker dies before it records that: recovery's COMMIT
    # PREPARED finds no such transaction (42704), which counts as committed
    ("sink.mid_commit@subtask=0", "was already committed"),
]


@pytest.mark.parametrize(("point", "log_says"), NAMED_POINTS)
def test_worker_killed_at_named_point(make_job: Any, tmp_path: Path, point: str,
                                      log_says: str) -> None:
    token = tmp_path / "fault-fired"
    job = make_job("--rate", "15000",
                   env={"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    result = _finish_ok(job)
    assert token.exists(), f"fault {point} never fired"
    assert result["restarts"] == 1
    assert log_says in job.tail(200_000), job.tail()
    job.check_exact()


# The server crashed mid-job: tests/test_postgres_faults.py, on a server of its own (this
# module's server is shared with other test runs, which a crash would break).


_assert_gone = assert_no_orphans


def test_driver_killed_after_checkpoint_complete_then_restored(make_job: Any,
                                                              tmp_path: Path) -> None:
    """Checkpoint 3 is complete, no sink heard of it: its transactions stay prepared until
    the restored job commits them."""
    token = tmp_path / "fault-fired"
    job = make_job("--rate", "15000")
    proc = job.start(env={"ONCEFLOW_FAULT": "coordinator.after_metadata_rename@checkpoint=3",
                          "ONCEFLOW_FAULT_TOKEN": str(token)})
    pids: list[int] = []
    while proc.poll() is None:
        pids = [w.pid for w in job.workers()] or pids
        time.sleep(0.02)
    assert proc.returncode == -signal.SIGKILL, job.tail()
    _assert_gone(pids)
    assert pgjobs.prepared_of(job.conn, job.flow), "checkpoint 3's transactions not prepared"
    job.start("--restore", "latest")
    result = _finish_ok(job)
    assert result["restored_from"] and result["restored_from"].endswith("chk-3")
    job.check_exact()


def test_restore_at_another_parallelism(make_job: Any, tmp_path: Path) -> None:
    """Checkpoint 3 (parallelism 2) lists prepared transactions; the job resumes at
    parallelism 3: they are committed by their new owners, nothing is left."""
    token = tmp_path / "fault-fired"
    job = make_job("--rate", "15000")
    proc = job.start(env={"ONCEFLOW_FAULT": "coordinator.after_metadata_rename@checkpoint=3",
                          "ONCEFLOW_FAULT_TOKEN": str(token)})
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, job.tail()
    time.sleep(0.2)  # PR_SET_PDEATHSIG: the workers follow their driver
    job.start("--restore", "latest", "--parallelism", "3")
    result = _finish_ok(job)
    assert result["restored_from"] and result["restored_from"].endswith("chk-3")
    job.check_exact()


def test_driver_killed_at_random_moments_then_restored(make_job: Any) -> None:
    rng = random.Random(f"{SEED}-pg-driver")
    job = make_job("--rate", "8000")
    for _ in range(2):
        proc = job.start("--restore", "latest")
        time.sleep(rng.uniform(0.8, 2.0))
        pids = [w.pid for w in job.workers()]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_gone(pids)
    job.start("--restore", "latest")
    _finish_ok(job)
    job.check_exact()


def test_fresh_start_rolls_back_what_an_earlier_run_left(make_job: Any, dsn: str) -> None:
    """A prepared transaction of this sink (holding a lock on a row the job upserts) and a
    session of a crashed attempt (an open transaction holding another) must not block the
    job: the prepared one is rolled back, the session ended."""
    job = make_job("--rate", "50000")
    stale_gid = f"{gid_prefix(job.flow, 'totals')}1:7:deadbeef"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("BEGIN")
        c.execute(f"INSERT INTO {job.totals} VALUES (1, -1, -1)")
        c.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(stale_gid)))
    app = f"{_session_prefix(job.flow, 'totals')}0:w:old-attempt"
    zombie = psycopg.connect(dsn, autocommit=True, application_name=app)
    zombie.execute("BEGIN")
    zombie.execute(f"INSERT INTO {job.totals} VALUES (2, -1, -1)")
    try:
        job.start()
        result = _finish_ok(job)
        assert result["restarts"] == 0, job.tail()
        with pytest.raises(psycopg.OperationalError):
            zombie.execute("SELECT 1")  # its session was ended
    finally:
        zombie.close()
    job.check_exact()


# --- configuration errors ------------------------------------------------------------------
def _flow_into(sink: Any, tmp_path: Path) -> of.Flow:
    flow = of.Flow(f"pgcfg-{uuid.uuid4().hex[:6]}", restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(1.0, tmp_path / "ckpt")
    flow.source(of.sources.Collection([(1, 2, 3)]), name="src").sink(sink, name="pg")
    return flow


def test_max_prepared_transactions_zero_is_a_clear_error() -> None:
    with pytest.raises(of.ConfigurationError, match="max_prepared_transactions = 0"):
        check_max_prepared_transactions("0", "the server at db:5432/x")
    check_max_prepared_transactions("64")
    for bad in ("-1", 0):
        with pytest.raises(of.ConfigurationError, match="restart PostgreSQL"):
            check_max_prepared_transactions(bad)


def test_missing_table_fails_at_run(dsn: str, tmp_path: Path) -> None:
    sink = PostgresSink(dsn, "no_such_table_xyz", columns=["k", "total", "n"])
    with pytest.raises(of.ConfigurationError, match="'no_such_table_xyz' does not exist"):
        _flow_into(sink, tmp_path).run()


def test_wrong_column_fails_at_run(dsn: str, conn: psycopg.Connection[Any],
                                   tmp_path: Path) -> None:
    t = f"cfg_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {t} (k integer PRIMARY KEY, total bigint, n bigint)")
    try:
        sink = PostgresSink(dsn, t, columns=["k", "totl", "n"])
        with pytest.raises(of.ConfigurationError, match=r"no column 'totl'.*k, total, n"):
            _flow_into(sink, tmp_path).run()
        sink = PostgresSink(dsn, t, columns=["total", "n"], mode="upsert",
                            key_columns=["total"])
        with pytest.raises(of.ConfigurationError, match="NOT NULL without a default"):
            _flow_into(sink, tmp_path).run()
        sink = PostgresSink(dsn, t, columns=["k", "total", "n"], mode="upsert",
                            key_columns=["total"])
        with pytest.raises(of.ConfigurationError, match="unique index on exactly"):
            _flow_into(sink, tmp_path).run()
    finally:
        pgjobs.drop_tables(conn, t)


def test_unreachable_server_fails_at_run(tmp_path: Path) -> None:
    """Nothing listens there: a ServiceUnreachableError (which run() asks again as the
    restart strategy allows; no_restart() gives up at the first)."""
    sink = PostgresSink("postgresql://postgres@127.0.0.1:1/none", "t", columns=["a"],
                        connect_timeout=2)
    with pytest.raises(of.ServiceUnreachableError, match=r"cannot connect.*127\.0\.0\.1:1/none"):
        _flow_into(sink, tmp_path).run()


@pytest.mark.parametrize("fault", ["role", "database"])
def test_a_server_that_refuses_the_session_is_a_configuration_error(
        dsn: str, tmp_path: Path, fault: str) -> None:
    """The server answered and refused (no such role, no such database): waiting would not
    help, so the error is not a ServiceUnreachableError and comes at once, whatever the
    restart strategy."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    bad = make_conninfo(dsn, **({"user": "no_such_role_xyz"} if fault == "role"
                                else {"dbname": "no_such_db_xyz"}))
    assert conninfo_to_dict(bad)["port"] == conninfo_to_dict(dsn)["port"]
    sink = PostgresSink(bad, "t", columns=["a"], connect_timeout=2)
    flow = _flow_into(sink, tmp_path)
    flow.set_restart_strategy(of.restart.fixed_delay(attempts=50, delay=1.0))
    started = time.monotonic()
    with pytest.raises(of.ConfigurationError, match="does not exist") as err:
        flow.run()
    assert not isinstance(err.value, of.ServiceUnreachableError)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(("kw", "msg"), [
    ({"columns": []}, "non-empty list"),
    ({"columns": ["a", "a"]}, "twice"),
    ({"columns": ["a"], "mode": "merge"}, "'insert' or 'upsert'"),
    ({"columns": ["a"], "mode": "upsert"}, "needs key_columns"),
    ({"columns": ["a"], "mode": "upsert", "key_columns": ["b"]}, "not in columns"),
    ({"columns": ["a"], "key_columns": ["a"]}, "only used with mode='upsert'"),
    ({"columns": ["a"], "batch_rows": 0}, "batch_rows"),
])
def test_bad_arguments_fail_at_construction(kw: dict[str, Any], msg: str) -> None:
    with pytest.raises(of.ConfigurationError, match=msg):
        PostgresSink("postgresql://x@localhost/db", "t", **kw)


# --- smaller properties ----------------------------------------------------------------------
def test_sink_is_light_and_picklable() -> None:
    sink = PostgresSink("postgresql://x@localhost/db", "s.t", columns=["a", "b"],
                        mode="upsert", key_columns=["a"])
    back = pickle.loads(pickle.dumps(sink))
    assert back.spec.columns == ["a", "b"] and back._conn is None
    assert pickle.loads(pickle.dumps(PostgresTxn("g"))) == PostgresTxn("g")


def test_gids_encode_flow_sink_subtask_and_stay_short() -> None:
    assert gid_prefix("orders", "totals") == "onceflow:orders:totals:"
    odd = gid_prefix("my flow:v2", "x" * 300)
    assert odd.count(":") == 3  # separators only: "onceflow:<flow>:<uid>:"
    assert odd != gid_prefix("my flow_v2", "x" * 300)  # cleaned names get a hash
    assert len(odd) + len("65535:18446744073709551615:deadbeef") <= GID_MAX


def test_in_process_upsert_keeps_the_last_value_and_rows_from_dicts(
        dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    t, e = f"up_{uuid.uuid4().hex[:8]}", f"ins_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {t} (k text PRIMARY KEY, v integer)")
    conn.execute(f"CREATE TABLE {e} (v integer, note text DEFAULT 'x')")
    try:
        flow = of.Flow(f"pgunit-{uuid.uuid4().hex[:6]}")
        src = flow.source(of.sources.Collection([("a", 1), ("b", 2), ("a", 3), ("a", 4)]),
                          name="src")
        src.sink(PostgresSink(dsn, t, columns=["k", "v"], mode="upsert", key_columns=["k"],
                              row=lambda r: {"v": r[1], "k": r[0]}), name="up")
        src.sink(PostgresSink(dsn, e, columns=["v"], row=lambda r: r[1]), name="ins")
        flow.run()
        assert dict(conn.execute(f"SELECT k, v FROM {t}").fetchall()) == {"a": 4, "b": 2}
        assert sorted(conn.execute(f"SELECT v, note FROM {e}").fetchall()) == \
            [(1, "x"), (2, "x"), (3, "x"), (4, "x")]
        assert not pgjobs.prepared_of(conn, flow.name)
    finally:
        pgjobs.drop_tables(conn, t, e)


def test_a_record_that_makes_no_row_names_the_record(dsn: str, conn: psycopg.Connection[Any],
                                                     tmp_path: Path) -> None:
    t = f"bad_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {t} (a integer, b integer)")
    try:
        flow = of.Flow(f"pgunit-{uuid.uuid4().hex[:6]}",
                       restart_strategy=of.restart.no_restart())
        flow.source(of.sources.Collection([(1, 2), (3, 4, 5)]), name="src") \
            .sink(PostgresSink(dsn, t, columns=["a", "b"]), name="pg")
        with pytest.raises(of.JobFailedError, match=r"needs 2 value\(s\).*\(3, 4, 5\)"):
            flow.run()
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0
    finally:
        pgjobs.drop_tables(conn, t)


def test_conformance_check_passes(dsn: str, conn: psycopg.Connection[Any],
                                  tmp_path: Path) -> None:
    """onceflow.testing's crash-at-every-hook check, run against this sink."""
    tag = uuid.uuid4().hex[:6]
    tables: list[str] = []

    def make_sink(case: str) -> PostgresSink:
        t = f"conf_{tag}_{case}"
        pgjobs.drop_tables(conn, t)
        conn.execute(f"CREATE TABLE {t} (id bigint, key text, value integer)")
        tables.append(t)
        return PostgresSink(dsn, t, columns=["id", "key", "value"], batch_rows=500,
                            row=lambda r: (r["id"], r["key"], r["value"]))

    def read_back(case: str) -> list[Any]:
        cur = conn.execute(f"SELECT id, key, value FROM conf_{tag}_{case}")
        return [{"id": i, "key": k, "value": v} for i, k, v in cur]

    try:
        report = check_sink_exactly_once(make_sink, read_back, workdir=str(tmp_path),
                                         records=8000)
        assert all(c.fired and c.restarts >= 1 for c in report.cases), str(report)
        assert report.ok, str(report)
        for n in range(len(report.cases)):
            assert not pgjobs.prepared_of(conn, f"conformance-case{n}")
    finally:
        for n in range(len(tables)):
            _rollback_prepared(conn, f"conformance-case{n}")
        pgjobs.drop_tables(conn, *tables) if tables else None


def test_autocommit_variant_writes_the_same_rows(dsn: str, conn: psycopg.Connection[Any],
                                                 tmp_path: Path) -> None:
    t = f"ac_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {t} (k integer PRIMARY KEY, v bigint)")
    try:
        flow = of.Flow(f"pgunit-{uuid.uuid4().hex[:6]}", parallelism=2)
        flow.enable_checkpointing(0.2, tmp_path / "ckpt")
        (flow.source(of.sources.Range(0, 5000), name="src")
             .map(lambda i: (i % 50, i), name="kv")
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum")
             .sink(PostgresAutocommitSink(dsn, t, columns=["k", "v"], mode="upsert",
                                          key_columns=["k"], batch_rows=7), name="pg"))
        flow.run()
        want = {k: sum(range(k, 5000, 50)) for k in range(50)}
        assert dict(conn.execute(f"SELECT k, v FROM {t}").fetchall()) == want
    finally:
        pgjobs.drop_tables(conn, t)


def test_mixed_python_types_in_a_column_still_upsert(dsn: str, conn: psycopg.Connection[Any],
                                                      tmp_path: Path) -> None:
    t = f"mix_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {t} (k integer PRIMARY KEY, v numeric, tags text[])")
    try:
        flow = of.Flow(f"pgunit-{uuid.uuid4().hex[:6]}")
        flow.source(of.sources.Collection([(1, 2), (2, 2.5), (1, 3.25)]), name="src") \
            .sink(PostgresSink(dsn, t, columns=["k", "v"], mode="upsert", key_columns=["k"]),
                  name="pg")
        flow.run()
        got = {k: float(v) for k, v in conn.execute(f"SELECT k, v FROM {t}")}
        assert got == {1: 3.25, 2: 2.5}
        flow = of.Flow(f"pgunit-{uuid.uuid4().hex[:6]}")  # an array column: VALUES lists
        flow.source(of.sources.Collection([(3, ["a", "b"]), (3, ["c"])]), name="src") \
            .sink(PostgresSink(dsn, t, columns=["k", "tags"], mode="upsert",
                               key_columns=["k"]), name="pg")
        flow.run()
        assert conn.execute(f"SELECT tags FROM {t} WHERE k = 3").fetchone()[0] == ["c"]
    finally:
        pgjobs.drop_tables(conn, t)
