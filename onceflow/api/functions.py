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
seconds since the epoch (``time.time()``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any


class TimerService(ABC):
    @abstractmethod
    def current_processing_time(self) -> float: ...

    @abstractmethod
    def register_processing_time_timer(self, timestamp: float) -> None:
        """Call ``on_timer(timestamp, ctx)`` for the current key once the clock passes
        ``timestamp``. Registering the same time twice for a key fires once."""

    @abstractmethod
    def delete_processing_time_timer(self, timestamp: float) -> None: ...


class RuntimeContext(ABC):
    """Given to ``open``: where the function runs, and its keyed state."""

    @property
    @abstractmethod
    def subtask_index(self) -> int: ...

    @property
    @abstractmethod
    def parallelism(self) -> int: ...

    @abstractmethod
    def value_state(self, name: str, default: Any = None) -> Any:
        """A :class:`~onceflow.state.ValueState` named ``name``."""

    @abstractmethod
    def list_state(self, name: str) -> Any:
        """A :class:`~onceflow.state.ListState` named ``name``."""

    @abstractmethod
    def map_state(self, name: str) -> Any:
        """A :class:`~onceflow.state.MapState` named ``name``."""


class ProcessContext(RuntimeContext):
    """Given to ``process_element`` and ``on_timer``."""

    @property
    @abstractmethod
    def current_key(self) -> Any: ...

    @property
    @abstractmethod
    def timer_service(self) -> TimerService: ...


class KeyedProcessFunction(ABC):
    """A function over a keyed stream with keyed state and processing-time timers.

    ``process_element`` and ``on_timer`` return an iterable of output records (or ``None``).
    Processing-time timers still pending when a bounded input ends do not fire."""

    def open(self, ctx: RuntimeContext) -> None:  # noqa: B027 - optional hook
        """Called once per subtask before any record; create state handles here."""

    @abstractmethod
    def process_element(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None: ...

    def on_timer(self, timestamp: float, ctx: ProcessContext) -> Iterable[Any] | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the subtask ends normally."""
