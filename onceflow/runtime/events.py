"""Control events that travel in order with the data batches of a channel.

A channel carries ``list`` objects (a batch of records), :class:`TsBatch` objects (a batch
of records with their event timestamps) and instances of the event classes below.

* ``Watermark(t)``: no record with a timestamp below ``t`` follows on this channel.
* ``WatermarkStatus(idle)``: the channel's producer has gone idle (it is left out of the
  watermark minimum downstream) or became active again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Barrier:
    checkpoint_id: int
    timestamp: float
    final: bool = False
    savepoint: str | None = None  # a savepoint's directory; None for a checkpoint


@dataclass(frozen=True, slots=True)
class Watermark:
    timestamp: float


@dataclass(frozen=True, slots=True)
class WatermarkStatus:
    idle: bool


class TsBatch:
    """Records and their event timestamps (seconds), two lists of equal length."""

    __slots__ = ("records", "ts")

    def __init__(self, records: list[Any], ts: list[float]) -> None:
        self.records, self.ts = records, ts

    def __reduce__(self) -> tuple[Any, ...]:
        return (TsBatch, (self.records, self.ts))

    def __repr__(self) -> str:
        return f"TsBatch({len(self.records)} records)"


class _EndOfInput:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_INPUT"

    def __reduce__(self) -> str:
        return "END_OF_INPUT"


END_OF_INPUT = _EndOfInput()
