#!/usr/bin/env python3
"""Smoke check for the dev broker started by scripts/kafka.

Usage:  python smoke_check.py 127.0.0.1:39092

Needs confluent-kafka (tested with 2.16.1).  Proves, against the running
broker, that:
  * a 4-partition topic can be created with the AdminClient,
  * a transactional producer can init/begin/produce/commit (and that an
    aborted transaction stays invisible),
  * a read_committed consumer reads back exactly the committed records,
  * describe_configs on the broker shows transaction.max.timeout.ms.
Prints one line per step and "smoke check: OK" at the end; exits non-zero on
any failure.  The topic it creates is deleted again.
"""

from __future__ import annotations

import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

PARTITIONS = 4
COMMITTED_PER_PARTITION = 5
TIMEOUT = 30.0


def step(msg: str) -> None:
    print(f"  ok  {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"  FAIL {msg}", flush=True)
    print("smoke check: FAILED", flush=True)
    sys.exit(1)


def main(bootstrap: str) -> None:
    print(f"smoke check against {bootstrap}", flush=True)
    run = uuid.uuid4().hex[:8]
    topic = f"onceflow-smoke-{run}"
    admin = AdminClient({"bootstrap.servers": bootstrap})

    # --- broker config -------------------------------------------------------
    md = admin.list_topics(timeout=TIMEOUT)
    broker_ids = sorted(md.brokers)
    if not broker_ids:
        fail("no broker in cluster metadata")
    res = ConfigResource(ConfigResource.Type.BROKER, str(broker_ids[0]))
    configs = admin.describe_configs([res])[res].result(timeout=TIMEOUT)
    entry = configs.get("transaction.max.timeout.ms")
    if entry is None:
        fail("describe_configs: transaction.max.timeout.ms missing")
    step(f"broker {broker_ids[0]}: transaction.max.timeout.ms = {entry.value}")
    for key in ("transaction.state.log.replication.factor",
                "transaction.state.log.min.isr",
                "offsets.topic.replication.factor"):
        if key in configs:
            step(f"broker {broker_ids[0]}: {key} = {configs[key].value}")

    # --- topic ---------------------------------------------------------------
    fut = admin.create_topics(
        [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
        operation_timeout=TIMEOUT,
    )[topic]
    fut.result(timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while True:
        t = admin.list_topics(topic=topic, timeout=TIMEOUT).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == PARTITIONS:
            break
        if time.monotonic() > deadline:
            fail(f"topic {topic} not visible with {PARTITIONS} partitions")
        time.sleep(0.2)
    step(f"created topic {topic} with {PARTITIONS} partitions")

    try:
        # --- transactional producer -------------------------------------------
        errors: list[str] = []

        def on_delivery(err, _msg):
            if err is not None:
                errors.append(str(err))

        producer = Producer({
            "bootstrap.servers": bootstrap,
            "transactional.id": f"onceflow-smoke-{run}",
            "enable.idempotence": True,
        })
        producer.init_transactions(TIMEOUT)
        step("init_transactions")

        expected: set[str] = set()
        producer.begin_transaction()
        for p in range(PARTITIONS):
            for i in range(COMMITTED_PER_PARTITION):
                v = f"committed-{p}-{i}"
                expected.add(v)
                producer.produce(topic, value=v.encode(), key=f"k{p}".encode(),
                                 partition=p, on_delivery=on_delivery)
        producer.commit_transaction(TIMEOUT)
        if errors:
            fail(f"delivery errors in committed transaction: {errors}")
        step(f"committed transaction with {len(expected)} records")

        producer.begin_transaction()
        for p in range(PARTITIONS):
            producer.produce(topic, value=f"aborted-{p}".encode(), partition=p,
                             on_delivery=on_delivery)
        producer.flush(TIMEOUT)
        producer.abort_transaction(TIMEOUT)
        step(f"aborted transaction with {PARTITIONS} records")

        # a second committed transaction after the abort
        producer.begin_transaction()
        for p in range(PARTITIONS):
            v = f"committed2-{p}"
            expected.add(v)
            producer.produce(topic, value=v.encode(), partition=p,
                             on_delivery=on_delivery)
        producer.commit_transaction(TIMEOUT)
        step("committed a second transaction after the abort")

        # --- read_committed consumer ------------------------------------------
        consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"onceflow-smoke-{run}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got: list[str] = []
        per_partition = {p: 0 for p in range(PARTITIONS)}
        deadline = time.monotonic() + TIMEOUT
        while len(got) < len(expected) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                fail(f"consumer error: {msg.error()}")
            got.append(msg.value().decode())
            per_partition[msg.partition()] += 1
        # linger briefly: anything extra (e.g. aborted records) would show up here
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg.value().decode())
        consumer.close()

        if any(v.startswith("aborted") for v in got):
            fail(f"read_committed consumer saw aborted records: {got}")
        if sorted(got) != sorted(expected):
            missing = sorted(expected - set(got))
            fail(f"read_committed consumer got {len(got)} records, expected "
                 f"{len(expected)}; missing {missing}")
        step(f"read_committed consumer read exactly the {len(got)} committed "
             f"records (per partition {per_partition}), no aborted ones")
    finally:
        try:
            admin.delete_topics([topic], operation_timeout=TIMEOUT)[topic].result(
                timeout=TIMEOUT)
        except KafkaException as exc:  # cleanup only
            print(f"  (could not delete {topic}: {exc})", flush=True)

    print("smoke check: OK", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        main(sys.argv[1])
    except KafkaException as exc:
        fail(f"KafkaException: {exc}")
