"""The Nexmark generator as a replayable, checkpointable source, and a Kafka pre-fill.

:class:`NexmarkSource` cuts the event numbers into ``partitions`` splits (split ``p``
holds the events ``n`` with ``n % partitions == p``, in order); a split's position is
its next event number, so a restored source regenerates exactly the events after the
checkpoint. Give the stream a watermark strategy on the events' ``date_time``
(:func:`watermarks`) for event time.

``idle_partition=True`` adds one split that produces no event for ``idle_seconds`` of
wall-clock time and then ends: with ``with_idleness`` in the watermark strategy the
other splits' watermarks go on meanwhile (a test of idleness handling).
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson

from onceflow.api.watermarks import WatermarkStrategy
from onceflow.connectors.sources import Source, SplitReader
from onceflow.errors import ConfigurationError, ConnectorError
from onceflow.nexmark.generator import Generator, NexmarkConfig


@dataclass(frozen=True)
class NexmarkSplit:
    index: int  # -1: the idle split
    count: int  # how many event splits there are


class _Reader(SplitReader):
    def __init__(self, gen: Generator, split: NexmarkSplit, pos: int, events: int) -> None:
        self.gen, self.split, self.pos, self.events = gen, split, pos, events

    def read_batch(self, max_records: int) -> list[Any] | None:
        if self.pos >= self.events:
            return None
        step = self.split.count
        stop = min(self.events, self.pos + max_records * step)
        out = self.gen.events(self.pos, stop, step)
        self.pos += len(out) * step
        return out

    def position(self) -> int:
        return self.pos


class _IdleReader(SplitReader):
    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def read_batch(self, max_records: int) -> list[Any] | None:
        return [] if time.monotonic() < self.until else None

    def position(self) -> int:
        return 0


class NexmarkSource(Source):
    """Nexmark events (see :mod:`onceflow.nexmark.generator`), bounded at
    ``config.events``. ``partitions``: number of splits (default: the source's
    parallelism)."""

    def __init__(self, config: NexmarkConfig | None = None, *, partitions: int | None = None,
                 idle_partition: bool = False, idle_seconds: float = 5.0,
                 **settings: Any) -> None:
        base = config or NexmarkConfig()
        self.config = replace(base, **settings) if settings else base
        self.partitions = partitions
        self.idle_partition = idle_partition
        self.idle_seconds = idle_seconds

    def validate(self) -> None:
        self.config.validate()
        if not isinstance(self.idle_partition, bool):
            raise ConfigurationError(
                f"NexmarkSource: idle_partition must be True or False (one more split that "
                f"stays idle for idle_seconds), got {self.idle_partition!r}")
        # a bool is an int: partitions=True would silently be one split
        if self.partitions is not None and (not isinstance(self.partitions, int)
                                            or isinstance(self.partitions, bool)
                                            or self.partitions < 1):
            raise ConfigurationError(
                f"NexmarkSource: partitions must be an integer >= 1 (or None: one split "
                f"per source subtask), got {self.partitions!r}")
        s = self.idle_seconds
        # NaN compares false with everything: the idle split would end at once, unnoticed
        if (not isinstance(s, int | float) or isinstance(s, bool) or not math.isfinite(s)
                or s < 0):
            raise ConfigurationError(
                f"NexmarkSource: idle_seconds must be a finite number >= 0 of wall-clock "
                f"seconds the idle split waits before it ends, got {s!r}")

    def splits(self, parallelism: int) -> list[Any]:
        n = self.partitions or parallelism
        out: list[Any] = [NexmarkSplit(p, n) for p in range(n)]
        if self.idle_partition:
            out.append(NexmarkSplit(-1, n))
        return out

    def initial_position(self, split: NexmarkSplit) -> int:
        return max(split.index, 0)

    def reader(self, split: NexmarkSplit, position: int) -> SplitReader:
        if split.index < 0:
            return _IdleReader(self.idle_seconds)
        return _Reader(Generator(self.config), split, position, self.config.events)


def watermarks(config: NexmarkConfig | None = None,
               idleness: float | None = None) -> WatermarkStrategy:
    """Event time from ``date_time``, bounded by the configuration's out-of-orderness."""
    cfg = config or NexmarkConfig()
    cfg.validate()  # a negative or NaN bound would silently become no bound at all
    bound = cfg.out_of_orderness
    ws = (WatermarkStrategy.bounded_out_of_orderness(bound) if bound > 0
          else WatermarkStrategy.monotonous_timestamps())
    ws = ws.with_timestamps(_date_time)
    return ws.with_idleness(idleness) if idleness is not None else ws


#: an event's ``date_time`` (a C-level callable: no Python frame per event)
_date_time = operator.itemgetter("date_time")


def prefill_kafka(bootstrap: str, topic: str, config: NexmarkConfig | None = None, *,
                  partitions: int = 8, create: bool = True,
                  client_config: dict[str, Any] | None = None) -> int:
    """Write the events as JSON to ``topic`` (event ``n`` to partition ``n % partitions``,
    so each partition holds its events in order); returns how many were written.
    ``client_config``: producer settings (e.g. a secured cluster's ``security.protocol``,
    ``sasl.*``, ``ssl.*``); the admin client that creates the topic gets its connection
    settings. Raises :class:`ConnectorError` when the broker did not take every event (the
    topic then holds only some of them: delete it and prefill again)."""
    from onceflow.connectors.kafka import connection_config, import_kafka

    ck = import_kafka()
    cfg = config or NexmarkConfig()
    gen = Generator(cfg)  # validates the configuration before anything is created
    if create:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({**connection_config(client_config), "bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
            try:
                f.result(30)
            except ck.KafkaException as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise
    failed: list[Any] = []  # delivery errors; flush() returns 0 whether or not they happened

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    p = ck.Producer({"linger.ms": 20, "enable.idempotence": True,
                     "queue.buffering.max.messages": 500000, **(client_config or {}),
                     "bootstrap.servers": bootstrap, "on_delivery": delivered,
                     "delivery.report.only.error": True})
    for n in range(cfg.events):
        value = orjson.dumps(gen.event(n))
        while True:
            try:
                p.produce(topic, value, partition=n % partitions)
                break
            except BufferError:
                p.poll(0.1)
        if n % 10000 == 0:
            p.poll(0)
    left = p.flush(120)
    if failed or left:
        raise ConnectorError(
            f"prefill_kafka: {len(failed) + left:,} of {cfg.events:,} events did not reach "
            f"{topic!r} at {bootstrap} ({len(failed):,} refused by the broker"
            + (f", the first: {failed[0]}" if failed else "")
            + f"; {left:,} still unsent after 120 s); the topic holds only some of the "
            "events: delete it and prefill again")
    return cfg.events
