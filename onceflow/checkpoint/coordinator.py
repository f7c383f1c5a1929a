"""The checkpoint coordinator: the one object that decides when checkpoint n is complete.

The protocol for checkpoint ``n`` (DESIGN §3), in the order of the methods below:

1. **trigger** (:meth:`tick`, :meth:`trigger_savepoint`): every ``interval``, respecting
   ``min_pause`` and ``max_concurrent``, tell the source tasks to emit barrier ``n``;
2. **ack** (:meth:`on_ack`): collect one acknowledgement per subtask with its state file
   (a **decline**, :meth:`on_decline`, or the ``timeout`` aborts ``n``);
3. **complete** (:meth:`_complete`): once every subtask acked, write the metadata
   atomically: only now is ``n`` complete;
4. **notify**: tell every task ``Complete(n)`` (sinks commit), abort pending checkpoints
   older than ``n`` (subsumed), and apply retention.

When every source is exhausted, a **final** checkpoint runs so the last transactions
commit. Named collaborators hold the rest: the checkpoint's kind (``kinds.py``: what a
savepoint does differently), the failure policy (``failures.py``: when aborted checkpoints
fail the job), the metadata (``metadata.py``), retention (``retention.py``) and the shared
files of incremental checkpoints (``shared.py``).

Savepoints run the same protocol into their own directory, in the backend-neutral format.
Like a checkpoint a savepoint completes with ``Complete(n)``: sinks commit what it
pre-committed. So that a failover never resumes from before output it committed, recovery
considers savepoints too (``CheckpointStorage.latest_valid``). Stop-with-savepoint is also
the job's final checkpoint: sources end, the job finishes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from onceflow import _faults, _trace
from onceflow.checkpoint import s3
from onceflow.checkpoint.failures import FailurePolicy
from onceflow.checkpoint.kinds import CHECKPOINT, CheckpointKind, Savepoint, SavepointCallback
from onceflow.checkpoint.metadata import from_acks
from onceflow.checkpoint.retention import Retention
from onceflow.checkpoint.shared import SharedRegistry
from onceflow.checkpoint.stats import (
    LEGAL,
    CheckpointStats,
    CheckpointStatus,
    SubtaskCheckpointStats,
    log_fields,
)
from onceflow.checkpoint.storage import CheckpointStorage
from onceflow.errors import CheckpointFailuresExceeded
from onceflow.runtime import messages as m

log = logging.getLogger("onceflow.checkpoint")

#: seconds a savepoint waits for the bucket check of its s3:// target before it fails
SAVEPOINT_TARGET_TIMEOUT_S = 20.0

__all__ = ["CheckpointCoordinator", "CheckpointFailuresExceeded", "CheckpointStats",
           "CheckpointStatus", "CoordinatorSettings", "PendingCheckpoint",
           "SavepointCallback", "SubtaskCheckpointStats"]


@dataclass(frozen=True)
class CoordinatorSettings:
    interval: float | None  # None: only the final checkpoint
    timeout: float
    min_pause: float
    max_concurrent: int
    retained: int
    tolerable_failures: int


class PendingCheckpoint:
    """A triggered checkpoint waiting for its acks."""

    def __init__(self, cid: int, final: bool, expected: set[tuple[str, int]], mono: float,
                 kind: CheckpointKind) -> None:
        self.id = cid
        self.final = final
        self.kind = kind
        self.expected = set(expected)
        self.acks: dict[tuple[str, int], m.SubtaskState] = {}
        self.started = mono
        self.stats = CheckpointStats(cid, CheckpointStatus.PENDING, time.time(), final=final,
                                     kind=kind.name)

    @property
    def status(self) -> CheckpointStatus:
        return self.stats.status

    def move(self, to: CheckpointStatus) -> None:
        if to not in LEGAL[self.status]:
            raise RuntimeError(f"checkpoint {self.id}: illegal transition {self.status} -> {to}")
        self.stats.status = to

    @property
    def fully_acked(self) -> bool:
        return self.expected <= self.acks.keys()


class CheckpointCoordinator:
    def __init__(self, settings: CoordinatorSettings, storage: CheckpointStorage, flow: str,
                 max_parallelism: int, expected: set[tuple[str, int]],
                 sources: set[tuple[str, int]], send_all: Callable[[m.ToWorker], None],
                 op_kinds: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.s = settings
        self.op_kinds = op_kinds or {}
        self.storage = storage
        self.flow = flow
        self.max_parallelism = max_parallelism
        self.expected = expected
        self.sources = sources
        self.send_all = send_all
        self.clock = clock
        self.next_id = storage.next_id()
        self.pending: dict[int, PendingCheckpoint] = {}
        self.history: list[CheckpointStats] = []
        self.failures = FailurePolicy(settings.tolerable_failures)
        self.exhausted: set[tuple[str, int]] = set()
        self.final_completed = False
        self._running = False
        self._last_trigger = 0.0
        self._last_complete = float("-inf")
        self.registry = SharedRegistry(storage.dir, storage)
        self.registry.load(storage)
        self.registry.sweep()  # no task runs yet
        self.retention = Retention(settings.retained, storage, self.registry)
        self._savepoint_requests: list[tuple[str | None, bool, SavepointCallback]] = []
        #: savepoints to s3:// targets whose bucket check runs (off the driver loop)
        self._target_checks: list[tuple[s3.TargetCheck, bool, SavepointCallback]] = []
        self.stopping = False  # a stop-with-savepoint is in flight

    @property
    def consecutive_failures(self) -> int:
        return self.failures.consecutive

    # --- life of an attempt --------------------------------------------------------------
    def start(self) -> None:
        """All tasks run: the interval starts now."""
        self._running = True
        self._last_trigger = self.clock()
        requests, self._savepoint_requests = self._savepoint_requests, []
        for directory, stop, cb in requests:
            self.trigger_savepoint(directory, stop, cb)

    def reset(self, reason: str) -> None:
        """The job restarts: every pending checkpoint is aborted (no task runs now)."""
        for p in list(self.pending.values()):
            self._abort(p, reason, notify=False, count=False)
        self.exhausted.clear()
        self.final_completed = False
        self.stopping = False
        self.failures.reset()
        self._running = False
        self.next_id = max(self.next_id, self.storage.next_id())
        self.registry.sweep()

    def fail_requests(self, reason: str) -> None:
        """The job ends: savepoints asked for and not taken fail with ``reason``."""
        requests, self._savepoint_requests = self._savepoint_requests, []
        for _, _, cb in requests:
            cb(None, reason)
        checks, self._target_checks = self._target_checks, []
        for _, _, cb in checks:
            cb(None, reason)
        for p in list(self.pending.values()):
            p.kind.answer(None, reason)

    # --- 1. trigger ----------------------------------------------------------------------
    def tick(self) -> None:
        """Expire checkpoints past their timeout; trigger the next one if it is due."""
        if not self._running:
            return
        self._checked_targets()
        now = self.clock()
        for p in list(self.pending.values()):
            if now - p.started > self.s.timeout:
                self._abort(p, f"expired after {self.s.timeout:g}s before all tasks acknowledged "
                            f"({len(p.acks)}/{len(p.expected)} acks)")
        if self.final_completed or self.stopping:
            return
        if self.final_requested:
            if not self.pending:
                self._trigger(CHECKPOINT, final=True)
            return
        if self.s.interval is None or len(self.pending) >= self.s.max_concurrent:
            return
        if now - self._last_trigger >= self.s.interval and \
                now - self._last_complete >= self.s.min_pause:
            self._trigger(CHECKPOINT, final=False)

    def next_deadline(self) -> float:
        """Seconds until ``tick`` may have something to do."""
        if self.s.interval is None or not self._running:  # (before start: nothing to do;
            return 0.2  # a deadline from the last attempt would make the driver spin)
        return max(0.0, min(0.2, self._last_trigger + self.s.interval - self.clock()))

    @property
    def final_requested(self) -> bool:
        return bool(self.sources) and self.sources <= self.exhausted

    def on_exhausted(self, task: str, subtask: int) -> None:
        self.exhausted.add((task, subtask))
        if _trace.ON:
            _trace.event("exhausted_received", task=task, subtask=subtask)

    def trigger_savepoint(self, directory: str | None, stop: bool,
                          on_done: SavepointCallback, *, target_checked: bool = False) -> None:
        """Take a savepoint into a new folder of ``directory`` (default: the flow's
        checkpoint directory); with ``stop`` the job ends after it (stop-with-savepoint).
        ``on_done(path, None)`` or ``on_done(None, error)`` is called from the driver loop.
        An ``s3://`` target's bucket is checked first, in a thread (:class:`s3.TargetCheck`;
        :meth:`tick` goes on once it answered), so checkpoints go on meanwhile."""
        if self.final_completed or self.stopping or self.final_requested or \
                any(p.final for p in self.pending.values()):
            on_done(None, "the job is already finishing (its input ended, or a stop was "
                    "asked for); no savepoint can be taken now")
            return
        if not self._running:
            self._savepoint_requests.append((directory, stop, on_done))
            return
        if directory and s3.is_s3(directory):  # any store: the workers upload there
            if not target_checked:
                check = s3.TargetCheck(directory, self.storage.remote, self.clock)
                self._target_checks.append((check, stop, on_done))
                return
            path = Savepoint.folder(directory.rstrip("/"), self.next_id)
        else:
            parent = os.path.abspath(directory) if directory else self.storage.dir
            path = Savepoint.folder(parent, self.next_id)
            try:
                os.makedirs(path)
            except OSError as e:
                on_done(None, f"cannot create savepoint directory {path}: {e.strerror or e}")
                return
        if stop:
            self.stopping = True
        self._trigger(Savepoint(path, on_done, stop), final=stop)

    def _checked_targets(self) -> None:
        """Go on with the savepoints whose target check answered (or fail them: the check
        failed, or took more than :data:`SAVEPOINT_TARGET_TIMEOUT_S`)."""
        now = self.clock()
        for item in list(self._target_checks):
            check, stop, on_done = item
            late = None if check.done else check.late(now, SAVEPOINT_TARGET_TIMEOUT_S)
            if not check.done and late is None:
                continue
            self._target_checks.remove(item)
            if late is not None or check.error is not None:
                on_done(None, late or check.error)
            else:
                self.trigger_savepoint(check.url, stop, on_done, target_checked=True)

    def _trigger(self, kind: CheckpointKind, final: bool) -> None:
        cid = self.next_id
        self.next_id += 1
        now = self.clock()
        if kind.paces_interval:
            self._last_trigger = now
        p = PendingCheckpoint(cid, final, self.expected, now, kind)
        self.pending[cid] = p
        if _trace.ON:
            _trace.event("trigger", checkpoint=cid, final=final)
        self.send_all(m.Trigger(cid, p.stats.trigger_time, final, kind.savepoint_path))

    # --- 2. ack --------------------------------------------------------------------------
    def on_ack(self, cid: int, task: str, subtask: int, info: m.SubtaskState) -> None:
        p = self.pending.get(cid)
        if p is None:
            return  # late ack of an aborted checkpoint
        p.acks[(task, subtask)] = info
        if _trace.ON:
            _trace.event("ack_received", checkpoint=cid, task=task, subtask=subtask)
        if p.fully_acked:
            self._complete(p)

    def on_decline(self, cid: int, task: str, subtask: int, reason: str) -> None:
        p = self.pending.get(cid)
        if p is not None:
            self._abort(p, f"declined by task {task!r} subtask {subtask}: {reason}")

    # --- 3. complete ---------------------------------------------------------------------
    def _complete(self, p: PendingCheckpoint) -> None:
        directory = p.kind.directory(self.storage, p.id)
        for (task, subtask), info in sorted(p.acks.items()):
            p.stats.subtasks.append(SubtaskCheckpointStats(
                task, subtask, info.sync_ms, info.async_ms, info.align_ms, info.size,
                info.unaligned, info.inflight_bytes))
        meta = from_acks(
            p.acks, flow=self.flow, checkpoint_id=p.id, kind=p.kind.name, final=p.final,
            trigger_time=p.stats.trigger_time, max_parallelism=self.max_parallelism,
            op_kinds=self.op_kinds, directory=directory, flow_dir=self.storage.dir,
            shared_prefix=self.registry.root_rel if p.kind.shares_files else None)
        p.stats.size, p.stats.incremental_size = meta.size, meta.incremental_size
        try:
            p.stats.path = self.storage.write_metadata(meta, directory)
        except OSError as e:
            self._abort(p, f"writing metadata to {directory} failed: {e.strerror or e}")
            return
        _faults.point("coordinator.after_metadata_rename", checkpoint=p.id)
        p.kind.completed(p.id, directory, list(meta.shared), self.storage, self.registry)
        self._end(p, CheckpointStatus.COMPLETED)
        if p.kind.counts_failures:
            self.failures.succeeded()
            self._last_complete = self.clock()
        p.kind.log_completed(p.stats, self.flow)
        # --- 4. notify ---
        if _trace.ON:
            _trace.event("complete", checkpoint=p.id, final=p.final)
        self.send_all(m.Complete(p.id, p.final))
        if p.final:
            self.final_completed = True
        p.kind.answer(self.storage.public_path(directory), None)
        if p.kind.subsumable:
            for older in [q for q in self.pending.values() if q.id < p.id and q.kind.subsumable]:
                self._abort(older, f"subsumed by checkpoint {p.id}", count=False)
        self.retention.apply(set(self.pending))

    # --- abort ---------------------------------------------------------------------------
    def _abort(self, p: PendingCheckpoint, reason: str, notify: bool = True,
               count: bool = True) -> None:
        """Abort ``p``; ``notify``: tasks run and are told; ``count``: a real failure (not
        a subsumption or a restart). May end the attempt (the failure policy)."""
        p.stats.failure = reason
        p.stats.counts_as_failure = count
        self._end(p, CheckpointStatus.ABORTED)
        p.kind.discard(self.storage, p.id)
        log.warning("%s %d aborted: %s", p.kind.name, p.id, reason,
                    extra=log_fields(f"{p.kind.name}_aborted", self.flow, p.stats))
        if notify:
            self.send_all(m.Abort(p.id))
        p.kind.answer(None, f"savepoint {p.id} failed: {reason}")
        self.registry.collect(set(self.pending))
        self.failures.aborted(p.id, p.kind, p.final, reason, counted=count, running=notify)

    def _end(self, p: PendingCheckpoint, status: CheckpointStatus) -> None:
        p.move(status)
        p.stats.duration = self.clock() - p.started
        self.pending.pop(p.id, None)
        self.history.append(p.stats)

