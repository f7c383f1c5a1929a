"""The ``_metadata`` of a checkpoint or savepoint: what it is, typed and versioned.

A checkpoint is complete once its ``_metadata`` file exists (``checkpoint/storage.py``
writes it atomically). The file is JSON::

    {"body": {"format": 3, ...the fields of CheckpointMetadata...}, "checksum": "<crc32>"}

:func:`encode` and :func:`decode` are the only code that writes or reads that layout;
everything else (driver, worker, storage, shared-file registry, CLI) works with
:class:`CheckpointMetadata`.

Versions (``body["format"]``):

- **1** (onceflow 0.1): the same fields, but some were added over time without a version
  change, so older files may lack ``kind``, ``stateful``, ``extra_files``, ``shared``,
  ``size``, ``incremental_size`` or ``metrics``. :func:`migrate_v1` fills them in with what
  their absence meant (``tests/golden/`` holds checkpoints of this format).
- **2**: every field is present; the decoder reads no defaults.
- **3**: adds ``unaligned_subtasks`` and ``inflight_bytes`` (unaligned checkpoints);
  :func:`migrate_v2` sets both to 0, which is what a format-2 checkpoint was.

A file of a newer format than :data:`FORMAT` is refused with an error naming its version
(a newer onceflow wrote it): nothing is guessed.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onceflow.errors import CorruptCheckpointError, IncompatibleStateError

if TYPE_CHECKING:
    from onceflow.runtime.messages import SubtaskState

FORMAT = 3

KIND_CHECKPOINT = "checkpoint"
KIND_SAVEPOINT = "savepoint"


@dataclass(frozen=True)
class SubtaskFile:
    """Old subtask ``subtask`` wrote this operator's state into state file ``file``."""

    subtask: int
    file: str


@dataclass(frozen=True)
class OperatorEntry:
    """One operator (by uid) in the checkpoint: the task that ran it, that task's
    parallelism, the operator's kind (``"source"``, ``"map"``, ...), whether any subtask's
    snapshot held state, and one state file per old subtask."""

    uid: str
    task: str
    parallelism: int
    kind: str | None
    stateful: bool
    files: tuple[SubtaskFile, ...]


@dataclass(frozen=True)
class StateFile:
    size: int
    crc32: int


@dataclass(frozen=True)
class CheckpointMetadata:
    flow: str
    checkpoint_id: int
    kind: str  # KIND_CHECKPOINT or KIND_SAVEPOINT
    final: bool
    trigger_time: float
    completion_time: float
    max_parallelism: int
    operators: dict[str, OperatorEntry]
    files: dict[str, StateFile]  # state file name (in the checkpoint directory) -> check
    # other files the checkpoint needs, path relative to its directory -> {"size": n}
    extra_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: tuple[str, ...] = ()  # files under <flow>/shared/ it references
    size: int = 0  # bytes of state it references
    incremental_size: int = 0  # bytes written for it
    # "task#subtask" -> {operator uid: [records_in, records_out]} when the snapshot was taken
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    unaligned_subtasks: int = 0  # subtasks whose snapshot held in-flight data
    inflight_bytes: int = 0  # in-flight data persisted (unaligned checkpoints)
    format: int = FORMAT

    @property
    def is_savepoint(self) -> bool:
        return self.kind == KIND_SAVEPOINT

    @property
    def duration(self) -> float:
        return self.completion_time - self.trigger_time


def from_acks(acks: Mapping[tuple[str, int], SubtaskState], *, flow: str, checkpoint_id: int,
              kind: str, final: bool, trigger_time: float, max_parallelism: int,
              op_kinds: Mapping[str, str], directory: str, flow_dir: str,
              shared_prefix: str | None) -> CheckpointMetadata:
    """The metadata of a checkpoint from the acks of all its subtasks. ``directory`` is
    where it is written; uploaded files below ``flow_dir`` that start with
    ``shared_prefix`` are its shared files (None: it shares none, a savepoint)."""
    ops: dict[str, dict[str, Any]] = {}
    files: dict[str, StateFile] = {}
    extra: dict[str, dict[str, Any]] = {}
    incremental = 0
    for (task, subtask), info in sorted(acks.items()):
        files[info.file] = StateFile(info.size, info.crc32)
        extra.update(info.uploaded)
        incremental += info.incremental_size
        for uid in info.ops:
            e = ops.setdefault(uid, {"task": task, "parallelism": info.parallelism,
                                     "stateful": False, "files": []})
            e["stateful"] = e["stateful"] or uid in info.stateful
            e["files"].append(SubtaskFile(subtask, info.file))
    shared: list[str] = []
    if shared_prefix is not None:
        rel = {os.path.relpath(os.path.normpath(os.path.join(directory, f)), flow_dir)
               for f in extra}
        shared = sorted(f for f in rel if f.startswith(shared_prefix))
    return CheckpointMetadata(
        flow=flow, checkpoint_id=checkpoint_id, kind=kind, final=final,
        trigger_time=trigger_time, completion_time=time.time(),
        max_parallelism=max_parallelism,
        operators={uid: OperatorEntry(uid, e["task"], e["parallelism"], op_kinds.get(uid),
                                      e["stateful"], tuple(e["files"]))
                   for uid, e in ops.items()},
        files=files, extra_files=extra, shared=tuple(shared),
        size=sum(f.size for f in files.values()) + sum(f["size"] for f in extra.values()),
        incremental_size=incremental,
        metrics={f"{t}#{s}": dict(info.metrics) for (t, s), info in sorted(acks.items())},
        unaligned_subtasks=sum(1 for info in acks.values() if info.unaligned),
        inflight_bytes=sum(info.inflight_bytes for info in acks.values()),
    )


def _checksum(body: dict[str, Any]) -> str:
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"


def to_body(meta: CheckpointMetadata) -> dict[str, Any]:
    """The JSON body of ``meta`` in the current format."""
    return {
        "format": FORMAT,
        "flow": meta.flow,
        "checkpoint_id": meta.checkpoint_id,
        "kind": meta.kind,
        "final": meta.final,
        "trigger_time": meta.trigger_time,
        "completion_time": meta.completion_time,
        "max_parallelism": meta.max_parallelism,
        "operators": {uid: {"task": e.task, "parallelism": e.parallelism, "kind": e.kind,
                            "stateful": e.stateful,
                            "files": [{"subtask": f.subtask, "file": f.file} for f in e.files]}
                      for uid, e in meta.operators.items()},
        "files": {n: {"size": f.size, "crc32": f.crc32} for n, f in meta.files.items()},
        "extra_files": meta.extra_files,
        "shared": list(meta.shared),
        "size": meta.size,
        "incremental_size": meta.incremental_size,
        "metrics": meta.metrics,
        "unaligned_subtasks": meta.unaligned_subtasks,
        "inflight_bytes": meta.inflight_bytes,
    }


def encode(meta: CheckpointMetadata) -> bytes:
    """The bytes of a ``_metadata`` file."""
    body = to_body(meta)
    return json.dumps({"body": body, "checksum": _checksum(body)}, indent=1,
                      sort_keys=True).encode()


def migrate_v1(body: dict[str, Any]) -> dict[str, Any]:
    """A format-1 body as a format-2 body: the fields older writers left out, with the
    meaning their absence had."""
    b = dict(body)
    ops = {}
    for uid, e in b["operators"].items():
        e = dict(e)
        e.setdefault("kind", None)  # unknown: restore does not check the kind
        e.setdefault("stateful", True)  # unknown: assume the operator held state
        ops[uid] = e
    b["operators"] = ops
    b.setdefault("kind", KIND_CHECKPOINT)
    b.setdefault("final", False)
    b.setdefault("extra_files", {})
    b.setdefault("shared", [])
    b.setdefault("size", sum(f["size"] for f in b["files"].values())
                 + sum(f["size"] for f in b["extra_files"].values()))
    b.setdefault("incremental_size", b["size"])
    b.setdefault("metrics", {})
    b.setdefault("trigger_time", b.get("completion_time", 0.0))
    b.setdefault("completion_time", b["trigger_time"])
    b["format"] = 2
    return b


def migrate_v2(body: dict[str, Any]) -> dict[str, Any]:
    """A format-2 body as format 3: it was written before unaligned checkpoints."""
    return {**body, "unaligned_subtasks": 0, "inflight_bytes": 0, "format": 3}


_MIGRATIONS = {1: migrate_v1, 2: migrate_v2}


def from_body(body: dict[str, Any], where: str) -> CheckpointMetadata:
    """Parse a body of any known format (migrating it to the current one). ``where`` names
    the checkpoint in errors."""
    version = body.get("format")
    if isinstance(version, int) and version > FORMAT:
        raise IncompatibleStateError(
            f"checkpoint {where} has metadata format {version}, newer than this onceflow "
            f"reads (formats 1 to {FORMAT}): it was written by a newer onceflow; restore it "
            "with that version")
    try:
        while version != FORMAT:
            migrate = _MIGRATIONS.get(version)  # type: ignore[arg-type]
            if migrate is None:
                raise CorruptCheckpointError(where, f"unknown metadata format {version!r}")
            body = migrate(body)
            version = body["format"]
        return CheckpointMetadata(
            flow=body["flow"],
            checkpoint_id=int(body["checkpoint_id"]),
            kind=body["kind"],
            final=bool(body["final"]),
            trigger_time=float(body["trigger_time"]),
            completion_time=float(body["completion_time"]),
            max_parallelism=int(body["max_parallelism"]),
            operators={uid: OperatorEntry(
                uid, e["task"], int(e["parallelism"]), e["kind"], bool(e["stateful"]),
                tuple(SubtaskFile(int(f["subtask"]), f["file"]) for f in e["files"]))
                for uid, e in body["operators"].items()},
            files={n: StateFile(int(f["size"]), int(f["crc32"]))
                   for n, f in body["files"].items()},
            extra_files=dict(body["extra_files"]),
            shared=tuple(body["shared"]),
            size=int(body["size"]),
            incremental_size=int(body["incremental_size"]),
            metrics=dict(body["metrics"]),
            unaligned_subtasks=int(body["unaligned_subtasks"]),
            inflight_bytes=int(body["inflight_bytes"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptCheckpointError(
            where, f"_metadata (format {body.get('format')!r}) is missing or has a bad "
            f"field: {type(e).__name__}: {e}") from None


def decode(raw: bytes, where: str) -> CheckpointMetadata:
    """Parse the bytes of a ``_metadata`` file, checking its checksum."""
    try:
        doc = json.loads(raw)
        body, checksum = doc["body"], doc["checksum"]
    except (ValueError, KeyError, TypeError):
        raise CorruptCheckpointError(where, "_metadata is not valid checkpoint metadata") \
            from None
    if not isinstance(body, dict) or _checksum(body) != checksum:
        raise CorruptCheckpointError(where, "_metadata fails its checksum")
    return from_body(body, where)
