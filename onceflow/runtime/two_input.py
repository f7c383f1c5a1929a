"""Two-input operators: the head of a task with two logical inputs.

The task sets ``input_no`` (0 or 1: which logical input the batch came from) before it
calls ``process`` / ``process_ts``; everything else (timers, watermarks — the minimum of
both inputs, by the task's valve —, barriers aligned over all input channels, snapshots)
is what a one-input keyed operator does, so the keyed operators here reuse
:class:`~onceflow.runtime.operators.ProcessOp`: one keyed store and one timer queue shared
by both sides.

A two-input function may return ``(record, timestamp)`` pairs instead of records when the
operator says so (``pairs = True``): the joins give each result the larger of its two
inputs' timestamps, whichever record arrived second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from onceflow.api.functions import OutputTag, TimeDomain, TimerService
from onceflow.api.two_input import (
    BroadcastContext,
    BroadcastState,
    CoProcessFunction,
    KeyedBroadcastProcessFunction,
    MapStateDescriptor,
)
from onceflow.errors import ConfigurationError, OnceflowError, UserFunctionError
from onceflow.graph.logical import Node
from onceflow.runtime.operators import Operator, OperatorEnv, ProcessOp, _Ctx, not_iterable

Handler = Callable[[Any, Any], Iterable[Any] | None]


class _NoScope:
    """The key scope of the non-keyed operators: always no key."""

    key: Any = None


_NO_SCOPE = _NoScope()


def _run_handler(name: str, pe: Handler, ctx: _Ctx, scope: Any, kf: Callable[[Any], Any] | None,
                 pairs: bool, batch: list[Any], ts: list[float] | None
                 ) -> tuple[list[Any], list[float] | None]:
    """The per-record loop of every two-input operator: ``pe(record, ctx)`` for each record
    of the batch, the key (``kf``, or no key) in ``scope`` and the timestamp in ``ctx``; its
    results get the record's timestamp, or their own with ``pairs``."""
    out: list[Any] = []
    out_ts: list[float] = []
    ap, tap = out.append, out_ts.append
    r: Any = None
    res: Any = None
    try:
        for j, r in enumerate(batch):
            scope.key = kf(r) if kf is not None else None
            t = ts[j] if ts is not None else None
            ctx._timestamp = t
            res = pe(r, ctx)
            if res is None:
                continue
            if pairs:
                for x, xt in res:
                    ap(x)
                    tap(xt)
            else:
                for x in res:
                    ap(x)
                    tap(t)  # type: ignore[arg-type]
    except Exception as e:
        if isinstance(e, OnceflowError):
            raise
        raise UserFunctionError(name, r, not_iterable(pe, res, e)) from e
    finally:
        ctx._timestamp = None
    return out, (out_ts if ts is not None else None)


class _RunsBothInputs:
    """``process`` and ``process_ts`` of a two-input operator: both go to ``_run``, which
    handles the batch of input ``input_no``."""

    def _run(self, batch: list[Any], ts: list[float] | None
             ) -> tuple[list[Any], list[float] | None]:
        raise NotImplementedError

    def process(self, batch: list[Any]) -> list[Any]:
        return self._run(batch, None)[0]

    def process_ts(self, batch: list[Any], ts: list[float]
                   ) -> tuple[list[Any], list[float] | None]:
        return self._run(batch, ts)


class KeyedTwoInputOp(_RunsBothInputs, ProcessOp):
    """Two keyed inputs (or one keyed and one broadcast), one keyed store and timers."""

    two_input = True
    pairs = False  # handlers return (record, timestamp) pairs

    def __init__(self, node: Node, func: Any) -> None:
        self.key_fns = tuple(e.key_fn for e in node.inputs)
        super().__init__(node, self.key_fns[0] or (lambda r: None))
        self.func = func
        self.input_no = 0
        self.handlers: tuple[Handler, Handler] = (self._unset, self._unset)
        #: after a restore: the key types of keyed inputs whose first batch found none of
        #: the state's key types (see _verify_side_key_type)
        self._unmatched: dict[int, set[str]] = {}

    def _unset(self, value: Any, ctx: Any) -> None:
        raise AssertionError("handlers are set by the subclass")

    def _verify_side_key_type(self, i: int, kf: Callable[[Any], Any], batch: list[Any]
                              ) -> None:
        """After a restore, the first batch of each keyed input: the one state holds the
        keys of both sides, which may be of different types (user ids on one side, page
        names on the other), and the restored state may hold only one side's keys. So
        the key type counts as changed only when no keyed side's keys are of a type the
        state was written with; one side that finds its types ends the check."""
        seen = {type(kf(r)).__name__ for r in batch}
        if seen & self.store.restored_key_types:
            self._check_key_type = False
            return
        self._unmatched[i] = seen
        if len(self._unmatched) == sum(1 for k in self.key_fns if k is not None):
            self._check_key_type = False
            raise self._key_type_changed(set().union(*self._unmatched.values()))

    def _run(self, batch: list[Any], ts: list[float] | None
             ) -> tuple[list[Any], list[float] | None]:
        i = self.input_no
        kf = self.key_fns[i]
        if self._check_key_type and kf is not None and batch:
            self._verify_side_key_type(i, kf, batch)
        store, ctx = self.store, self.ctx
        assert store is not None and ctx is not None
        res = _run_handler(self.name, self.handlers[i], ctx, store.scope, kf, self.pairs,
                           batch, ts)
        store.after_batch()
        return res


class CoProcessOp(KeyedTwoInputOp):
    def __init__(self, node: Node, func: CoProcessFunction) -> None:
        super().__init__(node, func)
        self.handlers = (func.process_element1, func.process_element2)


class _BroadcastCtx(_Ctx, BroadcastContext):
    def __init__(self, store: Any, env: OperatorEnv, op: BroadcastProcessOp) -> None:
        super().__init__(store, env, op)
        self._bop = op
        self.writable = False

    @property
    def current_key(self) -> Any:
        k = self._store.scope.key
        return None if type(k) is _NoCurrentKey else k  # the broadcast side: no key

    def get_broadcast_state(self, descriptor: MapStateDescriptor) -> BroadcastState:
        name = descriptor.name if isinstance(descriptor, MapStateDescriptor) else descriptor
        data = self._bop.broadcast_state.get(name)
        if data is None:
            raise ConfigurationError(
                f"operator {self._bop.name!r}: no broadcast state {name!r}; the broadcast "
                f"stream declares {sorted(self._bop.broadcast_state)}")
        return BroadcastState(name, data, self.writable, self._bop.name)


class _NoCurrentKey:
    """The key scope's key while ``process_broadcast_element`` runs: there is no current
    key, so keyed state and timers (whose handles look up, hash or serialize the current
    key) raise a clear error instead of reading or writing a key ``None`` on every subtask
    (``None`` is a key like any other, and the subtasks that do not own it would write it
    too)."""

    def __init__(self, operator: str) -> None:
        self.operator = operator

    def _error(self) -> ConfigurationError:
        return ConfigurationError(
            f"operator {self.operator!r}: process_broadcast_element has no current key, so "
            "it cannot use keyed state or timers (a broadcast record reaches every "
            "subtask); change the broadcast state there (ctx.get_broadcast_state) and use "
            "keyed state and timers in process_element")

    def __hash__(self) -> int:
        raise self._error()

    def __eq__(self, other: object) -> bool:
        raise self._error()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise self._error()

    def __repr__(self) -> str:
        return "<no current key>"


class BroadcastProcessOp(KeyedTwoInputOp):
    """Input 0: a keyed stream; input 1: a broadcast stream (every record on every
    subtask). The broadcast state is in every subtask's snapshot (``"_broadcast"`` next to
    the keyed state); on restore each subtask takes it from the first old subtask it reads,
    so any new parallelism gets it on every subtask."""

    broadcast_input = 1
    #: restore: the index, in the states restored, of the one the broadcast state came
    #: from (the task replays that old subtask's in-flight broadcast records, and only
    #: those, after a rescale of an unaligned checkpoint)
    restored_from: int | None = None

    def __init__(self, node: Node, func: KeyedBroadcastProcessFunction,
                 descriptors: tuple[MapStateDescriptor, ...]) -> None:
        super().__init__(node, func)
        self.broadcast_state: dict[str, dict[Any, Any]] = {d.name: {} for d in descriptors}
        self.handlers = (self._keyed, self._broadcast)
        self._pe = func.process_element
        self._pbe = func.process_broadcast_element

    def _new_ctx(self, rt: OperatorEnv) -> _Ctx:
        return _BroadcastCtx(self.store, rt, self)

    def _run(self, batch: list[Any], ts: list[float] | None
             ) -> tuple[list[Any], list[float] | None]:
        if self.input_no == 0:
            return super()._run(batch, ts)
        store, ctx = self.store, self.ctx
        assert store is not None and ctx is not None
        no_key = _NoCurrentKey(self.name)
        try:
            res = _run_handler(self.name, self._broadcast, ctx, store.scope,
                               lambda r: no_key, self.pairs, batch, ts)
        finally:
            store.scope.key = None
        store.after_batch()
        return res

    def _keyed(self, value: Any, ctx: Any) -> Iterable[Any] | None:
        return self._pe(value, ctx)

    def _broadcast(self, value: Any, ctx: Any) -> Iterable[Any] | None:
        ctx.writable = True
        try:
            return self._pbe(value, ctx)
        finally:
            ctx.writable = False

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        snap = super().snapshot(checkpoint_id, savepoint)
        holder = snap.sync_state if hasattr(snap, "sync_state") else snap
        holder["_broadcast"] = self.broadcast_state  # pickled by the task at once
        return snap

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        keyed = []
        got = False
        for k, st in enumerate(states):
            if not st:
                continue
            st = dict(st)
            b = st.pop("_broadcast", None)
            if b is not None and not got:
                got = True
                self.restored_from = k
                for name, data in b.items():
                    if name in self.broadcast_state:
                        self.broadcast_state[name] = dict(data)
            keyed.append(st)
        super().restore(keyed, filter_keys)


# --- non-keyed connect -----------------------------------------------------------------
class _NoTimers(TimerService):
    def __init__(self, op: Operator, env: OperatorEnv) -> None:
        self._op, self._env = op, env

    def _no(self) -> ConfigurationError:
        return ConfigurationError(
            f"operator {self._op.name!r}: timers need keyed streams; connect keyed streams "
            "(a.key_by(f).connect(b.key_by(g)) or connect(...).key_by(f, g))")

    def current_processing_time(self) -> float:
        return self._env.clock()

    def current_watermark(self) -> float:
        return self._op.watermark

    def register_processing_time_timer(self, timestamp: float) -> None:
        raise self._no()

    def delete_processing_time_timer(self, timestamp: float) -> None:
        raise self._no()

    def register_event_time_timer(self, timestamp: float) -> None:
        raise self._no()

    def delete_event_time_timer(self, timestamp: float) -> None:
        raise self._no()


class _UnkeyedCtx(_Ctx):
    def __init__(self, env: OperatorEnv, op: Operator) -> None:
        super().__init__(None, env, op)
        self._timers = _NoTimers(op, env)  # type: ignore[assignment]

    def _no_state(self) -> ConfigurationError:
        return ConfigurationError(
            f"operator {self._op.name!r}: keyed state needs keyed streams; connect keyed "
            "streams (a.key_by(f).connect(b.key_by(g)) or connect(...).key_by(f, g))")

    @property
    def current_key(self) -> Any:
        return None

    def value_state(self, name: str, default: Any = None, ttl: Any = None) -> Any:
        raise self._no_state()

    def list_state(self, name: str, ttl: Any = None) -> Any:
        raise self._no_state()

    def map_state(self, name: str, ttl: Any = None) -> Any:
        raise self._no_state()

    def output(self, tag: OutputTag, value: Any) -> None:
        super().output(tag, value)


class _UnkeyedBroadcastCtx(_UnkeyedCtx, BroadcastContext):
    def __init__(self, env: OperatorEnv, op: UnkeyedBroadcastProcessOp) -> None:
        super().__init__(env, op)
        self._bop = op
        self.writable = False

    get_broadcast_state = _BroadcastCtx.get_broadcast_state


class _UnkeyedTwoInputOp(_RunsBothInputs, Operator):
    """What the non-keyed two-input operators share: no keyed state, no timers, records
    stay in their subtask; ``_handler`` picks the function for the batch's input."""

    two_input = True
    emits_side = True

    def __init__(self, node: Node, func: Any) -> None:
        super().__init__(node)
        self.func = func
        self.input_no = 0
        self.ctx: _UnkeyedCtx | None = None

    def _new_ctx(self, rt: OperatorEnv) -> _UnkeyedCtx:
        return _UnkeyedCtx(rt, self)

    def _handler(self, ctx: Any) -> Handler:
        raise NotImplementedError

    def _done(self, ctx: Any) -> None:
        """After each batch (also when it failed)."""

    def open(self, rt: OperatorEnv) -> None:
        self.ctx = self._new_ctx(rt)
        try:
            self.func.open(self.ctx)
        except Exception as e:
            raise UserFunctionError(self.name, "<open>", e) from e

    def _run(self, batch: list[Any], ts: list[float] | None
             ) -> tuple[list[Any], list[float] | None]:
        ctx = self.ctx
        assert ctx is not None
        pe = self._handler(ctx)
        try:
            return _run_handler(self.name, pe, ctx, _NO_SCOPE, None, False, batch, ts)
        finally:
            self._done(ctx)

    def close(self) -> None:
        self.func.close()


class UnkeyedBroadcastProcessOp(_UnkeyedTwoInputOp):
    """A non-keyed stream (input 0) connected to a broadcast stream (input 1). Keyed for
    restore purposes only (``keyed = True``): each new subtask then reads at least one
    old subtask's snapshot, which holds the broadcast state, at any parallelism. Its
    records stay in their subtask (forward)."""

    keyed = True
    key_fns = (None, None)  # neither input is keyed (unaligned in-flight data: see task)
    broadcast_input = 1
    restored_from: int | None = None  # as BroadcastProcessOp's

    def __init__(self, node: Node, func: Any, descriptors: tuple[MapStateDescriptor, ...]
                 ) -> None:
        super().__init__(node, func)
        self.broadcast_state: dict[str, dict[Any, Any]] = {d.name: {} for d in descriptors}

    def _new_ctx(self, rt: OperatorEnv) -> _UnkeyedCtx:
        return _UnkeyedBroadcastCtx(rt, self)

    def _handler(self, ctx: Any) -> Handler:
        bcast = self.input_no == 1
        ctx.writable = bcast
        return self.func.process_broadcast_element if bcast else self.func.process_element

    def _done(self, ctx: Any) -> None:
        ctx.writable = False

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        return {"_broadcast": self.broadcast_state}

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        for k, st in enumerate(states):
            if st and st.get("_broadcast") is not None:
                self.restored_from = k
                for name, data in st["_broadcast"].items():
                    if name in self.broadcast_state:
                        self.broadcast_state[name] = dict(data)
                return


class UnkeyedCoProcessOp(_UnkeyedTwoInputOp):
    """``a.connect(b).process(fn)`` without keys: records stay in their subtask, no keyed
    state, no timers (as in Flink)."""

    def _handler(self, ctx: Any) -> Handler:
        return self.func.process_element1 if self.input_no == 0 else self.func.process_element2


__all__ = ["BroadcastProcessOp", "CoProcessOp", "KeyedTwoInputOp", "TimeDomain",
           "UnkeyedBroadcastProcessOp", "UnkeyedCoProcessOp"]
