"""``JobStatus``: what a running job looks like from outside, in one thread-safe object.

The driver is the only writer (from its supervising thread): the job graph once, worker
metrics about every second, checkpoints as the coordinator records them, attempts and
restarts. Readers (the web dashboard, the Prometheus collector, the progress printer, a
job client) call :meth:`JobStatus.snapshot`, which copies everything into plain dicts and
lists under the lock: a reader never sees a half-applied update, and never holds the lock
while it formats or sends anything.

Rates are computed here, from two consecutive reports of the same subtask (workers report
about once a second): records per second, and busy and backpressured milliseconds per
second. After a restart the counters go back to the restored checkpoint's counts, so the
previous samples are dropped and rates restart from zero.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onceflow.checkpoint.stats import CheckpointStats, CheckpointStatus
from onceflow.graph.jobgraph import JobGraph


class JobState(enum.Enum):
    CREATED = "CREATED"  # run() called, no worker started yet
    RUNNING = "RUNNING"  # every worker of the current attempt is running
    RESTARTING = "RESTARTING"  # an attempt failed, or the next one is opening (restoring)
    FINISHED = "FINISHED"
    FAILED = "FAILED"


_LEGAL = {
    JobState.CREATED: {JobState.RUNNING, JobState.RESTARTING, JobState.FAILED, JobState.FINISHED},
    JobState.RUNNING: {JobState.RESTARTING, JobState.FINISHED, JobState.FAILED},
    JobState.RESTARTING: {JobState.RUNNING, JobState.RESTARTING, JobState.FAILED,
                          JobState.FINISHED},
    JobState.FINISHED: set(),
    JobState.FAILED: set(),
}


@dataclass
class _Sample:
    """The latest report of one operator subtask, and the rates since the one before."""

    records_in: int = 0
    records_out: int = 0
    busy_ms: float = 0.0
    backpressured_ms: float = 0.0
    at: float = 0.0  # monotonic time of the report
    in_rate: float = 0.0
    out_rate: float = 0.0
    busy_per_s: float = 0.0  # ms per second
    backpressured_per_s: float = 0.0
    watermark: float | None = None  # event time (seconds), None before any watermark
    late_dropped: int = 0
    lost_transactions: int = 0  # a sink's transactions found lost (since the job started)


@dataclass
class Restart:
    time: float  # wall clock of the failure
    cause: str
    restored_checkpoint: int | None
    delay: float


@dataclass
class _Operator:
    uid: str
    name: str
    kind: str
    task: str
    parallelism: int
    subtasks: dict[int, _Sample] = field(default_factory=dict)


class JobStatus:
    """Live state of one job: graph, per-operator counters and rates, checkpoint history,
    attempts and restarts. Thread-safe; see the module docstring."""

    def __init__(self, flow: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.flow = flow
        self._clock = clock
        self._lock = threading.Lock()
        self._state = JobState.CREATED
        self._created = time.time()
        self._finished: float | None = None
        self._failure: str | None = None
        self._graph: dict[str, Any] = {"tasks": [], "edges": []}
        self._ops: dict[str, _Operator] = {}
        self._checkpoints: list[dict[str, Any]] = []
        self._seen_history = 0
        self._pending = 0
        self._completed = 0
        self._failed = 0
        self._restarts: list[Restart] = []
        self._attempt = -1
        self._attempt_started: float | None = None  # wall clock
        self._restoring_from: int | None = None
        self._last_restore: tuple[float, float, int] | None = None  # time, seconds, id
        self._pids: dict[int, int] = {}
        self._endpoints: dict[str, str] = {}

    # --- writes (the driver) -------------------------------------------------------------
    def set_graph(self, graph: JobGraph) -> None:
        tasks: list[dict[str, Any]] = []
        edges: list[dict[str, Any]] = []
        ops: dict[str, _Operator] = {}
        for uid in graph.order:
            t = graph.tasks[uid]
            tasks.append({"uid": t.uid, "name": t.name, "parallelism": t.parallelism,
                          "operators": [n.uid for n in t.nodes]})
            for n in t.nodes:
                ops[n.uid] = _Operator(n.uid, n.name, n.kind.value, t.uid, t.parallelism)
            for down, part, _key, _no in t.outputs:
                edges.append({"from": t.uid, "to": down, "partitioning": part.value})
        with self._lock:
            self._graph = {"tasks": tasks, "edges": edges, "workers": graph.workers,
                           "max_parallelism": graph.max_parallelism}
            self._ops = ops

    def attempt_started(self, attempt: int, restoring_from: int | None,
                        pids: dict[int, int]) -> None:
        """Workers of ``attempt`` were forked; they restore ``restoring_from`` (if any)."""
        with self._lock:
            self._attempt = attempt
            self._attempt_started = time.time()
            self._restoring_from = restoring_from
            self._pids = dict(pids)
            for op in self._ops.values():
                op.subtasks.clear()  # counters restart from the restored counts
            if self._state is JobState.RUNNING:
                self._move(JobState.RESTARTING)

    def attempt_running(self) -> tuple[float, int] | None:
        """Every worker of the current attempt opened its tasks (restored its state).
        Returns (seconds the restore took, checkpoint id) when it restored one."""
        with self._lock:
            now = time.time()
            self._move(JobState.RUNNING)
            if self._restoring_from is None or self._attempt_started is None:
                return None
            self._last_restore = (now, now - self._attempt_started, self._restoring_from)
            return now - self._attempt_started, self._restoring_from

    def restarting(self, cause: str, restored_checkpoint: int | None, delay: float) -> None:
        with self._lock:
            self._restarts.append(Restart(time.time(), cause, restored_checkpoint, delay))
            self._pids = {}
            self._move(JobState.RESTARTING)

    def finished(self, metrics: dict[str, tuple[int, int]]) -> None:
        """The job ended well; ``metrics`` are the final exactly-once counts."""
        with self._lock:
            for key, (rin, rout) in metrics.items():
                s = self._sample(key)
                if s is not None:
                    s.records_in, s.records_out = rin, rout
                    s.in_rate = s.out_rate = s.busy_per_s = s.backpressured_per_s = 0.0
            self._pids = {}
            self._finished = time.time()
            self._move(JobState.FINISHED)

    def failed(self, reason: str) -> None:
        with self._lock:
            self._pids = {}
            self._failure = reason
            self._finished = time.time()
            if self._state not in (JobState.FINISHED, JobState.FAILED):
                self._move(JobState.FAILED)

    def on_metrics(self, report: dict[str, tuple[int, int, float, float]],
                   watermarks: dict[str, float] | None = None,
                   dropped: dict[str, int] | None = None) -> None:
        """One worker's periodic report: ``{"uid#subtask": (in, out, busy_ms, bp_ms)}``,
        cumulative since the worker started (record counts include restored ones); the
        operators' watermarks and late records dropped, by the same keys."""
        now = self._clock()
        with self._lock:
            for key, wm in (watermarks or {}).items():
                s = self._sample(key)
                if s is not None:
                    s.watermark = wm
            for key, n in (dropped or {}).items():
                s = self._sample(key)
                if s is not None:
                    s.late_dropped = n
            for key, (rin, rout, busy, bp) in report.items():
                s = self._sample(key)
                if s is None:
                    continue
                dt = now - s.at
                if s.at and dt > 0:
                    s.in_rate = max(0.0, (rin - s.records_in) / dt)
                    s.out_rate = max(0.0, (rout - s.records_out) / dt)
                    s.busy_per_s = min(1000.0, max(0.0, (busy - s.busy_ms) / dt))
                    s.backpressured_per_s = min(1000.0, max(0.0, (bp - s.backpressured_ms) / dt))
                s.records_in, s.records_out, s.busy_ms, s.backpressured_ms = rin, rout, busy, bp
                s.at = now

    def sync_checkpoints(self, history: list[CheckpointStats], pending: int) -> None:
        """Copy the coordinator's new history entries (cheap when nothing changed)."""
        if len(history) == self._seen_history and pending == self._pending:
            return
        new = history[self._seen_history:]
        with self._lock:
            self._seen_history = len(history)
            self._pending = pending
            for c in new:
                self._checkpoints.append(_checkpoint_row(c))
                if c.status is CheckpointStatus.COMPLETED:
                    self._completed += 1
                elif c.counts_as_failure:
                    self._failed += 1
            del self._checkpoints[:-_HISTORY_KEPT]

    def set_endpoint(self, name: str, url: str) -> None:
        """Where the dashboard / metrics of this job are served (shown to readers)."""
        with self._lock:
            self._endpoints[name] = url

    def _sample(self, key: str) -> _Sample | None:
        uid, _, sub = key.rpartition("#")
        op = self._ops.get(uid)
        if op is None:
            return None
        return op.subtasks.setdefault(int(sub), _Sample())

    def _move(self, to: JobState) -> None:
        if to not in _LEGAL[self._state]:
            raise RuntimeError(f"job {self.flow!r}: illegal transition {self._state} -> {to}")
        self._state = to

    # --- reads ---------------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        with self._lock:
            return self._state

    @property
    def attempt(self) -> int:
        with self._lock:
            return self._attempt

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of the current attempt (empty between attempts)."""
        with self._lock:
            return dict(self._pids)

    def on_lost(self, lost: dict[str, int]) -> None:
        """Sinks' lost transactions: ``{"uid#subtask": count since the job started}``."""
        if not lost:
            return
        with self._lock:
            for key, n in lost.items():
                s = self._sample(key)
                if s is not None:
                    s.lost_transactions = n

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain JSON-ready data (see docs/operations.md#dashboard)."""
        with self._lock:
            now = time.time()
            operators = []
            for op in self._ops.values():
                subs: list[dict[str, Any]] = [
                    {"subtask": i, "records_in": s.records_in, "records_out": s.records_out,
                         "records_in_per_s": s.in_rate, "records_out_per_s": s.out_rate,
                         "busy_ms": s.busy_ms, "backpressured_ms": s.backpressured_ms,
                         "busy_ms_per_s": s.busy_per_s,
                         "backpressured_ms_per_s": s.backpressured_per_s,
                         "watermark": _json_time(s.watermark),
                         "watermark_lag_s": (None if s.watermark is None
                                             or s.watermark == math.inf
                                             else max(0.0, now - s.watermark)),
                         "late_dropped": s.late_dropped,
                         "lost_transactions": s.lost_transactions}
                        for i, s in sorted(op.subtasks.items())]
                operators.append({
                    "uid": op.uid, "name": op.name, "kind": op.kind, "task": op.task,
                    "parallelism": op.parallelism,
                    "records_in": sum(s["records_in"] for s in subs),
                    "records_out": sum(s["records_out"] for s in subs),
                    "records_in_per_s": sum(s["records_in_per_s"] for s in subs),
                    "records_out_per_s": sum(s["records_out_per_s"] for s in subs),
                    "busy_ms_per_s": max((s["busy_ms_per_s"] for s in subs), default=0.0),
                    "backpressured_ms_per_s": max((s["backpressured_ms_per_s"] for s in subs),
                                                  default=0.0),
                    # the operator's event time: the minimum over its subtasks ("end" once
                    # bounded input ended), None until every subtask has a watermark
                    "watermark": _json_time(_min_watermark(
                        [s.watermark for s in op.subtasks.values()], op.parallelism)),
                    "late_dropped": sum(s["late_dropped"] for s in subs),
                    "lost_transactions": sum(s["lost_transactions"] for s in subs),
                    "subtasks": subs,
                })
            completed = [c for c in self._checkpoints
                         if c["status"] == CheckpointStatus.COMPLETED.value]
            restore = None
            if self._last_restore is not None:
                t, secs, cid = self._last_restore
                restore = {"time": t, "duration_s": secs, "checkpoint": cid}
            return {
                "flow": self.flow,
                "state": self._state.value,
                "failure": self._failure,
                "started": self._created,
                "finished": self._finished,
                "uptime_s": (self._finished or now) - self._created,
                "attempt": self._attempt,
                "workers": dict(self._pids),
                "graph": {**self._graph, "tasks": [dict(t) for t in self._graph["tasks"]]},
                "operators": operators,
                "checkpoints": {
                    "completed": self._completed,
                    "failed": self._failed,
                    "in_progress": self._pending,
                    "last_completed": dict(completed[-1]) if completed else None,
                    "history": [dict(c) for c in self._checkpoints],
                },
                "restarts": [{"time": r.time, "cause": r.cause,
                              "restored_checkpoint": r.restored_checkpoint, "delay_s": r.delay}
                             for r in self._restarts],
                "last_restore": restore,
                "endpoints": dict(self._endpoints),
            }


_HISTORY_KEPT = 500  # checkpoint rows kept for readers (the counts cover all of them)


def _min_watermark(wms: list[float | None], parallelism: int) -> float | None:
    known = [w for w in wms if w is not None]
    return min(known) if len(known) == parallelism else None


def _json_time(t: float | None) -> float | str | None:
    """An event time for JSON: ``"end"`` for +infinity (bounded input ended)."""
    return "end" if t == math.inf else t


def _checkpoint_row(c: CheckpointStats) -> dict[str, Any]:
    return {
        "id": c.id,
        "kind": c.kind,
        "status": c.status.value,
        "final": c.final,
        "trigger_time": c.trigger_time,
        "duration_ms": None if c.duration is None else c.duration * 1e3,
        "sync_ms": c.max_sync_ms,
        "async_ms": c.max_async_ms,
        "alignment_ms": c.max_alignment_ms,
        "unaligned": c.unaligned,
        "unaligned_subtasks": sum(1 for s in c.subtasks if s.unaligned),
        "inflight_bytes": c.inflight_bytes,
        "size": c.size,
        "incremental_size": c.incremental_size,
        "subtasks": len(c.subtasks),
        "failure": c.failure,
        "path": c.path,
    }
