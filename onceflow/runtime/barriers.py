"""Barrier handling at a task's inputs: one class per guarantee.

* :class:`AlignedBarrierHandler` (exactly-once): once barrier ``n`` arrived on a channel the
  channel is blocked until ``n`` arrived on every live channel; then the task snapshots. No
  record after barrier ``n`` can reach the state before the snapshot.
* :class:`BarrierTracker` (at-least-once): never blocks; the task snapshots when barrier
  ``n`` has arrived on every live channel. Records after the barrier on fast channels may
  already be in the state, so they are replayed after a recovery (duplicates).
* :class:`UnalignedBarrierHandler` (exactly-once, unaligned, optionally after an alignment
  timeout): barrier ``n`` overtakes the queued records, the task snapshots at once, and
  the overtaken records are persisted as in-flight data with the snapshot.

Both call ``on_aligned(barrier, alignment_seconds)`` exactly once per checkpoint, in order,
and ignore barriers of checkpoints that were aborted or superseded.
"""

from __future__ import annotations

import enum
import pickle
import time
from collections.abc import Callable

from onceflow import _faults
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


class _AligningHandlerBase(_BarrierHandlerBase):
    """What the exactly-once handlers share: the checkpoint in progress (``current``), the
    channels its barrier arrived on, and how it ends without completing (superseded or
    aborted: the blocked channels are released)."""

    def __init__(self, channels: list[InputChannel], on_aligned: OnAligned) -> None:
        super().__init__(channels, on_aligned)
        self.current: Barrier | None = None
        self.arrived: set[int] = set()
        self.started = 0.0

    def _all_arrived(self) -> bool:
        return all(c.id in self.arrived for c in self._live())

    def abort(self, checkpoint_id: int) -> None:
        if self.current is not None and self.current.checkpoint_id <= checkpoint_id:
            self._cancel()
        self.latest_done = max(self.latest_done, checkpoint_id)

    def _cancel(self) -> None:
        assert self.current is not None
        self.latest_done = max(self.latest_done, self.current.checkpoint_id)
        self._release()

    def _release(self) -> None:
        for c in self.channels:
            c.blocked = False
        self.current = None
        self.arrived = set()


class AlignedBarrierHandler(_AligningHandlerBase):
    def __init__(self, channels: list[InputChannel], on_aligned: OnAligned) -> None:
        super().__init__(channels, on_aligned)
        self.state = AlignmentState.IDLE  # ALIGNING exactly while ``current`` is set

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
        if not self._all_arrived():
            return
        barrier = self.current
        assert barrier is not None
        waited = time.perf_counter() - self.started
        self._release()
        self.latest_done = barrier.checkpoint_id
        self.on_aligned(barrier, waited)

    def _release(self) -> None:
        super()._release()
        self.state = AlignmentState.IDLE


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


class UnalignedBarrierHandler(_AligningHandlerBase):
    """Exactly-once without waiting: barrier ``n`` overtakes the records queued before it.

    On the first barrier ``n`` the task snapshots at once (``on_snapshot``) and forwards the
    barrier; the records the barrier overtook on that channel, and every record read from
    a channel before its barrier ``n`` arrives (and those its barrier overtakes there), are
    the checkpoint's **in-flight data**: processed normally now, and persisted with the
    snapshot so that a restore replays them into their channels before anything else. When
    every live channel delivered barrier ``n``, ``on_inflight(barrier, inflight, seconds)``
    hands the in-flight data (pickled, per channel id, in order) to the task, which writes
    the state. A checkpoint that completes while still aligned calls ``on_aligned`` as the
    other handlers do.

    ``timeout`` (the alignment timeout): a checkpoint starts aligned (channels block as in
    :class:`AlignedBarrierHandler`) and turns unaligned once ``timeout`` seconds passed since
    it was triggered (the barrier's timestamp) without its barrier having arrived on every
    channel: a barrier still queued behind records then overtakes them. None: unaligned
    from the first barrier.
    Savepoints and the final checkpoint are always aligned (their in-flight data would not
    be restorable at another parallelism, or would never be committed).

    The task calls :meth:`priority` to learn whether a barrier waiting in a queue may be
    taken out of order now, :meth:`on_barrier` with the records it overtook, and
    :meth:`record` for every item it reads from a channel while that channel is collected.
    """

    def __init__(self, channels: list[InputChannel], on_aligned: OnAligned,
                 on_snapshot: OnAligned,
                 on_inflight: Callable[[Barrier, dict[int, list[bytes]], float], None],
                 timeout: float | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(channels, on_aligned)
        self.wall = wall
        self.on_snapshot = on_snapshot
        self.on_inflight = on_inflight
        self.timeout = timeout
        self.clock = clock
        self.unaligned = False  # the current checkpoint has switched to unaligned
        self.collecting: set[int] = set()  # channels whose reads are in-flight data
        self.inflight: dict[int, list[bytes]] = {}
        self.inflight_bytes = 0

    # --- what the task asks ----------------------------------------------------------------
    def _may_overtake(self, barrier: Barrier) -> bool:
        return not barrier.final and barrier.savepoint is None

    def priority(self, barrier: Barrier) -> bool:
        """May ``barrier``, still behind records in its queue, be taken now?"""
        cid = barrier.checkpoint_id
        if cid <= self.latest_done:
            return True  # a stale barrier: taking it out early changes nothing
        if not self._may_overtake(barrier):
            return False
        if self.current is not None and cid == self.current.checkpoint_id:
            return self.unaligned or self._expired(barrier)
        return self._expired(barrier)

    def _expired(self, barrier: Barrier) -> bool:
        """Unaligned from the start, or aligned for longer than the timeout allows."""
        return self.timeout is None or self.wall() - barrier.timestamp >= self.timeout

    def check_timeout(self) -> bool:
        """Called by the task while aligning: switch to unaligned once the timeout passed.
        True when it switched (the task then looks for overtaking barriers again)."""
        cur = self.current
        if cur is None or self.unaligned or not self._may_overtake(cur) \
                or not self._expired(cur):
            return False
        self._go_unaligned()
        return True

    # --- events ----------------------------------------------------------------------------
    def on_barrier(self, channel: InputChannel, barrier: Barrier,
                   overtaken: list[object] | None = None) -> None:
        cid = barrier.checkpoint_id
        if cid <= self.latest_done:
            return
        if self.current is not None:
            if cid < self.current.checkpoint_id:
                return
            if cid > self.current.checkpoint_id:
                self._cancel()  # a newer checkpoint supersedes the one in progress
        if self.current is None:
            self.current = barrier
            self.arrived = set()
            self.inflight = {}
            self.inflight_bytes = 0
            self.started = self.clock()
            self.unaligned = False
            if self._may_overtake(barrier) and self._expired(barrier):
                self._go_unaligned(first=channel)
        self.arrived.add(channel.id)
        self.collecting.discard(channel.id)
        if self.unaligned:
            if overtaken:
                self._capture(channel.id, overtaken)
        else:
            channel.blocked = True
        self._maybe_done()

    def record(self, channel: InputChannel, item: object) -> None:
        """The task read ``item`` from ``channel`` before its barrier: it is in-flight."""
        if channel.id in self.collecting:
            self._capture(channel.id, [item])

    def on_end_of_input(self, channel: InputChannel) -> None:
        channel.ended = True
        self.collecting.discard(channel.id)
        if self.current is not None:
            self._maybe_done()

    # --- inside ------------------------------------------------------------------------------
    def _go_unaligned(self, first: InputChannel | None = None) -> None:
        """Snapshot now; from here on reads before a channel's barrier are in-flight."""
        barrier = self.current
        assert barrier is not None
        self.unaligned = True
        for c in self.channels:
            c.blocked = False  # channels blocked while aligning: what follows is post-barrier
        self.collecting.clear()
        self.collecting.update(c.id for c in self._live()
                               if c.id not in self.arrived and c is not first)
        _faults.point("unaligned.overtaken", checkpoint=barrier.checkpoint_id)
        self.on_snapshot(barrier, self.clock() - self.started)

    def _capture(self, channel: int, items: list[object]) -> None:
        out = self.inflight.setdefault(channel, [])
        for it in items:
            if type(it) is Barrier:
                continue  # an older checkpoint's barrier: nothing to replay
            data = pickle.dumps(it, protocol=5)
            out.append(data)
            self.inflight_bytes += len(data)

    def _maybe_done(self) -> None:
        if not self._all_arrived():
            return
        barrier = self.current
        assert barrier is not None
        waited = self.clock() - self.started
        unaligned, inflight = self.unaligned, self.inflight
        self._release()
        self.latest_done = barrier.checkpoint_id
        if unaligned:
            self.on_inflight(barrier, inflight, waited)
        else:
            self.on_aligned(barrier, waited)

    def _release(self) -> None:
        super()._release()
        self.unaligned = False
        self.collecting.clear()  # the same set object: the task holds a reference to it
        self.inflight = {}
