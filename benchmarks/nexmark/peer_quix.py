"""One Nexmark query on Quix Streams 3.28.1, reading the events ``prefill_kafka`` wrote
(JSON, 8 partitions, no message keys) and writing the query's rows as JSON to a Kafka
topic, ``processing_guarantee="exactly-once"`` (Kafka transactions; Quix's state in its
RocksDB stores with changelog topics, both defaults) and ``commit_interval=10`` (the
others' checkpoint interval). Run by benchmarks/nexmark/peers.py in
benchmarks/compare/.venvs/quix::

    python peer_quix.py --query q3 --bootstrap HOST:PORT --input T --output T --workdir D

Event time: the topic's ``timestamp_extractor`` gives every message its ``date_time`` (ms).

End of input: Quix Streams has no bounded mode; ``Application.run(timeout=IDLE)`` stops
once no message has been consumed for ``IDLE`` seconds and then commits (a forced final
checkpoint). ``IDLE`` is the commit interval plus 5 s: with exactly-once, what q3's first
stage writes to the re-partition topic is readable only after the commit that wrote it,
so its second stage starts at the first commit (10 s), and a shorter idle time stopped
the job before it (0 rows). The figures exclude that idle tail: the job's time runs from
``run()`` to the last message read (from the input or, q3, the re-partition topic); its
CPU seconds are the process's from ``run()`` on (the idle tail polls Kafka and costs
almost none).

Queries: q0, q1, q2 (filter and ``apply``), q3 (``group_by`` the person id / the seller,
which re-partitions through a Kafka topic as Quix's keyed state needs, then a stateful
``apply`` holding the person or the auctions waiting for it: every match once, as the
SQL means; the same hand-written join as Bytewax's ``stateful_flat_map``). Not run:
q4 (a per-auction close at the auction's expiry needs an event-time timer; Quix has
none), q8 (a window join: Quix 3.28 has as-of, interval and lookup joins, not a
window join), and the windowed q5, q7 and q11 (expressible as hopping, tumbling and
session windows, but Quix closes a key's window only when a later message of the same
key arrives and has no end of input: the last window of every key is never emitted, so
the output is not the query's result over the input and cannot be checked against the
reference).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

from quixstreams import Application

_STATES = frozenset({"OR", "ID", "CA"})
LAST = [0.0]  # perf_counter of the last message a stage read (input or re-partition topic)


def _ts(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return int(value["date_time"] * 1000)


def _seen(value: Any) -> None:
    LAST[0] = time.perf_counter()


def _is_bid(e: dict[str, Any]) -> bool:
    return bool(e["kind"] == "bid")


def q0(sdf: Any) -> Any:
    sdf = sdf.filter(_is_bid)
    return sdf.apply(lambda b: [b["auction"], b["bidder"], b["price"], b["date_time"],
                                b["extra"]])


def q1(sdf: Any) -> Any:
    sdf = sdf.filter(_is_bid)
    return sdf.apply(lambda b: [b["auction"], b["bidder"], 0.908 * b["price"],
                                b["date_time"], b["extra"]])


def q2(sdf: Any) -> Any:
    sdf = sdf.filter(lambda e: e["kind"] == "bid" and e["auction"] % 123 == 0)
    return sdf.apply(lambda b: [b["auction"], b["price"]])


def _q3_join(e: dict[str, Any], state: Any) -> list[Any]:
    if e["kind"] == "person":
        pending = state.get("pending", [])
        state.set("person", [e["name"], e["city"], e["state"]])
        if pending:
            state.delete("pending")
        return [[e["name"], e["city"], e["state"], a] for a in pending]
    person = state.get("person")
    if person is not None:
        return [[*person, e["id"]]]
    state.set("pending", [*state.get("pending", []), e["id"]])
    return []


def q3(sdf: Any) -> Any:
    sdf = sdf.filter(lambda e: (e["kind"] == "person" and e["state"] in _STATES)
                     or (e["kind"] == "auction" and e["category"] == 10))
    sdf = sdf.group_by(lambda e: e["id"] if e["kind"] == "person" else e["seller"],
                       name="q3-seller").update(_seen)
    return sdf.apply(_q3_join, stateful=True, expand=True)


QUERIES = {"q0": q0, "q1": q1, "q2": q2, "q3": q3}


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("--query", "--bootstrap", "--input", "--output", "--workdir"):
        ap.add_argument(k, required=True)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--idle", type=float, default=None,
                    help="stop once no message was consumed for this many seconds "
                    "(default: the commit interval + 5 s)")
    a = ap.parse_args()
    # more than a commit interval: with exactly-once a re-partition topic's messages are
    # readable (read_committed) only once the commit that wrote them is done
    idle = a.idle if a.idle is not None else a.interval + 5.0
    if a.query not in QUERIES:
        sys.exit(f"peer_quix.py: query {a.query!r} is not expressed for Quix Streams "
                 f"(see the module docstring); these are: {', '.join(QUERIES)}")
    app = Application(broker_address=a.bootstrap, consumer_group=f"nexmark-quix-{a.output}",
                      auto_offset_reset="earliest", processing_guarantee="exactly-once",
                      commit_interval=a.interval, state_dir=f"{a.workdir}/state",
                      auto_create_topics=True, loglevel="WARNING")
    inp = app.topic(a.input, value_deserializer="json", timestamp_extractor=_ts)
    out = app.topic(a.output, value_serializer="json", key_serializer="json")
    sdf = QUERIES[a.query](app.dataframe(inp).update(_seen))
    sdf.to_topic(out)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    app.run(timeout=idle, collect=False)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    secs = (LAST[0] or time.perf_counter()) - t0
    sys.stdout.write("RESULT " + json.dumps({"query": a.query, "job_s": secs,
                                             "job_cpu_s": cpu}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
