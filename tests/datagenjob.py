"""A DataGen job for crash tests, run as its own driver process so a test can SIGKILL its
workers:

    python tests/datagenjob.py --out DIR --ckpt DIR [--parallelism P] [--count N] [--rate R]

``fn(i)`` is a pure function of the index, so the committed output of any run, with or
without crashes, must be exactly ``[record(i) for i in range(N)]`` (as a multiset), and
each sink subtask's records in index order within a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import onceflow as of


def record(i: int) -> dict[str, Any]:
    return {"i": i, "sq": i * i, "tag": f"r{i % 13}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--count", type=int, default=40_000)
    ap.add_argument("--rate", type=float, default=8_000.0)
    ap.add_argument("--format", default="jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    flow = of.Flow("datagen-crash", parallelism=args.parallelism, batch_size=256,
                   restart_strategy=of.restart.fixed_delay(attempts=20, delay=0.1))
    flow.enable_checkpointing(0.3, args.ckpt, retained=2)
    (flow.source(of.sources.DataGen(record, rate=args.rate, count=args.count), name="gen")
         .sink(of.sinks.FileSink(args.out, format=args.format), name="files"))
    result = flow.run()
    print(json.dumps({"restarts": result.restarts, "sink_in": result.records_in("files")}),
          flush=True)


if __name__ == "__main__":
    main()
