"""``FileSink``: exactly-once files through two-phase commit.

* begin: choose the names ``.{prefix}-{subtask}-{seq}-{token}.jsonl.inprogress`` (hidden) and
  ``{prefix}-{subtask}-{seq}-{token}.jsonl`` (final); the file is created on the first write.
* write: append encoded records.
* pre-commit: flush, fsync, close. The hidden file now survives a crash.
* commit: atomic ``rename`` to the final name and fsync of the directory; if the hidden file
  is gone and the final one exists, it was committed before: success.
* abort / abort_lingering: delete hidden files no completed checkpoint covers.

Readers that skip names starting with ``.`` never see a partial or uncommitted file.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from onceflow import _faults
from onceflow._fsutil import fsync_dir
from onceflow.connectors.sinks import SinkContext
from onceflow.connectors.two_phase import TwoPhaseCommitSink
from onceflow.errors import ConfigurationError, UserFunctionError


@dataclass(frozen=True)
class FileTxn:
    """A pending file transaction: the hidden temporary path and the final path."""

    tmp: str
    final: str


def _json_line(record: Any) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


class FileSink(TwoPhaseCommitSink[FileTxn]):
    """Write records as JSON lines (or with ``serializer``, a function returning ``str`` or
    ``bytes`` for one record, newline added) into ``directory``, exactly once.

    One file per sink subtask per checkpoint that saw records."""

    def __init__(self, directory: str | os.PathLike[str], *, prefix: str = "part",
                 serializer: Callable[[Any], str | bytes] | None = None) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", prefix):
            raise ConfigurationError(
                f"FileSink: prefix {prefix!r} must be letters, digits, '_', '-', '.' and not "
                "start with '.'"
            )
        self.prefix = prefix
        self.serializer = serializer
        self._ctx: SinkContext | None = None
        self._seq = 0
        self._files: dict[str, BinaryIO] = {}

    def validate(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise ConfigurationError(
                f"FileSink: cannot create output directory {self.directory}: {e.strerror}"
            ) from e
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigurationError(f"FileSink: output directory {self.directory} is not writable")

    # --- lifecycle -----------------------------------------------------------------------
    def open(self, ctx: SinkContext) -> None:
        self._ctx = ctx
        os.makedirs(self.directory, exist_ok=True)

    def begin_transaction(self) -> FileTxn:
        assert self._ctx is not None
        name = f"{self.prefix}-{self._ctx.subtask:03d}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.jsonl"
        self._seq += 1
        return FileTxn(
            tmp=os.path.join(self.directory, f".{name}.inprogress"),
            final=os.path.join(self.directory, name),
        )

    def write(self, txn: FileTxn, records: list[Any]) -> None:
        f = self._files.get(txn.tmp)
        if f is None:
            f = self._files[txn.tmp] = open(txn.tmp, "ab")
        ser = self.serializer
        try:
            if ser is None:
                data = b"".join(map(_json_line, records))
            else:
                data = b"".join(_encode(ser(r)) + b"\n" for r in records)
        except (TypeError, orjson.JSONEncodeError, ValueError) as e:
            bad = next((r for r in records if not _encodable(r, ser)), records[0])
            raise UserFunctionError(
                f"FileSink({self.directory})", bad,
                TypeError(f"cannot encode record as a line ({e}); pass serializer=... "
                          "to FileSink"),
            ) from e
        f.write(data)

    def pre_commit(self, txn: FileTxn) -> None:
        f = self._files.pop(txn.tmp, None)
        if f is None:
            return  # nothing written: nothing to make durable, commit will be a no-op
        f.flush()
        os.fsync(f.fileno())
        f.close()

    def commit(self, txn: FileTxn) -> None:
        try:
            os.rename(txn.tmp, txn.final)
        except FileNotFoundError:
            return  # committed before (or empty): idempotent
        ctx = self._ctx
        _faults.point("sink.mid_commit", subtask=ctx.subtask if ctx else -1)
        fsync_dir(self.directory)

    def abort(self, txn: FileTxn) -> None:
        f = self._files.pop(txn.tmp, None)
        if f is not None:
            f.close()
        try:
            os.unlink(txn.tmp)
        except FileNotFoundError:
            pass

    def abort_lingering(self, ctx: SinkContext, keep: list[FileTxn]) -> None:
        keep_names = {os.path.basename(t.tmp) for t in keep}
        pattern = re.compile(rf"^\.{re.escape(self.prefix)}-(\d+)-.*\.inprogress$")
        for name in os.listdir(self.directory):
            m = pattern.match(name)
            if m and int(m.group(1)) % ctx.parallelism == ctx.subtask and name not in keep_names:
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass

    def snapshot_state(self, checkpoint_id: int) -> Any:
        return self._seq

    def restore_state(self, states: list[Any]) -> None:
        self._seq = max((s for s in states if s is not None), default=0)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _encode(v: str | bytes) -> bytes:
    return v.encode() if isinstance(v, str) else v


def _encodable(r: Any, ser: Callable[[Any], str | bytes] | None) -> bool:
    try:
        _json_line(r) if ser is None else _encode(ser(r))
        return True
    except Exception:
        return False


def read_committed(directory: str | os.PathLike[str], prefix: str = "part") -> list[Any]:
    """Every record committed by a JSON-lines ``FileSink`` in ``directory`` (hidden files,
    i.e. uncommitted transactions, skipped). For tests and verification."""
    out: list[Any] = []
    d = os.fspath(directory)
    for name in sorted(os.listdir(d)):
        if name.startswith(".") or not name.startswith(prefix + "-"):
            continue
        with open(os.path.join(d, name), "rb") as f:
            out.extend(orjson.loads(line) for line in f if line.strip())
    return out
