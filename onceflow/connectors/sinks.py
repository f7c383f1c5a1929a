"""Plain sinks and the context every sink gets.

A plain :class:`Sink` writes records as they arrive: what reaches an external system before
a crash is not taken back, so its guarantee is at-least-once (with idempotent writes,
effectively once). For exactly-once use :class:`~onceflow.connectors.two_phase.TwoPhaseCommitSink`
or :class:`~onceflow.connectors.two_phase.WriteAheadSink`.

Sinks are constructed by the user as light configuration; ``open`` runs in the worker
process, so connections and files are made there.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class SinkContext:
    """Where a sink subtask runs."""

    flow: str
    uid: str  # the sink operator's uid
    subtask: int
    parallelism: int
    attempt: int  # 0 for the first run, +1 per restart
    checkpoint_interval: float | None = None  # None: checkpointing off (final one only)
    checkpoint_timeout: float | None = None
    flow_dir: str | None = None  # the flow's checkpoint directory (chk-<n>/), if any


class Sink(ABC):
    """A non-transactional sink. Override :meth:`write`; the other hooks are optional."""

    def open(self, ctx: SinkContext) -> None:  # noqa: B027 - optional hook
        """Called once in the worker before any record."""

    @abstractmethod
    def write(self, records: list[Any]) -> None:
        """Write a batch of records."""

    def snapshot_state(self, checkpoint_id: int) -> Any:
        """Operator state to checkpoint (picklable). Called in the synchronous phase."""
        return None

    def restore_state(self, states: list[Any]) -> None:  # noqa: B027 - optional hook
        """Receive the states this subtask inherits (one per old subtask; [] on fresh start)."""

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id`` is complete."""

    def finish(self) -> None:  # noqa: B027 - optional hook
        """All input has arrived (bounded jobs). Called after the sink's part of the final
        checkpoint; what it writes is not covered by any checkpoint."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class Print(Sink):
    """Print each record on standard output (or ``file``); for development. No guarantee."""

    def __init__(self, prefix: str = "", file: TextIO | None = None) -> None:
        self.prefix = prefix
        self._file = file

    def write(self, records: list[Any]) -> None:
        out = self._file or sys.stdout
        p = self.prefix
        out.write("".join(f"{p}{r!r}\n" for r in records))
        out.flush()


class Discard(Sink):
    """Count records and drop them (for benchmarks). The count is checkpointed, so after
    recovery it equals what a failure-free run counts; it appears in the job result as the
    operator's ``records_in``."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, records: list[Any]) -> None:
        self.count += len(records)

    def snapshot_state(self, checkpoint_id: int) -> Any:
        return self.count

    def restore_state(self, states: list[Any]) -> None:
        self.count = sum(s for s in states if s)
