"""The checkpoint coordinator: the one object that decides when checkpoint n is complete.

Steps for checkpoint ``n`` (DESIGN §3), all here:

1. **trigger** every ``interval`` (respecting ``min_pause`` and ``max_concurrent``): tell the
   source tasks to emit barrier ``n``;
2. collect one **ack** per subtask with its state file (or a **decline**, which fails ``n``);
3. when every subtask acked, write the **metadata** atomically: only now is ``n`` complete;
4. **notify** every task ``complete(n)`` (sinks commit);
5. abort pending checkpoints older than ``n`` (subsumed) and delete completed checkpoints
   beyond ``retained``.

A checkpoint that times out or is declined is **aborted** and counted; more than
``tolerable_failures`` consecutive failures fail the job (the restart strategy decides what
then). When every source is exhausted, a **final** checkpoint runs so the last transactions
commit.

A **savepoint** runs the same protocol into its own directory, in the backend-neutral
format, with no shared files. It subsumes no checkpoint and is never deleted. Like a
checkpoint it completes with ``complete(n)``: sinks commit what it pre-committed. So that a
failover never resumes from before output it committed, recovery considers savepoints too
(the newest complete checkpoint *or* savepoint, see ``CheckpointStorage.latest_valid``).
Stop-with-savepoint is also the job's final checkpoint: sources end, the job finishes.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onceflow import _faults
from onceflow.checkpoint.metadata import CheckpointMetadata, OperatorEntry, StateFile, SubtaskFile
from onceflow.checkpoint.shared import SharedRegistry
from onceflow.checkpoint.storage import CheckpointStorage
from onceflow.errors import CheckpointError
from onceflow.runtime import messages as m

log = logging.getLogger("onceflow.checkpoint")


class CheckpointStatus(enum.Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class SubtaskCheckpointStats:
    task: str
    subtask: int
    sync_ms: float
    async_ms: float
    alignment_ms: float
    size: int


@dataclass
class CheckpointStats:
    """What one checkpoint cost. Durations in seconds unless the name says ms."""

    id: int
    status: CheckpointStatus
    trigger_time: float  # wall clock, seconds since the epoch
    duration: float | None = None  # trigger -> complete (or abort)
    size: int = 0  # bytes of state the checkpoint references (its full size)
    final: bool = False
    path: str | None = None
    failure: str | None = None
    subtasks: list[SubtaskCheckpointStats] = field(default_factory=list)
    kind: str = "checkpoint"  # or "savepoint"
    counts_as_failure: bool = False  # aborted, and not just subsumed or cut by a restart
    incremental_size: int = 0  # bytes this checkpoint wrote (the rest it reused)

    @property
    def max_sync_ms(self) -> float:
        return max((s.sync_ms for s in self.subtasks), default=0.0)

    @property
    def max_async_ms(self) -> float:
        return max((s.async_ms for s in self.subtasks), default=0.0)

    @property
    def max_alignment_ms(self) -> float:
        return max((s.alignment_ms for s in self.subtasks), default=0.0)


_LEGAL = {
    CheckpointStatus.PENDING: {CheckpointStatus.COMPLETED, CheckpointStatus.ABORTED},
    CheckpointStatus.COMPLETED: set(),
    CheckpointStatus.ABORTED: set(),
}


SavepointCallback = Callable[[str | None, str | None], None]  # (path, error)


class PendingCheckpoint:
    def __init__(self, cid: int, final: bool, expected: set[tuple[str, int]], mono: float,
                 savepoint: str | None = None,
                 on_done: SavepointCallback | None = None) -> None:
        self.id = cid
        self.final = final
        self.expected = set(expected)
        self.acks: dict[tuple[str, int], m.SubtaskState] = {}
        self.started = mono
        self.savepoint = savepoint  # the savepoint's directory
        self.on_done = on_done
        self.stats = CheckpointStats(cid, CheckpointStatus.PENDING, time.time(), final=final,
                                     kind="savepoint" if savepoint else "checkpoint")

    @property
    def status(self) -> CheckpointStatus:
        return self.stats.status

    def move(self, to: CheckpointStatus) -> None:
        if to not in _LEGAL[self.status]:
            raise RuntimeError(f"checkpoint {self.id}: illegal transition {self.status} -> {to}")
        self.stats.status = to

    @property
    def fully_acked(self) -> bool:
        return self.expected <= self.acks.keys()


class CheckpointFailuresExceeded(CheckpointError):
    """More consecutive checkpoint failures than ``tolerable_failures``."""


@dataclass(frozen=True)
class CoordinatorSettings:
    interval: float | None  # None: only the final checkpoint
    timeout: float
    min_pause: float
    max_concurrent: int
    retained: int
    tolerable_failures: int


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
        self.consecutive_failures = 0
        self.exhausted: set[tuple[str, int]] = set()
        self.final_completed = False
        self._running = False
        self._last_trigger = 0.0
        self._last_complete = float("-inf")
        self.registry = SharedRegistry(storage.dir)
        self.registry.load(storage)
        self.registry.sweep()  # no task runs yet
        self._savepoint_requests: list[tuple[str | None, bool, SavepointCallback]] = []
        self.stopping = False  # a stop-with-savepoint is in flight

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
        self.consecutive_failures = 0
        self._running = False
        self.next_id = max(self.next_id, self.storage.next_id())
        self.registry.sweep()

    def fail_requests(self, reason: str) -> None:
        """The job ends: savepoints asked for and not taken fail with ``reason``."""
        requests, self._savepoint_requests = self._savepoint_requests, []
        for _, _, cb in requests:
            cb(None, reason)
        for p in list(self.pending.values()):
            if p.on_done is not None:
                p.on_done(None, reason)
                p.on_done = None

    def trigger_savepoint(self, directory: str | None, stop: bool,
                          on_done: SavepointCallback) -> None:
        """Take a savepoint into a new folder of ``directory`` (default: the flow's
        checkpoint directory); with ``stop`` the job ends after it (stop-with-savepoint).
        ``on_done(path, None)`` or ``on_done(None, error)`` is called from the driver loop."""
        if self.final_completed or self.stopping or self.final_requested or \
                any(p.final for p in self.pending.values()):
            on_done(None, "the job is already finishing (its input ended, or a stop was "
                    "asked for); no savepoint can be taken now")
            return
        if not self._running:
            self._savepoint_requests.append((directory, stop, on_done))
            return
        cid = self.next_id
        parent = os.path.abspath(directory) if directory else self.storage.dir
        path = os.path.join(parent, f"savepoint-{cid}-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.makedirs(path)
        except OSError as e:
            on_done(None, f"cannot create savepoint directory {path}: {e.strerror or e}")
            return
        if stop:
            self.stopping = True
        self._trigger(final=stop, savepoint=path, on_done=on_done)

    @property
    def final_requested(self) -> bool:
        return bool(self.sources) and self.sources <= self.exhausted

    # --- events --------------------------------------------------------------------------
    def tick(self) -> None:
        if not self._running:
            return
        now = self.clock()
        for p in list(self.pending.values()):
            if now - p.started > self.s.timeout:
                self._abort(p, f"expired after {self.s.timeout:g}s before all tasks acknowledged "
                            f"({len(p.acks)}/{len(p.expected)} acks)")
        if self.final_completed or self.stopping:
            return
        if self.final_requested:
            if not self.pending:
                self._trigger(final=True)
            return
        if self.s.interval is None or len(self.pending) >= self.s.max_concurrent:
            return
        if now - self._last_trigger >= self.s.interval and \
                now - self._last_complete >= self.s.min_pause:
            self._trigger(final=False)

    def next_deadline(self) -> float:
        """Seconds until ``tick`` may have something to do."""
        if self.s.interval is None:
            return 0.2
        return max(0.0, min(0.2, self._last_trigger + self.s.interval - self.clock()))

    def on_exhausted(self, task: str, subtask: int) -> None:
        self.exhausted.add((task, subtask))

    def on_ack(self, cid: int, task: str, subtask: int, info: m.SubtaskState) -> None:
        p = self.pending.get(cid)
        if p is None:
            return  # late ack of an aborted checkpoint
        p.acks[(task, subtask)] = info
        if p.fully_acked:
            self._complete(p)

    def on_decline(self, cid: int, task: str, subtask: int, reason: str) -> None:
        p = self.pending.get(cid)
        if p is not None:
            self._abort(p, f"declined by task {task!r} subtask {subtask}: {reason}")

    # --- the protocol --------------------------------------------------------------------
    def _trigger(self, final: bool, savepoint: str | None = None,
                 on_done: SavepointCallback | None = None) -> None:
        cid = self.next_id
        self.next_id += 1
        now = self.clock()
        if savepoint is None:
            self._last_trigger = now
        p = PendingCheckpoint(cid, final, self.expected, now, savepoint, on_done)
        self.pending[cid] = p
        self.send_all(m.Trigger(cid, p.stats.trigger_time, final, savepoint))

    def _complete(self, p: PendingCheckpoint) -> None:
        operators: dict[str, dict[str, Any]] = {}
        files: dict[str, StateFile] = {}
        extra: dict[str, dict[str, Any]] = {}
        directory = p.savepoint or self.storage.path(p.id)
        for (task, subtask), info in sorted(p.acks.items()):
            files[info.file] = StateFile(info.size, info.crc32)
            extra.update(info.uploaded)
            p.stats.incremental_size += info.incremental_size
            for uid in info.ops:
                entry = operators.setdefault(
                    uid, {"task": task, "parallelism": info.parallelism,
                          "kind": self.op_kinds.get(uid), "stateful": False, "files": []})
                if uid in info.stateful:
                    entry["stateful"] = True
                entry["files"].append(SubtaskFile(subtask, info.file))
            p.stats.subtasks.append(SubtaskCheckpointStats(
                task, subtask, info.sync_ms, info.async_ms, info.align_ms, info.size))
        p.stats.size = sum(f.size for f in files.values()) + \
            sum(f["size"] for f in extra.values())
        shared = sorted({os.path.relpath(os.path.normpath(os.path.join(directory, rel)),
                                         self.storage.dir)
                         for rel in extra if not p.savepoint})
        shared = [f for f in shared if f.startswith(self.registry.root_rel)]
        meta = CheckpointMetadata(
            flow=self.flow,
            checkpoint_id=p.id,
            kind=p.stats.kind,
            final=p.final,
            trigger_time=p.stats.trigger_time,
            completion_time=time.time(),
            max_parallelism=self.max_parallelism,
            operators={uid: OperatorEntry(uid, e["task"], e["parallelism"], e["kind"],
                                          e["stateful"], tuple(e["files"]))
                       for uid, e in operators.items()},
            files=files,
            extra_files=extra,
            shared=tuple(shared),
            size=p.stats.size,
            incremental_size=p.stats.incremental_size,
            metrics={f"{t}#{s}": info.metrics for (t, s), info in sorted(p.acks.items())},
        )
        try:
            p.stats.path = self.storage.write_metadata(meta, p.savepoint)
        except OSError as e:
            self._abort(p, f"writing metadata to {directory} failed: {e.strerror or e}")
            return
        _faults.point("coordinator.after_metadata_rename", checkpoint=p.id)
        if p.savepoint is not None:
            self._complete_savepoint(p)
            return
        self.registry.register(p.id, shared)
        p.move(CheckpointStatus.COMPLETED)
        p.stats.duration = self.clock() - p.started
        del self.pending[p.id]
        self.history.append(p.stats)
        self.consecutive_failures = 0
        self._last_complete = self.clock()
        st = p.stats
        log.info(
            "checkpoint %d complete%s: %d subtasks, %.1f ms, %s (max sync %.1f ms, async %.1f "
            "ms, alignment %.1f ms)", st.id, " (final)" if st.final else "", len(st.subtasks),
            (st.duration or 0) * 1e3, _size(st.size), st.max_sync_ms, st.max_async_ms,
            st.max_alignment_ms, extra=_log_fields("checkpoint_completed", self.flow, st))
        self.send_all(m.Complete(p.id, p.final))
        if p.final:
            self.final_completed = True
        for older in [q for q in self.pending.values()
                      if q.id < p.id and q.savepoint is None]:
            self._abort(older, f"subsumed by checkpoint {p.id}", count=False)
        self._retain()

    def _complete_savepoint(self, p: PendingCheckpoint) -> None:
        p.move(CheckpointStatus.COMPLETED)
        p.stats.duration = self.clock() - p.started
        del self.pending[p.id]
        self.history.append(p.stats)
        log.info("savepoint %d complete%s: %s, %.1f ms, %s", p.id,
                 " (the job stops)" if p.final else "", p.savepoint,
                 (p.stats.duration or 0) * 1e3, _size(p.stats.size))
        assert p.savepoint is not None
        try:
            self.storage.write_savepoint_ref(p.id, p.savepoint)
        except OSError as e:
            log.warning("could not record savepoint %d in %s (%s): restore='latest' will "
                        "not consider it", p.id, self.storage.dir, e.strerror)
        # sinks commit what the savepoint pre-committed; with stop, the job then finishes
        self.send_all(m.Complete(p.id, p.final))
        if p.final:
            self.final_completed = True
        if p.on_done is not None:
            p.on_done(p.savepoint, None)
        self.registry.collect(set(self.pending))

    def _abort(self, p: PendingCheckpoint, reason: str, notify: bool = True,
               count: bool = True) -> None:
        p.move(CheckpointStatus.ABORTED)
        p.stats.failure = reason
        p.stats.counts_as_failure = count
        p.stats.duration = self.clock() - p.started
        self.pending.pop(p.id, None)
        self.history.append(p.stats)
        what = "savepoint" if p.savepoint else "checkpoint"
        if p.savepoint is not None:
            shutil.rmtree(p.savepoint, ignore_errors=True)
        else:
            self.storage.discard(p.id)
        log.warning("%s %d aborted: %s", what, p.id, reason,
                    extra=_log_fields(f"{what}_aborted", self.flow, p.stats))
        if notify:
            self.send_all(m.Abort(p.id))
        if p.on_done is not None:
            p.on_done(None, f"savepoint {p.id} failed: {reason}")
            p.on_done = None
        self.registry.collect(set(self.pending))
        if p.savepoint is not None and p.final and notify:
            # the sources already ended their input for stop-with-savepoint: the job cannot
            # go on from here, so it fails over to its last checkpoint and keeps running
            raise CheckpointFailuresExceeded(
                f"stop-with-savepoint {p.id} failed ({reason}); the job restarts from its "
                "last complete checkpoint and keeps running")
        if not count or p.savepoint is not None:
            return
        self.consecutive_failures += 1
        if p.final:
            raise CheckpointFailuresExceeded(f"the final checkpoint {p.id} failed: {reason}")
        if self.consecutive_failures > self.s.tolerable_failures:
            raise CheckpointFailuresExceeded(
                f"{self.consecutive_failures} consecutive checkpoint failure(s), more than "
                f"tolerable_failures={self.s.tolerable_failures}; last: checkpoint {p.id} "
                f"{reason}"
            )

    def _retain(self) -> None:
        done = self.storage.complete_ids()
        in_flight = set(self.pending)
        for cid in done[: max(0, len(done) - self.s.retained)]:
            self.storage.discard(cid)
            self.registry.release(cid, in_flight)
        self.registry.collect(in_flight)


def _log_fields(event: str, flow: str, st: CheckpointStats) -> dict[str, Any]:
    """The numbers of a checkpoint log line, as fields for structured (JSON) logs."""
    return {"event": event, "flow": flow, "checkpoint_id": st.id, "final": st.final,
            "duration_ms": (st.duration or 0) * 1e3, "size": st.size,
            "incremental_size": st.incremental_size, "subtasks": len(st.subtasks),
            "max_sync_ms": st.max_sync_ms, "max_async_ms": st.max_async_ms,
            "max_alignment_ms": st.max_alignment_ms, "failure": st.failure}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
