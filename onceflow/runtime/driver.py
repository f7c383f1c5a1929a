"""The driver: builds the job graph, starts worker processes, runs the checkpoint
coordinator, and restarts everything from the latest complete checkpoint when anything
fails (DESIGN §4).

Failure handling is deliberately blunt: on any failure every worker is killed, the latest
complete checkpoint is chosen, and all tasks restart from it. Sinks recommit what that
checkpoint lists and abort whatever else earlier attempts left.

Workers are forked from the driver, so user functions (lambdas, closures) need no
serialization; onceflow therefore needs ``fork`` (tested on Linux).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from onceflow.api.config import CheckpointConfig, RestartStrategy
from onceflow.api.result import JobResult, OperatorMetrics
from onceflow.checkpoint.coordinator import (
    CheckpointCoordinator,
    CheckpointFailuresExceeded,
    CheckpointStatus,
    CoordinatorSettings,
)
from onceflow.checkpoint.permissions import warn_if_open
from onceflow.checkpoint.storage import (
    CheckpointStorage,
    CompletedCheckpoint,
    resolve_restore_path,
)
from onceflow.errors import (
    ConfigurationError,
    IncompatibleStateError,
)
from onceflow.graph.jobgraph import JobGraph, build
from onceflow.graph.logical import Kind, LogicalPlan
from onceflow.runtime.control import JobControl, Request, SavepointError
from onceflow.runtime.failures import FailureTracker
from onceflow.runtime.interrupt import GracefulStop
from onceflow.runtime.observers import Observers
from onceflow.runtime.observers import validate as validate_observers
from onceflow.runtime.rerun import check_fresh_start
from onceflow.runtime.status import JobStatus
from onceflow.runtime.worker import WorkerSpec, worker_main

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
    fresh: bool = False  # start from the beginning even over completed checkpoints


class _Attempt:
    """The worker processes of one attempt and the driver's ends of their sockets."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}
        self.conns: dict[Connection, int] = {}
        self.running: set[int] = set()
        self.finished: set[int] = set()
        self.metrics: dict[str, tuple[int, int]] = {}

    def send_all(self, msg: tuple[Any, ...]) -> None:
        for c in list(self.conns):
            try:
                c.send(msg)
            except OSError:
                pass  # the worker died; its EOF is noticed by the loop

    def kill(self) -> None:
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reap()

    def reap(self) -> None:
        """Wait for every worker process to exit and close the driver's sockets."""
        for pid in self.pids.values():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()
        for c in self.conns:
            c.close()
        self.conns.clear()


class JobDriver:
    def __init__(self, plan: LogicalPlan, cfg: JobConfig) -> None:
        self.plan = plan
        self.cfg = cfg
        self.status = JobStatus(cfg.flow)  # what the dashboard, metrics and progress read
        self.control = JobControl()  # savepoint requests from other threads
        self.stopped_with_savepoint: str | None = None
        self.failures = FailureTracker(  # repeats at one record, the user's error
            cfg.flow, cfg.restart, [n.name for n in plan.nodes if n.kind in (Kind.SOURCE,
                                                                               Kind.SINK)])

    # --- preparation ---------------------------------------------------------------------
    def _validate_connectors(self) -> None:
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

    def _check_compatible(self, ckpt: CompletedCheckpoint, graph: JobGraph) -> None:
        mp = ckpt.meta.get("max_parallelism")
        if mp != graph.max_parallelism:
            raise IncompatibleStateError(
                f"checkpoint {ckpt.path} was taken with max_parallelism={mp}, this flow has "
                f"max_parallelism={graph.max_parallelism}; max_parallelism cannot change once "
                f"a flow has state: set Flow(..., max_parallelism={mp})"
            )
        nodes = graph.node_by_uid()
        for uid, entry in ckpt.meta["operators"].items():
            node = nodes.get(uid)
            if node is None and not entry.get("stateful", True):
                log.info("checkpoint %s: operator uid %r is no longer in the flow; it held no "
                         "state, so nothing is lost", ckpt.path, uid)
                continue
            if node is None:
                raise IncompatibleStateError(
                    f"checkpoint {ckpt.path} holds state of operator uid {uid!r}, which this "
                    "flow does not have; keep the operator's name (or pass uid=...) so the "
                    "state finds it again, or start without restore"
                )
            kind = entry.get("kind")
            if kind is not None and kind != node.kind.value:
                raise IncompatibleStateError(
                    f"checkpoint {ckpt.path}: operator uid {uid!r} was a {kind} operator and "
                    f"is now a {node.kind.value}; give the new operator another uid"
                )

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
            storage = CheckpointStorage(ck.storage, cfg.flow)
        else:
            tmpdir = tempfile.mkdtemp(prefix="onceflow-final-")
            storage = CheckpointStorage(tmpdir, cfg.flow)
        storage.prepare()
        if ck is not None:
            warn_if_open(storage)  # state files are pickles: the storage must be private
        observers: Observers | None = None
        try:
            observers = Observers(self.status, cfg, storage.dir if ck is not None else None,
                                  lambda: self.control)
            result = self._run(graph, storage, restore, started)
        except BaseException as e:
            self.status.failed(str(e) or type(e).__name__)
            raise
        finally:
            if observers is not None:
                observers.close()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
        return result

    def _run(self, graph: JobGraph, storage: CheckpointStorage, restore: str | None,
             started: float) -> JobResult:
        cfg = self.cfg
        initial: CompletedCheckpoint | None = None
        if restore == "latest":
            if cfg.checkpoint is None:
                raise ConfigurationError(
                    "run(restore='latest') needs checkpoint storage: call "
                    "enable_checkpointing(interval=..., storage=...) first")
            initial = storage.latest_valid()
            if initial is None:
                log.warning("restore='latest': no complete checkpoint in %s; starting from the "
                            "beginning", storage.dir)
        elif restore is not None:
            initial = resolve_restore_path(restore, cfg.flow)
        elif cfg.checkpoint is not None:  # no silent second copy of the output
            check_fresh_start(storage, cfg.flow, cfg.fresh)
        if initial is not None:
            self._check_compatible(initial, graph)
            log.info("restoring from checkpoint %d at %s", initial.id, initial.path)
        storage.discard_incomplete()

        ck = cfg.checkpoint
        settings = CoordinatorSettings(
            interval=ck.interval if ck else None,
            timeout=ck.timeout if ck else 600.0,
            min_pause=ck.min_pause if ck else 0.0,
            max_concurrent=ck.max_concurrent if ck else 1,
            retained=ck.retained if ck else 1,
            tolerable_failures=ck.tolerable_failures if ck else 0,
        )
        expected = {(t.uid, i) for t in graph.tasks.values() for i in range(t.parallelism)}
        sources = {(t.uid, i) for t in graph.tasks.values() if t.is_source
                   for i in range(t.parallelism)}
        kinds = {n.uid: n.kind.value for t in graph.tasks.values() for n in t.nodes}
        holder: dict[str, _Attempt] = {}
        coordinator = CheckpointCoordinator(
            settings, storage, cfg.flow, graph.max_parallelism, expected, sources,
            lambda msg: holder["a"].send_all(msg), op_kinds=kinds)
        if initial is not None:  # ids go on from the restored one (it may be elsewhere)
            coordinator.next_id = max(coordinator.next_id, initial.id + 1)
        initial_splits = self._initial_splits(graph, initial)

        failures: list[str] = []
        failure_times: list[float] = []
        attempt_starts: list[float] = []
        processing_started: float | None = None
        current = initial
        attempt_no = 0
        final_metrics: dict[str, tuple[int, int]] = {}
        while True:
            att = _Attempt()
            holder["a"] = att
            attempt_starts.append(time.time())
            try:
                outcome, ps = self._run_attempt(graph, att, attempt_no, current, storage,
                                                coordinator, initial_splits)
            except BaseException:
                att.kill()
                raise
            if processing_started is None:
                processing_started = ps
            if outcome is None:
                coordinator.fail_requests("the job finished before the savepoint was taken")
                final_metrics = att.metrics
                self.status.sync_checkpoints(coordinator.history, len(coordinator.pending))
                self.status.finished(final_metrics)
                break
            att.kill()
            failures.append(outcome)
            failure_times.append(time.monotonic())
            coordinator.reset("the job restarts")
            self.status.sync_checkpoints(coordinator.history, 0)
            storage.discard_incomplete()
            stop = self.failures.on_failure(coordinator.history)  # repeats at one record?
            delay = cfg.restart.next_delay(failure_times, time.monotonic())
            if delay is None or stop:
                coordinator.fail_requests(f"the job failed: {outcome}")
                raise self.failures.job_failed(failures, stop if delay is not None else None)
            if any(c.status is CheckpointStatus.COMPLETED for c in coordinator.history):
                current = storage.latest_valid()
            else:
                current = initial
            where = f"checkpoint {current.id}" if current else "the beginning (no checkpoint)"
            head, frames = self.failures.one_line(outcome)  # the user's frames go last
            log.warning("job %r failed: %s; restarting from %s in %.1fs (restart %d)%s",
                        cfg.flow, head, where, delay, len(failures), frames,
                        extra={"event": "restart", "flow": cfg.flow, "cause": outcome,
                               "restart": len(failures), "delay_s": delay,
                               "checkpoint_id": current.id if current else None})
            self.status.restarting(outcome, current.id if current else None, delay)
            initial_splits = self._initial_splits(graph, current)
            time.sleep(delay)
            attempt_no += 1

        finished = time.time()
        return JobResult(
            flow=cfg.flow,
            operators=self._operator_metrics(graph, final_metrics),
            checkpoints=list(coordinator.history),
            restarts=len(failures),
            failures=failures,
            restored_from=initial.path if initial else None,
            started_at=started,
            processing_started_at=processing_started or started,
            finished_at=finished,
            checkpoint_storage=storage.dir if cfg.checkpoint else None,
            attempts=attempt_starts,
            savepoint=self.stopped_with_savepoint,
        )

    def _initial_splits(self, graph: JobGraph, restore: CompletedCheckpoint | None
                        ) -> dict[str, list[list[tuple[Any, Any, bool]]]]:
        """Splits and start positions of every source the restore point has no state for
        (all of them on a fresh start; a source added to the flow since, on a restore)."""
        out: dict[str, list[list[tuple[Any, Any, bool]]]] = {}
        known = restore.meta["operators"] if restore is not None else {}
        for t in graph.tasks.values():
            if not t.is_source or t.head.uid in known:
                continue
            src = t.head.fn
            splits = src.splits(t.parallelism)
            per: list[list[tuple[Any, Any, bool]]] = [[] for _ in range(t.parallelism)]
            for k, s in enumerate(splits):
                per[k % t.parallelism].append((s, src.initial_position(s), False))
            out[t.uid] = per
        return out

    def _operator_metrics(self, graph: JobGraph,
                          raw: dict[str, tuple[int, int]]) -> dict[str, OperatorMetrics]:
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
                out[key] = m
        return out

    # --- one attempt ---------------------------------------------------------------------
    def _run_attempt(self, graph: JobGraph, att: _Attempt, attempt_no: int,
                     restore: CompletedCheckpoint | None, storage: CheckpointStorage,
                     coordinator: CheckpointCoordinator,
                     initial_splits: dict[str, Any]) -> tuple[str | None, float | None]:
        cfg = self.cfg
        n = graph.workers
        exactly_once = cfg.checkpoint is None or cfg.checkpoint.mode == "exactly_once"
        ctrl = [socket.socketpair() for _ in range(n)]
        peers: dict[tuple[int, int], socket.socket] = {}
        for i in range(n):
            for j in range(i + 1, n):
                a, b = socket.socketpair()
                peers[(i, j)], peers[(j, i)] = a, b
        sys.stdout.flush()
        sys.stderr.flush()
        driver_pid = os.getpid()
        for w in range(n):
            ck = cfg.checkpoint
            spec = WorkerSpec(w, cfg.flow, graph, exactly_once, cfg.batch_size,
                              cfg.channel_capacity, storage.dir, attempt_no, restore,
                              ck.interval if ck else None, ck.timeout if ck else None,
                              initial_splits, cfg.state_backend,
                              bool(ck and ck.incremental),
                              unaligned=bool(ck and ck.unaligned),
                              aligned_timeout=ck.aligned_timeout if ck else None,
                              buffer_time=ck.effective_buffer_time if ck else None)
            pid = os.fork()
            if pid == 0:  # the worker process: never returns
                code = 1
                try:
                    _become_worker(driver_pid)
                    mine = {s.fileno() for (i, _), s in peers.items() if i == w}
                    mine.add(ctrl[w][1].fileno())
                    for k, (pa, ch) in enumerate(ctrl):
                        pa.close()
                        if k != w:
                            ch.close()
                    for s in peers.values():
                        if s.fileno() not in mine and s.fileno() != -1:
                            s.close()
                    my_peers = {j: s for (i, j), s in peers.items() if i == w}
                    code = worker_main(spec, Connection(ctrl[w][1].detach()), my_peers)
                finally:
                    os._exit(code)
            att.pids[w] = pid
        self.status.attempt_started(attempt_no, restore.id if restore else None, att.pids)
        for w, (pa, ch) in enumerate(ctrl):
            ch.close()
            att.conns[Connection(pa.detach())] = w
        for s in peers.values():
            s.close()
        return self._supervise(att, n, coordinator)

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
                   coordinator: CheckpointCoordinator) -> tuple[str | None, float | None]:
        processing_started: float | None = None
        self.failures.new_attempt()
        while True:
            ready = cast(list[Any], wait([*att.conns, self.control.fileno()],
                                         coordinator.next_deadline()))
            try:
                for c in ready:
                    if isinstance(c, int):  # the control socket
                        for req in self.control.take():
                            self._request(req, coordinator)
                        continue
                    w = att.conns[c]
                    try:
                        msg: Any = c.recv()
                    except (EOFError, OSError):
                        del att.conns[c]
                        if w in att.finished:
                            continue
                        return f"worker {w} (pid {att.pids[w]}) {_exit_status(att.pids[w])}", \
                            processing_started
                    kind = msg[0]
                    if kind == "metrics":
                        self.status.on_metrics(msg[2])
                    elif kind == "ack":
                        coordinator.on_ack(msg[1], msg[2], msg[3], msg[4])
                    elif kind == "running":
                        att.running.add(msg[1])
                        if len(att.running) == n:
                            processing_started = time.time()
                            coordinator.start()
                            restored = self.status.attempt_running()
                            if restored is not None:
                                log.info("job %r running: restored checkpoint %d in %.2fs",
                                         self.cfg.flow, restored[1], restored[0],
                                         extra={"event": "restored", "flow": self.cfg.flow,
                                                "checkpoint_id": restored[1],
                                                "duration_s": restored[0]})
                    elif kind == "exhausted":
                        coordinator.on_exhausted(msg[1], msg[2])
                    elif kind == "decline":
                        coordinator.on_decline(msg[1], msg[2], msg[3], msg[4])
                    elif kind == "failed":
                        log.debug("worker %d failure detail:\n%s", msg[1], msg[3])
                        return self.failures.received(msg[1], msg[2], msg[4]), \
                            processing_started
                    elif kind == "finished":
                        att.finished.add(msg[1])
                        att.metrics.update(msg[2])
                coordinator.tick()
                self.status.sync_checkpoints(coordinator.history, len(coordinator.pending))
            except CheckpointFailuresExceeded as e:
                return str(e), processing_started
            if len(att.finished) == n:
                att.reap()
                return None, processing_started


def _become_worker(driver_pid: int) -> None:
    """In the forked child: die with the driver, leave Ctrl-C to the driver."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the control socket's EOF still ends the worker
    if os.getppid() != driver_pid:
        os._exit(3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _exit_status(pid: int) -> str:
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            wpid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "died"
        if wpid:
            if os.WIFSIGNALED(status):
                return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
            return f"exited with code {os.WEXITSTATUS(status)}"
        time.sleep(0.01)
    return "closed its connection"
