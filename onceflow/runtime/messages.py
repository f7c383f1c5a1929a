"""Every control message between the driver and a worker, as a typed value.

A reader of this module learns the whole control protocol; nothing else builds or takes
apart a message. The driver and the worker ``match`` on these classes. Data between
workers (record batches, barriers, end of input) travels on the channels instead
(``runtime/channels.py``, ``runtime/events.py``).

Driver -> worker::

    Trigger(checkpoint_id, timestamp, final, savepoint)   sources: emit this barrier
    Complete(checkpoint_id, final)                        checkpoint n is durable: commit
    Abort(checkpoint_id)                                  checkpoint n failed: drop it
    Stop()                                                leave the loop (the attempt ends)
    AlignWatermarks(groups)                               each alignment group's lowest
                                                          source watermark, job-wide

Worker -> driver::

    Running(worker)                       every task of the worker opened (restore done)
    Exhausted(task, subtask)              a source subtask read all its input
    Ack(checkpoint_id, task, subtask, state)   the subtask's state file is written
    Decline(checkpoint_id, task, subtask, reason)   it could not be: checkpoint n fails
    Metrics(worker, operators, watermarks, dropped, alignment)
                                          cumulative counters, about once a second
    Finished(worker, operators, watermarks, dropped)
                                          the final checkpoint committed; final counters
    Failed(worker, message, detail, report)   the worker stops because of this error

:func:`encode` and :func:`decode` are the wire format (a pickle of the message; both ends
run the same onceflow). :func:`send` and :func:`recv` move one message over a
``multiprocessing`` connection.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

# --- driver -> worker ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trigger:
    """Source tasks emit barrier ``checkpoint_id``; ``savepoint`` is the savepoint's
    directory (None for a checkpoint); ``final``: the sources end their input after it."""

    checkpoint_id: int
    timestamp: float
    final: bool
    savepoint: str | None = None


@dataclass(frozen=True, slots=True)
class Complete:
    """Checkpoint ``checkpoint_id`` is complete (its metadata is durable): sinks commit."""

    checkpoint_id: int
    final: bool


@dataclass(frozen=True, slots=True)
class Abort:
    """Checkpoint ``checkpoint_id`` was aborted: tasks drop what they hold for it."""

    checkpoint_id: int


@dataclass(frozen=True, slots=True)
class Stop:
    """The worker leaves its loop."""


@dataclass(frozen=True, slots=True)
class AlignWatermarks:
    """Watermark alignment: ``groups`` maps an alignment group to the lowest watermark of
    the non-idle source subtasks in it, over the whole job; sources pause splits that run
    more than their ``max_drift`` ahead of it."""

    groups: dict[str, float]


# --- worker -> driver ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Running:
    worker: int


@dataclass(frozen=True, slots=True)
class Exhausted:
    task: str
    subtask: int


@dataclass(frozen=True, slots=True)
class SubtaskState:
    """What a subtask wrote for one checkpoint: its state file (name, size, CRC-32), the
    operators the file holds (``stateful``: those whose snapshot held state), the files a
    backend uploaded besides it (``uploaded``: path relative to the checkpoint directory ->
    ``{"size": n}``), how long each phase took, and the operators' counters."""

    file: str
    size: int
    crc32: int
    parallelism: int
    ops: tuple[str, ...]
    stateful: tuple[str, ...]
    sync_ms: float
    async_ms: float
    align_ms: float
    metrics: dict[str, tuple[int, int]] = field(default_factory=dict)
    uploaded: dict[str, dict[str, Any]] = field(default_factory=dict)
    incremental_size: int = 0  # bytes written for this checkpoint (state file + uploads)
    unaligned: bool = False  # the state file holds in-flight data (unaligned checkpoint)
    inflight_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    checkpoint_id: int
    task: str
    subtask: int
    state: SubtaskState


@dataclass(frozen=True, slots=True)
class Decline:
    checkpoint_id: int
    task: str
    subtask: int
    reason: str


@dataclass(frozen=True, slots=True)
class Metrics:
    """``operators``: ``{"uid#subtask": (records_in, records_out, busy_ms,
    backpressured_ms)}``; ``watermarks``: ``{"uid#subtask": current event time}`` of the
    operators that have one; ``dropped``: ``{"uid#subtask": late records dropped}``;
    ``alignment``: per watermark-alignment group, the lowest watermark of this worker's
    non-idle source subtasks in it."""

    worker: int
    operators: dict[str, tuple[int, int, float, float]]
    watermarks: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    alignment: dict[str, float] = field(default_factory=dict)
    #: ``{"uid#subtask": transactions lost}`` of sinks that lost any (since the job started)
    lost: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finished:
    """``operators``: ``{"uid#subtask": (records_in, records_out)}``; ``watermarks`` and
    ``dropped`` as in :class:`Metrics`."""

    worker: int
    operators: dict[str, tuple[int, int]]
    watermarks: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)  # as in :class:`Metrics`


@dataclass(frozen=True, slots=True)
class Failed:
    """``message`` is what the user sees; ``detail`` the traceback, for debug logs;
    ``report`` the user's frames and original exception (``_usertrace.FailureReport``),
    None when it could not be made."""

    worker: int
    message: str
    detail: str
    report: Any = None


ToWorker = Trigger | Complete | Abort | Stop | AlignWatermarks
ToDriver = Running | Exhausted | Ack | Decline | Metrics | Finished | Failed
Message = ToWorker | ToDriver
_TYPES = (Trigger, Complete, Abort, Stop, AlignWatermarks, Running, Exhausted, Ack, Decline,
          Metrics, Finished, Failed)


def encode(msg: Message) -> bytes:
    return pickle.dumps(msg, protocol=5)


def decode(data: bytes) -> Message:
    msg = pickle.loads(data)  # both ends are this job's own processes
    if not isinstance(msg, _TYPES):
        raise TypeError(f"not an onceflow control message: {type(msg).__name__}")
    return msg


def send(conn: Connection, msg: Message) -> None:
    conn.send_bytes(encode(msg))


def recv(conn: Connection) -> Message:
    """The next message; raises ``EOFError`` when the other end closed."""
    return decode(conn.recv_bytes())
