"""Join operators: interval join and regular (unbounded) join, both keyed two-input
operators with their buffers in the keyed store (memory or RocksDB, snapshotted per key
group like any keyed state) and results stamped with the larger input timestamp.

Interval join state, per key: map states ``left`` and ``right`` (timestamp -> records).
A left record at ``tl`` can match rights up to ``tl + upper``; a right record at ``tr``
lefts down to ``tr - lower``. Since no record below the watermark arrives on time, a left
entry is removed by an event-time timer just after ``tl + upper`` and a right one at the
first watermark ``w`` with ``w + lower > tr`` (``tr - lower`` but for rounding).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from onceflow.api.joins import IntervalJoinSpec, JoinContext, ProcessJoinFunction, RegularJoinSpec
from onceflow.errors import ConfigurationError, UserFunctionError
from onceflow.graph.logical import Node
from onceflow.runtime.operators import OperatorEnv, _Ctx
from onceflow.runtime.two_input import KeyedTwoInputOp

log = logging.getLogger("onceflow.join")

LATE_TAG = "__late__"  # late records of a join without a late-data tag (counted, dropped)


class _JoinCtx(JoinContext):
    __slots__ = ("_ctx", "l_ts", "r_ts")

    def __init__(self, ctx: _Ctx) -> None:
        self._ctx = ctx
        self.l_ts = self.r_ts = 0.0

    @property
    def left_timestamp(self) -> float:
        return self.l_ts

    @property
    def right_timestamp(self) -> float:
        return self.r_ts

    @property
    def timestamp(self) -> float:
        return max(self.l_ts, self.r_ts)

    @property
    def current_key(self) -> Any:
        return self._ctx.current_key


class _JoinBase(KeyedTwoInputOp):
    pairs = True

    def __init__(self, node: Node) -> None:
        super().__init__(node, self)
        self.late_records = 0  # late records (to the side output or dropped)
        self.late_dropped = 0  # late records without a late-data side output (as windows)
        self.late_dropped_sides: set[int] = set()  # 0 left, 1 right: for the advice

    # the operator is its own timer function (ProcessOp calls self.func.on_timer)
    def open(self, rt: OperatorEnv) -> None:
        self.store = rt.keyed_store(self)
        self.ctx = _Ctx(self.store, rt, self)
        self._open_state(self.ctx)

    def _open_state(self, ctx: _Ctx) -> None:
        raise NotImplementedError

    def on_timer(self, timestamp: float, ctx: Any) -> Iterable[Any] | None:
        return None

    def close(self) -> None:
        if self.late_dropped:
            sides = self.late_dropped_sides
            how = ("side_output_late_data(tag)" if len(sides) != 1 else
                   "side_output_left_late_data(tag)" if 0 in sides else
                   "side_output_right_late_data(tag)")
            which = "" if len(sides) != 1 else " of the left side" if 0 in sides else \
                " of the right side"
            log.warning("%s: %d late records%s joined nothing and were dropped (give the join "
                        "%s to keep them)", self.name, self.late_dropped, which, how)
        if self.store is not None:
            self.store.close()


class IntervalJoinOp(_JoinBase):
    def __init__(self, node: Node, spec: IntervalJoinSpec) -> None:
        super().__init__(node)
        self.lower, self.upper = spec.lower, spec.upper
        f = spec.function
        self.user: ProcessJoinFunction | None = f if isinstance(f, ProcessJoinFunction) else None
        self.fn = f
        self.late_tags = (spec.late_left or LATE_TAG, spec.late_right or LATE_TAG)
        self.handlers = (self._on_left, self._on_right)

    def _open_state(self, ctx: _Ctx) -> None:
        self.left = ctx.map_state("__interval_join_left")
        self.right = ctx.map_state("__interval_join_right")
        self.jctx = _JoinCtx(ctx)
        if self.user is not None:
            try:
                self.user.open(ctx)
            except Exception as e:
                raise UserFunctionError(self.name, "<open>", e) from e

    def _ts(self, ctx: _Ctx, side: int, value: Any) -> float | None:
        t = ctx._timestamp
        if t is None:
            raise ConfigurationError(
                f"interval join {self.name!r}: records need event timestamps; give both "
                "sources a WatermarkStrategy (flow.source(..., watermarks=...))")
        if t < self.watermark:
            self.late_records += 1
            tag = self.late_tags[side]
            if tag == LATE_TAG:
                self.late_dropped += 1
                self.late_dropped_sides.add(side)
            self.emit_side(tag, value, t)
            return None
        return t

    def _buffer(self, state: Any, t: float, value: Any, useless_from: float) -> None:
        """Keep ``value`` (at ``t``) until the watermark reaches ``useless_from``, the
        first time from which no record of the other side still to come can match it."""
        if useless_from <= self.watermark:
            # can match nothing still to come: a record of the other side at exactly the
            # watermark is on time (late is ``t < watermark``) and may still match
            return
        buf = state.get(t)
        if buf is None:
            state.put(t, [value])
        else:
            buf.append(value)
            state.put(t, buf)
        assert self.store is not None
        self.store.register_event_timer(useless_from)

    def _pair(self, left: Any, right: Any, lt: float, rt: float, out: list[Any]) -> None:
        ts = lt if lt > rt else rt
        if self.user is None:
            out.append((self.fn(left, right), ts))
            return
        jc = self.jctx
        jc.l_ts, jc.r_ts = lt, rt
        res = self.user.process_element(left, right, jc)
        if res is not None:
            out.extend((x, ts) for x in res)

    def _on_left(self, value: Any, ctx: _Ctx) -> list[Any] | None:
        t = self._ts(ctx, 0, value)
        if t is None:
            return None
        lo, hi = t + self.lower, t + self.upper
        out: list[Any] = []
        for rt, recs in self.right.items():
            if lo <= rt <= hi:
                for r in recs:
                    self._pair(value, r, t, rt, out)
        # a right record matches while ``rt <= t + upper``; rights at the watermark or
        # later are still to come
        self._buffer(self.left, t, value, math.nextafter(t + self.upper, math.inf))
        return out

    def _on_right(self, value: Any, ctx: _Ctx) -> list[Any] | None:
        t = self._ts(ctx, 1, value)
        if t is None:
            return None
        lower, upper = self.lower, self.upper
        out: list[Any] = []
        for lt, recs in self.left.items():
            if lt + lower <= t <= lt + upper:  # the same arithmetic as from the left
                for left in recs:
                    self._pair(left, value, lt, t, out)
        self._buffer(self.right, t, value, self._right_useless_from(t))
        return out

    def _right_useless_from(self, rt: float) -> float:
        """A watermark ``w`` with ``w + lower > rt`` (so no left record still to come,
        ``lt >= w``, passes the match test ``lt + lower <= rt``), at most a rounding step
        past the first such one: ``rt - lower`` is rounded (``0.7 - 0.2`` is
        0.49999999999999994 but ``0.5 + 0.2 == 0.7``: a left at 0.5 still matches, and the
        right record was dropped before it came), so it is raised in steps of the
        operands' rounding unit until the match test fails. (Steps of one float would
        never end near 0, where floats are dense.)"""
        lower = self.lower
        w = rt - lower
        step = math.ulp(max(abs(rt), abs(lower), abs(w)))
        while w + lower <= rt:  # a few steps at most: each moves w by a whole ulp of it
            w += step
        return w

    def on_timer(self, timestamp: float, ctx: Any) -> Iterable[Any] | None:
        # entries whose last possible match lies before ``timestamp`` go
        # (the same tests as the matching's: lefts match while ``rt <= lt + upper``,
        # rights while ``lt + lower <= rt``, for records at ``timestamp`` or later)
        for lt, _ in self.left.items():
            if lt + self.upper < timestamp:
                self.left.remove(lt)
        lower = self.lower
        for rt, _ in self.right.items():
            if timestamp + lower > rt:
                self.right.remove(rt)
        return None

    def close(self) -> None:
        if self.user is not None:
            self.user.close()
        super().close()


class RegularJoinOp(_JoinBase):
    """Inner join without a window: each side's rows in a list state per key, optionally
    with a time-to-live; a new row joins every row of the other side at once."""

    def __init__(self, node: Node, spec: RegularJoinSpec) -> None:
        super().__init__(node)
        self.fn2 = spec.function
        self.ttl = spec.ttl
        self.handlers = (self._on_left, self._on_right)

    def _open_state(self, ctx: _Ctx) -> None:
        self.left = ctx.list_state("__join_left", ttl=self.ttl)
        self.right = ctx.list_state("__join_right", ttl=self.ttl)

    def _on_left(self, value: Any, ctx: _Ctx) -> list[Any]:
        t = ctx._timestamp
        fn = self.fn2
        out = [(fn(value, r), _later(t, rt)) for r, rt in self.right.get()]
        self.left.add((value, t))
        return out

    def _on_right(self, value: Any, ctx: _Ctx) -> list[Any]:
        t = ctx._timestamp
        fn = self.fn2
        out = [(fn(left, value), _later(t, lt)) for left, lt in self.left.get()]
        self.right.add((value, t))
        return out


def _later(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a if a > b else b
