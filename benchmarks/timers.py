"""Event-time timers at scale: N keys with one timer each, memory backend (heap) against
RocksDB (timers in RocksDB), driving the keyed store directly as a window operator does.

Per backend, in a fresh subprocess: register one event timer per key with ``repeats``
register calls per key (the first creates the timer, the others find it: a window
operator registers its window's end for every record), one checkpoint (RocksDB: its head
size), the process's resident memory grown since the store was created, then every timer
fired in time order by an advancing watermark.

    python benchmarks/timers.py                 # N = 1,000,000
    python benchmarks/timers.py --keys 200000

Writes benchmarks/results/timers.json; exits non-zero when a run fired the wrong timers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "timers.json")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def one(backend: str, n: int, repeats: int) -> dict[str, Any]:
    import onceflow as of
    from onceflow.state.backend import SnapshotTarget
    from onceflow.state.memory import KeyedStore
    from onceflow.state.rocksdb import RocksDBStore

    tmp = tempfile.mkdtemp(prefix="onceflow-bench-timers-")
    gc.collect()
    base = _rss_mb()
    store: Any = (KeyedStore(128, (0, 128)) if backend == "memory" else
                  RocksDBStore(of.state.RocksDBBackend(local_dir=os.path.join(tmp, "local")),
                               128, (0, 128), operator="bench", owner="bench-0",
                               incremental=True, flow_dir=tmp))
    try:
        scope = store.scope
        reg = store.register_event_timer
        t0 = time.perf_counter()
        for k in range(n):
            scope.key = k
            reg(float(k % 1000) + 10.0)
            if k % 1000 == 999:
                store.after_batch()
        new_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in range(n):
            scope.key = k
            for _ in range(repeats - 1):
                reg(float(k % 1000) + 10.0)
            if k % 1000 == 999:
                store.after_batch()
        repeat_s = time.perf_counter() - t0
        snap = store.snapshot(1)
        head = snap.sync_state if hasattr(snap, "sync_state") else snap
        head_bytes = len(pickle.dumps(head, protocol=5))
        if hasattr(snap, "run"):
            d = os.path.join(tmp, "chk-1")
            os.makedirs(d)
            snap.run(SnapshotTarget(1, d, os.path.join(tmp, "shared"), "bench-0"))
        store.after_batch()
        gc.collect()
        rss = _rss_mb() - base
        count = store.timer_count()
        t0 = time.perf_counter()
        fired, last, ordered = 0, float("-inf"), True
        for wm in range(0, 1100, 50):
            for when, _ in store.pop_due_event_timers(float(wm)):
                ordered = ordered and when >= last
                last = when
                fired += 1
            store.after_batch()
        pop_s = time.perf_counter() - t0
    finally:
        store.close()
    return {"backend": backend, "keys": n, "timers": count, "fired": fired,
            "valid": fired == n == count and ordered,
            "rss_mb": round(rss, 1), "head_bytes": head_bytes,
            "register_new_us": round(new_s / n * 1e6, 2),
            "register_existing_us": round(repeat_s / (n * max(1, repeats - 1)) * 1e6, 2),
            "pop_us": round(pop_s / max(1, fired) * 1e6, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=4, help="register calls per key")
    ap.add_argument("--one", choices=["memory", "rocksdb"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.keys, args.repeats)))
        return 0
    runs = []
    for backend in ("memory", "rocksdb"):
        out = subprocess.run([sys.executable, __file__, "--one", backend, "--keys",
                              str(args.keys), "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"benchmark": "timers", "python": platform.python_version(),
                   "cpus": os.cpu_count(), "runs": runs}, f, indent=2)
    return 0 if all(r["valid"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
