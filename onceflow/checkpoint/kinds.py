"""What kind of snapshot a pending checkpoint is: a regular *checkpoint* or a *savepoint*.

The coordinator runs the same protocol for both; everything that differs is asked of the
kind object, never decided with an ``if savepoint`` in the protocol:

==========================  ===========================  ================================
                            :class:`RegularCheckpoint`   :class:`Savepoint`
==========================  ===========================  ================================
directory                   ``<flow>/chk-<n>``           its own folder, anywhere
shares files (incremental)  yes, under ``<flow>/shared``  no: self-contained
paces the interval          yes                          no
subsumed by a later one     yes                          never
counts toward failures      yes                          no (its requester is told)
deleted by retention        yes                          never
on completion               its shared files registered  a ``.ref`` in the flow directory
                                                         (failover considers it); the
                                                         requester gets its path
==========================  ===========================  ================================

A *stop-with-savepoint* is a savepoint that is also the job's final checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from onceflow.checkpoint.stats import CheckpointStats, human_size, log_fields

if TYPE_CHECKING:
    from onceflow.checkpoint.shared import SharedRegistry
    from onceflow.checkpoint.storage import CheckpointStorage

log = logging.getLogger("onceflow.checkpoint")

SavepointCallback = Callable[[str | None, str | None], None]  # (path, error)


class CheckpointKind:
    """The behaviour of one kind of snapshot (see the table in the module docstring)."""

    name = "checkpoint"
    shares_files = True
    paces_interval = True
    subsumable = True
    counts_failures = True
    stops_job = False
    savepoint_path: str | None = None  # what the barrier carries: a savepoint's directory

    def directory(self, storage: CheckpointStorage, cid: int) -> str:
        raise NotImplementedError

    def completed(self, cid: int, path: str, shared: list[str], storage: CheckpointStorage,
                  registry: SharedRegistry) -> None:
        """Its metadata is written (it is complete)."""

    def discard(self, storage: CheckpointStorage, cid: int) -> None:
        """It was aborted: remove what it wrote."""

    def answer(self, path: str | None, error: str | None) -> None:
        """Tell whoever asked for it how it ended (once)."""

    def log_completed(self, st: CheckpointStats, flow: str) -> None:
        raise NotImplementedError


class RegularCheckpoint(CheckpointKind):
    def directory(self, storage: CheckpointStorage, cid: int) -> str:
        return storage.path(cid)

    def completed(self, cid: int, path: str, shared: list[str], storage: CheckpointStorage,
                  registry: SharedRegistry) -> None:
        registry.register(cid, shared)

    def discard(self, storage: CheckpointStorage, cid: int) -> None:
        storage.discard(cid)

    def log_completed(self, st: CheckpointStats, flow: str) -> None:
        log.info(
            "checkpoint %d complete%s: %d subtasks, %.1f ms, %s (max sync %.1f ms, async %.1f "
            "ms, alignment %.1f ms)", st.id, " (final)" if st.final else "", len(st.subtasks),
            (st.duration or 0) * 1e3, human_size(st.size), st.max_sync_ms, st.max_async_ms,
            st.max_alignment_ms, extra=log_fields("checkpoint_completed", flow, st))


CHECKPOINT = RegularCheckpoint()


class Savepoint(CheckpointKind):
    """A savepoint into ``path``; ``on_done(path, None)`` or ``on_done(None, error)``."""

    name = "savepoint"
    shares_files = False
    paces_interval = False
    subsumable = False
    counts_failures = False

    def __init__(self, path: str, on_done: SavepointCallback | None, stop: bool) -> None:
        self.path = self.savepoint_path = path
        self.on_done = on_done
        self.stops_job = stop

    @staticmethod
    def folder(parent: str, cid: int) -> str:
        return os.path.join(parent, f"savepoint-{cid}-{time.strftime('%Y%m%d-%H%M%S')}")

    def directory(self, storage: CheckpointStorage, cid: int) -> str:
        return self.path

    def completed(self, cid: int, path: str, shared: list[str], storage: CheckpointStorage,
                  registry: SharedRegistry) -> None:
        try:
            storage.write_savepoint_ref(cid, path)
        except OSError as e:
            log.warning("could not record savepoint %d in %s (%s): restore='latest' will "
                        "not consider it", cid, storage.dir, e.strerror)
        storage.drop_staging(path)

    def discard(self, storage: CheckpointStorage, cid: int) -> None:
        storage.discard_path(self.path)

    def log_completed(self, st: CheckpointStats, flow: str) -> None:
        log.info("savepoint %d complete%s: %s, %.1f ms, %s", st.id,
                 " (the job stops)" if st.final else "", self.path,
                 (st.duration or 0) * 1e3, human_size(st.size))

    def answer(self, path: str | None, error: str | None) -> None:
        cb, self.on_done = self.on_done, None
        if cb is not None:
            cb(path, error)
