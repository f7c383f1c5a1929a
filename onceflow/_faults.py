"""Fault injection for crash tests: SIGKILL this process at a named point.

Tests set ``ONCEFLOW_FAULT`` to ``point`` or ``point@key=value,key=value`` and
``ONCEFLOW_FAULT_TOKEN`` to a file path. Every key must be one the point supplies and equal
its value (``min_checkpoint=n`` matches checkpoints >= n). The first process that reaches
the point with matching context creates the token file (atomically, O_EXCL) and kills
itself with SIGKILL, so a fault fires exactly once per token even across restarts. Without
``ONCEFLOW_FAULT`` every call is a cheap no-op.

With ``ONCEFLOW_FAULT_ACTION=pause`` the process does not kill itself: it writes the token
file and waits (up to ``ONCEFLOW_FAULT_PAUSE`` seconds, default 300) until a file named
like the token plus ``.go`` exists, then carries on. Tests use it to break something else
(kill the Kafka broker, terminate a database connection) at exactly that moment.

Named points (context keys in brackets):
- ``worker.started`` [worker]: a worker opened its tasks (connectors, restored state) and
  is about to tell the driver it runs
- ``source.after_batch`` [task, subtask, records]: a source emitted a batch, ``records`` in all
- ``snapshot.sync`` [checkpoint, task, subtask]: inside a task's synchronous snapshot phase
- ``snapshot.async`` [checkpoint, task, subtask]: halfway through writing a state file
- ``unaligned.overtaken`` [checkpoint]: a barrier overtook queued records, the snapshot is
  not taken yet
- ``snapshot.inflight`` [checkpoint, task, subtask, inflight]: an unaligned snapshot's
  in-flight data (``inflight`` bytes) is about to be written
- ``restore.inflight`` [task, subtask]: a restored task is replaying in-flight data
- ``snapshot.upload`` [checkpoint, task, subtask]: a backend's files (RocksDB SST files,
  changelog) are uploaded, the subtask's state file is not written yet
- ``snapshot.s3_upload`` [checkpoint, task, subtask]: with S3 checkpoint storage, half of a
  subtask's files are uploaded to the object store, the rest (and its state file) not yet
- ``sink.pre_commit`` [subtask]: inside a Kafka or PostgreSQL sink's pre-commit, before
  it flushes / prepares
- ``sink.commit`` [subtask]: a PostgreSQL sink is about to send ``COMMIT PREPARED``
- ``sink.after_pre_commit`` [checkpoint, subtask]: a 2PC sink pre-committed, before the ack
- ``coordinator.before_metadata_rename`` [checkpoint]: driver, all acks in, metadata not yet
  visible
- ``coordinator.after_metadata_rename`` [checkpoint]: driver, checkpoint complete, no task
  notified yet
- ``sink.before_commit`` [checkpoint, subtask]: a worker learnt of completion, commits nothing yet
- ``sink.mid_commit`` [checkpoint, subtask]: a transaction was committed, the sink has not
  recorded it yet (before any further one); [subtask] only: inside a FileSink commit after
  the rename and before the directory fsync (and inside the PostgreSQL and Kafka commits)
"""

from __future__ import annotations

import os
import signal
import time

_SPEC = os.environ.get("ONCEFLOW_FAULT", "")
_TOKEN = os.environ.get("ONCEFLOW_FAULT_TOKEN", "")


def _parse(spec: str) -> tuple[str, dict[str, str]]:
    point, _, rest = spec.partition("@")
    ctx: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        ctx[k.strip()] = v.strip()
    return point.strip(), ctx


_POINT, _WANT = _parse(_SPEC) if _SPEC else ("", {})


def enabled() -> bool:
    return bool(_POINT)


def reload() -> None:
    """Re-read the environment (tests that set it after import)."""
    global _SPEC, _TOKEN, _POINT, _WANT
    _SPEC = os.environ.get("ONCEFLOW_FAULT", "")
    _TOKEN = os.environ.get("ONCEFLOW_FAULT_TOKEN", "")
    _POINT, _WANT = _parse(_SPEC) if _SPEC else ("", {})


def point(name: str, **ctx: object) -> None:
    """Kill this process with SIGKILL if the configured fault names this point and context."""
    if name != _POINT:
        return
    for k, v in _WANT.items():
        if k == "min_checkpoint":
            if int(str(ctx.get("checkpoint", 0))) < int(v):
                return
        elif k not in ctx or str(ctx[k]) != v:
            return  # a key this point does not supply never matches
    if _TOKEN:
        try:
            fd = os.open(_TOKEN, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return
        os.write(fd, f"{name} pid={os.getpid()} {ctx}\n".encode())
        os.fsync(fd)
        os.close(fd)
    if os.environ.get("ONCEFLOW_FAULT_ACTION") == "pause":
        deadline = time.monotonic() + float(os.environ.get("ONCEFLOW_FAULT_PAUSE", "300"))
        while not os.path.exists(_TOKEN + ".go") and time.monotonic() < deadline:
            time.sleep(0.02)
        return
    os.kill(os.getpid(), signal.SIGKILL)
