"""Barrier handling at a task's inputs, without processes: channels are fed by hand.

The randomized tests follow Flink's ``AlignedCheckpointsMassiveRandomTest``: random
interleavings of records and barriers over a few channels, read in a random order the way a
task reads them (never from a blocked channel), checking the guarantee at every snapshot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from onceflow.runtime import barriers
from onceflow.runtime.barriers import (
    AlignedBarrierHandler,
    BarrierTracker,
    make_handler,
)
from onceflow.runtime.channels import InputChannel
from onceflow.runtime.events import END_OF_INPUT, Barrier

Handler = AlignedBarrierHandler | BarrierTracker


def barrier(cid: int) -> Barrier:
    return Barrier(cid, 1000.0 + cid)


class Recorder:
    """The ``on_aligned`` callback: remembers every snapshot with what was processed."""

    def __init__(self, processed: list[Any] | None = None) -> None:
        self.processed = processed if processed is not None else []
        self.snapshots: list[tuple[Barrier, list[Any]]] = []
        self.waits: list[float] = []

    def __call__(self, b: Barrier, waited: float) -> None:
        self.snapshots.append((b, list(self.processed)))
        self.waits.append(waited)

    @property
    def ids(self) -> list[int]:
        return [b.checkpoint_id for b, _ in self.snapshots]


def make(kind: type[Handler], n: int) -> tuple[Handler, list[InputChannel], Recorder]:
    chans = [InputChannel(i) for i in range(n)]
    rec = Recorder()
    return kind(chans, rec), chans, rec


# --- exactly-once: AlignedBarrierHandler --------------------------------------------------
def test_make_handler_picks_the_class_for_the_guarantee() -> None:
    chans = [InputChannel(0)]
    assert type(make_handler(True, chans, Recorder())) is AlignedBarrierHandler
    assert type(make_handler(False, chans, Recorder())) is BarrierTracker


def test_channel_with_barrier_is_blocked_until_every_channel_delivered_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [10.0]  # a fake clock: alignment time is measured from the first barrier
    monkeypatch.setattr(barriers.time, "perf_counter", lambda: now[0])
    h, (a, b, c), rec = make(AlignedBarrierHandler, 3)
    h.on_barrier(a, barrier(1))
    now[0] = 11.5
    assert (a.blocked, b.blocked, c.blocked) == (True, False, False)
    h.on_barrier(c, barrier(1))
    assert (a.blocked, b.blocked, c.blocked) == (True, False, True)
    assert rec.snapshots == []
    now[0] = 12.25
    h.on_barrier(b, barrier(1))
    assert not any(ch.blocked for ch in (a, b, c))
    assert [b for b, _ in rec.snapshots] == [barrier(1)]
    assert rec.waits == [2.25]  # from the first barrier (10.0) to the last (12.25)


def test_on_aligned_is_called_once_per_checkpoint_in_order() -> None:
    h, chans, rec = make(AlignedBarrierHandler, 2)
    for cid in (1, 2, 3):
        for ch in chans:
            h.on_barrier(ch, barrier(cid))
    assert rec.ids == [1, 2, 3]
    assert [b.timestamp for b, _ in rec.snapshots] == [1001.0, 1002.0, 1003.0]


def test_single_channel_aligns_immediately() -> None:
    h, (a,), rec = make(AlignedBarrierHandler, 1)
    h.on_barrier(a, barrier(1))
    assert rec.ids == [1]
    assert not a.blocked


def test_a_newer_barrier_while_aligning_cancels_the_older_checkpoint() -> None:
    h, (a, b), rec = make(AlignedBarrierHandler, 2)
    h.on_barrier(a, barrier(1))
    h.on_barrier(b, barrier(2))  # b's upstream skipped checkpoint 1
    assert rec.snapshots == []
    assert not a.blocked, "a must be released: it has to deliver barrier 2 as well"
    assert b.blocked
    h.on_barrier(a, barrier(2))
    assert rec.ids == [2]
    assert not a.blocked and not b.blocked


def test_an_older_barrier_while_aligning_a_newer_one_is_ignored() -> None:
    h, (a, b), rec = make(AlignedBarrierHandler, 2)
    h.on_barrier(a, barrier(2))  # a's upstream skipped checkpoint 1
    h.on_barrier(b, barrier(1))  # superseded by 2: b has not delivered 2 yet
    assert rec.snapshots == [], "checkpoint 2 must wait for barrier 2 on b"
    assert not b.blocked, "b must keep flowing until its barrier 2"
    h.on_barrier(b, barrier(2))
    assert rec.ids == [2]


def test_barriers_of_completed_checkpoints_are_ignored() -> None:
    h, (a, b), rec = make(AlignedBarrierHandler, 2)
    h.on_barrier(a, barrier(1))
    h.on_barrier(b, barrier(1))
    h.on_barrier(a, barrier(1))  # a duplicate must not start a new alignment
    assert not a.blocked
    assert rec.ids == [1]


def test_abort_releases_blocked_channels_and_ignores_late_barriers() -> None:
    h, (a, b), rec = make(AlignedBarrierHandler, 2)
    h.on_barrier(a, barrier(1))
    assert a.blocked
    h.abort(1)
    assert not a.blocked
    h.on_barrier(b, barrier(1))  # the late barrier of the aborted checkpoint
    assert not b.blocked
    assert rec.snapshots == []
    for ch in (a, b):
        h.on_barrier(ch, barrier(2))
    assert rec.ids == [2]


def test_abort_of_an_older_checkpoint_keeps_aligning_the_current_one() -> None:
    h, (a, b), rec = make(AlignedBarrierHandler, 2)
    h.on_barrier(a, barrier(2))
    h.abort(1)
    assert a.blocked
    h.on_barrier(b, barrier(2))
    assert rec.ids == [2]


def test_abort_of_a_checkpoint_not_seen_yet_ignores_its_barriers_later() -> None:
    h, (a, b), rec = make(AlignedBarrierHandler, 2)
    h.abort(1)
    h.on_barrier(a, barrier(1))
    assert not a.blocked
    h.on_barrier(b, barrier(1))
    assert rec.snapshots == []


def test_end_of_input_counts_as_aligned_for_that_channel() -> None:
    h, (a, b, c), rec = make(AlignedBarrierHandler, 3)
    h.on_barrier(a, barrier(1))
    h.on_end_of_input(b)
    assert rec.snapshots == []
    h.on_barrier(c, barrier(1))
    assert rec.ids == [1]
    # Later checkpoints no longer wait for the ended channel.
    h.on_barrier(a, barrier(2))
    assert rec.ids == [1]
    h.on_barrier(c, barrier(2))
    assert rec.ids == [1, 2]


def test_end_of_input_of_the_last_missing_channel_completes_alignment() -> None:
    h, (a, b), rec = make(AlignedBarrierHandler, 2)
    h.on_barrier(a, barrier(1))
    h.on_end_of_input(b)
    assert rec.ids == [1]
    assert not a.blocked


# --- at-least-once: BarrierTracker --------------------------------------------------------
def test_tracker_never_blocks_and_snapshots_when_all_channels_delivered() -> None:
    h, (a, b), rec = make(BarrierTracker, 2)
    h.on_barrier(a, barrier(1))
    h.on_barrier(a, barrier(2))
    assert not a.blocked and not b.blocked
    assert rec.snapshots == []
    h.on_barrier(b, barrier(1))
    assert rec.ids == [1]
    h.on_barrier(b, barrier(2))
    assert rec.ids == [1, 2]


def test_tracker_completing_a_newer_checkpoint_drops_older_ones() -> None:
    h, (a, b), rec = make(BarrierTracker, 2)
    h.on_barrier(a, barrier(1))
    h.on_barrier(a, barrier(2))
    h.on_barrier(b, barrier(2))  # b skipped 1
    assert rec.ids == [2]
    h.on_barrier(b, barrier(1))  # too old now
    assert rec.ids == [2]


def test_tracker_end_of_input_completing_several_checkpoints_snapshots_the_newest() -> None:
    h, (a, b), rec = make(BarrierTracker, 2)
    h.on_barrier(a, barrier(1))
    h.on_barrier(a, barrier(2))
    h.on_end_of_input(b)  # now checkpoints 1 and 2 have their barriers on every live channel
    assert rec.ids and rec.ids[-1] == 2, (
        f"snapshots {rec.ids}: checkpoint 2 is complete at this task but never snapshotted, "
        "so it can only time out")


def test_tracker_abort_and_end_of_input() -> None:
    h, (a, b), rec = make(BarrierTracker, 2)
    h.on_barrier(a, barrier(1))
    h.abort(1)
    h.on_barrier(b, barrier(1))
    assert rec.snapshots == []
    h.on_barrier(a, barrier(2))
    h.on_end_of_input(b)
    assert rec.ids == [2]


# --- randomized interleavings --------------------------------------------------------------
@dataclass
class Scenario:
    streams: list[list[Any]]  # per channel: ("rec", ch, i), Barrier, END_OF_INPUT
    checkpoints: int
    skips: bool
    before: dict[tuple[int, int], set[tuple[str, int, int]]] = field(default_factory=dict)
    after: dict[tuple[int, int], set[tuple[str, int, int]]] = field(default_factory=dict)
    records: dict[int, set[tuple[str, int, int]]] = field(default_factory=dict)


def random_scenario(rng: random.Random, skips: bool) -> Scenario:
    n_channels = rng.randint(2, 4)
    checkpoints = rng.randint(1, 6)
    streams: list[list[Any]] = []
    for ch in range(n_channels):
        items: list[Any] = []
        i = 0
        # A channel may end early (its upstream finished) and, with skips, may miss barriers
        # of checkpoints its upstream cancelled; barrier ids on one channel always increase.
        last = checkpoints if rng.random() < 0.8 else rng.randint(0, checkpoints)
        for cid in range(1, last + 1):
            for _ in range(rng.randint(0, 4)):
                items.append(("rec", ch, i))
                i += 1
            if not (skips and cid < checkpoints and rng.random() < 0.25):
                items.append(barrier(cid))
        for _ in range(rng.randint(0, 4)):
            items.append(("rec", ch, i))
            i += 1
        items.append(END_OF_INPUT)
        streams.append(items)
    sc = Scenario(streams, checkpoints, skips)
    for ch, items in enumerate(streams):
        recs = [x for x in items if isinstance(x, tuple)]
        sc.records[ch] = set(recs)
        seen: set[Any] = set()
        for x in items:
            if isinstance(x, Barrier):
                sc.before[(ch, x.checkpoint_id)] = set(seen)
                sc.after[(ch, x.checkpoint_id)] = set(recs) - seen
            elif isinstance(x, tuple):
                seen.add(x)
    return sc


def simulate(sc: Scenario, kind: type[Handler],
             rng: random.Random) -> tuple[Recorder, dict[int, list[Any]], bool]:
    """Read the channels in a random order, as a task does, until nothing can be read.
    Returns the snapshots, what was left unread, and whether any channel was ever blocked."""
    chans = [InputChannel(i) for i in range(len(sc.streams))]
    for ch, items in zip(chans, sc.streams, strict=True):
        ch.queue.extend(items)
    rec = Recorder()
    h = kind(chans, rec)
    ever_blocked = False
    while True:
        ready = [c for c in chans if c.queue and not c.blocked]
        if not ready:
            break
        ch = rng.choice(ready)
        item = ch.pop()
        if isinstance(item, Barrier):
            h.on_barrier(ch, item)
        elif item is END_OF_INPUT:
            h.on_end_of_input(ch)
        else:
            rec.processed.append(item)
        ever_blocked = ever_blocked or any(c.blocked for c in chans)
    leftover = {c.id: list(c.queue) for c in chans if c.queue}
    return rec, leftover, ever_blocked


def check_common(sc: Scenario, rec: Recorder, leftover: dict[int, list[Any]]) -> None:
    assert leftover == {}, f"reading stopped with input left (deadlock): {leftover}"
    all_records = set().union(*sc.records.values())
    assert sorted(rec.processed) == sorted(all_records)
    assert rec.ids == sorted(set(rec.ids)), f"snapshots not once each, in order: {rec.ids}"
    present = {cid for _, cid in sc.before}
    assert set(rec.ids) <= present
    if present:
        # Nothing can cancel the newest checkpoint: every channel delivers its barrier or
        # ends, so it must be snapshotted.
        assert max(present) in rec.ids, f"newest checkpoint {max(present)} never snapshotted"


def check_exactly_once(sc: Scenario, rec: Recorder) -> None:
    for b, processed in rec.snapshots:
        cid = b.checkpoint_id
        done = set(processed)
        for ch in range(len(sc.streams)):
            if (ch, cid) in sc.before:
                assert done & sc.records[ch] == sc.before[(ch, cid)], (
                    f"snapshot {cid}: channel {ch} processed records that came after barrier "
                    f"{cid}, or missed records before it")
            else:
                # The channel never delivered barrier ``cid``: it can only count as aligned
                # by having ended, so all its records are in.
                assert sc.records[ch] <= done, (
                    f"snapshot {cid} taken before channel {ch} delivered barrier {cid} "
                    f"or ended")


def check_at_least_once(sc: Scenario, rec: Recorder) -> None:
    for b, processed in rec.snapshots:
        cid = b.checkpoint_id
        done = set(processed)
        for ch in range(len(sc.streams)):
            if (ch, cid) in sc.before:
                assert sc.before[(ch, cid)] <= done, (
                    f"snapshot {cid} misses records before barrier {cid} on channel {ch}")
            else:
                assert sc.records[ch] <= done


@pytest.mark.parametrize("skips", [False, True], ids=["all-barriers", "with-skips"])
def test_aligned_handler_massive_random(skips: bool) -> None:
    rng = random.Random(20240611 + skips)
    for case in range(400):
        sc = random_scenario(rng, skips)
        rec, leftover, _ = simulate(sc, AlignedBarrierHandler, rng)
        try:
            check_common(sc, rec, leftover)
            check_exactly_once(sc, rec)
            if not skips:  # aligned checkpoints complete one after the other, none lost
                assert rec.ids == sorted({cid for _, cid in sc.before})
        except AssertionError as e:
            raise AssertionError(f"case {case}: streams={sc.streams}\n{e}") from e


@pytest.mark.parametrize("skips", [False, True], ids=["all-barriers", "with-skips"])
def test_tracker_massive_random(skips: bool) -> None:
    rng = random.Random(777 + skips)
    for case in range(400):
        sc = random_scenario(rng, skips)
        rec, leftover, ever_blocked = simulate(sc, BarrierTracker, rng)
        try:
            assert not ever_blocked, "the at-least-once tracker blocked a channel"
            check_common(sc, rec, leftover)
            check_at_least_once(sc, rec)
        except AssertionError as e:
            raise AssertionError(f"case {case}: streams={sc.streams}\n{e}") from e


def test_random_scenarios_exercise_the_interesting_cases() -> None:
    """Guard for the generator: the random tests above must meet blocking, early ends and
    skipped barriers, or they prove little."""
    rng = random.Random(1)
    blocked = ended_early = skipped = 0
    for _ in range(200):
        sc = random_scenario(rng, skips=True)
        _, _, ever_blocked = simulate(sc, AlignedBarrierHandler, rng)
        blocked += ever_blocked
        for items in sc.streams:
            ids = [x.checkpoint_id for x in items if isinstance(x, Barrier)]
            ended_early += bool(ids) and ids[-1] < sc.checkpoints
            skipped += ids != list(range(1, len(ids) + 1))
    assert blocked > 50 and ended_early > 10 and skipped > 50
