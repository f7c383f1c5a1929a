"""Timers of one keyed operator subtask, in two time domains.

* **Processing time**: fire once the wall clock passes the timer's time.
* **Event time**: fire once the operator's watermark reaches the timer's time (a watermark
  ``W`` says no record with a timestamp below ``W`` follows, so a timer at ``t`` fires when
  ``W >= t``).

Each domain is a heap plus a set: at most one timer per (time, key) and domain; deleting a
timer removes it from the set and the heap drops it lazily. A store (memory or RocksDB)
inherits :class:`TimerQueue`; its snapshot carries both domains (``"timers"`` and
``"event_timers"``, lists of ``(time, key)``), and restore keeps only the timers of the keys
in the subtask's key-group range, so timers move with their keys on a rescale.

The RocksDB store keeps its timers in RocksDB instead (``state/rocksdb_timers.py``); its
backend-neutral export (a savepoint) lists them in ``tables`` under the reserved names of
:data:`TIMER_TABLES` (the checkpoint storage keeps only the ``tables`` of an export written
in the async phase), and restore reads both places.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from onceflow.graph.keygroups import key_group
from onceflow.state.handles import _KeyScope

# where a backend-neutral snapshot written in the async phase lists its timers (no real
# state name starts with NUL; the RocksDB store refuses one)
TIMER_TABLES = {"timers": "\x00timers", "event_timers": "\x00event_timers"}


def timer_lists(snap: dict[str, Any], name: str) -> list[tuple[float, Any]]:
    """The timers of one domain (``"timers"`` or ``"event_timers"``) a snapshot lists."""
    return [*snap.get(name, ()), *snap.get("tables", {}).get(TIMER_TABLES[name], ())]


class _Domain:
    __slots__ = ("heap", "members", "seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Any]] = []  # (time, seq, key)
        self.members: set[tuple[float, Any]] = set()
        self.seq = itertools.count()

    def add(self, when: float, key: Any) -> None:
        item = (when, key)
        if item not in self.members:
            self.members.add(item)
            heapq.heappush(self.heap, (when, next(self.seq), key))

    def discard(self, when: float, key: Any) -> None:
        self.members.discard((when, key))

    def peek(self) -> float | None:
        heap, members = self.heap, self.members
        while heap and (heap[0][0], heap[0][2]) not in members:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[tuple[float, Any]]:
        heap, members = self.heap, self.members
        due: list[tuple[float, Any]] = []
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if (when, key) in members:
                members.discard((when, key))
                due.append((when, key))
        return due

    def listing(self) -> list[tuple[float, Any]]:
        return list(self.members)  # no sort: the sync phase must stay short (1 M timers)


class TimerQueue:
    """Processing-time and event-time timers of one keyed operator subtask."""

    scope: _KeyScope
    kg_range: tuple[int, int]
    max_parallelism: int

    def __init__(self) -> None:
        self._proc = _Domain()
        self._event = _Domain()

    # --- processing time -----------------------------------------------------------------
    def register_timer(self, when: float) -> None:
        self._proc.add(when, self.scope.key)

    def delete_timer(self, when: float) -> None:
        self._proc.discard(when, self.scope.key)

    def next_timer(self) -> float | None:
        return self._proc.peek()

    def pop_due_timers(self, now: float) -> list[tuple[float, Any]]:
        return self._proc.pop_due(now)

    # --- event time ----------------------------------------------------------------------
    def register_event_timer(self, when: float) -> None:
        self._event.add(when, self.scope.key)

    def delete_event_timer(self, when: float) -> None:
        self._event.discard(when, self.scope.key)

    def next_event_timer(self) -> float | None:
        return self._event.peek()

    def pop_due_event_timers(self, watermark: float) -> list[tuple[float, Any]]:
        """Event timers at or below ``watermark``, in time order, each removed."""
        return self._event.pop_due(watermark)

    def timer_count(self) -> int:
        return len(self._proc.members) + len(self._event.members)

    # --- snapshot / restore --------------------------------------------------------------
    # event timers an operator keeps itself (the event-time pane windows: no timer per key
    # while running), listed in the next snapshot as if registered here
    extra_event_timers: list[tuple[float, Any]] | None = None

    def timers_snapshot(self) -> dict[str, list[tuple[float, Any]]]:
        event = self._event.listing()
        if self.extra_event_timers:
            event.extend(self.extra_event_timers)
        return {"timers": self._proc.listing(), "event_timers": event}

    def restore_timers(self, snap: dict[str, Any], filter_by_range: bool) -> None:
        """Register the timers of a snapshot; after a rescale only those of this subtask's
        keys. Snapshots written before event time existed have no ``event_timers``."""
        lo, hi = self.kg_range
        mp = self.max_parallelism
        for domain, name in ((self._proc, "timers"), (self._event, "event_timers")):
            for when, key in timer_lists(snap, name):
                if filter_by_range and not lo <= key_group(key, mp) < hi:
                    continue
                domain.add(when, key)

    # stores without these needs do nothing
    def after_batch(self) -> None:
        pass

    def notify_complete(self, checkpoint_id: int) -> None:
        pass

    def notify_aborted(self, checkpoint_id: int) -> None:
        pass

    def close(self) -> None:
        pass
