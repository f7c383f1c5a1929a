"""The shared-file registry: which retained checkpoints need which file under ``shared/``.

Incremental checkpoints reference files an earlier checkpoint uploaded (RocksDB SST files,
changelog bases). A file is deleted only when

1. no retained complete checkpoint references it any more, and
2. every checkpoint that was already in flight when (1) happened has finished, since a
   subtask may have referenced the file before it heard that the checkpoint holding it
   completed and the one before it was dropped.

A checkpoint triggered later cannot reference such a file: a task hears of every completion
before it sees the barrier of a checkpoint triggered after it, and then references only the
files of the newest completed checkpoint, all of which are registered.

Files that no complete checkpoint ever registered (uploads of aborted checkpoints, or of a
worker killed mid-upload) are removed by :meth:`SharedRegistry.sweep`, which runs only when
no task runs (job start and between restarts).
"""

from __future__ import annotations

import logging
import os

from onceflow.checkpoint.storage import CheckpointStorage
from onceflow.errors import CorruptCheckpointError
from onceflow.state.backend import SHARED_DIR

log = logging.getLogger("onceflow.checkpoint")


class SharedRegistry:
    def __init__(self, flow_dir: str, storage: CheckpointStorage | None = None) -> None:
        self.flow_dir = flow_dir
        self.storage = storage  # deletes files (in a directory, or objects of a store)
        self.root = os.path.join(flow_dir, SHARED_DIR)
        self.root_rel = SHARED_DIR + "/"
        self.refs: dict[str, set[int]] = {}  # file (rel. to flow dir) -> checkpoint ids
        self.by_checkpoint: dict[int, list[str]] = {}
        self.doomed: dict[str, set[int]] = {}  # unreferenced file -> in-flight ids to await
        self.deleted = 0

    def load(self, storage: CheckpointStorage) -> None:
        """Register every complete checkpoint in storage (at job start)."""
        for cid in storage.complete_ids():
            try:
                meta = storage.metadata(storage.path(cid))
            except CorruptCheckpointError:
                continue  # a corrupt one is dealt with (moved aside) by restore
            self.register(cid, list(meta.shared))

    def register(self, cid: int, files: list[str]) -> None:
        self.by_checkpoint[cid] = list(files)
        for f in files:
            self.refs.setdefault(f, set()).add(cid)
            self.doomed.pop(f, None)

    def release(self, cid: int, in_flight: set[int]) -> None:
        """Checkpoint ``cid`` was discarded: its files lose one reference."""
        for f in self.by_checkpoint.pop(cid, []):
            holders = self.refs.get(f)
            if holders is None:
                continue
            holders.discard(cid)
            if not holders:
                del self.refs[f]
                self.doomed[f] = set(in_flight)

    def collect(self, in_flight: set[int]) -> None:
        """Delete doomed files whose awaited checkpoints have all finished."""
        for f in list(self.doomed):
            waits = self.doomed[f] & in_flight
            if waits:
                self.doomed[f] = waits
                continue
            del self.doomed[f]
            if f not in self.refs:
                self._delete(f)

    def sweep(self) -> None:
        """Delete every shared file no retained checkpoint references (no task may run)."""
        self.collect(set())
        if self.storage is not None:
            files = self.storage.shared_files()
        else:
            files = CheckpointStorage.shared_files(_AtDir(self.flow_dir))
        removed = 0
        for rel in files:
            if rel not in self.refs:
                self._delete(rel)
                removed += 1
        if removed:
            log.info("removed %d shared checkpoint file(s) no retained checkpoint references "
                     "(left by aborted checkpoints or killed uploads)", removed)

    def _delete(self, rel: str) -> None:
        try:
            if self.storage is not None:
                gone = self.storage.delete_file(rel)
            else:
                gone = CheckpointStorage.delete_file(_AtDir(self.flow_dir), rel)
            self.deleted += gone
        except OSError as e:
            log.warning("could not delete shared checkpoint file %s: %s", rel, e.strerror)


class _AtDir(CheckpointStorage):
    """A directory storage whose flow directory is ``flow_dir`` itself."""

    def __init__(self, flow_dir: str) -> None:
        self.root = self.dir = flow_dir
