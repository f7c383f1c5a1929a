"""The memory state backend (the default): keyed state in Python dictionaries.

Snapshot: the synchronous phase serializes every table (a consistent copy taken between two
records, so later updates cannot leak into it); writing the bytes happens asynchronously.
Each key's key group is recomputable from the key with the stable hash, so on restore a
subtask keeps exactly the keys of its key-group range, whatever the old parallelism was.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any

from onceflow.graph.keygroups import key_group
from onceflow.state.handles import ListState, MapState, ValueState, _KeyScope


@dataclass(frozen=True)
class MemoryBackend:
    """Configuration of the in-memory keyed state backend (light and picklable)."""

    def create(self, max_parallelism: int, kg_range: tuple[int, int]) -> KeyedStore:
        return KeyedStore(max_parallelism, kg_range)


class KeyedStore:
    """All keyed state and processing-time timers of one keyed operator subtask."""

    def __init__(self, max_parallelism: int, kg_range: tuple[int, int]) -> None:
        self.max_parallelism = max_parallelism
        self.kg_range = kg_range
        self.scope = _KeyScope()
        self.tables: dict[str, dict[Any, Any]] = {}
        self.kinds: dict[str, str] = {}
        self._timers: list[tuple[float, int, Any]] = []  # heap of (time, seq, key)
        self._timer_set: set[tuple[float, Any]] = set()
        self._seq = itertools.count()

    # --- handles -------------------------------------------------------------------------
    def _table(self, name: str, kind: str) -> dict[Any, Any]:
        have = self.kinds.setdefault(name, kind)
        if have != kind:
            from onceflow.errors import ConfigurationError

            raise ConfigurationError(
                f"state {name!r} is already registered as {have} state, not {kind}"
            )
        return self.tables.setdefault(name, {})

    def value_state(self, name: str, default: Any = None) -> ValueState[Any]:
        return ValueState(self._table(name, "value"), self.scope, default)

    def list_state(self, name: str) -> ListState[Any]:
        return ListState(self._table(name, "list"), self.scope)

    def map_state(self, name: str) -> MapState[Any, Any]:
        return MapState(self._table(name, "map"), self.scope)

    # --- timers --------------------------------------------------------------------------
    def register_timer(self, when: float) -> None:
        item = (when, self.scope.key)
        if item not in self._timer_set:
            self._timer_set.add(item)
            heapq.heappush(self._timers, (when, next(self._seq), self.scope.key))

    def delete_timer(self, when: float) -> None:
        self._timer_set.discard((when, self.scope.key))

    def next_timer(self) -> float | None:
        while self._timers and (self._timers[0][0], self._timers[0][2]) not in self._timer_set:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def pop_due_timers(self, now: float) -> list[tuple[float, Any]]:
        due: list[tuple[float, Any]] = []
        while self._timers and self._timers[0][0] <= now:
            when, _, key = heapq.heappop(self._timers)
            if (when, key) in self._timer_set:
                self._timer_set.discard((when, key))
                due.append((when, key))
        return due

    # --- snapshot / restore --------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "format": "memory-keyed-1",
            "max_parallelism": self.max_parallelism,
            "kinds": dict(self.kinds),
            "tables": self.tables,  # pickled by the caller in the sync phase: a deep copy
            "timers": sorted(self._timer_set, key=repr),
        }

    def restore(self, snapshots: list[dict[str, Any]], filter_by_range: bool) -> None:
        lo, hi = self.kg_range
        mp = self.max_parallelism
        for snap in snapshots:
            for name, kind in snap["kinds"].items():
                table = self._table(name, kind)
                src: dict[Any, Any] = snap["tables"].get(name, {})
                if not filter_by_range:
                    table.update(src)
                    continue
                for k, v in src.items():
                    if lo <= key_group(k, mp) < hi:
                        table[k] = v
            for when, key in snap["timers"]:
                if filter_by_range and not lo <= key_group(key, mp) < hi:
                    continue
                self.scope.key = key
                self.register_timer(when)
        self.scope.key = None

    def size(self) -> int:
        return sum(len(t) for t in self.tables.values())
