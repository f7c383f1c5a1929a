"""What checkpoints cost and how they ended: the records the coordinator keeps, the job
result returns and the dashboard shows."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class CheckpointStatus(enum.Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    ABORTED = "aborted"


#: the legal moves of a checkpoint's status
LEGAL = {
    CheckpointStatus.PENDING: {CheckpointStatus.COMPLETED, CheckpointStatus.ABORTED},
    CheckpointStatus.COMPLETED: set(),
    CheckpointStatus.ABORTED: set(),
}


@dataclass(frozen=True)
class SubtaskCheckpointStats:
    task: str
    subtask: int
    sync_ms: float
    async_ms: float
    alignment_ms: float
    size: int
    unaligned: bool = False  # this subtask's snapshot holds in-flight data
    inflight_bytes: int = 0  # bytes of in-flight data it persisted


@dataclass
class CheckpointStats:
    """What one checkpoint cost. Durations in seconds unless the name says ms."""

    id: int
    status: CheckpointStatus
    trigger_time: float  # wall clock, seconds since the epoch
    duration: float | None = None  # trigger -> complete (or abort)
    size: int = 0  # bytes of state the checkpoint references (its full size)
    final: bool = False
    path: str | None = None
    failure: str | None = None
    subtasks: list[SubtaskCheckpointStats] = field(default_factory=list)
    kind: str = "checkpoint"  # or "savepoint"
    counts_as_failure: bool = False  # aborted, and not just subsumed or cut by a restart
    incremental_size: int = 0  # bytes this checkpoint wrote (the rest it reused)

    @property
    def inflight_bytes(self) -> int:
        """In-flight data the checkpoint persisted (unaligned checkpoints)."""
        return sum(s.inflight_bytes for s in self.subtasks)

    @property
    def unaligned(self) -> bool:
        """Whether any subtask's snapshot was unaligned."""
        return any(s.unaligned for s in self.subtasks)

    @property
    def max_sync_ms(self) -> float:
        return max((s.sync_ms for s in self.subtasks), default=0.0)

    @property
    def max_async_ms(self) -> float:
        return max((s.async_ms for s in self.subtasks), default=0.0)

    @property
    def max_alignment_ms(self) -> float:
        return max((s.alignment_ms for s in self.subtasks), default=0.0)


def log_fields(event: str, flow: str, st: CheckpointStats) -> dict[str, Any]:
    """The numbers of a checkpoint log line, as fields for structured (JSON) logs."""
    return {"event": event, "flow": flow, "checkpoint_id": st.id, "final": st.final,
            "duration_ms": (st.duration or 0) * 1e3, "size": st.size,
            "incremental_size": st.incremental_size, "subtasks": len(st.subtasks),
            "max_sync_ms": st.max_sync_ms, "max_async_ms": st.max_async_ms,
            "max_alignment_ms": st.max_alignment_ms, "failure": st.failure}


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
