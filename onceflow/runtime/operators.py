"""Operator implementations: what runs inside a task for each node of the plan.

Every operator works on whole batches (``process(batch) -> output batch``) so the per-record
cost is one call of the user's function and little else. Operators that hold state return it
from ``snapshot`` (called in the synchronous phase; the caller pickles the result at once)
and take it back in ``restore``.

Event time: a batch may come with its records' timestamps (``process_ts(batch, ts) ->
(out, out_ts)``; ``out_ts`` None drops them). ``on_watermark(w)`` is called when the
operator's watermark rises to ``w``, before the watermark goes further downstream; it
returns what fires (event-time timers, windows) as ``(records, timestamps)``. Records for
a side output go through ``emit_side(tag, record, ts)``: the task routes them to the
consumers of that tag, and counts those nobody consumes in ``side_dropped``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from itertools import compress
from operator import itemgetter
from typing import Any

from onceflow.api.functions import (
    KeyedProcessFunction,
    OutputTag,
    ProcessContext,
    RuntimeContext,
    TimeDomain,
    TimerService,
)
from onceflow.api.watermarks import WatermarkStrategy, timestamps_of
from onceflow.connectors.sinks import Sink, SinkContext
from onceflow.connectors.sources import Source, SplitReader
from onceflow.connectors.two_phase import (
    TransactionLifecycle,
    TwoPhaseCommitSink,
    WriteAheadLifecycle,
    WriteAheadSink,
)
from onceflow.errors import (
    IncompatibleStateError,
    OnceflowError,
    RecordFormatError,
    UserFunctionError,
)
from onceflow.graph.logical import Kind, Node
from onceflow.runtime.watermarks import SourceWatermarks
from onceflow.state.backend import KeyedStore, StateBackend, owner_name
from onceflow.state.memory import MemoryBackend

log = logging.getLogger("onceflow.source")


class Operator:
    keyed = False
    has_timers = False  # processing-time timers: next_timer / fire_timers
    emits_side = False  # may call emit_side
    stamps = False  # assigns timestamps itself: process_ts is called even without them
    side_wanted: frozenset[str] = frozenset()  # tags with a consumer (set by the task)

    def __init__(self, node: Node) -> None:
        self.name = node.name
        self.uid = node.uid
        self.fn = node.fn
        self.records_in = 0
        self.records_out = 0
        self.watermark = -math.inf  # the operator's current event time
        self.side: dict[str, tuple[list[Any], list[float | None]]] = {}
        self.side_dropped = 0  # side-output records no consumer took

    def open(self, rt: OperatorEnv) -> None:
        pass

    def process(self, batch: list[Any]) -> list[Any]:
        raise NotImplementedError

    def process_ts(self, batch: list[Any], ts: list[float]
                   ) -> tuple[list[Any], list[float] | None]:
        """A batch with its records' event timestamps. The default keeps the timestamps
        when the output has one record per input record, as map-like operators do."""
        out = self.process(batch)
        return out, (ts if len(out) == len(batch) else None)

    def on_watermark(self, watermark: float) -> tuple[list[Any], list[float] | None]:
        return [], None

    def next_timer(self) -> float | None:
        return None

    def fire_timers(self, now: float) -> tuple[list[Any], list[float] | None]:
        return [], None

    def emit_side(self, tag: str, record: Any, ts: float | None) -> None:
        if tag not in self.side_wanted:
            self.side_dropped += 1
            return
        entry = self.side.get(tag)
        if entry is None:
            entry = self.side[tag] = ([], [])
        entry[0].append(record)
        entry[1].append(ts)

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        return None

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        pass

    def checkpoint_aborted(self, checkpoint_id: int) -> None:
        pass

    def checkpoint_complete(self, checkpoint_id: int, final: bool) -> None:
        pass

    def end_of_input(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass

    def _fail(self, batch: list[Any], it: Any, err: Exception) -> None:
        """Raise a UserFunctionError naming the record ``map``/``filter`` was at when the
        user's function raised: the one just taken from the list iterator ``it``."""
        if isinstance(err, OnceflowError):
            raise err
        index = len(batch) - it.__length_hint__() - 1
        raise UserFunctionError(self.name, batch[index], err) from err


class OperatorEnv:
    """What the task gives its operators: where they run, and a clock."""

    def __init__(self, flow: str, subtask: int, parallelism: int, max_parallelism: int,
                 kg_range: tuple[int, int], attempt: int,
                 checkpoint_interval: float | None = None,
                 checkpoint_timeout: float | None = None,
                 state_backend: StateBackend | None = None, incremental: bool = False,
                 flow_dir: str | None = None) -> None:
        self.flow, self.subtask, self.parallelism = flow, subtask, parallelism
        self.max_parallelism, self.kg_range, self.attempt = max_parallelism, kg_range, attempt
        self.checkpoint_interval, self.checkpoint_timeout = checkpoint_interval, checkpoint_timeout
        self.state_backend = state_backend if state_backend is not None else MemoryBackend()
        self.incremental = incremental
        self.flow_dir = flow_dir  # the flow's checkpoint directory (holds shared/)
        self.clock: Callable[[], float] = time.time

    def keyed_store(self, op: Operator) -> KeyedStore:
        return self.state_backend.create(
            self.max_parallelism, self.kg_range, operator=op.name,
            owner=owner_name(op.uid, self.subtask), incremental=self.incremental,
            flow_dir=self.flow_dir)


class _PerRecordOp(Operator):
    """``map`` or ``filter`` of the user's function over the batch, at C speed."""

    apply: Callable[..., Any]

    def process(self, batch: list[Any]) -> list[Any]:
        it = iter(batch)
        try:
            return list(self.apply(self.fn, it))
        except Exception as e:
            self._fail(batch, it, e)
            raise


class MapOp(_PerRecordOp):
    apply = staticmethod(map)


class FilterOp(_PerRecordOp):
    apply = staticmethod(filter)

    def process_ts(self, batch: list[Any], ts: list[float]
                   ) -> tuple[list[Any], list[float] | None]:
        it = iter(batch)
        try:
            keep = list(map(self.fn, it))
        except Exception as e:
            self._fail(batch, it, e)
            raise
        return list(compress(batch, keep)), list(compress(ts, keep))


class FlatMapOp(Operator):
    def process(self, batch: list[Any]) -> list[Any]:
        out: list[Any] = []
        ext = out.extend
        fn = self.fn
        r = None
        res = None
        try:
            for r in batch:
                res = fn(r)
                if res is not None:
                    ext(res)
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, not_iterable(fn, res, e)) from e
        return out

    def process_ts(self, batch: list[Any], ts: list[float]
                   ) -> tuple[list[Any], list[float] | None]:
        out: list[Any] = []
        out_ts: list[float] = []
        ap, tap = out.append, out_ts.append
        fn = self.fn
        r = None
        res = None
        try:
            for r, t in zip(batch, ts, strict=True):
                res = fn(r)
                if res is not None:
                    for x in res:
                        ap(x)
                        tap(t)
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, not_iterable(fn, res, e)) from e
        return out, out_ts


class AssignOp(Operator):
    """``assign_timestamps_and_watermarks``: new timestamps from the strategy's function,
    and watermarks from one generator per subtask (upstream watermarks stop here)."""

    stamps = True

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.strategy: WatermarkStrategy = node.fn
        self.generator = self.strategy.generator_factory()
        self._emitted = -math.inf
        self._pending: float | None = None

    def process(self, batch: list[Any]) -> list[Any]:
        return self.process_ts(batch, [])[0]

    def process_ts(self, batch: list[Any], ts: list[float]
                   ) -> tuple[list[Any], list[float] | None]:
        new = _timestamps(self.name, self.strategy, batch)
        gen = self.generator
        try:
            w = gen.on_events(batch, new)
            p = gen.on_periodic_emit()
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, "<watermark generator>", e) from e
        for cand in (w, p):
            if cand is not None and cand > self._emitted:
                self._emitted = self._pending = cand
        return batch, new

    def take_watermark(self) -> float | None:
        w, self._pending = self._pending, None
        return w

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        return None  # watermarks restart from the restored sources' (documented)


def not_iterable(fn: Any, result: Any, error: Exception) -> Exception:
    """``error`` from iterating what ``fn`` returned: when ``result`` is no iterable, a
    TypeError that names the function (and where it is defined) and what it returned;
    otherwise ``error`` itself (the failure came from the user's own generator)."""
    if result is None or isinstance(result, Iterable) or not isinstance(error, TypeError):
        return error
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, _FunctionAsProcess):  # a plain function given to process()
        fn = owner.fn
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None),
                                                    "__code__", None)
    where = f" ({code.co_filename}, line {code.co_firstlineno})" if code is not None else ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return TypeError(f"{name}{where} returned {type(result).__name__} {_short(result)}, "
                     "not an iterable of records (a list, a generator, ...) or None")


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _timestamps(operator: str, strategy: WatermarkStrategy, batch: list[Any]) -> list[float]:
    """The strategy's timestamps of ``batch``; a bad one names the operator and record."""
    fn = strategy.timestamp_fn
    assert fn is not None
    try:
        return timestamps_of(fn, batch)
    except Exception as e:
        if isinstance(e, OnceflowError):
            raise
        bad = batch[0] if batch else None
        for r in batch:
            try:
                timestamps_of(fn, [r])
            except Exception:
                bad = r
                break
        raise UserFunctionError(f"{operator} (timestamps)", bad, e) from e


class UnionOp(Operator):
    def process(self, batch: list[Any]) -> list[Any]:
        return batch


_MISSING = object()
_FINISHED = itemgetter(2)  # of an ``assigned`` entry: [split, position, finished]


class _KeyedOp(Operator):
    """What reduce and process share: a keyed store from the flow's state backend."""

    keyed = True
    store: KeyedStore  # made in open(); only its protocol is used

    def __init__(self, node: Node, key_fn: Callable[[Any], Any]) -> None:
        super().__init__(node)
        self.key_fn = key_fn
        self._check_key_type = False

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        return self.store.snapshot(checkpoint_id, savepoint)

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        self.store.restore([s for s in states if s], filter_keys)
        self._check_key_type = bool(self.store.restored_key_types)

    def _verify_key_type(self, batch: list[Any]) -> None:
        """Once, after a restore: the keys this flow computes must be of the type the state
        was written with, or no restored state would ever be found again."""
        self._check_key_type = False
        if not batch:
            self._check_key_type = True
            return
        seen = {type(self.key_fn(r)).__name__ for r in batch}
        if not seen & self.store.restored_key_types:
            raise self._key_type_changed(seen)

    def _key_type_changed(self, seen: set[str]) -> IncompatibleStateError:
        return IncompatibleStateError(
            f"operator {self.name!r} (uid {self.uid!r}): the restored state is keyed by "
            f"{', '.join(sorted(self.store.restored_key_types))} but key_by now returns "
            f"{', '.join(sorted(seen))}; a changed key type cannot find its state: keep the "
            "key type, or give the operator a new uid to start its state empty")

    def checkpoint_complete(self, checkpoint_id: int, final: bool) -> None:
        self.store.notify_complete(checkpoint_id)

    def checkpoint_aborted(self, checkpoint_id: int) -> None:
        self.store.notify_aborted(checkpoint_id)

    def close(self) -> None:
        store: KeyedStore | None = getattr(self, "store", None)
        if store is not None:
            store.close()


class ReduceOp(_KeyedOp):
    """Keyed rolling reduce: emits the updated value for every record (Flink's ``reduce``)."""

    def __init__(self, node: Node, key_fn: Callable[[Any], Any]) -> None:
        super().__init__(node, key_fn)
        self.table: dict[Any, Any] = {}
        self.dirty: set[Any] | None = None
        self.handle: Any = None

    def open(self, rt: OperatorEnv) -> None:
        self.store = rt.keyed_store(self)
        self._bind()

    def _bind(self) -> None:
        fast = self.store.value_table("reduce")
        if fast is not None:
            self.table, self.dirty = fast
        else:
            self.handle = self.store.value_state("reduce", _MISSING)

    def process(self, batch: list[Any]) -> list[Any]:
        if self._check_key_type:
            self._verify_key_type(batch)
        if self.handle is not None:
            return self._process_handle(batch)
        kf, fn, table = self.key_fn, self.fn, self.table
        get = table.get
        out: list[Any] = []
        ap = out.append
        missing = _MISSING
        dirty = self.dirty
        r: Any = None
        try:
            if dirty is None:
                for r in batch:
                    k = kf(r)
                    prev = get(k, missing)
                    if prev is not missing:
                        r = fn(prev, r)
                    table[k] = r
                    ap(r)
            else:
                mark = dirty.add
                for r in batch:
                    k = kf(r)
                    prev = get(k, missing)
                    if prev is not missing:
                        r = fn(prev, r)
                    table[k] = r
                    mark(k)
                    ap(r)
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, e) from e
        return out

    def _process_handle(self, batch: list[Any]) -> list[Any]:
        kf, fn, h, scope = self.key_fn, self.fn, self.handle, self.store.scope
        value, update = h.value, h.update
        out: list[Any] = []
        ap = out.append
        missing = _MISSING
        r: Any = None
        try:
            for r in batch:
                scope.key = kf(r)
                prev = value()
                if prev is not missing:
                    r = fn(prev, r)
                update(r)
                ap(r)
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, e) from e
        self.store.after_batch()
        return out

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        super().restore(states, filter_keys)
        self._bind()


class _Timers(TimerService):
    def __init__(self, store: Any, clock: Callable[[], float], op: Operator) -> None:
        self._store, self._clock, self._op = store, clock, op

    def current_processing_time(self) -> float:
        return self._clock()

    def register_processing_time_timer(self, timestamp: float) -> None:
        self._store.register_timer(_seconds("register_processing_time_timer", timestamp))

    def delete_processing_time_timer(self, timestamp: float) -> None:
        self._store.delete_timer(timestamp)

    def current_watermark(self) -> float:
        return self._op.watermark

    def register_event_time_timer(self, timestamp: float) -> None:
        self._store.register_event_timer(_seconds("register_event_time_timer", timestamp))

    def delete_event_time_timer(self, timestamp: float) -> None:
        self._store.delete_event_timer(_seconds("delete_event_time_timer", timestamp))


def _seconds(what: str, t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, int | float):
        from onceflow.api.watermarks import to_seconds

        try:
            return to_seconds(t)
        except TypeError as e:
            raise TypeError(f"{what}: {e}") from None
    f = float(t)
    if f != f:  # a NaN timer would never fire (nor ever be deleted): say so instead
        raise ValueError(f"{what}: the time is NaN; it must be a number of seconds")
    return f


class _Ctx(ProcessContext, RuntimeContext):
    def __init__(self, store: Any, env: OperatorEnv, op: Operator) -> None:
        self._store = store
        self._env = env
        self._op = op
        self._timers = _Timers(store, env.clock, op)
        self._timestamp: float | None = None
        self._domain: TimeDomain | None = None
        self._ttl_cleaners: dict[Any, Any] = {}  # state time-to-live: see state/ttl.py

    @property
    def timestamp(self) -> float | None:
        return self._timestamp

    @property
    def time_domain(self) -> TimeDomain | None:
        return self._domain

    def output(self, tag: OutputTag, value: Any) -> None:
        if not isinstance(tag, OutputTag):
            raise TypeError(f"ctx.output() takes an of.OutputTag, got {type(tag).__name__}")
        self._op.emit_side(tag.name, value, self._timestamp)

    @property
    def current_key(self) -> Any:
        return self._store.scope.key

    @property
    def timer_service(self) -> TimerService:
        return self._timers

    @property
    def subtask_index(self) -> int:
        return self._env.subtask

    @property
    def parallelism(self) -> int:
        return self._env.parallelism

    def value_state(self, name: str, default: Any = None, ttl: Any = None) -> Any:
        if ttl is not None:
            return self._ttl_state("value", name, default, ttl)
        return self._store.value_state(name, default)

    def list_state(self, name: str, ttl: Any = None) -> Any:
        if ttl is not None:
            return self._ttl_state("list", name, None, ttl)
        return self._store.list_state(name)

    def map_state(self, name: str, ttl: Any = None) -> Any:
        if ttl is not None:
            return self._ttl_state("map", name, None, ttl)
        return self._store.map_state(name)

    def _ttl_state(self, kind: str, name: str, default: Any, ttl: Any) -> Any:
        from onceflow.state.ttl import ttl_state

        op = self._op

        def event_time() -> float:
            t = self._timestamp
            return op.watermark if t is None or t < op.watermark else t

        return ttl_state(self._store, kind, name, default, ttl, self._env.clock,
                         lambda: op.watermark, event_time, self._ttl_cleaners,
                         f"operator {op.name!r}")


class _FunctionAsProcess(KeyedProcessFunction):
    def __init__(self, fn: Callable[[Any, ProcessContext], Iterable[Any] | None]) -> None:
        self.fn = fn

    def process_element(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None:
        return self.fn(value, ctx)


class ProcessOp(_KeyedOp):
    """Keyed process function with keyed state, timers in both time domains, and side
    outputs."""

    has_timers = True
    emits_side = True

    def __init__(self, node: Node, key_fn: Callable[[Any], Any]) -> None:
        super().__init__(node, key_fn)
        f = node.fn
        self.func: KeyedProcessFunction = (
            f if isinstance(f, KeyedProcessFunction) else _FunctionAsProcess(f)
        )
        self.ctx: _Ctx | None = None

    def _new_ctx(self, rt: OperatorEnv) -> _Ctx:
        return _Ctx(self.store, rt, self)

    def open(self, rt: OperatorEnv) -> None:
        self.store = rt.keyed_store(self)
        self.ctx = self._new_ctx(rt)
        try:
            self.func.open(self.ctx)
        except Exception as e:
            raise UserFunctionError(self.name, "<open>", e) from e

    def process(self, batch: list[Any]) -> list[Any]:
        if self._check_key_type:
            self._verify_key_type(batch)
        store, ctx, pe = self.store, self.ctx, self.func.process_element
        assert store is not None and ctx is not None
        scope = store.scope
        kf = self.key_fn
        out: list[Any] = []
        ext = out.extend
        r: Any = None
        res: Any = None
        try:
            for r in batch:
                scope.key = kf(r)
                res = pe(r, ctx)
                if res is not None:
                    ext(res)
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, not_iterable(pe, res, e)) from e
        store.after_batch()
        return out

    def process_ts(self, batch: list[Any], ts: list[float]
                   ) -> tuple[list[Any], list[float] | None]:
        if self._check_key_type:
            self._verify_key_type(batch)
        store, ctx, pe = self.store, self.ctx, self.func.process_element
        assert store is not None and ctx is not None
        scope = store.scope
        kf = self.key_fn
        out: list[Any] = []
        out_ts: list[float] = []
        ap, tap = out.append, out_ts.append
        r: Any = None
        res: Any = None
        try:
            for r, t in zip(batch, ts, strict=True):
                scope.key = kf(r)
                ctx._timestamp = t
                res = pe(r, ctx)
                if res is not None:
                    for x in res:
                        ap(x)
                        tap(t)
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, not_iterable(pe, res, e)) from e
        finally:
            ctx._timestamp = None
        store.after_batch()
        return out, out_ts

    def next_timer(self) -> float | None:
        assert self.store is not None
        return self.store.next_timer()

    def fire_timers(self, now: float) -> tuple[list[Any], list[float] | None]:
        store = self.store
        assert store is not None
        out, _ = self._fire(TimeDomain.PROCESSING_TIME, store.pop_due_timers, now)
        return out, None  # like Flink: processing-time timer output has no event time

    def on_watermark(self, watermark: float) -> tuple[list[Any], list[float] | None]:
        store = self.store
        assert store is not None
        nt = store.next_event_timer()
        if nt is None or nt > watermark:
            return [], None
        return self._fire(TimeDomain.EVENT_TIME, store.pop_due_event_timers, watermark)

    def _fire(self, domain: TimeDomain, pop: Callable[[float], list[tuple[float, Any]]],
              upto: float) -> tuple[list[Any], list[float]]:
        store, ctx = self.store, self.ctx
        assert store is not None and ctx is not None
        out: list[Any] = []
        out_ts: list[float] = []
        ctx._domain = domain
        try:
            due = pop(upto)
            while due:  # timers registered by on_timer at or before ``upto`` fire too
                for when, key in due:
                    store.scope.key = key
                    ctx._timestamp = when
                    res = None
                    try:
                        res = self.func.on_timer(when, ctx)
                        if res is not None:  # a generator runs the user's code here
                            for x in res:
                                out.append(x)
                                out_ts.append(when)
                    except Exception as e:
                        if isinstance(e, OnceflowError):
                            raise
                        raise UserFunctionError(
                            self.name, f"<{domain.value} timer {when} for key {key!r}>",
                            not_iterable(self.func.on_timer, res, e)) from e
                due = pop(upto)
        finally:
            ctx._domain = None
            ctx._timestamp = None
        store.after_batch()
        return out, out_ts

    def close(self) -> None:
        try:
            self.func.close()
        finally:
            super().close()


class SinkOp(Operator):
    """Runs a sink: plain, two-phase commit, or write-ahead; the lifecycle classes own the
    protocols."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.sink = node.fn
        self.lifecycle: Any = None
        self._restored: list[Any] = []

    def open(self, rt: OperatorEnv) -> None:
        ctx = SinkContext(rt.flow, self.uid, rt.subtask, rt.parallelism, rt.attempt,
                          rt.checkpoint_interval, rt.checkpoint_timeout, rt.flow_dir)
        s = self.sink
        if isinstance(s, TwoPhaseCommitSink):
            self.lifecycle = TransactionLifecycle(s, ctx)
        elif isinstance(s, WriteAheadSink):
            self.lifecycle = WriteAheadLifecycle(s, ctx)
        else:
            self.lifecycle = _PlainSinkLifecycle(s, ctx)

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        self._restored = [s for s in states if s is not None]

    def start(self) -> None:
        try:
            self.lifecycle.start(self._restored)
        except OnceflowError:
            raise
        except Exception as e:
            raise UserFunctionError(self.name, "<recovery: open/recommit>", e) from e
        self._restored = []

    def process(self, batch: list[Any]) -> list[Any]:
        try:
            self.lifecycle.write(batch)
        except OnceflowError:
            raise
        except Exception as e:
            raise UserFunctionError(self.name, batch[0] if batch else None, e,
                                    what=f"a batch of {len(batch)} records starting with") from e
        return []

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        try:
            return self.lifecycle.snapshot(checkpoint_id)  # pre-commit
        except OnceflowError:
            raise
        except (TypeError, ValueError) as e:  # a record the format could not hold, found late
            raise UserFunctionError(self.name, f"<pre-commit of checkpoint {checkpoint_id}>",
                                    e) from e

    def checkpoint_complete(self, checkpoint_id: int, final: bool) -> None:
        self.lifecycle.checkpoint_complete(checkpoint_id)

    @property
    def lost_transactions(self) -> int:
        """Transactions of completed checkpoints the sink found lost (its output never
        committed) and carried on past, since the job first started (a Kafka sink with
        ``on_lost_transaction="continue"``); 0 for sinks that cannot lose any."""
        return int(getattr(self.sink, "lost_transactions", 0) or 0)

    def end_of_input(self) -> list[Any]:
        fin = getattr(self.sink, "finish", None)
        if isinstance(self.sink, Sink) and fin is not None:
            fin()
        return []

    def close(self) -> None:
        if self.lifecycle is not None:
            self.lifecycle.close()


class _PlainSinkLifecycle:
    def __init__(self, sink: Sink, ctx: SinkContext) -> None:
        self.sink, self.ctx = sink, ctx

    def start(self, states: list[Any]) -> None:
        self.sink.open(self.ctx)
        self.sink.restore_state(states)

    def write(self, records: list[Any]) -> None:
        self.sink.write(records)

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        return self.sink.snapshot_state(checkpoint_id)

    def checkpoint_complete(self, checkpoint_id: int) -> None:
        self.sink.notify_checkpoint_complete(checkpoint_id)

    def close(self) -> None:
        self.sink.close()


#: with event time, how many splits of one source subtask are read in turn at once (each
#: holds its reader open, e.g. a file); the others wait, holding the watermark back
EVENT_TIME_OPEN_SPLITS = 16


class SourceOp(Operator):
    """Reads the splits assigned to this subtask; its state is ``[(split, position)]``."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.source: Source = node.fn
        self.assigned: list[list[Any]] = []  # [split, position, finished]
        self.readers: list[SplitReader | None] = []
        #: per split: whether its last read filled a whole batch (records are waiting)
        self._full: list[bool] = []
        self._next = 0
        self._snapshots: dict[int, list[Any]] = {}  # checkpoint id -> position per split
        self.strategy: WatermarkStrategy | None = node.watermarks
        self.watermarks: SourceWatermarks | None = None
        self.batch_ts: list[float] | None = None  # timestamps of the last batch read

    def open(self, rt: OperatorEnv) -> None:
        if self.strategy is not None:
            self.watermarks = SourceWatermarks(self.strategy, rt.clock)
            self.watermarks.backlog = self._backlog
            self.watermarks.assign([], [])

    def assign(self, splits: list[tuple[Any, ...]]) -> None:
        """Entries are ``(split, position, finished)``, and since event time also carry the
        split's watermark progress as a fourth element."""
        self.assigned = [[e[0], e[1], e[2]] for e in splits]
        self.readers = [None] * len(self.assigned)
        self._full = [False] * len(self.assigned)
        self._next = 0
        if self.watermarks is not None:
            self.watermarks.assign([e[3] if len(e) > 3 else None for e in splits],
                                   [bool(e[2]) for e in splits])

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        merged: list[tuple[Any, ...]] = []
        for st in states:
            merged.extend(st)
        self.assign(merged)

    def _backlog(self, index: int, partition: Any) -> bool:
        if index >= len(self.readers):
            return False
        rd = self.readers[index]
        if rd is None:
            # not opened yet (waiting for its turn behind the splits being read): every
            # record of it is still to come, so it must not turn idle and let the other
            # splits' watermark make its records late
            return not self.assigned[index][2]
        if partition is None:
            # a split read as one input: its last read filled a whole batch, so more is
            # likely waiting (read in turn with the others, its next turn may come later
            # than the idleness timeout); it goes idle once a read finds nothing
            return self._full[index] if index < len(self._full) else False
        try:
            return bool(rd.has_backlog(partition))
        except Exception:  # a reader's own method failing: no claim, never fail the job
            return False

    @property
    def exhausted(self) -> bool:
        return all(map(_FINISHED, self.assigned))  # asked every step: no Python loop

    def read(self, max_records: int) -> list[Any]:
        """Up to ``max_records`` from the current split. Without event time a split is
        read until it finishes or has nothing right now, then the next one gets its turn
        (so bounded splits are read one after another, holding one file open, and idle
        ones do not block). With event time (a watermark strategy) the splits take turns
        batch by batch, up to :data:`EVENT_TIME_OPEN_SPLITS` of them open at once: the
        subtask's watermark is the minimum over its splits, so splits read one after
        another would hold every window back until the last one is reached (and, with
        idleness, a split waiting for its turn would turn idle and its records late)."""
        n = len(self.assigned)
        wms = self.watermarks
        self.batch_ts = None
        opened: int | None = None  # open readers of unfinished splits (event time)
        for _ in range(n):
            i = self._next
            a = self.assigned[i]
            if a[2] or (wms is not None and not wms.readable(i)):
                self._next = (i + 1) % n
                continue
            rd = self.readers[i]
            if rd is None:
                if wms is not None and n > 1:
                    if opened is None:  # counted once per call (thousands of splits)
                        opened = self._open_unfinished()
                    if opened >= EVENT_TIME_OPEN_SPLITS:
                        self._next = (i + 1) % n  # its turn comes when an open one ends
                        continue
                    opened += 1
                try:
                    rd = self.readers[i] = self.source.reader(a[0], a[1])
                except OnceflowError:
                    raise
                except Exception as e:
                    raise UserFunctionError(self.name, f"<open split {a[0]!r}>", e) from e
                if wms is not None and (parts := rd.partitions()) is not None:
                    wms.set_partitions(i, parts)
            try:
                batch = rd.read_batch(max_records)
            except RecordFormatError as e:  # the reader names the place, this the operator
                raise RecordFormatError(f"source {self.name!r}: {e}") from e
            except OnceflowError:
                raise
            except Exception as e:
                raise UserFunctionError(self.name, f"<read split {a[0]!r}>", e) from e
            a[1] = rd.position()
            if wms is not None:
                self._full[i] = batch is not None and len(batch) >= max_records
            if not batch:
                self._next = (i + 1) % n
            if batch is None:
                a[2] = True
                if wms is not None:
                    wms.on_finished(i)
                if not _wants_notifications(rd):
                    rd.close()  # free the file handle now (thousands of splits)
                    self.readers[i] = None
                # otherwise keep it until close(): it still hears that the final
                # checkpoint completed (e.g. to commit the last offsets)
                continue
            if batch:
                if wms is not None:
                    assert self.strategy is not None
                    ts = _timestamps(self.name, self.strategy, batch)
                    runs = rd.batch_runs()
                    if runs is not None:
                        wms.set_partitions(i, rd.partitions() or [])
                    wms.on_batch_runs(i, batch, ts, runs)
                    self.batch_ts = ts
                    self._next = (i + 1) % n  # the next split's turn (see above)
                return batch
        return []

    def _open_unfinished(self) -> int:
        return sum(1 for rd, a in zip(self.readers, self.assigned, strict=True)
                   if rd is not None and not a[2])

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        self._snapshots[checkpoint_id] = [p for _, p, _ in self.assigned]
        wms = self.watermarks
        if wms is None:
            return [(s, p, f) for s, p, f in self.assigned]
        return [(s, p, f, wms.snapshot(i)) for i, (s, p, f) in enumerate(self.assigned)]

    def checkpoint_complete(self, checkpoint_id: int, final: bool) -> None:
        done = [c for c in self._snapshots if c <= checkpoint_id]
        if not done:
            return
        positions = self._snapshots[max(done)]
        for c in done:
            del self._snapshots[c]
        for rd, pos in zip(self.readers, positions, strict=False):
            if rd is not None:
                try:
                    rd.notify_checkpoint_complete(checkpoint_id, pos)
                except Exception as e:  # informational: never fail the job for it
                    log.warning("source %s: notify_checkpoint_complete failed: %s", self.name, e)

    def close(self) -> None:
        for rd in self.readers:
            if rd is not None:
                rd.close()


def _wants_notifications(rd: SplitReader) -> bool:
    return type(rd).notify_checkpoint_complete is not SplitReader.notify_checkpoint_complete


def make_operator(node: Node, key_fn: Callable[[Any], Any] | None) -> Operator:
    k = node.kind
    if k is Kind.SOURCE:
        return SourceOp(node)
    if k is Kind.MAP:
        return MapOp(node)
    if k is Kind.FILTER:
        return FilterOp(node)
    if k is Kind.FLAT_MAP:
        return FlatMapOp(node)
    if k is Kind.UNION or k is Kind.SIDE_OUTPUT:
        return UnionOp(node)
    if k is Kind.ASSIGN:
        return AssignOp(node)
    if k is Kind.WINDOW or k is Kind.WINDOW_ALL:
        from onceflow.runtime.window import make_window_operator

        assert key_fn is not None
        return make_window_operator(node, key_fn)
    if k is Kind.REDUCE:
        assert key_fn is not None
        return ReduceOp(node, key_fn)
    if k is Kind.PROCESS:
        assert key_fn is not None
        return ProcessOp(node, key_fn)
    if k is Kind.SINK:
        return SinkOp(node)
    if k is Kind.TWO_INPUT:
        return node.fn.build(node)
    raise AssertionError(k)
