"""CPU per event of reading the Nexmark source, split as a job of parallelism P splits it.

    python benchmarks/nexmark/source_cost.py 2            # P = 2: both splits, to the end
    python benchmarks/nexmark/source_cost.py 1 --events 2000000

Every split's reader of ``NexmarkSource`` reads to the end in batches of 1,024, in this
one process (no job, no other process: the generator's own cost, free of scheduling
noise). Prints one JSON line: CPU ns per event, best of 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from onceflow.nexmark import NexmarkConfig, NexmarkSource


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parallelism", type=int)
    ap.add_argument("--events", type=int, default=1_000_000)
    a = ap.parse_args()
    src = NexmarkSource(NexmarkConfig(events=a.events))
    best, n = 1e9, 0
    for _ in range(3):
        t0, n = time.process_time(), 0
        for sp in src.splits(a.parallelism):
            r = src.reader(sp, src.initial_position(sp))
            while (b := r.read_batch(1024)) is not None:
                n += len(b)
        best = min(best, time.process_time() - t0)
    print(json.dumps({"parallelism": a.parallelism, "events": n,
                      "ns_per_event": best / n * 1e9}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
