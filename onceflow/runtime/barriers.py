"""Barrier handling at a task's inputs: one class per guarantee.

* :class:`AlignedBarrierHandler` (exactly-once): once barrier ``n`` arrived on a channel the
  channel is blocked until ``n`` arrived on every live channel; then the task snapshots. No
  record after barrier ``n`` can reach the state before the snapshot.
* :class:`BarrierTracker` (at-least-once): never blocks; the task snapshots when barrier
  ``n`` has arrived on every live channel. Records after the barrier on fast channels may
  already be in the state, so they are replayed after a recovery (duplicates).

Both call ``on_aligned(barrier, alignment_seconds)`` exactly once per checkpoint, in order,
and ignore barriers of checkpoints that were aborted or superseded.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from onceflow.runtime.channels import InputChannel
from onceflow.runtime.events import Barrier

OnAligned = Callable[[Barrier, float], None]


class AlignmentState(enum.Enum):
    IDLE = "idle"
    ALIGNING = "aligning"


class _BarrierHandlerBase:
    def __init__(self, channels: list[InputChannel], on_aligned: OnAligned) -> None:
        self.channels = channels
        self.on_aligned = on_aligned
        self.latest_done = 0  # highest checkpoint id snapshotted or given up

    def _live(self) -> list[InputChannel]:
        return [c for c in self.channels if not c.ended]


class AlignedBarrierHandler(_BarrierHandlerBase):
    def __init__(self, channels: list[InputChannel], on_aligned: OnAligned) -> None:
        super().__init__(channels, on_aligned)
        self.state = AlignmentState.IDLE
        self.current: Barrier | None = None
        self.arrived: set[int] = set()
        self.started = 0.0

    def on_barrier(self, channel: InputChannel, barrier: Barrier) -> None:
        cid = barrier.checkpoint_id
        if cid <= self.latest_done:
            return  # aborted or superseded checkpoint: ignore
        if self.state is AlignmentState.ALIGNING:
            assert self.current is not None
            if cid < self.current.checkpoint_id:
                return  # an older checkpoint's barrier: that one can no longer complete here
            if cid > self.current.checkpoint_id:
                self._cancel()  # a newer barrier supersedes the one being aligned
        if self.state is AlignmentState.IDLE:
            self.state = AlignmentState.ALIGNING
            self.current = barrier
            self.arrived = set()
            self.started = time.perf_counter()
        self.arrived.add(channel.id)
        channel.blocked = True
        self._maybe_done()

    def on_end_of_input(self, channel: InputChannel) -> None:
        channel.ended = True
        if self.state is AlignmentState.ALIGNING:
            self._maybe_done()

    def _maybe_done(self) -> None:
        if any(c.id not in self.arrived for c in self._live()):
            return
        barrier = self.current
        assert barrier is not None
        waited = time.perf_counter() - self.started
        self._release()
        self.latest_done = barrier.checkpoint_id
        self.on_aligned(barrier, waited)

    def abort(self, checkpoint_id: int) -> None:
        if self.state is AlignmentState.ALIGNING and self.current is not None \
                and self.current.checkpoint_id <= checkpoint_id:
            self._cancel()
        self.latest_done = max(self.latest_done, checkpoint_id)

    def _cancel(self) -> None:
        assert self.current is not None
        self.latest_done = max(self.latest_done, self.current.checkpoint_id)
        self._release()

    def _release(self) -> None:
        for c in self.channels:
            c.blocked = False
        self.state = AlignmentState.IDLE
        self.current = None
        self.arrived = set()


class BarrierTracker(_BarrierHandlerBase):
    def __init__(self, channels: list[InputChannel], on_aligned: OnAligned) -> None:
        super().__init__(channels, on_aligned)
        self.seen: dict[int, tuple[Barrier, set[int], float]] = {}

    def on_barrier(self, channel: InputChannel, barrier: Barrier) -> None:
        cid = barrier.checkpoint_id
        if cid <= self.latest_done:
            return
        entry = self.seen.setdefault(cid, (barrier, set(), time.perf_counter()))
        entry[1].add(channel.id)
        self._check()

    def on_end_of_input(self, channel: InputChannel) -> None:
        channel.ended = True
        self._check()

    def _check(self) -> None:
        live = {c.id for c in self._live()}
        for cid in sorted(self.seen):
            if cid not in self.seen:
                continue
            barrier, arrived, started = self.seen[cid]
            if live <= arrived:
                # Everything older than a completed one can never complete any more.
                for old in [k for k in self.seen if k <= cid]:
                    del self.seen[old]
                self.latest_done = cid
                self.on_aligned(barrier, time.perf_counter() - started)

    def abort(self, checkpoint_id: int) -> None:
        for k in [k for k in self.seen if k <= checkpoint_id]:
            del self.seen[k]
        self.latest_done = max(self.latest_done, checkpoint_id)


def make_handler(exactly_once: bool, channels: list[InputChannel],
                 on_aligned: OnAligned) -> AlignedBarrierHandler | BarrierTracker:
    cls = AlignedBarrierHandler if exactly_once else BarrierTracker
    return cls(channels, on_aligned)
