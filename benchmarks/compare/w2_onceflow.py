"""W2 on onceflow: KafkaSource (bounded: stop_at="end") → parse JSON → key by user →
running total → KafkaSink exactly-once; checkpoint every 1 s, parallelism 1."""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, maxrss_self_mb

import onceflow as of
from onceflow.kafka import KafkaSink, KafkaSource


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("--bootstrap", "--input", "--output", "--workdir"):
        ap.add_argument(k, required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--parallelism", type=int, default=1)
    a = ap.parse_args()
    t0 = time.time()
    flow = of.Flow("w2", parallelism=a.parallelism)
    flow.enable_checkpointing(1.0, os.path.join(a.workdir, "ckpt"))
    (flow.source(KafkaSource(a.bootstrap, [a.input], deserializer="json", value_only=True,
                             stop_at="end"), name="kafka-in")
         .map(lambda r: {"user": r["user"], "total": r["amount"], "id": r["id"]}, name="parse")
         .key_by(lambda r: r["user"])
         .reduce(lambda acc, r: {"user": r["user"], "total": acc["total"] + r["total"],
                                 "id": r["id"]}, name="total")
         .sink(KafkaSink(a.bootstrap, a.output, guarantee="exactly_once",
                         key=lambda r: r["user"], key_serializer="str", serializer="json"),
               name="kafka-out"))
    result = flow.run()
    emit({"job_s": time.time() - t0, "processing_s_engine": result.processing_seconds,
          "checkpoints": len(result.completed_checkpoints), "self_maxrss_mb": maxrss_self_mb()})


if __name__ == "__main__":
    main()
