"""Windows exactly-once under crashes: SIGKILLed workers and drivers, at random moments and
at the window operator's named points, and the committed FileSink output compared exactly
with a failure-free run computed without onceflow (``crashjobs.expected``): every record in
each window it belongs to, or in the late-data output, once."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import crashjobs
import pytest
from jobproc import assert_no_orphans, kill_driver_at_fault, kill_randomly
from test_exactly_once import Job

SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261127"))
RECORDS = 30_000


@pytest.mark.parametrize(("shape", "backend"), [
    ("window_tumbling", "memory"),
    ("window_tumbling", "rocksdb"),
    ("window_session", "rocksdb"),
    ("window_sliding", "memory"),
])
def test_random_worker_kills_leave_window_results_exact(tmp_path: Path, shape: str,
                                                       backend: str) -> None:
    rng = random.Random(f"{SEED}-{shape}-{backend}")
    job = Job(tmp_path, shape, "--rate", "6000", "--backend", backend, "--incremental",
              records=RECORDS)
    job.start()
    delivered = kill_randomly(job, rng, kills=3)
    code, result = job.wait()
    assert code == 0, job.tail(3000)
    assert result is not None
    assert delivered >= 1, "the job ended before any kill landed; make it longer"
    assert result["restarts"] >= 1
    job.check_exact()


WINDOW_POINTS = [
    "window.fire@firing=20,subtask=0",  # timers popped, results not yet emitted
    "window.fired@firing=40,subtask=1",  # results emitted downstream, checkpoint not yet
    "window.snapshot@checkpoint=3,subtask=0",  # during the timer and state snapshot
]


@pytest.mark.parametrize("point", WINDOW_POINTS)
def test_worker_killed_at_window_point(tmp_path: Path, point: str) -> None:
    token = tmp_path / "fault-fired"
    job = Job(tmp_path, "window_tumbling", "--rate", "8000", records=RECORDS,
              env={"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    code, result = job.wait()
    assert token.exists(), f"fault {point} never fired"
    assert code == 0, job.tail(3000)
    assert result is not None and result["restarts"] == 1
    job.check_exact()


def test_driver_killed_at_random_moments_then_restored(tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-window-driver")
    job = Job(tmp_path, "window_session", "--rate", "6000", records=RECORDS)
    for _ in range(2):
        proc = job.start("--restore", "latest")
        time.sleep(rng.uniform(1.0, 2.0))
        pids = [w.pid for w in job.workers()]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_no_orphans(pids)
    job.start("--restore", "latest")
    code, _ = job.wait()
    assert code == 0, job.tail(3000)
    job.check_exact()


def test_driver_killed_while_a_window_fires_then_restored(tmp_path: Path) -> None:
    """The driver dies (the workers with it) in the middle of a firing."""
    job = Job(tmp_path, "window_sliding", "--rate", "8000", records=RECORDS)
    kill_driver_at_fault(job, "window.fired@firing=30,subtask=0", tmp_path / "fault-fired")
    job.start("--restore", "latest")
    code, _ = job.wait()
    assert code == 0, job.tail(3000)
    job.check_exact()


def test_late_dropped_count_is_exact_after_worker_kills(tmp_path: Path) -> None:
    """Without a late-data output, the count of dropped late records is part of each
    checkpoint (with the task's record counters): after SIGKILLed workers and restores
    from checkpoints, JobResult's late_dropped equals the failure-free run's exactly."""
    rng = random.Random(f"{SEED}-late-dropped")
    job = Job(tmp_path, "window_tumbling", "--drop-late", "--rate", "6000", records=RECORDS)
    job.start()
    delivered = kill_randomly(job, rng, kills=2)
    code, result = job.wait()
    assert code == 0, job.tail(3000)
    assert result is not None and delivered >= 1 and result["restarts"] >= 1, result
    want_late = crashjobs.late_count(RECORDS)
    assert want_late > 200
    assert result["late_dropped"] == want_late, result
    got = crashjobs.committed(str(job.out))
    want = crashjobs.expected_window("window_tumbling", RECORDS, drop_late=True)
    assert got == want, crashjobs.diff(got, want)
