"""Window assigners and triggers: ``key_by(...).window(of.windows.tumbling(60.0))``.

Time is float seconds. A window is ``[start, end)``; a record at ``t`` belongs to it when
``start <= t < end``. Windows are event-time by default (the records' timestamps from the
stream's :class:`~onceflow.WatermarkStrategy`); pass ``time="processing"`` to the time
assigners for processing-time windows (the wall clock when the record reaches the window).

Assigners:

* ``tumbling(size, offset=0.0)``: fixed, non-overlapping windows ``[k*size + offset, ...)``;
  ``-size < offset < size``.
* ``sliding(size, slide, offset=0.0)``: windows of ``size`` starting every ``slide``
  (``slide <= size``, ``-slide < offset < slide``); a record is in ``ceil(size / slide)``
  of them.
* ``session(gap)``: a window per burst of activity of a key; it closes after ``gap`` seconds
  without records. ``gap`` may be a function of the record (a dynamic gap). A record at
  ``t`` opens ``[t, t + gap)``; windows that overlap or touch merge.
* ``global_()``: one window per key that never ends; give it a trigger.
* ``count(n)``: a window per ``n`` records of a key (a global window with
  ``PurgingTrigger(CountTrigger(n))``). Fewer than ``n`` left at the end of input do not
  fire.

Triggers (``.trigger(...)`` on the windowed stream; the default is the assigner's):
``EventTimeTrigger()`` fires when the watermark reaches the window's end;
``ProcessingTimeTrigger()`` when the wall clock does; ``CountTrigger(n)`` every ``n``
records; ``ContinuousEventTimeTrigger(interval)`` / ``ContinuousProcessingTimeTrigger(
interval)`` fire early, about every ``interval`` seconds while the window is open, and at
its end; ``PurgingTrigger(t)`` fires like ``t`` and then empties the window.

Global and count windows report ``window_start = -inf`` and ``window_end = inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from onceflow.errors import ConfigurationError

__all__ = [
    "ContinuousEventTimeTrigger",
    "ContinuousProcessingTimeTrigger",
    "CountTrigger",
    "EventTimeTrigger",
    "ProcessingTimeTrigger",
    "PurgingTrigger",
    "Trigger",
    "Window",
    "WindowAssigner",
    "count",
    "global_",
    "session",
    "sliding",
    "tumbling",
]

EVENT = "event"
PROCESSING = "processing"


class Window(NamedTuple):
    """A window ``[start, end)`` in seconds."""

    start: float
    end: float


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def _time(time: Any, where: str) -> str:
    if time not in (EVENT, PROCESSING):
        raise ConfigurationError(
            f"{where}: time must be 'event' or 'processing', got {time!r}")
    return str(time)


class WindowAssigner:
    """Which windows a record belongs to (configuration only; the runtime assigns)."""

    kind = ""
    time: str | None = EVENT  # None: no time of its own (global, count)
    merging = False

    def validate(self, where: str) -> None:
        """Raise a ConfigurationError naming ``where`` (the window operator) and the setting."""

    def default_trigger(self) -> Trigger | None:
        return ProcessingTimeTrigger() if self.time == PROCESSING else EventTimeTrigger()

    def _positive(self, where: str, name: str, v: Any, call: str) -> None:
        if not _number(v) or v <= 0 or math.isinf(v):
            raise ConfigurationError(
                f"window operator {where!r}: {call}: {name} must be a number of seconds > 0, "
                f"got {v!r}")

    def _offset(self, where: str, call: str, offset: Any, period: float, of: str) -> float:
        """``offset`` as a float, refused unless ``-period < offset < period`` (``period``:
        the ``of`` setting, already checked > 0): an offset a whole period or more away
        gives the same windows as one inside, so writing it is a mistake to point out."""
        if not _number(offset) or math.isinf(offset):
            raise ConfigurationError(
                f"window operator {where!r}: {call}: offset must be a number of seconds, "
                f"got {offset!r}")
        if abs(offset) >= period:
            same = math.fmod(offset, period) or 0.0  # -0.0 -> 0.0
            raise ConfigurationError(
                f"window operator {where!r}: {call}: offset must be in ({-period!r}, "
                f"{period!r}) (strictly inside the {of}), got {offset!r} (use offset="
                f"{same!r}: the same windows)")
        return float(offset)


class _Tumbling(WindowAssigner):
    kind = "tumbling"

    def __init__(self, size: float, offset: float, time: str) -> None:
        self.size, self.offset = size, offset
        self.time = _time(time, f"of.windows.tumbling({size!r})")

    def validate(self, where: str) -> None:
        call = f"of.windows.tumbling(size={self.size!r}, offset={self.offset!r})"
        self._positive(where, "size", self.size, call)
        self.offset = self._offset(where, call, self.offset, float(self.size), "size")
        self.size = float(self.size)

    def __repr__(self) -> str:
        return f"of.windows.tumbling({self.size!r}, offset={self.offset!r}, time={self.time!r})"


class _Sliding(WindowAssigner):
    kind = "sliding"

    def __init__(self, size: float, slide: float, offset: float, time: str) -> None:
        self.size, self.slide, self.offset = size, slide, offset
        self.time = _time(time, f"of.windows.sliding({size!r}, {slide!r})")

    def validate(self, where: str) -> None:
        call = (f"of.windows.sliding(size={self.size!r}, slide={self.slide!r}, "
                f"offset={self.offset!r})")
        self._positive(where, "size", self.size, call)
        self._positive(where, "slide", self.slide, call)
        if self.slide > self.size:
            raise ConfigurationError(
                f"window operator {where!r}: {call}: slide must be <= size (a slide larger "
                "than the window would leave records in no window)")
        self.offset = self._offset(where, call, self.offset, float(self.slide), "slide")
        self.size, self.slide = float(self.size), float(self.slide)

    def __repr__(self) -> str:
        return (f"of.windows.sliding({self.size!r}, {self.slide!r}, offset={self.offset!r}, "
                f"time={self.time!r})")


class _Session(WindowAssigner):
    kind = "session"
    merging = True

    def __init__(self, gap: float | Callable[[Any], float], time: str) -> None:
        self.gap = gap
        self.time = _time(time, "of.windows.session(...)")

    def validate(self, where: str) -> None:
        if callable(self.gap):
            return  # a dynamic gap is checked for each record
        self._positive(where, "gap", self.gap, f"of.windows.session(gap={self.gap!r})")
        self.gap = float(self.gap)

    def __repr__(self) -> str:
        return f"of.windows.session({self.gap!r}, time={self.time!r})"


class _Global(WindowAssigner):
    kind = "global"
    time = None

    def default_trigger(self) -> Trigger | None:
        return None  # a global window never fires by itself

    def __repr__(self) -> str:
        return "of.windows.global_()"


class _Count(_Global):
    kind = "count"

    def __init__(self, n: int) -> None:
        self.n = n

    def validate(self, where: str) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ConfigurationError(
                f"window operator {where!r}: of.windows.count(n={self.n!r}): n must be an "
                "integer >= 1")

    def default_trigger(self) -> Trigger | None:
        return PurgingTrigger(CountTrigger(self.n))

    def __repr__(self) -> str:
        return f"of.windows.count({self.n!r})"


def tumbling(size: float, offset: float = 0.0, *, time: str = EVENT) -> WindowAssigner:
    """Fixed windows of ``size`` seconds, ``[k*size + offset, (k+1)*size + offset)``, with
    ``-size < offset < size`` (e.g. ``tumbling(86400.0, offset=-3600.0)`` for days that
    start at 23:00 UTC)."""
    return _Tumbling(size, offset, time)


def sliding(size: float, slide: float, offset: float = 0.0, *,
            time: str = EVENT) -> WindowAssigner:
    """Windows of ``size`` seconds starting every ``slide`` seconds at ``k*slide + offset``
    (``slide <= size``, ``-slide < offset < slide``)."""
    return _Sliding(size, slide, offset, time)


def session(gap: float | Callable[[Any], float], *, time: str = EVENT) -> WindowAssigner:
    """Session windows closing after ``gap`` seconds without records of the key; ``gap``
    may be a function of the record returning seconds (a dynamic gap)."""
    return _Session(gap, time)


def global_() -> WindowAssigner:
    """One window per key for the whole stream; needs ``.trigger(...)``."""
    return _Global()


def count(n: int) -> WindowAssigner:
    """Windows of ``n`` records per key."""
    return _Count(n)


class Trigger:
    """When a window fires (configuration; the window operator implements them).

    ``domain``: fire at the window's end in this time ("event"/"processing") or never
    (None); ``every``: fire every that many records; ``interval``: fire early about every
    that many seconds (in ``domain`` time); ``purge``: empty the window after a firing."""

    domain: str | None = None
    every: int | None = None
    interval: float | None = None
    purge = False

    def validate(self, where: str) -> None:
        if self.every is not None and (not isinstance(self.every, int) or
                                       isinstance(self.every, bool) or self.every < 1):
            raise ConfigurationError(
                f"window operator {where!r}: CountTrigger(n={self.every!r}): n must be an "
                "integer >= 1")
        if self.interval is not None and (not _number(self.interval) or self.interval <= 0
                                          or math.isinf(self.interval)):
            raise ConfigurationError(
                f"window operator {where!r}: {type(self).__name__}(interval="
                f"{self.interval!r}): interval must be a number of seconds > 0")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(domain={self.domain!r}, every={self.every!r}, "
                f"interval={self.interval!r}, purge={self.purge!r})")


class EventTimeTrigger(Trigger):
    """Fire when the watermark reaches the window's end (the event-time default)."""

    domain = EVENT


class ProcessingTimeTrigger(Trigger):
    """Fire when the wall clock reaches the window's end (the processing-time default)."""

    domain = PROCESSING


class CountTrigger(Trigger):
    """Fire every ``n`` records added to the window."""

    def __init__(self, n: int) -> None:
        self.every = n


class ContinuousEventTimeTrigger(Trigger):
    """Fire early as the watermark passes every ``interval`` seconds, and at the end."""

    domain = EVENT

    def __init__(self, interval: float) -> None:
        self.interval = interval


class ContinuousProcessingTimeTrigger(Trigger):
    """Fire early every ``interval`` seconds of wall-clock time, and at the end."""

    domain = PROCESSING

    def __init__(self, interval: float) -> None:
        self.interval = interval


class PurgingTrigger(Trigger):
    """Fire like ``inner``, then empty the window (the next firing sees only new records)."""

    def __init__(self, inner: Trigger) -> None:
        if not isinstance(inner, Trigger):
            raise ConfigurationError(
                f"PurgingTrigger() takes a trigger, got {type(inner).__name__}")
        self.domain, self.every, self.interval = inner.domain, inner.every, inner.interval
        self.purge = True
