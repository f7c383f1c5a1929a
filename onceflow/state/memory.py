"""The memory state backend (the default): keyed state in Python dictionaries.

Full snapshots: the synchronous phase serializes every table (a consistent copy taken
between two records, so later updates cannot leak into it); writing the bytes happens
asynchronously. Each key's key group is recomputable from the key with the stable hash, so on
restore a subtask keeps exactly the keys of its key-group range, whatever the old
parallelism was.

Incremental (changelog) snapshots, with ``enable_checkpointing(..., incremental=True)``:
the store remembers which keys changed since its last snapshot and serializes only those
(deletions as tombstones) into a new shared file; a checkpoint lists the chain of files it
needs (one full base, then deltas). Every ``full_every`` snapshots, and after any aborted
checkpoint the chain went through, the store writes a new full base instead, so restore never
reads a long chain. The sync phase then costs time proportional to the changed keys, not to
all state.
"""

from __future__ import annotations

import itertools
import pickle
import uuid
from dataclasses import dataclass
from typing import Any

from onceflow.errors import ConfigurationError, OnceflowError
from onceflow.graph.keygroups import key_group
from onceflow.state import formats
from onceflow.state.backend import (
    NEUTRAL_FORMAT,
    SHARED_DIR,
    AsyncSnapshot,
    SnapshotTarget,
    check_restored_kinds,
    read_verified,
)
from onceflow.state.handles import ListState, MapState, ValueState, _KeyScope
from onceflow.state.timers import TimerQueue

CHANGELOG_FORMAT = "memory-changelog-1"


class _Tombstone:
    """Marks a key deleted in a changelog delta (pickles to the one instance)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "TOMBSTONE"


TOMBSTONE = _Tombstone()


@dataclass(frozen=True)
class MemoryBackend:
    """Keyed state in Python dictionaries (the default backend).

    ``full_every``: with incremental checkpoints, write a full snapshot after this many
    changelog deltas (restore reads at most this many files per subtask)."""

    full_every: int = 10

    def validate(self) -> None:
        if not isinstance(self.full_every, int) or self.full_every < 1:
            raise ConfigurationError(
                f"MemoryBackend(full_every={self.full_every!r}): must be an integer >= 1")

    def create(self, max_parallelism: int, kg_range: tuple[int, int], *,
               operator: str = "", owner: str = "", incremental: bool = False,
               **_: Any) -> KeyedStore:
        return KeyedStore(max_parallelism, kg_range, operator=operator, owner=owner,
                          changelog_full_every=self.full_every if incremental else None)


class KeyedStore(TimerQueue):
    """All keyed state and timers of one keyed operator subtask."""


    def __init__(self, max_parallelism: int, kg_range: tuple[int, int], *, operator: str = "",
                 owner: str = "", changelog_full_every: int | None = None) -> None:
        super().__init__()
        self.max_parallelism = max_parallelism
        self.kg_range = kg_range
        self.operator = operator
        self.owner = owner or "keyed"
        self.scope = _KeyScope()
        self.tables: dict[str, dict[Any, Any]] = {}
        self.kinds: dict[str, str] = {}
        # changelog mode: keys changed since the last snapshot, per table
        self.full_every = changelog_full_every
        self.dirty: dict[str, set[Any]] | None = {} if changelog_full_every else None
        self._chain: list[_ChainFile] = []  # the files the next snapshot builds on
        self._chain_ids: list[int] = []  # checkpoint id of each chain file
        self._since_full = 0
        self.restored_key_types: set[str] = set()

    # --- handles -------------------------------------------------------------------------
    def _table(self, name: str, kind: str) -> dict[Any, Any]:
        have = self.kinds.setdefault(name, kind)
        if have != kind:
            raise ConfigurationError(
                f"operator {self.operator!r}: state {name!r} is already registered as {have} "
                f"state, not {kind}"
            )
        if self.dirty is not None:
            self.dirty.setdefault(name, set())
        return self.tables.setdefault(name, {})

    def dirty_set(self, name: str) -> set[Any] | None:
        return self.dirty.setdefault(name, set()) if self.dirty is not None else None

    def value_table(self, name: str) -> tuple[dict[Any, Any], set[Any] | None]:
        """The dict behind value state ``name`` and its changelog's dirty-key set (None
        without changelog): an operator with one value per key (``reduce``) may read and
        write it directly, a dict lookup per record instead of a handle call."""
        return self._table(name, "value"), self.dirty_set(name)

    def value_state(self, name: str, default: Any = None) -> ValueState[Any]:
        return ValueState(self._table(name, "value"), self.scope, default, self.dirty_set(name))

    def list_state(self, name: str) -> ListState[Any]:
        return ListState(self._table(name, "list"), self.scope, self.dirty_set(name))

    def map_state(self, name: str) -> MapState[Any, Any]:
        return MapState(self._table(name, "map"), self.scope, self.dirty_set(name))

    # --- snapshot / restore --------------------------------------------------------------
    def snapshot(self, checkpoint_id: int = 0, savepoint: bool = False
                 ) -> dict[str, Any] | AsyncSnapshot:
        full = {
            "format": NEUTRAL_FORMAT,
            "max_parallelism": self.max_parallelism,
            "kinds": dict(self.kinds),
            "tables": self.tables,  # pickled by the caller in the sync phase: a deep copy
            **self.timers_snapshot(),
            "key_types": _key_types(self.tables),
        }
        if self.dirty is None or savepoint:
            return full  # a savepoint is always full and leaves the changelog alone
        assert self.full_every is not None
        # The sync phase captures, the writer thread serializes: values that cannot change
        # (numbers, strings, bytes, flat tuples of those) are kept by reference, others are
        # pickled now, so a later in-place change cannot leak into the snapshot.
        if not self._chain or self._since_full >= self.full_every:
            part = {name: _capture(table, table) for name, table in self.tables.items()}
            self._since_full = 0
            self._chain, self._chain_ids = [], []
        else:
            part = {name: _capture(table, self.dirty.get(name, ()))
                    for name, table in self.tables.items()}
            self._since_full += 1
        for d in self.dirty.values():
            d.clear()
        base = list(self._chain)
        # the next snapshot builds on this file before the writer thread has written it;
        # the writer thread runs snapshots in order, so the file's size and checksum are
        # filled in by the time the next snapshot's manifest needs them
        entry = _ChainFile(f"{SHARED_DIR}/{self.owner}/{uuid.uuid4().hex}.changelog")
        self._chain.append(entry)
        self._chain_ids.append(checkpoint_id)
        head = {k: v for k, v in full.items() if k != "tables"}
        head["format"] = CHANGELOG_FORMAT
        return _ChangelogSnapshot(head, part, entry, base)

    def notify_aborted(self, checkpoint_id: int) -> None:
        """A checkpoint this store's chain went through was aborted: its file may vanish,
        so the next snapshot starts a new chain."""
        if checkpoint_id in self._chain_ids:
            self._chain, self._chain_ids = [], []

    def restore(self, snapshots: list[dict[str, Any]], filter_by_range: bool) -> None:
        lo, hi = self.kg_range
        mp = self.max_parallelism
        for snap in snapshots:
            snap = neutral(snap, self.operator)
            self.restored_key_types.update(snap.get("key_types", ()))
            check_restored_kinds(self.operator, self.kinds, snap["kinds"])
            for name, kind in snap["kinds"].items():
                table = self._table(name, kind)
                src: dict[Any, Any] = snap["tables"].get(name, {})
                if not filter_by_range:
                    table.update(src)
                    continue
                for k, v in src.items():
                    if lo <= key_group(k, mp) < hi:
                        table[k] = v
            self.restore_timers(snap, filter_by_range)

    def size(self) -> int:
        return sum(len(t) for t in self.tables.values())


class _ChainFile:
    """One changelog file: its path relative to the flow directory; size and CRC-32 once
    the writer thread wrote it."""

    __slots__ = ("crc", "path", "size")

    def __init__(self, path: str) -> None:
        self.path = path
        self.size: int | None = None
        self.crc = 0


class _Pickled:
    """A value pickled in the sync phase (it might change in place later)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Pickled, (self.data,))


_ATOMS = frozenset({int, float, str, bytes, bool, type(None)})


def _capture(table: dict[Any, Any], keys: Any) -> dict[Any, Any]:
    atoms = _ATOMS
    out: dict[Any, Any] = {}
    get = table.get
    for k in keys:
        v = get(k, TOMBSTONE)
        t = type(v)
        if t in atoms or v is TOMBSTONE or (t is tuple and all(type(x) in atoms for x in v)):
            out[k] = v
        else:
            out[k] = _Pickled(pickle.dumps(v, protocol=5))
    return out


def _unwrap(v: Any) -> Any:
    return pickle.loads(v.data) if type(v) is _Pickled else v  # storage is trusted


class _ChangelogSnapshot(AsyncSnapshot):
    def __init__(self, head: dict[str, Any], part: dict[str, dict[Any, Any]],
                 entry: _ChainFile, base: list[_ChainFile]) -> None:
        super().__init__(head)
        self.part, self.entry, self.base = part, entry, base

    def run(self, target: SnapshotTarget) -> dict[str, Any]:
        for f in self.base:
            if f.size is None:
                raise OnceflowError(
                    f"changelog file {f.path} of an earlier checkpoint was never written; "
                    "this checkpoint cannot build on it")
        data = pickle.dumps(self.part, protocol=5)
        self.part = {}
        rel = target.write_shared(data, "", name=self.entry.path.rsplit("/", 1)[1])
        self.entry.size, self.entry.crc = len(data), target.uploaded[rel]["crc32"]
        chain = [(target.reuse(f.path, f.size or 0, f.crc), f.size, f.crc) for f in self.base]
        chain.append((rel, self.entry.size, self.entry.crc))
        return {"chain": chain}


def neutral(snap: dict[str, Any], operator: str) -> dict[str, Any]:
    """Any keyed snapshot format as the backend-neutral one (reads files it lists)."""
    return formats.to_neutral(snap, operator)


def _changelog_to_neutral(snap: dict[str, Any], operator: str) -> dict[str, Any]:
    """A changelog chain (a full base plus deltas) as one backend-neutral snapshot."""
    base = snap["_base"]
    tables: dict[str, dict[Any, Any]] = {}
    for rel, size, crc in snap["manifest"]["chain"]:
        data = read_verified(base, rel, size, crc, f"state of operator {operator!r}")
        part = pickle.loads(data)  # checkpoint storage is trusted
        for name, changes in part.items():
            t = tables.setdefault(name, {})
            for k, v in changes.items():
                if v is TOMBSTONE:
                    t.pop(k, None)
                else:
                    t[k] = _unwrap(v)
    return {**snap, "format": NEUTRAL_FORMAT, "tables": tables}


formats.register(NEUTRAL_FORMAT, lambda snap, operator: snap)
formats.register(CHANGELOG_FORMAT, _changelog_to_neutral)


def _key_types(tables: dict[str, dict[Any, Any]]) -> list[str]:
    """The type names of the keys (a sample of each table): restore compares them with
    the keys the flow computes after a restore."""
    out: set[str] = set()
    for t in tables.values():
        out.update(type(k).__name__ for k in itertools.islice(t, 64))
    return sorted(out)
