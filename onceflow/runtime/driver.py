"""The driver: builds the job graph, has an executor start the workers of each attempt,
runs the checkpoint coordinator, and restarts everything from the latest complete checkpoint
when anything fails (DESIGN §4).

Failure handling is deliberately blunt: on any failure every worker of the attempt is
stopped, the latest complete checkpoint is chosen, and all tasks restart from it. Sinks
recommit what that checkpoint lists and abort whatever else earlier attempts left.

Where workers run is the executor's business (``onceflow/executors``): forked processes by
default, threads of this process with ``executor="inline"``. The driver only talks to them
through their control connections.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, cast

from onceflow import _trace
from onceflow.api.config import CheckpointConfig, RestartStrategy
from onceflow.api.result import JobResult, OperatorMetrics
from onceflow.checkpoint.coordinator import (
    CheckpointCoordinator,
    CheckpointFailuresExceeded,
    CheckpointStatus,
    CoordinatorSettings,
)
from onceflow.checkpoint.permissions import warn_if_open
from onceflow.checkpoint.restore import RestorePlan, check_compatible
from onceflow.checkpoint.storage import (
    CheckpointStorage,
    CompletedCheckpoint,
    open_storage,
    resolve_restore_path,
)
from onceflow.errors import (
    CheckpointStorageError,
    ConfigurationError,
    SavepointError,
    ServiceUnreachableError,
)
from onceflow.executors import Executor, Local, Workers
from onceflow.executors.base import FewerSlots
from onceflow.graph.jobgraph import JobGraph, build
from onceflow.graph.logical import Kind, LogicalPlan
from onceflow.runtime import messages as m
from onceflow.runtime.control import JobControl, Request
from onceflow.runtime.failures import FailureTracker
from onceflow.runtime.interrupt import GracefulStop
from onceflow.runtime.observers import Observers
from onceflow.runtime.observers import validate as validate_observers
from onceflow.runtime.rerun import check_fresh_start
from onceflow.runtime.status import JobStatus
from onceflow.runtime.worker import WorkerSpec

log = logging.getLogger("onceflow")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class JobConfig:
    flow: str
    parallelism: int
    max_parallelism: int
    batch_size: int
    channel_capacity: int
    checkpoint: CheckpointConfig | None
    restart: RestartStrategy
    # observability (runtime/observers.py): all off by default
    dashboard: str | None = None  # "[HOST:]PORT" of the web dashboard
    metrics_port: int | None = None  # Prometheus endpoint on 127.0.0.1:PORT
    progress: bool | float = False  # live progress on stderr (a number: its period, s)
    dashboard_token: str | None = None  # required to bind the dashboard beyond loopback
    state_backend: Any = None  # MemoryBackend() when None
    executor: Executor = field(default_factory=Local)  # where the workers run
    fresh: bool = False  # start from the beginning even over completed checkpoints


#: seconds an attempt's workers may take from their start until all of them run (open
#: their connectors, restore their state); a worker stuck longer (a hung library call)
#: fails the attempt, and the restart strategy decides what happens next
STARTUP_TIMEOUT_S = float(os.environ.get("ONCEFLOW_STARTUP_TIMEOUT", "300"))


class _Attempt:
    """One attempt as the driver tracks it: its workers and what they reported."""

    def __init__(self, number: int, restore: CompletedCheckpoint | None) -> None:
        self.number = number
        self.restore = restore
        self.workers: Workers | None = None
        self.running: set[int] = set()
        self.finished: set[int] = set()
        self.metrics: dict[str, tuple[int, int]] = {}
        self.watermarks: dict[str, float] = {}  # "uid#subtask" -> event time
        self.dropped: dict[str, int] = {}  # "uid#subtask" -> late records dropped
        self.lost: dict[str, int] = {}  # "uid#subtask" -> sink transactions lost
        self.alignment: dict[int, dict[str, float]] = {}  # worker -> group -> watermark
        self.aligned_to: dict[str, float] = {}  # what was last sent to the workers
        self.processing_started: float | None = None

    def align(self, worker: int, groups: dict[str, float]) -> None:
        """Watermark alignment: the job-wide minimum per group goes back to every worker
        when it changed."""
        if not groups and worker not in self.alignment:
            return
        self.alignment[worker] = groups
        mins: dict[str, float] = {}
        for g in self.alignment.values():
            for k, v in g.items():
                mins[k] = min(mins.get(k, v), v)
        if mins != self.aligned_to:
            self.aligned_to = mins
            self.send_all(m.AlignWatermarks(mins))

    def send_all(self, msg: m.ToWorker) -> None:
        if self.workers is not None:
            self.workers.send_all(m.encode(msg))

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()


@dataclass
class _Run:
    """What the driver keeps across the attempts of one run."""

    graph: JobGraph
    storage: CheckpointStorage
    coordinator: CheckpointCoordinator
    initial: CompletedCheckpoint | None  # what the run was asked to restore
    started: float
    attempt: _Attempt
    failures: list[str] = field(default_factory=list)
    failure_times: list[float] = field(default_factory=list)
    attempt_starts: list[float] = field(default_factory=list)
    processing_started: float | None = None
    final_metrics: dict[str, tuple[int, int]] = field(default_factory=dict)
    rescales: list[str] = field(default_factory=list)  # lower parallelism, and why


class JobDriver:
    def __init__(self, plan: LogicalPlan, cfg: JobConfig) -> None:
        self.plan = plan
        self.cfg = cfg
        self.status = JobStatus(cfg.flow)  # what the dashboard, metrics and progress read
        self.control = JobControl()  # savepoint requests from other threads
        self.stopped_with_savepoint: str | None = None
        #: run() is asking an unreachable server again before anything started: a Ctrl-C
        #: then stops at once (there is nothing to take a savepoint of)
        self.waiting_to_start = False
        self._current: _Attempt | None = None  # the attempt the coordinator talks to
        self.failures = FailureTracker(  # repeats at one record, the user's error
            cfg.flow, cfg.restart, [n.name for n in plan.nodes if n.kind in (Kind.SOURCE,
                                                                               Kind.SINK)])

    # --- preparation ---------------------------------------------------------------------
    def _validate_connectors(self) -> None:
        """Every source's and sink's checks against its server, before anything starts. A
        server that cannot be reached (:class:`ServiceUnreachableError`: a broker down
        for a moment, or a wrong address) is asked again as the restart strategy allows,
        as a failure of the running job would be; when it gives up, the last error says
        for how long. Any other error (a setting the server refuses) is raised at once."""
        failure_times: list[float] = []
        started = time.monotonic()
        try:
            while True:
                try:
                    self._validate_connectors_once()
                    return
                except ServiceUnreachableError as e:
                    self.waiting_to_start = True
                    failure_times.append(time.monotonic())
                    delay = self.cfg.restart.next_delay(failure_times, time.monotonic())
                    if delay is None:
                        if len(failure_times) == 1:
                            raise
                        raise ServiceUnreachableError(
                            f"{e} (tried {len(failure_times)} times over "
                            f"{time.monotonic() - started:.0f} s; the restart strategy gave "
                            "up)") from e
                    log.warning("job %r cannot start yet: %s; trying again in %.1fs "
                                "(attempt %d, as the restart strategy allows)", self.cfg.flow,
                                e, delay, len(failure_times) + 1,
                                extra={"event": "start_unreachable", "flow": self.cfg.flow,
                                       "delay_s": delay})
                    time.sleep(delay)
        finally:
            self.waiting_to_start = False

    def _validate_connectors_once(self) -> None:
        ck = self.cfg.checkpoint
        for node in self.plan.nodes:
            if node.kind not in (Kind.SOURCE, Kind.SINK):
                continue
            validate = getattr(node.fn, "validate", None)
            if callable(validate):
                validate()
            check = getattr(node.fn, "validate_checkpointing", None)
            if callable(check):
                check(ck.interval if ck else None, ck.timeout if ck else 600.0)

    # --- run -----------------------------------------------------------------------------
    def run(self, restore: str | None) -> JobResult:
        try:
            with GracefulStop(self):  # Ctrl-C / SIGTERM: stop with a savepoint
                return self._prepare_and_run(restore)
        finally:  # also when preparation fails: nobody may wait on a savepoint forever
            self.control.close("the job has ended")

    def _prepare_and_run(self, restore: str | None) -> JobResult:
        cfg = self.cfg
        started = time.time()
        graph = build(self.plan, cfg.parallelism, cfg.max_parallelism)
        self._validate_connectors()
        validate_observers(cfg)
        self.status.set_graph(graph)
        ck = cfg.checkpoint
        tmpdir: str | None = None
        if ck is not None:
            assert ck.storage is not None
            storage = open_storage(ck.storage, cfg.flow)
        else:
            tmpdir = tempfile.mkdtemp(prefix="onceflow-final-")
            storage = CheckpointStorage(tmpdir, cfg.flow)
        storage.prepare()
        if ck is not None:
            warn_if_open(storage)  # state files are pickles: the storage must be private
        observers: Observers | None = None
        try:
            observers = Observers(self.status, cfg, storage.dir if ck is not None else None,
                                  lambda: self.control, job_store=storage
                                  if ck is not None and storage.remote is not None else None)
            result = self._run(graph, storage, restore, started)
        except BaseException as e:
            self.status.failed(str(e) or type(e).__name__)
            raise
        finally:
            cfg.executor.close()
            if observers is not None:
                observers.close()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
        return result

    def _run(self, graph: JobGraph, storage: CheckpointStorage, restore: str | None,
             started: float) -> JobResult:
        """Attempts until one finishes: each restores the latest complete checkpoint."""
        initial = self._restore_point(storage, restore, graph)
        run = _Run(graph, storage, self._coordinator(graph, storage, initial), initial,
                   started, _Attempt(0, initial))
        while True:
            outcome = self._attempt(run)
            if outcome is None:
                self._finished(run)
                return self._result(run)
            delay, restore_from = self._failed(run, outcome)
            time.sleep(delay)
            run.attempt = _Attempt(run.attempt.number + 1, restore_from)

    def _restore_point(self, storage: CheckpointStorage, restore: str | None,
                       graph: JobGraph) -> CompletedCheckpoint | None:
        """The checkpoint ``restore`` names (checked against the flow), if any."""
        initial: CompletedCheckpoint | None = None
        if restore == "latest":
            if self.cfg.checkpoint is None:
                raise ConfigurationError(
                    "run(restore='latest') needs checkpoint storage: call "
                    "enable_checkpointing(interval=..., storage=...) first")
            initial = storage.latest_valid()
            if initial is None:
                log.warning("restore='latest': no complete checkpoint in %s; starting from the "
                            "beginning", storage.url)
        elif restore is not None:
            initial = resolve_restore_path(restore, self.cfg.flow, storage)
        elif self.cfg.checkpoint is not None:  # no silent second copy of the output
            check_fresh_start(storage, self.cfg.flow, self.cfg.fresh)
        if initial is not None:
            for note in check_compatible(graph, initial.meta, initial.path):
                log.info("%s", note)
            log.info("restoring from checkpoint %d at %s", initial.id, initial.location)
        storage.discard_incomplete()
        return initial

    def _coordinator(self, graph: JobGraph, storage: CheckpointStorage,
                     initial: CompletedCheckpoint | None) -> CheckpointCoordinator:
        ck = self.cfg.checkpoint
        settings = CoordinatorSettings(
            interval=ck.interval if ck else None,
            timeout=ck.timeout if ck else 600.0,
            min_pause=ck.min_pause if ck else 0.0,
            max_concurrent=ck.max_concurrent if ck else 1,
            retained=ck.retained if ck else 1,
            tolerable_failures=ck.tolerable_failures if ck else 0,
        )
        expected, sources, kinds = _subtasks(graph)
        coordinator = CheckpointCoordinator(
            settings, storage, self.cfg.flow, graph.max_parallelism, expected, sources,
            self._send_all, op_kinds=kinds)
        if initial is not None:  # ids go on from the restored one (it may be elsewhere)
            coordinator.next_id = max(coordinator.next_id, initial.id + 1)
        return coordinator

    def _send_all(self, msg: m.ToWorker) -> None:
        if self._current is not None:
            self._current.send_all(msg)

    def _attempt(self, run: _Run) -> str | None:
        """Run one attempt to its end: None when the job finished, else why it failed."""
        att = self._current = run.attempt
        run.attempt_starts.append(time.time())
        try:
            outcome = self._run_attempt(run)
        except BaseException:
            att.stop()
            raise
        if run.processing_started is None:
            run.processing_started = att.processing_started
        if outcome is not None:
            att.stop()
        return outcome

    def _finished(self, run: _Run) -> None:
        coordinator = run.coordinator
        coordinator.fail_requests("the job finished before the savepoint was taken")
        run.final_metrics = run.attempt.metrics
        self.status.sync_checkpoints(coordinator.history, len(coordinator.pending))
        self.status.finished(run.final_metrics)

    def _failed(self, run: _Run, outcome: str) -> tuple[float, CompletedCheckpoint | None]:
        """The attempt failed with ``outcome``: the delay before the next one and where it
        starts from, or JobFailedError when the restart strategy allows no next one."""
        coordinator = run.coordinator
        repeats_checked = False
        while True:
            run.failures.append(outcome)
            run.failure_times.append(time.monotonic())
            current, broken = self._prepare_restart(run)
            stop = None
            if not repeats_checked:  # repeats at one record? (once per failed attempt)
                stop, repeats_checked = self.failures.on_failure(coordinator.history), True
            delay = self.cfg.restart.next_delay(run.failure_times, time.monotonic())
            if delay is None or stop:
                coordinator.fail_requests(f"the job failed: {outcome}")
                raise self.failures.job_failed(run.failures,
                                               stop if delay is not None else None)
            if broken is None:
                break
            # a restart that cannot read the storage is one more failed attempt: the
            # restart strategy decides how long to wait for it, and nothing falls back to
            # an older checkpoint or to the beginning (that would duplicate output)
            outcome = f"restarting needs the checkpoint storage, which failed: {broken}"
            log.warning("job %r: %s; retrying in %.1fs", self.cfg.flow, outcome, delay,
                        extra={"event": "restart_storage_failed", "flow": self.cfg.flow})
            time.sleep(delay)
        where = f"checkpoint {current.id}" if current else "the beginning (no checkpoint)"
        head, frames = self.failures.one_line(outcome)  # the user's frames go last
        log.warning("job %r failed: %s; restarting from %s in %.1fs (restart %d)%s",
                    self.cfg.flow, head, where, delay, len(run.failures), frames,
                    extra={"event": "restart", "flow": self.cfg.flow, "cause": outcome,
                           "restart": len(run.failures), "delay_s": delay,
                           "checkpoint_id": current.id if current else None})
        self.status.restarting(outcome, current.id if current else None, delay)
        return delay, current

    def _prepare_restart(self, run: _Run
                         ) -> tuple[CompletedCheckpoint | None, CheckpointStorageError | None]:
        """Abort what was pending and find where the next attempt starts; the storage
        error instead when the storage cannot be read (the job cannot restart yet)."""
        try:
            run.coordinator.reset("the job restarts")
            self.status.sync_checkpoints(run.coordinator.history, 0)
            run.storage.discard_incomplete()
            return self._recovery_point(run), None
        except CheckpointStorageError as e:
            return None, e

    def _recovery_point(self, run: _Run) -> CompletedCheckpoint | None:
        """Where the next attempt starts: the newest complete checkpoint or savepoint this
        run took, else what the run restored."""
        if any(c.status is CheckpointStatus.COMPLETED for c in run.coordinator.history):
            return run.storage.latest_valid()
        return run.initial

    def _result(self, run: _Run) -> JobResult:
        cfg = self.cfg
        return JobResult(
            flow=cfg.flow,
            operators=self._operator_metrics(run.graph, run.final_metrics,
                                             run.attempt.watermarks, run.attempt.dropped,
                                             run.attempt.lost),
            checkpoints=list(run.coordinator.history),
            restarts=len(run.failures),
            failures=run.failures,
            restored_from=run.initial.location if run.initial else None,
            started_at=run.started,
            processing_started_at=run.processing_started or run.started,
            finished_at=time.time(),
            checkpoint_storage=run.storage.url if cfg.checkpoint else None,
            attempts=run.attempt_starts,
            savepoint=self.stopped_with_savepoint,
            rescales=list(run.rescales),
        )

    def _plan(self, graph: JobGraph, restore: CompletedCheckpoint | None) -> RestorePlan:
        return RestorePlan.build(graph, restore.meta if restore else None,
                                 restore.path if restore else "")

    def _operator_metrics(self, graph: JobGraph, raw: dict[str, tuple[int, int]],
                          watermarks: dict[str, float] | None = None,
                          dropped: dict[str, int] | None = None,
                          lost: dict[str, int] | None = None
                          ) -> dict[str, OperatorMetrics]:
        watermarks, dropped, lost = watermarks or {}, dropped or {}, lost or {}
        names = [n.name for t in graph.tasks.values() for n in t.nodes]
        out: dict[str, OperatorMetrics] = {}
        for t in graph.tasks.values():
            for n in t.nodes:
                key = n.name if names.count(n.name) == 1 else n.uid
                m = OperatorMetrics(n.name, n.uid, t.parallelism)
                for i in range(t.parallelism):
                    rin, rout = raw.get(f"{n.uid}#{i}", (0, 0))
                    m.records_in += rin
                    m.records_out += rout
                    m.late_dropped += dropped.get(f"{n.uid}#{i}", 0)
                    m.lost_transactions += lost.get(f"{n.uid}#{i}", 0)
                wms = [watermarks[k] for i in range(t.parallelism)
                       if (k := f"{n.uid}#{i}") in watermarks]
                if len(wms) == t.parallelism:
                    m.watermark = min(wms)
                out[key] = m
        return out

    # --- one attempt ---------------------------------------------------------------------
    def _worker_specs(self, run: _Run) -> list[WorkerSpec]:
        cfg, ck, att = self.cfg, self.cfg.checkpoint, run.attempt
        exactly_once = ck is None or ck.mode == "exactly_once"
        plan = self._plan(run.graph, att.restore)
        return [WorkerSpec(w, cfg.flow, run.graph, exactly_once, cfg.batch_size,
                           cfg.channel_capacity, run.storage.dir, att.number, att.restore,
                           plan, ck.interval if ck else None, ck.timeout if ck else None,
                           cfg.state_backend, bool(ck and ck.incremental),
                           unaligned=bool(ck and ck.unaligned),
                           aligned_timeout=ck.aligned_timeout if ck else None,
                           buffer_time=ck.effective_buffer_time if ck else None,
                           checkpoint_remote=run.storage.remote)
                for w in range(run.graph.workers)]

    def _run_attempt(self, run: _Run) -> str | None:
        att = run.attempt
        while att.workers is None:
            try:
                att.workers = self.cfg.executor.start(self._worker_specs(run))
            except FewerSlots as e:  # the user allowed it (e.g. Ray after a node loss)
                self._lower_parallelism(run, e)
        self.status.attempt_started(att.number, att.restore.id if att.restore else None,
                                    att.workers.ids)
        return self._supervise(att, run.graph.workers, run.coordinator)

    def _lower_parallelism(self, run: _Run, e: FewerSlots) -> None:
        """The executor holds only ``e.workers`` workers: rebuild the job graph with at
        most that many subtasks per task; the attempt starts from the same checkpoint,
        which the restore plan redistributes by key group (a rescale)."""
        before = run.graph.workers
        if not 1 <= e.workers < before:
            raise ConfigurationError(
                f"executor {self.cfg.executor!r}: asked for a parallelism of {e.workers}, "
                f"which is not lower than {before}: {e.reason}")
        graph = build(self.plan, min(self.cfg.parallelism, e.workers),
                      self.cfg.max_parallelism, cap=e.workers)
        restore = run.attempt.restore
        if restore is not None:
            for note in check_compatible(graph, restore.meta, restore.path):
                log.info("%s", note)
        run.graph = graph
        c = run.coordinator
        c.expected, c.sources, c.op_kinds = _subtasks(graph)
        self.status.set_graph(graph)
        note = f"parallelism {before} -> {graph.workers}: {e.reason}"
        run.rescales.append(note)
        where = f"checkpoint {restore.id}" if restore else "the beginning"
        log.warning("job %r: %s; running with parallelism %d from %s (a rescale by key "
                    "group)", self.cfg.flow, note, graph.workers, where,
                    extra={"event": "rescale", "flow": self.cfg.flow, "from": before,
                           "to": graph.workers, "reason": e.reason,
                           "checkpoint_id": restore.id if restore else None})

    def _request(self, req: Request, coordinator: CheckpointCoordinator) -> None:
        """A request from another thread (job client, dashboard), in the driver loop."""
        if req.kind != "savepoint":
            req.future.set_exception(ConfigurationError(f"unknown request {req.kind!r}"))
            return
        if self.cfg.checkpoint is None:
            req.future.set_exception(ConfigurationError(
                "savepoints need checkpointing: call enable_checkpointing(interval=..., "
                "storage=...) (the savepoint's state must be consistent with what sinks "
                "committed)"))
            return
        stop = bool(req.args.get("stop"))

        def done(path: str | None, error: str | None) -> None:
            if req.future.done():
                return
            if path is None:
                req.future.set_exception(SavepointError(error or "the savepoint failed"))
            else:
                if stop:
                    self.stopped_with_savepoint = path
                req.future.set_result(path)

        coordinator.trigger_savepoint(req.args.get("directory"), stop, done)

    def _supervise(self, att: _Attempt, n: int,
                   coordinator: CheckpointCoordinator) -> str | None:
        workers = att.workers
        assert workers is not None
        self.failures.new_attempt()
        started = time.monotonic()
        while True:
            if len(att.running) < n and time.monotonic() - started > STARTUP_TIMEOUT_S:
                missing = sorted(set(range(n)) - att.running)
                return (f"worker(s) {missing} did not start running within "
                        f"{STARTUP_TIMEOUT_S:g}s (stuck opening a connector or restoring "
                        f"state?)")
            ready = cast(list[Any], wait([*workers.conns, self.control.fileno()],
                                         coordinator.next_deadline()))
            try:
                for c in ready:
                    if isinstance(c, int):  # the control socket
                        for req in self.control.take():
                            self._request(req, coordinator)
                        continue
                    w = workers.conns[c]
                    try:
                        msg = m.recv(c)
                    except (EOFError, OSError):
                        del workers.conns[c]
                        if w in att.finished:
                            continue
                        return f"worker {w} {workers.exit_reason(w)}"
                    match msg:
                        case m.Metrics(worker, operators, watermarks, dropped, alignment):
                            self.status.on_metrics(operators, watermarks, dropped)
                            att.watermarks.update(watermarks)
                            att.dropped.update(dropped)
                            att.align(worker, alignment)
                            att.lost.update(msg.lost)
                            self.status.on_lost(msg.lost)
                        case m.Ack(cid, task, subtask, state):
                            coordinator.on_ack(cid, task, subtask, state)
                        case m.Running(worker):
                            att.running.add(worker)
                            if len(att.running) == n:
                                if _trace.ON:
                                    _trace.event("all_running")
                                att.processing_started = time.time()
                                coordinator.start()
                                self._log_restored()
                        case m.Exhausted(task, subtask):
                            coordinator.on_exhausted(task, subtask)
                        case m.Decline(cid, task, subtask, reason):
                            coordinator.on_decline(cid, task, subtask, reason)
                        case m.Failed(worker, message, detail, report):
                            log.debug("worker %d failure detail:\n%s", worker, detail)
                            return self.failures.received(worker, message, report)
                        case m.Finished(worker, operators, watermarks, dropped):
                            if _trace.ON:
                                _trace.event("finished_received", worker=worker)
                            att.finished.add(worker)
                            att.metrics.update(operators)
                            att.watermarks.update(watermarks)
                            att.dropped.update(dropped)
                            att.lost.update(msg.lost)
                            self.status.on_lost(msg.lost)
                        case _:
                            raise TypeError(f"unexpected message from worker {w}: {msg!r}")
                coordinator.tick()
                self.status.sync_checkpoints(coordinator.history, len(coordinator.pending))
            except CheckpointFailuresExceeded as e:
                return str(e)
            if len(att.finished) == n:
                workers.join()
                if _trace.ON:
                    _trace.event("workers_joined")
                return None

    def _log_restored(self) -> None:
        restored = self.status.attempt_running()
        if restored is not None:
            log.info("job %r running: restored checkpoint %d in %.2fs",
                     self.cfg.flow, restored[1], restored[0],
                     extra={"event": "restored", "flow": self.cfg.flow,
                            "checkpoint_id": restored[1], "duration_s": restored[0]})


def _subtasks(graph: JobGraph) -> tuple[set[tuple[str, int]], set[tuple[str, int]],
                                        dict[str, str]]:
    """What the checkpoint coordinator expects of ``graph``: every (task, subtask), the
    source subtasks, and each operator's kind."""
    expected = {(t.uid, i) for t in graph.tasks.values() for i in range(t.parallelism)}
    sources = {(t.uid, i) for t in graph.tasks.values() if t.is_source
               for i in range(t.parallelism)}
    kinds = {n.uid: n.kind.value for t in graph.tasks.values() for n in t.nodes}
    return expected, sources, kinds
