"""A keyed flow with every kind of keyed state, for state-backend, savepoint and rescaling
tests; also runnable as a script so a test can SIGKILL its driver:

    python tests/statejobs.py --out DIR --ckpt DIR --backend rocksdb --parallelism 3 \
        [--restore PATH|latest] [--incremental]

The flow counts records per key twice: a ``reduce`` (value state) and a process function
that keeps value, list and map state. Both emit running counts, so the committed output of
any sequence of runs, stops, restores and rescalings must equal :func:`expected` exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from typing import Any

import onceflow as of
from onceflow.testing import throttle

KEYS = 61


class Tally(of.KeyedProcessFunction):
    """Counts per key with value state; keeps the last three values (list state) and a
    histogram of values mod 4 (map state), and checks them against the count."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.recent = ctx.list_state("recent")
        self.hist = ctx.map_state("hist")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        c = self.count.value() + 1
        self.count.update(c)
        recent = self.recent.get()
        recent.append(value[1])
        self.recent.update(recent[-3:])
        self.hist.put(value[1] % 4, (self.hist.get(value[1] % 4) or 0) + 1)
        total = sum(self.hist.values())
        if total != c:
            raise AssertionError(f"map state lost updates: {total} != {c} for {ctx.current_key}")
        if len(self.recent.get()) != min(c, 3):
            raise AssertionError("list state lost updates")
        return [("tally", ctx.current_key, c)]


def backend(name: str) -> Any:
    if name == "rocksdb":
        return of.state.RocksDBBackend(layer_entries=500)
    return of.state.MemoryBackend(full_every=3)


def build(out: str, ckpt: str, *, backend_name: str, parallelism: int, records: int,
          rate: float, interval: float = 0.1, incremental: bool = False,
          key_type: str = "int", retained: int = 2) -> of.Flow:
    flow = of.Flow("statejob", parallelism=parallelism, state_backend=backend(backend_name),
                   batch_size=128,
                   restart_strategy=of.restart.fixed_delay(attempts=10, delay=0.1))
    flow.enable_checkpointing(interval, ckpt, incremental=incremental, retained=retained)
    conv = str if key_type == "str" else int
    pairs = (flow.source(of.sources.Range(0, records), name="numbers")
             .map(throttle(rate), name="throttle")
             .map(lambda i: (conv(i % KEYS), i), name="pairs"))
    (pairs.map(lambda kv: (kv[0], 1), name="ones")
          .key_by(lambda kv: kv[0])
          .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
          .map(lambda t: ("count", t[0], t[1]), name="shape")
          .sink(of.sinks.FileSink(out, prefix="count"), name="count-out"))
    (pairs.key_by(lambda kv: kv[0])
          .process(Tally(), name="tally")
          .sink(of.sinks.FileSink(out, prefix="tally"), name="tally-out"))
    return flow


def expected(records: int, key_type: str = "int") -> Counter[tuple[Any, ...]]:
    conv = str if key_type == "str" else int
    per = Counter(conv(i % KEYS) for i in range(records))
    out: Counter[tuple[Any, ...]] = Counter()
    for k, n in per.items():
        for c in range(1, n + 1):
            out[("count", k, c)] += 1
            out[("tally", k, c)] += 1
    return out


def committed(out: str) -> Counter[tuple[Any, ...]]:
    rows = of.sinks.read_committed(out, prefix="count") + \
        of.sinks.read_committed(out, prefix="tally")
    return Counter(tuple(r) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--backend", default="memory")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=4_000.0)
    ap.add_argument("--incremental", action="store_true")
    ap.add_argument("--restore", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    flow = build(args.out, args.ckpt, backend_name=args.backend, parallelism=args.parallelism,
                 records=args.records, rate=args.rate, incremental=args.incremental)
    result = flow.run(restore=args.restore)
    print(json.dumps({"restarts": result.restarts,
                      "checkpoints": len(result.completed_checkpoints)}), flush=True)


if __name__ == "__main__":
    main()
