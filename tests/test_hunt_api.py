"""The public API exactly as the issues (13 and 14) wrote it, on shapes the other tests do
not use, each against a reference computed in plain Python. Found by the "hunt" session:
every test here that names a bug failed before its fix."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.testing import CollectingSink

NO_RESTART = of.restart.fixed_delay(attempts=0, delay=0)


def _events(seed: int, n: int = 300) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    return [(f"u{rng.randrange(4)}", float(i) - rng.uniform(0, 4)) for i in range(n)]


def _tumbling_counts(events: list[tuple[str, float]], size: float
                     ) -> dict[tuple[Any, float, float], int]:
    want: Counter[tuple[Any, float, float]] = Counter()
    for k, t in events:
        s = math.floor(t / size) * size
        want[(k, s, s + size)] += 1
    return dict(want)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_assign_timestamps_and_watermarks_after_a_map_feeds_an_event_time_window(
        parallelism: int) -> None:
    """Bug (fixed): ``stream.assign_timestamps_and_watermarks(ws)`` chained after an
    operator whose records had no timestamps lost the timestamps it assigned (the chain
    called its ``process``, not ``process_ts``), so the window downstream failed every
    attempt with "its input records have no timestamps"."""
    events = _events(2)
    ws = of.WatermarkStrategy.bounded_out_of_orderness(5.0).with_timestamps(lambda e: e[1])
    flow = of.Flow("assign-later", parallelism=parallelism, restart_strategy=NO_RESTART)
    out = CollectingSink()
    (flow.source(of.sources.Collection(events))
         .map(lambda e: e, name="same")
         .assign_timestamps_and_watermarks(ws)
         .key_by(lambda e: e[0])
         .window(of.windows.tumbling(60.0))
         .aggregate(of.agg.count())
         .sink(out))
    flow.run(executor="inline")
    got = {(r[0], r[1], r[2]): r[3] for r in out.records()}
    assert got == _tumbling_counts(events, 60.0)


def test_assign_timestamps_and_watermarks_in_forked_workers_into_files(tmp_path: Path) -> None:
    """The same in worker processes, with checkpoints and a FileSink, the assigner at the
    head of its own task (after a rebalance) and a filter before it in that task."""
    events = _events(3, 2000)
    ws = of.WatermarkStrategy.bounded_out_of_orderness(5.0).with_timestamps(lambda e: e[1])
    flow = of.Flow("assign-forked", parallelism=2, batch_size=64, restart_strategy=NO_RESTART)
    flow.enable_checkpointing(0.2, str(tmp_path / "ckpt"))
    (flow.source(of.sources.Collection(events), parallelism=1)
         .rebalance()
         .filter(lambda e: e[1] > -10.0, parallelism=2)
         .assign_timestamps_and_watermarks(ws)
         .key_by(lambda e: e[0])
         .window(of.windows.tumbling(100.0))
         .aggregate(of.agg.count())
         .sink(of.sinks.FileSink(str(tmp_path / "out"))))
    result = flow.run()
    got = {(r[0], r[1], r[2]): r[3] for r in of.sinks.read_committed(str(tmp_path / "out"))}
    late = sum(m.late_dropped for m in result.operators.values())
    # two assigner subtasks each see a round-robin half; a record can only be late by its
    # own subtask's watermark, and 5 s of slack covers the 4 s of disorder
    assert late == 0
    assert got == _tumbling_counts(events, 100.0)


def test_assign_timestamps_and_watermarks_keeps_its_inputs_parallelism(tmp_path: Path) -> None:
    """Bug (fixed): the assigner took the flow's default parallelism, not its input's (as
    Flink's does). Behind a source of parallelism 3 in a flow of parallelism 1, one
    assigner then mixed the three source subtasks' records (Range gives each a contiguous
    part), its bounded-out-of-orderness watermark ran ahead of two of them, and their
    records were dropped as late although each subtask's stream was in order (19,872 of
    30,000 here)."""
    events = [(f"u{i % 4}", float(i)) for i in range(30_000)]
    ws = of.WatermarkStrategy.bounded_out_of_orderness(1.0).with_timestamps(float)
    flow = of.Flow("assign-parallelism", parallelism=1, batch_size=64,
                   restart_strategy=NO_RESTART)
    out = CollectingSink()
    stamped = (flow.source(of.sources.Range(0, 30_000), parallelism=3)
                   .assign_timestamps_and_watermarks(ws))
    (stamped.key_by(lambda i: f"u{i % 4}")
            .window(of.windows.tumbling(100.0))
            .aggregate(of.agg.count(), name="window")
            .sink(out))
    result = flow.run(executor="inline")
    assert result.operators["window"].late_dropped == 0
    assert {(r[0], r[1], r[2]): r[3] for r in out.records()} == _tumbling_counts(events, 100.0)


def test_file_sink_keeps_infinite_window_bounds_and_nan(tmp_path: Path) -> None:
    """Bug (fixed): FileSink's JSON lines went through orjson, which writes NaN and
    infinities as ``null``: the results of count and global windows,
    ``(key, -inf, inf, value)`` as the issue defines them, were committed as
    ``[key, null, null, value]``, silently changed. They are now written as Python's json
    writes them and read back by ``read_committed`` as they were."""
    out = tmp_path / "out"
    flow = of.Flow("count-windows", parallelism=2, restart_strategy=NO_RESTART)
    (flow.source(of.sources.Range(0, 100))
         .key_by(lambda i: i % 3)
         .window(of.windows.count(10))
         .aggregate(of.agg.count())
         .sink(of.sinks.FileSink(str(out))))
    flow.run()
    got = Counter(tuple(r) for r in of.sinks.read_committed(str(out)))
    per = Counter(i % 3 for i in range(100))
    assert got == Counter({(k, -math.inf, math.inf, 10): n // 10 for k, n in per.items()})
    odd = [(1, math.nan, {"x": -math.inf}), [None, 2.5], {"k": None}]
    flow = of.Flow("odd-floats", restart_strategy=NO_RESTART)
    flow.source(of.sources.Collection(odd)).sink(of.sinks.FileSink(str(tmp_path / "odd")))
    flow.run()
    back = of.sinks.read_committed(str(tmp_path / "odd"))
    assert back[0][0] == 1 and math.isnan(back[0][1]) and back[0][2] == {"x": -math.inf}
    assert back[1:] == [[None, 2.5], {"k": None}]


def test_kafka_json_serializer_keeps_infinite_window_bounds() -> None:
    from onceflow.connectors.kafka._common import deserializer, serializer

    encode, decode = serializer("json", "serializer"), deserializer("json", "deserializer")
    record = ("k", -math.inf, math.inf, 5)
    assert decode(encode(record)) == ["k", -math.inf, math.inf, 5]
