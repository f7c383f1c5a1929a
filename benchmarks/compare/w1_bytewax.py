"""W1 keyed-sum on Bytewax 0.21 with recovery on (snapshot every 1 s).

    python w1_bytewax.py --records N --workdir DIR

Equivalent to `python -m bytewax.recovery DIR/db 1` followed by
`python -m bytewax.run w1_bytewax:flow -w 1 -r DIR/db -s 1 -b 0` (single worker,
parallelism 1); run in-process so the program can time the run and check the sink.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bytewax.operators as op
from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from common import emit, maxrss_self_mb, w1_problems

BATCH = 1024  # records per next_batch call (same batch size as onceflow's default)


class _GenPartition(StatefulSourcePartition[tuple[int, int], int]):
    """Replayable generator of W1's records; its state is the next index."""

    def __init__(self, n: int, start: int) -> None:
        self.n, self.i = n, start

    def next_batch(self) -> list[tuple[int, int]]:
        if self.i >= self.n:
            raise StopIteration()
        lo, hi = self.i, min(self.n, self.i + BATCH)
        self.i = hi
        return [(i * 7919 % 10000, i % 100) for i in range(lo, hi)]

    def snapshot(self) -> int:
        return self.i


class W1Source(FixedPartitionedSource[tuple[int, int], int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        return _GenPartition(self.n, resume_state or 0)


class _CountPartition(StatefulSinkPartition[tuple[int, int], Any]):
    """Counts what it receives and keeps each key's last sum; both are snapshotted
    (the same state onceflow's CountingSink checkpoints)."""

    def __init__(self, path: str, state: Any) -> None:
        self.path = path
        self.n, self.last = state if state else (0, {})

    def write_batch(self, items: list[tuple[int, int]]) -> None:  # (key, sum) values
        self.n += len(items)
        self.last.update(items)

    def snapshot(self) -> Any:
        return (self.n, dict(self.last))

    def close(self) -> None:
        with open(self.path, "w") as f:
            json.dump({"n": self.n, "last_sum": sum(self.last.values()),
                       "keys": len(self.last)}, f)


class CountingSink(FixedPartitionedSink[int, Any]):
    def __init__(self, path: str) -> None:
        self.path = path

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any):
        return _CountPartition(self.path, resume_state)


def double(kv: tuple[int, int]) -> tuple[int, int]:
    return (kv[0], kv[1] * 2)


def running_sum(state: int | None, kv: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    s = kv[1] if state is None else state + kv[1]
    return (s, (kv[0], s))  # new state, emitted (key, updated_sum)


def build(n: int, out_path: str) -> Dataflow:
    flow = Dataflow("w1")
    inp = op.input("source", flow, W1Source(n))
    doubled = op.map("double", inp, double)
    keyed = op.map("key", doubled, lambda kv: (str(kv[0]), kv))  # bytewax keys are str
    sums = op.stateful_map("sum", keyed, running_sum)
    op.output("sink", sums, CountingSink(out_path))
    return flow


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--recovery", choices=["on", "off"], default="on")
    a = ap.parse_args()
    out_path = os.path.join(a.workdir, "sink.json")
    db = os.path.join(a.workdir, "db")
    flow = build(a.records, out_path)
    kwargs: dict[str, Any] = {"workers_per_process": 1}
    if a.recovery == "on":
        os.makedirs(db, exist_ok=True)
        init_db_dir(db, 1)
        kwargs["epoch_interval"] = timedelta(seconds=1)
        kwargs["recovery_config"] = RecoveryConfig(db, backup_interval=timedelta(0))
    t0 = time.perf_counter()
    cli_main(flow, **kwargs)
    secs = time.perf_counter() - t0
    with open(out_path) as f:
        d = json.load(f)
    problems = w1_problems(a.records, d["n"], d["last_sum"])
    emit({"records": a.records, "processing_s": secs, "records_per_s": a.records / secs,
          "emitted": d["n"], "last_sum_total": d["last_sum"], "keys": d["keys"],
          "self_maxrss_mb": maxrss_self_mb(), "valid": not problems, "problems": problems})


if __name__ == "__main__":
    main()
