"""Which completed checkpoints to keep: the newest ``retained`` ones. Savepoints are not
counted and never deleted. A deleted checkpoint releases its shared files, which are
removed once no in-flight checkpoint can still reference them (``shared.py``)."""

from __future__ import annotations

from onceflow.checkpoint.shared import SharedRegistry
from onceflow.checkpoint.storage import CheckpointStorage


class Retention:
    def __init__(self, retained: int, storage: CheckpointStorage,
                 registry: SharedRegistry) -> None:
        self.retained = retained
        self.storage = storage
        self.registry = registry

    def apply(self, in_flight: set[int]) -> None:
        done = self.storage.complete_ids()
        for cid in done[: max(0, len(done) - self.retained)]:
            self.storage.discard(cid)
            self.registry.release(cid, in_flight)
        self.registry.collect(in_flight)
