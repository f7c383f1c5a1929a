"""The checkpoint coordinator with a fake clock and fake tasks (no processes): when it
triggers (interval, min_pause, max_concurrent), what fails a checkpoint (timeout, decline)
and the job (tolerable failures, their reset), subsumption, retention, savepoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from onceflow.checkpoint.coordinator import (
    CheckpointCoordinator,
    CheckpointFailuresExceeded,
    CheckpointStatus,
    CoordinatorSettings,
)
from onceflow.checkpoint.storage import CheckpointStorage, read_metadata
from onceflow.runtime import messages as m

TASKS = {("src", 0), ("src", 1), ("sink", 0)}
SOURCES = {("src", 0), ("src", 1)}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Job:
    """A coordinator and the fake tasks it talks to."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        s = {"interval": 1.0, "timeout": 10.0, "min_pause": 0.0, "max_concurrent": 1,
             "retained": 2, "tolerable_failures": 0, **settings}
        self.storage = CheckpointStorage(str(tmp / "ck"), "flow")
        self.storage.prepare()
        self.clock = Clock()
        self.sent: list[m.ToWorker] = []
        self.c = CheckpointCoordinator(CoordinatorSettings(**s), self.storage, "flow", 128,
                                       TASKS, SOURCES, self.sent.append, clock=self.clock)
        self.c.start()

    def at(self, t: float) -> list[m.ToWorker]:
        """Advance the clock to start + ``t`` and tick; the messages sent meanwhile."""
        self.clock.now = 100.0 + t
        before = len(self.sent)
        self.c.tick()
        return self.sent[before:]

    def triggered(self) -> list[int]:
        return [x.checkpoint_id for x in self.sent if isinstance(x, m.Trigger)]

    def ack(self, cid: int, tasks: set[tuple[str, int]] = TASKS) -> list[m.ToWorker]:
        before = len(self.sent)
        for task, sub in sorted(tasks):
            name = f"{task}-{sub}.state"
            d = self.storage.path(cid)
            os.makedirs(d, exist_ok=True)
            Path(d, name).write_bytes(b"x")
            self.c.on_ack(cid, task, sub, m.SubtaskState(
                file=name, size=1, crc32=0, parallelism=2 if task == "src" else 1,
                ops=(task,), stateful=(task,), sync_ms=1.0, async_ms=2.0, align_ms=0.5))
        return self.sent[before:]

    def status(self, cid: int) -> CheckpointStatus:
        return next(s.status for s in self.c.history if s.id == cid)


def test_triggers_every_interval_and_not_before(tmp_path: Path) -> None:
    job = Job(tmp_path)
    assert job.at(0.5) == []
    (t,) = job.at(1.0)
    assert isinstance(t, m.Trigger) and (t.checkpoint_id, t.final, t.savepoint) == (1, False, None)
    assert job.ack(1)[-1] == m.Complete(1, False)
    assert job.at(1.5) == []
    assert [type(x) for x in job.at(2.0)] == [m.Trigger]
    assert job.triggered() == [1, 2]


def test_min_pause_counts_from_the_last_completion(tmp_path: Path) -> None:
    job = Job(tmp_path, min_pause=5.0)
    job.at(1.0)
    job.clock.now = 101.5
    job.ack(1)  # complete at 1.5
    assert job.at(2.0) == [] and job.at(6.4) == []
    assert [type(x) for x in job.at(6.5)] == [m.Trigger]


def test_max_concurrent_limits_checkpoints_in_flight(tmp_path: Path) -> None:
    job = Job(tmp_path, max_concurrent=2)
    for t in (1.0, 2.0, 3.0, 4.0):
        job.at(t)
    assert job.triggered() == [1, 2]
    job.ack(1)
    job.at(5.0)
    assert job.triggered() == [1, 2, 3]


def test_a_checkpoint_that_times_out_is_aborted_and_counted(tmp_path: Path) -> None:
    job = Job(tmp_path, timeout=3.0, tolerable_failures=5)
    job.at(1.0)
    job.ack(1, {("src", 0)})  # one of three acks
    assert job.at(3.9) == []
    assert m.Abort(1) in job.at(4.1)
    assert job.status(1) is CheckpointStatus.ABORTED
    st = job.c.history[-1]
    assert st.counts_as_failure and "expired after 3s" in (st.failure or "")
    assert "1/3 acks" in (st.failure or "")
    assert job.c.consecutive_failures == 1
    assert not os.path.exists(job.storage.path(1))


def test_a_decline_aborts_the_checkpoint(tmp_path: Path) -> None:
    job = Job(tmp_path, tolerable_failures=1)
    job.at(1.0)
    job.c.on_decline(1, "sink", 0, "disk full")
    assert job.sent[-1] == m.Abort(1)
    assert "declined by task 'sink' subtask 0: disk full" in (job.c.history[-1].failure or "")


def test_more_consecutive_failures_than_tolerable_fail_the_job(tmp_path: Path) -> None:
    job = Job(tmp_path, tolerable_failures=1)
    job.at(1.0)
    job.c.on_decline(1, "sink", 0, "no")  # 1 failure: tolerated
    job.at(2.0)
    with pytest.raises(CheckpointFailuresExceeded, match=r"2 consecutive .* tolerable_failures=1"):
        job.c.on_decline(2, "sink", 0, "no")


def test_a_completed_checkpoint_resets_the_failure_count(tmp_path: Path) -> None:
    job = Job(tmp_path, tolerable_failures=1)
    job.at(1.0)
    job.c.on_decline(1, "sink", 0, "no")
    job.at(2.0)
    job.ack(2)
    assert job.c.consecutive_failures == 0
    job.at(3.0)
    job.c.on_decline(3, "sink", 0, "no")  # tolerated again
    assert job.c.consecutive_failures == 1


def test_subsumed_checkpoints_are_aborted_but_not_counted(tmp_path: Path) -> None:
    job = Job(tmp_path, max_concurrent=3, tolerable_failures=0)
    job.at(1.0)
    job.at(2.0)
    job.ack(2)  # 2 completes before 1
    assert job.status(1) is CheckpointStatus.ABORTED
    st = next(s for s in job.c.history if s.id == 1)
    assert st.failure == "subsumed by checkpoint 2" and not st.counts_as_failure
    assert job.c.consecutive_failures == 0
    assert job.sent[-1] == m.Abort(1)
    assert job.ack(1) == []  # a late ack of the subsumed one is ignored


def test_retention_keeps_the_newest_completed_checkpoints(tmp_path: Path) -> None:
    job = Job(tmp_path, retained=2)
    for n in range(1, 5):
        job.at(float(n))
        job.ack(n)
    assert job.storage.complete_ids() == [3, 4]
    assert read_metadata(job.storage.path(4)).checkpoint_id == 4


def test_savepoints_are_never_deleted_nor_subsumed(tmp_path: Path) -> None:
    job = Job(tmp_path, retained=1, max_concurrent=2)
    done: list[tuple[str | None, str | None]] = []
    job.c.trigger_savepoint(str(tmp_path / "sp"), False, lambda p, e: done.append((p, e)))
    sp_id = job.triggered()[-1]
    job.at(1.0)  # a checkpoint next to it
    cp_id = job.triggered()[-1]
    job.ack(cp_id)  # completes first: must not subsume the savepoint
    assert sp_id in job.c.pending
    sp_dir = job.c.pending[sp_id].kind.savepoint_path
    assert sp_dir is not None
    for task, sub in sorted(TASKS):
        Path(sp_dir, f"{task}-{sub}.state").write_bytes(b"x")
        job.c.on_ack(sp_id, task, sub, m.SubtaskState(
            f"{task}-{sub}.state", 1, 0, 1, (task,), (task,), 1.0, 1.0, 0.0))
    assert done == [(sp_dir, None)]
    assert m.Complete(sp_id, False) in job.sent
    for n in range(2, 6):  # more checkpoints than retained
        job.at(float(n))
        job.ack(job.triggered()[-1])
    assert read_metadata(sp_dir).kind == "savepoint"
    assert len(job.storage.complete_ids()) == 1


def test_when_every_source_is_exhausted_a_final_checkpoint_runs(tmp_path: Path) -> None:
    job = Job(tmp_path, interval=None)
    assert job.at(50.0) == []
    job.c.on_exhausted("src", 0)
    assert job.at(51.0) == []
    job.c.on_exhausted("src", 1)
    (trigger,) = job.at(52.0)
    assert isinstance(trigger, m.Trigger) and trigger.final
    assert job.ack(trigger.checkpoint_id)[-1] == m.Complete(trigger.checkpoint_id, True)
    assert job.c.final_completed and job.at(60.0) == []


def test_a_failed_final_checkpoint_fails_the_job(tmp_path: Path) -> None:
    job = Job(tmp_path, interval=None, tolerable_failures=10)
    for s in SOURCES:
        job.c.on_exhausted(*s)
    job.at(1.0)
    with pytest.raises(CheckpointFailuresExceeded, match="final checkpoint"):
        job.c.on_decline(job.triggered()[-1], "sink", 0, "no")


def test_reset_aborts_pending_without_counting_them(tmp_path: Path) -> None:
    job = Job(tmp_path, max_concurrent=2)
    job.at(1.0)
    job.at(2.0)
    job.c.reset("the job restarts")
    assert job.c.pending == {}
    assert all(not s.counts_as_failure for s in job.c.history)
    assert job.at(10.0) == []  # not running until start()
