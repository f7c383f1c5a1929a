"""Join flows for crash tests, each with its expected output computed without onceflow.

    python tests/joinjobs.py SHAPE --out DIR --ckpt DIR [--parallelism P] [--backend B]

Shapes:

* ``interval``: left ``(i % 50, i)`` at event time ``i * 0.01``, right ``(j % 50, j)`` at
  ``j * 0.03``, interval join ``between(-0.5, 0.5)``; output ``(i, j)``.
* ``regular``: people ``(id, name)`` joined with auctions ``(a, seller)`` on
  ``id == seller`` (sellers ``>= PEOPLE`` match no one); output ``(name, a)``.
* ``broadcast``: keyed events ``i`` connected to seven broadcast rules; each event is
  emitted with the sum of the rules once the watermark passes it: ``(i, 28)``.
* ``nexmark``: the Nexmark generator (3 splits) straight into the sink, one row per
  event, to show the source replays exactly the events after a checkpoint.
* ``nexmark-qN``: Nexmark query N of benchmarks/nexmark/queries.py over the generator
  (seed 17, 1,000 events/s of event time, 1 s disorder), into files; the expected output
  is DuckDB's (tests/test_nexmark_queries.py).
* ``regular_ttl``: the same join with an event-time TTL of ``TTL`` seconds; people at
  event time ``id * 0.01``, auctions at ``a * 0.01``. Pairs less than ``TTL`` apart always
  meet; which farther pairs meet depends on how far the watermark got (see
  :func:`expected_ttl`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from typing import Any

import onceflow as of
from onceflow.nexmark import Generator, NexmarkConfig, NexmarkSource
from onceflow.nexmark import watermarks as nexmark_watermarks
from onceflow.testing import throttle

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks", "nexmark"))

PEOPLE = 4000
TTL = 5.0


def _auctions(n: int) -> list[tuple[int, int]]:
    return [(a, (a * 7919) % (PEOPLE + PEOPLE // 4)) for a in range(n)]


def build(shape: str, flow: of.Flow, records: int, rate: float, out: str) -> None:
    sink = of.sinks.FileSink(out)
    if shape == "interval":
        lws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda i: i * 0.01)
        rws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda j: j * 0.03)
        left = (flow.source(of.sources.Range(0, records), name="left", watermarks=lws)
                    .map(throttle(rate), name="throttle-l"))
        right = (flow.source(of.sources.Range(0, records // 3), name="right", watermarks=rws)
                     .map(throttle(rate / 3), name="throttle-r"))
        (left.key_by(lambda i: i % 50).interval_join(right.key_by(lambda j: j % 50))
             .between(-0.5, 0.5).process(lambda i, j: (i, j), name="join")
             .sink(sink, name="files"))
        return
    if shape in ("regular", "regular_ttl"):
        ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[0] * 0.01)
        pws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda i: i * 0.01)
        people = (flow.source(of.sources.Range(0, PEOPLE), name="people", watermarks=pws)
                      .map(lambda i: (i, f"p{i}"), name="person")
                      .map(throttle(rate / 4), name="throttle-p"))
        auctions = (flow.source(of.sources.Collection(_auctions(records)), name="auctions",
                                watermarks=ws)
                        .map(throttle(rate), name="throttle-a"))
        cond = people.join(auctions).where(lambda p: p[0]).equal_to(lambda a: a[1])
        if shape == "regular_ttl":
            cond = cond.with_ttl(of.StateTtl(TTL, time_domain=of.TimeDomain.EVENT_TIME))
        (cond.apply(lambda p, a: (p[1], a[0]), name="join").sink(sink, name="files"))
        return
    if shape == "broadcast":
        rws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: 0.0)
        rules = flow.source(of.sources.Collection(RULES), name="rules", parallelism=1,
                            watermarks=rws)
        ews = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda i: i * 0.01)
        (flow.source(of.sources.Range(0, records), name="events", watermarks=ews)
             .map(throttle(rate), name="throttle")
             .key_by(lambda i: i % 50)
             .connect(rules.broadcast(RULES_STATE))
             .process(ApplyRules(), name="apply")
             .sink(sink, name="files"))
        return
    if shape.startswith("nexmark-q"):  # a Nexmark query from the generator, into files
        import queries  # benchmarks/nexmark (on sys.path below)

        queries.build(flow, shape.split("-")[1], nexmark_query_config(records), sink,
                      partitions=3, throttle_to=rate)
        return
    if shape == "nexmark":
        src = NexmarkSource(NexmarkConfig(events=records, seed=7), partitions=3)
        (flow.source(src, name="nexmark", watermarks=nexmark_watermarks())
             .map(throttle(rate), name="throttle")
             .map(nexmark_row, name="row")
             .sink(sink, name="files"))
        return
    raise SystemExit(f"unknown shape {shape}")


RULES = [(f"r{k}", k) for k in range(1, 8)]
RULES_STATE = of.MapStateDescriptor("rules")


class ApplyRules(of.KeyedBroadcastProcessFunction):
    """Each event waits for an event-time timer at its timestamp: the rules' source emits
    its watermark after its records, so by then every rule is in the broadcast state, and
    the result is the same in every run: (event, sum of the rule values)."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.waiting = ctx.map_state("waiting")

    def process_element(self, value: int, ctx: of.BroadcastContext) -> None:
        assert ctx.timestamp is not None
        self.waiting.put(value, True)
        ctx.timer_service.register_event_time_timer(ctx.timestamp)

    def process_broadcast_element(self, rule: Any, ctx: of.BroadcastContext) -> None:
        ctx.get_broadcast_state(RULES_STATE).put(rule[0], rule[1])

    def on_timer(self, timestamp: float, ctx: of.BroadcastContext) -> list[Any]:
        total = sum(ctx.get_broadcast_state(RULES_STATE).values())
        due = [v for v in self.waiting.keys() if v * 0.01 <= timestamp]
        for v in due:
            self.waiting.remove(v)
        return [(v, total) for v in due]


def nexmark_query_config(records: int) -> NexmarkConfig:
    return NexmarkConfig(events=records, seed=17, rate=1000.0, out_of_orderness=1.0)


def nexmark_row(e: dict[str, Any]) -> list[Any]:
    """What the nexmark shape commits per event: enough to tell every event apart."""
    key = e.get("id", e.get("auction"))
    return [e["kind"], key, e.get("bidder"), e.get("price"), e["date_time"]]


def expected(shape: str, records: int) -> Counter[tuple[Any, ...]]:
    if shape.startswith("nexmark-q"):
        query = shape.split("-")[1]
        if query in ("q0", "q1", "q2", "q3"):
            from test_nexmark_queries import reference
        else:  # the windowed queries' SQL
            from test_nexmark_window_queries import reference
        return reference(query, nexmark_query_config(records))
    if shape == "broadcast":
        total = sum(v for _, v in RULES)
        return Counter((i, total) for i in range(records))
    if shape == "nexmark":
        gen = Generator(NexmarkConfig(events=records, seed=7))
        return Counter(tuple(nexmark_row(e)) for e in gen.events(0, records))
    if shape == "interval":
        # the operator's arithmetic: left_ts + lower <= right_ts <= left_ts + upper
        return Counter((i, j) for j in range(records // 3)
                       for i in range(max(0, 3 * j - 60), min(records, 3 * j + 61))
                       if i % 50 == j % 50 and i * 0.01 + -0.5 <= j * 0.03 <= i * 0.01 + 0.5)
    if shape == "regular":
        return Counter((f"p{s}", a) for a, s in _auctions(records) if s < PEOPLE)
    raise ValueError(shape)


def expected_ttl(records: int) -> tuple[Counter[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """(pairs that must each be committed once, pairs that may be committed at most once)."""
    must: Counter[tuple[Any, ...]] = Counter()
    may: set[tuple[Any, ...]] = set()
    for a, s in _auctions(records):
        if s >= PEOPLE:
            continue
        if abs(a * 0.01 - s * 0.01) < TTL - 1e-6:
            must[(f"p{s}", a)] += 1
        else:
            may.add((f"p{s}", a))
    return must, may


def committed(out: str) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r) for r in of.sinks.read_committed(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--records", type=int, default=12_000)
    ap.add_argument("--rate", type=float, default=6_000.0, help="records/s per subtask")
    ap.add_argument("--interval", type=float, default=0.3)
    ap.add_argument("--backend", choices=["memory", "rocksdb"], default="memory")
    ap.add_argument("--unaligned", action="store_true", help="unaligned checkpoints")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    backend = (of.state.RocksDBBackend(layer_entries=2_000) if args.backend == "rocksdb"
               else of.state.MemoryBackend(full_every=3))
    flow = of.Flow(f"join-{args.shape}", parallelism=args.parallelism, batch_size=256,
                   state_backend=backend,
                   restart_strategy=of.restart.fixed_delay(attempts=20, delay=0.1))
    flow.enable_checkpointing(args.interval, args.ckpt, retained=2, unaligned=args.unaligned)
    build(args.shape, flow, args.records, args.rate, args.out)
    result = flow.run()
    print(json.dumps({"restarts": result.restarts,
                      "checkpoints": len(result.completed_checkpoints),
                      "sink_in": (result.operators.get("files")
                                  or result.operators["results"]).records_in}), flush=True)


if __name__ == "__main__":
    main()
