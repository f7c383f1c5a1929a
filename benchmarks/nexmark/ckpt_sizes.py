"""The size of every checkpoint of one Nexmark query on RocksDB, in order: shows whether
window state is bounded (sizes level off, or drop after a compaction) or grows.

    .venv/bin/python benchmarks/nexmark/ckpt_sizes.py q7 3000000
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from queries import build
from run import _counting_sink

import onceflow as of
from onceflow.nexmark import NexmarkConfig


def main() -> None:
    query = sys.argv[1] if len(sys.argv) > 1 else "q7"
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 3_000_000
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    tmp = tempfile.mkdtemp(prefix="nexmark-sizes-")
    try:
        os.makedirs(os.path.join(tmp, "sink"))
        flow = of.Flow(f"nexmark-{query}", parallelism=1, state_backend=of.state.RocksDBBackend(
            local_dir=os.path.join(tmp, "rocks")))
        flow.enable_checkpointing(interval=interval, storage=os.path.join(tmp, "ckpt"))
        build(flow, query, NexmarkConfig(events=events), _counting_sink(os.path.join(tmp, "sink")))
        result = flow.run()
        print(f"{query}, {events:,} events, RocksDB, checkpoint every {interval} s; "
              "sizes in bytes:")
        print(", ".join(f"{c.id}: {c.size:,}" for c in result.completed_checkpoints))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
