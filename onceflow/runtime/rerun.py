"""Refusing a start from the beginning over a flow's own completed checkpoints.

A run without ``restore`` starts from the beginning of the input. If the flow's checkpoint
storage already holds a completed checkpoint (or savepoint) of the same flow, the sinks
committed output for it, so a start from the beginning writes that output a second time.
That is almost always a forgotten ``restore="latest"``; starting over on purpose takes an
explicit ``fresh=True`` (``onceflow run --fresh``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from onceflow.checkpoint.storage import CheckpointStorage, load_checkpoint, open_storage
from onceflow.errors import ExistingCheckpointError, OnceflowError

if TYPE_CHECKING:
    from onceflow.api.config import CheckpointConfig

log = logging.getLogger("onceflow")


def newest_completed(storage: CheckpointStorage) -> tuple[int, str] | None:
    """(id, path) of the newest checkpoint or savepoint of this flow that has metadata
    (without verifying or moving anything)."""
    found = [(cid, storage.public_path(storage.path(cid))) for cid in storage.complete_ids()]
    found += [(cid, storage.public_path(p)) for cid, p in storage.savepoints()
              if storage.has_metadata(p)]
    return max(found) if found else None


def describe(cid: int, path: str, storage: CheckpointStorage | None = None) -> str:
    """``checkpoint 7 at <path>, completed 2026-12-01 10:00:00 UTC; the job had finished:
    ...`` (or had not, or was stopped with this savepoint)."""
    try:
        meta = (storage.load(storage.local_path(path)) if storage is not None
                else load_checkpoint(path)).meta
    except OnceflowError as e:
        return f"checkpoint {cid} at {path} (its files do not verify: {e})"
    kind = meta.kind
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(meta.completion_time))
    if meta.final and meta.is_savepoint:
        state = "the job was stopped with this savepoint"
    elif meta.final:
        state = "the job had finished: all its input was processed and committed"
    else:
        state = "the job had not finished (it was stopped, or it crashed)"
    return f"{kind} {cid} at {path}, completed {when}; {state}"


def check_fresh_start(storage: CheckpointStorage, flow: str, fresh: bool) -> None:
    """Called before a run without ``restore``: refuse it when ``storage`` holds completed
    checkpoints of ``flow``, unless ``fresh``."""
    newest = newest_completed(storage)
    if newest is None:
        return
    what = describe(*newest, storage)
    if fresh:
        log.warning("flow %r starts over (fresh=True) although its checkpoint storage holds "
                    "%s: the whole output is written again", flow, what,
                    extra={"event": "fresh_start", "flow": flow, "checkpoint_id": newest[0]})
        return
    raise ExistingCheckpointError(
        f"flow {flow!r} was run before: its checkpoint storage {storage.url} holds {what}. "
        "Starting from the beginning would write its output a second time. Choose: "
        "restore=\"latest\" (onceflow run --restore latest) continues the job from there, "
        "or fresh=True (onceflow run --fresh) starts over, writing the whole output again.",
        newest[0], newest[1])


def check_before_start(flow: str, checkpoint: CheckpointConfig | None, restore: object,
                       fresh: bool) -> None:
    """``Flow.start()`` refuses at once, in the caller's thread (not only in ``result()``)."""
    if restore is None and not fresh and checkpoint is not None and checkpoint.storage:
        check_fresh_start(open_storage(checkpoint.storage, flow), flow, fresh)
