"""The Kafka sinks' produce loop with each option: key, key serializer, value serializer,
an explicit partition and headers, read back from the real broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka as ck  # a missing dependency fails the suite, never skips it
import pytest
from kafka_util import new_topic

from onceflow.connectors.sinks import SinkContext
from onceflow.kafka import KafkaSink


def _read(bootstrap: str, topic: str, n: int) -> list[ck.Message]:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"rd-{uuid.uuid4().hex}",
                     "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False})
    c.subscribe([topic])
    got: list[ck.Message] = []
    for _ in range(200):
        for m in c.consume(100, 0.1):
            if m.error() is None:
                got.append(m)
        if len(got) >= n:
            break
    c.close()
    return got


def _write_in_two(sink: Any, flow: str, tmp_path: Path, guarantee: str, records: list,
                  split: int) -> None:
    """Open ``sink`` as subtask 0 of ``flow`` and write ``records`` in two batches (cut at
    ``split``): one transaction committed, or written and flushed; then close it."""
    sink.open(SinkContext(flow=flow, uid="out", subtask=0, parallelism=1, attempt=0,
                          flow_dir=str(tmp_path)))
    if guarantee == "exactly_once":
        txn = sink.begin_transaction()
        sink.write(txn, records[:split])
        sink.write(txn, records[split:])
        sink.pre_commit(txn)
        sink.commit(txn)
    else:
        sink.write(records[:split])
        sink.write(records[split:])
        sink.finish()
    sink.close()


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize("options", ["key-str-json", "partition-headers", "plain-bytes"])
def test_sink_produces_what_each_option_says(bootstrap: str, tmp_path: Path, guarantee: str,
                                             options: str) -> None:
    topic = new_topic(bootstrap, 3, "prod")
    records = [{"i": i, "user": f"u{i % 4}"} for i in range(12)]
    kw: dict = {}
    if options == "key-str-json":
        kw = {"key": lambda r: r["i"] if r["i"] % 2 else r["user"], "key_serializer": "str",
              "serializer": "json"}
    elif options == "partition-headers":
        kw = {"key": lambda r: r["user"].encode(), "serializer": lambda r: json.dumps(r),
              "partition": lambda r: None if r["i"] == 11 else r["i"] % 3,
              "headers": lambda r: [("i", str(r["i"]).encode())]}
    else:
        kw = {"serializer": lambda r: json.dumps(r).encode()}
    sink = KafkaSink(bootstrap, topic, guarantee=guarantee,
                     transactional_id_prefix=f"prod-{uuid.uuid4().hex[:8]}", **kw)
    _write_in_two(sink, "prod", tmp_path, guarantee, records, 5)
    got = sorted(_read(bootstrap, topic, len(records)), key=lambda m: json.loads(m.value())["i"])
    assert [json.loads(m.value()) for m in got] == records
    for m, r in zip(got, records, strict=True):
        if options == "key-str-json":
            want = str(r["i"] if r["i"] % 2 else r["user"]).encode()
            assert m.key() == want
        elif options == "partition-headers":
            assert m.key() == r["user"].encode()
            assert m.headers() == [("i", str(r["i"]).encode())]
            if r["i"] != 11:
                assert m.partition() == r["i"] % 3
        else:
            assert m.key() is None


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_json_values_keep_nan_and_infinities_end_to_end(bootstrap: str, tmp_path: Path,
                                                        guarantee: str) -> None:
    """A global or count window's result is (key, -inf, inf, value): serializer="json"
    (the sink's inline orjson path) must not turn the bounds into null, and a KafkaSource
    with deserializer="json" reads them back as they were."""
    import math

    import onceflow as of
    from onceflow.kafka import KafkaSource

    topic = new_topic(bootstrap, 1, "nonfinite")
    records = [["k", -math.inf, math.inf, 5], {"x": None, "n": 1}, [1, math.nan]]
    sink = KafkaSink(bootstrap, topic, guarantee=guarantee, serializer="json",
                     transactional_id_prefix=f"nf-{uuid.uuid4().hex[:8]}")
    ctx = SinkContext(flow="nf", uid="out", subtask=0, parallelism=1, attempt=0,
                      flow_dir=str(tmp_path))
    sink.open(ctx)
    if guarantee == "exactly_once":
        txn = sink.begin_transaction()
        sink.write(txn, records)
        sink.pre_commit(txn)
        sink.commit(txn)
    else:
        sink.write(records)
        sink.finish()
    sink.close()
    raw = [m.value() for m in _read(bootstrap, topic, len(records))]
    assert raw[0] == b'["k",-Infinity,Infinity,5]' and raw[1] == b'{"x":null,"n":1}', raw
    from onceflow.testing import CollectingSink

    collected = CollectingSink()
    flow = of.Flow("nf-read")
    flow.enable_checkpointing(0.5, str(tmp_path / "ckpt"))
    flow.source(KafkaSource(bootstrap, topic, deserializer="json", value_only=True,
                            stop_at="end")).sink(collected)
    flow.run(executor="inline")
    back = collected.records()
    assert back[0] == ["k", -math.inf, math.inf, 5] and back[1] == {"x": None, "n": 1}, back
    assert back[2][0] == 1 and math.isnan(back[2][1]), back


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_unkeyed_json_values_are_written_as_the_serializer_says_with_a_full_queue(
        bootstrap: str, tmp_path: Path, guarantee: str) -> None:
    """serializer="json" without key, partition or headers (the sink's batch-encoding
    path): every record's bytes are jsonvalues.dumps's (NaN and infinities kept, non-string
    keys, a null record, nulls next to non-finite numbers, an int past 64 bits written
    exactly, as a JSON source reads it back), in order and none lost while
    the producer's queue (5 messages here) is full again and again."""
    import math

    from onceflow.connectors.jsonvalues import dumps

    topic = new_topic(bootstrap, 1, "unkeyed")
    records: list = []
    for i in range(300):
        records.append([{"i": i, "u": None}, {1: "a", "i": i}, None, [i, math.inf, None],
                        {"i": i, "x": -math.inf}, {"i": i, "nan": math.nan},
                        {"i": i, "big": 10**30 + i}][i % 7])
    sink = KafkaSink(bootstrap, topic, guarantee=guarantee, serializer="json",
                     transactional_id_prefix=f"unk-{uuid.uuid4().hex[:8]}",
                     producer_config={"queue.buffering.max.messages": 5})
    _write_in_two(sink, "unk", tmp_path, guarantee, records, 100)
    raw = [m.value() for m in _read(bootstrap, topic, len(records))]
    assert raw == [dumps(r) for r in records]
    assert raw[3] == b"[3,Infinity,null]" and raw[5] == b'{"i":5,"nan":NaN}', raw[:6]
    assert raw[1] == b'{"1":"a","i":1}' and raw[2] == b"null", raw[:6]
    assert raw[6] == b'{"i":6,"big":1000000000000000000000000000006}', raw[6]


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize("serializer", ["json", "bytes"])
def test_unkeyed_batches_go_to_one_partition_each_and_rotate(bootstrap: str, tmp_path: Path,
                                                             guarantee: str,
                                                             serializer: str) -> None:
    """Records without key or partition function: each written batch lands in one
    partition (chosen once per batch, not per record by librdkafka's partitioner); batches
    written more than the sticky period (10 ms) apart go to the next partition in turn,
    batches written within it to the same; every record arrives once."""
    import time
    topic = new_topic(bootstrap, 3, "sticky")
    batches = [[{"b": b, "i": i} for i in range(20)] for b in range(6)]
    ser: Any = "json" if serializer == "json" else (lambda r: json.dumps(r).encode())
    sink = KafkaSink(bootstrap, topic, guarantee=guarantee, serializer=ser,
                     transactional_id_prefix=f"sticky-{uuid.uuid4().hex[:8]}")
    sink.open(SinkContext(flow="sticky", uid="out", subtask=0, parallelism=1, attempt=0,
                          flow_dir=str(tmp_path)))
    txn = sink.begin_transaction() if guarantee == "exactly_once" else None
    if txn is not None:
        # records written before the transaction's producer is ready are held back and
        # produced together once it is (one batch then): wait for it first
        sink._ready(txn, wait=True)
    for b in batches:
        time.sleep(0.03)  # past the sticky period
        if txn is not None:
            sink.write(txn, b)
        else:
            sink.write(b)
    twins = [[{"b": 6, "i": i} for i in range(20)], [{"b": 7, "i": i} for i in range(20)]]
    t0 = time.monotonic()
    for b in twins:  # right after one another: within one sticky period
        if txn is not None:
            sink.write(txn, b)
        else:
            sink.write(b)
    within = time.monotonic() - t0 < 0.01
    if txn is not None:
        sink.pre_commit(txn)
        sink.commit(txn)
    else:
        sink.finish()
    sink.close()
    got = _read(bootstrap, topic, 160)
    assert sorted((json.loads(m.value())["b"], json.loads(m.value())["i"]) for m in got) == \
        [(b, i) for b in range(8) for i in range(20)]
    part_of: dict[int, set[int]] = {}
    for m in got:
        part_of.setdefault(json.loads(m.value())["b"], set()).add(m.partition())
    assert all(len(ps) == 1 for ps in part_of.values()), part_of
    seq = [next(iter(part_of[b])) for b in range(6)]
    assert all((seq[k] + 1) % 3 == seq[k + 1] for k in range(5)), seq
    if within:  # (a stalled machine can take longer than 10 ms between the two writes)
        assert part_of[6] == part_of[7], part_of


@pytest.mark.parametrize("key_serializer", ["str", "custom"])
def test_keyed_json_values_and_keys_as_the_general_loop_writes_them(
        bootstrap: str, tmp_path: Path, key_serializer: str) -> None:
    """serializer="json" with a key function (the sink's batch-encoding keyed path): values
    as jsonvalues.dumps writes them (NaN and infinities kept), keys as the key serializer
    says: str keys, other keys through str(), a None key stays None; a custom key
    serializer sees every key."""
    import math

    from onceflow.connectors.jsonvalues import dumps

    topic = new_topic(bootstrap, 1, "keyedjson")
    records: list = [{"i": i, "k": [f"u{i}", i, None, "ü"][i % 4],
                      "x": [1.5, math.inf, None, -math.inf][i % 4]} for i in range(40)]
    ks: Any = "str" if key_serializer == "str" else (lambda k: repr(k).encode())
    sink = KafkaSink(bootstrap, topic, guarantee="exactly_once", serializer="json",
                     key=lambda r: r["k"], key_serializer=ks,
                     transactional_id_prefix=f"kj-{uuid.uuid4().hex[:8]}")
    _write_in_two(sink, "kj", tmp_path, "exactly_once", records, 17)
    got = _read(bootstrap, topic, len(records))
    assert [m.value() for m in got] == [dumps(r) for r in records]
    if key_serializer == "str":
        want = [None if r["k"] is None else str(r["k"]).encode() for r in records]
    else:
        want = [repr(r["k"]).encode() for r in records]
    assert [m.key() for m in got] == want
    assert got[1].value() == b'{"i":1,"k":1,"x":Infinity}', got[1].value()


def test_keyed_json_with_only_str_keys_encodes_them_utf8(bootstrap: str,
                                                        tmp_path: Path) -> None:
    """Every key of the batch a str (the keyed path's all-str shortcut): UTF-8 bytes."""
    topic = new_topic(bootstrap, 1, "strkeys")
    records = [{"u": f"ü{i % 3}", "i": i} for i in range(30)]
    sink = KafkaSink(bootstrap, topic, guarantee="at_least_once", serializer="json",
                     key=lambda r: r["u"], key_serializer="str")
    _write_in_two(sink, "sk", tmp_path, "at_least_once", records, 11)
    got = _read(bootstrap, topic, len(records))
    assert [(m.key(), json.loads(m.value())) for m in got] == \
        [(r["u"].encode("utf-8"), r) for r in records]


class _FakeProducer:
    """Just enough of a confluent-kafka Producer for the unkeyed partition choice: a topic
    of ``parts`` partitions; a produce to a partition it does not have fails as
    librdkafka's does (_UNKNOWN_PARTITION)."""

    def __init__(self, parts: int) -> None:
        self.parts, self.sent, self.asked = parts, [], 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        from types import SimpleNamespace
        self.asked += 1
        t = SimpleNamespace(error=None, partitions=dict.fromkeys(range(self.parts)))
        return SimpleNamespace(topics={topic: t})

    def produce(self, topic: str, value: Any, key: Any = None, partition: int = -1,
                cb: Any = None, headers: Any = None) -> None:
        if partition >= self.parts:
            raise ck.KafkaException(ck.KafkaError(ck.KafkaError._UNKNOWN_PARTITION))
        self.sent.append((partition, value))

    def poll(self, timeout: float) -> int:
        return 0


@pytest.mark.parametrize("json_values", [True, False])
def test_unkeyed_partition_count_is_asked_again_and_a_vanished_partition_falls_back(
        monkeypatch: pytest.MonkeyPatch, json_values: bool) -> None:
    """The unkeyed batches' partition: the count is asked once per PARTITIONS_TTL_S, not
    per batch; a partition the topic no longer has (re-created smaller) makes the record go
    to librdkafka's partitioner (-1), never an error or a lost record."""
    from onceflow.connectors.kafka import sink as ks

    now = [100.0]
    monkeypatch.setattr(ks.time, "monotonic", lambda: now[0])
    out = ks._Producing("t", lambda r: json.dumps(r).encode(), None, lambda k: k, None, None)
    out.value_json = json_values
    p = _FakeProducer(3)
    for b in range(4):
        now[0] += 0.02  # past the sticky period: the next partition each time
        out.produce(p, [{"b": b}])
    assert p.asked == 1
    assert [s[0] for s in p.sent] == [(p.sent[0][0] + k) % 3 for k in range(4)]
    p.parts, p.sent = 1, []  # the topic was re-created with one partition
    for b in range(3):
        now[0] += 0.02
        out.produce(p, [{"b": b}, {"b": b, "n": 2}])
    assert len(p.sent) == 6 and all(s[0] in (0, -1) for s in p.sent), p.sent
    assert -1 in [s[0] for s in p.sent]
    now[0] += ks.PARTITIONS_TTL_S  # asked again: one partition now
    out.produce(p, [{"b": 9}])
    assert p.asked == 2 and p.sent[-1][0] == 0


def test_first_transaction_takes_the_slot_whose_producer_is_ready_first(
        bootstrap: str, tmp_path: Path) -> None:
    """librdkafka's init_transactions sometimes waits out a 500 ms timer. The first
    transaction (slot 0) must not hold the task for it when the other warm slot's producer
    is ready: it moves to slot 1, nothing is lost or doubled, and slot 0's producer serves
    the next transaction."""
    import threading
    import time

    from onceflow.connectors.kafka import sink as ksink

    topic = new_topic(bootstrap, 2, "slot")
    prefix = f"slot-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(bootstrap, topic, guarantee="exactly_once", serializer="json",
                     transactional_id_prefix=prefix)
    release = threading.Event()
    made = sink._started_producer

    def started(tid: str) -> Any:
        if tid == f"{prefix}-0-0":
            release.wait(30)  # slot 0's init_transactions "stuck"
        return made(tid)

    sink._started_producer = started  # type: ignore[method-assign]
    ctx = SinkContext(flow="slot", uid="out", subtask=0, parallelism=1, attempt=0,
                      flow_dir=str(tmp_path))
    sink.open(ctx)
    sink.abort_lingering(ctx, [])
    n = ksink.HOLD_BACK_MAX + 10_000  # more than may wait: the task needs a producer
    first = [{"i": i} for i in range(n)]
    txn = sink.begin_transaction()
    t0 = time.monotonic()
    sink.write(txn, first)
    assert time.monotonic() - t0 < 20, "the write waited for slot 0's producer"
    assert (txn.slot, txn.transactional_id) == (1, f"{prefix}-0-1")
    sink.pre_commit(txn)
    sink.commit(txn)
    release.set()
    txn2 = sink.begin_transaction()
    assert txn2.slot == 0
    second = [{"i": i} for i in range(n, n + 10)]
    sink.write(txn2, second)
    sink.pre_commit(txn2)
    sink.commit(txn2)
    sink.close()
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"rd-{uuid.uuid4().hex}",
                     "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False})
    c.subscribe([topic])
    got: list[int] = []
    deadline = time.monotonic() + 60
    while len(got) < n + 10 and time.monotonic() < deadline:
        got += [json.loads(m.value())["i"] for m in c.consume(10_000, 0.2) if not m.error()]
    for m in c.consume(10_000, 1.0):  # nothing more: no duplicate
        got.append(json.loads(m.value())["i"])
    c.close()
    assert sorted(got) == list(range(n + 10))
