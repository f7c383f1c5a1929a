"""Window results against an independent engine: DuckDB SQL over the same events.

The events come from two splits of one source subtask: a short split that delivers a few
records at the start and then has nothing (an idle split: it holds the watermark back
until ``with_idleness`` marks it idle), and the main split, out of order by up to 4 s, with
records far behind (late) in its second half, after a pause long enough for the short
split to go idle. Whether a record is late is made unambiguous by the data: SQL computes,
for every record, a watermark the window must already have seen (the main split's highest
timestamp four batches earlier, minus the bound) and one it cannot have seen yet (the
highest timestamp before the record, minus the bound); the test checks that every record
is on one side for sure, and that the job's late-data output is exactly the records SQL
finds late. Without idleness nothing would be late and the test would fail.

Windows that fire more than once (a late firing within the allowed lateness) are compared
by their last, largest result: count, sum of positive values, max and count-distinct only
grow.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

import onceflow as of

BATCH = 64
BOUND = 5.0
SIZE, SLIDE, GAP = 10.0, 2.5, 3.0
LAT = {"tumbling": 5.0, "sliding": 0.0, "session": 2.0}
N1, N2 = 1500, 2500
USERS = [f"u{i}" for i in range(7)]


def make_events(seed: int = 7) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    stall = [{"user": USERS[i % 7], "ts": i * 0.25, "v": i % 5 + 1, "item": i % 3,
              "split": 0, "seq": i} for i in range(16)]
    main = []
    for i in range(N1 + N2):
        base = 5.0 + i * 0.25
        if i >= N1 + 4 * BATCH and (i - N1) % 97 == 0:
            ts = base - 100.0 - rng.randrange(0, 40) * 0.25  # far behind: late
        else:
            ts = base - rng.randrange(0, 17) * 0.25  # up to 4 s out of order
        main.append({"user": rng.choice(USERS), "ts": ts, "v": rng.randrange(1, 50),
                     "item": rng.randrange(0, 12), "split": 1, "seq": i})
    return stall, main


class _Reader(of.sources.SplitReader):
    def __init__(self, src: TwoSplits, split: int, pos: int) -> None:
        self.src, self.split, self.pos = src, split, pos
        self.items = src.stall if split == 0 else src.main
        self.paused_at: float | None = None

    def read_batch(self, max_records: int) -> list[Any] | None:
        if self.pos >= len(self.items):
            if self.split == 1:
                self.src.main_done = True
                return None
            return None if self.src.main_done else []  # the idle split: nothing for now
        if self.split == 1 and self.pos >= N1:
            if self.paused_at is None:
                self.paused_at = time.monotonic()
            if time.monotonic() - self.paused_at < 0.6:  # > idleness: the stall goes idle
                return []
        out = self.items[self.pos:self.pos + max_records]
        if self.split == 1 and self.pos < N1:
            out = out[:N1 - self.pos]
        self.pos += len(out)
        return out

    def position(self) -> int:
        return self.pos


class TwoSplits(of.sources.Source):
    def __init__(self, stall: list[Any], main: list[Any]) -> None:
        self.stall, self.main = stall, main
        self.main_done = False

    def splits(self, parallelism: int) -> list[Any]:
        return [0, 1]

    def initial_position(self, split: Any) -> int:
        return 0

    def reader(self, split: Any, position: int) -> of.sources.SplitReader:
        return _Reader(self, split, position)


class Four(of.AggregateFunction):
    """count, sum(v), max(v), count_distinct(item), from the built-ins."""

    def __init__(self) -> None:
        self.parts = [of.agg.count(), of.agg.sum(lambda e: e["v"]),
                      of.agg.max(lambda e: e["v"]), of.agg.count_distinct(lambda e: e["item"])]

    def create_accumulator(self) -> Any:
        return tuple(p.create_accumulator() for p in self.parts)

    def add(self, value: Any, acc: Any) -> Any:
        return tuple(p.add(value, a) for p, a in zip(self.parts, acc, strict=True))

    def add_all(self, values: list[Any], acc: Any) -> Any:
        return tuple(p.add_all(values, a) for p, a in zip(self.parts, acc, strict=True))

    def merge(self, a: Any, b: Any) -> Any:
        return tuple(p.merge(x, y) for p, x, y in zip(self.parts, a, b, strict=True))

    def get_result(self, acc: Any) -> Any:
        return [p.get_result(a) for p, a in zip(self.parts, acc, strict=True)]


def run_job(tmp: Path, backend: Any) -> dict[str, tuple[list[Any], list[Any]]]:
    stall, main = make_events()
    flow = of.Flow("windows-vs-duckdb", parallelism=2, batch_size=BATCH, state_backend=backend)
    flow.enable_checkpointing(0.5, str(tmp / "ckpt"))
    ws = (of.WatermarkStrategy.bounded_out_of_orderness(BOUND)
          .with_timestamps(lambda e: e["ts"]).with_idleness(0.1))
    src = flow.source(TwoSplits(stall, main), watermarks=ws, parallelism=1)
    keyed = src.key_by(lambda e: e["user"])
    assigners = {"tumbling": of.windows.tumbling(SIZE), "sliding": of.windows.sliding(SIZE, SLIDE),
                 "session": of.windows.session(GAP)}
    for kind, assigner in assigners.items():
        late = of.OutputTag(f"late-{kind}")
        res = (keyed.window(assigner).allowed_lateness(LAT[kind]).side_output_late_data(late)
               .aggregate(Four(), name=kind))
        res.sink(of.sinks.FileSink(str(tmp / kind)), name=f"{kind}-out")
        res.side_output(late).sink(of.sinks.FileSink(str(tmp / f"{kind}-late")),
                                   name=f"{kind}-late-out")
    flow.run()
    return {k: (list(of.sinks.read_committed(str(tmp / k))),
                list(of.sinks.read_committed(str(tmp / f"{k}-late")))) for k in assigners}


def reference(kind: str) -> tuple[dict[tuple[Any, ...], list[Any]], set[tuple[int, int]]]:
    """(window results, (split, seq) of the late records) computed by DuckDB."""
    stall, main = make_events()
    db = duckdb.connect()
    db.execute("CREATE TABLE ev(usr VARCHAR, ts DOUBLE, v BIGINT, item BIGINT, split INT, "
               "seq BIGINT)")
    db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, ?, ?)",
                   [(e["user"], e["ts"], e["v"], e["item"], e["split"], e["seq"])
                    for e in stall + main])
    last_end = {"tumbling": f"floor(ts / {SIZE}) * {SIZE} + {SIZE}",
                "sliding": f"floor(ts / {SLIDE}) * {SLIDE} + {SIZE}",
                "session": f"ts + {GAP}"}[kind]
    lat = LAT[kind]
    db.execute(f"""
        CREATE TABLE cls AS
        SELECT *, {last_end} AS last_end,
          max(ts) OVER (PARTITION BY split ORDER BY seq
                        ROWS BETWEEN UNBOUNDED PRECEDING AND {4 * BATCH} PRECEDING)
            - {BOUND} AS seen_wm,
          max(ts) OVER (PARTITION BY split ORDER BY seq
                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) - {BOUND} AS max_wm
        FROM ev""")
    db.execute(f"""
        CREATE TABLE lab AS SELECT *,
          coalesce(split = 1 AND last_end + {lat} <= seen_wm, false) AS late,
          split = 0 OR max_wm IS NULL OR last_end + {lat} > max_wm AS ontime
        FROM cls""")
    ambiguous = db.execute("SELECT count(*) FROM lab WHERE late = ontime").fetchone()
    assert ambiguous == (0,), "the generated data leaves some record's lateness to timing"
    late = {(s, q) for s, q in db.execute("SELECT split, seq FROM lab WHERE late").fetchall()}
    agg = "count(*), sum(v), max(v), count(DISTINCT item)"
    if kind == "tumbling":
        q = f"""SELECT usr, floor(ts / {SIZE}) * {SIZE} AS s, floor(ts / {SIZE}) * {SIZE}
                  + {SIZE} AS e, {agg} FROM lab WHERE NOT late GROUP BY usr, s, e"""
    elif kind == "sliding":
        q = f"""WITH w AS (
                  SELECT *, unnest(range(CAST(floor((ts - {SIZE}) / {SLIDE}) AS BIGINT) + 1,
                                         CAST(floor(ts / {SLIDE}) AS BIGINT) + 1)) AS j
                  FROM lab WHERE NOT late)
                SELECT usr, j * {SLIDE} AS s, j * {SLIDE} + {SIZE} AS e, {agg}
                FROM w GROUP BY usr, s, e"""
    else:
        q = f"""WITH o AS (
                  SELECT *, max(ts + {GAP}) OVER (PARTITION BY usr ORDER BY ts, split, seq
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
                  FROM lab WHERE NOT late),
                n AS (SELECT *, sum(CASE WHEN prev_end IS NULL OR ts > prev_end THEN 1
                                    ELSE 0 END)
                        OVER (PARTITION BY usr ORDER BY ts, split, seq) AS sess FROM o)
                SELECT usr, min(ts) AS s, max(ts + {GAP}) AS e, {agg}
                FROM n GROUP BY usr, sess"""
    rows = db.execute(q).fetchall()
    return {(u, float(s), float(e)): [c, int(sm), mx, cd] for u, s, e, c, sm, mx, cd in rows}, late


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_windows_equal_duckdb_including_late_records(tmp_path: Path, backend: str) -> None:
    be = of.state.RocksDBBackend(layer_entries=500) if backend == "rocksdb" \
        else of.state.MemoryBackend()
    got = run_job(tmp_path, be)
    for kind, (results, late) in got.items():
        want, want_late = reference(kind)
        assert want_late, "the data has late records"
        final: dict[tuple[Any, ...], list[Any]] = {}
        firings: Counter[tuple[Any, ...]] = Counter()
        for k, s, e, v in results:
            w = (k, s, e)
            firings[w] += 1
            final[w] = max(final.get(w, v), v)
        diff = sorted((w, final.get(w), want.get(w)) for w in set(final) | set(want)
                      if final.get(w) != want.get(w))
        assert not diff, (kind, len(diff), diff[:6])
        late_ids = Counter((r["split"], r["seq"]) for r in late)
        assert late_ids == Counter(want_late), kind
        if LAT[kind] == 0:
            assert max(firings.values()) == 1, f"{kind}: a window fired twice without lateness"
