"""Windowed streams: ``key_by(...).window(assigner)`` (or ``window_all``) then the options,
then the function that makes the window's value.

Every window function's results are tuples ``(key, window_start, window_end, value)``
(``key`` is None for ``window_all``), with the event timestamp just below ``window_end``
(``math.nextafter(end, -inf)``), so a following window of the same size puts a result in
the same window.

* ``aggregate(agg)``: an :class:`onceflow.agg.AggregateFunction` (one accumulator per
  window); ``aggregate(agg, process=fn)`` gives ``fn(key, window, result)`` the aggregate's
  result and emits what it returns.
* ``reduce(fn)``: ``fn(a, b)`` folds the window's records into one.
* ``process(fn)``: ``fn(key, window, elements)`` sees all the window's records (kept in
  state until it fires) and returns the value (None: nothing is emitted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onceflow.agg import AggregateFunction
from onceflow.api.functions import OutputTag
from onceflow.errors import ConfigurationError
from onceflow.graph.logical import Edge, Kind, Node, Partitioning
from onceflow.windows import EVENT, PROCESSING, Trigger, WindowAssigner


def all_key(record: Any) -> None:
    """The key of every record of a ``window_all``."""
    return None


@dataclass
class WindowSpec:
    """What the window operator runs (the node's ``fn``)."""

    assigner: WindowAssigner
    trigger: Trigger
    lateness: float
    late_tag: str | None
    function: str  # "aggregate" | "reduce" | "process"
    fn: Any
    post: Callable[[Any, Any, Any], Any] | None = None  # aggregate's process function
    #: sources from which a path reaches the window without anything giving timestamps
    #: (some other path has them, or the flow would not build): named in the error when
    #: records without timestamps do arrive
    untimed_sources: tuple[str, ...] = ()


class WindowedStream:
    """A keyed (or whole) stream cut into windows; finish it with ``aggregate``,
    ``reduce`` or ``process``."""

    def __init__(self, flow: Any, node: Node, key: Callable[[Any], Any] | None,
                 assigner: WindowAssigner) -> None:
        if not isinstance(assigner, WindowAssigner):
            raise ConfigurationError(
                "window() takes a window assigner such as of.windows.tumbling(60.0), got "
                f"{type(assigner).__name__}")
        self._flow, self._node, self._key, self._assigner = flow, node, key, assigner
        self._trigger: Trigger | None = None
        self._lateness = 0.0
        self._late: OutputTag | None = None

    def trigger(self, trigger: Trigger) -> WindowedStream:
        """When windows fire (replaces the assigner's default trigger)."""
        if not isinstance(trigger, Trigger):
            raise ConfigurationError(
                "trigger() takes an of.windows trigger such as of.windows.CountTrigger(100), "
                f"got {type(trigger).__name__}")
        self._trigger = trigger
        return self

    def allowed_lateness(self, seconds: float) -> WindowedStream:
        """Keep a window's state ``seconds`` after it fired: records arriving in that time
        update it and it fires again with the new result (a late firing)."""
        self._lateness = seconds
        return self

    def side_output_late_data(self, tag: OutputTag) -> WindowedStream:
        """Send records too late for all their windows to ``tag`` (read with
        ``result.side_output(tag)``) instead of counting them as dropped."""
        if not isinstance(tag, OutputTag):
            raise ConfigurationError(
                f"side_output_late_data() takes an of.OutputTag, got {type(tag).__name__}")
        self._late = tag
        return self

    # --- the window function -------------------------------------------------------------
    def aggregate(self, agg: AggregateFunction, process: Callable[[Any, Any, Any], Any] | None
                  = None, *, name: str | None = None, parallelism: int | None = None,
                  uid: str | None = None) -> Any:
        """One accumulator per window from ``agg`` (e.g. ``of.agg.count()``)."""
        if not isinstance(agg, AggregateFunction):
            raise ConfigurationError(
                "aggregate() takes an of.agg.AggregateFunction (e.g. of.agg.count()), got "
                f"{type(agg).__name__}")
        if process is not None and not callable(process):
            raise ConfigurationError(
                f"aggregate(process=...) takes a function (key, window, result), got "
                f"{type(process).__name__}")
        return self._finish("aggregate", agg, process, name, parallelism, uid)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None,
               parallelism: int | None = None, uid: str | None = None) -> Any:
        """Fold the window's records with ``fn(a, b)``; the value is the folded record."""
        if not callable(fn):
            raise ConfigurationError(f"reduce() takes a function, got {type(fn).__name__}")
        return self._finish("reduce", fn, None, name, parallelism, uid)

    def process(self, fn: Callable[[Any, Any, list[Any]], Any], *, name: str | None = None,
                parallelism: int | None = None, uid: str | None = None) -> Any:
        """``fn(key, window, elements)`` over all the window's records; its return value
        is the window's value (None: no result)."""
        if not callable(fn):
            raise ConfigurationError(
                f"process() takes a function (key, window, elements), got {type(fn).__name__}")
        return self._finish("process", fn, None, name, parallelism, uid)

    def _finish(self, function: str, fn: Any, post: Any, name: str | None,
                parallelism: int | None, uid: str | None) -> Any:
        from onceflow.api.flow import DataStream

        plan = self._flow._plan
        kind = Kind.WINDOW if self._key is not None else Kind.WINDOW_ALL
        if kind is Kind.WINDOW_ALL:
            if parallelism not in (None, 1):
                raise ConfigurationError(
                    f"window_all(): runs as one subtask, parallelism={parallelism!r} is not "
                    "possible (use key_by(...).window(...) to spread windows over subtasks)")
            parallelism = 1
        op_name = name or f"{kind.value}-{len(plan.nodes)}"
        spec = self._spec(op_name, function, fn, post)
        key = self._key if self._key is not None else all_key
        node = plan.add(kind, op_name, uid, parallelism, spec,
                        [Edge(self._node.id, Partitioning.KEY, key)])
        if spec.assigner.time == EVENT or spec.trigger.domain == EVENT:
            spec.untimed_sources = require_timestamps(
                plan, self._node, f"window operator {op_name!r} is an event-time window",
                ", or use time='processing'")
        return DataStream(self._flow, node)

    def _spec(self, op: str, function: str, fn: Any, post: Any) -> WindowSpec:
        a = self._assigner
        a.validate(op)
        trigger = self._trigger or a.default_trigger()
        if trigger is None:
            raise ConfigurationError(
                f"window operator {op!r}: {a!r} windows never fire by themselves: give "
                ".trigger(...) (e.g. of.windows.CountTrigger(100) or "
                "of.windows.ContinuousProcessingTimeTrigger(10.0))")
        trigger.validate(op)
        lat = self._lateness
        if isinstance(lat, bool) or not isinstance(lat, int | float) or math.isnan(lat) \
                or lat < 0 or math.isinf(lat):
            raise ConfigurationError(
                f"window operator {op!r}: allowed_lateness({lat!r}): lateness must be a "
                "number of seconds >= 0")
        if lat and a.time != EVENT:
            raise ConfigurationError(
                f"window operator {op!r}: allowed_lateness({lat!r}) applies to event-time "
                f"windows; {a!r} windows have no late records")
        if a.merging and trigger.every is not None:
            raise ConfigurationError(
                f"window operator {op!r}: session windows fire on time, not on counts; "
                f"{trigger!r} is not supported with {a!r}")
        if a.time == PROCESSING and self._late is not None:
            raise ConfigurationError(
                f"window operator {op!r}: side_output_late_data() applies to event-time "
                f"windows; {a!r} windows have no late records")
        return WindowSpec(a, trigger, float(lat), self._late.name if self._late else None,
                          function, fn, post)


def require_timestamps(plan: Any, node: Node, needs: str,
                       otherwise: str = "") -> tuple[str, ...]:
    """An event-time operator (a window, an interval join) needs timestamps: some path
    from a source to ``node`` (the operator's input) must have a WatermarkStrategy
    (``watermarks=`` on the source or ``assign_timestamps_and_watermarks``), else the
    ConfigurationError ``needs`` (what needs them, e.g. "window operator 'w' is an
    event-time window") plus ``otherwise`` (a way out without event time). Returns the
    sources of the paths that have none (a union or connect with an input without
    timestamps; its records fail the operator at run time, and the error names these
    sources)."""
    seen: set[int] = set()
    stack = [node]
    timed = False
    untimed: list[str] = []
    while stack:
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.kind is Kind.ASSIGN or (n.kind is Kind.SOURCE and n.watermarks is not None):
            timed = True
            continue
        if n.kind in (Kind.WINDOW, Kind.WINDOW_ALL) and n.fn.assigner.time == EVENT:
            timed = True  # results of an event-time window carry timestamps
            continue
        if n.kind is Kind.SOURCE:
            untimed.append(n.name)
        stack.extend(plan.nodes[e.source] for e in n.inputs)
    if timed:
        return tuple(sorted(untimed))
    raise ConfigurationError(
        f"{needs} but its input has no timestamps: "
        "add watermarks= to the source (flow.source(src, watermarks=of.WatermarkStrategy."
        "bounded_out_of_orderness(5.0).with_timestamps(lambda e: e['ts']))) or "
        f"assign_timestamps_and_watermarks(...) before it{otherwise}")
