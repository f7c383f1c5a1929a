"""Watermarks inside the runtime: the valve at a task's inputs, and the per-split generators
of a source subtask.

:class:`WatermarkValve` owns the watermark minimum of a task with several input channels.
Per channel it keeps the last watermark, whether the channel is idle, and whether it has
ended. The task's watermark is the minimum over the channels that are active (not idle,
not ended) and *aligned*; it only ever rises. A channel that comes back from idleness with
a watermark below the task's is not aligned: it is left out until its own watermark catches
up, so the task's watermark never goes backwards. When every live channel is idle the task
first advances to the highest watermark of any channel, then reports itself idle downstream.
An ended channel counts as +infinity.

:class:`SourceWatermarks` does the same one level up, inside a source subtask: one
:class:`~onceflow.api.watermarks.WatermarkGenerator` per split, idleness per split (no
records for ``idleness`` seconds of processing time), alignment pausing (a split whose
watermark runs more than ``max_drift`` ahead of its group's minimum is not read until the
minimum catches up), and the minimum over the active splits as the subtask's watermark. A
subtask that owns no splits is idle from the start. Its progress is checkpointed with the
split positions: after a restore the watermark continues where the checkpoint left it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onceflow.api.watermarks import WatermarkGenerator, WatermarkStrategy
from onceflow.connectors.sources import runs_of

NEG_INF = -math.inf
POS_INF = math.inf


class _ChannelStatus:
    __slots__ = ("aligned", "ended", "idle", "watermark")

    def __init__(self) -> None:
        self.watermark = NEG_INF
        self.idle = False
        self.ended = False
        self.aligned = True


@dataclass(frozen=True, slots=True)
class ValveOutput:
    """What the valve tells its task after an input event: a new watermark to apply and
    forward (or None), and a change of the task's idle status to forward (or None)."""

    watermark: float | None = None
    idle: bool | None = None


_NOTHING = ValveOutput()


class WatermarkValve:
    """The watermark minimum over a task's input channels (see the module docstring)."""

    def __init__(self, channel_ids: list[int]) -> None:
        self.channels = {c: _ChannelStatus() for c in channel_ids}
        self.watermark = NEG_INF if channel_ids else POS_INF
        self.idle = False

    def on_watermark(self, channel: int, timestamp: float) -> ValveOutput:
        ch = self.channels[channel]
        if ch.ended or timestamp <= ch.watermark:
            return _NOTHING
        ch.watermark = timestamp
        if timestamp == POS_INF:
            # the end of event time on this channel (its input ended), idle or not: it
            # holds nothing back any more, as an ended channel. An idle upstream whose
            # input then ends sends +inf without waking up first; were it ignored, a task
            # whose inputs were all idle would never fire its windows
            ch.ended = True
        if not ch.idle and not ch.aligned and timestamp >= self.watermark:
            ch.aligned = True
        return self._recompute()

    def on_status(self, channel: int, idle: bool) -> ValveOutput:
        ch = self.channels[channel]
        if ch.ended or ch.idle == idle:
            return _NOTHING
        ch.idle = idle
        if not idle:
            ch.aligned = ch.watermark >= self.watermark
        return self._recompute()

    def on_end(self, channel: int) -> ValveOutput:
        ch = self.channels[channel]
        if ch.ended:
            return _NOTHING
        ch.ended = True
        return self._recompute()

    def _recompute(self) -> ValveOutput:
        live = [c for c in self.channels.values() if not c.ended]
        active = [c for c in live if not c.idle]
        idle = bool(live) and not active
        status = None
        if idle != self.idle:
            self.idle = idle
            status = idle
        if not live:
            new = POS_INF
        elif status is True:
            # the last active channel just turned idle: advance to the highest watermark
            # of any channel before going idle (as Flink's valve does), so that windows
            # the idle inputs no longer hold back fire (an input that wakes up later with
            # records below it is not aligned until it catches up)
            new = max(c.watermark for c in live)
        else:
            aligned = [c.watermark for c in active if c.aligned]
            if not aligned:
                return ValveOutput(None, status) if status is not None else _NOTHING
            new = min(aligned)
        if new > self.watermark:
            self.watermark = new
            return ValveOutput(new, status)
        return ValveOutput(None, status) if status is not None else _NOTHING


class _Partition:
    """One input whose records are in order of their own: a split, or a partition of a
    split whose reader reports partitions (a Kafka split's topic partitions)."""

    __slots__ = ("finished", "generator", "idle", "last_active", "paused", "watermark")

    def __init__(self, generator: WatermarkGenerator, now: float) -> None:
        self.generator = generator
        self.watermark = NEG_INF
        self.idle = False
        self.paused = False
        self.finished = False
        self.last_active = now

    def advance(self, w: float | None) -> None:
        if w is not None and w > self.watermark:
            self.watermark = w


WHOLE = None  # the partition key of a split whose reader reports no partitions


class SourceWatermarks:
    """Per-split (and per-partition) watermark generation for one source subtask.

    Entries are keyed ``(split index, partition)``; ``partition`` is ``WHOLE`` unless the
    split's reader reports the partition of each record
    (:meth:`~onceflow.sources.SplitReader.partitions`), as the Kafka reader does, so each
    Kafka partition has a generator and idleness of its own."""

    def __init__(self, strategy: WatermarkStrategy, clock: Callable[[], float]) -> None:
        self.strategy = strategy
        self.clock = clock
        self.parts: dict[tuple[int, Any], _Partition] = {}
        # per split: the partitions of the last set_partitions, while nothing since made an
        # entry of that split (the same list again is then nothing to do)
        self._given: dict[int, list[Any]] = {}
        self.splits = 0
        self.emitted = NEG_INF  # the subtask's watermark as last emitted downstream
        self.idle = False  # as last told downstream
        self.group_min: float | None = None  # the alignment group's minimum (all subtasks)
        self._last_poll = NEG_INF
        #: (split index, partition) -> whether records of it are known to be waiting
        #: (SplitReader.has_backlog); such a partition is not idle, however long since its
        #: last record: a backlog of other partitions' records can hold it back for longer
        #: than the idleness timeout, and its records would all become late
        self.backlog: Callable[[int, Any], bool] | None = None

    def _new(self) -> _Partition:
        return _Partition(self.strategy.generator_factory(), self.clock())

    # --- splits --------------------------------------------------------------------------
    def assign(self, states: list[Any], finished: list[bool]) -> None:
        """One entry per split: its checkpointed progress (``{partition: (watermark,
        generator state)}``), or None when it starts fresh."""
        self.parts = {}
        self._given = {}
        self.splits = len(states)
        restored = False
        for i, (st, fin) in enumerate(zip(states, finished, strict=True)):
            for key, (wm, gen_state) in (st or {WHOLE: (NEG_INF, None)}).items():
                e = self.parts[(i, key)] = self._new()
                if st is not None:
                    restored = True
                    e.watermark = wm
                    e.generator.restore(gen_state)
                e.finished = fin
        live = [e.watermark for e in self.parts.values() if not e.finished]
        if restored and live:
            # resume where the checkpoint left off: the minimum over the unfinished inputs
            self.emitted = min(live)

    def snapshot(self, index: int) -> dict[Any, tuple[float, Any]]:
        return {key: (e.watermark, e.generator.snapshot())
                for (i, key), e in self.parts.items() if i == index}

    def set_partitions(self, index: int, partitions: list[Any]) -> None:
        """The reader of split ``index`` owns ``partitions`` now: each gets an entry (one
        with no records yet holds the watermark back until it has some, or turns idle)."""
        if self._given.get(index) == partitions:  # as last time (after every batch)
            return
        self._given[index] = list(partitions)
        whole = self.parts.pop((index, WHOLE), None)
        owned = set(partitions)
        for (i, key), e in self.parts.items():
            if i == index and key not in owned:
                e.finished = True  # read to its end, or no longer this reader's
        for p in partitions:
            if (index, p) not in self.parts:
                e = self.parts[(index, p)] = self._new()
                if whole is not None and whole.watermark > NEG_INF:
                    e.watermark = whole.watermark

    def on_batch(self, index: int, records: list[Any], ts: list[float],
                 partitions: list[Any] | None = None) -> None:
        """``partitions``: the partition of each record (None: the split is one input)."""
        if partitions is None:
            self.on_batch_runs(index, records, ts, None)
            return
        if len(partitions) != len(records):
            raise ValueError(f"{len(partitions)} partitions for {len(records)} records")
        self.on_batch_runs(index, records, ts, runs_of(partitions))

    def on_batch_runs(self, index: int, records: list[Any], ts: list[float],
                      runs: list[tuple[Any, int]] | None) -> None:
        """``runs``: the batch as runs of one partition, ``(partition, number of
        records)`` in order (a Kafka reader's records come so), or None when the split is
        one input. A batch of one run (the common case) goes to its partition as it is."""
        if runs is None:
            self._on_events(self.parts.get((index, WHOLE)), index, WHOLE, records, ts)
            return
        if len(runs) == 1 and runs[0][1] == len(records):
            p = runs[0][0]
            self._on_events(self.parts.get((index, p)), index, p, records, ts)
            return
        if sum(n for _, n in runs) != len(records):
            raise ValueError(f"runs of {sum(n for _, n in runs)} records for "
                             f"{len(records)} records")
        groups: dict[Any, tuple[list[Any], list[float]]] = {}
        lo = 0
        for p, n in runs:
            hi = lo + n
            g = groups.get(p)
            if g is None:
                groups[p] = (records[lo:hi], ts[lo:hi])
            else:
                g[0].extend(records[lo:hi])
                g[1].extend(ts[lo:hi])
            lo = hi
        for p, (rs, tss) in groups.items():
            self._on_events(self.parts.get((index, p)), index, p, rs, tss)

    def _on_events(self, e: _Partition | None, index: int, key: Any, records: list[Any],
                   ts: list[float]) -> None:
        if e is None:
            e = self.parts[(index, key)] = self._new()
            self._given.pop(index, None)  # the next set_partitions must see this entry
        e.last_active = self.clock()
        e.idle = False
        e.advance(e.generator.on_events(records, ts))
        e.advance(e.generator.on_periodic_emit())

    def on_finished(self, index: int) -> None:
        for (i, _), e in self.parts.items():
            if i == index:
                e.finished = True

    def readable(self, index: int) -> bool:
        """False while every input of the split is paused by watermark alignment."""
        if self.strategy.max_drift is None:  # no alignment: nothing is ever paused
            return True
        entries = [e for (i, _), e in self.parts.items() if i == index]
        return not entries or not all(e.paused for e in entries)

    # --- emission ------------------------------------------------------------------------
    def poll(self, force: bool = False) -> tuple[float | None, bool | None]:
        """(new subtask watermark or None, new idle status or None). Cheap unless
        ``emit_interval`` passed or ``force`` (after a batch)."""
        now = self.clock()
        if not force and now - self._last_poll < self.strategy.emit_interval:
            return None, None
        self._last_poll = now
        idleness = self.strategy.idleness
        backlog = self.backlog
        live = []
        for (i, key), e in self.parts.items():
            if e.finished:
                continue
            live.append(e)
            e.advance(e.generator.on_periodic_emit())
            if idleness is not None and not e.idle and now - e.last_active >= idleness:
                if backlog is not None and backlog(i, key):
                    e.last_active = now  # not read yet, not idle: its clock starts again
                else:
                    e.idle = True
        active = [e for e in live if not e.idle]
        # idle: every live input is idle, or the subtask owns nothing to read at all
        idle = not active and (bool(live) or not self.parts)
        status = None
        if idle != self.idle:
            self.idle = idle
            status = idle
        new = None
        if active:
            m = min(e.watermark for e in active)
            if m > self.emitted:
                self.emitted = new = m
        self._align(active)
        return new, status

    def _align(self, active: list[_Partition]) -> None:
        drift = self.strategy.max_drift
        if drift is None:
            return
        base = min((e.watermark for e in active), default=None)
        if self.group_min is not None:
            base = self.group_min if base is None else min(base, self.group_min)
        for e in self.parts.values():
            e.paused = base is not None and base > NEG_INF and not e.finished \
                and e.watermark > base + drift

    def initial_events(self) -> tuple[float | None, bool]:
        """What to tell downstream when the subtask starts: the restored watermark (or
        None) and whether it starts idle (it owns no splits)."""
        self.idle = not self.parts
        return (self.emitted if self.emitted > NEG_INF else None), self.idle


__all__ = ["SourceWatermarks", "ValveOutput", "WatermarkValve"]
