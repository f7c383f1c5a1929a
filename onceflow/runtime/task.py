"""A task: one subtask of a chain of operators, driven by its worker's loop.

``step()`` does at most one unit of work (one input batch, or one source batch) and says
whether it did anything, so a worker can run many tasks in one thread without any of them
blocking: a task whose outputs are full simply does not take input (backpressure).
"""

from __future__ import annotations

import enum
import math
import pickle
import time
from collections.abc import Callable
from itertools import compress, islice
from typing import Any

from onceflow import _faults, _trace
from onceflow.checkpoint.restore import SubtaskRestore
from onceflow.errors import CheckpointError, ConfigurationError, UserFunctionError
from onceflow.graph.jobgraph import Task
from onceflow.graph.keygroups import key_group, stable_hash, subtask_table
from onceflow.graph.logical import Kind, Partitioning
from onceflow.runtime.barriers import UnalignedBarrierHandler, make_handler
from onceflow.runtime.channels import Debloater, InputChannel, LocalOutput, RemoteOutput
from onceflow.runtime.events import END_OF_INPUT, Barrier, TsBatch, Watermark, WatermarkStatus
from onceflow.runtime.operators import (
    AssignOp,
    Operator,
    OperatorEnv,
    SinkOp,
    SourceOp,
    make_operator,
)
from onceflow.runtime.watermarks import POS_INF, ValveOutput, WatermarkValve
from onceflow.state.backend import AsyncSnapshot

Output = LocalOutput | RemoteOutput


class Partitioner:
    """Routes a task's output batches to the channels of one downstream edge."""

    def __init__(self, channels: list[Output]) -> None:
        self.channels = channels

    def has_room(self) -> bool:
        for c in self.channels:
            if not c.has_room():
                return False
        return True

    def broadcast(self, event: object) -> None:
        for c in self.channels:
            c.send_event(event)

    def emit(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def emit_ts(self, batch: list[Any], ts: list[float]) -> None:
        raise NotImplementedError


class ForwardPartitioner(Partitioner):
    def emit(self, batch: list[Any]) -> None:
        self.channels[0].send_batch(batch)

    def emit_ts(self, batch: list[Any], ts: list[float]) -> None:
        self.channels[0].send_ts_batch(batch, ts)


class RebalancePartitioner(Partitioner):
    def __init__(self, channels: list[Output], start: int) -> None:
        super().__init__(channels)
        self._next = start % len(channels)

    def emit(self, batch: list[Any]) -> None:
        self.channels[self._next].send_batch(batch)
        self._next = (self._next + 1) % len(self.channels)

    def emit_ts(self, batch: list[Any], ts: list[float]) -> None:
        self.channels[self._next].send_ts_batch(batch, ts)
        self._next = (self._next + 1) % len(self.channels)


class BroadcastPartitioner(Partitioner):
    """Every batch to every channel (a broadcast stream: each subtask sees all records)."""

    def emit(self, batch: list[Any]) -> None:
        for c in self.channels:
            c.send_batch(batch)

    def emit_ts(self, batch: list[Any], ts: list[float]) -> None:
        for c in self.channels:
            c.send_ts_batch(batch, ts)


class KeyPartitioner(Partitioner):
    """Key -> key group (stable hash) -> owning subtask. A small cache maps recent keys
    straight to their subtask."""

    _CACHE_LIMIT = 1 << 17

    def __init__(self, channels: list[Output], key_fn: Callable[[Any], Any],
                 max_parallelism: int, downstream: str) -> None:
        super().__init__(channels)
        self.key_fn = key_fn
        self.downstream = downstream
        self.max_parallelism = max_parallelism
        self.table = subtask_table(len(channels), max_parallelism)
        self.cache: dict[Any, int] = {}

    def emit(self, batch: list[Any]) -> None:
        chans = self.channels
        if len(chans) == 1:
            if batch:  # one subtask owns every key; still check that keys are usable
                try:
                    stable_hash(self.key_fn(batch[0]))
                except Exception as e:
                    self._diagnose(batch[:1], e)
            chans[0].send_batch(batch)
            return
        buckets: list[list[Any]] = [[] for _ in chans]
        appends = [b.append for b in buckets]
        kf, cache, table, mp = self.key_fn, self.cache, self.table, self.max_parallelism
        get = cache.get
        try:
            for r in batch:
                k = kf(r)
                t = get(k)
                if t is None:
                    t = table[(stable_hash(k) >> 7) % mp]  # == key_group(k, mp)
                    if len(cache) >= self._CACHE_LIMIT:
                        cache.clear()
                    cache[k] = t
                appends[t](r)
        except Exception as e:
            self._diagnose(batch, e)
        for c, b in zip(chans, buckets, strict=True):
            if b:
                c.send_batch(b)

    def emit_ts(self, batch: list[Any], ts: list[float]) -> None:
        chans = self.channels
        if len(chans) == 1:
            if batch:
                try:
                    stable_hash(self.key_fn(batch[0]))
                except Exception as e:
                    self._diagnose(batch[:1], e)
            chans[0].send_ts_batch(batch, ts)
            return
        n = len(chans)
        buckets: list[list[Any]] = [[] for _ in range(n)]
        tbuckets: list[list[float]] = [[] for _ in range(n)]
        kf, cache, table, mp = self.key_fn, self.cache, self.table, self.max_parallelism
        get = cache.get
        try:
            for r, t_ in zip(batch, ts, strict=True):
                k = kf(r)
                t = get(k)
                if t is None:
                    t = table[(stable_hash(k) >> 7) % mp]
                    if len(cache) >= self._CACHE_LIMIT:
                        cache.clear()
                    cache[k] = t
                buckets[t].append(r)
                tbuckets[t].append(t_)
        except Exception as e:
            self._diagnose(batch, e)
        for c, b, tb in zip(chans, buckets, tbuckets, strict=True):
            if b:
                c.send_ts_batch(b, tb)


    def _diagnose(self, batch: list[Any], err: Exception) -> None:
        """Name the record whose key could not be computed or routed."""
        where = f"key_by before {self.downstream!r}"
        for r in batch:
            try:
                k = self.key_fn(r)
            except Exception:
                # the first record whose key fails is the one ``err`` came from: name it
                # with ``err`` itself (one traceback, not the same one twice, chained)
                raise UserFunctionError(where, r, err) from err
            try:
                hash(k)
            except TypeError:
                raise ConfigurationError(
                    f"{where}: key {k!r} of record {r!r} has type {type(k).__name__}, which is "
                    "not hashable; key_by must return str, int, bytes, float, bool, None or a "
                    "tuple of those") from None
            stable_hash(k)  # raises ConfigurationError naming the key type
        raise err


class TaskState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    INPUT_ENDED = "input_ended"  # sent end-of-input downstream; waits for the final commit
    FINISHED = "finished"


# (runner, barrier, state blob, async parts, sync seconds, alignment seconds, in-flight blob)
StateWriter = Callable[["TaskRunner", Barrier, bytes, dict[str, AsyncSnapshot], float, float,
                        bytes | None], None]


class TaskRunner:
    def __init__(self, spec: Task, subtask: int, env: OperatorEnv, exactly_once: bool,
                 batch_size: int, write_state: StateWriter,
                 on_exhausted: Callable[[TaskRunner], None],
                 before_snapshot: Callable[[], None] = lambda: None, *,
                 unaligned: bool = False, aligned_timeout: float | None = None,
                 buffer_time: float | None = None, capacity: int = 4) -> None:
        self.spec = spec
        self.uid = spec.uid
        self.subtask = subtask
        self.env = env
        self.batch_size = batch_size
        self.state = TaskState.CREATED
        key_fn = spec.inputs[0].key_fn if spec.inputs and spec.inputs[0].partitioning is \
            Partitioning.KEY else None
        self.ops: list[Operator] = [
            make_operator(n, key_fn if i == 0 else None) for i, n in enumerate(spec.nodes)
        ]
        self.source: SourceOp | None = self.ops[0] if isinstance(self.ops[0], SourceOp) else None
        first = 1 if self.source is not None else 0
        self._tails = {i: self.ops[i:] for i in range(len(self.ops) + 1)}
        self._first = first
        # a two-input head operator is told which logical input each batch came from
        self._two_input = getattr(self.ops[0], "two_input", False)
        self.timer_ops = [(i, op) for i, op in enumerate(self.ops) if op.has_timers]
        self._assigners = [i for i, op in enumerate(self.ops) if isinstance(op, AssignOp)]
        self.inputs: list[InputChannel] = []
        # every output partitioner in spec.outputs order until connect(); then the main
        # outputs (records of the chain's last operator), with side outputs by tag apart
        self.outputs: list[Partitioner] = []
        self.side_outputs: dict[str, list[Partitioner]] = {}
        self.all_outputs: list[Partitioner] = []  # main and side: events go to all
        self._side_ops: list[Operator] = []
        self.valve = WatermarkValve([])
        self._exactly_once = exactly_once
        self._write_state = write_state
        self._on_exhausted = on_exhausted
        self._before_snapshot = before_snapshot
        self._rr = 0
        self._exhausted_reported = False
        self._final_barrier_seen = False
        self._broadcast_origin: int | None = None  # see open and _replay_into
        self.handler: Any = None
        self._unaligned = exactly_once and (unaligned or aligned_timeout is not None)
        self._aligned_timeout = aligned_timeout
        self._buffer_time, self._capacity = buffer_time, capacity
        self._debloat: Debloater | None = None
        self._chunk = 0  # with buffer_time: take at most this many records of a batch at once
        self._uh: UnalignedBarrierHandler | None = None
        self._collecting: set[int] = set()  # channels whose reads are in-flight data now
        # unaligned snapshots taken, waiting for their in-flight data: id -> (blob, asyncs,
        # sync seconds)
        self._pending: dict[int, tuple[bytes, dict[str, AsyncSnapshot], float]] = {}
        self.stateful_uids: list[str] = []  # operators whose last snapshot held state

    # --- set-up --------------------------------------------------------------------------
    def connect(self) -> None:
        self.inputs.sort(key=lambda c: c.id)
        if self._unaligned and self.inputs:
            self._uh = UnalignedBarrierHandler(self.inputs, self._on_aligned,
                                               self._on_unaligned_snapshot, self._on_inflight,
                                               timeout=self._aligned_timeout)
            self.handler = self._uh
            self._collecting = self._uh.collecting
        else:
            self.handler = make_handler(self._exactly_once, self.inputs, self._on_aligned)
        if self._buffer_time is not None and self.inputs:
            head = self.ops[0]
            self._debloat = Debloater(self.inputs, self._buffer_time, self.batch_size,
                                      2 * self._capacity, lambda: head.records_in,
                                      time.perf_counter)
        self.valve = WatermarkValve([c.id for c in self.inputs])
        self.all_outputs = list(self.outputs)
        tags = self.spec.output_tags
        main: list[Partitioner] = []
        for part, tag in zip(self.outputs, tags + [None] * (len(self.outputs) - len(tags)),
                             strict=True):
            if tag is None:
                main.append(part)
            else:
                self.side_outputs.setdefault(tag, []).append(part)
        self.outputs = main
        last = self.ops[-1]
        last.side_wanted = frozenset(self.side_outputs)
        self._side_ops = [op for op in self.ops if op.emits_side]

    def open(self, plan: SubtaskRestore, states: dict[str, dict[str, Any]]) -> None:
        """Open every operator and restore it as ``plan`` (``checkpoint/restore.py``) says:
        ``states`` holds every state file the plan names, read by the worker."""
        for op in self.ops:
            op.open(self.env)
            r = plan.operators.get(op.uid)
            if r is None:
                op.restore([], False)
                continue
            op.restore([states[f]["ops"][op.uid] for f in r.files], r.filter_keys)
            if op is self.ops[0] and getattr(op, "broadcast_input", None) is not None:
                k = op.restored_from  # type: ignore[attr-defined]
                subs = list(r.old_subtasks)
                self._broadcast_origin = subs[k] if k is not None else min(subs, default=None)
            if r.files and not isinstance(op, SourceOp | AssignOp):
                # the lowest of the restored subtasks' (the sources restore their own; an
                # assigner's generator starts again). A file from before watermarks were
                # kept, or with this operator still at -inf, leaves it at -inf
                op.watermark = min(states[f].get("watermarks", {}).get(op.uid, -math.inf)
                                   for f in r.files)
            for f in r.metrics_files:
                counted = states[f].get("metrics", {}).get(op.uid)
                if counted is not None:
                    op.records_in += counted[0]
                    op.records_out += counted[1]
                dropped = states[f].get("late_dropped", {}).get(op.uid)
                if dropped:  # a metric, like the counts: summed, each file counted once
                    op.late_dropped += dropped  # type: ignore[attr-defined]
        # an unaligned checkpoint's in-flight data, from the same files
        self._replay_inflight([(j, pj, states[f]) for f, j, pj in plan.inherited()])
        if self.source is not None and plan.initial_splits is not None:
            self.source.assign(plan.initial_splits)  # a fresh source: nothing restored for it
        for op in self.ops:
            if isinstance(op, SinkOp):
                op.start()
        self.state = TaskState.RUNNING
        if self.source is not None and self.source.watermarks is not None:
            wm, idle = self.source.watermarks.initial_events()
            if wm is not None:
                self._advance_watermark(wm, 1)
            if idle:
                self._broadcast(WatermarkStatus(True))

    def _replay_inflight(self, restored: list[tuple[int, int, dict[str, Any]]]) -> None:
        """An unaligned checkpoint's in-flight data goes back into the input channels it
        came from, ahead of anything the upstream sends after the restore.

        Restored at the same parallelism (of this task and of the upstream task), every
        item of a channel is replayed into the same channel, in order, events included.
        After a rescale only the records are replayed (watermarks are progress hints that
        the restored sources send again): into a keyed operator, the records of this
        subtask's key groups from every old subtask whose range overlaps; into any other
        operator, the records of old subtask ``j`` go to new subtask ``j % P``."""
        if not self.inputs or not any(st.get("inflight") for _, _, st in restored):
            return
        p, i = self.spec.parallelism, self.subtask
        by_origin = {c.origin: c for c in self.inputs if c.origin is not None}
        keyed_head = self.ops[0].keyed
        key_fn = getattr(self.ops[0], "key_fn", None)
        key_fns = getattr(self.ops[0], "key_fns", None)  # two-input heads: one per input
        lo, hi = self.env.kg_range
        mp = self.env.max_parallelism
        staged: dict[int, tuple[InputChannel, list[Any]]] = {}  # channel id -> its replay
        self._replay_into(staged, restored, p, i, by_origin, keyed_head, key_fn, key_fns, lo, hi,
                          mp)
        for ch, items in staged.values():
            self._replay(ch, items)

    def _replay_into(self, staged: dict[int, tuple[InputChannel, list[Any]]],
                     restored: list[tuple[int, int, dict[str, Any]]], p: int, i: int,
                     by_origin: dict[Any, InputChannel], keyed_head: bool, key_fn: Any,
                     key_fns: Any, lo: int, hi: int, mp: int) -> None:
        """The items :meth:`_replay_inflight` replays, per channel, in order, into
        ``staged`` (replayed together at the end: ahead of what is queued already)."""

        def stage(ch: InputChannel, items: list[Any]) -> None:
            staged.setdefault(ch.id, (ch, []))[1].extend(items)

        bcast_input = getattr(self.ops[0], "broadcast_input", None)
        for j, pj, st in restored:
            for origin, items in st.get("inflight", {}).items():
                ch = by_origin.get(origin)
                _faults.point("restore.inflight", task=self.uid, subtask=i)
                if ch is not None and j == i and pj == p:
                    stage(ch, [pickle.loads(b) for b in items])  # storage is trusted
                    continue
                if key_fns is not None and isinstance(origin, tuple):
                    key_fn = key_fns[origin[3]]  # None: a non-keyed (or broadcast) input
                if bcast_input is not None and isinstance(origin, tuple) \
                        and origin[3] == bcast_input:
                    # a broadcast input: every old subtask's broadcast state together with
                    # its own in-flight broadcast records holds the same broadcast records;
                    # this subtask took the state of one, so it replays that one's records
                    # and no other's (which would apply some twice, or pair a state with
                    # records another state already holds)
                    if j != self._broadcast_origin:
                        continue
                elif (not keyed_head or key_fn is None) and j % p != i:
                    continue
                target = self._replay_target(origin)
                if target is None:
                    continue
                recs: list[Any] = []
                tss: list[float] = []
                for b in items:
                    it = pickle.loads(b)
                    if type(it) is list:
                        recs.extend(it)
                        tss.extend([math.nan] * len(it))
                    elif type(it) is TsBatch:
                        recs.extend(it.records)
                        tss.extend(it.ts)
                if keyed_head and key_fn is not None:
                    keep = [lo <= key_group(key_fn(r), mp) < hi for r in recs]
                    recs = list(compress(recs, keep))
                    tss = list(compress(tss, keep))
                out: list[Any] = []
                for k in range(0, len(recs), self.batch_size):
                    rb, tb = recs[k:k + self.batch_size], tss[k:k + self.batch_size]
                    out.append(list(rb) if any(t != t for t in tb) else TsBatch(rb, tb))
                stage(target, out)

    def _replay_target(self, origin: Any) -> InputChannel | None:
        if not isinstance(origin, tuple):
            return None
        up_uid, up_idx, _, input_no = origin
        same_input = [c for c in self.inputs if c.origin is not None
                      and c.origin[0] == up_uid and c.origin[3] == input_no]
        for c in same_input:
            if c.origin is not None and c.origin[1] == up_idx:
                return c
        return same_input[0] if same_input else None

    @staticmethod
    def _replay(ch: InputChannel, items: list[Any]) -> None:
        # ahead of anything already queued: a restarted upstream (another worker, started
        # first) may have sent its restored watermark and new records before this task
        # opened; behind them, the replayed records would come after a watermark that
        # passed them, and event-time timers and windows would fire without them
        ch.queue.extendleft(reversed(items))
        if ch.peer is not None:  # these batches took no credit of the new producer
            ch.owed += sum(1 for it in items if type(it) is list or type(it) is TsBatch)

    # --- processing ----------------------------------------------------------------------
    def outputs_have_room(self) -> bool:
        for o in self.all_outputs:
            if not o.has_room():
                return False
        return True

    def _broadcast(self, event: object) -> None:
        for o in self.all_outputs:
            o.broadcast(event)

    def _push(self, batch: list[Any], start: int, ts: list[float] | None = None) -> None:
        """Run ``batch`` (with event timestamps ``ts``, or None) through the operators from
        index ``start`` on, then to the main outputs."""
        for op in self._tails[start]:
            op.records_in += len(batch)
            if ts is not None:
                batch, ts = op.process_ts(batch, ts)
            elif op.stamps:  # assign_timestamps_and_watermarks: the records get their first
                batch, ts = op.process_ts(batch, [])
            else:
                batch = op.process(batch)
            op.records_out += len(batch)
            if not batch:
                break
        else:
            if ts is None:
                for o in self.outputs:
                    o.emit(batch)
            else:
                for o in self.outputs:
                    o.emit_ts(batch, ts)
        if self._side_ops:
            self._flush_side()
        if self._assigners:
            self._poll_assigners()

    def _flush_side(self) -> None:
        for op in self._side_ops:
            side = op.side
            if not side:
                continue
            op.side = {}
            for tag, (recs, tss) in side.items():
                for part in self.side_outputs.get(tag, ()):
                    if any(t is None for t in tss):
                        part.emit(recs)
                    else:
                        part.emit_ts(recs, tss)  # type: ignore[arg-type]

    def _poll_assigners(self) -> None:
        for i in self._assigners:
            op = self.ops[i]
            assert isinstance(op, AssignOp)
            wm = op.take_watermark()
            if wm is not None:
                self._advance_watermark(wm, i + 1)

    def _advance_watermark(self, wm: float, start: int) -> None:
        """The watermark reached ``wm`` at operator ``start``: each operator from there on
        fires what it holds up to ``wm`` (its results run through the rest of the chain
        first), then the watermark goes downstream. An assigner of timestamps further down
        the chain takes over: upstream watermarks stop there (except the end of input)."""
        ops = self.ops
        if start == 1 and self.source is not None:
            self.source.watermark = wm
        for i in range(start, len(ops)):
            op = ops[i]
            if isinstance(op, AssignOp) and wm != POS_INF:
                return
            if wm <= op.watermark:
                continue  # restored ahead of this (see open): it fired up to there already
            op.watermark = wm
            out, ts = op.on_watermark(wm)
            if out:
                op.records_out += len(out)
                self._push(out, i + 1, ts)
        self._broadcast(Watermark(wm))

    def _apply_valve(self, out: ValveOutput) -> None:
        if out.watermark is not None:
            self._advance_watermark(out.watermark, 0)
        if out.idle is not None:
            self._broadcast(WatermarkStatus(out.idle))

    def step(self) -> bool:
        if self.state is not TaskState.RUNNING:
            return False
        if self.source is not None:
            return self._source_step()
        if self._debloat is not None:
            self._debloat.tick()
            self._chunk = self._debloat.chunk
        if self._uh is not None and self._overtake():
            return True
        if not self.outputs_have_room():
            return self._barriers_at_heads()
        inputs = self.inputs
        n = len(inputs)
        collecting = self._collecting
        for k in range(n):
            ch = inputs[(self._rr + k) % n]
            if ch.queue and not ch.blocked:
                self._rr = (self._rr + k + 1) % n
                item = ch.pop()
                if self._two_input:
                    self.ops[0].input_no = ch.input_no  # type: ignore[attr-defined]
                t = type(item)
                if self._chunk and (t is list or t is TsBatch):
                    item = self._split(ch, item)  # before it is recorded as in-flight
                if collecting and ch.id in collecting and t is not Barrier:
                    self._uh.record(ch, item)  # type: ignore[union-attr]
                if t is list:
                    self._push(item, 0)
                elif t is TsBatch:
                    self._push(item.records, 0, item.ts)
                elif t is Watermark:
                    self._apply_valve(self.valve.on_watermark(ch.id, item.timestamp))
                elif t is Barrier:
                    ch.barriers -= 1
                    if _trace.ON:
                        self._trace_barrier(ch, item)
                    self.handler.on_barrier(ch, item)
                elif t is WatermarkStatus:
                    self._apply_valve(self.valve.on_status(ch.id, item.idle))
                elif item is END_OF_INPUT:
                    if _trace.ON:
                        _trace.event("end_of_input", task=self.uid, subtask=self.subtask,
                                     channel=ch.origin)
                    self.handler.on_end_of_input(ch)
                    if not self._final_barrier_seen:  # a stop with savepoint keeps windows
                        self._apply_valve(self.valve.on_end(ch.id))
                    if all(c.ended for c in inputs):
                        self._end_of_input()
                else:  # future events: forward unchanged
                    self._broadcast(item)
                return True
        return False

    def _split(self, ch: InputChannel, item: Any) -> Any:
        """Take the first ``_chunk`` records of a large batch; the rest stays at the head of
        its queue (without a credit of its own), so a barrier behind it waits for about
        ``buffer_time`` of processing, not for the whole batch."""
        k = self._chunk
        if len(item.records if type(item) is TsBatch else item) <= k:
            return item
        if type(item) is TsBatch:
            head, rest = TsBatch(item.records[:k], item.ts[:k]), \
                TsBatch(item.records[k:], item.ts[k:])
        else:
            head, rest = item[:k], item[k:]
        ch.queue.appendleft(rest)
        if ch.peer is not None:
            ch.owed += 1
        return head

    def _overtake(self) -> bool:
        """Unaligned checkpoints: take a barrier out of its queue ahead of the records
        before it (they become the checkpoint's in-flight data), even with full outputs."""
        uh = self._uh
        assert uh is not None
        if uh.current is not None and not uh.unaligned:
            uh.check_timeout()
        for ch in self.inputs:
            if not ch.barriers or ch.blocked:
                continue
            q = ch.queue
            k = next((k for k, it in enumerate(q) if type(it) is Barrier), -1)
            if k < 0:
                continue
            item = q[k]
            if not uh.priority(item):
                continue
            overtaken = list(islice(q, 0, k))
            del q[k]
            ch.barriers -= 1
            uh.on_barrier(ch, item, overtaken)
            return True
        return False

    def _barriers_at_heads(self) -> bool:
        """With full outputs no record can be taken, but a barrier at the head of a queue
        can: handling it only sends events."""
        for ch in self.inputs:
            if ch.queue and not ch.blocked and type(ch.queue[0]) is Barrier:
                item = ch.pop()
                ch.barriers -= 1
                if _trace.ON:
                    self._trace_barrier(ch, item)
                self.handler.on_barrier(ch, item)
                return True
        return False

    def _trace_barrier(self, ch: InputChannel, barrier: Barrier) -> None:
        _trace.event("barrier", task=self.uid, subtask=self.subtask, channel=ch.origin,
                     checkpoint=barrier.checkpoint_id, final=barrier.final,
                     queued=len(ch.queue))

    def _source_step(self) -> bool:
        src = self.source
        assert src is not None
        if src.exhausted:
            if not self._exhausted_reported:
                self._exhausted_reported = True
                # end of input: every window and event timer downstream may fire, before
                # the final checkpoint's barrier follows
                self._advance_watermark(POS_INF, 1)
                if _trace.ON:
                    _trace.event("source_exhausted", task=self.uid, subtask=self.subtask,
                                 records=src.records_out)
                self._on_exhausted(self)
            return False
        if not self.outputs_have_room():
            return False
        batch = src.read(self.batch_size)
        wms = src.watermarks
        if batch:
            if _trace.ON and not src.records_out:
                _trace.event("source_first", task=self.uid, subtask=self.subtask)
            src.records_out += len(batch)
            self._push(batch, 1, src.batch_ts)
            if wms is not None:
                self._emit_source_watermark(*wms.poll(force=True))
            _faults.point("source.after_batch", task=self.uid, subtask=self.subtask,
                          records=src.records_out)
            return True
        if wms is not None:
            self._emit_source_watermark(*wms.poll())
        return src.exhausted  # just ran out: progress (report it next step); "nothing now": not

    def _emit_source_watermark(self, wm: float | None, idle: bool | None) -> None:
        if idle is False:
            self._broadcast(WatermarkStatus(False))
        if wm is not None:
            self._advance_watermark(wm, 1)
        if idle:
            self._broadcast(WatermarkStatus(True))

    def idle_source(self) -> bool:
        """A running source that is not exhausted but had nothing to read."""
        return self.source is not None and self.state is TaskState.RUNNING and \
            not self.source.exhausted

    def fire_timers(self, now: float) -> bool:
        if self.state is not TaskState.RUNNING or self._final_barrier_seen:
            return False
        fired = False
        for i, op in self.timer_ops:
            nt = op.next_timer()
            if nt is not None and nt <= now:
                out, ts = op.fire_timers(now)
                op.records_out += len(out)
                if out:
                    self._push(out, i + 1, ts)
                fired = True
        return fired

    def next_timer(self) -> float | None:
        times = [t for _, op in self.timer_ops if (t := op.next_timer()) is not None]
        return min(times) if times else None

    def _end_of_input(self) -> None:
        for i, op in enumerate(self.ops):
            out = op.end_of_input()
            if out:
                self._push(out, i + 1)
        self._broadcast(END_OF_INPUT)
        self.state = TaskState.INPUT_ENDED

    # --- checkpoints ---------------------------------------------------------------------
    def trigger(self, barrier: Barrier) -> None:
        """Source tasks: the coordinator asked for checkpoint ``barrier.checkpoint_id``."""
        if self.state is not TaskState.RUNNING:
            return
        self._on_aligned(barrier, 0.0)
        if barrier.final:
            self._broadcast(END_OF_INPUT)
            self.state = TaskState.INPUT_ENDED

    def _on_aligned(self, barrier: Barrier, aligned_s: float) -> None:
        if _trace.ON:
            _trace.event("aligned", task=self.uid, subtask=self.subtask,
                         checkpoint=barrier.checkpoint_id, final=barrier.final,
                         aligned_s=aligned_s)
        blob, asyncs, sync_s = self._snapshot(barrier)
        if _trace.ON:
            _trace.event("snapshot_done", task=self.uid, subtask=self.subtask,
                         checkpoint=barrier.checkpoint_id, sync_s=sync_s)
        self._write_state(self, barrier, blob, asyncs, sync_s, aligned_s, None)

    def _on_unaligned_snapshot(self, barrier: Barrier, waited_s: float) -> None:
        for cid in [c for c in self._pending if c < barrier.checkpoint_id]:
            for a in self._pending.pop(cid)[1].values():
                a.discard()  # superseded before its in-flight data was complete
        self._pending[barrier.checkpoint_id] = self._snapshot(barrier)

    def _on_inflight(self, barrier: Barrier, inflight: dict[int, list[bytes]],
                     aligned_s: float) -> None:
        blob, asyncs, sync_s = self._pending.pop(barrier.checkpoint_id)
        by_origin = {self._origin(cid): items for cid, items in inflight.items() if items}
        data = pickle.dumps(by_origin, protocol=5) if by_origin else None
        self._write_state(self, barrier, blob, asyncs, sync_s, aligned_s, data)

    def _origin(self, channel_id: int) -> Any:
        for c in self.inputs:
            if c.id == channel_id:
                return c.origin if c.origin is not None else channel_id
        return channel_id

    def _snapshot(self, barrier: Barrier) -> tuple[bytes, dict[str, AsyncSnapshot], float]:
        """Forward the barrier, then take every operator's state (the synchronous phase)."""
        # Completions of earlier checkpoints that already arrived are applied first, so a
        # sink commits transaction n before it pre-commits n+1.
        self._before_snapshot()
        if barrier.final:
            self._final_barrier_seen = True
        self._broadcast(barrier)
        t0 = time.perf_counter()
        cid = barrier.checkpoint_id
        _faults.point("snapshot.sync", checkpoint=cid, task=self.uid, subtask=self.subtask)
        savepoint = barrier.savepoint is not None
        ops_state: dict[str, Any] = {}
        asyncs: dict[str, AsyncSnapshot] = {}
        for op in self.ops:
            st = op.snapshot(cid, savepoint)
            if isinstance(st, AsyncSnapshot):
                asyncs[op.uid] = st
                st = st.sync_state
            ops_state[op.uid] = st
        state = {
            "ops": ops_state,
            "metrics": {op.uid: (op.records_in, op.records_out) for op in self.ops},
            # late records dropped (windows, interval joins): exact across restores too
            "late_dropped": {op.uid: n for op in self.ops
                             if (n := getattr(op, "late_dropped", 0))},
            # each operator's event time: restored, so that lateness and event-time TTL
            # go on from here, not from -inf until every input has sent a watermark again
            "watermarks": {op.uid: op.watermark for op in self.ops
                           if math.isfinite(op.watermark)},
        }
        self.stateful_uids = [uid for uid, st in state["ops"].items() if st is not None]
        try:
            blob = pickle.dumps(state, protocol=5)
        except Exception as e:
            for a in asyncs.values():
                a.discard()
            bad = next((op.name for op in self.ops if not _picklable(state["ops"][op.uid])),
                       self.spec.name)
            raise CheckpointError(
                f"checkpoint {cid}: the state of operator {bad!r} cannot be serialized "
                f"({type(e).__name__}: {e}); keep only picklable values in state"
            ) from e
        return blob, asyncs, time.perf_counter() - t0

    def checkpoint_complete(self, checkpoint_id: int, final: bool) -> None:
        for op in self.ops:
            op.checkpoint_complete(checkpoint_id, final)

    def checkpoint_aborted(self, checkpoint_id: int) -> None:
        if self.handler is not None:
            self.handler.abort(checkpoint_id)
        for cid in [c for c in self._pending if c <= checkpoint_id]:
            for a in self._pending.pop(cid)[1].values():
                a.discard()
        for op in self.ops:
            op.checkpoint_aborted(checkpoint_id)

    def close(self) -> None:
        for op in self.ops:
            op.close()
        self.state = TaskState.FINISHED

    def metrics(self) -> dict[str, tuple[int, int]]:
        return {op.uid: (op.records_in, op.records_out) for op in self.ops}


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj, protocol=5)
        return True
    except Exception:
        return False


def make_partitioner(part: Partitioning, channels: list[Output], key_fn: Any,
                     max_parallelism: int, subtask: int, downstream: str) -> Partitioner:
    if part is Partitioning.FORWARD:
        return ForwardPartitioner(channels)
    if part is Partitioning.KEY:
        return KeyPartitioner(channels, key_fn, max_parallelism, downstream)
    if part is Partitioning.BROADCAST:
        return BroadcastPartitioner(channels)
    return RebalancePartitioner(channels, subtask)


__all__ = ["Kind", "TaskRunner", "make_partitioner"]
