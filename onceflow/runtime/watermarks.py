"""Watermarks inside the runtime: the valve at a task's inputs, and the per-split generators
of a source subtask.

:class:`WatermarkValve` owns the watermark minimum of a task with several input channels.
Per channel it keeps the last watermark, whether the channel is idle, and whether it has
ended. The task's watermark is the minimum over the channels that are active (not idle,
not ended) and *aligned*; it only ever rises. A channel that comes back from idleness with
a watermark below the task's is not aligned: it is left out until its own watermark catches
up, so the task's watermark never goes backwards. When every live channel is idle the task
reports itself idle downstream. An ended channel counts as +infinity.

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
        else:
            aligned = [c.watermark for c in active if c.aligned]
            if not aligned:
                return ValveOutput(None, status) if status is not None else _NOTHING
            new = min(aligned)
        if new > self.watermark:
            self.watermark = new
            return ValveOutput(new, status)
        return ValveOutput(None, status) if status is not None else _NOTHING


class _Split:
    __slots__ = ("finished", "generator", "idle", "last_active", "paused", "watermark")

    def __init__(self, generator: WatermarkGenerator, now: float) -> None:
        self.generator = generator
        self.watermark = NEG_INF
        self.idle = False
        self.paused = False
        self.finished = False
        self.last_active = now


class SourceWatermarks:
    """Per-split watermark generation for one source subtask."""

    def __init__(self, strategy: WatermarkStrategy, clock: Callable[[], float]) -> None:
        self.strategy = strategy
        self.clock = clock
        self.splits: list[_Split] = []
        self.emitted = NEG_INF  # the subtask's watermark as last emitted downstream
        self.idle = False  # as last told downstream
        self.group_min: float | None = None  # the alignment group's minimum (all subtasks)
        self._last_poll = NEG_INF

    # --- splits --------------------------------------------------------------------------
    def assign(self, states: list[Any], finished: list[bool]) -> None:
        """One entry per split: its checkpointed generator state (None when fresh)."""
        now = self.clock()
        self.splits = []
        for st, fin in zip(states, finished, strict=True):
            s = _Split(self.strategy.generator_factory(), now)
            if st is not None:
                wm, gen_state = st
                s.watermark = wm
                s.generator.restore(gen_state)
                self.emitted = max(self.emitted, NEG_INF)
            s.finished = fin
            self.splits.append(s)
        restored = [s.watermark for s in self.splits if not s.finished]
        if restored and any(st is not None for st in states):
            # resume where the checkpoint left off: the minimum over the unfinished splits
            self.emitted = min(restored)

    def snapshot(self, index: int) -> Any:
        s = self.splits[index]
        return (s.watermark, s.generator.snapshot())

    def timestamps(self, records: list[Any]) -> list[float]:
        from onceflow.api.watermarks import timestamps_of

        fn = self.strategy.timestamp_fn
        assert fn is not None
        return timestamps_of(fn, records)

    def on_batch(self, index: int, records: list[Any], ts: list[float]) -> None:
        s = self.splits[index]
        s.last_active = self.clock()
        if s.idle:
            s.idle = False
        w = s.generator.on_events(records, ts)
        if w is not None and w > s.watermark:
            s.watermark = w
        w = s.generator.on_periodic_emit()
        if w is not None and w > s.watermark:
            s.watermark = w

    def on_finished(self, index: int) -> None:
        self.splits[index].finished = True

    def readable(self, index: int) -> bool:
        """False while the split is paused by watermark alignment."""
        return not self.splits[index].paused

    # --- emission ------------------------------------------------------------------------
    def poll(self, force: bool = False) -> tuple[float | None, bool | None]:
        """(new subtask watermark or None, new idle status or None). Cheap unless
        ``emit_interval`` passed or ``force`` (after a batch)."""
        now = self.clock()
        if not force and now - self._last_poll < self.strategy.emit_interval:
            return None, None
        self._last_poll = now
        idleness = self.strategy.idleness
        for s in self.splits:
            if s.finished:
                continue
            w = s.generator.on_periodic_emit()
            if w is not None and w > s.watermark:
                s.watermark = w
            if idleness is not None and not s.idle and now - s.last_active >= idleness:
                s.idle = True
        live = [s for s in self.splits if not s.finished]
        active = [s for s in live if not s.idle]
        idle = (not active and bool(live)) or not self.splits
        status = None
        if idle != self.idle:
            self.idle = idle
            status = idle
        new = None
        if active:
            m = min(s.watermark for s in active)
            if m > self.emitted:
                self.emitted = new = m
        self._align(active)
        return new, status

    def _align(self, active: list[_Split]) -> None:
        drift = self.strategy.max_drift
        if drift is None:
            return
        base = min((s.watermark for s in active), default=None)
        if self.group_min is not None:
            base = self.group_min if base is None else min(base, self.group_min)
        for s in self.splits:
            s.paused = base is not None and base > NEG_INF and s.watermark > base + drift \
                and not s.finished

    def initial_events(self) -> tuple[float | None, bool]:
        """What to tell downstream when the subtask starts: the restored watermark (or
        None) and whether it starts idle (it owns no splits)."""
        self.idle = not self.splits
        return (self.emitted if self.emitted > NEG_INF else None), self.idle


__all__ = ["SourceWatermarks", "ValveOutput", "WatermarkValve"]
