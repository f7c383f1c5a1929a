"""Control events that travel in order with the data batches of a channel.

A channel carries ``list`` objects (a batch of records) and instances of the classes below.
``Watermark`` is reserved for event time: operators forward it unchanged for now.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Barrier:
    checkpoint_id: int
    timestamp: float
    final: bool = False
    savepoint: str | None = None  # a savepoint's directory; None for a checkpoint


@dataclass(frozen=True, slots=True)
class Watermark:
    timestamp: float


class _EndOfInput:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_INPUT"

    def __reduce__(self) -> str:
        return "END_OF_INPUT"


END_OF_INPUT = _EndOfInput()
