"""prefill_kafka against the real broker (``scripts/kafka``): the topic holds exactly the
generator's events as JSON, event ``n`` in partition ``n % partitions``, in order."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import confluent_kafka as ck  # a missing client must fail the suite, not skip it
import orjson
import pytest

from onceflow.nexmark import Generator, NexmarkConfig, prefill_kafka

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bootstrap() -> str:
    proc = subprocess.run([str(ROOT / "scripts" / "kafka"), "start"], capture_output=True,
                          text=True, timeout=180)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"scripts/kafka start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def test_prefill_writes_the_generators_events_per_partition_in_order(bootstrap: str) -> None:
    topic = f"nexmark-{uuid.uuid4().hex[:8]}"
    config = NexmarkConfig(events=5000, seed=9, out_of_orderness=1.0, late_fraction=0.02)
    assert prefill_kafka(bootstrap, topic, config, partitions=4) == 5000
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got: dict[int, list[dict[str, object]]] = {p: [] for p in range(4)}
    deadline = time.monotonic() + 60
    while sum(map(len, got.values())) < 5000 and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=1.0):
            assert m.error() is None, m.error()
            got[m.partition()].append(orjson.loads(m.value()))
    time.sleep(0.5)
    extra = c.consume(100, timeout=0.5)
    c.close()
    assert not extra, "more events than the generator made"
    gen = Generator(config)
    for p in range(4):
        assert got[p] == gen.events(p, 5000, 4), f"partition {p} differs"


def _read_committed(bootstrap: str, topic: str, settle: float = 1.0) -> list[object]:
    """Every value a read_committed consumer sees in ``topic`` (until quiet at the end)."""
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                     "isolation.level": "read_committed", "enable.auto.commit": False,
                     "enable.partition.eof": True})
    md = c.list_topics(topic, timeout=30).topics[topic]
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in md.partitions])
    out: list[object] = []
    eof: set[int] = set()
    deadline, quiet = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            if len(eof) == len(md.partitions):
                quiet = quiet or time.monotonic() + settle
                if time.monotonic() > quiet:
                    break
            continue
        if m.error():
            if m.error().code() == ck.KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                continue
            raise ck.KafkaException(m.error())
        eof.discard(m.partition())
        quiet = None
        out.append(orjson.loads(m.value()))
    c.close()
    return out


@pytest.mark.parametrize("query", ["q2", "q3"])
def test_a_query_from_kafka_into_kafka_exactly_once_equals_duckdb(
        bootstrap: str, tmp_path: Path, query: str) -> None:
    import sys
    from collections import Counter

    import onceflow as of
    from onceflow.kafka import KafkaSink

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks" / "nexmark"))
    import queries
    from test_nexmark_queries import reference

    run = uuid.uuid4().hex[:8]
    config = NexmarkConfig(events=30_000, seed=21, out_of_orderness=1.0)
    events, results = f"nexmark-in-{run}", f"nexmark-{query}-{run}"
    prefill_kafka(bootstrap, events, config, partitions=8)
    admin = ck.admin.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([ck.admin.NewTopic(results, 2, 1)])[results].result(timeout=30)
    flow = of.Flow(f"nexmark-kafka-{query}-{run}", parallelism=2)
    flow.enable_checkpointing(0.3, tmp_path / "ck")
    sink = KafkaSink(bootstrap, results, serializer="json")
    queries.build(flow, query, config, sink, kafka=(bootstrap, events))
    result = flow.run()
    got = Counter(tuple(r) for r in _read_committed(bootstrap, results))  # type: ignore[arg-type]
    want = reference(query, config)
    assert sum(want.values()) > 20
    assert got == want
    assert result.records_in("results") == sum(want.values())
