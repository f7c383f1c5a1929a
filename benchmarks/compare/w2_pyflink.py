"""W2 on PyFlink (DataStream API) with Flink's Kafka connector: KafkaSource (bounded at
the end offsets the topic has at start) → Python map parsing JSON → key_by user →
reduce (running total) → Python map to JSON → KafkaSink with
DeliveryGuarantee.EXACTLY_ONCE (Kafka transactions committed when a checkpoint completes),
EXACTLY_ONCE checkpoints every 1 s, parallelism 1, hashmap state backend."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, maxrss_self_mb, python_mode
from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

REC = Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG()])  # (user, total, id)


def parse(s):
    r = json.loads(s)
    return (r["user"], r["amount"], r["id"])


def to_json(r):
    return json.dumps({"user": r[0], "total": r[1], "id": r[2]})


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("--bootstrap", "--input", "--output", "--workdir", "--jar"):
        ap.add_argument(k, required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--execution-mode", choices=["process", "thread"], default="thread",
                    help="python.execution-mode (Flink's default: process; thread is what "
                         "Flink's docs recommend for performance)")
    a = ap.parse_args()
    t0 = time.time()
    conf = Configuration()
    conf.set_string("state.backend.type", "hashmap")
    conf.set_string("execution.checkpointing.storage", "jobmanager")
    python_mode(conf, a.execution_mode)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.add_jars("file://" + os.path.abspath(a.jar))
    env.set_parallelism(1)
    env.set_python_executable(sys.executable)
    env.enable_checkpointing(1000, CheckpointingMode.EXACTLY_ONCE)
    source = (KafkaSource.builder()
              .set_bootstrap_servers(a.bootstrap)
              .set_topics(a.input)
              .set_group_id(f"w2-pyflink-{a.output}")
              .set_starting_offsets(KafkaOffsetsInitializer.earliest())
              .set_bounded(KafkaOffsetsInitializer.latest())
              .set_value_only_deserializer(SimpleStringSchema())
              .set_property("isolation.level", "read_committed")
              .build())
    sink = (KafkaSink.builder()
            .set_bootstrap_servers(a.bootstrap)
            .set_record_serializer(KafkaRecordSerializationSchema.builder()
                                   .set_topic(a.output)
                                   .set_value_serialization_schema(SimpleStringSchema())
                                   .build())
            .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .set_transactional_id_prefix(f"w2-{a.output}")
            # must not exceed the broker's transaction.max.timeout.ms (15 min default)
            .set_property("transaction.timeout.ms", "600000")
            .build())
    (env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka-in")
        .map(parse, output_type=REC)
        .key_by(lambda r: r[0], key_type=Types.STRING())
        .reduce(lambda acc, r: (r[0], acc[1] + r[1], r[2]))
        .map(to_json, output_type=Types.STRING())
        .sink_to(sink))
    res = env.execute("w2")
    emit({"job_s": time.time() - t0, "job_net_runtime_s": res.get_net_runtime() / 1000,
          "self_maxrss_mb": maxrss_self_mb()})


if __name__ == "__main__":
    main()
