"""Watermarks without processes: the valve, per-split generation in sources, and a task fed
random interleavings of records, watermarks, idleness and barriers by hand.

The randomized test checks the guarantee watermarks exist for: when an event-time timer at
``t`` fires, every record with a timestamp below ``t`` that was on time at its source has
already been processed; and no such record ever reaches the operator below its watermark.
(A channel that went idle promised nothing for records it sends after coming back: the
task's watermark may have moved on meanwhile, as in Flink.)
"""

from __future__ import annotations

import math
import pickle
import random
from typing import Any, ClassVar

import pytest

import onceflow as of
from onceflow.checkpoint.restore import SubtaskRestore
from onceflow.errors import ConfigurationError, UserFunctionError
from onceflow.graph import jobgraph
from onceflow.runtime.channels import InputChannel
from onceflow.runtime.events import END_OF_INPUT, Barrier, TsBatch, Watermark, WatermarkStatus
from onceflow.runtime.operators import OperatorEnv
from onceflow.runtime.task import TaskRunner
from onceflow.runtime.watermarks import SourceWatermarks, WatermarkValve

INF = math.inf


# --- the valve ------------------------------------------------------------------------------
def test_valve_emits_the_minimum_over_inputs_only_when_it_rises() -> None:
    v = WatermarkValve([0, 1, 2])
    assert v.on_watermark(0, 5.0).watermark is None
    assert v.on_watermark(1, 3.0).watermark is None
    assert v.on_watermark(2, 4.0).watermark == 3.0
    assert v.on_watermark(1, 10.0).watermark == 4.0
    assert v.on_watermark(2, 4.0).watermark is None  # no change
    assert v.on_watermark(2, 2.0).watermark is None  # a channel never goes backwards
    assert v.watermark == 4.0
    assert v.on_watermark(2, 7.0).watermark == 5.0


def test_idle_inputs_are_left_out_and_rejoin_only_once_caught_up() -> None:
    v = WatermarkValve([0, 1])
    v.on_watermark(0, 1.0)
    v.on_watermark(1, 1.0)
    out = v.on_status(1, True)
    assert out.idle is None, "one active input: the task is not idle"
    assert v.on_watermark(0, 8.0).watermark == 8.0, "the idle input no longer holds it back"
    # back from idleness below the task's watermark: not counted until it catches up
    assert v.on_status(1, False).watermark is None
    assert v.on_watermark(0, 12.0).watermark == 12.0
    assert v.on_watermark(1, 9.0).watermark is None
    assert v.on_watermark(1, 13.0).watermark is None  # now aligned, min(12, 13) = 12
    assert v.on_watermark(0, 20.0).watermark == 13.0


def test_all_inputs_idle_makes_the_task_idle_and_activity_wakes_it() -> None:
    v = WatermarkValve([0, 1])
    assert v.on_status(0, True).idle is None
    out = v.on_status(1, True)
    assert out.idle is True and out.watermark is None
    assert v.on_status(0, False).idle is False


def test_when_the_last_active_input_turns_idle_the_task_advances_to_the_highest() -> None:
    """A slow input (8) and two fast ones (118.5) all run dry: whichever turns idle last,
    the task ends at the highest watermark before it goes idle, so windows fire (this once
    depended on the order the inputs turned idle in); the slow input waking up with old
    records is not aligned until it catches up."""
    for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1]):
        v = WatermarkValve([0, 1, 2])
        for ch, wm in ((0, 8.0), (1, 118.5), (2, 118.5)):
            v.on_watermark(ch, wm)
        assert v.watermark == 8.0
        outs = [v.on_status(ch, True) for ch in order]
        assert outs[-1].idle is True and v.watermark == 118.5, order
        assert v.on_status(0, False).idle is False
        assert v.on_watermark(0, 9.0).watermark is None and v.watermark == 118.5


def test_ended_inputs_count_as_infinity() -> None:
    v = WatermarkValve([0, 1])
    v.on_watermark(0, 3.0)
    assert v.on_end(1).watermark == 3.0
    assert v.on_end(0).watermark == INF
    assert WatermarkValve([]).watermark == INF


def test_an_idle_input_that_ends_releases_the_task() -> None:
    """An idle upstream whose input then ends sends +inf without waking up first: the
    task's watermark must reach +inf (every window fires), whether or not the other inputs
    are idle."""
    v = WatermarkValve([0])
    v.on_watermark(0, 4.0)
    assert v.on_status(0, True).idle is True
    assert v.on_watermark(0, INF).watermark == INF
    v = WatermarkValve([0, 1])
    v.on_watermark(0, 4.0)
    v.on_watermark(1, 2.0)
    v.on_status(0, True)
    v.on_status(1, True)
    assert v.on_watermark(0, INF).watermark is None  # 1 is idle at 2: nothing holds 4 back
    assert v.watermark == 4.0
    out = v.on_watermark(1, INF)
    assert out.watermark == INF


# --- per-split generation in a source --------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def strategy(bound: float = 2.0, idle: float | None = None) -> of.WatermarkStrategy:
    ws = of.WatermarkStrategy.bounded_out_of_orderness(bound).with_timestamps(lambda r: r)
    return ws.with_idleness(idle) if idle else ws


def test_source_watermark_is_the_minimum_over_its_splits() -> None:
    clock = Clock()
    sw = SourceWatermarks(strategy(), clock)
    sw.assign([None, None], [False, False])
    sw.on_batch(0, [10.0, 12.0], [10.0, 12.0])
    assert sw.poll(force=True) == (None, None), "split 1 has no watermark yet"
    sw.on_batch(1, [5.0], [5.0])
    assert sw.poll(force=True) == (3.0, None)
    sw.on_batch(1, [30.0], [30.0])
    assert sw.poll(force=True) == (10.0, None), "the slow split 0 holds it back"


class _Recording(of.WatermarkGenerator):
    """Remembers the records it is given (per partition), in order."""

    def __init__(self, seen: list[list[Any]]) -> None:
        self.got: list[Any] = []
        seen.append(self.got)

    def on_events(self, records: list[Any], timestamps: list[float]) -> float | None:
        assert len(records) == len(timestamps)
        self.got.extend(records)
        return max(timestamps)

    def on_periodic_emit(self) -> float | None:
        return None


def test_per_partition_records_reach_their_partitions_generator_in_order() -> None:
    """A reader's records come in runs of one partition; a partition may have several runs
    in one batch: each generator gets exactly its partition's records, in order."""
    seen: list[list[Any]] = []
    sw = SourceWatermarks(of.WatermarkStrategy.for_generator(lambda: _Recording(seen))
                          .with_timestamps(lambda r: r[1]), Clock())
    sw.assign([None], [False])
    sw.set_partitions(0, ["a", "b", "c"])
    parts = ["a", "a", "b", "a", "c", "c", "b", "b", "a"]
    records = [(p, float(i)) for i, p in enumerate(parts)]
    sw.on_batch(0, records, [r[1] for r in records], parts)
    got = {p: sw.parts[(0, p)].generator.got for p in "abc"}  # type: ignore[attr-defined]
    assert got == {p: [r for r in records if r[0] == p] for p in "abc"}
    assert sw.poll(force=True)[0] == 5.0  # the minimum over a (8), b (7), c (5)
    with pytest.raises(ValueError, match="partitions"):
        sw.on_batch(0, records, [r[1] for r in records], parts[:-1])


def test_an_idle_split_is_left_out_and_a_subtask_without_splits_starts_idle() -> None:
    clock = Clock()
    sw = SourceWatermarks(strategy(idle=5.0), clock)
    sw.assign([None, None], [False, False])
    sw.on_batch(0, [100.0], [100.0])
    sw.on_batch(1, [1.0], [1.0])
    assert sw.poll(force=True)[0] == -1.0
    clock.now += 6.0
    sw.on_batch(0, [200.0], [200.0])
    assert sw.poll(force=True) == (198.0, None), "split 1 is idle after 5 s without records"
    clock.now += 6.0
    assert sw.poll(force=True) == (None, True), "both idle: the subtask is idle"
    sw.on_batch(1, [199.5], [199.5])
    assert sw.poll(force=True) == (None, False)

    empty = SourceWatermarks(strategy(), clock)
    empty.assign([], [])
    assert empty.initial_events() == (None, True)


def test_alignment_pauses_a_split_too_far_ahead_and_resumes_it() -> None:
    clock = Clock()
    ws = strategy(bound=0.0).with_alignment("g", max_drift=10.0)
    sw = SourceWatermarks(ws, clock)
    sw.assign([None, None], [False, False])
    sw.on_batch(0, [0.0], [0.0])
    sw.on_batch(1, [50.0], [50.0])
    sw.poll(force=True)
    assert sw.readable(0) and not sw.readable(1)
    sw.on_batch(0, [45.0], [45.0])
    sw.poll(force=True)
    assert sw.readable(1)
    # the group's minimum from other subtasks (told by the driver) counts too
    sw.group_min = 20.0
    sw.poll(force=True)
    assert not sw.readable(0) and not sw.readable(1)


def test_watermark_progress_is_restored_from_the_checkpoint() -> None:
    clock = Clock()
    sw = SourceWatermarks(strategy(), clock)
    sw.assign([None], [False])
    sw.on_batch(0, [40.0], [40.0])
    sw.poll(force=True)
    state = pickle.loads(pickle.dumps(sw.snapshot(0)))
    again = SourceWatermarks(strategy(), clock)
    again.assign([state], [False])
    assert again.initial_events() == (38.0, False)
    again.on_batch(0, [39.0], [39.0])  # the generator remembers its highest timestamp
    assert again.poll(force=True) == (None, None)


# --- strategies: bad settings name what to change --------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: of.WatermarkStrategy.bounded_out_of_orderness(-1.0),
    lambda: of.WatermarkStrategy.bounded_out_of_orderness("5"),
    lambda: of.WatermarkStrategy.monotonous_timestamps().with_idleness(0),
    lambda: of.WatermarkStrategy.monotonous_timestamps().with_alignment("g", -1),
    lambda: of.WatermarkStrategy.monotonous_timestamps().with_timestamps(5),
])
def test_bad_strategy_settings_are_configuration_errors(make: Any) -> None:
    with pytest.raises(ConfigurationError, match="WatermarkStrategy"):
        make()


def test_a_strategy_without_timestamps_is_refused_at_the_source() -> None:
    flow = of.Flow("no-ts")
    with pytest.raises(ConfigurationError, match="with_timestamps"):
        flow.source(of.sources.Collection([1]),
                    watermarks=of.WatermarkStrategy.monotonous_timestamps())


@pytest.mark.parametrize("bad", [None, "12:00", [1]])
def test_a_bad_timestamp_names_the_operator_and_the_record(bad: Any, tmp_path: Any) -> None:
    flow = of.Flow("bad-ts", parallelism=1)
    flow.set_restart_strategy(of.restart.no_restart())
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(
        lambda r: bad if r == 3 else float(r))
    (flow.source(of.sources.Collection(list(range(6))), name="numbers", watermarks=ws)
         .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError) as info:
        flow.run()
    text = str(info.value)
    assert "numbers (timestamps)" in text and "record 3" in text, text


def test_datetime_timestamps_are_seconds(tmp_path: Any) -> None:
    import datetime as dt

    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(
        lambda i: base + dt.timedelta(seconds=i))
    out = tmp_path / "o"
    flow = of.Flow("dt", parallelism=1)
    (flow.source(of.sources.Collection([0, 1, 2]), watermarks=ws)
         .key_by(lambda r: 0)
         .process(lambda r, ctx: [ctx.timestamp])
         .sink(of.sinks.FileSink(str(out))))
    flow.run()
    got = sorted(of.sinks.read_committed(str(out)))
    assert got == [base.timestamp() + i for i in range(3)]


# --- a task fed by hand ------------------------------------------------------------------------
class Witness(of.KeyedProcessFunction):
    """Registers an event-time timer at every record's timestamp and records what it saw."""

    log: list[tuple[str, Any, float, float]]

    def process_element(self, value: Any, ctx: of.ProcessContext) -> None:
        wm = ctx.timer_service.current_watermark()
        Witness.log.append(("record", value, ctx.timestamp or 0.0, wm))
        ctx.timer_service.register_event_time_timer(ctx.timestamp)  # type: ignore[arg-type]

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> None:
        assert ctx.time_domain is of.TimeDomain.EVENT_TIME
        Witness.log.append(("timer", ctx.current_key, timestamp,
                            ctx.timer_service.current_watermark()))


def _runner(channels: int) -> tuple[TaskRunner, list[InputChannel], list[Any]]:
    flow = of.Flow("hand", parallelism=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[1])
    (flow.source(of.sources.Collection([]), watermarks=ws)
         .key_by(lambda r: r[0]).process(Witness(), name="witness").sink(of.sinks.Discard()))
    g = jobgraph.build(flow._plan, 1, 8)
    spec = next(t for t in g.tasks.values() if not t.is_source)
    snaps: list[Any] = []
    env = OperatorEnv("hand", 0, 1, 8, (0, 8), 0)
    runner = TaskRunner(spec, 0, env, True, 64,
                        lambda r, b, blob, *_: snaps.append((b.checkpoint_id, blob)),
                        lambda r: None)
    chans = [InputChannel(i) for i in range(channels)]
    runner.inputs = list(chans)
    runner.connect()
    runner.open(SubtaskRestore(runner.uid, runner.subtask), {})
    return runner, chans, snaps


@pytest.mark.parametrize("seed", range(25))
def test_random_interleavings_never_fire_a_timer_before_an_on_time_record(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 4)
    Witness.log = []
    runner, chans, _ = _runner(n)
    on_time: list[tuple[int, float]] = []  # (record id, ts) that were on time at the source
    rid = 0
    barriers = 0
    for c in chans:
        ts, wm = 0.0, -INF
        idle = False
        was_idle = False  # after idleness a channel's records carry no guarantee (Flink's too)
        for _ in range(rng.randint(5, 40)):
            r = rng.random()
            if r < 0.6:
                if idle:
                    c.queue.append(WatermarkStatus(False))
                    idle = False
                batch, tss = [], []
                for _ in range(rng.randint(1, 4)):
                    ts += rng.choice([0.0, 0.5, 1.0, 3.0])
                    # sometimes a record out of order, late against this channel's watermark
                    t = ts - rng.choice([0.0, 0.0, 0.0, 5.0])
                    rid += 1
                    batch.append((rid % 5, t, rid))
                    tss.append(t)
                    if t >= wm and not was_idle:
                        on_time.append((rid, t))
                c.queue.append(TsBatch(batch, tss))
            elif r < 0.85:
                wm = max(wm, ts - rng.choice([0.0, 1.0, 2.0]))
                c.queue.append(Watermark(wm))
            elif r < 0.92 and not idle:
                c.queue.append(WatermarkStatus(True))
                idle = was_idle = True
            else:
                barriers += 1
                c.queue.append(Barrier(barriers, 0.0))
        c.queue.append(END_OF_INPUT)
    # Read the way the worker does, with random progress between channels.
    for _ in range(100000):
        if not runner.step():
            if all(not c.queue for c in chans):
                break
    processed: set[int] = set()
    for kind, v, t, wm in Witness.log:
        if kind == "record":
            if any(v[2] == i for i, _ in on_time):
                assert t >= wm, f"an on-time record {v} reached the operator below W={wm}"
            processed.add(v[2])
        else:
            assert wm >= t, "a timer fired before the watermark reached it"
            missing = [i for i, ts in on_time if ts < t and i not in processed]
            assert not missing, f"timer {t} fired before on-time records {missing}"
    assert len(processed) == rid, "every record was processed"
    fired = [(k, t) for kind, k, t, _ in Witness.log if kind == "timer"]
    registered = {(v[0], t) for kind, v, t, _ in Witness.log if kind == "record"}
    assert set(fired) == registered, "every registered timer fires by the end of input"


def test_end_of_input_fires_every_event_timer() -> None:
    Witness.log = []
    runner, (a, b), _ = _runner(2)
    a.queue.extend([TsBatch([("k", 5.0, 1)], [5.0]), END_OF_INPUT])
    b.queue.extend([TsBatch([("k", 7.0, 2)], [7.0]), END_OF_INPUT])
    while runner.step():
        pass
    timers = [(t, wm) for kind, _, t, wm in Witness.log if kind == "timer"]
    assert [t for t, _ in timers] == [5.0, 7.0]
    assert all(wm == INF for _, wm in timers)


def test_process_function_side_output_without_consumer_is_counted() -> None:
    class Side(of.KeyedProcessFunction):
        def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
            ctx.output(of.OutputTag("nobody"), value)
            return [value]

    flow = of.Flow("side", parallelism=1)
    (flow.source(of.sources.Collection([1, 2, 3]))
         .key_by(lambda r: r).process(Side(), name="side").sink(of.sinks.Discard()))
    g = jobgraph.build(flow._plan, 1, 8)
    spec = next(t for t in g.tasks.values() if not t.is_source)
    runner = TaskRunner(spec, 0, OperatorEnv("s", 0, 1, 8, (0, 8), 0), True, 64,
                        lambda *a: None, lambda r: None)
    ch = InputChannel(0)
    runner.inputs = [ch]
    runner.connect()
    runner.open(SubtaskRestore(runner.uid, runner.subtask), {})
    ch.queue.append([1, 2, 3])
    runner.step()
    assert runner.ops[0].side_dropped == 3


def test_a_bad_ctx_output_tag_names_the_operator(tmp_path: Any) -> None:
    flow = of.Flow("bad-tag", parallelism=1)
    flow.set_restart_strategy(of.restart.no_restart())
    (flow.source(of.sources.Collection([1]))
         .key_by(lambda r: r).process(lambda r, ctx: ctx.output("late", r), name="emitter")
         .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError, match="emitter"):
        flow.run()
    assert issubclass(UserFunctionError, of.OnceflowError)


def test_partitions_of_one_split_have_watermarks_and_idleness_of_their_own() -> None:
    clock = Clock()
    sw = SourceWatermarks(strategy(bound=0.0, idle=5.0), clock)
    sw.assign([None], [False])
    sw.set_partitions(0, [("t", 0), ("t", 1)])
    sw.on_batch(0, [10.0, 20.0, 11.0], [10.0, 20.0, 11.0], [("t", 0), ("t", 1), ("t", 0)])
    assert sw.poll(force=True)[0] == 11.0, "partition 0 is the slow one"
    clock.now += 6.0
    sw.on_batch(0, [30.0], [30.0], [("t", 1)])
    assert sw.poll(force=True)[0] == 30.0, "partition 0 went idle"
    # partition 0 read to its end (bounded mode): no longer part of the minimum
    sw.on_batch(0, [12.0], [12.0], [("t", 0)])
    sw.set_partitions(0, [("t", 1)])
    sw.on_batch(0, [40.0], [40.0], [("t", 1)])
    assert sw.poll(force=True)[0] == 40.0
    snap = sw.snapshot(0)
    assert set(snap) == {("t", 0), ("t", 1)}


def test_a_partition_with_records_waiting_behind_others_does_not_turn_idle() -> None:
    """The reader says partition 0 has records waiting (a backlog of partition 1's records
    ahead of them in the consumer's queue): however long since its last record, it holds
    the watermark (its records would all be late otherwise); once the backlog is gone, it
    turns idle after the idleness time."""
    clock = Clock()
    sw = SourceWatermarks(strategy(bound=0.0, idle=5.0), clock)
    waiting = {("t", 0)}
    sw.backlog = lambda i, p: p in waiting
    sw.assign([None], [False])
    sw.set_partitions(0, [("t", 0), ("t", 1)])
    sw.on_batch(0, [10.0, 20.0], [10.0, 20.0], [("t", 0), ("t", 1)])
    assert sw.poll(force=True)[0] == 10.0
    for t in (30.0, 40.0, 50.0):
        clock.now += 6.0
        sw.on_batch(0, [t], [t], [("t", 1)])
        assert sw.poll(force=True)[0] is None, "partition 0 still holds the watermark"
    waiting.clear()
    clock.now += 4.0  # its clock started again at the last poll: 4 s is not 5 s
    assert sw.poll(force=True)[0] is None
    clock.now += 1.5
    sw.on_batch(0, [60.0], [60.0], [("t", 1)])
    assert sw.poll(force=True)[0] == 60.0, "no backlog and 5 s without records: idle"


def test_a_reader_that_owns_no_partitions_makes_the_subtask_idle() -> None:
    sw = SourceWatermarks(strategy(), Clock())
    sw.assign([None], [False])
    sw.set_partitions(0, [])
    assert sw.poll(force=True) == (None, True)


def test_timestamps_of_a_batch_every_kind_of_value() -> None:
    """The batch path of timestamp functions: all finite floats come back as they are;
    ints and datetimes (naive ones as UTC) become float seconds, also mixed with floats;
    a bool, a string, NaN or an infinity anywhere in the batch is refused."""
    import datetime as dt

    from onceflow.api.watermarks import timestamps_of

    ident = (lambda r: r)
    floats = [1.5, 2.25, 0.0]
    assert timestamps_of(ident, floats) == floats
    assert timestamps_of(ident, []) == []
    got = timestamps_of(ident, [1, 2.5, dt.datetime(1970, 1, 1, 0, 0, 3)])
    assert got == [1.0, 2.5, 3.0] and all(type(t) is float for t in got)
    assert timestamps_of(ident, [dt.datetime(1970, 1, 1, 0, 1, tzinfo=dt.UTC)]) == [60.0]
    with pytest.raises(TypeError, match="bool"):
        timestamps_of(ident, [1.0, True])
    with pytest.raises(TypeError, match="str"):
        timestamps_of(ident, [1.0, "2"])
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite number of seconds"):
            timestamps_of(ident, [1.0, bad, 2.0])
        with pytest.raises(ValueError, match="finite number of seconds"):
            timestamps_of(ident, [1, bad])  # the per-value path too


def test_runs_of_a_batch_give_the_same_watermarks_as_its_partitions() -> None:
    """on_batch_runs (what a Kafka reader's batches take) against on_batch with the
    partition of every record: the same watermark after each batch, for one run, runs of
    one partition twice in a batch, and runs that do not add up refused."""
    from onceflow.connectors.sources import SplitReader

    batches = [([("t", 0)] * 3, [1.0, 2.0, 3.0]),
               ([("t", 1)] * 2 + [("t", 0)] + [("t", 1)], [5.0, 6.0, 4.0, 7.0]),
               ([("t", 0), ("t", 1), ("t", 0)], [9.0, 8.0, 10.0])]
    by_part, by_runs = (SourceWatermarks(strategy(bound=0.0), Clock()) for _ in range(2))
    for sw in (by_part, by_runs):
        sw.assign([None], [False])
        sw.set_partitions(0, [("t", 0), ("t", 1)])

    class Reader(SplitReader):  # the default batch_runs, from batch_partitions
        parts: ClassVar[list[Any]] = []

        def read_batch(self, max_records: int) -> list[Any] | None:
            return []

        def position(self) -> Any:
            return 0

        def batch_partitions(self) -> list[Any] | None:
            return self.parts

    rd = Reader()
    for parts, ts in batches:
        rd.parts = parts
        runs = rd.batch_runs()
        assert runs is not None and sum(n for _, n in runs) == len(parts)
        by_part.on_batch(0, ts, ts, parts)
        by_runs.on_batch_runs(0, ts, ts, runs)
        assert by_part.poll(force=True) == by_runs.poll(force=True)
        assert by_part.snapshot(0) == by_runs.snapshot(0)
    assert by_runs.snapshot(0) == {("t", 0): (10.0, 10.0), ("t", 1): (8.0, 8.0)}
    with pytest.raises(ValueError, match="runs of 2 records for 3"):
        by_runs.on_batch_runs(0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [(("t", 0), 2)])


class _QuietThenEnds(of.sources.SplitReader):
    """Split "data": 0..9 at once; split "quiet": nothing for 1 s, then the end."""

    def __init__(self, split: str, pos: int) -> None:
        import time

        self.split, self.pos = split, pos
        self.until = time.monotonic() + 1.0

    def read_batch(self, n: int) -> list[Any] | None:
        import time

        if self.split == "data":
            if self.pos >= 10:
                return None
            out = list(range(self.pos, 10))
            self.pos = 10
            return out
        return [] if time.monotonic() < self.until else None

    def position(self) -> int:
        return self.pos


class _TwoSplits(of.sources.Source):
    def splits(self, parallelism: int) -> list[str]:
        return ["data", "quiet"]

    def initial_position(self, split: str) -> int:
        return 0

    def reader(self, split: str, position: int) -> _QuietThenEnds:
        return _QuietThenEnds(split, position)


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_windows_fire_when_the_source_is_idle_as_its_input_ends(tmp_path: Any,
                                                                 executor: str) -> None:
    """The only split left is idle (with_idleness) when it ends: the source subtask went
    idle downstream and then sends +inf; every window must still fire (they were all lost,
    silently, before)."""
    flow = of.Flow("idle-end", parallelism=1)
    ws = (of.WatermarkStrategy.monotonous_timestamps().with_timestamps(float)
          .with_idleness(0.2))
    (flow.source(_TwoSplits(), watermarks=ws).key_by(lambda x: x % 2)
         .window(of.windows.tumbling(5.0)).aggregate(of.agg.count(), name="win")
         .sink(of.sinks.FileSink(tmp_path / "o")))
    res = flow.run(executor=executor)
    got = sorted(tuple(r) for r in of.sinks.read_committed(tmp_path / "o"))
    assert got == [(0, 0.0, 5.0, 3), (0, 5.0, 10.0, 2), (1, 0.0, 5.0, 2), (1, 5.0, 10.0, 3)]
    assert res.operators["win"].watermark == INF


class _SeenWithTtl(of.KeyedProcessFunction):
    """Writes a 5 s event-time TTL value at the first record of a key (t = 0); each record
    emits (its time, the watermark, whether the value is still visible)."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.v = ctx.value_state(
            "v", ttl=of.StateTtl(5.0, time_domain=of.TimeDomain.EVENT_TIME))

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        if value[1] == 0.0:
            self.v.update("x")
        return [(value[1], ctx.timer_service.current_watermark(), self.v.value() is not None)]


@pytest.mark.parametrize("parallelism", [2, 3])
def test_operators_keep_their_watermark_across_a_restore(parallelism: int) -> None:
    """A savepoint at watermark 19, a restore at parallelism 2 or 3: the keyed operators'
    first records see watermark 19, not -inf (which they saw until every input channel
    had sent a watermark again): a record 18 s behind is late as in an uninterrupted run,
    and a TTL value that expired before the savepoint stays invisible."""
    import tempfile
    import time

    from onceflow.testing import CollectingSink, ScriptedSource

    recs = ([("k", float(i)) for i in range(20)] + [("k", 1.0)]
            + [("k", float(i)) for i in range(20, 30)])
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[1])

    def build(flow: of.Flow, src: Any, out: Any, late: Any, seen: Any) -> None:
        tag = of.OutputTag("late")
        keyed = flow.source(src, watermarks=ws, name="src").key_by(lambda r: r[0])
        w = (keyed.window(of.windows.tumbling(5.0)).side_output_late_data(tag)
             .aggregate(of.agg.count(), name="win", uid="win"))
        w.sink(out, name="out")
        w.side_output(tag).sink(late, name="late")
        (keyed.process(_SeenWithTtl(), name="ttl", uid="ttl")
              .map(lambda r: (processed.append(r), r)[1], name="count").sink(seen, name="seen"))

    processed: list[Any] = []  # by the inline executor's threads, in this process
    d = tempfile.mkdtemp(prefix="wm-restore-")
    flow = of.Flow("wm-restore", parallelism=2, batch_size=1)
    flow.enable_checkpointing(60.0, d)
    src = ScriptedSource(recs, stall_at=20)
    out, late, seen = CollectingSink(), CollectingSink(), CollectingSink()
    build(flow, src, out, late, seen)
    client = flow.start(executor="inline")
    deadline = time.monotonic() + 60
    while len(processed) < 20 and time.monotonic() < deadline:  # up to the stall
        time.sleep(0.05)
    assert len(processed) == 20
    savepoint = client.stop_with_savepoint()
    client.result()
    src.stall_at = None
    flow.parallelism = parallelism
    flow.run(restore=savepoint, executor="inline")
    assert sorted(out.records()) == [("k", float(s), float(s + 5), 5) for s in range(0, 30, 5)]
    assert late.records() == [("k", 1.0)]
    after = processed[20]  # the record after the savepoint, 18 s behind
    assert after == (1.0, 19.0, False), processed
