"""What every keyed state backend provides, and how a snapshot crosses into the async phase.

A keyed operator asks its backend for a *store* (one per operator subtask). The store's
``snapshot`` runs in the synchronous phase of a checkpoint and returns either plain
picklable state (pickled at once by the task) or an :class:`AsyncSnapshot`: a small
picklable part taken now plus work that the worker's writer thread finishes later (apply
buffered writes, create a RocksDB checkpoint, upload files). The writer thread calls
:meth:`AsyncSnapshot.run` with a :class:`SnapshotTarget` saying where files go, and stores
the manifest it returns next to the synchronous part.

Three formats exist (and an older layout of one), each a dict with a ``"format"`` key:

* ``memory-keyed-1``: every table in full (``{"kinds", "tables", "timers"}``). It is also
  the **backend-neutral** format that savepoints use, whatever the backend.
* ``memory-changelog-1``: a chain of shared files (a full base plus deltas).
* ``rocksdb-2``: a RocksDB checkpoint's files, shared (incremental) or private (full);
  ``rocksdb-1`` is its older layout (lists stored whole), still restored.
"""

from __future__ import annotations

import os
import shutil
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from onceflow._fsutil import fsync_dir

if TYPE_CHECKING:
    from onceflow.state.handles import _KeyScope

NEUTRAL_FORMAT = "memory-keyed-1"
SHARED_DIR = "shared"


def owner_name(uid: str, subtask: int) -> str:
    """The folder under ``shared/`` for one operator subtask's files."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uid)[:100]
    return f"{safe}-{subtask}"


@dataclass
class SnapshotTarget:
    """Where the async phase of one subtask's snapshot writes.

    ``checkpoint_dir``: the checkpoint (or savepoint) directory, for private files.
    ``shared_root``: the flow's ``shared/`` directory for files later checkpoints may reuse
    (None for a savepoint: a savepoint is self-contained). Paths in manifests are relative
    to ``checkpoint_dir`` so a checkpoint can be read from where it is found."""

    checkpoint_id: int
    checkpoint_dir: str
    shared_root: str | None
    owner: str  # "<operator uid>-<subtask>": names files so they never collide
    uploaded: dict[str, dict[str, Any]] = field(default_factory=dict)  # rel path -> size/crc
    new_bytes: int = 0  # bytes written by this snapshot (its incremental size)
    new_files: list[str] = field(default_factory=list)  # rel paths this snapshot wrote

    def _record(self, rel: str, size: int, crc: int, new: bool) -> None:
        self.uploaded[rel] = {"size": size, "crc32": crc}
        if new:
            self.new_bytes += size
            self.new_files.append(rel)

    def write_shared(self, data: bytes, suffix: str, name: str | None = None) -> str:
        """Write ``data`` as a new shared file; returns its path relative to the checkpoint."""
        name = name or f"{uuid.uuid4().hex}{suffix}"
        if self.shared_root is None:
            return self.write_private(data, name)
        d = os.path.join(self.shared_root, self.owner)
        os.makedirs(d, exist_ok=True)
        _write_file(os.path.join(d, name), data)
        rel = os.path.relpath(os.path.join(d, name), self.checkpoint_dir)
        self._record(rel, len(data), zlib.crc32(data), True)
        return rel

    def copy_shared(self, src: str, suffix: str) -> tuple[str, int, int]:
        """Copy local file ``src`` into shared storage (or privately, for a savepoint)."""
        if self.shared_root is None:
            return self.copy_private(src, f"{uuid.uuid4().hex}{suffix}")
        d = os.path.join(self.shared_root, self.owner)
        os.makedirs(d, exist_ok=True)
        dst = os.path.join(d, f"{uuid.uuid4().hex}{suffix}")
        size, crc = _copy_file(src, dst)
        rel = os.path.relpath(dst, self.checkpoint_dir)
        self._record(rel, size, crc, True)
        return rel, size, crc

    def reuse(self, rel_to_flow: str, size: int, crc: int) -> str:
        """Reference a shared file an earlier completed checkpoint uploaded."""
        assert self.shared_root is not None
        rel = os.path.relpath(os.path.join(os.path.dirname(self.shared_root), rel_to_flow),
                              self.checkpoint_dir)
        self._record(rel, size, crc, False)
        return rel

    def write_private(self, data: bytes, name: str) -> str:
        d = os.path.join(self.checkpoint_dir, f"{self.owner}.files")
        os.makedirs(d, exist_ok=True)
        _write_file(os.path.join(d, name), data)
        rel = os.path.join(f"{self.owner}.files", name)
        self._record(rel, len(data), zlib.crc32(data), True)
        return rel

    def copy_private(self, src: str, name: str) -> tuple[str, int, int]:
        d = os.path.join(self.checkpoint_dir, f"{self.owner}.files")
        os.makedirs(d, exist_ok=True)
        size, crc = _copy_file(src, os.path.join(d, name))
        rel = os.path.join(f"{self.owner}.files", name)
        self._record(rel, size, crc, True)
        return rel, size, crc


class AsyncSnapshot:
    """Returned by a store's ``snapshot`` when part of the work happens off the task thread."""

    def __init__(self, sync_state: dict[str, Any]) -> None:
        self.sync_state = sync_state

    def run(self, target: SnapshotTarget) -> dict[str, Any]:
        """In the writer thread: finish the snapshot; return a picklable manifest."""
        raise NotImplementedError

    def discard(self) -> None:
        """The snapshot will not be written (the task failed or the checkpoint aborted)."""


class KeyedStore(Protocol):
    """What a keyed operator subtask gets from its backend (``StateBackend.create``): state
    handles scoped to ``scope.key``, timers in both time domains (``state/timers.py``), and
    the snapshot lifecycle. Both ``state.memory.KeyedStore`` and ``state.rocksdb.RocksDBStore``
    satisfy it; operators use nothing else."""

    scope: _KeyScope
    restored_key_types: set[str]

    def value_state(self, name: str, default: Any = None) -> Any: ...
    def list_state(self, name: str) -> Any: ...
    def map_state(self, name: str) -> Any: ...

    def value_table(self, name: str) -> tuple[dict[Any, Any], set[Any] | None] | None:
        """The dict behind value state ``name`` (and its dirty-key set) when the backend
        keeps one, for a per-record fast path; None: use ``value_state``."""

    def register_timer(self, when: float) -> None: ...
    def delete_timer(self, when: float) -> None: ...
    def next_timer(self) -> float | None: ...
    def pop_due_timers(self, now: float) -> list[tuple[float, Any]]: ...
    def register_event_timer(self, when: float) -> None: ...
    def delete_event_timer(self, when: float) -> None: ...
    def next_event_timer(self) -> float | None: ...
    def pop_due_event_timers(self, watermark: float) -> list[tuple[float, Any]]: ...
    def timer_count(self) -> int: ...

    def snapshot(self, checkpoint_id: int = 0, savepoint: bool = False
                 ) -> dict[str, Any] | AsyncSnapshot:
        """Synchronous phase: plain picklable state, or an :class:`AsyncSnapshot`."""

    def restore(self, snapshots: list[dict[str, Any]], filter_by_range: bool) -> None: ...
    def after_batch(self) -> None: ...
    def notify_complete(self, checkpoint_id: int) -> None: ...
    def notify_aborted(self, checkpoint_id: int) -> None: ...
    def close(self) -> None: ...


class StateBackend(Protocol):
    """Light, picklable configuration (``of.state.MemoryBackend()``,
    ``of.state.RocksDBBackend(...)``): checked by ``validate`` at ``run()``, and a factory
    of one :class:`KeyedStore` per keyed operator subtask, made in the worker."""

    def validate(self) -> None: ...

    def create(self, max_parallelism: int, kg_range: tuple[int, int], *, operator: str = "",
               owner: str = "", incremental: bool = False, **options: Any) -> KeyedStore: ...


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(path))


def _copy_file(src: str, dst: str, durable: bool = True) -> tuple[int, int]:
    """Copy ``src`` to ``dst`` (fsynced when ``durable``); returns (size, crc32) computed
    while copying."""
    crc = 0
    size = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            chunk = fi.read(1 << 20)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            fo.write(chunk)
        if durable:
            fo.flush()
            os.fsync(fo.fileno())
    if durable:
        fsync_dir(os.path.dirname(dst))
    return size, crc


def _damaged(base: str, path: str, what: str, why: str) -> Exception:
    from onceflow.errors import CorruptCheckpointError

    return CorruptCheckpointError(base, f"{what}: file {path} {why}")


def read_verified(base: str, rel: str, size: int, crc: int, what: str) -> bytes:
    """Read a file a manifest lists, checking it is there and intact."""
    path = os.path.normpath(os.path.join(base, rel))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _damaged(base, path, what, f"is missing or unreadable ({e.strerror})") from e
    if len(data) != size or zlib.crc32(data) != crc:
        raise _damaged(base, path, what, "is truncated or fails its checksum")
    return data


def copy_verified(base: str, rel: str, size: int, crc: int, dst: str, what: str) -> None:
    """Copy a file a manifest lists to local ``dst``, checking it on the way (a working
    copy: not fsynced)."""
    path = os.path.normpath(os.path.join(base, rel))
    try:
        got = _copy_file(path, dst, durable=False)
    except OSError as e:
        raise _damaged(base, path, what, f"is missing or unreadable ({e.strerror})") from e
    if got != (size, crc):
        raise _damaged(base, path, what, "is truncated or fails its checksum")


def check_restored_kinds(operator: str, registered: dict[str, str],
                         restored: dict[str, str]) -> None:
    """A state name must keep its kind across a restore (value, list or map)."""
    from onceflow.errors import IncompatibleStateError

    for name, kind in restored.items():
        have = registered.get(name)
        if have is not None and have != kind:
            raise IncompatibleStateError(
                f"operator {operator!r}: the restored state {name!r} is {kind} state but the "
                f"function registers it as {have} state; rename the state, or start without "
                "restore")


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
