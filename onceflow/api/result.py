"""What ``Flow.run()`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from onceflow.checkpoint.stats import CheckpointStats, CheckpointStatus


@dataclass
class OperatorMetrics:
    name: str
    uid: str
    parallelism: int
    records_in: int = 0
    records_out: int = 0
    #: the operator's event time at the end (the minimum over its subtasks; None before
    #: any watermark; ``inf`` once bounded input ended)
    watermark: float | None = None
    #: late records a window dropped because no ``side_output_late_data`` tag took them
    #: (counted in the last attempt)
    late_dropped: int = 0
    #: a sink's transactions of completed checkpoints found lost (aborted by the broker:
    #: their output never committed) and carried on past, since the job first started
    #: (KafkaSink with ``on_lost_transaction="continue"``)
    lost_transactions: int = 0


def _time(t: float) -> str:
    return "end of input" if t == float("inf") else f"{t:.3f}"


@dataclass
class JobResult:
    """Outcome of a finished job.

    Record counts are exactly-once counts: they are part of checkpointed state, so after
    recoveries they equal the counts of a failure-free run."""

    flow: str
    operators: dict[str, OperatorMetrics]
    checkpoints: list[CheckpointStats]
    restarts: int
    failures: list[str]
    restored_from: str | None
    started_at: float  # wall clock: run() called
    processing_started_at: float  # wall clock: every task of the first attempt running
    finished_at: float
    checkpoint_storage: str | None = None
    attempts: list[float] = field(default_factory=list)
    savepoint: str | None = None  # the path, when the job ended with stop-with-savepoint
    # each time the executor could hold fewer workers and the user allowed a lower
    # parallelism (of.executors.Ray(allow_lower_parallelism=True)): "parallelism 3 -> 2: why"
    rescales: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @property
    def processing_seconds(self) -> float:
        return self.finished_at - self.processing_started_at

    @property
    def completed_checkpoints(self) -> list[CheckpointStats]:
        return [c for c in self.checkpoints if c.status is CheckpointStatus.COMPLETED
                and c.kind == "checkpoint"]

    @property
    def savepoints(self) -> list[CheckpointStats]:
        return [c for c in self.checkpoints if c.status is CheckpointStatus.COMPLETED
                and c.kind == "savepoint"]

    @property
    def lost_transactions(self) -> int:
        """Sink transactions whose output was lost, summed over the sinks (see
        :attr:`OperatorMetrics.lost_transactions`); 0 unless a sink was told to carry on."""
        return sum(m.lost_transactions for m in self.operators.values())

    def records_in(self, name: str) -> int:
        return self.operators[name].records_in

    def records_out(self, name: str) -> int:
        return self.operators[name].records_out

    def summary(self) -> str:
        done = self.completed_checkpoints
        lines = [f"flow {self.flow!r}: {self.duration:.2f}s, {self.restarts} restart(s), "
                 f"{len(done)} checkpoint(s) completed, "
                 f"{len(self.checkpoints) - len(done)} failed"]
        for m in self.operators.values():
            wm = "" if m.watermark is None else f"  watermark {_time(m.watermark)}"
            lines.append(f"  {m.name:<24} x{m.parallelism}  in {m.records_in:>12,}  "
                         f"out {m.records_out:>12,}{wm}")
        for m in self.operators.values():
            if m.late_dropped:
                lines.append(f"  {m.name}: {m.late_dropped:,} late record(s) dropped (give the "
                             "window side_output_late_data(tag) to keep them)")
            if m.lost_transactions:
                lines.append(f"  {m.name}: {m.lost_transactions:,} transaction(s) LOST: their "
                             "output never committed (see the error logged for each)")
        if done:
            durs = sorted((c.duration or 0) * 1e3 for c in done)
            lines.append(
                f"  checkpoints: median {durs[len(durs) // 2]:.1f} ms, max {durs[-1]:.1f} ms, "
                f"max sync {max(c.max_sync_ms for c in done):.2f} ms, "
                f"last size {done[-1].size:,} B")
        if self.savepoint:
            lines.append(f"  stopped with savepoint {self.savepoint}")
        return "\n".join(lines)
