"""W2's counting results reader (benchmarks/compare/committed_count.py) against the real
broker: it must count exactly the records a read_committed consumer of confluent-kafka
delivers: plain records and committed transactions, not aborted or still-open ones, not
the commit/abort markers, and not twice when a response cuts a batch off."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_util import new_topic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "compare"))
from committed_count import CommittedCounter

PARTS = 3


def _txn_producer(bootstrap: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2,
                  "transactional.id": f"cc-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(30)
    return p


def _produce(p: Producer, topic: str, tag: str, n: int) -> None:
    for i in range(n):
        p.produce(topic, f"{tag}-{i}".encode() * 3, key=str(i).encode())
        if i % 500 == 0:
            p.poll(0)


def _consumer_count(bootstrap: str, topic: str) -> int:
    """What a read_committed confluent-kafka consumer delivers (to the LSO)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"cc-{uuid.uuid4()}",
                  "isolation.level": "read_committed", "enable.partition.eof": True,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTS)])
    seen, eof, end = 0, set(), time.time() + 30
    while len(eof) < PARTS and time.time() < end:
        for m in c.consume(1000, 0.5):
            if m.error():
                if m.error().code() == -191:
                    eof.add(m.partition())
                continue
            seen += 1
    c.close()
    assert len(eof) == PARTS, "the consumer did not reach the end of every partition"
    return seen


def _count(bootstrap: str, topic: str, **kw: int) -> int:
    """The counter's count once it has nothing more to read (n out of reach)."""
    c = CommittedCounter(bootstrap, topic, PARTS, n=10**12, timeout=3.0, **kw)
    c.start()
    c.thread.join(timeout=30)
    assert c.error is None, c.error
    return c.count


@pytest.mark.parametrize("partition_max_bytes", [16 << 20, 700])
def test_counts_exactly_what_a_read_committed_consumer_delivers(
        bootstrap: str, partition_max_bytes: int) -> None:
    topic = new_topic(bootstrap, PARTS, "cc")
    plain = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    _produce(plain, topic, "plain", 300)
    assert plain.flush(30) == 0
    committed, aborted, still_open = (_txn_producer(bootstrap) for _ in range(3))
    for p, tag, n in ((committed, "c1", 2000), (aborted, "a", 1500)):
        p.begin_transaction()
        _produce(p, topic, tag, n)
    still_open.begin_transaction()
    _produce(still_open, topic, "open", 400)
    assert still_open.flush(30) == 0
    aborted.abort_transaction(30)
    committed.commit_transaction(30)
    committed.begin_transaction()  # a second transaction of the same producer, after an abort
    _produce(committed, topic, "c2", 700)
    committed.commit_transaction(30)

    # the open transaction holds the last stable offset back: the commits behind it are
    # not readable yet, by the consumer or by the counter
    before = _consumer_count(bootstrap, topic)
    assert _count(bootstrap, topic, partition_max_bytes=partition_max_bytes) == before

    still_open.commit_transaction(30)
    want = _consumer_count(bootstrap, topic)
    assert want == 300 + 2000 + 700 + 400  # the aborted 1,500 never
    assert _count(bootstrap, topic, partition_max_bytes=partition_max_bytes) == want


def test_stops_at_n_and_says_when(bootstrap: str) -> None:
    topic = new_topic(bootstrap, PARTS, "cc")
    c = CommittedCounter(bootstrap, topic, PARTS, n=1000, timeout=30)
    c.start()
    time.sleep(0.3)
    assert not c.done.is_set() and c.count == 0, c.error
    p = _txn_producer(bootstrap)
    p.begin_transaction()
    _produce(p, topic, "x", 1000)
    assert p.flush(30) == 0
    time.sleep(0.5)
    assert c.count == 0, "records of an open transaction were counted"
    t_commit = time.time()
    p.commit_transaction(30)
    assert c.done.wait(10)
    assert c.error is None and c.count == 1000
    assert c.t_done is not None and c.t_done >= t_commit


def test_a_broker_error_is_raised_not_skipped(bootstrap: str) -> None:
    missing = f"cc-missing-{uuid.uuid4().hex[:8]}"
    c = CommittedCounter(bootstrap, missing, PARTS, n=1, timeout=10, settle_s=1.0)
    c.start()
    assert c.done.wait(15)
    assert c.error is not None and "broker error 3" in str(c.error), c.error
    assert missing in str(c.error) and c.count == 0
