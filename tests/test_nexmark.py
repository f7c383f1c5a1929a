"""The Nexmark generator: deterministic from its seed, replayable from any event number,
the standard proportions and skew, event time independent of reading speed, disorder,
late events and an idle split; and its source replays exactly after a real SIGKILL."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import joinjobs
import pytest
from jobproc import JobProcess, kill_randomly

import onceflow as of
from onceflow.errors import ConfigurationError
from onceflow.nexmark import Generator, NexmarkConfig, NexmarkSource, kind_of, watermarks

JOB = str(Path(__file__).with_name("joinjobs.py"))


def test_same_seed_same_events_any_start_and_another_seed_differs() -> None:
    a = Generator(NexmarkConfig(seed=3)).events(0, 5000)
    assert a == Generator(NexmarkConfig(seed=3)).events(0, 5000)
    g = Generator(NexmarkConfig(seed=3))
    assert [g.event(n) for n in (0, 17, 4999)] == [a[0], a[17], a[4999]]
    assert g.events(1234, 5000, 7) == a[1234:5000:7]  # a split starting anywhere
    b = Generator(NexmarkConfig(seed=4)).events(0, 5000)
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 4000


@pytest.mark.parametrize("config", [
    NexmarkConfig(seed=0),
    NexmarkConfig(seed=5, out_of_orderness=2.0, late_fraction=0.02),
    NexmarkConfig(seed=3, active_people=7, in_flight_auctions=3, hot_auction_ratio=3,
                  hot_bidder_ratio=1, rate=17.5, base_time=100.0)])
def test_the_fast_generator_equals_the_reference_loop(config: NexmarkConfig) -> None:
    """events() (ids worked out per epoch, lookup tables) makes exactly what the plain
    one-event-at-a-time definition, events_reference(), makes: from any start, any step."""
    fast, ref = Generator(config), Generator(config)
    assert fast.events(0, 30_000) == ref.events_reference(0, 30_000)
    rng = random.Random(f"nexmark-fast-{config.seed}")
    for _ in range(100):
        a = rng.randrange(0, 300_000)
        b, step = a + rng.randrange(0, 2_500), rng.randrange(1, 9)
        assert fast.events(a, b, step) == ref.events_reference(a, b, step), (a, b, step)
    assert fast.events(10, 3, 1) == [] and fast.events(9, 3, -2) == ref.events_reference(9, 3, -2)


@pytest.mark.parametrize("step", [2, 3, 7])
def test_a_split_read_batch_by_batch_equals_the_reference(step: int) -> None:
    """A split of ``step`` reads every step-th event in batches, as the source does; each
    block's fields are unpacked for that split's events only, and with a step that does
    not divide the block size, the split's first event in a block moves from block to
    block: the events must still be exactly the reference's."""
    fast, ref = Generator(NexmarkConfig(seed=2)), Generator(NexmarkConfig(seed=2))
    for split in range(step):
        got: list[dict[str, object]] = []
        pos = split
        while pos < 12_000:
            batch = fast.events(pos, min(12_000, pos + 700 * step), step)
            got.extend(batch)
            pos += len(batch) * step
        assert got == ref.events_reference(split, 12_000, step), split


def test_proportions_ids_and_skew() -> None:
    ev = Generator(NexmarkConfig(seed=0)).events(0, 100_000)
    kinds = Counter(e["kind"] for e in ev)
    assert kinds == {"person": 2000, "auction": 6000, "bid": 92000}  # 1 : 3 : 46
    assert [kind_of(n) for n in range(50)].count("auction") == 3
    people = [e["id"] for e in ev if e["kind"] == "person"]
    auctions = [e for e in ev if e["kind"] == "auction"]
    assert people == list(range(1000, 3000))
    assert [a["id"] for a in auctions] == list(range(1000, 7000))
    bids = [e for e in ev if e["kind"] == "bid"]
    hot_auction = sum(b["auction"] % 100 == 0 for b in bids) / len(bids)
    hot_bidder = sum(b["bidder"] % 100 == 1 for b in bids) / len(bids)
    hot_seller = sum(a["seller"] % 100 == 0 for a in auctions) / len(auctions)
    assert 0.47 < hot_auction < 0.55  # 1 - 1/2 plus the random ones that hit a multiple
    assert 0.72 < hot_bidder < 0.78  # 1 - 1/4
    assert 0.72 < hot_seller < 0.80
    # bids go to auctions that exist or are about to (in flight, a few ids ahead)
    for n, e in enumerate(ev):
        if e["kind"] == "bid":
            newest = (n // 50) * 3 + 2 + 1000
            assert newest - 100 - 1 <= e["auction"] <= newest + 10
    assert {a["category"] for a in auctions} == {10, 11, 12, 13, 14}
    assert {e["state"] for e in ev if e["kind"] == "person"} <= {"AZ", "CA", "ID", "OR",
                                                                  "WA", "WY"}
    prices = sorted(b["price"] for b in bids)
    assert prices[0] >= 100 and prices[-1] <= 100_000_000
    assert prices[len(prices) // 2] < 200_000  # log-uniform: the median is far below the mean


@pytest.mark.parametrize(("ratio", "disorder"), [(1000, 0.0), (5000, 2.0)])
def test_the_non_hot_share_is_one_over_the_ratio_for_ratios_above_256(
        ratio: int, disorder: float) -> None:
    """The hot draws were one random byte modulo the ratio: from 256 up every ratio gave
    a non-hot share of 1/256 (about 720 non-hot bids in 184,000 instead of 184 or 37).
    Both fast paths (in order and with disorder) and the reference loop."""
    cfg = NexmarkConfig(seed=0, hot_auction_ratio=ratio, hot_bidder_ratio=ratio,
                        hot_seller_ratio=ratio, out_of_orderness=disorder)
    gen = Generator(cfg)
    ev = gen.events(0, 200_000)
    assert ev[:20_000] == gen.events_reference(0, 20_000)
    bids = [(n, e) for n, e in enumerate(ev) if e["kind"] == "bid"]
    auctions = [(n, e) for n, e in enumerate(ev) if e["kind"] == "auction"]
    cold_a = sum(e["auction"] != ((n // 50 * 3 + 2) // 100) * 100 + 1000 for n, e in bids)
    cold_b = sum(e["bidder"] != (n // 50 // 100) * 100 + 1001 for n, e in bids)
    cold_s = sum(e["seller"] != (n // 50 // 100) * 100 + 1000 for n, e in auctions)
    want = len(bids) / ratio
    assert cold_a < 2.5 * want + 10 and cold_b < 2.5 * want + 10, (cold_a, cold_b, want)
    assert cold_a > want / 3 and cold_b > want / 3  # non-hot draws still happen
    assert cold_s < 2.5 * len(auctions) / ratio + 10


def test_event_time_rate_disorder_and_late_events() -> None:
    ev = Generator(NexmarkConfig(seed=1, rate=1000.0, base_time=50.0)).events(0, 3000)
    assert [e["date_time"] for e in ev] == [50.0 + n / 1000.0 for n in range(3000)]
    cfg = NexmarkConfig(seed=1, rate=1000.0, out_of_orderness=2.0, late_fraction=0.01,
                        late_by=1.5)
    ev = Generator(cfg).events(0, 50_000)
    late = 0
    for n, e in enumerate(ev):
        nominal = n / 1000.0
        if e["date_time"] < nominal - 2.0:
            late += 1
            assert e["date_time"] == pytest.approx(nominal - 3.5)
        else:
            assert nominal - 2.0 <= e["date_time"] <= nominal
    assert 350 < late < 650  # 1 %
    ooo = sum(a["date_time"] > b["date_time"] for a, b in itertools.pairwise(ev))
    assert ooo > 10_000  # really out of order


@pytest.mark.parametrize(("partitions", "idleness"), [(2, 0.3), (3, 0.3), (3, None), (40, 0.3)])
def test_more_splits_than_subtasks_keep_in_order_events_on_time(
        partitions: int, idleness: float | None, tmp_path: Path) -> None:
    """Each Nexmark split spans the whole event time. One source subtask with several
    splits reads them in turn, batch by batch: read one after another, a split waiting
    for its turn turned idle (with idleness) and the watermark followed the first split
    to the end of event time, so every record of the others came late (half the bids of
    the first window were dropped); without idleness no window fired before the last
    split was reached. The pipeline is slowed so that a read cycle over the splits takes
    longer than the idleness timeout."""
    from onceflow.testing import throttle

    cfg = NexmarkConfig(events=20_000, seed=4, rate=1000.0)  # 20 s of event time, in order
    flow = of.Flow(f"splits-{partitions}", parallelism=1)
    events = flow.source(NexmarkSource(cfg, partitions=partitions), name="nexmark",
                         watermarks=watermarks(cfg, idleness=idleness))
    bids = events.map(throttle(12_000), name="slow").filter(lambda e: e["kind"] == "bid")
    (bids.window_all(of.windows.tumbling(10.0)).aggregate(of.agg.count(), name="count")
         .map(lambda r: (r[1], r[3])).sink(of.sinks.FileSink(tmp_path / "o")))
    result = flow.run()
    got = dict(tuple(r) for r in of.sinks.read_committed(tmp_path / "o"))
    want = Counter((e["date_time"] // 10) * 10 for e in Generator(cfg).events(0, cfg.events)
                   if e["kind"] == "bid")
    assert got == dict(want)
    assert result.operators["count"].late_dropped == 0


def test_source_replays_from_any_position_and_an_idle_split_ends(tmp_path: Path) -> None:
    src = NexmarkSource(NexmarkConfig(events=1000, seed=5), partitions=3,
                        idle_partition=True, idle_seconds=0.3)
    splits = src.splits(2)
    assert len(splits) == 4
    rd = src.reader(splits[1], src.initial_position(splits[1]))
    first = rd.read_batch(100)
    pos = rd.position()
    rest = rd.read_batch(1000)
    again = src.reader(splits[1], pos).read_batch(1000)
    assert again == rest
    gen = Generator(NexmarkConfig(events=1000, seed=5))
    assert (first or []) + (rest or []) == gen.events(1, 1000, 3)
    idle = src.reader(splits[3], 0)
    assert idle.read_batch(10) == []
    flow = of.Flow("nexmark-idle", parallelism=2)
    (flow.source(src, watermarks=watermarks(idleness=0.1)).map(lambda e: e["kind"])
         .sink(of.sinks.FileSink(tmp_path / "o")))
    flow.run()
    assert Counter(of.sinks.read_committed(tmp_path / "o")) == \
        {"person": 20, "auction": 60, "bid": 920}
    with pytest.raises(ConfigurationError, match="late_fraction"):
        NexmarkConfig(late_fraction=2).validate()


_FINITE = "must be finite"  # the message of a derived time that is not


@pytest.mark.parametrize(("settings", "names"), [
    *[({field: value}, (f"Nexmark: {field} must be",)) for field, value in [
        ("out_of_orderness", math.nan), ("out_of_orderness", math.inf),
        ("base_time", math.nan), ("base_time", math.inf), ("base_time", "x"),
        ("rate", math.inf), ("late_by", math.inf), ("events", True),
        ("active_people", True), ("rate", True), ("late_fraction", math.nan)]],
    # each setting finite, the times made from them not: the last event's time, the
    # earliest shifted time and the latest expiry are checked too
    ({"rate": 1e-310, "events": 10}, (_FINITE, "rate=1e-310", "events=10")),
    ({"base_time": 1e308, "events": 10**400}, (_FINITE, "events=", "base_time=1e+308")),
    ({"base_time": -1e308, "out_of_orderness": 1e308, "late_fraction": 1.0,
      "late_by": 1e308}, (_FINITE, "out_of_orderness=1e+308", "late_by=1e+308")),
    ({"base_time": -1e308, "out_of_orderness": 1e308}, (_FINITE, "out_of_orderness=")),
    ({"rate": 1e-300, "in_flight_auctions": 10**9, "events": 10},
     (_FINITE, "in_flight_auctions=1000000000", "rate=1e-300"))])
def test_settings_that_would_make_timestamps_nan_or_infinite_are_refused(
        settings: dict[str, Any], names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError, match=names[0]) as err:
        NexmarkConfig(**settings).validate()
    assert all(n in str(err.value) for n in names), str(err.value)


@pytest.mark.parametrize(("settings", "match"), [
    ({"partitions": True}, "partitions must be an integer >= 1"),  # a bool is an int
    ({"partitions": 0}, "partitions must be an integer >= 1"),
    ({"idle_partition": True, "idle_seconds": math.nan}, "idle_seconds must be a finite"),
    ({"idle_seconds": -1.0}, "idle_seconds must be a finite number >= 0"),
    ({"idle_seconds": math.inf}, "idle_seconds"), ({"idle_seconds": "5"}, "idle_seconds"),
    ({"idle_partition": "yes"}, "idle_partition must be True or False"),
    ({"idle_partition": 1}, "idle_partition must be True or False")])
def test_nexmark_source_refuses_bad_partitions_and_idle_seconds(settings: dict[str, Any],
                                                                match: str) -> None:
    with pytest.raises(ConfigurationError, match=f"NexmarkSource: {match}"):
        NexmarkSource(NexmarkConfig(events=10), **settings).validate()


def test_late_by_does_not_bound_the_earliest_time_when_no_event_is_late() -> None:
    NexmarkConfig(base_time=-1e308, out_of_orderness=1e307, late_by=1e308).validate()


class NexmarkJob(JobProcess):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.out, self.ckpt = tmp / "out", tmp / "ckpt"

    def command(self) -> list[str]:
        return [JOB, "nexmark", "--out", str(self.out), "--ckpt", str(self.ckpt),
                "--records", "30000", "--rate", "5000"]


def test_nexmark_source_replays_exactly_after_sigkill(tmp_path: Path) -> None:
    job = NexmarkJob(tmp_path)
    job.start()
    delivered = kill_randomly(job, random.Random("nexmark"), kills=2)
    code, result = job.wait(timeout=180)
    assert code == 0, job.tail(3000)
    assert result is not None and delivered >= 1 and result["restarts"] >= 1
    got = joinjobs.committed(str(job.out))
    want = joinjobs.expected("nexmark", 30000)
    assert got == want, f"{sum(got.values())} committed vs {sum(want.values())}"


@pytest.mark.parametrize("bound", [-1.0, math.nan, math.inf])
def test_watermarks_refuse_a_bound_that_is_not_a_number_of_seconds(bound: float) -> None:
    """A negative or NaN bound failed no check and silently became no bound at all (the
    Kafka-input queries call watermarks() without a NexmarkSource to validate it)."""
    with pytest.raises(ConfigurationError, match="out_of_orderness"):
        watermarks(NexmarkConfig(out_of_orderness=bound))
