"""When failed checkpoints fail the job (``tolerable_failures``).

An aborted checkpoint *counts* unless it was subsumed by a newer complete one or cut short
by a restart. More than ``tolerable_failures`` counted failures in a row fail the job (the
restart strategy then decides); a completed checkpoint resets the count. Some failures end
the attempt whatever the count: the final checkpoint's (the job cannot finish without it)
and a stop-with-savepoint's (its sources already ended their input).
"""

from __future__ import annotations

from onceflow.checkpoint.kinds import CheckpointKind
from onceflow.errors import CheckpointFailuresExceeded


class FailurePolicy:
    def __init__(self, tolerable: int) -> None:
        self.tolerable = tolerable
        self.consecutive = 0

    def succeeded(self) -> None:
        self.consecutive = 0

    def reset(self) -> None:
        self.consecutive = 0

    def aborted(self, cid: int, kind: CheckpointKind, final: bool, reason: str, *,
                counted: bool, running: bool) -> None:
        """Checkpoint ``cid`` was aborted; raise CheckpointFailuresExceeded to end the
        attempt. ``running``: tasks still run (not a restart's clean-up)."""
        if kind.stops_job and final and running:
            raise CheckpointFailuresExceeded(
                f"stop-with-savepoint {cid} failed ({reason}); the job restarts from its "
                "last complete checkpoint and keeps running")
        if not counted or not kind.counts_failures:
            return
        self.consecutive += 1
        if final:
            raise CheckpointFailuresExceeded(f"the final checkpoint {cid} failed: {reason}")
        if self.consecutive > self.tolerable:
            raise CheckpointFailuresExceeded(
                f"{self.consecutive} consecutive checkpoint failure(s), more than "
                f"tolerable_failures={self.tolerable}; last: checkpoint {cid} {reason}")
