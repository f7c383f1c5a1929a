"""Nexmark: the standard streaming benchmark's auction events, generated here from its
public specification (persons, auctions and bids, 1 : 3 : 46, with hot auctions, bidders
and sellers), deterministic and replayable from any event number.

Example (runs as a doctest)::

    >>> from onceflow.nexmark import Generator, NexmarkConfig
    >>> gen = Generator(NexmarkConfig(seed=0))
    >>> [e["kind"] for e in gen.events(0, 5)]
    ['person', 'auction', 'auction', 'auction', 'bid']
    >>> gen.event(1234) == Generator(NexmarkConfig(seed=0)).event(1234)
    True

Use :class:`NexmarkSource` in a flow (see benchmarks/nexmark/ for the queries).
"""

from onceflow.nexmark.generator import Generator, NexmarkConfig, kind_of
from onceflow.nexmark.source import NexmarkSource, NexmarkSplit, prefill_kafka, watermarks

__all__ = ["Generator", "NexmarkConfig", "NexmarkSource", "NexmarkSplit", "kind_of",
           "prefill_kafka", "watermarks"]
