"""Keys carried over a key edge: the partitioner computes each record's key once and a
keyed head that uses them (a count window) takes them with the batch (runtime/task.py
``takes_keys``, runtime/channels.py ``send_keyed``), over a local queue and over a real
socket between two peers; whatever has no carried keys (a split batch, a pickled batch)
computes them; heads that do not use them (reduce, process) get none."""

from __future__ import annotations

import math
import socket
import threading
from collections import Counter
from typing import Any

import pytest

import onceflow as of
from onceflow.graph.keygroups import key_group, subtask_table
from onceflow.runtime.channels import InputChannel, LocalOutput, Peer, RemoteOutput
from onceflow.runtime.events import TsBatch
from onceflow.runtime.task import KeyPartitioner
from onceflow.testing import CollectingSink, ScriptedSource, run_inline, throttle

MP = 128


def owner(key: Any, parallelism: int) -> int:
    return subtask_table(parallelism, MP)[key_group(key, MP)]


def records(n: int) -> list[tuple[str, int]]:
    return [(f"k{i * 7 % 23}", i) for i in range(n)]


def first(r: tuple[str, int]) -> str:
    return r[0]


def test_local_channels_carry_each_records_key_in_its_batch_order() -> None:
    ins = [InputChannel(i) for i in range(3)]
    outs = [LocalOutput(c, capacity=4) for c in ins]
    part = KeyPartitioner(list(outs), first, MP, "sum", carry=True)
    batch = records(200)
    part.emit(batch)
    for j, ch in enumerate(ins):
        want = [r for r in batch if owner(r[0], 3) == j]
        assert len(ch.queue) == 1
        item = ch.pop()
        assert item == want
        assert ch.take_keys(item) == [r[0] for r in want]
        assert ch.carried == {}  # taken once
        assert ch.take_keys(item) is None


def test_local_timestamped_batches_carry_keys_and_timestamps_together() -> None:
    ins = [InputChannel(i) for i in range(2)]
    part = KeyPartitioner([LocalOutput(c, 4) for c in ins], first, MP, "w", carry=True)
    batch = records(100)
    ts = [float(i) / 4 for i in range(100)]
    part.emit_ts(batch, ts)
    for j, ch in enumerate(ins):
        item = ch.pop()
        assert type(item) is TsBatch
        mine = [(r, t) for r, t in zip(batch, ts, strict=True) if owner(r[0], 2) == j]
        assert item.records == [r for r, _ in mine]
        assert item.ts == [t for _, t in mine]
        assert ch.take_keys(item) == [r[0] for r, _ in mine]


def test_no_carrying_at_one_channel_or_when_not_asked() -> None:
    one = InputChannel(0)
    KeyPartitioner([LocalOutput(one, 4)], first, MP, "x", carry=True).emit(records(10))
    assert one.pop() == records(10) and one.carried == {}
    ins = [InputChannel(i) for i in range(2)]
    KeyPartitioner([LocalOutput(c, 4) for c in ins], first, MP, "x").emit(records(50))
    assert all(c.carried == {} for c in ins)
    assert sorted(r for c in ins for r in c.pop()) == sorted(records(50))


def test_an_object_that_is_not_the_carried_batch_gets_no_keys() -> None:
    ch = InputChannel(0)
    out = LocalOutput(ch, 4)
    batch = [("a", 1), ("b", 2)]
    out.send_keyed(batch, ["a", "b"], None)
    assert ch.take_keys(list(batch)) is None  # an equal list, not the batch itself
    item = ch.pop()
    assert item is batch and ch.take_keys(item) == ["a", "b"]
    assert ch.carried == {}


def _peer_pair() -> tuple[Peer, Peer]:
    a, b = socket.socketpair()
    return Peer(a, 1), Peer(b, 0)


def _deliver(src: Peer, dst: Peer) -> None:
    while src.out:
        src.flush()
        dst.receive()
    dst.receive()


def test_remote_channel_sends_keys_in_the_frame_and_the_receiver_carries_them() -> None:
    src, dst = _peer_pair()
    try:
        ch = InputChannel(7, dst)
        dst.inputs[7] = ch
        out = RemoteOutput(src, 7, credits=4)
        src.outputs[7] = out
        batch = [{"user": f"u{i % 5}", "n": i} for i in range(300)]
        keys = [r["user"] for r in batch]
        out.send_keyed(batch, keys, None)
        ts = [i * 0.5 for i in range(300)]
        out.send_keyed(batch, keys, ts)
        assert out.credits == 2
        _deliver(src, dst)
        plain, stamped = ch.pop(), ch.pop()
        assert plain == batch and ch.take_keys(plain) == keys
        assert type(stamped) is TsBatch and stamped.records == batch and stamped.ts == ts
        got = ch.take_keys(stamped)
        assert got == keys
        # a key that is inside its record arrives as that very object (one copy)
        assert all(k is r["user"] for k, r in zip(got, stamped.records, strict=True))
    finally:
        src.sock.close()
        dst.sock.close()


class Opaque:
    """Not marshal-able: the channel falls back to pickle, without keys."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.v == self.v

    def __hash__(self) -> int:
        return self.v


def test_remote_records_marshal_refuses_go_pickled_without_keys() -> None:
    src, dst = _peer_pair()
    try:
        ch = InputChannel(3, dst)
        dst.inputs[3] = ch
        out = RemoteOutput(src, 3, credits=4)
        batch = [Opaque(i) for i in range(5)]
        out.send_keyed(batch, [o.v for o in batch], None)
        assert out.credits == 3 and not out.use_marshal
        _deliver(src, dst)
        item = ch.pop()
        assert item == batch and ch.take_keys(item) is None
    finally:
        src.sock.close()
        dst.sock.close()


# --- end to end ------------------------------------------------------------------------
class CountingKey:
    """A key function that counts its calls (the inline executor: one process)."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, r: tuple[str, int]) -> str:
        with self.lock:
            self.calls += 1
        return r[0]

    def __deepcopy__(self, memo: dict[int, Any]) -> CountingKey:
        return self  # every worker's copy of the flow shares this counter


def expected_running_sums(data: list[tuple[str, int]]) -> Counter[tuple[str, int]]:
    totals: dict[str, int] = {}
    out: Counter[tuple[str, int]] = Counter()
    for k, v in data:
        totals[k] = totals.get(k, 0) + v
        out[(k, totals[k])] += 1
    return out


@pytest.mark.parametrize("p", [1, 2, 3])
def test_reduce_is_sent_no_keys_and_sums_as_before(p: int) -> None:
    data = records(3000)
    key = CountingKey()
    sink = CollectingSink()
    flow = of.Flow(f"carried-reduce-{p}", parallelism=p, batch_size=128)
    (flow.source(ScriptedSource(data), name="in")
         .key_by(key)
         .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum")
         .sink(sink, name="out"))
    run_inline(flow)
    assert Counter(map(tuple, sink.records())) == expected_running_sums(data)
    if p == 1:  # no routing: the partitioner checks one key a batch, reduce computes all
        assert len(data) < key.calls <= len(data) + math.ceil(len(data) / 128)
    else:  # reduce's loop calls the key function about as cheaply as it would take keys
        assert key.calls == 2 * len(data)


class Tally(of.KeyedProcessFunction):
    def open(self, ctx: of.RuntimeContext) -> None:
        self.seen = ctx.value_state("seen", 0)

    def process_element(self, value: Any, ctx: of.ProcessContext) -> Any:
        self.seen.update(self.seen.value() + 1)
        return [(ctx.current_key, self.seen.value(), value[1])]


@pytest.mark.parametrize("stamped", [False, True])
def test_keyed_process_current_key_at_parallelism_2(stamped: bool) -> None:
    data = records(2000)
    key = CountingKey()
    sink = CollectingSink()
    flow = of.Flow(f"carried-process-{stamped}", parallelism=2, batch_size=100)
    stream = flow.source(ScriptedSource(data), name="in")
    if stamped:  # timestamped batches: process_ts
        stream = stream.assign_timestamps_and_watermarks(
            of.WatermarkStrategy.monotonous_timestamps().with_timestamps(
                lambda r: float(r[1])), name="stamps")
    stream.key_by(key).process(Tally(), name="tally").sink(sink, name="out")
    run_inline(flow)
    got = Counter(map(tuple, sink.records()))
    want: Counter[tuple[str, int, int]] = Counter()
    seen: Counter[str] = Counter()
    for k, i in data:
        seen[k] += 1
        want[(k, seen[k], i)] += 1
    assert got == want


def test_a_key_function_that_raises_is_named_with_its_record_at_parallelism_2() -> None:
    def bad(r: tuple[str, int]) -> str:
        if r[1] == 77:
            raise KeyError("no key here")
        return r[0]

    flow = of.Flow("carried-bad-key", parallelism=2, restart_strategy=of.restart.no_restart())
    (flow.source(ScriptedSource(records(200)), name="in").key_by(bad)
         .reduce(lambda a, b: a, name="sum").sink(CollectingSink(), name="out"))
    with pytest.raises(of.errors.JobFailedError) as info:
        run_inline(flow)
    text = str(info.value)
    assert "no key here" in text and "77" in text


def _window_counts(p: int, key: CountingKey, tmp: str | None = None) -> Counter[Any]:
    data = [(f"a{i % 17}", i) for i in range(4000)]
    sink = CollectingSink()
    flow = of.Flow(f"carried-window-{p}", parallelism=p, batch_size=200)
    stream = flow.source(ScriptedSource(data), name="in")
    if tmp is not None:  # batches split by buffer debloating, unaligned barriers
        flow.enable_checkpointing(0.05, tmp, unaligned=True, buffer_time=0.001)
        stream = stream.map(throttle(5000), name="slow")  # ~0.4 s: the debloater looks
    (stream
         .assign_timestamps_and_watermarks(
             of.WatermarkStrategy.monotonous_timestamps().with_timestamps(
                 lambda r: r[1] / 100), name="stamps")
         .key_by(key)
         .window(of.windows.sliding(10.0, 2.0))
         .aggregate(of.agg.count(), name="count")
         .sink(sink, name="out"))
    run_inline(flow)
    return Counter(map(tuple, sink.records()))


def test_window_counts_with_carried_keys_equal_those_at_parallelism_1() -> None:
    one, two = CountingKey(), CountingKey()
    want = _window_counts(1, one)
    assert sum(want.values()) > 100
    assert _window_counts(2, two) == want
    # every key computed by the partitioner; the window's count path takes them (batches
    # that straddle a pane boundary compute theirs again)
    assert 4000 <= two.calls < 4000 * 1.5, two.calls


def test_window_counts_with_split_batches_and_unaligned_checkpoints(tmp_path: Any) -> None:
    """Buffer debloating may split a batch with carried keys (both parts then compute
    theirs) and unaligned barriers overtake batches (recorded as in-flight data): the
    counts stay those of parallelism 1."""
    want = _window_counts(1, CountingKey())
    key = CountingKey()
    assert _window_counts(2, key, str(tmp_path / "ckpt")) == want
    assert key.calls > 4000  # batches taken in parts (debloating): their keys computed again
