"""User function base classes for keyed processing.

Example::

    class CountWithTimeout(of.KeyedProcessFunction):
        def open(self, ctx):
            self.count = ctx.value_state("count", default=0)

        def process_element(self, value, ctx):
            self.count.update(self.count.value() + 1)
            ctx.timer_service.register_processing_time_timer(
                ctx.timer_service.current_processing_time() + 60)
            return [(ctx.current_key, self.count.value())]

        def on_timer(self, timestamp, ctx):
            self.count.clear()

State handles are scoped to the key of the record (or timer) being processed. Times are
seconds as floats: processing time is ``time.time()``; event time is what the stream's
:class:`~onceflow.WatermarkStrategy` took from the records. An event-time timer at ``t``
fires once the operator's watermark reaches ``t``; ``ctx.timestamp`` is the event time of
the record (or of the timer) being processed; ``ctx.output(tag, value)`` sends a value to
the side output ``tag`` (``stream.side_output(tag)`` reads it).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class TimeDomain(enum.Enum):
    """Which clock a timer belongs to (``ctx.time_domain`` in ``on_timer``)."""

    EVENT_TIME = "event_time"
    PROCESSING_TIME = "processing_time"


@dataclass(frozen=True)
class OutputTag:
    """Names a side output: ``ctx.output(tag, value)`` in a process function, late records
    of a window with ``side_output_late_data(tag)``; ``stream.side_output(tag)`` is the
    stream of those values. Tags are equal when their names are."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            from onceflow.errors import ConfigurationError

            raise ConfigurationError(
                f"OutputTag(name) takes a non-empty string, got {self.name!r}")


class TimerService(ABC):
    @abstractmethod
    def current_processing_time(self) -> float: ...

    @abstractmethod
    def register_processing_time_timer(self, timestamp: float) -> None:
        """Call ``on_timer(timestamp, ctx)`` for the current key once the clock passes
        ``timestamp``. Registering the same time twice for a key fires once."""

    @abstractmethod
    def delete_processing_time_timer(self, timestamp: float) -> None: ...

    @abstractmethod
    def current_watermark(self) -> float:
        """The operator's current event time (minus infinity before the first watermark)."""

    @abstractmethod
    def register_event_time_timer(self, timestamp: float) -> None:
        """Call ``on_timer(timestamp, ctx)`` for the current key once the watermark reaches
        ``timestamp``. Registering the same time twice for a key fires once."""

    @abstractmethod
    def delete_event_time_timer(self, timestamp: float) -> None: ...


class RuntimeContext(ABC):
    """Given to ``open``: where the function runs, and its keyed state."""

    @property
    @abstractmethod
    def subtask_index(self) -> int: ...

    @property
    @abstractmethod
    def parallelism(self) -> int: ...

    @abstractmethod
    def value_state(self, name: str, default: Any = None, ttl: Any = None) -> Any:
        """A :class:`~onceflow.state.ValueState` named ``name``. ``ttl``: seconds (or an
        ``of.StateTtl``) after which a written value expires (see onceflow/state/ttl.py;
        processing time by default)."""

    @abstractmethod
    def list_state(self, name: str, ttl: Any = None) -> Any:
        """A :class:`~onceflow.state.ListState` named ``name`` (``ttl``: per element)."""

    @abstractmethod
    def map_state(self, name: str, ttl: Any = None) -> Any:
        """A :class:`~onceflow.state.MapState` named ``name`` (``ttl``: per entry)."""


class ProcessContext(RuntimeContext):
    """Given to ``process_element`` and ``on_timer``."""

    @property
    @abstractmethod
    def current_key(self) -> Any: ...

    @property
    @abstractmethod
    def timer_service(self) -> TimerService: ...

    @property
    @abstractmethod
    def timestamp(self) -> float | None:
        """Event time of the record being processed, or of the firing event-time timer;
        None when the stream has no timestamps."""

    @property
    @abstractmethod
    def time_domain(self) -> TimeDomain | None:
        """In ``on_timer``: which kind of timer fired. None in ``process_element``."""

    @abstractmethod
    def output(self, tag: OutputTag, value: Any) -> None:
        """Send ``value`` to the side output ``tag``."""


class KeyedProcessFunction(ABC):
    """A function over a keyed stream with keyed state, timers and side outputs.

    ``process_element`` and ``on_timer`` return an iterable of output records (or ``None``).
    Processing-time timers still pending when a bounded input ends do not fire; event-time
    timers do (the end of input is a watermark of +infinity)."""

    def open(self, ctx: RuntimeContext) -> None:  # noqa: B027 - optional hook
        """Called once per subtask before any record; create state handles here."""

    @abstractmethod
    def process_element(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None: ...

    def on_timer(self, timestamp: float, ctx: ProcessContext) -> Iterable[Any] | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the subtask ends normally."""
