"""The session windows of one key, merged as records arrive.

A record at ``t`` with gap ``g`` opens ``[t, t + g)``; a new window that overlaps or touches
windows already held merges with them into one window spanning them all. The set only
decides which windows merge; the window operator moves their accumulators (``merge``) and
their timers.
"""

from __future__ import annotations

from collections.abc import Iterable

Window = tuple[float, float]  # (start, end); plain tuples are what the state holds


class MergingWindowSet:
    """Windows of one key, pairwise disjoint and not touching."""

    __slots__ = ("windows",)

    def __init__(self, windows: Iterable[Window]) -> None:
        self.windows = list(windows)

    def intersects(self, w: Window) -> bool:
        s, e = w
        return any(x[0] <= e and s <= x[1] for x in self.windows)

    def add(self, w: Window) -> tuple[Window, list[Window]]:
        """Add ``w``: returns the window it became part of and the held windows that
        merged into that one (their state goes to the returned window)."""
        s, e = w
        absorbed = [x for x in self.windows if x[0] <= e and s <= x[1]]
        if not absorbed:
            self.windows.append(w)
            return w, []
        merged = (min(s, *(x[0] for x in absorbed)), max(e, *(x[1] for x in absorbed)))
        gone = set(absorbed)
        self.windows = [x for x in self.windows if x not in gone]
        self.windows.append(merged)
        return merged, [x for x in absorbed if x != merged]


def merge_sorted(spans: list[tuple[float, float]]) -> list[tuple[float, float, int, int]]:
    """Runs of ``spans`` (sorted by start) that overlap or touch: ``(start, end, i, j)``
    covers ``spans[i:j]``."""
    out: list[tuple[float, float, int, int]] = []
    if not spans:
        return out
    s, e = spans[0]
    i = 0
    for j in range(1, len(spans)):
        ns, ne = spans[j]
        if ns <= e:
            if ne > e:
                e = ne
        else:
            out.append((s, e, i, j))
            s, e, i = ns, ne, j
    out.append((s, e, i, len(spans)))
    return out
