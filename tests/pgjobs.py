"""A flow writing into PostgreSQL exactly once, for crash tests (tests/test_postgres.py).

    python tests/pgjobs.py --dsn DSN --flow NAME --totals T --events E --ckpt DIR
                           [--records N] [--parallelism P] [--restore latest]

Range(0, N) -> throttle -> two branches:

* ``events``: one row (id, k) per input number, appended (insert mode) into table E;
* ``totals``: (k, sum, count) per key k = i % KEYS, a running reduce whose every update is
  upserted into table T by k.

A failure-free run leaves ``expected_totals(N)`` in T and every id 0..N-1 exactly once in E.
Prints one JSON line with the job's result. ``create_tables`` / ``drop_tables`` /
``check`` are the helpers the tests use.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import onceflow as of
from onceflow.postgres import PostgresSink, gid_prefix
from onceflow.testing import throttle

KEYS = 997


def expected_totals(records: int) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for i in range(records):
        s, n = out.get(i % KEYS, (0, 0))
        out[i % KEYS] = (s + i, n + 1)
    return out


def create_tables(conn: Any, totals: str, events: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {totals}, {events}")
    conn.execute(f"CREATE TABLE {totals} (k integer PRIMARY KEY, total bigint NOT NULL, "
                 "n bigint NOT NULL)")
    conn.execute(f"CREATE TABLE {events} (id bigint NOT NULL, k integer NOT NULL)")  # no key:
    # a duplicate would show


def drop_tables(conn: Any, *tables: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}")


def prepared_of(conn: Any, flow: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, %s)",
        (gid_prefix(flow),)).fetchall()]


def check(conn: Any, flow: str, totals: str, events: str, records: int) -> list[str]:
    """Problems found (empty: the tables equal a failure-free run's and no prepared
    transaction of ``flow`` is left)."""
    problems = []
    got = {k: (t, n) for k, t, n in conn.execute(f"SELECT k, total, n FROM {totals}")}
    want = expected_totals(records)
    if got != want:
        wrong = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
                 if got.get(k) != want.get(k)}
        problems.append(f"totals: {len(wrong)} key(s) differ (got, want): "
                        f"{dict(list(wrong.items())[:5])}")
    rows, distinct, lo, hi = conn.execute(
        f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {events}").fetchone()
    if (rows, distinct, lo, hi) != (records, records, 0, records - 1):
        dups = conn.execute(f"SELECT id, count(*) FROM {events} GROUP BY id HAVING count(*) > 1 "
                            "ORDER BY id LIMIT 5").fetchall()
        problems.append(f"events: {rows} rows, {distinct} distinct ids in [{lo}, {hi}], "
                        f"expected {records} ids 0..{records - 1} once each; duplicates e.g. "
                        f"{dups}")
    bad_k = conn.execute(f"SELECT count(*) FROM {events} WHERE k <> id % {KEYS}").fetchone()[0]
    if bad_k:
        problems.append(f"events: {bad_k} rows with a wrong k")
    left = prepared_of(conn, flow)
    if left:
        problems.append(f"prepared transactions left in pg_prepared_xacts: {left}")
    return problems


def build(flow: of.Flow, dsn: str, totals: str, events: str, records: int,
          rate: float) -> None:
    nums = (flow.source(of.sources.Range(0, records), name="numbers")
                .map(throttle(rate), name="throttle"))
    (nums.map(lambda i: (i, i % KEYS), name="event")
         .sink(PostgresSink(dsn, events, columns=["id", "k"], batch_rows=1000), name="events"))
    (nums.map(lambda i: (i % KEYS, i, 1), name="pairs")
         .key_by(lambda r: r[0])
         .reduce(lambda a, b: (a[0], a[1] + b[1], a[2] + b[2]), name="sum")
         .sink(PostgresSink(dsn, totals, columns=["k", "total", "n"], mode="upsert",
                            key_columns=["k"], batch_rows=200), name="totals"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--flow", required=True)
    ap.add_argument("--totals", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--records", type=int, default=40_000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="records/s per subtask")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.3)
    ap.add_argument("--restore", default=None)
    ap.add_argument("--attempts", type=int, default=30)
    ap.add_argument("--delay", type=float, default=0.2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    flow = of.Flow(args.flow, parallelism=args.parallelism, batch_size=256,
                   restart_strategy=of.restart.fixed_delay(attempts=args.attempts,
                                                           delay=args.delay))
    flow.enable_checkpointing(args.interval, args.ckpt, retained=2)
    build(flow, args.dsn, args.totals, args.events, args.records, args.rate)
    result = flow.run(restore=args.restore)
    print(json.dumps({
        "restarts": result.restarts,
        "failures": result.failures,
        "checkpoints": len(result.completed_checkpoints),
        "restored_from": result.restored_from,
        "events_in": result.operators["events"].records_in,
        "totals_in": result.operators["totals"].records_in,
    }), flush=True)


if __name__ == "__main__":
    main()
