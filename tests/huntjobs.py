"""Random flow shapes for crash tests, each with its exact expected output (the "hunt" set).

A seed picks a shape (see :func:`spec`): parallelism 1-3, the state backend, a random
chain of stateless operators (map / filter / flat_map / rebalance), then one stateful
ending (keyed running count, a process function with event-time timers in state, tumbling /
sliding / session windows, window_all, connect + CoProcessFunction, interval join, window
join, co-group), into a FileSink. :func:`expected` computes the committed output of a
failure-free run without onceflow. Event time is the record's source index with up to 9 s
of disorder and a 10 s bound, so no record is ever late, whatever the interleaving: every
result is deterministic and a lost or replayed record shows up.

Run as a script so a test can SIGKILL the driver or its workers::

    python tests/huntjobs.py SEED --out DIR --ckpt DIR [--restore latest]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from typing import Any

import onceflow as of
from onceflow.testing import throttle

K = 13  # keys
TERMINALS = ("count", "timers", "tumbling", "sliding", "session", "window_all", "connect",
             "interval_join", "window_join", "co_group", "count_window", "global_trigger")
STAGES = ("map", "filter", "flat", "rebalance")
BUCKET, TUMBLE, SL_SIZE, SL_SLIDE, GAP, WJ = 100.0, 50.0, 60.0, 20.0, 3.0, 40.0
LOWER, UPPER = -3.0, 5.0


def spec(seed: int, terminal: str | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    s: dict[str, Any] = {
        "seed": seed,
        "terminal": terminal or rng.choice(TERMINALS),
        "parallelism": rng.randint(1, 3),
        "source_parallelism": rng.randint(1, 3),
        "sink_parallelism": rng.randint(1, 2),
        "backend": rng.choice(["memory", "rocksdb"]),
        "stages": [rng.choice(STAGES) for _ in range(rng.randint(0, 3))],
        "records": 8000,
        "records2": 4000,
        "batch": rng.choice([32, 128, 256]),
    }
    return s


# --- the record functions (used by the flow and by the reference) ------------------------
def ts_of(i: int) -> float:
    return float(i - (i * 7) % 10)


def ts_rec(r: tuple[int, int]) -> float:
    return ts_of(r[0])


def st_map(r: tuple[int, int]) -> tuple[int, int]:
    return (r[0], (r[1] * 31 + 7) % 1000)


def st_filter(r: tuple[int, int]) -> bool:
    return (r[0] + r[1]) % 5 != 1


def st_flat(r: tuple[int, int]) -> list[tuple[int, int]]:
    return [r, (r[0], r[1] + 1000)] if r[0] % 3 == 0 else [r]


def key(r: tuple[int, int]) -> int:
    return (r[0] + r[1]) % K


def key2(r: tuple[int, int]) -> int:
    return r[0] % K


def after_stages(stages: list[str], records: int) -> list[tuple[int, int]]:
    recs = [(i, i % 17) for i in range(records)]
    for st in stages:
        if st == "map":
            recs = [st_map(r) for r in recs]
        elif st == "filter":
            recs = [r for r in recs if st_filter(r)]
        elif st == "flat":
            recs = [x for r in recs for x in st_flat(r)]
    return recs


class BucketTimers(of.KeyedProcessFunction):
    """A running count per key, and per key and 100 s bucket of event time a count kept in
    map state that an event-time timer at the bucket's end emits and clears."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.buckets = ctx.map_state("buckets")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        c = self.count.value() + 1
        self.count.update(c)
        b = math.floor(ts_rec(value) / BUCKET) * BUCKET
        n = self.buckets.get(b) or 0
        self.buckets.put(b, n + 1)
        ctx.timer_service.register_event_time_timer(b + BUCKET)
        return [("r", ctx.current_key, c)]

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> list[Any]:
        b = timestamp - BUCKET
        n = self.buckets.get(b)
        self.buckets.remove(b)
        return [("b", ctx.current_key, b, n)]


class BothSides(of.CoProcessFunction):
    """One running count per key over the records of both inputs."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def _one(self, side: str, ctx: of.ProcessContext) -> list[Any]:
        c = self.count.value() + 1
        self.count.update(c)
        return [("c", ctx.current_key, c)]

    def process_element1(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        return self._one("a", ctx)

    def process_element2(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        return self._one("b", ctx)


def _slow(delay: float) -> Any:
    def f(r: Any) -> Any:
        end = time.perf_counter() + delay
        while time.perf_counter() < end:
            pass
        return r
    return f


def build(s: dict[str, Any], flow: of.Flow, out: str, rate: float, slow: float = 0.0) -> None:
    """``slow``: seconds per record in an operator before the sink (backpressure, so
    unaligned barriers overtake queued records)."""
    ws = of.WatermarkStrategy.bounded_out_of_orderness(10.0).with_timestamps(ts_rec)
    src = (flow.source(of.sources.Range(0, s["records"]), name="numbers",
                       parallelism=s["source_parallelism"])
           .map(lambda i: (i, i % 17), name="pairs", parallelism=s["source_parallelism"])
           .map(throttle(rate / s["source_parallelism"]), name="throttle",
                parallelism=s["source_parallelism"])
           .assign_timestamps_and_watermarks(ws, name="stamps")
           if s["seed"] % 2 else
           flow.source(of.sources.Range(0, s["records"]), name="numbers",
                       parallelism=s["source_parallelism"],
                       watermarks=of.WatermarkStrategy.bounded_out_of_orderness(10.0)
                       .with_timestamps(ts_of))
           .map(lambda i: (i, i % 17), name="pairs")
           .map(throttle(rate / s["parallelism"]), name="throttle"))
    stream = src
    for n, st in enumerate(s["stages"]):
        if st == "map":
            stream = stream.map(st_map, name=f"map{n}")
        elif st == "filter":
            stream = stream.filter(st_filter, name=f"filter{n}")
        elif st == "flat":
            stream = stream.flat_map(st_flat, name=f"flat{n}")
        else:
            stream = stream.rebalance()
    t = s["terminal"]
    if t in ("connect", "interval_join", "window_join", "co_group"):
        other = (flow.source(of.sources.Range(0, s["records2"]), name="others",
                             watermarks=of.WatermarkStrategy.bounded_out_of_orderness(10.0)
                             .with_timestamps(ts_of))
                 .map(lambda i: (i, 0), name="pairs2")
                 .map(throttle(rate / 2 / s["parallelism"]), name="throttle2"))
    if t == "count":
        res = (stream.map(lambda r: (key(r), 1), name="ones").key_by(lambda kv: kv[0])
               .reduce(lambda a, b: (a[0], a[1] + b[1]), name="end"))
    elif t == "timers":
        res = stream.key_by(key).process(BucketTimers(), name="end")
    elif t == "tumbling":
        res = (stream.key_by(key).window(of.windows.tumbling(TUMBLE))
               .aggregate(of.agg.count(), name="end"))
    elif t == "sliding":
        res = (stream.map(lambda r: (key(r), r[0]), name="kv").key_by(lambda kv: kv[0])
               .window(of.windows.sliding(SL_SIZE, SL_SLIDE))
               .reduce(lambda a, b: (a[0], a[1] + b[1]), name="end")
               .map(lambda r: (r[0], r[1], r[2], r[3][1]), name="fmt"))
    elif t == "session":
        res = (stream.key_by(key).window(of.windows.session(GAP))
               .process(lambda k, w, els: (len(els), sum(e[0] for e in els)), name="end"))
    elif t == "window_all":
        res = (stream.window_all(of.windows.tumbling(TUMBLE))
               .aggregate(of.agg.sum(lambda r: r[0]), name="end"))
    elif t == "connect":
        res = stream.key_by(key).connect(other.key_by(key)).process(BothSides(), name="end")
    elif t == "interval_join":
        res = (stream.key_by(key2).interval_join(other.key_by(key2)).between(LOWER, UPPER)
               .process(lambda a, b: ("j", a[0], a[1], b[0]), name="end"))
    elif t == "window_join":
        res = (stream.join(other).where(key2).equal_to(key2)
               .window(of.windows.tumbling(WJ))
               .apply(lambda a, b: ("wj", a[0], a[1], b[0]), name="end"))
    elif t == "co_group":
        res = (stream.co_group(other).where(key2).equal_to(key2)
               .window(of.windows.tumbling(WJ))
               .apply(lambda a, b: [("cg", len(a), sum(x[0] for x in a), len(b),
                                     sum(x[0] for x in b))], name="end"))
    elif t == "count_window":  # fires every 5 records of a key: (key, -inf, inf, 5)
        res = (stream.key_by(key).window(of.windows.count(5))
               .aggregate(of.agg.count(), name="end"))
    elif t == "global_trigger":  # keeps counting, fires every 4: 4, 8, 12, ...
        res = (stream.map(lambda r: (key(r), 1), name="ones").key_by(lambda kv: kv[0])
               .window(of.windows.global_()).trigger(of.windows.CountTrigger(4))
               .reduce(lambda a, b: (a[0], a[1] + b[1]), name="end")
               .map(lambda r: (r[0], r[3][1]), name="fmt"))
    else:
        raise SystemExit(f"unknown terminal {t}")
    if slow > 0:
        res = res.map(_slow(slow), name="slow", parallelism=s["sink_parallelism"])
    if out.startswith("kafka://"):  # kafka://BOOTSTRAP/TOPIC: transactional, exactly-once
        from onceflow.kafka import KafkaSink

        bootstrap, _, topic = out[len("kafka://"):].partition("/")
        res.sink(KafkaSink(bootstrap, topic, serializer="json",
                           transactional_id_prefix=f"hunt-{topic}"), name="kafka",
                 parallelism=s["sink_parallelism"])
        return
    res.sink(of.sinks.FileSink(out), name="files", parallelism=s["sink_parallelism"])


def _norm(r: Any) -> tuple[Any, ...]:
    return tuple(_norm(x) if isinstance(x, list) else x for x in r)


def expected(s: dict[str, Any]) -> Counter[tuple[Any, ...]]:
    recs = after_stages(s["stages"], s["records"])
    others = [(i, 0) for i in range(s["records2"])]
    t = s["terminal"]
    out: Counter[tuple[Any, ...]] = Counter()
    if t == "count":
        per = Counter(key(r) for r in recs)
        out.update((k, c) for k, n in per.items() for c in range(1, n + 1))
    elif t == "timers":
        per = Counter(key(r) for r in recs)
        out.update(("r", k, c) for k, n in per.items() for c in range(1, n + 1))
        b = Counter((key(r), math.floor(ts_rec(r) / BUCKET) * BUCKET) for r in recs)
        out.update(("b", k, st, n) for (k, st), n in b.items())
    elif t == "tumbling":
        w = Counter((key(r), math.floor(ts_rec(r) / TUMBLE) * TUMBLE) for r in recs)
        out.update((k, st, st + TUMBLE, n) for (k, st), n in w.items())
    elif t == "sliding":
        sums: Counter[tuple[int, float]] = Counter()
        for r in recs:
            last = math.floor(ts_rec(r) / SL_SLIDE)
            for j in range(last - int(SL_SIZE / SL_SLIDE) + 1, last + 1):
                sums[(key(r), j * SL_SLIDE)] += r[0]
        out.update((k, st, st + SL_SIZE, v) for (k, st), v in sums.items())
    elif t == "session":
        by: dict[int, list[tuple[float, int]]] = {}
        for r in recs:
            by.setdefault(key(r), []).append((ts_rec(r), r[0]))
        for k, evs in by.items():
            evs.sort()
            cur = [evs[0]]
            for e in evs[1:]:
                if e[0] > cur_end(cur):
                    out[(k, cur[0][0], cur_end(cur), (len(cur), sum(x[1] for x in cur)))] += 1
                    cur = []
                cur.append(e)
            out[(k, cur[0][0], cur_end(cur), (len(cur), sum(x[1] for x in cur)))] += 1
    elif t == "window_all":
        sums2: Counter[float] = Counter()
        for r in recs:
            sums2[math.floor(ts_rec(r) / TUMBLE) * TUMBLE] += r[0]
        out.update((None, st, st + TUMBLE, v) for st, v in sums2.items())
    elif t == "connect":
        per = Counter(key(r) for r in recs + others)
        out.update(("c", k, c) for k, n in per.items() for c in range(1, n + 1))
    elif t == "interval_join":
        by_k: dict[int, list[tuple[int, int]]] = {}
        for o in others:
            by_k.setdefault(key2(o), []).append(o)
        for r in recs:
            for o in by_k.get(key2(r), ()):
                if ts_rec(r) + LOWER <= ts_rec(o) <= ts_rec(r) + UPPER:
                    out[("j", r[0], r[1], o[0])] += 1
    elif t == "window_join":
        by_w: dict[tuple[int, float], list[tuple[int, int]]] = {}
        for o in others:
            by_w.setdefault((key2(o), math.floor(ts_rec(o) / WJ)), []).append(o)
        for r in recs:
            for o in by_w.get((key2(r), math.floor(ts_rec(r) / WJ)), ()):
                out[("wj", r[0], r[1], o[0])] += 1
    elif t == "co_group":
        groups: dict[tuple[int, float], list[list[int]]] = {}
        for r in recs:
            groups.setdefault((key2(r), math.floor(ts_rec(r) / WJ)), [[], []])[0].append(r[0])
        for o in others:
            groups.setdefault((key2(o), math.floor(ts_rec(o) / WJ)), [[], []])[1].append(o[0])
        out.update(("cg", len(a), sum(a), len(b), sum(b)) for a, b in groups.values())
    elif t == "count_window":
        per = Counter(key(r) for r in recs)
        out.update((k, -math.inf, math.inf, 5) for k, n in per.items() for _ in range(n // 5))
    elif t == "global_trigger":
        per = Counter(key(r) for r in recs)
        out.update((k, c) for k, n in per.items() for c in range(4, n + 1, 4))
    else:
        raise ValueError(t)
    return out


def cur_end(cur: list[tuple[float, int]]) -> float:
    return max(x[0] for x in cur) + GAP


def committed(out: str) -> Counter[tuple[Any, ...]]:
    """What ``out`` (a FileSink directory, or ``kafka://BOOTSTRAP/TOPIC`` read with
    read_committed) holds."""
    if out.startswith("kafka://"):
        from test_kafka import read_committed

        from onceflow.connectors.jsonvalues import loads

        bootstrap, _, topic = out[len("kafka://"):].partition("/")
        return Counter(_norm(v) for _, _, v in read_committed(bootstrap, topic, decode=loads))
    return Counter(_norm(r) for r in of.sinks.read_committed(out))


def diff(got: Counter[tuple[Any, ...]], want: Counter[tuple[Any, ...]]) -> str:
    dup, lost = got - want, want - got
    return (f"{sum(got.values())} committed vs {sum(want.values())} expected; "
            f"{sum(dup.values())} extra/duplicated e.g. {sorted(dup.items())[:5]}; "
            f"{sum(lost.values())} lost e.g. {sorted(lost.items())[:5]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("seed", type=int)
    ap.add_argument("--terminal", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--rate", type=float, default=2000.0, help="records/s in all")
    ap.add_argument("--interval", type=float, default=0.3)
    ap.add_argument("--restore", default=None)
    ap.add_argument("--parallelism", type=int, default=None, help="instead of the seed's")
    ap.add_argument("--unaligned", action="store_true", help="unaligned checkpoints")
    ap.add_argument("--retained", type=int, default=2)
    ap.add_argument("--incremental", action="store_true", help="incremental checkpoints")
    ap.add_argument("--slow", type=float, default=None,
                    help="seconds per record before the sink (default: 0.0004 if --unaligned)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    s = spec(args.seed, args.terminal)
    if args.parallelism is not None:
        s["parallelism"] = args.parallelism
    backend = (of.state.RocksDBBackend(layer_entries=2_000) if s["backend"] == "rocksdb"
               else of.state.MemoryBackend(full_every=3))
    flow = of.Flow(f"hunt-{s['terminal']}", parallelism=s["parallelism"],
                   batch_size=s["batch"], state_backend=backend,
                   restart_strategy=of.restart.fixed_delay(attempts=20, delay=0.1))
    flow.enable_checkpointing(args.interval, args.ckpt, retained=args.retained,
                              unaligned=args.unaligned,
                              incremental=args.incremental)
    slow = args.slow if args.slow is not None else 0.0004 if args.unaligned else 0.0
    build(s, flow, args.out, args.rate, slow)
    result = flow.run(restore=args.restore)
    print(json.dumps({
        "spec": s,
        "restarts": result.restarts,
        "failures": result.failures,
        "checkpoints": len(result.completed_checkpoints),
        "restored_from": result.restored_from,
        "savepoint": result.savepoint,
        "late_dropped": sum(m.late_dropped for m in result.operators.values()),
    }), flush=True)


if __name__ == "__main__":
    main()
