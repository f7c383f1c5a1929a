"""Interval and regular joins: results against a brute-force reference over the same
records (in and out of order, both backends, parallelism 1 and 2), late records, state
cleaned up as the watermark passes, and errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.checkpoint.restore import SubtaskRestore
from onceflow.errors import ConfigurationError
from onceflow.graph import jobgraph
from onceflow.runtime.channels import InputChannel
from onceflow.runtime.events import END_OF_INPUT, TsBatch, Watermark
from onceflow.runtime.operators import OperatorEnv
from onceflow.runtime.task import Partitioner, TaskRunner
from onceflow.testing import CollectingSink, run_inline, throttle


def _backend(name: str, tmp: Path) -> Any:
    if name == "rocksdb":
        return of.state.RocksDBBackend(local_dir=str(tmp / "rocks"), layer_entries=500)
    return of.state.MemoryBackend()


def _events(seed: int, n: int, keys: int, disorder: float) -> list[tuple[int, float, int]]:
    """(key, timestamp, id) in arrival order: time rises 0.1 s a record, each record up to
    ``disorder`` seconds earlier than that."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = round(i * 0.1 - rng.uniform(0, disorder), 3)
        out.append((rng.randrange(keys), t, i))
    return out


@pytest.mark.parametrize(("backend", "parallelism", "disorder"),
                         [("memory", 1, 0.0), ("memory", 2, 1.5), ("rocksdb", 2, 1.5)])
def test_interval_join_matches_a_brute_force_reference(tmp_path: Path, backend: str,
                                                       parallelism: int,
                                                       disorder: float) -> None:
    left = _events(1, 600, 7, disorder)
    right = _events(2, 300, 7, disorder)
    flow = of.Flow("ij", parallelism=parallelism, state_backend=_backend(backend, tmp_path))
    ws = (of.WatermarkStrategy.bounded_out_of_orderness(disorder + 0.01)
          .with_timestamps(lambda r: r[1]))
    a = flow.source(of.sources.Collection(left), name="left", watermarks=ws)
    b = flow.source(of.sources.Collection(right), name="right", watermarks=ws)
    late = of.OutputTag("late")
    joined = (a.key_by(lambda r: r[0]).interval_join(b.key_by(lambda r: r[0]))
               .between(-1.0, 2.5).side_output_late_data(late)
               .process(lambda x, y: (x[2], y[2]), name="join"))
    joined.sink(of.sinks.FileSink(tmp_path / "o"), name="out")
    joined.side_output(late).sink(of.sinks.FileSink(tmp_path / "late"), name="late-out")
    flow.run()
    got = sorted(tuple(r) for r in of.sinks.read_committed(tmp_path / "o"))
    want = sorted((x[2], y[2]) for x in left for y in right
                  if x[0] == y[0] and x[1] - 1.0 <= y[1] <= x[1] + 2.5)
    assert len(want) > 500
    assert got == want
    assert of.sinks.read_committed(tmp_path / "late") == []


@pytest.mark.parametrize(("lower", "upper", "unit"), [
    (0.0, 0.0, 1.0), (-5.0, 0.0, 1.0), (-7.0, -3.0, 1.0), (0.0, 5.0, 1.0), (2.0, 2.0, 1.0),
    (0.2, 1.0, 0.1), (-0.3, 0.1, 0.1), (0.1, 0.1, 0.1), (0.7, 0.9, 0.1), (-0.9, -0.3, 0.1)])
def test_interval_join_keeps_records_whose_bound_reaches_exactly_the_watermark(
        lower: float, upper: float, unit: float) -> None:
    """Timestamps on a grid of ``unit`` and bounds on it: a record's ``t + upper`` (left)
    or ``t - lower`` (right) often equals the watermark when it arrives. Such a record can
    still match one of the other side at exactly the watermark (on time: late is ``t <
    watermark``), so it must be buffered; one record per batch makes the two inputs
    interleave finely. On a grid of tenths the differences are rounded (``0.7 - 0.2`` is
    0.49999999999999994 while ``0.5 + 0.2 == 0.7``): the cleanup must use the match's own
    arithmetic, or a right record goes before a left one it matches."""
    rng = random.Random(7)
    left = [(rng.randrange(3), round((i // 3 + rng.randrange(2)) * unit, 10))
            for i in range(120)]
    right = [(rng.randrange(3), round((i // 3 + rng.randrange(2)) * unit, 10))
             for i in range(120)]
    left.sort(key=lambda r: r[1])
    right.sort(key=lambda r: r[1])
    flow = of.Flow("ij-edge", parallelism=1, batch_size=1)
    ws = of.WatermarkStrategy.bounded_out_of_orderness(0.0).with_timestamps(lambda r: r[1])
    a = flow.source(of.sources.Collection(left), name="left", watermarks=ws)
    b = flow.source(of.sources.Collection(right), name="right", watermarks=ws)
    late = of.OutputTag("late")
    j = (a.key_by(lambda r: r[0]).interval_join(b.key_by(lambda r: r[0]))
          .between(lower, upper).side_output_late_data(late).process(lambda x, y: (x, y)))
    out, lates = CollectingSink(), CollectingSink()
    j.sink(out, name="out")
    j.side_output(late).sink(lates, name="late-out")
    run_inline(flow)
    assert lates.records() == []  # in order: nothing is late
    got = sorted((tuple(x), tuple(y)) for x, y in out.records())
    want = sorted((x, y) for x in left for y in right
                  if x[0] == y[0] and x[1] + lower <= y[1] <= x[1] + upper)
    assert len(want) > 100
    assert got == want


class Pairs(of.ProcessJoinFunction):
    def process_element(self, left: Any, right: Any, ctx: of.JoinContext) -> list[Any]:
        assert ctx.timestamp == max(ctx.left_timestamp, ctx.right_timestamp)
        return [(left, right, ctx.timestamp, ctx.current_key)]


class Collect(Partitioner):
    def __init__(self) -> None:
        super().__init__([])
        self.got: list[Any] = []

    def has_room(self) -> bool:
        return True

    def broadcast(self, event: object) -> None:
        pass

    def emit(self, batch: list[Any]) -> None:
        self.got.extend((r, None) for r in batch)

    def emit_ts(self, batch: list[Any], ts: list[float]) -> None:
        self.got.extend(zip(batch, ts, strict=True))


def _join_runner(lower: float, upper: float
                 ) -> tuple[TaskRunner, InputChannel, InputChannel, Collect, Collect]:
    flow = of.Flow("hand-join", parallelism=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[1])
    a = flow.source(of.sources.Collection([]), name="a", watermarks=ws)
    b = flow.source(of.sources.Collection([]), name="b", watermarks=ws)
    late = of.OutputTag("late")
    j = (a.key_by(lambda r: r[0]).interval_join(b.key_by(lambda r: r[0]))
          .between(lower, upper).side_output_left_late_data(late).process(Pairs(), name="j"))
    j.sink(of.sinks.Discard())
    j.side_output(late).sink(of.sinks.Discard())
    g = jobgraph.build(flow._plan, 1, 8)
    spec = next(t for t in g.tasks.values() if t.head.name == "j")
    runner = TaskRunner(spec, 0, OperatorEnv("hand-join", 0, 1, 8, (0, 8), 0), True, 64,
                        lambda *a: None, lambda r: None)
    first, second = InputChannel(0, None, ("a", 0, 1, 0)), InputChannel(1, None, ("b", 0, 1, 1))
    runner.inputs = [first, second]
    main, side = Collect(), Collect()
    runner.outputs = [main, side] if spec.output_tags[0] is None else [side, main]
    runner.connect()
    runner.open(SubtaskRestore(runner.uid, runner.subtask), {})
    return runner, first, second, main, side


def test_interval_join_state_is_removed_once_the_watermark_passes_and_late_goes_aside(
        caplog: pytest.LogCaptureFixture) -> None:
    runner, first, second, main, side = _join_runner(-1.0, 2.0)
    op: Any = runner.ops[0]
    outputs = main.got
    first.queue.append(TsBatch([("k", 10.0)], [10.0]))
    second.queue.append(TsBatch([("k", 11.5), ("k", 8.5)], [11.5, 8.5]))
    while runner.step():
        pass
    assert [(o[0][1], o[0][2], o[1]) for o in outputs] == [(("k", 11.5), 11.5, 11.5)]
    assert op.store.size() == 2  # both sides buffered for key "k"
    first.queue.append(Watermark(13.0))
    second.queue.append(Watermark(13.0))
    while runner.step():
        pass
    # left 10.0 could match rights up to 12.0, right 11.5 lefts up to 12.5: both gone
    assert op.store.size() == 0
    assert op.store.timer_count() == 0
    first.queue.append(TsBatch([("k", 12.0)], [12.0]))  # below the watermark: late
    while runner.step():
        pass
    assert op.late_records == 1 and op.late_dropped == 0  # it went to the side output
    assert side.got == [(("k", 12.0), 12.0)]
    second.queue.append(TsBatch([("k", 11.0)], [11.0]))  # late right: no tag, dropped
    while runner.step():
        pass
    assert (op.late_records, op.late_dropped) == (2, 1)
    assert op.store.size() == 0
    first.queue.append(END_OF_INPUT)
    second.queue.append(END_OF_INPUT)
    while runner.step():
        pass
    with caplog.at_level("WARNING", logger="onceflow"):
        op.close()
    # only the right side's late records were dropped (the left's have a tag): say so
    assert "1 late records of the right side joined nothing and were dropped (give the " \
        "join side_output_right_late_data(tag)" in caplog.text


@pytest.mark.parametrize("right_before_watermark", [True, False])
def test_a_right_record_stays_while_a_left_at_the_watermark_can_match_it(
        right_before_watermark: bool) -> None:
    """between(0.2, 1.0), a right record at 0.7 and the watermark at 0.5: a left at 0.5 is
    on time and matches (``0.5 + 0.2 == 0.7``), but ``0.7 - 0.2`` is 0.49999999999999994,
    so a cleanup at ``tr - lower`` dropped the right record first: on arrival, when the
    watermark was already 0.5, or by its timer when the watermark reached 0.5 later."""
    runner, first, second, main, _ = _join_runner(0.2, 1.0)
    if right_before_watermark:
        for ch in (first, second):
            ch.queue.append(Watermark(0.4))
        second.queue.append(TsBatch([("k", 0.7)], [0.7]))
    for ch in (first, second):
        ch.queue.append(Watermark(0.5))
    if not right_before_watermark:
        second.queue.append(TsBatch([("k", 0.7)], [0.7]))
    while runner.step():
        pass
    first.queue.append(TsBatch([("k", 0.5)], [0.5]))
    while runner.step():
        pass
    assert [(o[0][0][1], o[0][1][1]) for o in main.got] == [(0.5, 0.7)]


def test_late_records_of_an_interval_join_go_to_its_side_output(tmp_path: Path) -> None:
    left = [("k", 1.0), ("k", 5.0), ("k", 1.5), ("k", 9.0)]  # 1.5 is late (bound 1 s)
    right = [("k", 1.6), ("k", 9.1)]
    flow = of.Flow("late", parallelism=1)
    ws = of.WatermarkStrategy.bounded_out_of_orderness(1.0).with_timestamps(lambda r: r[1])
    a = flow.source(of.sources.Collection(left), name="left", watermarks=ws)
    b = flow.source(of.sources.Collection(right), name="right", watermarks=ws)
    late = of.OutputTag("late")
    j = (a.key_by(lambda r: r[0]).interval_join(b.key_by(lambda r: r[0])).between(0.0, 0.5)
          .side_output_late_data(late).process(lambda x, y: [x[1], y[1]]))
    j.sink(of.sinks.FileSink(tmp_path / "o"), name="out")
    j.side_output(late).sink(of.sinks.FileSink(tmp_path / "late"), name="late-out")
    flow.run()
    got = sorted(map(tuple, of.sinks.read_committed(tmp_path / "o")))
    lates = sorted(map(tuple, of.sinks.read_committed(tmp_path / "late")))
    # the right side's source has its own watermark: 1.6 arrives before it passes 1.5
    # unless the left's made it late; every record is either joined, buffered or late
    assert (9.0, 9.1) in got
    assert ("k", 1.5) in lates or (1.5, 1.6) in got
    assert all(x in {("k", 1.5), ("k", 1.6)} for x in lates)


@pytest.mark.parametrize(("backend", "parallelism"), [("memory", 2), ("rocksdb", 1)])
def test_regular_join_emits_every_match_once(tmp_path: Path, backend: str,
                                             parallelism: int) -> None:
    rng = random.Random(3)
    people = [(i, f"p{i}") for i in range(80)]
    auctions = [(1000 + j, rng.randrange(100)) for j in range(400)]  # seller 80..99: no one
    rng.shuffle(people)
    flow = of.Flow("rj", parallelism=parallelism, state_backend=_backend(backend, tmp_path))
    p = flow.source(of.sources.Collection(people), name="people")
    a = flow.source(of.sources.Collection(auctions), name="auctions")
    (p.join(a).where(lambda x: x[0]).equal_to(lambda y: y[1])
      .apply(lambda x, y: (x[1], y[0]), name="join").sink(of.sinks.FileSink(tmp_path / "o")))
    flow.run()
    got = sorted(map(tuple, of.sinks.read_committed(tmp_path / "o")))
    want = sorted((x[1], y[0]) for x in people for y in auctions if x[0] == y[1])
    assert got == want and len(want) > 250


def test_regular_join_with_event_time_ttl_forgets_old_rows(tmp_path: Path) -> None:
    # one key; left rows at t = 0, 10, 20, ...; right rows at t = 5, 15, ...; with a TTL
    # of 12 s of event time each row is forgotten once the watermark passes its time + 12
    left = [("k", float(t), "L") for t in range(0, 200, 10)]
    right = [("k", float(t), "R") for t in range(5, 200, 10)]
    flow = of.Flow("ttl-join", parallelism=1, batch_size=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[1])
    a = flow.source(of.sources.Collection(left), name="left", watermarks=ws)
    b = flow.source(of.sources.Collection(right), name="right", watermarks=ws)
    ttl = of.StateTtl(12.0, time_domain=of.TimeDomain.EVENT_TIME)
    (a.join(b).where(lambda r: r[0]).equal_to(lambda r: r[0]).with_ttl(ttl)
      .apply(lambda x, y: (x[1], y[1])).sink(of.sinks.FileSink(tmp_path / "o")))
    flow.run()
    got = sorted(map(tuple, of.sinks.read_committed(tmp_path / "o")))
    full = [(x[1], y[1]) for x in left for y in right]
    assert len(got) < len(full) / 3, "old rows were forgotten"
    assert set(got) <= set(full)
    # neighbours (5 s apart) are never forgotten before they meet
    assert all((t, t + 5.0) in got for t in range(0, 190, 10))
    assert all((t + 10.0, t + 5.0) in got for t in range(0, 190, 10))


def test_join_settings_are_checked_with_clear_messages() -> None:
    flow = of.Flow("bad-join", parallelism=1)
    a = flow.source(of.sources.Range(0, 3))
    with pytest.raises(ConfigurationError, match="both streams must be keyed"):
        a.key_by(lambda x: x).interval_join(a)  # type: ignore[arg-type]
    k = a.key_by(lambda x: x)
    with pytest.raises(ConfigurationError, match="lower must be <= upper"):
        k.interval_join(k).between(2.0, 1.0)
    with pytest.raises(ConfigurationError, match="finite number"):
        k.interval_join(k).between(float("nan"), 1.0)
    with pytest.raises(ConfigurationError, match="ttl must be a number of seconds > 0"):
        a.join(a).where(lambda x: x).equal_to(lambda x: x).with_ttl(-1)
    with pytest.raises(ConfigurationError, match="takes a function"):
        a.join(a).where(lambda x: x).equal_to(lambda x: x).apply(3)  # type: ignore[arg-type]
    # a step left out says which comes next (not an AttributeError of a builder class)
    with pytest.raises(ConfigurationError, match=r"co-group needs a window: say .window"):
        a.co_group(a).where(lambda x: x).equal_to(lambda x: x).apply(print)  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"say .where\(key_of_a\).equal_to"):
        a.join(a).apply(print)  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"say .equal_to\(key_of_b\) next"):
        a.join(a).where(lambda x: x).window(of.windows.tumbling(1.0))  # type: ignore[attr-defined]


def test_interval_join_without_timestamps_says_what_to_add_when_built() -> None:
    flow = of.Flow("no-ts", parallelism=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(float)
    timed = flow.source(of.sources.Collection([1, 2]), name="timed", watermarks=ws)
    untimed = flow.source(of.sources.Collection([1, 2]), name="untimed")
    with pytest.raises(ConfigurationError, match=r"interval join 'ij' matches records by "
                       r"their event time \(left side: 'untimed'\) but its input has no "
                       r"timestamps: add watermarks= to the source"):
        untimed.key_by(lambda x: x).interval_join(timed.key_by(lambda x: x)) \
            .between(0.0, 1.0).process(lambda x, y: x, name="ij")
    with pytest.raises(ConfigurationError, match=r"\(right side: 'untimed'\)"):
        timed.key_by(lambda x: x).interval_join(untimed.key_by(lambda x: x)) \
            .between(0.0, 1.0).process(lambda x, y: x, name="ij")
    # timestamps given after the source count (and so does a map after them)
    later = untimed.assign_timestamps_and_watermarks(ws).map(lambda x: x)
    later.key_by(lambda x: x).interval_join(timed.key_by(lambda x: x)) \
        .between(0.0, 1.0).process(lambda x, y: x, name="ij")


def test_a_regular_join_with_an_event_time_ttl_needs_timestamps_on_both_sides() -> None:
    """Rows of an input without timestamps never expire in event time: the join kept them
    for ever, silently, although a time-to-live was asked for."""
    flow = of.Flow("ttl-no-ts", parallelism=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(float)
    timed = flow.source(of.sources.Collection([1, 2]), name="timed", watermarks=ws)
    untimed = flow.source(of.sources.Collection([1, 2]), name="untimed")
    ttl = of.StateTtl(10.0, time_domain=of.TimeDomain.EVENT_TIME)
    with pytest.raises(ConfigurationError, match=r"join 'j' with an event-time TTL forgets "
                       r"rows by their event time \(right side: 'untimed'\) but its input "
                       r"has no timestamps.*or use a processing-time TTL"):
        timed.join(untimed).where(int).equal_to(int).with_ttl(ttl).apply(
            lambda x, y: x, name="j")
    with pytest.raises(ConfigurationError, match=r"\(left side: 'untimed'\)"):
        untimed.join(timed).where(int).equal_to(int).with_ttl(ttl).apply(lambda x, y: x)
    # a processing-time TTL, or none, needs no timestamps
    untimed.join(untimed).where(int).equal_to(int).with_ttl(10.0).apply(lambda x, y: x)
    timed.join(timed).where(int).equal_to(int).with_ttl(ttl).apply(lambda x, y: x)


def test_interval_join_records_without_timestamps_fail_the_job_saying_what_to_add(
        tmp_path: Path) -> None:
    # a union of a timed and an untimed source passes the build: its untimed records
    # fail the join when they arrive, with the same advice
    flow = of.Flow("no-ts", parallelism=1, restart_strategy=of.restart.no_restart())
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(float)
    timed = flow.source(of.sources.Collection([1, 2]), name="timed", watermarks=ws)
    mixed = timed.union(flow.source(of.sources.Collection([3]), name="untimed"))
    a = mixed.key_by(lambda x: x)
    a.interval_join(timed.key_by(lambda x: x)).between(0.0, 1.0) \
        .process(lambda x, y: x).sink(of.sinks.Discard())
    with pytest.raises(of.JobFailedError, match="need event timestamps"):
        flow.run()


def _interval_join_checkpoint_sizes(tmp_path: Path, n: int) -> list[int]:
    flow = of.Flow(f"ij-bounded-{n}", parallelism=1)
    flow.enable_checkpointing(0.2, tmp_path / f"ck-{n}")
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda i: i * 0.01)
    a = flow.source(of.sources.Range(0, n), name="left", watermarks=ws).map(throttle(10000))
    b = flow.source(of.sources.Range(0, n), name="right", watermarks=ws).map(throttle(10000))
    (a.key_by(lambda i: i % 10).interval_join(b.key_by(lambda i: i % 10)).between(-0.5, 0.5)
      .process(lambda x, y: (x, y), name="join").sink(of.sinks.Discard(), name="out"))
    result = flow.run()
    return [c.size for c in result.completed_checkpoints if not c.final and c.size]


def test_interval_join_state_stays_bounded_over_a_ten_times_longer_run(
        tmp_path: Path) -> None:
    short = _interval_join_checkpoint_sizes(tmp_path, 10_000)
    long = _interval_join_checkpoint_sizes(tmp_path, 100_000)
    assert short and len(long) > 5
    # buffers hold about 1 s of event time per side whatever the run's length
    assert max(long) < 2.5 * max(short), (short, long)
