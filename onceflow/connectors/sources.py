"""Replayable sources.

A :class:`Source` is light configuration. It cuts its input into **splits** (a range of
numbers, a file, a Kafka partition); each split is read by a :class:`SplitReader` that can
start from any recorded **position**. Source subtasks checkpoint ``(split, position)`` pairs
as operator state, so after a crash reading resumes exactly after the last record a
completed checkpoint covers.

Contract for ``SplitReader.read_batch``: return up to ``max_records`` records, ``[]`` when
nothing is available right now (unbounded sources), or ``None`` once the split is finished.
It must not block for long. ``position()`` is the position *after* the last returned record
and must be picklable.
"""

from __future__ import annotations

import glob as globmod
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from onceflow.errors import ConfigurationError, RecordFormatError


class SplitReader(ABC):
    @abstractmethod
    def read_batch(self, max_records: int) -> list[Any] | None: ...

    @abstractmethod
    def position(self) -> Any: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (files, connections)."""

    def notify_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id``, which recorded ``position`` for this split, is
        complete (e.g. commit offsets to an external system for monitoring). Optional."""

    def partitions(self) -> list[Any] | None:
        """Optional, for per-partition watermarks: the inputs this reader reads now whose
        records are each in order of their own (a Kafka reader's topic partitions, not yet
        read to their end). None (the default): the split is one such input."""
        return None

    def batch_partitions(self) -> list[Any] | None:
        """With :meth:`partitions`: the partition of each record of the last batch."""
        return None

    def has_backlog(self, partition: Any) -> bool:
        """With :meth:`partitions`: True when records of ``partition`` are known to be
        waiting behind other partitions' (so it is not idle, only not read yet: its
        idleness clock does not run). The default: not known (False)."""
        return False

    def batch_runs(self) -> list[tuple[Any, int]] | None:
        """With :meth:`partitions`: the last batch as runs of one partition, ``(partition,
        number of records)`` in order. The default groups :meth:`batch_partitions`; a
        reader that knows its runs returns them without a list entry per record."""
        parts = self.batch_partitions()
        return None if parts is None else runs_of(parts)


def runs_of(partitions: Iterable[Any]) -> list[tuple[Any, int]]:
    """``partitions`` (one per record) as runs: ``[(partition, number of records)]``."""
    return [(p, sum(1 for _ in run)) for p, run in groupby(partitions)]


class Source(ABC):
    """Base class of replayable sources."""

    @abstractmethod
    def splits(self, parallelism: int) -> list[Any]:
        """The input's splits (picklable, with a stable order). Called once per fresh start."""

    @abstractmethod
    def initial_position(self, split: Any) -> Any:
        """Where reading a split starts when no checkpoint says otherwise."""

    @abstractmethod
    def reader(self, split: Any, position: Any) -> SplitReader:
        """A reader for ``split`` that continues at ``position``. Called in the worker."""

    def validate(self) -> None:  # noqa: B027 - optional hook
        """Check the configuration; raise ConfigurationError with an actionable message."""

    def validate_checkpointing(self, interval: float | None, timeout: float) -> None:  # noqa: B027
        """Check the flow's checkpoint settings (``interval`` None: checkpointing off)."""


# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RangeSplit:
    index: int
    start: int
    stop: int


class _RangeReader(SplitReader):
    def __init__(self, split: _RangeSplit, pos: int) -> None:
        self._split, self._pos = split, pos

    def read_batch(self, max_records: int) -> list[Any] | None:
        if self._pos >= self._split.stop:
            return None
        end = min(self._pos + max_records, self._split.stop)
        out = list(range(self._pos, end))
        self._pos = end
        return out

    def position(self) -> int:
        return self._pos


class Range(Source):
    """The integers ``start, start+1, ..., stop-1`` (``step`` multiplies each index).

    Split into one contiguous chunk per source subtask; the position is the next index."""

    def __init__(self, start: int, stop: int | None = None, step: int = 1) -> None:
        if stop is None:
            start, stop = 0, start
        self.start, self.stop, self.step = start, stop, step

    def validate(self) -> None:
        if not all(isinstance(v, int) for v in (self.start, self.stop, self.step)):
            raise ConfigurationError("Range(start, stop, step) takes integers")
        if self.step == 0:
            raise ConfigurationError("Range: step must not be 0")

    def splits(self, parallelism: int) -> list[Any]:
        if self.step != 1:
            n = max(0, len(range(self.start, self.stop, self.step)))
            base = 0
        else:
            n, base = max(0, self.stop - self.start), self.start
        return [
            _RangeSplit(i, base + i * n // parallelism, base + (i + 1) * n // parallelism)
            for i in range(parallelism)
        ]

    def initial_position(self, split: _RangeSplit) -> int:
        return split.start

    def reader(self, split: _RangeSplit, position: int) -> SplitReader:
        if self.step == 1:
            return _RangeReader(split, position)
        return _SteppedRangeReader(split, self.start, self.step, position)


class _SteppedRangeReader(SplitReader):
    def __init__(self, split: _RangeSplit, start: int, step: int, pos: int) -> None:
        self._split, self._start, self._step, self._pos = split, start, step, pos

    def read_batch(self, max_records: int) -> list[Any] | None:
        if self._pos >= self._split.stop:
            return None
        end = min(self._pos + max_records, self._split.stop)
        out = [self._start + i * self._step for i in range(self._pos, end)]
        self._pos = end
        return out

    def position(self) -> int:
        return self._pos


# ---------------------------------------------------------------------------------------
class _ListReader(SplitReader):
    def __init__(self, items: Sequence[Any], pos: int) -> None:
        self._items, self._pos = items, pos

    def read_batch(self, max_records: int) -> list[Any] | None:
        if self._pos >= len(self._items):
            return None
        out = list(self._items[self._pos : self._pos + max_records])
        self._pos += len(out)
        return out

    def position(self) -> int:
        return self._pos


class Collection(Source):
    """The items of a Python collection, in order (one contiguous chunk per subtask).

    The items are part of the flow's definition, so they must be the same on every run."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = list(items)

    def splits(self, parallelism: int) -> list[Any]:
        n = len(self.items)
        return [(i, i * n // parallelism, (i + 1) * n // parallelism) for i in range(parallelism)]

    def initial_position(self, split: tuple[int, int, int]) -> int:
        return 0

    def reader(self, split: tuple[int, int, int], position: int) -> SplitReader:
        return _ListReader(self.items[split[1] : split[2]], position)


# ---------------------------------------------------------------------------------------
class _TextReader(SplitReader):
    _CHUNK = 1 << 20

    def __init__(self, path: str, offset: int, encoding: str) -> None:
        self._path, self._offset, self._encoding = path, offset, encoding
        try:
            self._f = open(path, "rb")
        except OSError as e:
            raise RecordFormatError(f"TextFiles: cannot open {path}: {e.strerror}") from e
        self._f.seek(offset)
        self._buf = b""
        self._eof = False

    def read_batch(self, max_records: int) -> list[Any] | None:
        lines: list[bytes] = []
        while len(lines) < max_records:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if self._eof:
                    if self._buf:
                        lines.append(self._buf)
                        self._buf = b""
                    break
                chunk = self._f.read(self._CHUNK)
                if not chunk:
                    self._eof = True
                else:
                    self._buf += chunk
                continue
            parts = self._buf.split(b"\n", max_records - len(lines))
            lines.extend(parts[:-1])
            self._buf = parts[-1]
        if not lines:
            return None if self._eof and not self._buf else []
        out = []
        enc = self._encoding
        for raw in lines:
            try:
                out.append(raw.decode(enc).removesuffix("\r"))
            except UnicodeDecodeError as e:
                raise RecordFormatError(
                    f"TextFiles: {self._path} at byte offset {self._offset}: line is not valid "
                    f"{enc} ({e.reason}); fix the file or pass encoding=... to TextFiles"
                ) from None
            self._offset += len(raw) + 1
        if self._eof and not self._buf:
            # The last line had no trailing newline: the position is the file's end.
            self._offset = min(self._offset, os.fstat(self._f.fileno()).st_size)
        return out

    def position(self) -> int:
        return self._offset

    def close(self) -> None:
        self._f.close()


class TextFiles(Source):
    """Lines of text files (a path, a glob, or a list of either), without line endings.

    Each file is a split; the position is a byte offset, so a restored job continues at the
    first line a completed checkpoint does not cover."""

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 encoding: str = "utf-8") -> None:
        self.patterns = [os.fspath(paths)] if isinstance(paths, str | os.PathLike) else [
            os.fspath(p) for p in paths
        ]
        self.encoding = encoding

    def files(self) -> list[str]:
        found: list[str] = []
        for pat in self.patterns:
            hits = sorted(globmod.glob(pat)) if globmod.has_magic(pat) else [pat]
            found.extend(os.path.abspath(h) for h in hits)
        return found

    def validate(self) -> None:
        files = self.files()
        if not files:
            raise ConfigurationError(f"TextFiles: no file matches {self.patterns}")
        for f in files:
            if not os.path.isfile(f):
                raise ConfigurationError(f"TextFiles: {f} does not exist or is not a file")

    def splits(self, parallelism: int) -> list[Any]:
        return self.files()

    def initial_position(self, split: str) -> int:
        return 0

    def reader(self, split: str, position: int) -> SplitReader:
        return _TextReader(split, position, self.encoding)
