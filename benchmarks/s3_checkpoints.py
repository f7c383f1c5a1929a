"""Checkpoint duration with S3 checkpoint storage against a local directory.

A keyed job with sizeable state (``--keys`` keys, each holding a ``--value-bytes`` bytes
value, updated by a stream of records over ``--seconds`` seconds), exactly-once checkpoints
every ``--interval`` seconds, for each state backend (memory with full snapshots, RocksDB
incremental) into (a) a local directory and (b) ``s3://`` on the SeaweedFS server of
``scripts/s3`` (started if needed; or any store: set ``AWS_ENDPOINT_URL_S3`` and the keys,
and pass ``--bucket``). Reported per case: checkpoints completed, median and max duration
(trigger to ``_metadata`` written), median async phase (snapshot + upload), size.

    python benchmarks/s3_checkpoints.py                   # the default sizes, ~1 min
    python benchmarks/s3_checkpoints.py --keys 20000 --seconds 4 --no-save

Writes benchmarks/results/s3_checkpoints.json (and prints a table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import onceflow as of
from onceflow.testing import throttle

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_ENV = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:38333",
               "AWS_ACCESS_KEY_ID": "onceflow-test",
               "AWS_SECRET_ACCESS_KEY": "onceflow-test-secret", "AWS_REGION": "us-east-1"}


class Fat(of.KeyedProcessFunction):
    """Keeps a value of ``size`` bytes per key (rewritten on every record)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def open(self, ctx: of.RuntimeContext) -> None:
        self.blob = ctx.value_state("blob")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        self.blob.update(bytes([value % 251]) * self.size)
        return []


def run_case(storage: str, backend: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    be = (of.state.RocksDBBackend() if backend == "rocksdb" else of.state.MemoryBackend())
    flow = of.Flow(f"bench-{backend}", parallelism=1, state_backend=be)
    flow.enable_checkpointing(args.interval, storage, incremental=backend == "rocksdb")
    records = args.keys * 3
    rate = records / args.seconds
    (flow.source(of.sources.Range(0, records), name="numbers")
         .map(throttle(rate), name="throttle")
         .key_by(lambda i: i % args.keys)
         .process(Fat(args.value_bytes), name="fat")
         .sink(of.sinks.Discard(), name="discard"))
    t0 = time.perf_counter()
    result = flow.run(fresh=True)
    wall = time.perf_counter() - t0
    done = [c for c in result.completed_checkpoints if not c.final]
    if not done:
        raise SystemExit(f"{storage} {backend}: no checkpoint completed; make --seconds longer")
    ms = [(c.duration or 0) * 1e3 for c in done]
    return {
        "storage": "s3" if storage.startswith("s3://") else "directory",
        "backend": backend, "checkpoints": len(done), "wall_s": round(wall, 2),
        "duration_ms_median": round(statistics.median(ms), 1),
        "duration_ms_max": round(max(ms), 1),
        "async_ms_median": round(statistics.median(c.max_async_ms for c in done), 1),
        "size_mb_median": round(statistics.median(c.size for c in done) / 1e6, 2),
        "incremental_mb_median": round(
            statistics.median((c.incremental_size or c.size) for c in done) / 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--bucket", default="onceflow-bench")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    for k, v in DEFAULT_ENV.items():
        os.environ.setdefault(k, v)
    if os.environ["AWS_ENDPOINT_URL_S3"] == DEFAULT_ENV["AWS_ENDPOINT_URL_S3"]:
        subprocess.run([str(ROOT / "scripts" / "s3"), "start"], check=True,
                       stdout=subprocess.DEVNULL)
    from onceflow.checkpoint.s3 import S3Storage, _client

    c = _client(S3Storage(f"s3://{args.bucket}"))
    try:
        c.head_bucket(Bucket=args.bucket)
    except Exception:
        c.create_bucket(Bucket=args.bucket)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onceflow-bench-") as tmp:
        for backend in ("memory", "rocksdb"):
            for storage in (os.path.join(tmp, f"ckpt-{backend}"),
                            f"s3://{args.bucket}/run-{uuid.uuid4().hex[:8]}"):
                row = run_case(storage, backend, args, tmp)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'backend':8} {'storage':10} {'ckpts':>5} {'median ms':>10} {'max ms':>8} "
          f"{'async ms':>9} {'size MB':>8} {'new MB':>7}")
    for r in rows:
        print(f"{r['backend']:8} {r['storage']:10} {r['checkpoints']:5} "
              f"{r['duration_ms_median']:10.1f} {r['duration_ms_max']:8.1f} "
              f"{r['async_ms_median']:9.1f} {r['size_mb_median']:8.2f} "
              f"{r['incremental_mb_median']:7.2f}")
    if not args.no_save:
        out = HERE / "results" / "s3_checkpoints.json"
        out.write_text(json.dumps({
            "benchmark": "checkpoint duration, S3 (SeaweedFS on this machine) vs directory",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "params": vars(args), "machine": {"cpus": os.cpu_count(),
                                              "python": platform.python_version()},
            "endpoint": os.environ["AWS_ENDPOINT_URL_S3"], "results": rows,
        }, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
