"""Window join and co-group against a brute-force reference (both backends, p1/p2, with
disorder): pairs of equal keys in the same tumbling or sliding window."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import onceflow as of


def _events(seed: int, n: int, keys: int) -> list[tuple[int, float, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(keys), round(i * 0.05 - rng.uniform(0, 1.0), 3), i)
            for i in range(n)]


def _windows(t: float, size: float, slide: float) -> list[float]:
    last = math.floor(t / slide) * slide
    starts = []
    s = last
    while s > t - size:
        starts.append(s)
        s -= slide
    return starts


@pytest.mark.parametrize(("backend", "parallelism", "slide"),
                         [("memory", 1, 10.0), ("memory", 2, 5.0), ("rocksdb", 2, 10.0)])
def test_window_join_matches_a_reference(tmp_path: Path, backend: str, parallelism: int,
                                         slide: float) -> None:
    left, right = _events(1, 800, 9), _events(2, 400, 9)
    be = (of.state.RocksDBBackend(local_dir=str(tmp_path / "r")) if backend == "rocksdb"
          else of.state.MemoryBackend())
    flow = of.Flow("wj", parallelism=parallelism, state_backend=be)
    ws = of.WatermarkStrategy.bounded_out_of_orderness(1.01).with_timestamps(lambda r: r[1])
    a = flow.source(of.sources.Collection(left), name="l", watermarks=ws)
    b = flow.source(of.sources.Collection(right), name="r", watermarks=ws)
    assigner = of.windows.tumbling(10.0) if slide == 10.0 else of.windows.sliding(10.0, slide)
    (a.join(b).where(lambda x: x[0]).equal_to(lambda y: y[0]).window(assigner)
      .apply(lambda x, y: (x[2], y[2])).sink(of.sinks.FileSink(tmp_path / "o")))
    flow.run()
    got = Counter(map(tuple, of.sinks.read_committed(tmp_path / "o")))
    want: Counter[tuple[int, int]] = Counter()
    for x in left:
        for y in right:
            if x[0] == y[0]:
                common = set(_windows(x[1], 10.0, slide)) & set(_windows(y[1], 10.0, slide))
                for _ in common:
                    want[(x[2], y[2])] += 1
    assert sum(want.values()) > 1000
    assert got == want


def test_co_group_gives_outer_join_rows(tmp_path: Path) -> None:
    left = [("a", 1.0), ("b", 2.0), ("a", 12.0)]
    right = [("a", 3.0), ("c", 4.0)]
    flow = of.Flow("cg", parallelism=2)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[1])
    a = flow.source(of.sources.Collection(left), name="l", watermarks=ws)
    b = flow.source(of.sources.Collection(right), name="r", watermarks=ws)

    def full_outer(lefts: list[Any], rights: list[Any]) -> list[Any]:
        if not lefts:
            return [(None, r[1]) for r in rights]
        if not rights:
            return [(x[1], None) for x in lefts]
        return [(x[1], r[1]) for x in lefts for r in rights]

    (a.co_group(b).where(lambda x: x[0]).equal_to(lambda y: y[0])
      .window(of.windows.tumbling(10.0)).apply(full_outer)
      .sink(of.sinks.FileSink(tmp_path / "o")))
    flow.run()
    got = sorted(map(tuple, of.sinks.read_committed(tmp_path / "o")), key=repr)
    assert got == sorted([(1.0, 3.0), (2.0, None), (None, 4.0), (12.0, None)], key=repr)


@pytest.mark.parametrize("join", ["join", "co_group"])
def test_a_session_join_s_gap_function_gets_the_user_s_record(join: str,
                                                              tmp_path: Path) -> None:
    """``session(lambda r: r["gap"])``: the gap function is given the record as the user
    wrote it (it was given the join's internal ``(side, record)`` tuple and failed)."""
    left = [{"k": 1, "t": 1.0, "gap": 2.0}, {"k": 1, "t": 9.0, "gap": 2.0}]
    right = [{"k": 1, "t": 2.5, "gap": 2.0}]
    flow = of.Flow(f"session-{join}", parallelism=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r["t"])
    a = flow.source(of.sources.Collection(left), name="l", watermarks=ws)
    b = flow.source(of.sources.Collection(right), name="r", watermarks=ws)
    gap = of.windows.session(lambda r: r["gap"])
    if join == "join":
        out = (a.join(b).where(lambda x: x["k"]).equal_to(lambda y: y["k"]).window(gap)
                .apply(lambda x, y: (x["t"], y["t"])))
    else:
        out = (a.co_group(b).where(lambda x: x["k"]).equal_to(lambda y: y["k"]).window(gap)
                .apply(lambda xs, ys: [(len(xs), len(ys))]))
    out.sink(of.sinks.FileSink(tmp_path / "o"))
    flow.run()
    got = sorted(map(tuple, of.sinks.read_committed(tmp_path / "o")))
    # sessions: [1.0, 4.5) holds left 1.0 and right 2.5; [9.0, 11.0) left 9.0 alone
    assert got == ([(1.0, 2.5)] if join == "join" else [(1, 0), (1, 1)])


def test_a_time_to_live_on_a_window_join_is_refused() -> None:
    flow = of.Flow("ttl-window", parallelism=1)
    a = flow.source(of.sources.Collection([1]))
    b = flow.source(of.sources.Collection([1]))
    with pytest.raises(of.ConfigurationError, match=r"with_ttl\(\.\.\.\)\.window\(\.\.\.\): "
                       r"a window join keeps each window's rows"):
        a.join(b).where(lambda x: x).equal_to(lambda y: y).with_ttl(5.0).window(
            of.windows.tumbling(1.0))


@pytest.mark.parametrize("join", ["join", "co_group"])
def test_a_global_window_join_fires_on_its_trigger(join: str, tmp_path: Path) -> None:
    """of.windows.global_() never fires by itself: the error says to give .trigger(...),
    and a window join takes one (it had no trigger() at all)."""
    flow = of.Flow(f"global-{join}", parallelism=1)
    a = flow.source(of.sources.Collection([("k", 1), ("k", 2), ("j", 9)]), name="l")
    b = flow.source(of.sources.Collection([("k", 10), ("k", 20)]), name="r")
    joined = a.join(b) if join == "join" else a.co_group(b)
    w = joined.where(lambda x: x[0]).equal_to(lambda y: y[0]).window(of.windows.global_())
    fn: Any = ((lambda x, y: (x[1], y[1])) if join == "join" else
               (lambda xs, ys: [(sorted(x[1] for x in xs), sorted(y[1] for y in ys))]))
    with pytest.raises(of.ConfigurationError, match=r"never fire by themselves: give "
                                                    r"\.trigger\("):
        w.apply(fn)
    with pytest.raises(of.ConfigurationError, match=r"has no \.evictor\(\).*\.trigger\(\)"):
        w.evictor  # noqa: B018 - the attribute access is what is tested
    # key "k" fires once its 4 records (both sides) are in; "j" never reaches 4
    w.trigger(of.windows.CountTrigger(4)).apply(fn).sink(of.sinks.FileSink(tmp_path / "o"))
    flow.run()
    got = sorted(map(json.dumps, of.sinks.read_committed(tmp_path / "o")))  # tuples: lists
    want = ([[1, 10], [1, 20], [2, 10], [2, 20]] if join == "join" else [[[1, 2], [10, 20]]])
    assert got == sorted(map(json.dumps, want))


def test_a_window_join_s_late_records_are_read_from_its_result(tmp_path: Path) -> None:
    """``result.side_output(tag)`` gives the late records, as for an interval join or a
    window (it read a side output of the join's internal flat_map: always empty)."""
    late = of.OutputTag("late")
    flow = of.Flow("wj-late", parallelism=1, batch_size=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[2])
    src = flow.source(of.sources.Collection(
        [("L", "a", 1.0), ("R", "a", 3.0), ("L", "a", 20.0), ("R", "a", 21.0),
         ("L", "a", 2.0), ("R", "a", 22.0)]), name="events", watermarks=ws)
    a = src.filter(lambda r: r[0] == "L", name="left")
    b = src.filter(lambda r: r[0] == "R", name="right")
    out = (a.join(b).where(lambda x: x[1]).equal_to(lambda y: y[1])
            .window(of.windows.tumbling(10.0)).side_output_late_data(late)
            .apply(lambda x, y: (x[2], y[2])))
    out.sink(of.sinks.FileSink(tmp_path / "pairs"), name="pairs")
    out.side_output(late).sink(of.sinks.FileSink(tmp_path / "late"), name="late")
    flow.run()
    assert sorted(map(tuple, of.sinks.read_committed(tmp_path / "pairs"))) == \
        [(1.0, 3.0), (20.0, 21.0), (20.0, 22.0)]
    assert of.sinks.read_committed(tmp_path / "late") == [[0, ["L", "a", 2.0]]]
