"""Faults of the Kafka broker itself, on a broker of this module's own (tests/brokers.py):
SIGKILLed mid-job and restarted after 5 s and after 30 s, unreachable during a pre-commit
and during a commit, and a transaction the broker aborts because it outlived
``transaction.timeout.ms``; and the broker frozen (SIGSTOP) for 20 s and thawed.

The job is tests/kafkajobs.py (Kafka → keyed running total → Kafka, exactly-once). After
each test a read_committed consumer must see each input's effect exactly once
(kafkajobs.check_output), and the independent witness agrees: Kafka's own Java console
consumer (read_committed) sees each id once and ``kafka-transactions find-hanging`` finds
nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import OwnBroker, wait_for
from test_kafka import KJob, read_committed

N = 3000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    b = OwnBroker(tmp_path_factory.mktemp("kafka-faults") / "broker")
    b.start()
    yield b
    b.remove()


def _ensure_up(broker: OwnBroker) -> str:
    return broker.start()  # idempotent: a test that failed mid-outage leaves it down


def _committed(job: KJob) -> int:
    return len(read_committed(job.bootstrap, job.output, settle=0.1, timeout=20))


def _check(job: KJob, broker: OwnBroker) -> None:
    job.check_exact()
    broker.assert_witness(job.output, job.records)


def _ends_exactly(job: KJob, broker: OwnBroker) -> None:
    """The job runs to its end by itself, and its output is exact."""
    code, result = job.wait(timeout=300)
    assert code == 0, job.tail()
    assert result is not None
    _check(job, broker)


def _running_job(broker: OwnBroker, tmp: Path, rate: float) -> KJob:
    """The job started with restarts enough for a long outage, once it committed output."""
    job = KJob(tmp, _ensure_up(broker), "--rate", str(rate), "--attempts", "200", "--delay",
               "0.5", records=N)
    job.start()
    wait_for(lambda: _committed(job) > 0 or job.proc.poll() is not None, 90,
             "the first committed output")
    assert job.proc is not None and job.proc.poll() is None, job.tail()
    return job


@pytest.mark.timeout(400)
@pytest.mark.parametrize("outage", [5, 30])
def test_broker_sigkilled_mid_job_and_restarted(broker: OwnBroker, tmp_path: Path,
                                                outage: float) -> None:
    job = _running_job(broker, tmp_path, rate=150)
    broker.kill()
    time.sleep(outage)
    broker.start()
    _ends_exactly(job, broker)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("fault", ["sink.pre_commit@subtask=0",
                                   "sink.mid_commit@subtask=1",
                                   "sink.before_commit@min_checkpoint=3,subtask=0"])
def test_broker_unreachable_during_the_commit_protocol(broker: OwnBroker, tmp_path: Path,
                                                       fault: str) -> None:
    """The sink pauses at the named point; meanwhile the broker is SIGKILLed, stays away
    for 3 s and comes back; then the sink carries on against the restarted broker."""
    bootstrap = _ensure_up(broker)
    token = tmp_path / "fault.token"
    job = KJob(tmp_path, bootstrap, "--rate", "300", "--attempts", "200", "--delay", "0.5",
               records=N)
    job.start(env={"ONCEFLOW_FAULT": fault, "ONCEFLOW_FAULT_TOKEN": str(token),
                   "ONCEFLOW_FAULT_ACTION": "pause"})
    wait_for(lambda: token.exists() or job.proc.poll() is not None, 120, f"fault {fault}")
    assert token.exists(), job.tail()
    broker.kill()
    time.sleep(3)
    broker.start()
    Path(f"{token}.go").touch()
    code, _ = job.wait(timeout=300)
    assert code == 0, job.tail()
    _check(job, broker)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("on_lost", ["fail", "continue"])
def test_transaction_aborted_by_the_broker_is_never_silent(broker: OwnBroker, tmp_path: Path,
                                                           on_lost: str) -> None:
    """A worker dies after checkpoint 3 completed, before its sink committed; the job
    stays away 25 s (the restart delay) while the broker aborts the pre-committed
    transaction for outliving transaction.timeout.ms (5 s). The recovery commit must not
    mistake that for "already committed": the job fails naming checkpoint, subtask and
    transactional id and the input offsets whose output is lost — or, with
    on_lost_transaction="continue", says so, counts it and
    finishes with exactly that transaction's records missing and nothing duplicated."""
    import kafkajobs

    bootstrap = _ensure_up(broker)
    token = tmp_path / "fault.token"
    job = KJob(tmp_path, bootstrap, "--rate", "300", "--attempts", "3", "--delay", "25",
               "--txn-timeout-ms", "5000", "--unchecked-timeout", "--on-lost", on_lost,
               records=N)
    job.start(env={"ONCEFLOW_FAULT": "sink.before_commit@min_checkpoint=3,subtask=0",
                   "ONCEFLOW_FAULT_TOKEN": str(token)})
    code, res = job.wait(timeout=300)
    log_text = job.log.read_text()
    assert token.exists(), job.tail()
    lost = [ln for ln in log_text.splitlines() if "cannot be committed" in ln]
    assert lost, job.tail()
    # the killed worker's subtask 0 lost its transaction (subtask 1, killed with the
    # restart, may have too: in any order)
    # (with on_lost="fail" the job stops at the first one it meets: subtask 1's, maybe)
    head = next((ln for ln in lost if "subtask 0:" in ln), lost[0])
    sub = "0" if "subtask 0:" in head else "1"
    assert f"subtask {sub}" in head and f"{job.prefix}-{sub}-" in head, head
    assert "checkpoint 3" in head or "checkpoint 4" in head, head
    assert "outlived transaction.timeout.ms" in head and "LOST" in head, head
    assert f"kafka-in: {job.input}[" in head and " offsets " in head, head  # the input
    if on_lost == "fail":
        assert code != 0, job.tail()
        assert "KafkaTransactionLostError" in log_text or "is LOST" in log_text
        assert "restarting cannot bring it back" in log_text, job.tail()
        return
    assert code == 0, job.tail()
    got = read_committed(bootstrap, job.output)
    ids = [v["id"] for _, _, v in got]
    assert len(ids) == len(set(ids)), "duplicates after a lost transaction"
    missing = N - len(ids)
    # each subtask whose worker did not commit in time lost its transaction
    n_lost = sum(int(ln.split(" record(s)")[0].rsplit(", ", 1)[-1]) for ln in lost)
    assert missing == n_lost > 0, (missing, n_lost, lost)
    assert "lost transactions so far: 1" in head
    # ... and counted: JobResult (the same count feeds onceflow_operator_lost_transactions_total)
    txns = set()
    for ln in lost:
        found = re.search(r"checkpoint (\d+) \(transactional id (\S+),", ln)
        assert found, ln
        txns.add(found.groups())
    assert res is not None and res["lost_transactions"] == len(txns) > 0, (res, txns)
    assert not broker.find_hanging()
    assert kafkajobs.USERS  # the job's module is importable here too (shared helpers)


def _broker_pid(broker: OwnBroker) -> int:
    return int((broker.dir / "kafka.pid").read_text().strip())


@pytest.mark.timeout(400)
@pytest.mark.parametrize("frozen", [pytest.param(8.0, marks=pytest.mark.soak), 20.0])
def test_broker_frozen_mid_job_then_thawed(broker: OwnBroker, tmp_path: Path,
                                           frozen: float) -> None:
    """The broker stops answering without going away (SIGSTOP: a long GC pause, a VM
    frozen by its host): connections stay open and requests just time out, unlike a crash
    where they are refused. After SIGCONT the job must carry on by itself to exact output."""
    import os
    import signal

    job = _running_job(broker, tmp_path, rate=200)
    pid = _broker_pid(broker)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(frozen)
    finally:
        os.kill(pid, signal.SIGCONT)
    _ends_exactly(job, broker)


@pytest.mark.timeout(400)
def test_broker_down_when_the_job_starts_is_waited_for_as_the_restart_strategy_allows(
        broker: OwnBroker, tmp_path: Path) -> None:
    """The broker is SIGKILLed after the input is written and before the job starts: run()
    must not fail at its start-up checks (a Flink job restarts too), but log that it
    cannot reach the broker, try again, and once the broker is back run to an exact
    output."""
    job = KJob(tmp_path, _ensure_up(broker), "--attempts", "200", "--delay", "1",
               "--source-timeout", "3", records=N)
    broker.kill()
    job.start()
    wait_for(lambda: "cannot start yet" in job.tail() or job.proc.poll() is not None, 120,
             "the job's first failed start-up check")
    assert job.proc is not None and job.proc.poll() is None, job.tail()
    assert re.search(r"cannot reach Kafka at 127\.0\.0\.1:\d+.*trying again in 1\.0s",
                     job.tail()), job.tail()
    time.sleep(2)
    broker.start()
    _ends_exactly(job, broker)


@pytest.mark.timeout(300)
def test_broker_down_longer_than_the_restart_strategy_waits_fails_saying_so(
        broker: OwnBroker, tmp_path: Path) -> None:
    job = KJob(tmp_path, _ensure_up(broker), "--attempts", "2", "--delay", "0.2",
               "--source-timeout", "3", records=N)
    broker.kill()
    try:
        job.start()
        code, _ = job.wait(timeout=200)
    finally:
        broker.start()
    log = job.tail(20_000)
    assert code != 0, log
    assert log.count("cannot start yet") == 2, log
    assert re.search(r"ServiceUnreachableError: .*cannot reach Kafka at 127\.0\.0\.1:\d+"
                     r".*\(tried 3 times over \d+ s; the restart strategy gave up\)", log), log
    # it never started: nothing in its output topic
    assert read_committed(job.bootstrap, job.output, settle=0.3) == []
