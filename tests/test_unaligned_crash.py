"""Unaligned checkpoints under crashes: real processes, SIGKILL, a slow sink (backpressure),
exact comparison of the committed output with a failure-free run's.

Kills at random moments, and at the named points of the unaligned path: after a barrier
overtook queued records but before the snapshot, while in-flight data is written, and while
a restored task replays in-flight data; the driver killed and the job restored, also at
another parallelism (in-flight records are then re-routed by key group).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from test_exactly_once import SEED, Job, _assert_no_orphans, _kill_randomly

SLOW = ("--slow", "0.00025", "--batch-size", "64", "--rate", "30000")


@pytest.mark.parametrize(("shape", "mode"), [
    ("two_keyed", "--unaligned"),
    ("union_flatmap", "--unaligned"),
    ("mixed_parallelism", "--unaligned"),
    ("two_keyed", "--aligned-timeout"),
    ("two_keyed", "--buffer-time"),
])
def test_random_worker_kills_with_backpressure_stay_exact(tmp_path: Path, shape: str,
                                                          mode: str) -> None:
    extra = {"--unaligned": [mode], "--aligned-timeout": [mode, "0.05"],
             "--buffer-time": ["--unaligned", mode, "0.05"]}[mode]
    job = Job(tmp_path, shape, *extra, *SLOW, records=16_000)
    job.start()
    delivered = _kill_randomly(job, random.Random(f"{SEED}-ua-{shape}-{mode}"), kills=3)
    code, result = job.wait()
    assert code == 0, job.log.read_text()[-3000:]
    assert result is not None and delivered >= 1
    job.check_exact()


@pytest.mark.parametrize("point", [
    "unaligned.overtaken@checkpoint=2",
    "snapshot.inflight@checkpoint=2,subtask=0",
    "snapshot.inflight@checkpoint=3,subtask=1",
])
def test_worker_killed_at_named_unaligned_point(tmp_path: Path, point: str) -> None:
    token = tmp_path / "fault-fired"
    job = Job(tmp_path, "two_keyed", "--unaligned", *SLOW, records=16_000,
              env={"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    code, result = job.wait()
    assert token.exists(), f"fault {point} never fired"
    assert code == 0, job.log.read_text()[-3000:]
    assert result is not None and result["restarts"] >= 1
    job.check_exact()


def test_killed_while_replaying_in_flight_data(tmp_path: Path) -> None:
    """A first kill makes the job restore from an unaligned checkpoint with in-flight data;
    a second one lands while that data is replayed."""
    token = tmp_path / "fault-fired"
    job = Job(tmp_path, "two_keyed", "--unaligned", *SLOW, records=16_000,
              env={"ONCEFLOW_FAULT": "restore.inflight", "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    rng = random.Random(f"{SEED}-replay")
    deadline = time.monotonic() + 60
    while not token.exists() and time.monotonic() < deadline and job.proc is not None \
            and job.proc.poll() is None:
        _kill_randomly(job, rng, kills=1)
    code, _ = job.wait()
    assert code == 0, job.log.read_text()[-3000:]
    assert token.exists(), "no restore ever replayed in-flight data"
    job.check_exact()


@pytest.mark.parametrize("parallelism", ["2", "3"])
def test_driver_killed_then_restored_from_unaligned_checkpoints(tmp_path: Path,
                                                                parallelism: str) -> None:
    rng = random.Random(f"{SEED}-ua-driver-{parallelism}")
    job = Job(tmp_path, "two_keyed", "--unaligned", *SLOW, records=16_000)
    proc = job.start()
    deadline = time.monotonic() + 120  # a checkpoint to restore from, however slow the start
    while not any(job.ckpt.rglob("_metadata")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.2, 1.0))
    pids = [w.pid for w in job.workers()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_no_orphans(pids)
    job.start("--restore", "latest", "--parallelism", parallelism)
    code, result = job.wait()
    assert code == 0, job.log.read_text()[-3000:]
    assert result is not None and result["restored_from"], "nothing was restored"
    job.check_exact()
