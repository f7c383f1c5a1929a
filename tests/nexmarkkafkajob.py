"""A Nexmark query (benchmarks/nexmark/queries.py) into Kafka exactly-once, run as its own
driver process by tests/test_nexmark_kafka.py, which SIGKILLs its workers and the driver:

    python tests/nexmarkkafkajob.py q5 --bootstrap B --output T --prefix P --ckpt DIR \
        [--input T] [--restore latest]

Events: the generator in-process (3 splits), or ``--input``, a topic ``prefill_kafka``
filled with the same events; both with ``joinjobs.nexmark_query_config(--records)``
(seed 17, 1,000 events/s of event time, 1 s disorder), throttled to ``--rate`` events/s
per subtask so that kills land mid-run. Results: ``KafkaSink(guarantee="exactly_once")``
as JSON. Prints one JSON line at the end (restarts, checkpoints, restored_from)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "benchmarks", "nexmark"))
import queries
from joinjobs import nexmark_query_config

import onceflow as of
from onceflow.kafka import KafkaSink


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("query")
    for k in ("--bootstrap", "--output", "--prefix", "--ckpt"):
        ap.add_argument(k, required=True)
    ap.add_argument("--input", default=None, help="read this pre-filled topic")
    ap.add_argument("--records", type=int, default=30_000)
    ap.add_argument("--rate", type=float, default=3_000.0, help="events/s per subtask")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.3)
    ap.add_argument("--backend", choices=["memory", "rocksdb"], default="memory")
    ap.add_argument("--restore", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    backend = (of.state.RocksDBBackend() if args.backend == "rocksdb"
               else of.state.MemoryBackend())
    flow = of.Flow(f"nexmark-kafka-{args.query}", parallelism=args.parallelism,
                   batch_size=256, state_backend=backend,
                   restart_strategy=of.restart.fixed_delay(attempts=20, delay=0.1))
    flow.enable_checkpointing(args.interval, args.ckpt, retained=2, timeout=30)
    sink = KafkaSink(args.bootstrap, args.output, guarantee="exactly_once",
                     serializer="json", transactional_id_prefix=args.prefix,
                     transaction_timeout_ms=120_000)
    queries.build(flow, args.query, nexmark_query_config(args.records), sink,
                  partitions=3, throttle_to=args.rate,
                  kafka=(args.bootstrap, args.input) if args.input else None)
    result = flow.run(restore=args.restore)
    print(json.dumps({"restarts": result.restarts,
                      "checkpoints": len(result.completed_checkpoints),
                      "restored_from": result.restored_from}), flush=True)


if __name__ == "__main__":
    main()
