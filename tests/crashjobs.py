"""Flows of different shapes for crash tests, each with its exact expected output.

Run as a script so a test can SIGKILL the driver or its workers:

    python tests/crashjobs.py SHAPE --out DIR --ckpt DIR [--parallelism P] [--restore latest]
                              [--ray ADDRESS]

prints one JSON line with the job's result. ``expected(shape, records)`` computes, without
onceflow, the multiset of records a failure-free run commits. Every shape emits running
counts (1, 2, ..., n per key), so a replayed or lost record shows up as a count that is
missing or appears twice, whatever order records arrive in.
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
from onceflow.testing import throttle

KEYS = 97


def words_corpus(directory: str, files: int = 4, lines: int = 1500) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for f in range(files):
        p = os.path.join(directory, f"part-{f}.txt")
        if not os.path.exists(p):
            with open(p + ".tmp", "w") as fh:
                for ln in range(lines):
                    n = (f * 7919 + ln * 31) % 11
                    fh.write(" ".join(f"w{(f * 13 + ln * 17 + k * 7) % 89}" for k in range(n)))
                    fh.write("\n")
            os.rename(p + ".tmp", p)
        paths.append(p)
    return paths


class CountPerKey(of.KeyedProcessFunction):
    def open(self, ctx: of.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.seen = ctx.list_state("recent")
        self.by_parity = ctx.map_state("parity")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        c = self.count.value() + 1
        self.count.update(c)
        self.seen.update([value])  # keep list state small but exercised
        self.by_parity.put(c % 2, c)
        return [("stage2", ctx.current_key, c)]


class _SlowSink(of.sinks.FileSink):
    """A FileSink that takes ``delay`` seconds per record: downstream backpressure."""

    def __init__(self, path: str, delay: float) -> None:
        super().__init__(path)
        self.delay = delay

    def write(self, txn: Any, records: list[Any]) -> None:
        import time

        end = time.perf_counter() + self.delay * len(records)
        super().write(txn, records)
        while time.perf_counter() < end:
            time.sleep(0.0005)


def build(shape: str, flow: of.Flow, records: int, rate: float, out: str,
          corpus: str, slow: float = 0.0, sink: Any = None, drop_late: bool = False) -> None:
    """``sink``: another sink than the FileSink at ``out`` (the Kafka window tests);
    ``drop_late``: window_tumbling without a late-data output (late records counted)."""
    if sink is None:
        sink = of.sinks.FileSink(out) if slow <= 0 else _SlowSink(out, slow)
    if shape == "keyed_count":
        (flow.source(of.sources.Range(0, records), name="numbers")
             .map(throttle(rate), name="throttle")
             .map(lambda i: (i % KEYS, 1), name="pairs")
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
             .sink(sink, name="files"))
    elif shape == "union_flatmap":
        a = flow.source(of.sources.Range(0, records // 2), name="evens-src") \
            .map(throttle(rate / 2), name="throttle-a")
        b = flow.source(of.sources.Range(records // 2, records), name="odds-src", parallelism=1) \
            .map(throttle(rate / 2), name="throttle-b")
        (a.union(b, name="union")
          .flat_map(lambda i: [i, i + 1_000_000_000] if i % 3 == 0 else [i], name="explode")
          .filter(lambda i: i % 5 != 1, name="drop")
          .map(lambda i: ("k" + str(i % KEYS), 1), name="pairs")
          .key_by(lambda kv: kv[0])
          .reduce(lambda x, y: (x[0], x[1] + y[1]), name="count")
          .sink(sink, name="files"))
    elif shape == "two_keyed":
        (flow.source(of.sources.Range(0, records), name="numbers")
             .map(throttle(rate), name="throttle")
             .map(lambda i: (i % KEYS, 1), name="pairs")
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
             .key_by(lambda kc: kc[1] % 7)
             .process(CountPerKey(), name="count-by-residue")
             .sink(sink, name="files"))
    elif shape == "text_wordcount":
        words_corpus(corpus)
        (flow.source(of.sources.TextFiles(os.path.join(corpus, "*.txt")), name="lines")
             .map(throttle(rate / 6), name="throttle")
             .flat_map(lambda line: [(w, 1) for w in line.split()], name="words")
             .key_by(lambda wc: wc[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
             .sink(sink, name="files"))
    elif shape == "mixed_parallelism":
        (flow.source(of.sources.Range(0, records), name="numbers", parallelism=1)
             .map(throttle(rate), name="throttle", parallelism=1)
             .rebalance()
             .map(lambda i: (i % KEYS, 1), name="pairs", parallelism=2)
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", parallelism=2)
             .sink(sink, name="files", parallelism=1))
    elif shape in WINDOW_SHAPES:
        build_window(shape, flow, records, rate, sink, drop_late)
    else:
        raise SystemExit(f"unknown shape {shape}")


# --- window shapes: event time = the record's number (see wt_ts) -------------------------
WINDOW_SHAPES = ("window_tumbling", "window_session", "window_sliding")
WT_SIZE, WT_LATENESS, WS_GAP, WL_SIZE, WL_SLIDE = 100.0, 50.0, 50.0, 200.0, 50.0


def wt_late(i: int) -> bool:
    """Records of window_tumbling that are far behind (3000 s) and therefore surely late:
    the watermark the window has seen is at most two batches (512 records) behind."""
    return i % 101 == 0 and i > 4000


def wt_ts(i: int) -> float:
    return float(i - 3000) if wt_late(i) else float(i - (i * 7) % 10)


def _session_key(i: int) -> int:
    return (i // 7) % KEYS


def build_window(shape: str, flow: of.Flow, records: int, rate: float, sink: Any,
                 drop_late: bool = False) -> None:
    if shape == "window_tumbling":
        ws = of.WatermarkStrategy.bounded_out_of_orderness(10.0).with_timestamps(wt_ts)
        late = of.OutputTag("late")
        win = (flow.source(of.sources.Range(0, records), name="numbers", parallelism=1,
                           watermarks=ws)
               .map(throttle(rate), name="throttle", parallelism=1)
               .key_by(lambda i: i % KEYS)
               .window(of.windows.tumbling(WT_SIZE)).allowed_lateness(WT_LATENESS))
        if drop_late:  # late records are only counted (late_dropped)
            (win.aggregate(of.agg.count(), name="window")
                .map(lambda r: ("w", r[0], r[1], r[2], r[3]), name="fmt")
                .sink(sink, name="files"))
            return
        res = win.side_output_late_data(late).aggregate(of.agg.count(), name="window")
        out = res.map(lambda r: ("w", r[0], r[1], r[2], r[3]), name="fmt")
        lt = res.side_output(late).map(lambda i: ("late", i), name="fmt-late")
        out.union(lt, name="both").sink(sink, name="files")
        return
    ws = of.WatermarkStrategy.bounded_out_of_orderness(5.0).with_timestamps(float)
    src = (flow.source(of.sources.Range(0, records), name="numbers", watermarks=ws)
           .map(throttle(rate), name="throttle"))
    if shape == "window_session":
        (src.key_by(_session_key)
            .window(of.windows.session(WS_GAP))
            .process(lambda k, w, els: (len(els), sum(els)), name="window")
            .map(lambda r: ("s", r[0], r[1], r[2], r[3][0], r[3][1]), name="fmt")
            .sink(sink, name="files"))
    else:
        (src.key_by(lambda i: i % KEYS)
            .window(of.windows.sliding(WL_SIZE, WL_SLIDE))
            .aggregate(of.agg.count(), lambda k, w, c: (c, w.end - w.start), name="window")
            .map(lambda r: ("l", r[0], r[1], r[2], r[3][0], r[3][1]), name="fmt")
            .sink(sink, name="files"))


def late_count(records: int) -> int:
    """How many records of window_tumbling are late."""
    return sum(1 for i in range(records) if wt_late(i))


def expected_window(shape: str, records: int, drop_late: bool = False
                    ) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    if shape == "window_tumbling":
        per: Counter[tuple[Any, ...]] = Counter()
        for i in range(records):
            if wt_late(i):
                if not drop_late:
                    out[("late", i)] += 1
            else:
                s = (wt_ts(i) // WT_SIZE) * WT_SIZE
                per[(i % KEYS, s, s + WT_SIZE)] += 1
        out.update(("w", *w, c) for w, c in per.items())
        return out
    if shape == "window_sliding":
        per = Counter()
        n = int(WL_SIZE // WL_SLIDE)
        for i in range(records):
            last = int(i // WL_SLIDE)
            for j in range(last - n + 1, last + 1):
                per[(i % KEYS, j * WL_SLIDE, j * WL_SLIDE + WL_SIZE)] += 1
        out.update(("l", *w, c, WL_SIZE) for w, c in per.items())
        return out
    by_key: dict[int, list[int]] = {}
    for i in range(records):
        by_key.setdefault(_session_key(i), []).append(i)
    for k, ts in by_key.items():
        cur = [ts[0]]
        for t in ts[1:]:
            if t > cur[-1] + WS_GAP:
                out[("s", k, float(cur[0]), cur[-1] + WS_GAP, len(cur), sum(cur))] += 1
                cur = []
            cur.append(t)
        out[("s", k, float(cur[0]), cur[-1] + WS_GAP, len(cur), sum(cur))] += 1
    return out


def _running_counts(keys: list[Any]) -> Counter[tuple[Any, ...]]:
    per = Counter(keys)
    return Counter((k, c) for k, n in per.items() for c in range(1, n + 1))


def expected(shape: str, records: int, corpus: str = "") -> Counter[tuple[Any, ...]]:
    """The committed output of a failure-free run, computed without onceflow."""
    if shape in WINDOW_SHAPES:
        return expected_window(shape, records)
    if shape in ("keyed_count", "mixed_parallelism"):
        return _running_counts([i % KEYS for i in range(records)])
    if shape == "union_flatmap":
        vals = []
        for i in range(records):
            vals.extend([i, i + 1_000_000_000] if i % 3 == 0 else [i])
        return _running_counts(["k" + str(v % KEYS) for v in vals if v % 5 != 1])
    if shape == "two_keyed":
        stage1 = _running_counts([i % KEYS for i in range(records)])
        residues = [c % 7 for (_, c), n in stage1.items() for _ in range(n)]
        return Counter(("stage2", r, c) for (r, c) in _running_counts(residues))
    if shape == "text_wordcount":
        words = []
        for p in words_corpus(corpus):
            with open(p) as fh:
                for line in fh:
                    words.extend(line.split())
        return _running_counts(words)
    raise ValueError(shape)


def committed(out: str) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r) for r in of.sinks.read_committed(out))


def diff(got: Counter[tuple[Any, ...]], want: Counter[tuple[Any, ...]]) -> str:
    dup = got - want
    lost = want - got
    return (f"{sum(got.values())} committed vs {sum(want.values())} expected; "
            f"{sum(dup.values())} extra/duplicated e.g. {list(dup.items())[:5]}; "
            f"{sum(lost.values())} lost e.g. {list(lost.items())[:5]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--corpus", default="")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--rate", type=float, default=20_000.0, help="records/s per subtask")
    ap.add_argument("--interval", type=float, default=0.3)
    ap.add_argument("--mode", default="exactly_once")
    ap.add_argument("--retained", type=int, default=2)
    ap.add_argument("--restore", default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-concurrent", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--tolerable", type=int, default=0)
    ap.add_argument("--backend", choices=["memory", "rocksdb"], default="memory")
    ap.add_argument("--incremental", action="store_true")
    ap.add_argument("--unaligned", action="store_true")
    ap.add_argument("--aligned-timeout", type=float, default=None)
    ap.add_argument("--buffer-time", type=float, default=None)
    ap.add_argument("--kafka", default=None, metavar="BOOTSTRAP",
                    help="write into Kafka (exactly-once KafkaSink) instead of files")
    ap.add_argument("--topic", default="", help="with --kafka: the output topic")
    ap.add_argument("--prefix", default=None, help="with --kafka: transactional id prefix")
    ap.add_argument("--drop-late", action="store_true",
                    help="window_tumbling without a late-data output")
    ap.add_argument("--slow", type=float, default=0.0,
                    help="seconds per record in an operator just before the sink "
                         "(backpressure)")
    ap.add_argument("--ray", default=None,
                    help="run on the Ray cluster at this address (placement spread)")
    ap.add_argument("--restart-delay", type=float, default=0.1,
                    help="seconds between restarts (20 attempts)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    backend = (of.state.RocksDBBackend(layer_entries=2_000) if args.backend == "rocksdb"
               else of.state.MemoryBackend(full_every=3))
    flow = of.Flow(f"crash-{args.shape}", parallelism=args.parallelism,
                   batch_size=args.batch_size, state_backend=backend,
                   restart_strategy=of.restart.fixed_delay(attempts=20,
                                                               delay=args.restart_delay))
    flow.enable_checkpointing(args.interval, args.ckpt, mode=args.mode, retained=args.retained,
                              max_concurrent=args.max_concurrent, timeout=args.timeout,
                              tolerable_failures=args.tolerable,
                              incremental=args.incremental, unaligned=args.unaligned,
                              aligned_timeout=args.aligned_timeout,
                              buffer_time=args.buffer_time)
    sink = None
    if args.kafka:
        from onceflow.kafka import KafkaSink

        sink = KafkaSink(args.kafka, args.topic, serializer="json",
                         transactional_id_prefix=args.prefix)
    build(args.shape, flow, args.records, args.rate, args.out, args.corpus, args.slow, sink,
          args.drop_late)
    executor: Any = None
    if args.ray:
        import ray

        ray.init(address=args.ray, include_dashboard=False, log_to_driver=False)
        executor = of.executors.Ray(placement="spread")
    result = flow.run(restore=args.restore, executor=executor)
    print(json.dumps({
        "restarts": result.restarts,
        "failures": result.failures,
        "attempts": result.attempts,
        "checkpoints": len(result.completed_checkpoints),
        "restored_from": result.restored_from,
        "sink_in": result.operators["files"].records_in,
        "late_dropped": sum(m.late_dropped for m in result.operators.values()),
    }), flush=True)


if __name__ == "__main__":
    main()
