"""Aggregate functions for windows: ``window(...).aggregate(of.agg.count())``.

An :class:`AggregateFunction` keeps one *accumulator* per window (not every element): the
window operator creates it with ``create_accumulator()``, folds records in with ``add``,
combines two accumulators with ``merge`` (session windows merge; so do sliding panes) and
turns the accumulator into the window's value with ``get_result``. Accumulators are stored
in the state backend and checkpointed, so they must be picklable; treat them as values
(return the new accumulator from ``add``/``merge``, do not rely on in-place changes).

``add_all(records, acc)`` folds a whole group of records of one window at once; the
default calls ``add`` for each. The built-ins override it with C-speed folds, which is most
of why a windowed count costs little more than a running count.

Built-ins (``value`` is an optional function of the record, default: the record itself):
``count()``, ``sum(value)``, ``min(value)``, ``max(value)``, ``mean(value)``,
``count_distinct(value)``. ``min``/``max``/``mean`` of an empty window do not happen: a
window exists only once a record arrived.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from onceflow.errors import ConfigurationError

__all__ = ["AggregateFunction", "count", "count_distinct", "max", "mean", "min", "sum"]


class AggregateFunction(ABC):
    """One accumulator per window: create, add, merge, result."""

    @abstractmethod
    def create_accumulator(self) -> Any:
        """A new, empty accumulator."""

    @abstractmethod
    def add(self, value: Any, accumulator: Any) -> Any:
        """The accumulator with ``value`` added (return it)."""

    @abstractmethod
    def get_result(self, accumulator: Any) -> Any:
        """The window's value."""

    def merge(self, a: Any, b: Any) -> Any:
        """One accumulator holding both (needed by session windows and sliding panes)."""
        raise NotImplementedError(
            f"{type(self).__name__}.merge() is not implemented; session windows need it")

    def add_all(self, values: list[Any], accumulator: Any) -> Any:
        """``add`` for each value in turn (override with something faster if you can)."""
        add = self.add
        for v in values:
            accumulator = add(v, accumulator)
        return accumulator

    def merge_all(self, accumulators: list[Any]) -> Any:
        """``merge`` over a non-empty list (sliding windows merge their panes with it)."""
        it = iter(accumulators)
        acc = next(it)
        merge = self.merge
        for a in it:
            acc = merge(acc, a)
        return acc


def _value_fn(name: str, value: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    if value is not None and not callable(value):
        raise ConfigurationError(
            f"of.agg.{name}(value): value must be a function of the record, got "
            f"{type(value).__name__}")
    return value


class _Count(AggregateFunction):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: Any, accumulator: int) -> int:
        return accumulator + 1

    def add_all(self, values: list[Any], accumulator: int) -> int:
        return accumulator + len(values)

    def merge(self, a: int, b: int) -> int:
        return a + b

    def merge_all(self, accumulators: list[int]) -> int:
        return builtins.sum(accumulators)

    def get_result(self, accumulator: int) -> int:
        return accumulator

    def __repr__(self) -> str:
        return "of.agg.count()"


class _Sum(AggregateFunction):
    def __init__(self, value: Callable[[Any], Any] | None) -> None:
        self.value = _value_fn("sum", value)

    def create_accumulator(self) -> Any:
        return 0

    def add(self, value: Any, accumulator: Any) -> Any:
        return accumulator + (value if self.value is None else self.value(value))

    def add_all(self, values: list[Any], accumulator: Any) -> Any:
        f = self.value
        return accumulator + builtins.sum(values if f is None else map(f, values))

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def merge_all(self, accumulators: list[Any]) -> Any:
        return builtins.sum(accumulators)

    def get_result(self, accumulator: Any) -> Any:
        return accumulator


class _Extreme(AggregateFunction):
    """min or max; the accumulator is None until the first value."""

    def __init__(self, name: str, pick: Callable[..., Any],
                 value: Callable[[Any], Any] | None) -> None:
        self.name, self.pick, self.value = name, pick, _value_fn(name, value)

    def create_accumulator(self) -> Any:
        return None

    def add(self, value: Any, accumulator: Any) -> Any:
        v = value if self.value is None else self.value(value)
        return v if accumulator is None else self.pick(accumulator, v)

    def add_all(self, values: list[Any], accumulator: Any) -> Any:
        if not values:
            return accumulator
        f = self.value
        best = self.pick(values if f is None else map(f, values))
        return best if accumulator is None else self.pick(accumulator, best)

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        return a if b is None else self.pick(a, b)

    def merge_all(self, accumulators: list[Any]) -> Any:
        some = [a for a in accumulators if a is not None]
        return self.pick(some) if some else None

    def get_result(self, accumulator: Any) -> Any:
        return accumulator


class _Mean(AggregateFunction):
    """The accumulator is ``(sum, count)``."""

    def __init__(self, value: Callable[[Any], Any] | None) -> None:
        self.value = _value_fn("mean", value)

    def create_accumulator(self) -> tuple[Any, int]:
        return (0, 0)

    def add(self, value: Any, accumulator: tuple[Any, int]) -> tuple[Any, int]:
        v = value if self.value is None else self.value(value)
        return (accumulator[0] + v, accumulator[1] + 1)

    def add_all(self, values: list[Any], accumulator: tuple[Any, int]) -> tuple[Any, int]:
        f = self.value
        s = builtins.sum(values if f is None else map(f, values))
        return (accumulator[0] + s, accumulator[1] + len(values))

    def merge(self, a: tuple[Any, int], b: tuple[Any, int]) -> tuple[Any, int]:
        return (a[0] + b[0], a[1] + b[1])

    def get_result(self, accumulator: tuple[Any, int]) -> float | None:
        s, n = accumulator
        return s / n if n else None


class _CountDistinct(AggregateFunction):
    """Exact: the accumulator is the set of distinct values (a frozenset, a value)."""

    def __init__(self, value: Callable[[Any], Any] | None) -> None:
        self.value = _value_fn("count_distinct", value)

    def create_accumulator(self) -> frozenset[Any]:
        return frozenset()

    def add(self, value: Any, accumulator: frozenset[Any]) -> frozenset[Any]:
        return accumulator | {value if self.value is None else self.value(value)}

    def add_all(self, values: list[Any], accumulator: frozenset[Any]) -> frozenset[Any]:
        f = self.value
        return accumulator.union(values if f is None else map(f, values))

    def merge(self, a: frozenset[Any], b: frozenset[Any]) -> frozenset[Any]:
        return a | b

    def merge_all(self, accumulators: list[frozenset[Any]]) -> frozenset[Any]:
        return frozenset().union(*accumulators)

    def get_result(self, accumulator: frozenset[Any]) -> int:
        return len(accumulator)


def count() -> AggregateFunction:
    """The number of records in the window."""
    return _Count()


def sum(value: Callable[[Any], Any] | None = None) -> AggregateFunction:
    """The sum of ``value(record)`` (default: the records themselves)."""
    return _Sum(value)


def min(value: Callable[[Any], Any] | None = None) -> AggregateFunction:
    """The smallest ``value(record)``."""
    return _Extreme("min", builtins.min, value)


def max(value: Callable[[Any], Any] | None = None) -> AggregateFunction:
    """The largest ``value(record)``."""
    return _Extreme("max", builtins.max, value)


def mean(value: Callable[[Any], Any] | None = None) -> AggregateFunction:
    """The arithmetic mean of ``value(record)``."""
    return _Mean(value)


def count_distinct(value: Callable[[Any], Any] | None = None) -> AggregateFunction:
    """The number of distinct ``value(record)`` (exact; keeps the set per window)."""
    return _CountDistinct(value)
