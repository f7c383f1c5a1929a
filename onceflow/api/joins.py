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

from onceflow.api.functions import OutputTag, RuntimeContext
from onceflow.api.two_input import TwoInputSpec, two_input_node
from onceflow.errors import ConfigurationError
from onceflow.graph.logical import Edge, Node, Partitioning

if TYPE_CHECKING:
    from onceflow.api.flow import DataStream, KeyedStream


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
        spec = IntervalJoinSpec(self._lower, self._upper, fn, self._late_left,
                                self._late_right)
        edges = [Edge(self._left._node.id, Partitioning.KEY, self._left._key),
                 Edge(self._right._node.id, Partitioning.KEY, self._right._key)]
        node = two_input_node(self._left._flow, spec, edges, name or "interval_join",
                              parallelism, uid)
        return DataStream(self._left._flow, node)


@dataclass
class RegularJoinSpec(TwoInputSpec):
    function: Callable[[Any, Any], Any]
    ttl: Any

    def build(self, node: Node) -> Any:
        from onceflow.runtime.joins import RegularJoinOp

        return RegularJoinOp(node, self)


class JoinedStreams:
    """``a.join(b)``: say ``where(key_of_a)`` next."""

    def __init__(self, left: DataStream, right: DataStream) -> None:
        from onceflow.api.flow import DataStream

        if not isinstance(right, DataStream) or right._flow is not left._flow:
            raise ConfigurationError("join() takes a DataStream of the same Flow")
        self._left, self._right = left, right

    def where(self, key: Callable[[Any], Any]) -> _Where:
        if not callable(key):
            raise ConfigurationError(f"join().where() takes a function, got {type(key).__name__}")
        return _Where(self, key)


class _Where:
    def __init__(self, joined: JoinedStreams, key: Callable[[Any], Any]) -> None:
        self._joined, self._key = joined, key

    def equal_to(self, key: Callable[[Any], Any]) -> JoinCondition:
        if not callable(key):
            raise ConfigurationError(
                f"join().where(..).equal_to() takes a function, got {type(key).__name__}")
        return JoinCondition(self._joined._left, self._joined._right, self._key, key)


class JoinCondition:
    """``a.join(b).where(ka).equal_to(kb)``: ``apply(fn)`` for a regular join (optionally
    after ``with_ttl``), or ``window(assigner)`` for a window join."""

    def __init__(self, left: DataStream, right: DataStream, left_key: Callable[[Any], Any],
                 right_key: Callable[[Any], Any], ttl: Any = None) -> None:
        self._left, self._right = left, right
        self._lk, self._rk = left_key, right_key
        self._ttl = ttl

    def with_ttl(self, ttl: Any) -> JoinCondition:
        """Forget each row ``ttl`` seconds after it arrived (an ``of.StateTtl`` chooses
        event time instead of processing time)."""
        from onceflow.state.ttl import as_ttl

        as_ttl(ttl, "join().with_ttl()")
        return JoinCondition(self._left, self._right, self._lk, self._rk, ttl)

    def window(self, assigner: Any) -> Any:
        """A window join (needs the window operator's assigners)."""
        raise ConfigurationError(
            "join().window(...) is not available yet in this version; use the regular join "
            "(apply) or interval_join")

    def apply(self, fn: Callable[[Any, Any], Any], *, name: str | None = None,
              parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """``fn(left, right) -> record`` for every pair with equal keys (inner join)."""
        from onceflow.api.flow import DataStream

        if not callable(fn):
            raise ConfigurationError(f"join().apply() takes a function, got {type(fn).__name__}")
        edges = [Edge(self._left._node.id, Partitioning.KEY, self._lk),
                 Edge(self._right._node.id, Partitioning.KEY, self._rk)]
        node = two_input_node(self._left._flow, RegularJoinSpec(fn, self._ttl), edges,
                              name or "join", parallelism, uid)
        return DataStream(self._left._flow, node)
