"""Windows exactly-once into Kafka: the window jobs of ``crashjobs`` (tumbling with late
data, sliding, session on RocksDB) write through the transactional KafkaSink into a real
broker (``scripts/kafka``); workers are SIGKILLed at the window operator's named points
(while a window fires, between a firing and the checkpoint, during the timer snapshot) and
at random moments. A read_committed consumer must see exactly the failure-free run's
output (``crashjobs.expected``): every record in each window it belongs to, or in the
late-data output, once; and no transaction of the sink left open."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka  # noqa: F401 - a missing dependency fails the suite, never skips it
import crashjobs
import pytest
from jobproc import kill_driver_at_fault, kill_randomly
from test_exactly_once import Job
from test_kafka import _topic, read_committed

from onceflow.kafka import list_lingering

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261127"))
RECORDS = 12_000


class KafkaWindowJob(Job):
    """A crashjobs window job whose sink is an exactly-once KafkaSink on a fresh topic."""

    def __init__(self, tmp: Path, bootstrap: str, shape: str, *extra: str,
                 env: dict[str, str] | None = None, records: int = RECORDS) -> None:
        run = uuid.uuid4().hex[:8]
        self.bootstrap, self.topic, self.prefix = bootstrap, f"win-{run}", f"wk-{run}"
        _topic(bootstrap, self.topic, partitions=3)
        super().__init__(tmp, shape, "--kafka", bootstrap, "--topic", self.topic,
                         "--prefix", self.prefix, *extra, env=env, records=records)

    def check_exact(self) -> None:
        got = crashjobs.Counter(tuple(v) for _, _, v in
                                read_committed(self.bootstrap, self.topic))
        want = crashjobs.expected(self.shape, self.records)
        assert got == want, crashjobs.diff(got, want) + f"\nlog: {self.tail(3000)}"
        open_txns = [t for t in list_lingering(self.bootstrap, self.prefix)
                     if t[2] not in ("Empty", "CompleteCommit", "CompleteAbort")]
        assert not open_txns, f"transactions of the sink left open: {open_txns}"


def _finish(job: KafkaWindowJob) -> dict[str, Any]:
    code, result = job.wait(timeout=180)
    assert code == 0, job.tail(3000)
    assert result is not None
    job.check_exact()
    return result


POINTS = [
    pytest.param("window_tumbling", "memory", "window.fire@firing=15,subtask=0",  # popped
                 marks=pytest.mark.soak),  # (into files: test_windows_crash.py)
    ("window_sliding", "memory", "window.fired@firing=25,subtask=1"),  # emitted, no ckpt
    ("window_session", "rocksdb", "window.snapshot@checkpoint=3,subtask=0"),  # timers
]


@pytest.mark.parametrize(("shape", "backend", "point"), POINTS)
def test_worker_killed_at_window_point_into_kafka(tmp_path: Path, bootstrap: str, shape: str,
                                                 backend: str, point: str) -> None:
    token = tmp_path / "fault-fired"
    job = KafkaWindowJob(tmp_path, bootstrap, shape, "--rate", "5000", "--backend", backend,
                         env={"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    code, result = job.wait(timeout=180)
    assert token.exists(), f"fault {point} never fired\n{job.tail(2000)}"
    assert code == 0, job.tail(3000)
    assert result is not None and result["restarts"] == 1, result
    job.check_exact()


def test_driver_killed_while_a_window_fires_then_restored_into_kafka(
        tmp_path: Path, bootstrap: str) -> None:
    """The driver dies (its workers with it) in the middle of a firing of a session window
    on RocksDB; a new driver resumes with restore="latest" and commits the rest: the
    read_committed output is the failure-free run's, once."""
    job = KafkaWindowJob(tmp_path, bootstrap, "window_session", "--rate", "5000",
                         "--backend", "rocksdb")
    kill_driver_at_fault(job, "window.fired@firing=20,subtask=0", tmp_path / "fault-fired",
                         timeout=90, action="pause")
    job.start("--restore", "latest")
    result = _finish(job)
    assert result["restored_from"], "nothing was restored"


def _random_kills(tmp: Path, bootstrap: str, shape: str, backend: str, kills: int,
                  records: int) -> None:
    rng = random.Random(f"{SEED}-kafka-{shape}-{backend}")
    job = KafkaWindowJob(tmp, bootstrap, shape, "--rate", "3000", "--backend", backend,
                         records=records)
    job.start()
    delivered = kill_randomly(job, rng, kills, pause=(1.5, 2.5))
    result = _finish(job)
    assert delivered >= 1, "the job ended before any kill landed; make it longer"
    assert result["restarts"] >= 1


def test_random_worker_kill_tumbling_into_kafka(tmp_path: Path, bootstrap: str) -> None:
    _random_kills(tmp_path, bootstrap, "window_tumbling", "memory", 1, RECORDS)


@pytest.mark.soak
@pytest.mark.parametrize(("shape", "backend"), [("window_tumbling", "rocksdb"),
                                                ("window_sliding", "memory"),
                                                ("window_session", "rocksdb")])
def test_random_worker_kills_into_kafka_soak(tmp_path: Path, bootstrap: str, shape: str,
                                            backend: str) -> None:
    _random_kills(tmp_path, bootstrap, shape, backend, 5, 90_000)
