"""``DataGen``: records made by a function of their index, at a steady rate.

``DataGen(fn, rate=None, count=None)`` produces ``fn(0), fn(1), fn(2), ...``. With P source
subtasks there are P splits; split ``j`` produces the indices ``i`` with ``i % P == j`` in
increasing order, at ``rate / P`` records per second. The position of a split is the next
index it will produce, so a restored job calls ``fn`` again from exactly the first index the
checkpoint does not cover. After a change of parallelism the splits stay as they were
(P of the first run), dealt over the new subtasks; the total rate stays ``rate``.

Rate limiting never blocks: ``read_batch`` returns the records that are due now (at most
``max_records``) or ``[]``; the worker then waits briefly (it polls idle sources every
10 ms) and asks again. A reader that fell behind (backpressure, a slow ``fn``) catches up
by at most one second's worth of records, so the long-run rate stays at ``rate``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from onceflow.connectors.sources import Source, SplitReader
from onceflow.errors import ConfigurationError

MAX_BACKLOG_S = 1.0  # seconds of records a rate-limited split may emit at once to catch up


class _GenSplit:
    """Indices ``index, index + of, index + 2 * of, ...`` of a DataGen."""

    __slots__ = ("failed_at", "index", "of")

    def __init__(self, index: int, of: int) -> None:
        self.index, self.of = index, of
        self.failed_at: int | None = None  # set when fn raised: shown in the job's error

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _GenSplit) and (self.index, self.of) == (other.index, other.of)

    def __hash__(self) -> int:
        return hash((self.index, self.of))

    def __getstate__(self) -> tuple[int, int]:
        return (self.index, self.of)

    def __setstate__(self, state: tuple[int, int]) -> None:
        self.index, self.of = state
        self.failed_at = None

    def __repr__(self) -> str:
        if self.failed_at is not None:
            return f"DataGen index {self.failed_at} (split {self.index} of {self.of})"
        return f"DataGen split {self.index} of {self.of}"


class _GenReader(SplitReader):
    def __init__(self, fn: Callable[[int], Any], split: _GenSplit, position: int,
                 rate: float | None, count: int | None) -> None:
        self._fn, self._split = fn, split
        self._pos, self._step = position, split.of
        self._count = count
        self._rate = rate  # records per second of this split
        self._t0 = time.monotonic()
        self._emitted = 0  # since _t0

    def read_batch(self, max_records: int) -> list[Any] | None:
        start, step = self._pos, self._step
        n = max_records
        if self._count is not None:
            if start >= self._count:
                return None
            n = min(n, -(-(self._count - start) // step))
        rate = self._rate
        if rate is not None:
            now = time.monotonic()
            backlog = max(1.0, rate * MAX_BACKLOG_S)
            due = math.floor((now - self._t0) * rate) + 1 - self._emitted
            if due > backlog:  # fell behind: forget what cannot be caught up quickly
                self._t0 = now - (self._emitted + backlog - 1) / rate
                due = int(backlog)
            n = min(n, due)
            if n <= 0:
                return []
        fn = self._fn
        out: list[Any] = []
        append = out.append
        i = start
        try:
            for i in range(start, start + n * step, step):
                append(fn(i))
        except Exception as e:
            self._split.failed_at = i
            e.add_note(f"in DataGen: fn({i}) raised this")
            raise
        self._pos = start + n * step
        self._emitted += n
        return out

    def position(self) -> int:
        return self._pos


class DataGen(Source):
    """``fn(i)`` for ``i = 0, 1, 2, ...``: ``rate`` records per second over the whole source
    (``None``: as fast as the job takes them), ``count`` records in all (``None``:
    unbounded). Source subtask ``j`` of ``P`` produces the indices ``i % P == j`` at
    ``rate / P`` per second. Replayable: the position is the next index, so after a crash
    ``fn`` is called again from the first index no completed checkpoint covers. ``fn`` must
    be deterministic for the replayed records to equal the lost ones."""

    def __init__(self, fn: Callable[[int], Any], rate: float | None = None,
                 count: int | None = None) -> None:
        if not callable(fn):
            raise ConfigurationError(
                f"DataGen(fn, ...): fn must be a function of the index i, got {fn!r}")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                                 or not math.isfinite(rate) or rate <= 0):
            raise ConfigurationError(
                f"DataGen: rate must be a positive number of records per second (or None for "
                f"as fast as possible), got {rate!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):
            raise ConfigurationError(
                f"DataGen: count must be an integer >= 0 (or None for unbounded), got {count!r}")
        self.fn, self.rate, self.count = fn, rate, count

    def splits(self, parallelism: int) -> list[Any]:
        return [_GenSplit(j, parallelism) for j in range(parallelism)]

    def initial_position(self, split: _GenSplit) -> int:
        return split.index

    def reader(self, split: _GenSplit, position: int) -> SplitReader:
        rate = None if self.rate is None else self.rate / split.of
        return _GenReader(self.fn, split, position, rate, self.count)
