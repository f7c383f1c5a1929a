"""Per-partition watermarks from a real Kafka broker (``scripts/kafka``).

Three partitions read by four source subtasks: one subtask owns no partition and must be
idle from the start; one partition stops receiving records early and must be left out of
the minimum once idle. Event-time timers (windows of 10 s counted by a process function)
then fire while the unbounded job runs, with exact counts.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka as ck  # a missing client must fail the suite, not skip it
from kafka_util import new_topic

import onceflow as of
from onceflow.kafka import KafkaSource

ROOT = Path(__file__).resolve().parent.parent


def _topic(bootstrap: str, partitions: int) -> str:
    return new_topic(bootstrap, partitions, "wm")


def _events() -> list[tuple[int, dict[str, Any]]]:
    """(partition, event): partitions 0 and 1 carry event times 0..119.5 in steps of 0.5;
    partition 2 only 0..9."""
    out = []
    for i in range(240):
        out.append((i % 2, {"id": i, "ts": i * 0.5}))
    for i in range(10):
        out.append((2, {"id": 1000 + i, "ts": float(i)}))
    return out


class TenSecondCounts(of.KeyedProcessFunction):
    def open(self, ctx: of.RuntimeContext) -> None:
        self.counts = ctx.map_state("counts")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> None:
        assert ctx.timestamp is not None
        end = (ctx.timestamp // 10 + 1) * 10
        self.counts.put(end, self.counts.get(end, 0) + 1)
        ctx.timer_service.register_event_time_timer(end)

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> list[Any]:
        n = self.counts.get(timestamp, 0)
        self.counts.remove(timestamp)
        return [[timestamp, n]]


def _flow(bootstrap: str, topic: str, out: Path, ckpt: Path, idleness: float | None) -> of.Flow:
    flow = of.Flow(f"kafka-wm-{uuid.uuid4().hex[:6]}", parallelism=1)
    flow.enable_checkpointing(0.3, str(ckpt))
    ws = of.WatermarkStrategy.bounded_out_of_orderness(1.0).with_timestamps(lambda e: e["ts"])
    if idleness is not None:
        ws = ws.with_idleness(idleness)
    src = KafkaSource(bootstrap, topic, deserializer="json", value_only=True)
    (flow.source(src, parallelism=4, watermarks=ws, name="kafka")
         .key_by(lambda e: 0)
         .process(TenSecondCounts(), name="counts")
         .sink(of.sinks.FileSink(str(out))))
    return flow


def _produce(bootstrap: str, topic: str) -> None:
    p = ck.Producer({"bootstrap.servers": bootstrap})
    for part, e in _events():
        p.produce(topic, json.dumps(e).encode(), partition=part)
    assert p.flush(30) == 0


def _wait_for(out: Path, window_end: float, timeout: float) -> dict[float, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {w: n for w, n in of.sinks.read_committed(str(out))} if out.exists() else {}
        if window_end in got:
            return got
        time.sleep(0.2)
    return {}


def test_idle_partition_and_partitionless_subtask_let_windows_fire(
        bootstrap: str, tmp_path: Path) -> None:
    topic = _topic(bootstrap, 3)
    _produce(bootstrap, topic)
    out = tmp_path / "out"
    client = _flow(bootstrap, topic, out, tmp_path / "ck", idleness=1.0).start()
    try:
        got = _wait_for(out, 100.0, timeout=60)
    finally:
        client.stop_with_savepoint(str(tmp_path / "sp"), timeout=60)
        client.result(timeout=60)
    assert got, "no window fired: the idle partition or the empty subtask held the watermark"
    expected: dict[float, int] = {}
    for _, e in _events():
        end = (e["ts"] // 10 + 1) * 10
        expected[end] = expected.get(end, 0) + 1
    for end in (10.0, 20.0, 50.0, 100.0):
        assert got[end] == expected[end], (end, got)
    # the watermark (highest 119.5 - 1 s) cannot have passed 120: that window stays open
    assert 120.0 not in got


def test_without_idleness_a_silent_partition_holds_the_watermark_back(
        bootstrap: str, tmp_path: Path) -> None:
    topic = _topic(bootstrap, 3)
    _produce(bootstrap, topic)
    out = tmp_path / "out"
    flow = _flow(bootstrap, topic, out, tmp_path / "ck", idleness=None)
    client = flow.start()
    try:
        got = _wait_for(out, 20.0, timeout=6)
    finally:
        client.stop_with_savepoint(str(tmp_path / "sp"), timeout=60)
        client.result(timeout=60)
    # partition 2 stopped at event time 9 (watermark 8): only the first window may fire;
    # the subtask that owns no partition is idle and holds nothing back
    assert 20.0 not in got
    committed = {w: n for w, n in of.sinks.read_committed(str(out))} if out.exists() else {}
    assert set(committed) <= {10.0}


def test_the_reader_says_which_partitions_have_records_waiting(bootstrap: str) -> None:
    """After a full batch (the consumer's queue had more), a partition whose end offset on
    the broker lies past the reader's position has records waiting: it must not be taken
    for idle (SourceWatermarks asks ``has_backlog`` before it marks one idle, see
    test_watermarks.py). Once everything is read, none has."""
    topic = _topic(bootstrap, 2)
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(3000):
        p.produce(topic, json.dumps({"id": i}).encode(), partition=0)
    for i in range(300):
        p.produce(topic, json.dumps({"id": i}).encode(), partition=1)
    assert p.flush(30) == 0
    src = KafkaSource(bootstrap, topic, deserializer="json", value_only=True, stop_at="end")
    src.validate()
    (split,) = src.splits(1)
    rd = src.reader(split, src.initial_position(split))
    try:
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until a full batch: the queue held more
            b = rd.read_batch(1024) or []
            got += b
            if len(b) == 1024:
                break
        assert rd._saturated and len(got) < 3300
        parts = [(topic, 0), (topic, 1)]
        left = [tp for tp in parts if rd.pos.get(tp, -2) < (3000 if tp[1] == 0 else 300)]
        # the end offsets are those of the consumer's last fetch of each partition: a
        # partition not fetched yet (a loaded machine) makes no claim until it is
        settle = time.monotonic() + 10
        while (waiting := [tp for tp in parts if rd.has_backlog(tp)]) != left and \
                time.monotonic() < settle:
            time.sleep(0.05)
        assert waiting == left and left, (waiting, left, rd.pos)
        while (b := rd.read_batch(1024)) is not None and time.monotonic() < deadline:
            got += b
        assert len(got) == 3300
        assert not any(rd.has_backlog(tp) for tp in parts)
    finally:
        rd.close()
