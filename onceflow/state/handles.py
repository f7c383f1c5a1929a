"""State handles: what a keyed function sees. Each is scoped to the current key.

The handles read and write one table of the keyed backend; the operator sets the current
key before calling user code, so a handle never needs a key argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class _KeyScope:
    """Holds the current key for all handles of one keyed operator."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key: Any = None


class ValueState(Generic[T]):
    """One value per key. ``value()`` returns ``default`` until ``update`` is called."""

    __slots__ = ("_default", "_dirty", "_scope", "_table")

    def __init__(self, table: dict[Any, T], scope: _KeyScope, default: T | None,
                 dirty: set[Any] | None = None) -> None:
        self._table, self._scope, self._default = table, scope, default
        self._dirty = dirty  # keys changed since the last snapshot (changelog mode)

    def value(self) -> T | None:
        return self._table.get(self._scope.key, self._default)

    def update(self, value: T) -> None:
        self._table[self._scope.key] = value
        if self._dirty is not None:
            self._dirty.add(self._scope.key)

    def clear(self) -> None:
        self._table.pop(self._scope.key, None)
        if self._dirty is not None:
            self._dirty.add(self._scope.key)


class ListState(Generic[T]):
    """A list per key."""

    __slots__ = ("_dirty", "_scope", "_table")

    def __init__(self, table: dict[Any, list[T]], scope: _KeyScope,
                 dirty: set[Any] | None = None) -> None:
        self._table, self._scope, self._dirty = table, scope, dirty

    def _touch(self) -> None:
        if self._dirty is not None:
            self._dirty.add(self._scope.key)

    def get(self) -> list[T]:
        return list(self._table.get(self._scope.key, ()))

    def __iter__(self) -> Iterator[T]:
        return iter(self.get())

    def add(self, value: T) -> None:
        self._table.setdefault(self._scope.key, []).append(value)
        self._touch()

    def add_all(self, values: Iterable[T]) -> None:
        self._table.setdefault(self._scope.key, []).extend(values)
        self._touch()

    def update(self, values: Iterable[T]) -> None:
        self._table[self._scope.key] = list(values)
        self._touch()

    def clear(self) -> None:
        self._table.pop(self._scope.key, None)
        self._touch()


class MapState(Generic[K, V]):
    """A dictionary per key."""

    __slots__ = ("_dirty", "_scope", "_table")

    def __init__(self, table: dict[Any, dict[K, V]], scope: _KeyScope,
                 dirty: set[Any] | None = None) -> None:
        self._table, self._scope, self._dirty = table, scope, dirty

    def _touch(self) -> None:
        if self._dirty is not None:
            self._dirty.add(self._scope.key)

    def _map(self) -> dict[K, V]:
        return self._table.get(self._scope.key) or {}

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._map().get(key, default)

    def put(self, key: K, value: V) -> None:
        self._table.setdefault(self._scope.key, {})[key] = value
        self._touch()

    def put_all(self, items: dict[K, V]) -> None:
        self._table.setdefault(self._scope.key, {}).update(items)
        self._touch()

    def remove(self, key: K) -> None:
        m = self._table.get(self._scope.key)
        if m is not None:
            m.pop(key, None)
            if not m:
                del self._table[self._scope.key]
            self._touch()

    def contains(self, key: K) -> bool:
        return key in self._map()

    def keys(self) -> list[K]:
        return list(self._map().keys())

    def values(self) -> list[V]:
        return list(self._map().values())

    def items(self) -> list[tuple[K, V]]:
        return list(self._map().items())

    def is_empty(self) -> bool:
        return not self._map()

    def clear(self) -> None:
        self._table.pop(self._scope.key, None)
        self._touch()
