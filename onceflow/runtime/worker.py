"""A worker: runs subtask ``i`` of every task, in one thread, in a loop.

An executor (``onceflow/executors``) starts it by calling :func:`worker_main`: in a forked
process of its own (``Local``) or in a thread of the driver's process (``Inline``). The
worker only knows its control connection to the driver and its sockets to the other
workers.

The loop alternates between (1) one step of every task, (2) flushing and reading the peer
sockets, (3) control messages from the driver (``runtime/messages.py``), and sleeps in
``select`` only when no task could make progress. A second thread writes checkpoint state
files (the asynchronous phase) and acknowledges them to the driver. On start, the worker
executes its part of the restore plan (``checkpoint/restore.py``): it reads the state
files the plan names and hands them to ``TaskRunner.open``.

The worker exits by itself when the driver goes away: its control socket reports EOF and,
for a driver killed with SIGKILL, the kernel sends SIGKILL (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import gc
import math
import os
import select
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from socket import socket
from typing import Any

from onceflow import _faults, _trace, _usertrace
from onceflow.checkpoint import s3
from onceflow.checkpoint.restore import RestorePlan
from onceflow.checkpoint.storage import CompletedCheckpoint, encode_state, state_file_name
from onceflow.errors import OnceflowError
from onceflow.graph.jobgraph import JobGraph
from onceflow.graph.keygroups import key_group_range
from onceflow.runtime import messages as m
from onceflow.runtime.channels import (
    InputChannel,
    LocalOutput,
    Peer,
    PeerClosedError,
    RemoteOutput,
)
from onceflow.runtime.events import Barrier
from onceflow.runtime.operators import OperatorEnv
from onceflow.runtime.task import Output, TaskRunner, TaskState, make_partitioner
from onceflow.state.backend import SHARED_DIR, AsyncSnapshot, SnapshotTarget, owner_name


@dataclass
class WorkerSpec:
    index: int
    flow: str
    graph: JobGraph
    exactly_once: bool
    batch_size: int
    capacity: int
    checkpoint_dir: str  # chk-<n> directories are created below it
    attempt: int
    restore: CompletedCheckpoint | None  # the restore point: the plan's files are in it
    plan: RestorePlan  # what every subtask starts from (checkpoint/restore.py)
    checkpoint_interval: float | None = None
    checkpoint_timeout: float | None = None
    state_backend: Any = None
    incremental: bool = False
    own_process: bool = True  # False: a thread of a process that runs other code too
    unaligned: bool = False  # unaligned exactly-once checkpoints (or after aligned_timeout)
    aligned_timeout: float | None = None
    buffer_time: float | None = None  # channel buffers sized by time
    checkpoint_remote: Any = None  # an object store to upload to (checkpoint/s3.py Remote)


class Worker:
    def __init__(self, spec: WorkerSpec, ctrl: Connection, peer_socks: dict[int, socket]) -> None:
        self.spec = spec
        self.ctrl = ctrl
        self.ctrl_ready = _readable(ctrl)
        self._send_lock = threading.Lock()
        self.peers = {w: Peer(s, w) for w, s in peer_socks.items()}
        self.tasks: list[TaskRunner] = []
        self.sources: list[TaskRunner] = []
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onceflow-ckpt")
        self.done = False
        self._deferred: deque[m.ToWorker] = deque()  # control messages read early
        self._wire()

    # --- set-up --------------------------------------------------------------------------
    def _wire(self) -> None:
        g, me = self.spec.graph, self.spec.index
        by_uid: dict[str, TaskRunner] = {}
        for uid in g.order:
            t = g.tasks[uid]
            if me >= t.parallelism:
                continue
            env = OperatorEnv(self.spec.flow, me, t.parallelism, g.max_parallelism,
                              key_group_range(me, t.parallelism, g.max_parallelism),
                              self.spec.attempt, self.spec.checkpoint_interval,
                              self.spec.checkpoint_timeout, self.spec.state_backend,
                              self.spec.incremental, self.spec.checkpoint_dir)
            runner = TaskRunner(t, me, env, self.spec.exactly_once, self.spec.batch_size,
                                self._write_state_async, self._on_exhausted,
                                self._apply_pending_completions,
                                unaligned=self.spec.unaligned,
                                aligned_timeout=self.spec.aligned_timeout,
                                buffer_time=self.spec.buffer_time,
                                capacity=self.spec.capacity)
            by_uid[uid] = runner
            self.tasks.append(runner)
            if runner.source is not None:
                self.sources.append(runner)
        inputs: dict[int, InputChannel] = {}
        for c in g.channels:
            if c.down_index == me:
                peer = self.peers[c.up_index] if c.up_index != me else None
                ch = InputChannel(c.id, peer, (c.upstream, c.up_index,
                                               g.tasks[c.upstream].parallelism, c.input_no))
                inputs[c.id] = ch
                if peer is not None:
                    ch.held = 2 * self.spec.capacity  # the producer's initial credits
                by_uid[c.downstream].inputs.append(ch)
                if peer is not None:
                    peer.inputs[c.id] = ch
        outs: dict[tuple[str, int], list[tuple[int, Output]]] = {}
        for c in g.channels:
            if c.up_index != me:
                continue
            out: Output
            if c.down_index == me:
                out = LocalOutput(inputs[c.id], self.spec.capacity)
            else:
                peer = self.peers[c.down_index]
                # a remote channel has a round trip of latency: twice the credits
                out = RemoteOutput(peer, c.id, 2 * self.spec.capacity)
                peer.outputs[c.id] = out
            outs.setdefault((c.downstream, c.input_no), []).append((c.down_index, out))
        for runner in self.tasks:
            for down, part, key_fn, input_no in runner.spec.outputs:
                chans = [o for _, o in sorted(outs.get((down, input_no), []), key=lambda x: x[0])]
                runner.outputs.append(make_partitioner(
                    part, chans, key_fn, g.max_parallelism, me, g.tasks[down].head.name))
            runner.connect()

    def _read_states(self, files: list[str]) -> dict[str, dict[str, Any]]:
        """The state files a task's restore plan names (from the restore point)."""
        ckpt = self.spec.restore
        if not files:
            return {}
        assert ckpt is not None, "a restore plan names files but there is no checkpoint"
        if ckpt.remote is not None:  # onto this machine's disk first
            ckpt.remote.fetch_for(ckpt, files)
        return {name: ckpt.read_state(name) for name in files}

    # --- messages ------------------------------------------------------------------------
    def send(self, msg: m.ToDriver) -> None:
        with self._send_lock:
            m.send(self.ctrl, msg)

    def _recv(self) -> m.ToWorker:
        msg = m.recv(self.ctrl)
        assert isinstance(msg, m.Trigger | m.Complete | m.Abort | m.Stop), msg
        return msg

    def _on_exhausted(self, runner: TaskRunner) -> None:
        self.send(m.Exhausted(runner.uid, runner.subtask))

    def _write_state_async(self, runner: TaskRunner, barrier: Barrier, blob: bytes,
                           asyncs: dict[str, AsyncSnapshot], sync_s: float,
                           aligned_s: float, inflight: bytes | None = None) -> None:
        self.writer.submit(self._write_state, runner.uid, runner.subtask,
                           runner.spec.parallelism, [op.uid for op in runner.ops],
                           list(runner.stateful_uids), barrier, blob, asyncs, sync_s,
                           aligned_s, runner.metrics(), inflight)

    def _write_state(self, task: str, subtask: int, parallelism: int, ops: list[str],
                     stateful: list[str], barrier: Barrier, blob: bytes,
                     asyncs: dict[str, AsyncSnapshot], sync_s: float, aligned_s: float,
                     metrics: dict[str, tuple[int, int]], inflight: bytes | None) -> None:
        """The asynchronous phase: finish backend snapshots (RocksDB checkpoints, uploads),
        then write this subtask's state file and acknowledge it."""
        t0 = time.perf_counter()
        cid = barrier.checkpoint_id
        remote = self.spec.checkpoint_remote
        if barrier.savepoint is not None:
            directory = barrier.savepoint
            shared_root = None  # a savepoint is self-contained
            if s3.is_s3(directory):  # staged here, uploaded to its own store
                remote, key = s3.savepoint_remote(directory, remote)
                directory = remote.path(key)
        else:
            directory = os.path.join(self.spec.checkpoint_dir, f"chk-{cid}")
            shared_root = os.path.join(self.spec.checkpoint_dir, SHARED_DIR)
        name = state_file_name(task, subtask)
        path = os.path.join(directory, name)
        uploaded: dict[str, dict[str, Any]] = {}
        new_bytes = 0
        written: list[str] = []  # new files, for an object store to upload
        in_backend: str | None = None  # the operator whose backend snapshot runs
        try:
            os.makedirs(directory, exist_ok=True)
            manifests: dict[str, Any] = {}
            for uid, part in asyncs.items():
                in_backend = uid
                target = SnapshotTarget(cid, directory, shared_root, owner_name(uid, subtask))
                manifests[uid] = part.run(target)
                uploaded.update(target.uploaded)
                new_bytes += target.new_bytes
                written += [os.path.join(directory, r) for r in target.new_files]
                _faults.point("snapshot.upload", checkpoint=cid, task=task, subtask=subtask)
            in_backend = None
            data = encode_state(blob, manifests, inflight)
            _faults.point("snapshot.inflight", checkpoint=cid, task=task, subtask=subtask,
                          inflight=len(inflight or b""))
            half = len(data) // 2
            with open(path, "wb") as f:
                f.write(data[:half])
                _faults.point("snapshot.async", checkpoint=cid, task=task, subtask=subtask)
                f.write(data[half:])
                f.flush()
                os.fsync(f.fileno())
            if remote is not None:
                remote.upload(
                    [os.path.normpath(p) for p in written] + [path],
                    {"checkpoint": cid, "task": task, "subtask": subtask})
        except Exception as e:  # the checkpoint fails, loudly, with the reason
            for part in asyncs.values():
                part.discard()
            if isinstance(e, OSError):
                why = (f"writing state of task {task!r} subtask {subtask} to {directory} "
                       f"failed: {e.strerror or e}")
            elif isinstance(e, OnceflowError):
                why = str(e)
            elif in_backend is not None:
                why = (f"snapshot of operator {in_backend!r} in its state backend "
                       f"({type(self.spec.state_backend).__name__}) failed: "
                       f"{type(e).__name__}: {e}")
            else:
                why = (f"snapshot of task {task!r} subtask {subtask} failed: "
                       f"{type(e).__name__}: {e}")
            self.send(m.Decline(cid, task, subtask, why))
            return
        state = m.SubtaskState(
            file=name, size=len(data), crc32=zlib.crc32(data), parallelism=parallelism,
            ops=tuple(ops), stateful=tuple(stateful), sync_ms=sync_s * 1e3,
            async_ms=(time.perf_counter() - t0) * 1e3, align_ms=aligned_s * 1e3,
            metrics=metrics, uploaded=uploaded, incremental_size=len(data) + new_bytes,
            unaligned=inflight is not None, inflight_bytes=len(inflight or b""))
        if _trace.ON:
            _trace.event("ack", task=task, subtask=subtask, checkpoint=cid,
                         async_s=state.async_ms / 1e3)
        self.send(m.Ack(cid, task, subtask, state))

    def _handle(self, msg: m.ToWorker) -> None:
        if _trace.ON:
            _trace.event("worker_msg", worker=self.spec.index, msg=type(msg).__name__,
                         checkpoint=getattr(msg, "checkpoint_id", None),
                         final=getattr(msg, "final", None))
        match msg:
            case m.Trigger(cid, ts, final, savepoint):
                b = Barrier(cid, ts, final, savepoint)
                for t in self.sources:
                    t.trigger(b)
            case m.Complete(cid, final):
                for t in self.tasks:
                    t.checkpoint_complete(cid, final)
                if final:
                    self._finish()
            case m.Abort(cid):
                for t in self.tasks:
                    t.checkpoint_aborted(cid)
            case m.Stop():
                self.done = True
            case m.AlignWatermarks(groups):
                for t in self.sources:
                    wms = t.source.watermarks if t.source is not None else None
                    if wms is not None and wms.strategy.alignment_group in groups:
                        wms.group_min = groups[wms.strategy.alignment_group]

    def _apply_pending_completions(self) -> None:
        """Before a snapshot: apply completions/aborts already waiting on the control
        socket; anything else read here waits its turn in ``_deferred``."""
        while self.ctrl_ready():
            msg = self._recv()
            if isinstance(msg, m.Abort) or (isinstance(msg, m.Complete) and not msg.final):
                self._handle(msg)
            else:
                self._deferred.append(msg)

    def _finish(self) -> None:
        for t in self.tasks:
            t.close()
        self.writer.shutdown(wait=True)
        metrics: dict[str, tuple[int, int]] = {}
        for t in self.tasks:
            metrics.update({f"{uid}#{t.subtask}": m for uid, m in t.metrics().items()})
        wms, dropped = self._event_time_report()
        if _trace.ON:
            _trace.event("worker_finished", worker=self.spec.index)
        self.send(m.Finished(self.spec.index, metrics, wms, dropped, lost=self._lost_report()))
        self.done = True

    def release(self) -> None:
        """Without a process exit to do it: wait for state writes in flight, and release
        what the tasks hold (state stores, open files) after the loop ended."""
        self.writer.shutdown(wait=True)
        for t in self.tasks:
            if t.state is not TaskState.FINISHED:
                try:
                    t.close()
                except Exception:
                    pass  # the attempt is over; it may have failed in this very task

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        for t in self.tasks:
            plan = self.spec.plan.subtask(t.uid, t.subtask)
            t.open(plan, self._read_states(plan.files))
        _faults.point("worker.started", worker=self.spec.index)
        self.send(m.Running(self.spec.index))
        tasks, peers = self.tasks, list(self.peers.values())
        timer_tasks = [t for t in tasks if t.timer_ops]
        ctrl_ready = self.ctrl_ready
        # Everything built so far lives as long as the worker: keep the collector off it,
        # and collect young objects less often (batches make many short-lived tuples).
        # No full collection first: it walks the whole heap inherited from the driver
        # (~50 ms, on the way to the first record); the little garbage it would free stays.
        if self.spec.own_process:
            gc.freeze()
            gc.set_threshold(50_000, 20, 20)
        rounds = 0
        # Load accounting for the metrics report: a clock read per round and per task step
        # that moved a batch (never per record). A task whose outputs were full in a round
        # counts the whole round (until the next one starts) as backpressured.
        clock = time.perf_counter
        busy = [0.0] * len(tasks)
        backpressured = [0.0] * len(tasks)
        held: list[int] = []
        last = clock()
        next_report = last + METRICS_INTERVAL
        while not self.done:
            rounds += 1
            progressed = False
            t0 = clock()
            if held:
                for k in held:
                    backpressured[k] += t0 - last
                held = []
            last = t0
            if t0 >= next_report:
                next_report = t0 + METRICS_INTERVAL
                self._report_metrics(busy, backpressured)
            for k, t in enumerate(tasks):
                if t.step():
                    progressed = True
                    t1 = clock()
                    busy[k] += t1 - t0
                    t0 = t1
                elif t.outputs and _held_back(t):
                    held.append(k)
            if timer_tasks:
                now = time.time()
                for t in timer_tasks:
                    if t.fire_timers(now):
                        progressed = True
            for p in peers:
                try:
                    p.flush()
                    if p.receive():
                        progressed = True
                except PeerClosedError:
                    # A finished or dead peer. If it died, the driver sees it too and stops
                    # this attempt; if it finished, nothing more was to come from it.
                    peers = [q for q in peers if q is not p]
                    progressed = True
            # Control messages are checked every few rounds (a round is about one batch per
            # task), after any round that took long (slow user functions must not delay
            # checkpoint triggers by several batches), and always before sleeping.
            while self._deferred and not self.done:
                self._handle(self._deferred.popleft())
                progressed = True
            if not progressed or rounds % 4 == 0 or t0 - last > 0.005:
                while ctrl_ready():
                    self._handle(self._recv())
                    progressed = True
                    if self.done:
                        break
            if not progressed and not self.done:
                self._wait(tasks, peers, timer_tasks)

    def _report_metrics(self, busy: list[float], backpressured: list[float]) -> None:
        """Cumulative counters of every operator subtask of this worker, for the driver's
        JobStatus: ``{"uid#subtask": (records_in, records_out, busy_ms, backpressured_ms)}``
        (busy and backpressured time are the task's, shared by the operators it chains)."""
        report: dict[str, tuple[int, int, float, float]] = {}
        for k, t in enumerate(self.tasks):
            b, p = busy[k] * 1e3, backpressured[k] * 1e3
            for op in t.ops:
                report[f"{op.uid}#{t.subtask}"] = (op.records_in, op.records_out, b, p)
        wms, dropped = self._event_time_report()
        self.send(m.Metrics(self.spec.index, report, wms, dropped, self._alignment_report(),
                            lost=self._lost_report()))

    def _lost_report(self) -> dict[str, int]:
        """``{"uid#subtask": lost transactions}`` of the sinks that lost any."""
        out: dict[str, int] = {}
        for t in self.tasks:
            for op in t.ops:
                n = getattr(op, "lost_transactions", 0)
                if n:
                    out[f"{op.uid}#{t.subtask}"] = n
        return out

    def _event_time_report(self) -> tuple[dict[str, float], dict[str, int]]:
        wms: dict[str, float] = {}
        dropped: dict[str, int] = {}
        for t in self.tasks:
            for op in t.ops:
                key = f"{op.uid}#{t.subtask}"
                if op.watermark > -math.inf:
                    wms[key] = op.watermark
                n = getattr(op, "late_dropped", 0)
                if n:
                    dropped[key] = n
        return wms, dropped

    def _alignment_report(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.sources:
            src = t.source
            wms = src.watermarks if src is not None else None
            if wms is None or wms.strategy.alignment_group is None or wms.idle:
                continue
            g = wms.strategy.alignment_group
            w = wms.emitted
            if w > -math.inf:
                out[g] = min(out.get(g, w), w)
        return out

    def _wait(self, tasks: list[TaskRunner], peers: list[Peer],
              timer_tasks: list[TaskRunner]) -> None:
        timeout = 0.5
        if any(t.idle_source() for t in self.sources):
            timeout = 0.01
        for t in timer_tasks:
            nt = t.next_timer()
            if nt is not None:
                timeout = max(0.0, min(timeout, nt - time.time()))
        rl: list[Any] = [self.ctrl, *peers]
        wl = [p for p in peers if p.out]
        select.select(rl, wl, [], timeout)


METRICS_INTERVAL = 1.0  # seconds between two metrics reports of a worker


def _readable(conn: Connection) -> Callable[[], bool]:
    """``conn.poll()`` as one system call: multiprocessing's builds, fills and closes a
    selector on every call (about 10 µs of Python; the loop asks every few batches). True
    when a message waits or the driver's end closed (the next receive then says so), as
    ``poll()`` is."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    check = poller.poll
    return lambda: bool(check(0))


def _held_back(t: TaskRunner) -> bool:
    """A running task that could not take input because one of its outputs is full."""
    return t.state is TaskState.RUNNING and not t.outputs_have_room()


def worker_main(spec: WorkerSpec, ctrl: Connection, peer_socks: dict[int, socket]) -> int:
    """A worker's entry point (an executor calls it in the worker's process or thread).
    Returns the exit code."""
    worker: Worker | None = None
    try:
        worker = Worker(spec, ctrl, peer_socks)
        profile_dir = os.environ.get("ONCEFLOW_PROFILE_DIR")
        if profile_dir:  # opt-in: cProfile each worker, for "where does the time go"
            import cProfile

            prof = cProfile.Profile()
            prof.runcall(worker.run)
            prof.dump_stats(os.path.join(profile_dir, f"worker-{spec.index}-{os.getpid()}.prof"))
        else:
            worker.run()
        return 0
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 3  # the driver went away: nothing to report to
    except BaseException as e:
        if isinstance(e, OnceflowError):
            msg = str(e)
            detail = "".join(traceback.format_exception(e.__cause__ or e)[-6:])
        else:
            msg = f"{type(e).__name__}: {e}"
            detail = traceback.format_exc()
        try:
            m.send(ctrl, m.Failed(spec.index, msg, detail, _usertrace.safe_report(e)))
        except Exception:
            pass
        return 1
    finally:
        if worker is not None and not spec.own_process:
            worker.release()
