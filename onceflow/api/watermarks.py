"""Event time: timestamps and watermarks.

**Time unit.** Event time in onceflow is **seconds as a float** everywhere: timestamps,
watermarks, window sizes, lateness, idleness, timers. A timestamp function may return an
``int``/``float`` (seconds, e.g. ``time.time()`` style) or a :class:`datetime.datetime`
(converted with ``.timestamp()``; a naive datetime is taken as UTC).

**Watermark.** A watermark ``W`` on a stream says: no record with a timestamp below ``W``
follows. A record whose timestamp is below the watermark already emitted is *late*.

A :class:`WatermarkStrategy` says how to take a record's timestamp and how to generate
watermarks. Give it where a stream starts, ``flow.source(src, watermarks=strategy)`` (then
watermarks are generated **per split** — per Kafka partition, per file — and the source
subtask emits the minimum over its splits), or later with
``stream.assign_timestamps_and_watermarks(strategy)`` (one generator per subtask).

Example::

    >>> import onceflow as of
    >>> ws = (of.WatermarkStrategy.bounded_out_of_orderness(5.0)
    ...         .with_timestamps(lambda e: e["ts"])
    ...         .with_idleness(10.0))
    >>> ws.max_out_of_orderness
    5.0
"""

from __future__ import annotations

import datetime as _dt
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from onceflow.errors import ConfigurationError

NO_WATERMARK = -math.inf
END_OF_TIME = math.inf


class WatermarkGenerator(ABC):
    """Generates the watermarks of one split (or one subtask).

    ``on_event`` sees every record with its timestamp and may return a watermark to emit
    at once (punctuated watermarks); ``on_periodic_emit`` is called after every batch and
    at least every ``emit_interval`` seconds and returns the current watermark (or None).
    Watermarks never go backwards: a lower value than one already emitted is ignored.

    ``snapshot()`` / ``restore(state)``: the generator's progress, kept in the checkpoint
    so a restored job continues its watermarks where the checkpoint left them."""

    def on_event(self, record: Any, timestamp: float) -> float | None:
        return None

    def on_events(self, records: list[Any], timestamps: list[float]) -> float | None:
        """A batch at a time (built-in generators override this; the default calls
        ``on_event`` for each record)."""
        best: float | None = None
        for r, t in zip(records, timestamps, strict=True):
            w = self.on_event(r, t)
            if w is not None and (best is None or w > best):
                best = w
        return best

    @abstractmethod
    def on_periodic_emit(self) -> float | None: ...

    def snapshot(self) -> Any:
        return None

    def restore(self, state: Any) -> None:  # noqa: B027 - optional hook
        pass


class BoundedOutOfOrderness(WatermarkGenerator):
    """Watermark = highest timestamp seen - ``bound``: records may arrive up to ``bound``
    seconds out of order without being late."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.max_ts = NO_WATERMARK

    def on_event(self, record: Any, timestamp: float) -> float | None:
        if timestamp > self.max_ts:
            self.max_ts = timestamp
        return None

    def on_events(self, records: list[Any], timestamps: list[float]) -> float | None:
        if timestamps:
            m = max(timestamps)
            if m > self.max_ts:
                self.max_ts = m
        return None

    def on_periodic_emit(self) -> float | None:
        return None if self.max_ts == NO_WATERMARK else self.max_ts - self.bound

    def snapshot(self) -> Any:
        return self.max_ts

    def restore(self, state: Any) -> None:
        if isinstance(state, int | float):
            self.max_ts = float(state)


def to_seconds(v: Any) -> float:
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=_dt.UTC)
        return v.timestamp()
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise TypeError(
        f"a timestamp must be seconds as int/float or a datetime, got {type(v).__name__} "
        f"({v!r})")


def timestamps_of(fn: Callable[[Any], Any], records: list[Any]) -> list[float]:
    """``fn`` over a batch, converted to float seconds. Raises TypeError/ValueError for a
    bad value (the caller names the operator and record)."""
    out = list(map(fn, records))
    if list(map(type, out)).count(float) == len(out):  # all floats (no set: cheaper)
        total = sum(out)
        if total - total == 0.0:
            return out  # all finite floats already (checked at C speed)
    for i, v in enumerate(out):
        f = v if type(v) is float else to_seconds(v)
        if not math.isfinite(f):  # NaN or infinite: no window, timer or watermark can hold it
            raise ValueError(f"timestamp of record {records[i]!r} is {f}: it must be a "
                             "finite number of seconds")
        out[i] = f
    return out


@dataclass(frozen=True)
class WatermarkStrategy:
    """How a stream gets timestamps and watermarks.

    Build one with :meth:`bounded_out_of_orderness`, :meth:`monotonous_timestamps`,
    :meth:`for_generator` or :meth:`no_watermarks`, then chain :meth:`with_timestamps`,
    :meth:`with_idleness` and :meth:`with_alignment`."""

    generator_factory: Callable[[], WatermarkGenerator]
    timestamp_fn: Callable[[Any], Any] | None = None
    idleness: float | None = None
    alignment_group: str | None = None
    max_drift: float | None = None
    emit_interval: float = 0.2
    max_out_of_orderness: float | None = None

    # --- constructors --------------------------------------------------------------------
    @staticmethod
    def bounded_out_of_orderness(max_out_of_orderness: float) -> WatermarkStrategy:
        """Records may be up to ``max_out_of_orderness`` seconds out of order."""
        b = max_out_of_orderness
        if isinstance(b, bool) or not isinstance(b, int | float) or not b >= 0:
            raise ConfigurationError(
                f"WatermarkStrategy.bounded_out_of_orderness({b!r}): the bound must be a "
                "number of seconds >= 0")
        bound = float(b)
        return WatermarkStrategy(lambda: BoundedOutOfOrderness(bound),
                                 max_out_of_orderness=bound)

    @staticmethod
    def monotonous_timestamps() -> WatermarkStrategy:
        """Timestamps never decrease within a split: watermark = highest timestamp seen."""
        return WatermarkStrategy(lambda: BoundedOutOfOrderness(0.0), max_out_of_orderness=0.0)

    # Flink's spelling
    for_monotonous_timestamps = monotonous_timestamps
    for_bounded_out_of_orderness = bounded_out_of_orderness

    @staticmethod
    def for_generator(factory: Callable[[], WatermarkGenerator]) -> WatermarkStrategy:
        """A custom :class:`WatermarkGenerator` (``factory()`` makes one per split)."""
        if not callable(factory):
            raise ConfigurationError(
                "WatermarkStrategy.for_generator() takes a function returning a "
                f"WatermarkGenerator, got {type(factory).__name__}")
        return WatermarkStrategy(factory)

    @staticmethod
    def no_watermarks() -> WatermarkStrategy:
        """Timestamps only; the stream's watermark stays at minus infinity until the input
        ends."""
        return WatermarkStrategy(_NoWatermarks)

    # --- options -------------------------------------------------------------------------
    def with_timestamps(self, fn: Callable[[Any], Any]) -> WatermarkStrategy:
        """``fn(record)`` is the record's event time (seconds, or a datetime)."""
        if not callable(fn):
            raise ConfigurationError(
                f"WatermarkStrategy.with_timestamps() takes a function, got {type(fn).__name__}")
        return replace(self, timestamp_fn=fn)

    with_timestamp_assigner = with_timestamps

    def with_idleness(self, seconds: float) -> WatermarkStrategy:
        """A split (or source subtask) without records for ``seconds`` of processing time
        is idle: left out of the watermark minimum until it has records again."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise ConfigurationError(
                f"WatermarkStrategy.with_idleness({seconds!r}): must be a number of seconds > 0")
        return replace(self, idleness=float(seconds))

    def with_alignment(self, group: str, max_drift: float) -> WatermarkStrategy:
        """Pause reading a split whose watermark is more than ``max_drift`` seconds ahead of
        the lowest watermark of its ``group`` (all sources and subtasks using this group
        name), so a backlog on one input does not fill window state without bound."""
        if not isinstance(group, str) or not group:
            raise ConfigurationError("WatermarkStrategy.with_alignment(): group must be a "
                                     "non-empty string")
        if isinstance(max_drift, bool) or not isinstance(max_drift, int | float) \
                or not max_drift > 0:
            raise ConfigurationError(
                f"WatermarkStrategy.with_alignment(max_drift={max_drift!r}): must be a number "
                "of seconds > 0")
        return replace(self, alignment_group=group, max_drift=float(max_drift))

    def with_emit_interval(self, seconds: float) -> WatermarkStrategy:
        """How often periodic watermarks are emitted when no records arrive (default 0.2 s;
        watermarks are also emitted after every batch)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise ConfigurationError(
                f"WatermarkStrategy.with_emit_interval({seconds!r}): must be seconds > 0")
        return replace(self, emit_interval=float(seconds))

    def validate(self, where: str) -> None:
        if self.timestamp_fn is None:
            raise ConfigurationError(
                f"{where}: the WatermarkStrategy has no timestamp function; add "
                ".with_timestamps(lambda record: <event time in seconds>)")


class _NoWatermarks(WatermarkGenerator):
    def on_periodic_emit(self) -> float | None:
        return None


__all__ = [
    "BoundedOutOfOrderness",
    "WatermarkGenerator",
    "WatermarkStrategy",
    "timestamps_of",
    "to_seconds",
]
