"""KafkaSource(value_only=True) batch by batch, against a real broker: a batch without
error messages takes the source's batch path (map over the messages, runs found per
partition), one with end-of-partition messages the per-message loop; both must give the
same values, the partition of each value, and positions, on one topic or several, with
null values, NaN/Infinity JSON, integers past 64 bits (exact, as Python's json reads
them), a bounded end inside a fetched run, and a bad record
named by topic, partition and offset."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import confluent_kafka as ck  # a missing dependency fails the suite, never skips it
import pytest
from kafka_util import create_topic

from onceflow.errors import RecordFormatError
from onceflow.kafka import KafkaSource


def _value(topic: str, p: int, i: int) -> bytes | None:
    if i % 7 == 3:
        return None  # a null value (a tombstone)
    if i % 11 == 5:
        return b'{"t": "%s", "p": %d, "i": %d, "x": NaN}' % (topic.encode(), p, i)
    if i % 13 == 6:  # past 64 bits: an int, not a float near it
        return b'{"t": "%s", "p": %d, "i": %d, "x": %d}' % (topic.encode(), p, i, 10**30 + i)
    return json.dumps({"t": topic, "p": p, "i": i}).encode()


def _fill(bootstrap: str, topics: list[str], parts: int, n: int) -> dict[tuple[str, int], list]:
    """``n`` records per partition, produced round robin over the partitions (so a fetch
    holds runs of several partitions); what each partition holds, decoded."""
    prod = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    want: dict[tuple[str, int], list] = {}
    for i in range(n):
        for t in topics:
            for p in range(parts):
                v = _value(t, p, i)
                prod.produce(t, v, partition=p)
                want.setdefault((t, p), []).append(v)
    assert prod.flush(30) == 0
    return want


def _decoded(v: bytes | None) -> Any:
    if v is None:
        return None
    return json.loads(v)  # the stdlib reads NaN too


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN here


def _read_all(rd: Any, total: int, bounded: bool, size: int = 37
              ) -> tuple[list[Any], list[Any]]:
    got: list[Any] = []
    parts: list[Any] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (bounded or len(got) < total):
        batch = rd.read_batch(size)  # small batches: runs of several partitions cut anywhere
        if batch is None:
            break
        bp = rd.batch_partitions() or []
        assert len(bp) == len(batch)
        # the runs the watermarks take are the same partitions, run by run
        assert [tp for tp, n in rd.batch_runs() or [] for _ in range(n)] == bp
        got.extend(batch)
        parts.extend(bp)
    if not bounded:  # at the end: nothing more (with eof, the end-of-partition messages)
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            assert rd.read_batch(37) == []
    return got, parts


@pytest.mark.parametrize("eof", [False, True], ids=["no-eof-messages", "eof-messages"])
@pytest.mark.parametrize("ntopics", [1, 2])
def test_values_partitions_and_positions_of_every_batch(bootstrap: str, eof: bool,
                                                        ntopics: int) -> None:
    run = uuid.uuid4().hex[:8]
    topics = [create_topic(bootstrap, f"srcb-{run}-{k}", 3) for k in range(ntopics)]
    want = _fill(bootstrap, topics, 3, 60)
    src = KafkaSource(bootstrap, topics, deserializer="json", value_only=True,
                      consumer_config={"enable.partition.eof": eof})
    (split,) = src.splits(1)
    rd = src.reader(split, src.initial_position(split))
    total = sum(len(v) for v in want.values())
    try:
        got, parts = _read_all(rd, total, bounded=False)
        assert len(got) == total
        by: dict[tuple[str, int], list] = {}
        for v, tp in zip(got, parts, strict=True):
            by.setdefault(tp, []).append(v)
        assert sorted(by) == sorted(want)
        for tp, vals in want.items():  # each partition's values, in offset order
            assert _same(by[tp], [_decoded(v) for v in vals]), tp
            # the partition reported for a value is the one it came from
            assert all(v is None or (v["t"], v["p"]) == tp for v in by[tp])
        assert rd.position() == {tp: 60 for tp in want}
    finally:
        rd.close()


@pytest.mark.parametrize(("eof", "size"), [(False, 37), (True, 37), (True, 10_000)],
                         ids=["no-eof-messages", "eof-messages", "eof-in-the-batch"])
def test_bounded_end_inside_a_fetched_run(bootstrap: str, eof: bool, size: int) -> None:
    """stop_at="end" with records appended after the start: the reader stops exactly at
    each partition's end offset also when no end-of-partition message comes, and when the
    end-of-partition message (past the end) is in the same batch as the partition's last
    records (its offset must not move the finished partition's position)."""
    topic = create_topic(bootstrap, f"srcb-end-{uuid.uuid4().hex[:8]}", 2)
    want = _fill(bootstrap, [topic], 2, 40)
    src = KafkaSource(bootstrap, [topic], deserializer="json", value_only=True,
                      stop_at="end", consumer_config={"enable.partition.eof": eof})
    (split,) = src.splits(1)
    _fill(bootstrap, [topic], 2, 30)  # after the end: never read
    rd = src.reader(split, src.initial_position(split))
    if size > 1000:
        time.sleep(1.0)  # everything fetched: one batch holds the records and the EOFs
    try:
        got, parts = _read_all(rd, 0, bounded=True, size=size)
        assert rd.read_batch(37) is None, "the bounded reader did not finish"
        by: dict[tuple[str, int], list] = {}
        for v, tp in zip(got, parts, strict=True):
            by.setdefault(tp, []).append(v)
        for tp, vals in want.items():
            assert _same(by[tp], [_decoded(v) for v in vals]), tp
        assert rd.position() == {(topic, 0): 40, (topic, 1): 40}
    finally:
        rd.close()


@pytest.mark.parametrize("bad", [b'{"i": ', b"[" * 100_000 + b"]" * 100_000],
                         ids=["truncated", "nested-100000-deep"])
@pytest.mark.parametrize("eof", [False, True], ids=["no-eof-messages", "eof-messages"])
def test_a_bad_record_in_a_batch_is_named(bootstrap: str, eof: bool, bad: bytes) -> None:
    topic = create_topic(bootstrap, f"srcb-bad-{uuid.uuid4().hex[:8]}", 3)
    prod = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for i in range(30):  # record 22: partition 1, offset 7
        prod.produce(topic, b'{"i": %d}' % i if i != 22 else bad, partition=i % 3)
    assert prod.flush(30) == 0
    src = KafkaSource(bootstrap, [topic], deserializer="json", value_only=True,
                      consumer_config={"enable.partition.eof": eof})
    (split,) = src.splits(1)
    rd = src.reader(split, src.initial_position(split))
    try:
        with pytest.raises(RecordFormatError) as exc:
            _read_all(rd, 30, bounded=False)
        msg = str(exc.value)
        assert f"topic {topic!r} partition 1 offset 7" in msg, msg
        assert rd.position().get((topic, 1), 0) <= 7  # not moved past the bad record
    finally:
        rd.close()


def test_the_readers_prefetch_default_and_the_users_setting_wins() -> None:
    """The reader prefetches at most 4 MiB per partition (librdkafka's own default is 64
    MiB or 100,000 messages); whatever the user's consumer_config says wins, and the
    settings exactly-once reading needs are there either way."""
    from onceflow.connectors.kafka.source import reader_config

    conf = reader_config(KafkaSource("127.0.0.1:1", "t", group_id="g"))
    assert conf["queued.max.messages.kbytes"] == 4096
    assert conf["fetch.queue.backoff.ms"] == 10
    assert conf["isolation.level"] == "read_committed"
    assert conf["enable.auto.commit"] is False
    assert conf["group.id"] == "g"
    mine = reader_config(KafkaSource("127.0.0.1:1", "t", consumer_config={
        "queued.max.messages.kbytes": 65536, "queued.min.messages": 1000}))
    assert mine["queued.max.messages.kbytes"] == 65536
    assert mine["queued.min.messages"] == 1000
    assert mine["isolation.level"] == "read_committed"
