"""One Nexmark query on Bytewax 0.21.1, reading the events ``prefill_kafka`` wrote (JSON;
``KafkaSource(tail=False)``: to the end of every partition) and writing the query's rows
as JSON to a Kafka topic (Bytewax's ``KafkaSink``: a plain producer, at-least-once; Bytewax
has no transactional Kafka sink). Recovery on: snapshots every 10 s, the same interval as
the others' checkpoints. One worker. JSON is parsed and written with orjson, as onceflow's
``deserializer="json"`` / ``serializer="json"`` do (``--stdlib-json``: the json module,
as this program did before 2026-12-01 17:30 UTC). Run by benchmarks/nexmark/peers.py in
benchmarks/compare/.venvs/bytewax::

    python peer_bytewax.py --query q5 --bootstrap HOST:PORT --input T --output T --workdir D

Event time: ``EventClock`` on ``date_time`` with a fixed "system" clock, so the watermark is
the largest timestamp seen minus ``--wait`` seconds and never moves with wall time.
Bytewax's watermark is not per Kafka partition: its ``KafkaSource`` reads the 8 partitions
(each in order) with a skew that grows over the run, so a small wait drops on-time events
as late (2 s and 10 s: q5 gave 12 of the reference's 14 rows over 200,000 events); peers.py
passes the input's whole event-time span plus 10 s, so every window closes at the end
of the input (all windows' state is held until then). Bytewax's window clock is also per
key: a key's window closes when a later item of that key arrives, or at the end.

Queries: q0, q1, q2 (map/filter), q3 (``stateful_flat_map`` join, as the SQL means: every
match once), q5 (``count_window`` sliding 10 s / 2 s per auction, then the window's
maximum in a ``fold_window`` over all counts), q7 (``fold_window`` tumbling 10 s),
q8 (``join_window`` tumbling 10 s), q11 (``count_window`` sessions, gap 10 s). Not
expressed: q4 (needs a per-auction event-time timer at the auction's expiry; Bytewax's
stateful operators have only wall-clock notifications).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
import orjson
from bytewax._bytewax import cli_main
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIXED_NOW = datetime(2000, 1, 1, tzinfo=UTC)
WAIT = timedelta(seconds=2)  # replaced by --wait


def _ts(e: dict[str, Any]) -> datetime:
    return EPOCH + timedelta(seconds=e["date_time"])


def _clock(ts: Any = _ts) -> win.EventClock:
    return win.EventClock(ts, wait_for_system_duration=WAIT, now_getter=lambda: FIXED_NOW,
                          to_system_utc=lambda t: None)


def _is_bid(e: dict[str, Any]) -> bool:
    return e["kind"] == "bid"


def q0(s: Any) -> Any:
    s = op.filter("bids", s, _is_bid)
    return op.map("project", s, lambda b: (b["auction"], b["bidder"], b["price"],
                                           b["date_time"], b["extra"]))


def q1(s: Any) -> Any:
    s = op.filter("bids", s, _is_bid)
    return op.map("euro", s, lambda b: (b["auction"], b["bidder"], 0.908 * b["price"],
                                        b["date_time"], b["extra"]))


def q2(s: Any) -> Any:
    s = op.filter("select", s, lambda e: e["kind"] == "bid" and e["auction"] % 123 == 0)
    return op.map("project", s, lambda b: (b["auction"], b["price"]))


_STATES = frozenset({"OR", "ID", "CA"})


def _q3_join(state: Any, e: dict[str, Any]) -> tuple[Any, list[Any]]:
    person, pending = state or (None, [])
    if e["kind"] == "person":
        out = [(e["name"], e["city"], e["state"], a) for a in pending]
        return (e, []), out
    if person is not None:
        return (person, []), [(person["name"], person["city"], person["state"], e["id"])]
    return (None, [*pending, e["id"]]), []


def q3(s: Any) -> Any:
    s = op.filter("sides", s, lambda e: (e["kind"] == "person" and e["state"] in _STATES)
                  or (e["kind"] == "auction" and e["category"] == 10))
    keyed = op.key_on("key", s, lambda e: str(e["id"] if e["kind"] == "person"
                                              else e["seller"]))
    return op.map("rows", op.stateful_flat_map("join", keyed, _q3_join), lambda kv: kv[1])


def _max_fold() -> tuple[Any, Any, Any]:
    def builder() -> tuple[int, list[Any]]:
        return (-1, [])

    def folder(acc: tuple[int, list[Any]], v: Any) -> tuple[int, list[Any]]:
        p = v[0]
        if p > acc[0]:
            return (p, [v])
        if p == acc[0]:
            acc[1].append(v)
        return acc

    def merger(a: Any, b: Any) -> Any:
        if a[0] == b[0]:
            return (a[0], a[1] + b[1])
        return a if a[0] > b[0] else b

    return builder, folder, merger


def q5(s: Any) -> Any:
    bids = op.filter("bids", s, _is_bid)
    counts = win.count_window("count", bids, _clock(),
                              # aligned 10 s early: the windows that start before event 0
                              win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=2),
                                                  EPOCH - timedelta(seconds=10)),
                              key=lambda b: str(b["auction"]))
    # (count, auction, window start), timestamped just before the window's end
    rows = op.map("row", counts.down, lambda kv: ("all", (kv[1][1], int(kv[0]),
                                                          kv[1][0] * 2.0 - 10.0)))
    b, f, m = _max_fold()
    top = win.fold_window("max", op.key_on("one", op.map("v", rows, lambda kv: kv[1]),
                                           lambda r: "all"),
                          _clock(lambda r: EPOCH + timedelta(seconds=r[2] + 10 - 1e-6)),
                          win.TumblingWindower(timedelta(seconds=2), EPOCH), b, f, m)
    return op.flat_map("rows", top.down,
                       lambda kv: [(r[1], r[0], r[2]) for r in kv[1][1][1]])


def q7(s: Any) -> Any:
    bids = op.map("v", op.filter("bids", s, _is_bid),
                  lambda e: (e["price"], e["auction"], e["bidder"], e["date_time"], e["extra"]))
    b, f, m = _max_fold()
    top = win.fold_window("max", op.key_on("one", bids, lambda r: "all"),
                          _clock(lambda r: EPOCH + timedelta(seconds=r[3])),
                          win.TumblingWindower(timedelta(seconds=10), EPOCH), b, f, m)
    return op.flat_map("rows", top.down,
                       lambda kv: [(r[1], r[0], r[2], r[3], r[4]) for r in kv[1][1][1]])


def q8(s: Any) -> Any:
    people = op.key_on("pk", op.filter("people", s, lambda e: e["kind"] == "person"),
                       lambda p: str(p["id"]))
    sellers = op.key_on("ak", op.filter("auctions", s, lambda e: e["kind"] == "auction"),
                        lambda a: str(a["seller"]))
    joined = win.join_window("join", _clock(), win.TumblingWindower(timedelta(seconds=10),
                                                                    EPOCH),
                             people, sellers, insert_mode="last", emit_mode="final")
    return op.flat_map("rows", joined.down,
                       lambda kv: [(int(kv[0]), kv[1][1][0]["name"], kv[1][0] * 10.0)]
                       if kv[1][1][0] is not None and kv[1][1][1] is not None else [])


def q11(s: Any) -> Any:
    bids = op.filter("bids", s, _is_bid)
    counts = win.count_window("sessions", bids, _clock(),
                              win.SessionWindower(timedelta(seconds=10)),
                              key=lambda b: str(b["bidder"]))
    return op.map("rows", counts.down, lambda kv: (int(kv[0]), kv[1][1]))


QUERIES = {"q0": q0, "q1": q1, "q2": q2, "q3": q3, "q5": q5, "q7": q7, "q8": q8, "q11": q11}


def build(a: argparse.Namespace) -> Dataflow:
    flow = Dataflow(f"nexmark-{a.query}")
    src = op.input("kafka", flow, KafkaSource([a.bootstrap], [a.input], tail=False))
    loads, dumps = (json.loads, json.dumps) if a.stdlib_json else (orjson.loads, orjson.dumps)
    events = op.map("parse", src, lambda m: loads(m.value))
    out = QUERIES[a.query](events)
    msgs = op.map("json", out, lambda r: KafkaSinkMessage(None, dumps(r)))
    op.output("results", msgs, KafkaSink([a.bootstrap], a.output))
    return flow


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("--query", "--bootstrap", "--input", "--output", "--workdir"):
        ap.add_argument(k, required=True)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--stdlib-json", action="store_true",
                    help="parse and write JSON with the json module instead of orjson")
    ap.add_argument("--wait", type=float, default=2.0,
                    help="EventClock wait_for_system_duration, s of event time")
    a = ap.parse_args()
    global WAIT
    WAIT = timedelta(seconds=a.wait)
    flow = build(a)
    db = os.path.join(a.workdir, "db")
    os.makedirs(db, exist_ok=True)
    init_db_dir(db, 1)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=a.interval),
             recovery_config=RecoveryConfig(db, backup_interval=timedelta(0)))
    secs = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    sys.stdout.write("RESULT " + json.dumps({"query": a.query, "job_s": secs,
                                             "job_cpu_s": cpu}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
