"""The dataflow API end to end: small real flows (forked workers), output read back from a
``FileSink`` and compared exactly with what plain Python computes."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.graph.keygroups import key_group, subtask_table

FAST_FAIL = of.restart.no_restart()


def committed(out: Path) -> Counter[Any]:
    """The committed records as a multiset (JSON lists turned back into tuples)."""
    def freeze(v: Any) -> Any:
        return tuple(freeze(x) for x in v) if isinstance(v, list) else v
    return Counter(freeze(r) for r in of.sinks.read_committed(out))


def slow(seconds: float) -> Any:
    def fn(x: Any) -> Any:
        time.sleep(seconds)
        return x
    return fn


# --- stateless operators ------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2])
def test_map_filter_flat_map_with_closures_and_counts(p: int, tmp_path: Path) -> None:
    factor = 3  # captured by the closures below: workers are forked, nothing is pickled
    banned = {9, 27}
    data = list(range(40))
    flow = of.Flow(f"stateless-{p}", parallelism=p, restart_strategy=FAST_FAIL)
    (flow.source(of.sources.Collection(data), name="src")
         .map(lambda x: x * factor, name="triple")
         .filter(lambda x: x % 2 == 0 and x not in banned, name="even")
         .flat_map(lambda x: [x] * (x % 3 + 1) if x % 4 else None, name="repeat")
         .sink(of.sinks.FileSink(tmp_path), name="out"))
    result = flow.run()

    tripled = [x * factor for x in data]
    kept = [x for x in tripled if x % 2 == 0 and x not in banned]
    repeated = [y for x in kept if x % 4 for y in [x] * (x % 3 + 1)]
    assert committed(tmp_path) == Counter(repeated)
    counts = {name: (m.records_in, m.records_out) for name, m in result.operators.items()}
    assert counts["src"][1] == len(data)
    assert counts["triple"] == (len(data), len(tripled))
    assert counts["even"] == (len(tripled), len(kept))
    assert counts["repeat"] == (len(kept), len(repeated))
    assert counts["out"][0] == len(repeated)
    assert {m.parallelism for m in result.operators.values()} == {p}
    assert result.restarts == 0 and result.failures == []


def test_union_merges_every_input_stream(tmp_path: Path) -> None:
    flow = of.Flow("union", parallelism=2, restart_strategy=FAST_FAIL)
    a = flow.source(of.sources.Collection(["a", "b", "c"]), name="letters")
    b = flow.source(of.sources.Range(10), name="numbers").map(lambda x: x * 10, name="tens")
    c = flow.source(of.sources.Collection([None, True]), name="odd", parallelism=1)
    a.union(b, c, name="all").map(lambda v: [type(v).__name__, v], name="tag") \
        .sink(of.sinks.FileSink(tmp_path), name="out")
    result = flow.run()
    expected = [("str", s) for s in "abc"] + [("int", x * 10) for x in range(10)] + \
        [("NoneType", None), ("bool", True)]
    assert committed(tmp_path) == Counter(expected)
    assert result.records_in("all") == len(expected)


def test_rebalance_spreads_batches_over_every_subtask(tmp_path: Path) -> None:
    flow = of.Flow("rebalance", parallelism=1, batch_size=4, restart_strategy=FAST_FAIL)
    (flow.source(of.sources.Range(40), name="src")
         .rebalance()
         .map(lambda x: [x, os.getpid()], name="where", parallelism=2)
         .sink(of.sinks.FileSink(tmp_path), name="out", parallelism=2))
    flow.run()
    rows = of.sinks.read_committed(tmp_path)
    assert sorted(x for x, _ in rows) == list(range(40))
    per_worker = Counter(pid for _, pid in rows)
    assert len(per_worker) == 2, "rebalance sent everything to one subtask"
    assert set(per_worker.values()) == {20}, "round robin over batches of 4 splits 40 evenly"


# --- keyed operators ----------------------------------------------------------------------
WORDS = "the quick brown fox jumps over the lazy dog the end fox".split() * 3


def running_counts(words: Iterable[str]) -> Counter[tuple[str, int]]:
    seen: Counter[str] = Counter()
    out: Counter[tuple[str, int]] = Counter()
    for w in words:
        seen[w] += 1
        out[(w, seen[w])] += 1
    return out


@pytest.mark.parametrize("p", [1, 2])
def test_reduce_emits_a_running_value_per_key(p: int, tmp_path: Path) -> None:
    flow = of.Flow(f"reduce-{p}", parallelism=p, restart_strategy=FAST_FAIL)
    (flow.source(of.sources.Collection(WORDS), name="words")
         .map(lambda w: (w, 1), name="pair")
         .key_by(lambda t: t[0])
         .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
         .sink(of.sinks.FileSink(tmp_path), name="out"))
    result = flow.run()
    assert committed(tmp_path) == running_counts(WORDS)
    assert result.records_in("count") == result.records_out("count") == len(WORDS)


class WordStats(of.KeyedProcessFunction):
    """Value, list and map state per word, and where the word was processed."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.positions = ctx.list_state("positions")
        self.neighbours = ctx.map_state("neighbours")
        self.subtask, self.parallelism = ctx.subtask_index, ctx.parallelism

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        pos, _, nxt = value
        self.count.update(self.count.value() + 1)
        self.positions.add(pos)
        self.neighbours.put(nxt, self.neighbours.get(nxt, 0) + 1)
        return [(ctx.current_key, self.count.value(), self.positions.get(),
                 sorted(self.neighbours.items()), self.subtask, self.parallelism)]


def test_keyed_process_function_with_value_list_and_map_state(tmp_path: Path) -> None:
    records = [(i, w, WORDS[(i + 1) % len(WORDS)]) for i, w in enumerate(WORDS)]
    flow = of.Flow("process-state", parallelism=2, restart_strategy=FAST_FAIL)
    # One source subtask keeps the order of each key's records, so the output is exact.
    (flow.source(of.sources.Collection(records), name="words", parallelism=1)
         .key_by(lambda r: r[1])
         .process(WordStats(), name="stats")
         .sink(of.sinks.FileSink(tmp_path), name="out"))
    flow.run()

    expected = []
    count: Counter[str] = Counter()
    positions: dict[str, list[int]] = defaultdict(list)
    neighbours: dict[str, Counter[str]] = defaultdict(Counter)
    owner = subtask_table(2, 128)
    for pos, w, nxt in records:
        count[w] += 1
        positions[w].append(pos)
        neighbours[w][nxt] += 1
        expected.append((w, count[w], tuple(positions[w]),
                         tuple((k, v) for k, v in sorted(neighbours[w].items())),
                         owner[key_group(w, 128)], 2))
    assert committed(tmp_path) == Counter(expected)


def test_plain_function_as_process(tmp_path: Path) -> None:
    def numbered(value: str, ctx: of.ProcessContext) -> list[Any]:
        n = ctx.value_state("n", default=0)
        n.update(n.value() + 1)
        return [(ctx.current_key, n.value())]

    flow = of.Flow("process-fn", parallelism=2, restart_strategy=FAST_FAIL)
    (flow.source(of.sources.Collection(WORDS), name="words")
         .key_by(lambda w: w)
         .process(numbered, name="numbered")
         .sink(of.sinks.FileSink(tmp_path), name="out"))
    flow.run()
    assert committed(tmp_path) == running_counts(WORDS)


def test_process_lambda_returning_none_emits_nothing(tmp_path: Path) -> None:
    flow = of.Flow("process-none", restart_strategy=FAST_FAIL)
    (flow.source(of.sources.Collection(WORDS), name="words")
         .key_by(lambda w: w)
         .process(lambda v, ctx: [v] if v == "fox" else None, name="foxes")
         .sink(of.sinks.FileSink(tmp_path), name="out"))
    result = flow.run()
    assert committed(tmp_path) == Counter({"fox": WORDS.count("fox")})
    assert result.records_out("foxes") == WORDS.count("fox")


class Reminder(of.KeyedProcessFunction):
    """Registers a processing-time timer per key; key "late" asks for one far away."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.seen = ctx.value_state("seen", default=0)
        self.when = ctx.value_state("when")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> None:
        self.seen.update(self.seen.value() + 1)
        if self.when.value() is None:
            delay = 60.0 if value == "late" else 0.05
            when = ctx.timer_service.current_processing_time() + delay
            self.when.update(when)
            ctx.timer_service.register_processing_time_timer(when)
            ctx.timer_service.register_processing_time_timer(when)  # a duplicate fires once

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> list[Any]:
        return [("fired", ctx.current_key, timestamp == self.when.value(), self.seen.value())]


def test_processing_time_timers_fire_once_while_input_flows(tmp_path: Path) -> None:
    # "a" first, then a slow stream of "b" (10 ms each): a's timer is due after 50 ms, long
    # before the input ends. "late" asks for a timer in 60 s: pending at the end, never fires.
    data = ["a", "late"] + ["b"] * 40
    flow = of.Flow("timers", batch_size=1, restart_strategy=FAST_FAIL)
    (flow.source(of.sources.Collection(data), name="src")
         .map(slow(0.01), name="slow")
         .key_by(lambda k: k)
         .process(Reminder(), name="remind")
         .sink(of.sinks.FileSink(tmp_path), name="out"))
    result = flow.run()
    out = committed(tmp_path)
    fired = {r[1]: r for r in out}
    assert out[fired["a"]] == 1, "a's timer fired more than once"
    assert fired["a"][2] is True, "on_timer got another timestamp than was registered"
    assert fired["a"][3] == 1
    assert "b" in fired, "b's timer (due 50 ms after the first b) did not fire"
    assert 1 <= fired["b"][3] < 40, "b's timer fired only after the input had ended"
    assert "late" not in fired
    assert result.records_out("remind") == sum(out.values())


# --- checkpoints and sinks ----------------------------------------------------------------
def test_completed_checkpoints_include_the_final_one(tmp_path: Path) -> None:
    flow = of.Flow("final-ckpt", restart_strategy=FAST_FAIL)
    flow.enable_checkpointing(60.0, tmp_path / "chk")  # no periodic one in this short job
    flow.source(of.sources.Collection([1, 2, 3]), name="src") \
        .sink(of.sinks.FileSink(tmp_path / "out"), name="out")
    result = flow.run()
    done = result.completed_checkpoints
    assert len(done) >= 1
    assert done[-1].final and done[-1].status is of.CheckpointStatus.COMPLETED
    assert result.checkpoint_storage is not None
    assert done[-1].path is not None and os.path.isdir(done[-1].path)
    assert os.path.dirname(done[-1].path) == result.checkpoint_storage


def test_periodic_checkpoints_complete_in_order(tmp_path: Path) -> None:
    flow = of.Flow("periodic", batch_size=1, restart_strategy=FAST_FAIL)
    flow.enable_checkpointing(0.05, tmp_path / "chk", retained=2)
    (flow.source(of.sources.Range(30), name="src")
         .map(slow(0.01), name="slow")
         .sink(of.sinks.FileSink(tmp_path / "out"), name="out"))
    result = flow.run()
    ids = [c.id for c in result.completed_checkpoints]
    assert len(ids) >= 2, "a 0.3 s job with a 0.05 s interval had no periodic checkpoint"
    assert ids == sorted(ids)
    assert [c.final for c in result.completed_checkpoints] == [False] * (len(ids) - 1) + [True]
    assert committed(tmp_path / "out") == Counter(range(30))
    assert all(c.size > 0 for c in result.completed_checkpoints)


class FileWriteAhead(of.sinks.WriteAheadSink):
    """Each ``send`` becomes one file: which checkpoint, which subtask, which records."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, records: list[Any], checkpoint_id: int, ctx: of.sinks.SinkContext) -> None:
        doc = {"checkpoint": checkpoint_id, "subtask": ctx.subtask, "records": records,
               "pid": os.getpid()}
        (self.directory / f"{uuid.uuid4().hex}.json").write_text(json.dumps(doc))


def test_write_ahead_sink_receives_every_record_once_with_checkpoint_ids(
        tmp_path: Path) -> None:
    sent = tmp_path / "sent"
    sent.mkdir()
    flow = of.Flow("write-ahead", parallelism=2, batch_size=2, restart_strategy=FAST_FAIL)
    flow.enable_checkpointing(0.05, tmp_path / "chk")
    (flow.source(of.sources.Range(60), name="src")
         .map(slow(0.005), name="slow")
         .sink(FileWriteAhead(sent), name="out"))
    result = flow.run()
    docs = [json.loads(p.read_text()) for p in sent.iterdir()]
    records = [r for d in docs for r in d["records"]]
    assert sorted(records) == list(range(60))
    completed = {c.id for c in result.completed_checkpoints}
    sends = [(d["checkpoint"], d["subtask"]) for d in docs]
    assert len(sends) == len(set(sends)), "a (checkpoint, subtask) batch was sent twice"
    assert {cid for cid, _ in sends} <= completed, "sent records of an incomplete checkpoint"
    assert len({cid for cid, _ in sends}) >= 2, "expected records in several checkpoints"


def test_print_sink_writes_each_record_on_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    data = ["x", 1, (2, "y"), None]
    flow = of.Flow("print", restart_strategy=FAST_FAIL)
    flow.source(of.sources.Collection(data), name="src") \
        .sink(of.sinks.Print(prefix="out> "), name="print")
    result = flow.run()
    lines = [ln for ln in capfd.readouterr().out.splitlines() if ln.startswith("out> ")]
    assert lines == [f"out> {r!r}" for r in data]
    assert result.records_in("print") == len(data)


# --- failures -----------------------------------------------------------------------------
POISON = "poison-pill"


def _boom(v: Any) -> Any:
    if v == POISON:
        raise ValueError("cannot digest this")
    return v


@pytest.mark.parametrize("kind", ["map", "filter", "flat_map", "reduce", "process"])
def test_user_function_error_names_operator_and_record(kind: str, tmp_path: Path) -> None:
    data = [f"ok-{i}" for i in range(7)] + [POISON] + [f"ok-{i}" for i in range(7, 20)]
    flow = of.Flow(f"raises-{kind}",
                   restart_strategy=of.restart.fixed_delay(attempts=1, delay=0))
    src = flow.source(of.sources.Collection(data), name="src")
    keyed = src.key_by(lambda v: v)
    stream = {
        "map": lambda: src.map(_boom, name="culprit"),
        "filter": lambda: src.filter(_boom, name="culprit"),
        "flat_map": lambda: src.flat_map(lambda v: [_boom(v)], name="culprit"),
        "reduce": lambda: src.key_by(lambda v: 0).reduce(lambda a, b: _boom(b), name="culprit"),
        "process": lambda: keyed.process(lambda v, ctx: [_boom(v)], name="culprit"),
    }[kind]()
    stream.sink(of.sinks.FileSink(tmp_path), name="out")
    with pytest.raises(of.JobFailedError) as exc:
        flow.run()
    err = exc.value
    assert len(err.failures) == 2, "one restart, then give up"
    for text in (str(err), err.reason, *err.failures):
        assert "'culprit'" in text
        assert repr(POISON) in text
        assert "ValueError" in text and "cannot digest this" in text
    assert of.sinks.read_committed(tmp_path) == []


def test_flaky_function_fails_once_and_the_output_is_still_exact(tmp_path: Path) -> None:
    marker = tmp_path / "failed-once"

    def flaky(x: int) -> int:
        if x == 57 and not marker.exists():
            marker.touch()
            raise ConnectionError("transient glitch")
        time.sleep(0.002)
        return x * 2

    flow = of.Flow("flaky", parallelism=2, batch_size=10,
                   restart_strategy=of.restart.fixed_delay(attempts=2, delay=0))
    flow.enable_checkpointing(0.03, tmp_path / "chk")
    # One source subtask keeps each key's order, so the running sums are exact.
    (flow.source(of.sources.Range(100), name="src", parallelism=1)
         .map(flaky, name="flaky", parallelism=1)
         .key_by(lambda x: x % 7)
         .reduce(lambda a, b: a + b, name="sum")
         .map(lambda total: [total % 7, total], name="tag")
         .sink(of.sinks.FileSink(tmp_path / "out"), name="out"))
    result = flow.run()

    assert marker.exists()
    assert result.restarts == 1
    assert len(result.failures) == 1
    assert "'flaky'" in result.failures[0]
    assert "transient glitch" in result.failures[0]
    running: Counter[int] = Counter()
    expected: Counter[tuple[int, int]] = Counter()
    for x in range(100):
        running[x % 7] += 2 * x
        expected[(running[x % 7] % 7, running[x % 7])] += 1
    assert committed(tmp_path / "out") == expected
    # Counts are exactly-once too: what a failure-free run counts.
    assert result.records_out("src") == 100
    assert result.records_in("sum") == 100
    assert result.records_in("out") == 100
    # The failure names the record, even though the function would not fail on it again.
    assert "record 57" in result.failures[0], result.failures[0]
