"""Joins of two streams by key.

* **Interval join** (event time)::

      a.key_by(ka).interval_join(b.key_by(kb)).between(-5.0, 10.0).process(fn)

  joins each ``left`` of ``a`` with every ``right`` of ``b`` with the same key and
  ``left_ts + lower <= right_ts <= left_ts + upper`` (bounds inclusive, seconds). ``fn`` is
  a function ``fn(left, right) -> record`` or a :class:`ProcessJoinFunction`. A result's
  timestamp is the larger of the two. Both sides are buffered in keyed state (the flow's
  state backend, RocksDB for large state) and removed once the watermark passes the last
  time they could still match, so state stays bounded. A record whose timestamp is below
  the operator's watermark on arrival is late: it joins nothing and goes to
  ``side_output_late_data(tag)`` (or is counted in the operator's ``late_records``).
  Both inputs need event timestamps (a ``WatermarkStrategy`` at their sources).

* **Regular (unbounded) join**::

      a.join(b).where(ka).equal_to(kb).apply(fn)                 # every match, as it arrives
      a.join(b).where(ka).equal_to(kb).with_ttl(3600.0).apply(fn) # forget rows after 1 h

  an inner join emitting ``fn(left, right)`` for every pair with equal keys, when the
  second of the two arrives. Without a time-to-live both sides are kept forever; with
  ``with_ttl(seconds)`` (or an ``of.StateTtl``: processing time by default, event time
  for results that do not depend on speed) a row is forgotten ``seconds`` after it
  arrived, and joins nothing afterwards.

Example (runs as a doctest)::

    >>> import tempfile, onceflow as of
    >>> flow = of.Flow("join-doc", parallelism=2)
    >>> people = flow.source(of.sources.Collection([(1, "ann"), (2, "bob")]))
    >>> orders = flow.source(of.sources.Collection([(10, 1), (11, 2), (12, 1)]))
    >>> out = tempfile.mkdtemp()
    >>> _ = (people.join(orders).where(lambda p: p[0]).equal_to(lambda o: o[1])
    ...            .apply(lambda p, o: (p[1], o[0])).sink(of.sinks.FileSink(out)))
    >>> _ = flow.run()
    >>> sorted(map(tuple, of.sinks.read_committed(out)))
    [('ann', 10), ('ann', 12), ('bob', 11)]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onceflow.api.flow import DataStream
from onceflow.api.functions import OutputTag, RuntimeContext, TimeDomain
from onceflow.api.two_input import TwoInputSpec, two_input_node
from onceflow.api.windowing import require_timestamps
from onceflow.errors import ConfigurationError
from onceflow.graph.logical import Edge, Node, Partitioning

if TYPE_CHECKING:
    from onceflow.api.flow import KeyedStream
    from onceflow.state.ttl import StateTtl


class JoinContext(ABC):
    """What a :class:`ProcessJoinFunction` sees with each pair."""

    @property
    @abstractmethod
    def left_timestamp(self) -> float: ...

    @property
    @abstractmethod
    def right_timestamp(self) -> float: ...

    @property
    @abstractmethod
    def timestamp(self) -> float:
        """The result's timestamp: the larger of the two."""

    @property
    @abstractmethod
    def current_key(self) -> Any: ...


class ProcessJoinFunction(ABC):
    """Called once per joined pair; returns an iterable of results (or None)."""

    def open(self, ctx: RuntimeContext) -> None:  # noqa: B027 - optional hook
        """Called once per subtask before any record."""

    @abstractmethod
    def process_element(self, left: Any, right: Any, ctx: JoinContext
                        ) -> Iterable[Any] | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the subtask ends normally."""


def _number(where: str, what: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or math.isinf(v):
        raise ConfigurationError(f"{where}: {what} must be a finite number of seconds, got {v!r}")
    return float(v)


def _check_keyed(where: str, s: Any) -> Callable[[Any], Any]:
    from onceflow.api.flow import KeyedStream

    if not isinstance(s, KeyedStream):
        raise ConfigurationError(
            f"{where}: both streams must be keyed (stream.key_by(f)), got "
            f"{type(s).__name__}")
    return s._key


@dataclass
class IntervalJoinSpec(TwoInputSpec):
    lower: float
    upper: float
    function: ProcessJoinFunction | Callable[[Any, Any], Any]
    late_left: str | None
    late_right: str | None

    def build(self, node: Node) -> Any:
        from onceflow.runtime.joins import IntervalJoinOp

        return IntervalJoinOp(node, self)


class IntervalJoin:
    """``left.interval_join(right)``: say ``between(lower, upper)`` next."""

    def __init__(self, left: KeyedStream, right: KeyedStream) -> None:
        self._left, self._right = left, right
        _check_keyed("interval_join()", left)
        _check_keyed("interval_join()", right)
        if right._flow is not left._flow:
            raise ConfigurationError("interval_join() takes a stream of the same Flow")

    def between(self, lower: float, upper: float) -> IntervalJoined:
        """Join ``left`` with the ``right`` records of its key whose timestamps are in
        ``[left_ts + lower, left_ts + upper]`` (seconds; bounds inclusive)."""
        lo = _number("interval_join().between()", "lower", lower)
        hi = _number("interval_join().between()", "upper", upper)
        if lo > hi:
            raise ConfigurationError(
                f"interval_join().between({lower!r}, {upper!r}): lower must be <= upper")
        return IntervalJoined(self._left, self._right, lo, hi)


class IntervalJoined:
    def __init__(self, left: KeyedStream, right: KeyedStream, lower: float,
                 upper: float) -> None:
        self._left, self._right, self._lower, self._upper = left, right, lower, upper
        self._late_left: str | None = None
        self._late_right: str | None = None

    def side_output_late_data(self, tag: OutputTag) -> IntervalJoined:
        """Late records of both sides go to side output ``tag`` (read it with
        ``result.side_output(tag)``) instead of being counted and dropped."""
        return self.side_output_left_late_data(tag).side_output_right_late_data(tag)

    def side_output_left_late_data(self, tag: OutputTag) -> IntervalJoined:
        if not isinstance(tag, OutputTag):
            raise ConfigurationError(
                f"side_output_late_data() takes an of.OutputTag, got {type(tag).__name__}")
        self._late_left = tag.name
        return self

    def side_output_right_late_data(self, tag: OutputTag) -> IntervalJoined:
        if not isinstance(tag, OutputTag):
            raise ConfigurationError(
                f"side_output_late_data() takes an of.OutputTag, got {type(tag).__name__}")
        self._late_right = tag.name
        return self

    def process(self, fn: ProcessJoinFunction | Callable[[Any, Any], Any], *,
                name: str | None = None, parallelism: int | None = None,
                uid: str | None = None) -> DataStream:
        """``fn(left, right) -> record`` or a :class:`ProcessJoinFunction`, per pair."""
        from onceflow.api.flow import DataStream

        if not isinstance(fn, ProcessJoinFunction) and not callable(fn):
            raise ConfigurationError(
                "interval_join().process() takes a function fn(left, right) or a "
                f"ProcessJoinFunction, got {type(fn).__name__}")
        op = name or "interval_join"
        _require_timestamps_on_both(self._left, self._right,
                                    f"interval join {op!r} matches records by their event time")
        spec = IntervalJoinSpec(self._lower, self._upper, fn, self._late_left,
                                self._late_right)
        edges = [Edge(self._left._node.id, Partitioning.KEY, self._left._key),
                 Edge(self._right._node.id, Partitioning.KEY, self._right._key)]
        node = two_input_node(self._left._flow, spec, edges, op, parallelism, uid)
        return DataStream(self._left._flow, node)


@dataclass
class RegularJoinSpec(TwoInputSpec):
    function: Callable[[Any, Any], Any]
    ttl: Any

    def build(self, node: Node) -> Any:
        from onceflow.runtime.joins import RegularJoinOp

        return RegularJoinOp(node, self)


def _require_timestamps_on_both(left: DataStream, right: DataStream, needs: str,
                                otherwise: str = "") -> None:
    """Each side's records need timestamps: an input without any fails when the flow is
    built (the error names the side), one that only sometimes has them (a union with an
    untimed source) at run time."""
    for side, stream in (("left", left), ("right", right)):
        require_timestamps(left._flow._plan, stream._node,
                           f"{needs} ({side} side: {stream._node.name!r})", otherwise)


def _next_step(what: str, name: str, step: str) -> ConfigurationError:
    """The error for ``.name`` on a half-built join: what comes next instead."""
    if name.startswith("_"):  # copy, pickle, introspection, own fields: no such attribute
        raise AttributeError(name)
    return ConfigurationError(f"{what} has no .{name}(): {step}")


class JoinedStreams:
    """``a.join(b)`` (or ``a.co_group(b)``): say ``where(key_of_a)`` next."""

    def __init__(self, left: DataStream, right: DataStream, cogroup: bool = False) -> None:
        from onceflow.api.flow import DataStream

        what = "co_group()" if cogroup else "join()"
        if not isinstance(right, DataStream) or right._flow is not left._flow:
            raise ConfigurationError(f"{what} takes a DataStream of the same Flow")
        self._left, self._right, self._cogroup = left, right, cogroup

    def where(self, key: Callable[[Any], Any]) -> _Where:
        if not callable(key):
            raise ConfigurationError(f"join().where() takes a function, got {type(key).__name__}")
        return _Where(self, key)

    def __getattr__(self, name: str) -> Any:
        what = "a.co_group(b)" if self.__dict__.get("_cogroup") else "a.join(b)"
        raise _next_step(what, name, "say .where(key_of_a).equal_to(key_of_b) next")


class _Where:
    def __init__(self, joined: JoinedStreams, key: Callable[[Any], Any]) -> None:
        self._joined, self._key = joined, key

    def equal_to(self, key: Callable[[Any], Any]) -> Any:
        if not callable(key):
            raise ConfigurationError(
                f"join().where(..).equal_to() takes a function, got {type(key).__name__}")
        j = self._joined
        if j._cogroup:
            return CoGroupCondition(j._left, j._right, self._key, key)
        return JoinCondition(j._left, j._right, self._key, key)

    def __getattr__(self, name: str) -> Any:
        raise _next_step("a.join(b).where(key_of_a)", name, "say .equal_to(key_of_b) next")


class CoGroupCondition:
    """``a.co_group(b).where(ka).equal_to(kb)``: say ``window(assigner)`` next."""

    def __init__(self, left: DataStream, right: DataStream, left_key: Callable[[Any], Any],
                 right_key: Callable[[Any], Any]) -> None:
        self._left, self._right, self._lk, self._rk = left, right, left_key, right_key

    def window(self, assigner: Any) -> WindowJoin:
        """Both sides' records of each key and window, given together to the function."""
        return WindowJoin(self._left, self._right, self._lk, self._rk, assigner, cogroup=True)

    def __getattr__(self, name: str) -> Any:
        raise _next_step("a.co_group(b).where(..).equal_to(..)", name,
                         "a co-group needs a window: say .window(assigner) next")


class _Tag:
    """Marks which side a record of a window join came from (picklable, no closure)."""

    __slots__ = ("side",)

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, record: Any) -> tuple[int, Any]:
        return (self.side, record)


class _UntaggedGap:
    """A session window join's dynamic gap, called with the user's record (the window
    operator sees the join's ``(side, record)`` tuples)."""

    __slots__ = ("gap",)

    def __init__(self, gap: Callable[[Any], float]) -> None:
        self.gap = gap

    def __call__(self, tagged: tuple[int, Any]) -> float:
        return self.gap(tagged[1])


def _untagged(assigner: Any) -> Any:
    """``assigner`` as it must be over tagged records: a session whose gap is a function of
    the record gets it called with the user's record, not the join's tuple."""
    from onceflow.windows import _Session

    if isinstance(assigner, _Session) and callable(assigner.gap):
        return _Session(_UntaggedGap(assigner.gap), assigner.time or "event")
    return assigner


class _SideKey:
    __slots__ = ("keys",)

    def __init__(self, left: Callable[[Any], Any], right: Callable[[Any], Any]) -> None:
        self.keys = (left, right)

    def __call__(self, tagged: tuple[int, Any]) -> Any:
        return self.keys[tagged[0]](tagged[1])


class _WindowJoinFn:
    """The window function: split the window's records by side, then pair (inner join)
    or give both lists to the user's function (co-group). Returns the window's results."""

    def __init__(self, fn: Callable[..., Any], cogroup: bool) -> None:
        self.fn, self.cogroup = fn, cogroup

    def __call__(self, key: Any, window: Any, elements: list[Any]) -> list[Any] | None:
        lefts = [r for side, r in elements if side == 0]
        rights = [r for side, r in elements if side == 1]
        if self.cogroup:
            res = self.fn(lefts, rights)
            out = list(res) if res is not None else []
        else:
            fn = self.fn
            out = [fn(x, y) for x in lefts for y in rights]
        return out or None


def _window_results(result: tuple[Any, Any, Any, list[Any]]) -> list[Any]:
    return result[3]


class WindowJoin:
    """A join or co-group over windows. Built from the public window API: both sides are
    tagged, united, keyed by their key functions and windowed; the window function pairs
    the records of the two sides (so the window operator's state, late-data handling and
    exactly-once hold as for any window)."""

    def __init__(self, left: DataStream, right: DataStream, left_key: Callable[[Any], Any],
                 right_key: Callable[[Any], Any], assigner: Any, cogroup: bool) -> None:
        self._left, self._right, self._lk, self._rk = left, right, left_key, right_key
        self._assigner, self._cogroup = assigner, cogroup
        self._lateness: float | None = None
        self._late: OutputTag | None = None
        self._trigger: Any = None

    def trigger(self, trigger: Any) -> WindowJoin:
        """When the windows fire (replaces the assigner's default trigger), as for any
        window: e.g. ``of.windows.CountTrigger(100)`` for ``of.windows.global_()``, or an
        early-firing ``ContinuousProcessingTimeTrigger``. A trigger counts the records of
        both sides."""
        self._trigger = trigger
        return self

    def allowed_lateness(self, seconds: float) -> WindowJoin:
        self._lateness = seconds
        return self

    def side_output_late_data(self, tag: OutputTag) -> WindowJoin:
        """Late records (tagged ``(side, record)``, side 0 or 1) go to side output ``tag``
        of the window operator; read it with ``result.side_output(tag)`` (or
        ``result.window_stream.side_output(tag)``, the same stream)."""
        self._late = tag
        return self

    def apply(self, fn: Callable[..., Any], *, name: str | None = None,
              parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """Join: ``fn(left, right) -> record`` for every pair of a key in a window.
        Co-group: ``fn(lefts, rights) -> iterable`` once per key and window (either list
        may be empty: outer joins are written this way)."""
        if not callable(fn):
            raise ConfigurationError(f"window join apply() takes a function, got "
                                     f"{type(fn).__name__}")
        base = name or ("co_group" if self._cogroup else "window_join")
        with self._left._flow._plan.all_or_nothing():  # a refused setting adds no node
            return self._build(fn, base, parallelism, uid)

    def _build(self, fn: Callable[..., Any], base: str, parallelism: int | None,
               uid: str | None) -> DataStream:
        a = self._left.map(_Tag(0), name=f"{base}-left")
        b = self._right.map(_Tag(1), name=f"{base}-right")
        windowed: Any = (a.union(b, name=f"{base}-union").key_by(_SideKey(self._lk, self._rk))
                     .window(_untagged(self._assigner)))
        if self._trigger is not None:
            windowed = windowed.trigger(self._trigger)
        if self._lateness is not None:
            windowed = windowed.allowed_lateness(self._lateness)
        if self._late is not None:
            windowed = windowed.side_output_late_data(self._late)
        results: Any = windowed.process(_WindowJoinFn(fn, self._cogroup), name=base,
                                   parallelism=parallelism, uid=uid)
        pairs = results.flat_map(_window_results, name=f"{base}-results",
                                 parallelism=parallelism)
        return WindowJoinStream(pairs, results)

    def __getattr__(self, name: str) -> Any:
        what = "a window co_group()" if self.__dict__.get("_cogroup") else "a window join"
        raise _next_step(what, name, "it takes .trigger(), .allowed_lateness() and "
                                     ".side_output_late_data(), then .apply(fn)")


class WindowJoinStream(DataStream):
    """The result of a window join or co-group: its records, plus ``window_stream``, the
    window operator's own results ``(key, window_start, window_end, records)``. The
    window operator is where side outputs come from (its late records), so
    ``side_output(tag)`` reads them there."""

    def __init__(self, pairs: DataStream, window_stream: DataStream) -> None:
        super().__init__(pairs._flow, pairs._node)
        self.window_stream = window_stream

    def side_output(self, tag: OutputTag) -> DataStream:
        return self.window_stream.side_output(tag)


class JoinCondition:
    """``a.join(b).where(ka).equal_to(kb)``: ``apply(fn)`` for a regular join (optionally
    after ``with_ttl``), or ``window(assigner)`` for a window join."""

    def __init__(self, left: DataStream, right: DataStream, left_key: Callable[[Any], Any],
                 right_key: Callable[[Any], Any], ttl: StateTtl | None = None) -> None:
        self._left, self._right = left, right
        self._lk, self._rk = left_key, right_key
        self._ttl = ttl

    def with_ttl(self, ttl: Any) -> JoinCondition:
        """Forget each row ``ttl`` seconds after it arrived (an ``of.StateTtl`` chooses
        event time instead of processing time)."""
        from onceflow.state.ttl import as_ttl

        return JoinCondition(self._left, self._right, self._lk, self._rk,
                             as_ttl(ttl, "join().with_ttl()"))

    def window(self, assigner: Any) -> WindowJoin:
        """A window join: pairs of equal keys in the same window of ``assigner`` (e.g.
        ``of.windows.tumbling(10.0)``), emitted when the window fires."""
        if self._ttl is not None:
            raise ConfigurationError(
                "join().with_ttl(...).window(...): a window join keeps each window's rows "
                "until the window closes, so a time-to-live does not apply to it; drop "
                "with_ttl() for a window join, or drop window() for a regular join with "
                "a time-to-live")
        return WindowJoin(self._left, self._right, self._lk, self._rk, assigner, cogroup=False)

    def apply(self, fn: Callable[[Any, Any], Any], *, name: str | None = None,
              parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """``fn(left, right) -> record`` for every pair with equal keys (inner join)."""
        from onceflow.api.flow import DataStream

        if not callable(fn):
            raise ConfigurationError(f"join().apply() takes a function, got {type(fn).__name__}")
        op = name or "join"
        if self._ttl is not None and self._ttl.time_domain is TimeDomain.EVENT_TIME:
            # rows of an input without timestamps would never expire
            _require_timestamps_on_both(
                self._left, self._right,
                f"join {op!r} with an event-time TTL forgets rows by their event time",
                " or use a processing-time TTL (with_ttl(seconds))")
        edges = [Edge(self._left._node.id, Partitioning.KEY, self._lk),
                 Edge(self._right._node.id, Partitioning.KEY, self._rk)]
        node = two_input_node(self._left._flow, RegularJoinSpec(fn, self._ttl), edges,
                              op, parallelism, uid)
        return DataStream(self._left._flow, node)
