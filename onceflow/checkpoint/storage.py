"""Checkpoint storage on a file system.

Layout under the configured storage directory::

    <storage>/<flow>/chk-<n>/<task>-<subtask>.state   state of one subtask (magic + pickle)
    <storage>/<flow>/chk-<n>/<op>-<subtask>.files/    private files of a backend (full
                                                      RocksDB checkpoints, MANIFEST, ...)
    <storage>/<flow>/chk-<n>/_metadata                JSON, written last, atomically
                                                      (its format: metadata.py)
    <storage>/<flow>/shared/<op>-<subtask>/...        files incremental checkpoints share
                                                      (reference-counted, see shared.py)
    <storage>/<flow>/savepoint-<n>-<time>/            a savepoint: self-contained, never
                                                      deleted by onceflow

A checkpoint exists only once ``_metadata`` does: it is written to ``_metadata.tmp``,
fsynced, renamed, and the directory fsynced. The metadata lists every state file with its
size and CRC-32 and carries a checksum of its own, so a truncated or altered checkpoint is
detected when it is loaded, and restore falls back to the previous one.

State files are Python pickles: checkpoint storage must be a place only the job's owner can
write to (it is trusted like the job's code).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import zlib
from dataclasses import dataclass
from typing import Any

from onceflow import _faults
from onceflow._fsutil import fsync_dir
from onceflow.checkpoint.metadata import CheckpointMetadata
from onceflow.checkpoint.metadata import decode as decode_metadata
from onceflow.checkpoint.metadata import encode as encode_metadata
from onceflow.errors import (
    ConfigurationError,
    CorruptCheckpointError,
    NoCheckpointError,
    OnceflowError,
)
from onceflow.state.backend import SHARED_DIR

log = logging.getLogger("onceflow.checkpoint")

STATE_MAGIC = b"ONCEFLOW-STATE-2\n"
METADATA = "_metadata"
_CHK = re.compile(r"^chk-(\d+)$")
_SAVEPOINT = re.compile(r"^savepoint-(\d+)(?:-|\.ref$)")


def state_file_name(task: str, subtask: int) -> str:
    return f"{task}-{subtask}.state"


def encode_state(sync_blob: bytes, manifests: dict[str, Any],
                 inflight: bytes | None = None) -> bytes:
    """A subtask's state file: the pickled synchronous part, each backend's manifest, and
    for an unaligned checkpoint the pickled in-flight data (``{channel origin: [pickled
    item, ...]}``)."""
    outer: dict[str, Any] = {"sync": sync_blob, "async": manifests}
    if inflight is not None:
        outer["inflight"] = inflight
    return STATE_MAGIC + pickle.dumps(outer, protocol=5)


@dataclass
class CompletedCheckpoint:
    id: int
    path: str
    meta: CheckpointMetadata
    remote: Any = None  # an object store the files are fetched from (checkpoint/s3.py)

    @property
    def location(self) -> str:
        """Where the checkpoint is, for people: its directory, or its ``s3://`` URL."""
        if self.remote is not None and (k := self.remote.key(self.path)) is not None:
            return str(self.remote.url(k))
        return self.path

    def _read_verified(self, name: str) -> bytes:
        info = self.meta.files[name]
        try:
            with open(os.path.join(self.path, name), "rb") as f:
                data = f.read()
        except OSError as e:
            raise CorruptCheckpointError(self.path, f"state file {name}: {e.strerror}") from e
        if len(data) != info.size or zlib.crc32(data) != info.crc32 \
                or not data.startswith(STATE_MAGIC):
            raise CorruptCheckpointError(
                self.path, f"state file {name} is truncated or fails its checksum")
        return data

    def read_state(self, name: str) -> dict[str, Any]:
        """One subtask's state: the synchronous part, with each backend's manifest (what
        the asynchronous phase wrote) under ``"manifest"`` and this checkpoint's directory
        under ``"_base"`` so the backend can find the files."""
        data = self._read_verified(name)
        outer = pickle.loads(data[len(STATE_MAGIC):])  # checkpoint storage is trusted
        state: dict[str, Any] = pickle.loads(outer["sync"])
        inflight = outer.get("inflight")
        state["inflight"] = pickle.loads(inflight) if inflight is not None else {}
        for uid, manifest in outer["async"].items():
            part = dict(state["ops"][uid])
            if "tables" in manifest:  # a backend-neutral export (savepoint of RocksDB)
                part["tables"] = manifest["tables"]
            else:
                part["manifest"] = manifest
            part["_base"] = self.path
            state["ops"][uid] = part
        return state

    def verify(self) -> None:
        """Check that every state file is present and intact, and that every other file
        the checkpoint lists (shared or private backend files) is there with its size; their
        checksums are checked when restore reads them."""
        for name in self.meta.files:
            self._read_verified(name)
        for rel, info in self.meta.extra_files.items():
            path = os.path.normpath(os.path.join(self.path, rel))
            try:
                size = os.path.getsize(path)
            except OSError:
                raise CorruptCheckpointError(
                    self.path, f"file {path} that the checkpoint needs is missing (was it "
                    "deleted by hand, or is the checkpoint copied without its flow's shared/ "
                    "directory?)") from None
            if size != info["size"]:
                raise CorruptCheckpointError(
                    self.path, f"file {path} has {size} bytes, the checkpoint recorded "
                    f"{info['size']}")


def read_metadata(path: str) -> CheckpointMetadata:
    """The metadata of the checkpoint or savepoint in directory ``path`` (its state files
    are not checked: :func:`load_checkpoint` does that)."""
    mpath = os.path.join(path, METADATA)
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CorruptCheckpointError(path, "no _metadata file (incomplete checkpoint)") from None
    except OSError as e:
        raise CorruptCheckpointError(path, f"cannot read _metadata: {e.strerror}") from e
    return decode_metadata(raw, path)


def load_checkpoint(path: str) -> CompletedCheckpoint:
    """Load and verify the checkpoint in directory ``path``."""
    meta = read_metadata(path)
    ckpt = CompletedCheckpoint(meta.checkpoint_id, path, meta)
    ckpt.verify()
    return ckpt


class CheckpointStorage:
    """The checkpoints of one flow: ``<root>/<flow>/chk-<n>``.

    This is the storage interface, implemented here for a directory (local, or a shared
    mount such as NFS). ``checkpoint/s3.py`` implements it for an S3-compatible object
    store: there ``dir`` is a local staging directory with the same layout, files written
    into it are uploaded (``remote`` tells the workers where to), and the methods below
    that touch storage (listing, metadata, discard, shared files, fetching a checkpoint
    for a restore) talk to the store instead."""

    remote: Any = None  # where workers upload what they write below ``dir`` (None: nowhere)

    def __init__(self, root: str, flow: str) -> None:
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, flow_dir_name(flow))

    @property
    def url(self) -> str:
        """Where this flow's checkpoints are, for messages (a directory, or ``s3://...``)."""
        return self.dir

    def public_path(self, path: str) -> str:
        """How a checkpoint or savepoint directory below ``dir`` is named to users."""
        return path

    def local_path(self, public: str) -> str:
        """The directory a :meth:`public_path` stands for (the inverse)."""
        return public

    def prepare(self) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
            probe = os.path.join(self.dir, ".write-probe")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as e:
            raise ConfigurationError(
                f"checkpoint storage {self.root} is not writable ({e.strerror}); pass a "
                "directory this user can write to as enable_checkpointing(storage=...)"
            ) from e

    def path(self, cid: int) -> str:
        return os.path.join(self.dir, f"chk-{cid}")

    def _names(self) -> list[str]:
        """The names of the entries in the flow's directory."""
        try:
            return os.listdir(self.dir)
        except FileNotFoundError:
            return []

    def ids(self) -> list[int]:
        return sorted(int(m.group(1)) for n in self._names() if (m := _CHK.match(n)))

    def _on_store(self, path: str) -> Any:
        """For a savepoint at an ``s3://`` URL (any job may write one): its store and key
        prefix (``checkpoint/s3.py``); None for a directory."""
        from onceflow.checkpoint import s3

        return s3.savepoint_remote(path, self.remote) if s3.is_s3(path) else None

    def has_metadata(self, path: str) -> bool:
        """Whether the checkpoint or savepoint in directory ``path`` is complete."""
        if (at := self._on_store(path)) is not None:
            return bool(at[0].exists(f"{at[1]}/{METADATA}"))
        return os.path.exists(os.path.join(path, METADATA))

    def complete_ids(self) -> list[int]:
        return [i for i in self.ids() if self.has_metadata(self.path(i))]

    def load(self, path: str) -> CompletedCheckpoint:
        """Load and verify the checkpoint or savepoint in directory ``path``."""
        if (at := self._on_store(path)) is not None:
            from onceflow.checkpoint import s3

            return s3._load(*at)
        return load_checkpoint(path)

    def metadata(self, path: str) -> CheckpointMetadata:
        """The metadata of the checkpoint or savepoint in ``path`` (files not checked)."""
        if (at := self._on_store(path)) is not None:
            raw = at[0].get_bytes(f"{at[1]}/{METADATA}")
            if raw is None:
                raise CorruptCheckpointError(path, "no _metadata object (incomplete savepoint)")
            return decode_metadata(raw, path)
        return read_metadata(path)

    def write_metadata(self, meta: CheckpointMetadata, directory: str | None = None) -> str:
        """Make checkpoint ``meta.checkpoint_id`` (or the savepoint in ``directory``)
        complete: the one place where that happens."""
        cid = meta.checkpoint_id
        d = directory or self.path(cid)
        if (at := self._on_store(d)) is not None:  # a savepoint on a store: one
            _faults.point("coordinator.before_metadata_rename", checkpoint=cid)  # create
            at[0].put_bytes(f"{at[1]}/{METADATA}", encode_metadata(meta), create_only=True)
            return d
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, METADATA + ".tmp")
        with open(tmp, "wb") as f:
            f.write(encode_metadata(meta))
            f.flush()
            os.fsync(f.fileno())
        _faults.point("coordinator.before_metadata_rename", checkpoint=cid)
        os.rename(tmp, os.path.join(d, METADATA))
        fsync_dir(d)
        return d

    def savepoints(self) -> list[tuple[int, str]]:
        """(id, path) of the savepoints this flow took: folders ``savepoint-<id>-*`` here,
        and ``savepoint-<id>.ref`` files pointing to savepoints written elsewhere."""
        out: list[tuple[int, str]] = []
        for n in self._names():
            m = _SAVEPOINT.match(n)
            if m is None:
                continue
            path = os.path.join(self.dir, n)
            if n.endswith(".ref"):
                try:
                    with open(path, encoding="utf-8") as f:
                        path = f.read().strip()
                except OSError:
                    continue
            out.append((int(m.group(1)), path))
        return sorted(out)

    def write_savepoint_ref(self, cid: int, path: str) -> None:
        """Remember a savepoint written outside this directory (restore="latest" and
        failover consider it: its transactions are committed)."""
        on_store = self._on_store(path) is not None
        if not on_store and os.path.dirname(os.path.abspath(path)) == self.dir:
            return
        ref = os.path.join(self.dir, f"savepoint-{cid}.ref")
        with open(ref + ".tmp", "w", encoding="utf-8") as f:
            f.write(path if on_store else os.path.abspath(path))
            f.flush()
            os.fsync(f.fileno())
        os.rename(ref + ".tmp", ref)
        fsync_dir(self.dir)

    def latest_valid(self) -> CompletedCheckpoint | None:
        """The newest checkpoint or savepoint that loads and verifies; logs each one it
        skips. Savepoints count: their transactions are committed too, so resuming from an
        older checkpoint would write their output again."""
        savepoints = dict(self.savepoints())
        for cid in sorted({*self.complete_ids(), *savepoints}, reverse=True):
            if cid in savepoints:
                path = savepoints[cid]
                if not self.has_metadata(path):
                    continue  # moved or deleted by its owner, or never completed
                try:
                    return self.load(path)
                except CorruptCheckpointError as e:  # a savepoint is never moved aside
                    log.warning("%s; skipping this savepoint", e)
                    continue
            try:
                return self.load(self.path(cid))
            except CorruptCheckpointError as e:
                moved = self._move_aside(cid)
                log.warning("%s; %s and falling back to the previous checkpoint", e, moved)
        return None

    def _move_aside(self, cid: int) -> str:
        """Move corrupt checkpoint ``cid`` out of the way; says what happened."""
        aside = os.path.join(self.dir, f"corrupt-chk-{cid}")
        try:
            os.rename(self.path(cid), aside)
            return f"moved it to {aside} for inspection"
        except OSError:
            return "left it in place"

    def discard(self, cid: int) -> None:
        self.discard_path(self.path(cid))

    def discard_path(self, path: str) -> None:
        """Delete the checkpoint or savepoint in directory ``path`` with all its files."""
        if (at := self._on_store(path)) is not None:  # an aborted savepoint on a store
            remote, key = at
            remote.drop_local(key)
            try:
                remote.delete_prefix(key)
            except OnceflowError as e:
                log.warning("could not delete %s: %s", path, e)
            return
        shutil.rmtree(path, ignore_errors=True)

    def drop_staging(self, path: str) -> None:
        """A savepoint on a store completed: its local staging copy goes (each worker
        deleted its files once they were uploaded, and every one has acknowledged: only
        the emptied folders are left, and the target's, if nothing else is in it)."""
        if (at := self._on_store(path)) is not None:
            at[0].drop_local(at[1])

    def discard_incomplete(self) -> None:
        """Remove checkpoint directories that never got metadata (only when no task runs)."""
        for cid in self.ids():
            if not self.has_metadata(self.path(cid)):
                self.discard(cid)

    def shared_files(self) -> list[str]:
        """Every file under the flow's ``shared/`` folder, relative to the flow's directory
        (``shared/<owner>/<name>``)."""
        root = os.path.join(self.dir, SHARED_DIR)
        out: list[str] = []
        try:
            owners = os.listdir(root)
        except FileNotFoundError:
            return out
        for owner in owners:
            try:
                names = os.listdir(os.path.join(root, owner))
            except NotADirectoryError:
                continue
            out += [f"{SHARED_DIR}/{owner}/{n}" for n in names]
            try:
                os.rmdir(os.path.join(root, owner))  # only if empty
            except OSError:
                pass
        return out

    def delete_file(self, rel: str) -> bool:
        """Delete one file (relative to the flow's directory); False if it was not there.
        Raises OSError when it cannot be deleted."""
        try:
            os.unlink(os.path.join(self.dir, rel))
            return True
        except FileNotFoundError:
            return False

    def next_id(self) -> int:
        """Above every checkpoint and savepoint id in this flow's directory."""
        ids = self.ids()
        ids += [int(m.group(1)) for n in self._names() if (m := _SAVEPOINT.match(n))]
        return (max(ids) + 1) if ids else 1


def flow_dir_name(flow: str) -> str:
    """The folder (or key prefix) of a flow's checkpoints below the storage root."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", flow)


def open_storage(storage: Any, flow: str) -> CheckpointStorage:
    """The storage ``enable_checkpointing(storage=...)`` names: a directory, an
    ``s3://bucket/prefix`` URL, or an :class:`onceflow.S3Storage`."""
    from onceflow.checkpoint import s3

    if s3.is_s3(storage):
        return s3.S3CheckpointStorage(s3.location(storage), flow)
    return CheckpointStorage(os.fspath(storage), flow)


def resolve_restore_path(path: str, flow: str,
                         storage: CheckpointStorage | None = None) -> CompletedCheckpoint:
    """An explicit restore path: a checkpoint directory, a flow's checkpoint directory, or
    the storage root the flow was configured with; or the same as an ``s3://`` URL (with
    the job's S3 settings when ``storage`` is on the same store)."""
    from onceflow.checkpoint import s3

    if s3.is_s3(path):
        return s3.resolve_restore_url(path, flow, storage)
    p = os.path.abspath(path)
    if not os.path.isdir(p):
        raise NoCheckpointError(f"restore path {p} does not exist or is not a directory")
    if os.path.exists(os.path.join(p, METADATA)):
        return load_checkpoint(p)
    for candidate in (p, CheckpointStorage(p, flow).dir):
        st = CheckpointStorage.__new__(CheckpointStorage)
        st.root, st.dir = candidate, candidate
        if st.complete_ids():
            found = st.latest_valid()
            if found is not None:
                return found
            raise NoCheckpointError(
                f"every checkpoint under {candidate} is corrupt or incomplete (see the "
                "warnings above); pass an intact checkpoint directory"
            )
    raise NoCheckpointError(
        f"restore path {p} holds no complete checkpoint (no chk-<n>/_metadata); pass a "
        "checkpoint directory such as <storage>/<flow>/chk-<n>, or restore='latest'"
    )
