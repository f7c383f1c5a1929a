"""Windows: the issue's program as written, every window kind and function, triggers,
late firings and late data, and bad input named at build time or at the record."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.graph.logical import Kind, Node
from onceflow.runtime.operators import OperatorEnv
from onceflow.runtime.window import WindowOperator

WS0 = of.WatermarkStrategy.bounded_out_of_orderness(0.0)


def _run(build: Any, tmp: Path, events: list[Any], *, parallelism: int = 1,
         batch_size: int = 1, ts: Any = None, strategy: Any = None) -> dict[str, list[Any]]:
    """Run ``build(stream) -> {name: stream}`` over ``events`` (one split, one record per
    batch unless told, so watermarks are deterministic) and return what each sink got."""
    flow = of.Flow("w", parallelism=parallelism, batch_size=batch_size)
    ws = (strategy or WS0).with_timestamps(ts or (lambda e: e[1]))
    src = flow.source(of.sources.Collection(events), watermarks=ws, parallelism=1)
    outs = build(src)
    for name, stream in outs.items():
        stream.sink(of.sinks.FileSink(str(tmp / name)), name=name)
    flow.run()
    return {n: [tuple(r) if isinstance(r, list) else r
                for r in of.sinks.read_committed(str(tmp / n))] for n in outs}


def test_the_issue_program_runs_as_written(tmp_path: Path) -> None:
    events = [{"user": f"u{i % 3}", "ts": float(i)} for i in range(0, 300)]
    events.insert(200, {"user": "u1", "ts": 3.0})  # 197 s behind: past lateness, late
    os.chdir(tmp_path)
    import onceflow as of

    flow = of.Flow("clicks", parallelism=2)
    flow.enable_checkpointing(interval=1.0, storage="ckpt")
    ws = (of.WatermarkStrategy.bounded_out_of_orderness(5.0)
            .with_timestamps(lambda e: e["ts"])
            .with_idleness(10.0))
    clicks = flow.source(of.sources.Collection(events), watermarks=ws)
    late = of.OutputTag("late")
    per_user = (clicks.key_by(lambda e: e["user"])
                      .window(of.windows.tumbling(60.0))      # also sliding(size, slide),
                      .allowed_lateness(30.0)                 # session(gap), global_() with
                      .side_output_late_data(late)            # a trigger, count(n)
                      .aggregate(of.agg.count()))             # also reduce(fn), process(fn),
    per_user.sink(of.sinks.FileSink("counts"))           # aggregate(AggregateFunction)
    per_user.side_output(late).sink(of.sinks.FileSink("late"))
    flow.run()
    counts: dict[tuple[Any, ...], int] = {}
    for k, s, e, c in of.sinks.read_committed("counts"):
        counts[(k, s, e)] = max(counts.get((k, s, e), 0), c)
    late_recs = list(of.sinks.read_committed("late"))
    want = {(f"u{u}", s, s + 60.0): 20 for u in range(3) for s in (0.0, 60.0, 120.0, 180.0,
                                                                   240.0)}
    if late_recs:  # the whole collection may be one batch: then nothing is late yet
        assert late_recs == [{"user": "u1", "ts": 3.0}]
    else:
        want[("u1", 0.0, 60.0)] += 1
    assert counts == want


def test_tumbling_reduce_and_window_all(tmp_path: Path) -> None:
    events = [("a" if i % 2 else "b", float(i)) for i in range(20)]
    got = _run(lambda s: {
        "keyed": s.key_by(lambda e: e[0]).window(of.windows.tumbling(5.0))
                  .reduce(lambda x, y: (x[0], x[1] + y[1])),
        "all": s.window_all(of.windows.tumbling(10.0)).aggregate(of.agg.sum(lambda e: e[1])),
    }, tmp_path, events)
    want = {}
    for k in "ab":
        for s in (0.0, 5.0, 10.0, 15.0):
            vals = [t for kk, t in events if kk == k and s <= t < s + 5]
            want[(k, s, s + 5.0)] = [k, sum(vals)]
    assert {(k, s, e): list(v) for k, s, e, v in got["keyed"]} == want
    assert sorted(got["all"]) == [(None, 0.0, 10.0, 45.0), (None, 10.0, 20.0, 145.0)]


def test_sliding_process_and_aggregate_with_process(tmp_path: Path) -> None:
    events = [("k", float(i)) for i in range(12)]
    got = _run(lambda s: {
        "p": s.key_by(lambda e: e[0]).window(of.windows.sliding(4.0, 2.0))
              .process(lambda key, w, els: (key, w.start, w.end, [t for _, t in els])),
        "ap": s.key_by(lambda e: e[0]).window(of.windows.sliding(4.0, 2.0))
               .aggregate(of.agg.max(lambda e: e[1]), process=lambda k, w, m: m - w.start),
    }, tmp_path, events)
    p = sorted((s, e, tuple(v[3])) for _, s, e, v in got["p"])
    assert p == [(s, s + 4.0, tuple(float(t) for t in range(12) if s <= t < s + 4))
                 for s in (-2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0)]
    assert sorted((s, v) for _, s, _, v in got["ap"]) == \
        [(-2.0, 3.0), (0.0, 3.0), (2.0, 3.0), (4.0, 3.0), (6.0, 3.0), (8.0, 3.0), (10.0, 1.0)]


def test_results_carry_a_timestamp_just_below_the_window_end(tmp_path: Path) -> None:
    """A second tumbling window of the same size puts each result into the same window."""
    events = [("k", float(i)) for i in range(20)]
    got = _run(lambda s: {
        "two": s.key_by(lambda e: e[0]).window(of.windows.tumbling(10.0))
                .aggregate(of.agg.count())
                .window_all(of.windows.tumbling(10.0))
                .process(lambda k, w, els: [tuple(e[1:3]) for e in els]),
    }, tmp_path, events)
    assert sorted(got["two"]) == [(None, 0.0, 10.0, [[0.0, 10.0]]),
                                  (None, 10.0, 20.0, [[10.0, 20.0]])]


def test_late_firing_updates_the_result_and_later_records_go_to_the_side_output(
        tmp_path: Path) -> None:
    events = [("a", 1.0), ("a", 2.0), ("a", 12.0), ("a", 5.0), ("a", 30.0), ("a", 6.0)]
    late = of.OutputTag("late")

    def build(s: Any) -> dict[str, Any]:
        w = (s.key_by(lambda e: e[0]).window(of.windows.tumbling(10.0))
              .allowed_lateness(5.0).side_output_late_data(late).aggregate(of.agg.count()))
        return {"w": w, "late": w.side_output(late)}

    got = _run(build, tmp_path, events)
    assert got["w"] == [("a", 0.0, 10.0, 2), ("a", 0.0, 10.0, 3), ("a", 10.0, 20.0, 1),
                        ("a", 30.0, 40.0, 1)]
    assert got["late"] == [("a", 6.0)]


def test_sessions_merge_with_static_and_dynamic_gaps(tmp_path: Path) -> None:
    events = [("a", 0.0), ("a", 2.0), ("b", 2.5), ("a", 9.0), ("a", 5.0), ("b", 20.0)]
    got = _run(lambda s: {
        "static": s.key_by(lambda e: e[0]).window(of.windows.session(3.0))
                   .aggregate(of.agg.count()),
        "dynamic": s.key_by(lambda e: e[0])
                    .window(of.windows.session(lambda e: 10.0 if e[0] == "b" else 1.0))
                    .aggregate(of.agg.count()),
    }, tmp_path, events, strategy=of.WatermarkStrategy.bounded_out_of_orderness(10.0))
    # a: 0, 2, 5 chain (each within 3 s of the last: [0, 8)); 9 starts a new session
    assert sorted(got["static"]) == [("a", 0.0, 8.0, 3), ("a", 9.0, 12.0, 1), ("b", 2.5, 5.5, 1),
                                     ("b", 20.0, 23.0, 1)]
    assert sorted(got["dynamic"]) == [("a", 0.0, 1.0, 1), ("a", 2.0, 3.0, 1),
                                      ("a", 5.0, 6.0, 1), ("a", 9.0, 10.0, 1),
                                      ("b", 2.5, 12.5, 1), ("b", 20.0, 30.0, 1)]


def test_count_windows_global_with_triggers_and_purging(tmp_path: Path) -> None:
    events = [("a" if i % 3 else "b", float(i)) for i in range(14)]
    got = _run(lambda s: {
        "count": s.key_by(lambda e: e[0]).window(of.windows.count(3))
                  .aggregate(of.agg.sum(lambda e: e[1])),
        "global": s.key_by(lambda e: e[0]).window(of.windows.global_())
                   .trigger(of.windows.CountTrigger(4)).aggregate(of.agg.count()),
        "purging": s.key_by(lambda e: e[0]).window(of.windows.tumbling(100.0))
                    .trigger(of.windows.PurgingTrigger(of.windows.CountTrigger(4)))
                    .aggregate(of.agg.count()),
    }, tmp_path, events)
    # the global window's bounds (-inf, inf) survive FileSink (they were once null)
    inf = float("inf")
    a = [t for k, t in events if k == "a"]
    b = [t for k, t in events if k == "b"]
    want = [("a", -inf, inf, sum(a[i:i + 3])) for i in range(0, len(a) - 2, 3)] + \
        [("b", -inf, inf, sum(b[i:i + 3])) for i in range(0, len(b) - 2, 3)]
    assert sorted(got["count"]) == sorted(want)
    # not purged: the count keeps growing
    assert sorted(got["global"]) == [("a", -inf, inf, 4), ("a", -inf, inf, 8),
                                     ("b", -inf, inf, 4)]
    assert sorted(got["purging"]) == [("a", 0.0, 100.0, 4), ("a", 0.0, 100.0, 4),
                                      ("b", 0.0, 100.0, 4)]


def test_continuous_event_time_trigger_fires_early_and_at_the_end(tmp_path: Path) -> None:
    events = [("k", float(i)) for i in range(50)]
    got = _run(lambda s: {
        "c": s.key_by(lambda e: e[0]).window(of.windows.tumbling(50.0))
              .trigger(of.windows.ContinuousEventTimeTrigger(10.0))
              .aggregate(of.agg.count()),
    }, tmp_path, events)
    counts = [v for _, _, _, v in got["c"]]
    assert counts == sorted(counts) and counts[-1] == 50
    assert len(counts) >= 5, counts  # early firings at 10, 20, 30, 40, then the end


def test_processing_time_windows_fire_by_the_end_of_input(tmp_path: Path) -> None:
    flow = of.Flow("pt", parallelism=2)
    (flow.source(of.sources.Range(0, 5000))
         .key_by(lambda i: i % 4)
         .window(of.windows.tumbling(0.05, time="processing"))
         .aggregate(of.agg.count())
         .sink(of.sinks.FileSink(str(tmp_path / "o")), name="o"))
    flow.run()
    got = list(of.sinks.read_committed(str(tmp_path / "o")))
    assert sum(r[3] for r in got) == 5000
    assert {r[0] for r in got} == {0, 1, 2, 3}
    assert all(r[2] - r[1] == pytest.approx(0.05, abs=1e-6) for r in got)


def test_builtin_aggregates() -> None:
    vals = [3, 1, 4, 1, 5, 9, 2, 6]
    for agg, want in [(of.agg.count(), 8), (of.agg.sum(), 31), (of.agg.min(), 1),
                      (of.agg.max(), 9), (of.agg.mean(), 31 / 8),
                      (of.agg.count_distinct(), 7)]:
        acc = agg.add_all(vals[:3], agg.create_accumulator())
        other = agg.create_accumulator()
        for v in vals[3:]:
            other = agg.add(v, other)
        assert agg.get_result(agg.merge(acc, other)) == want, agg
    assert of.agg.sum(lambda r: r["v"]).add_all([{"v": 2}, {"v": 3}], 0) == 5


# --- late records counted, bad input ------------------------------------------------------
def _op(assigner: Any, **kw: Any) -> WindowOperator:
    from onceflow.api.windowing import WindowedStream

    flow = of.Flow("unit")
    src = flow.source(of.sources.Range(0, 1),
                      watermarks=WS0.with_timestamps(float))
    ws = WindowedStream(flow, src._node, lambda r: r[0], assigner)
    if "lateness" in kw:
        ws.allowed_lateness(kw["lateness"])
    if "late" in kw:
        ws.side_output_late_data(of.OutputTag(kw["late"]))
    node: Node = ws.aggregate(of.agg.count(), name="win")._node
    assert node.kind is Kind.WINDOW
    op = WindowOperator(node, lambda r: r[0])
    op.open(OperatorEnv("unit", 0, 1, 128, (0, 128), 0))
    return op


def test_late_records_without_a_consumed_tag_are_counted_not_lost() -> None:
    op = _op(of.windows.tumbling(10.0), late="late")  # a tag, but nobody reads it
    op.watermark = 100.0
    op.process_ts([("a", 1), ("a", 2), ("a", 100)], [1.0, 2.0, 100.0])
    assert op.late_dropped == 2
    op.side_wanted = frozenset({"late"})
    op.process_ts([("b", 3)], [3.0])
    assert op.late_dropped == 2 and op.side["late"][0] == [("b", 3)]


@pytest.mark.parametrize(("assigner", "setting"), [
    (lambda: of.windows.tumbling(0), "size must be a number of seconds > 0, got 0"),
    (lambda: of.windows.tumbling(-5.0), "size must be"),
    (lambda: of.windows.sliding(10.0, 20.0), "slide must be <= size"),
    (lambda: of.windows.sliding(10.0, 0), "slide must be a number of seconds > 0"),
    (lambda: of.windows.session(0.0), "gap must be a number of seconds > 0"),
    (lambda: of.windows.count(0), "n must be an integer >= 1"),
    (lambda: of.windows.global_(), "never fire by themselves"),
    (lambda: of.windows.tumbling(10.0, offset=12.0),
     "of.windows.tumbling(size=10.0, offset=12.0): offset must be in (-10.0, 10.0)"),
    (lambda: of.windows.tumbling(10.0, offset=-10.0), "offset must be in (-10.0, 10.0)"),
    (lambda: of.windows.tumbling(10.0, offset=10.0), "(use offset=0.0: the same windows)"),
    (lambda: of.windows.sliding(10.0, 5.0, offset=5.0),
     "of.windows.sliding(size=10.0, slide=5.0, offset=5.0): offset must be in (-5.0, 5.0)"),
    (lambda: of.windows.sliding(10.0, 5.0, offset=-7.0), "(use offset=-2.0: the same windows)"),
    (lambda: of.windows.tumbling(math.inf), "size must be a number of seconds > 0, got inf"),
    (lambda: of.windows.tumbling(True), "size must be a number of seconds > 0, got True"),
    (lambda: of.windows.sliding(10.0, math.nan), "slide must be a number of seconds > 0"),
    (lambda: of.windows.session(-1), "gap must be a number of seconds > 0, got -1"),
    (lambda: of.windows.session("5"), "gap must be a number of seconds > 0, got '5'"),
    (lambda: of.windows.count(2.5), "n must be an integer >= 1"),
    (lambda: of.windows.count(True), "n must be an integer >= 1"),
])
def test_bad_window_settings_name_the_operator_and_setting(assigner: Any, setting: str) -> None:
    flow = of.Flow("bad")
    src = flow.source(of.sources.Range(0, 10), watermarks=WS0.with_timestamps(float))
    with pytest.raises(of.ConfigurationError, match="window operator 'counts'") as e:
        src.key_by(lambda i: i % 2).window(assigner()).aggregate(of.agg.count(), name="counts")
    assert setting in str(e.value)


def test_negative_lateness_is_refused() -> None:
    flow = of.Flow("bad")
    src = flow.source(of.sources.Range(0, 10), watermarks=WS0.with_timestamps(float))
    with pytest.raises(of.ConfigurationError, match=r"'w'.*allowed_lateness\(-1.0\)"):
        src.key_by(lambda i: i).window(of.windows.tumbling(5.0)).allowed_lateness(-1.0) \
            .reduce(lambda a, b: a, name="w")


@pytest.mark.parametrize(("offset", "want"), [
    (3.0, [(0, 3.0, 13.0, 3)]), (-3.0, [(0, -3.0, 7.0, 2), (0, 7.0, 17.0, 1)])])
def test_an_offset_inside_the_size_shifts_tumbling_windows(
        tmp_path: Path, offset: float, want: list[tuple[Any, ...]]) -> None:
    got = _run(lambda s: {"out": s.key_by(lambda e: 0)
                          .window(of.windows.tumbling(10.0, offset=offset))
                          .aggregate(of.agg.count())},
               tmp_path, [(0, 4.0), (0, 6.0), (0, 12.0)])["out"]
    assert sorted(got) == want


@pytest.mark.parametrize(("lateness", "why"), [
    (math.inf, "lateness must be a number of seconds >= 0"),
    (math.nan, "lateness must be a number of seconds >= 0"),
    ("30", "lateness must be a number of seconds >= 0"),
])
def test_bad_lateness_is_refused(lateness: Any, why: str) -> None:
    flow = of.Flow("bad")
    src = flow.source(of.sources.Range(0, 10), watermarks=WS0.with_timestamps(float))
    with pytest.raises(of.ConfigurationError, match=r"'w'.*allowed_lateness") as e:
        src.key_by(lambda i: i).window(of.windows.tumbling(5.0)).allowed_lateness(lateness) \
            .reduce(lambda a, b: a, name="w")
    assert why in str(e.value)


def test_event_time_window_without_timestamps_says_what_to_add() -> None:
    flow = of.Flow("bad")
    src = flow.source(of.sources.Range(0, 10))
    with pytest.raises(of.ConfigurationError) as e:
        src.key_by(lambda i: i).window(of.windows.tumbling(5.0)).aggregate(
            of.agg.count(), name="per-key")
    msg = str(e.value)
    assert "'per-key'" in msg and "watermarks=" in msg and \
        "assign_timestamps_and_watermarks" in msg


def test_a_bad_dynamic_gap_names_the_record(tmp_path: Path) -> None:
    flow = of.Flow("bad", restart_strategy=of.restart.no_restart())
    (flow.source(of.sources.Collection([("a", 1.0, 2.0), ("b", 2.0, -1.0)]),
                 watermarks=WS0.with_timestamps(lambda e: e[1]))
         .key_by(lambda e: e[0])
         .window(of.windows.session(lambda e: e[2]))
         .aggregate(of.agg.count(), name="sessions")
         .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError) as e:
        flow.run()
    msg = str(e.value)
    assert "sessions" in msg and "-1.0" in msg and "('b', 2.0, -1.0)" in msg


def test_a_failing_aggregate_names_the_record(tmp_path: Path) -> None:
    flow = of.Flow("bad", restart_strategy=of.restart.no_restart())
    (flow.source(of.sources.Collection([1.0, 2.0, "x", 4.0]),
                 watermarks=WS0.with_timestamps(lambda e: 1.0))
         .key_by(lambda e: 0)
         .window(of.windows.tumbling(10.0))
         .aggregate(of.agg.sum(), name="total")
         .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError) as e:
        flow.run()
    assert "total" in str(e.value) and "'x'" in str(e.value)


def _holding(t: float, size: float, slide: float, offset: float) -> list[tuple[float, float]]:
    """The windows holding ``t``, found by trying every nearby ``j``, with the bounds the
    docs give, evaluated in floats: window ``j`` starts at ``j*slide + offset`` and, when
    ``slide`` divides ``size`` (``n`` times; tumbling: once), ends where window ``j + n``
    starts, so that the slices tile the time line; otherwise it ends ``size`` later."""
    n = size / slide
    j0 = math.floor((t - offset) / slide)
    out = []
    for j in range(j0 - math.ceil(n) - 2, j0 + 3):
        start = j * slide + offset
        end = (j + int(n)) * slide + offset if n == int(n) else start + size
        if start <= t < end:
            out.append((start, end))
    return out


@pytest.mark.parametrize(("size", "slide", "offset"), [
    (0.1, 0.1, 0.0), (1.0, 1.0, 0.3), (0.2, 0.2, -0.05), (0.001, 0.001, 0.0),
    (0.5, 0.1, 0.0), (1.0, 0.2, 0.05), (1.0, 0.3, 0.1), (0.7, 0.3, 0.0)])
@pytest.mark.parametrize("backend", ["memory", "rocksdb", "general"])
def test_every_record_is_in_the_windows_whose_bounds_hold_it(
        size: float, slide: float, offset: float, backend: str, tmp_path: Path) -> None:
    """Window sizes, slides and offsets that are not whole numbers, decimal timestamps in
    order, several records per timestamp: each record is in exactly the windows whose
    reported bounds hold it, and none is late. The slice of a record was computed as
    ``(t - offset) // size``, which rounding can put one slice too low (``841.7 // 0.1``
    is 8416; ``(2.3 - 0.3) // 1.0`` is 1): the record went into a window ending at its own
    timestamp, and once that window fired, the next record of that timestamp was late."""
    import random

    rng = random.Random(int(size * 1000 + slide * 100 + offset * 10))
    ts = sorted(round(rng.uniform(0, 60 * size), rng.choice([1, 2, 3])) for _ in range(300))
    events = [("k", t, i) for i, t in enumerate(t for t in ts for _ in range(2))]
    assigner = (of.windows.tumbling(size, offset=offset) if slide == size
                else of.windows.sliding(size, slide, offset=offset))
    flow = of.Flow("bounds", parallelism=1, batch_size=7,
                   state_backend=(of.state.RocksDBBackend(local_dir=str(tmp_path / "rocks"))
                                  if backend == "rocksdb" else of.state.MemoryBackend()))
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda e: e[1])
    src = flow.source(of.sources.Collection(events), watermarks=ws, parallelism=1)
    windows = src.key_by(lambda e: e[0]).window(assigner)
    if backend == "general":  # a purging trigger: the general window operator, not panes
        windows = windows.trigger(of.windows.PurgingTrigger(of.windows.EventTimeTrigger()))
    (windows.process(lambda k, w, els: (w.start, w.end, sorted(e[2] for e in els)), name="w")
        .sink(of.sinks.FileSink(tmp_path / "o")))
    result = flow.run()
    got: dict[int, list[tuple[float, float]]] = {}
    for _, _, _, (start, end, ids) in of.sinks.read_committed(tmp_path / "o"):
        for i in ids:
            got.setdefault(i, []).append((start, end))
    want = {i: _holding(t, size, slide, offset) for _, t, i in events}
    assert {i: sorted(w) for i, w in got.items()} == want
    assert result.operators["w"].late_dropped == 0


def _pane_op(assigner: Any, lateness: float, backend: Any = None) -> WindowOperator:
    from onceflow.api.windowing import WindowedStream
    from onceflow.runtime.window import PaneWindowOperator, make_window_operator

    flow = of.Flow("unit")
    src = flow.source(of.sources.Range(0, 1), watermarks=WS0.with_timestamps(float))
    ws = WindowedStream(flow, src._node, lambda r: r[0], assigner).allowed_lateness(lateness)
    op = make_window_operator(ws.aggregate(of.agg.count(), name="w")._node, lambda r: r[0])
    assert isinstance(op, PaneWindowOperator)
    op.open(OperatorEnv("unit", 0, 1, 128, (0, 128), 0, state_backend=backend))
    return op


@pytest.mark.parametrize(("size", "slide", "lateness"), [
    (10.0, 10.0, 0.0), (10.0, 2.5, 0.0), (10.0, 2.5, 4.0), (6.0, 1.0, 7.5), (4.0, 4.0, 3.0)])
@pytest.mark.parametrize(("seed", "fused"), [(1, True), (2, True), (3, False)])
def test_panes_equal_a_brute_force_reference(size: float, slide: float, lateness: float,
                                             seed: int, fused: bool) -> None:
    """Random out-of-order records and watermark jumps of several slides: the last result
    of every window equals its count of records that were not late for it, and records
    late for all their windows are counted. (Both record paths: one pass, and grouped as
    for RocksDB and process functions. No RocksDB store here: this process forks the
    workers of other tests, and must not hold RocksDB threads when it does.)"""
    import random

    rng = random.Random(seed)
    op = _pane_op(of.windows.sliding(size, slide) if slide != size
                  else of.windows.tumbling(size), lateness)
    op._fused = fused
    op._fast = op._fast and fused  # type: ignore[attr-defined]  # grouped: as for RocksDB
    n = round(size / slide)
    want: dict[tuple[Any, ...], int] = {}
    late = 0
    got: dict[tuple[Any, ...], list[int]] = {}
    wm = -math.inf
    t0 = 0.0
    for _ in range(60):
        batch = []
        for _ in range(rng.randrange(0, 6)):
            t = round(t0 - rng.uniform(0, 3 * size), 2)
            batch.append((rng.choice("abc"), t))
        for k, t in batch:
            last = math.floor(t / slide)
            ends = [j * slide + size for j in range(last - n + 1, last + 1)]
            live = [e for e in ends if e + lateness > wm]
            if not live:
                late += 1
            for e in live:
                want[(k, e - size, e)] = want.get((k, e - size, e), 0) + 1
        out, _ = op.process_ts(batch, [t for _, t in batch])
        t0 += rng.uniform(0, 3 * slide)
        wm = max(wm, t0 - rng.uniform(0, size))
        op.watermark = wm
        out += op.on_watermark(wm)[0]
        for k, s, e, v in out:
            got.setdefault((k, s, e), []).append(v)
    op.watermark = math.inf
    for k, s, e, v in op.on_watermark(math.inf)[0]:
        got.setdefault((k, s, e), []).append(v)
    assert {w: vs[-1] for w, vs in got.items()} == want
    assert all(vs == sorted(vs) for vs in got.values())
    if lateness == 0:
        assert all(len(vs) == 1 for vs in got.values())
    assert op.late_dropped == late
    op.close()


# --- late records keep their event timestamps downstream ----------------------------------
class _Stamp(of.KeyedProcessFunction):
    """Emits (record, the event timestamp the runtime gives it) for each late record."""

    def process_element(self, value: Any, ctx: Any) -> Any:
        return [(list(value), ctx.timestamp)]


@pytest.mark.parametrize(("assigner", "backend"), [
    (lambda: of.windows.tumbling(10.0), "memory"),  # the pane operator's one-pass path
    (lambda: of.windows.tumbling(10.0), "rocksdb"),  # the pane operator's grouped path
    (lambda: of.windows.sliding(10.0, 4.0), "memory"),  # the general operator's windows
    (lambda: of.windows.session(1.5), "memory"),  # merging windows (one record each)
])
def test_late_records_keep_their_timestamps_on_the_late_output(
        tmp_path: Path, assigner: Any, backend: str) -> None:
    # on time up to 200; then records 150+ seconds behind, two per (key, slice), some
    # sharing a timestamp: late for every window (lateness 5), in batches of 16
    events = [("a" if i % 2 else "b", float(i)) for i in range(200)]
    behind = [("a", 3.0), ("a", 3.0), ("b", 4.5), ("a", 7.25), ("b", 4.0), ("a", 41.0)]
    events += [*behind, ("a", 300.0)]
    late = of.OutputTag("late")
    be = of.state.RocksDBBackend() if backend == "rocksdb" else of.state.MemoryBackend()
    flow = of.Flow("late-ts", parallelism=1, batch_size=16, state_backend=be)
    src = flow.source(of.sources.Collection(events), parallelism=1,
                      watermarks=WS0.with_timestamps(lambda e: e[1]))
    w = (src.key_by(lambda e: e[0]).window(assigner()).allowed_lateness(5.0)
            .side_output_late_data(late).aggregate(of.agg.count(), name="win"))
    w.sink(of.sinks.FileSink(str(tmp_path / "w")), name="w")
    (w.side_output(late).key_by(lambda e: e[0]).process(_Stamp(), name="stamp")
      .sink(of.sinks.FileSink(str(tmp_path / "late")), name="late"))
    result = flow.run()
    got = sorted((tuple(r), t) for r, t in of.sinks.read_committed(str(tmp_path / "late")))
    assert got == sorted((e, e[1]) for e in behind)
    assert result.operators["win"].late_dropped == 0


# --- the event-time pane operator's checkpoints: restored into either pane operator -------
def _random_steps(seed: int, size: float, slide: float, steps: int = 50
                  ) -> list[tuple[list[tuple[str, float]], float]]:
    import random

    rng = random.Random(seed)
    out = []
    wm, t0 = -math.inf, 0.0
    for _ in range(steps):
        batch = [(rng.choice("abcdefgh"), round(t0 - rng.uniform(0, 3 * size), 2))
                 for _ in range(rng.randrange(0, 8))]
        t0 += rng.uniform(0, 3 * slide)
        wm = max(wm, t0 - rng.uniform(0, size))
        out.append((batch, wm))
    return out


def _feed(op: WindowOperator, steps: list[tuple[list[tuple[str, float]], float]]
          ) -> list[Any]:
    got: list[Any] = []
    for batch, wm in steps:
        got += op.process_ts(batch, [t for _, t in batch])[0]
        op.watermark = wm
        got += op.on_watermark(wm)[0]
    return got


@pytest.mark.parametrize(("size", "slide", "lateness"), [
    (10.0, 10.0, 0.0), (10.0, 2.5, 0.0), (10.0, 2.5, 4.0), (6.0, 1.0, 7.5)])
@pytest.mark.parametrize(("before", "after", "split"), [
    (True, True, False), (True, False, False), (False, True, False), (True, True, True),
    (False, True, True)])
def test_pane_checkpoints_restore_into_either_operator_and_rescale(
        size: float, slide: float, lateness: float, before: bool, after: bool,
        split: bool) -> None:
    """A checkpoint of the one-pass event-time pane operator (per-pane dicts, no timer per
    key) and of the per-key one (state and timers per key) restore into each other, also
    split over two subtasks' key groups: the results equal an uninterrupted run's."""
    import pickle
    from collections import Counter

    from onceflow.graph.keygroups import key_group

    assigner = of.windows.sliding(size, slide) if slide != size else of.windows.tumbling(size)

    def make(fast: bool, kg: tuple[int, int] = (0, 128)) -> WindowOperator:
        op = _pane_op(assigner, lateness)
        if not fast:
            op._fused = False  # the per-key path, as for RocksDB
            op._bind()
        if kg != (0, 128):
            op.store.kg_range = kg
        assert op._fast is fast  # type: ignore[attr-defined]
        return op

    steps = _random_steps(7, size, slide)
    whole = make(True)
    want = Counter(_feed(whole, steps) + whole.on_watermark(math.inf)[0])
    for cut in (10, 25, 40):
        first = make(before)
        got = _feed(first, steps[:cut])
        snap = pickle.loads(pickle.dumps(first.snapshot(1)))
        wm = steps[cut - 1][1]
        ranges = [(0, 64), (64, 128)] if split else [(0, 128)]
        for kg in ranges:
            op = make(after, kg)
            op.restore([snap], split)
            op.watermark = wm  # the restored sources' watermark
            mine = [([r for r in b if kg[0] <= key_group(r[0], 128) < kg[1]], w)
                    for b, w in [([], wm), *steps[cut:]]]
            got += _feed(op, mine) + op.on_watermark(math.inf)[0]
        if before and after:  # the same operator: the same firings
            assert Counter(got) == want, (cut, Counter(got) - want, want - Counter(got))
        else:  # late firings may come per record group or per batch: the same last values
            assert _last(got) == _last(list(want.elements())), cut


def _last(results: list[Any]) -> dict[tuple[Any, ...], Any]:
    last: dict[tuple[Any, ...], Any] = {}
    for k, s, e, v in results:
        last[(k, s, e)] = max(v, last.get((k, s, e), v))  # counts only grow
    return last


@pytest.mark.parametrize("assigner", [of.windows.tumbling(10.0), of.windows.sliding(10.0, 5.0)])
@pytest.mark.parametrize("before_fast", [True, False])
def test_a_record_for_an_earlier_window_of_a_key_after_a_restore_still_counts(
        assigner: Any, before_fast: bool) -> None:
    """A key's restored state starts at a later window (its record at 95); after the restore
    an out-of-order record of that key arrives for an earlier window (55), on time: it must
    be counted there, whichever pane operator wrote the checkpoint (a bug once dropped it:
    the windows below the key's first restored timer counted as fired)."""
    import pickle

    first = _pane_op(assigner, 0.0)
    if not before_fast:
        first._fused = False  # the per-key operator's checkpoint, as on RocksDB
        first._bind()
    got = _feed(first, [([("a", 95.0)], 0.0), ([("a", 15.0)], 20.0)])
    snap = pickle.loads(pickle.dumps(first.snapshot(1)))
    op = _pane_op(assigner, 0.0)
    op.restore([snap], False)
    op.watermark = 20.0
    got += _feed(op, [([("a", 55.0)], 20.0)]) + op.on_watermark(math.inf)[0]
    from collections import Counter

    sliding = hasattr(assigner, "slide")
    want: Counter[tuple[Any, ...]] = Counter()
    for t in (15.0, 55.0, 95.0):
        for s in ([t // 5 * 5 - 5, t // 5 * 5] if sliding else [t // 10 * 10]):
            want[("a", s, s + 10.0, 1)] += 1
    assert Counter(got) == want
