"""Nexmark queries written with onceflow's public API, the way a user would.

Each ``qN(events)`` takes the stream of Nexmark events (dictionaries from
:class:`onceflow.nexmark.NexmarkSource`, with event time from ``date_time``) and returns
the query's result stream; the SQL in each docstring is the query's meaning (as in the
Nexmark project's definitions). Run one as an example::

    python benchmarks/nexmark/queries.py q3 --events 200000 --parallelism 2

prints the number of results and the first few. q4, q5, q7, q8 and q11 use the window
operator (``of.windows`` / ``of.agg``) and are in window_queries.py.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onceflow as of
from onceflow.nexmark import NexmarkConfig, NexmarkSource, watermarks


def _is_bid(e: dict[str, Any]) -> bool:
    return e["kind"] == "bid"


def q0(events: of.DataStream) -> of.DataStream:
    """Pass-through: ``SELECT auction, bidder, price, date_time, extra FROM bid``."""
    return (events.filter(_is_bid, name="q0-bids")
                  .map(lambda b: (b["auction"], b["bidder"], b["price"], b["date_time"],
                                  b["extra"]), name="q0-project"))


def q1(events: of.DataStream) -> of.DataStream:
    """Currency conversion: ``SELECT auction, bidder, 0.908 * price AS price, date_time,
    extra FROM bid`` (dollars to euros, as a float)."""
    return (events.filter(_is_bid, name="q1-bids")
                  .map(lambda b: (b["auction"], b["bidder"], 0.908 * b["price"],
                                  b["date_time"], b["extra"]), name="q1-euro"))


def q2(events: of.DataStream) -> of.DataStream:
    """Selection: ``SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0``."""
    return (events.filter(lambda e: e["kind"] == "bid" and e["auction"] % 123 == 0,
                          name="q2-select")
                  .map(lambda b: (b["auction"], b["price"]), name="q2-project"))


_Q3_STATES = frozenset({"OR", "ID", "CA"})


def q3(events: of.DataStream) -> of.DataStream:
    """Local item suggestion, a regular (unbounded) join::

        SELECT P.name, P.city, P.state, A.id
        FROM auction A INNER JOIN person P ON A.seller = P.id
        WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')

    Every match is emitted when the second of the two rows arrives; both sides are kept
    in keyed state (people for ever, as the SQL means)."""
    people = events.filter(lambda e: e["kind"] == "person" and e["state"] in _Q3_STATES,
                           name="q3-people")
    auctions = events.filter(lambda e: e["kind"] == "auction" and e["category"] == 10,
                             name="q3-auctions")
    return (auctions.join(people).where(lambda a: a["seller"]).equal_to(lambda p: p["id"])
                    .apply(lambda a, p: (p["name"], p["city"], p["state"], a["id"]),
                           name="q3-join"))


def _windowed(name: str) -> Callable[[of.DataStream], of.DataStream]:
    """q4, q5, q7, q8, q11 live in window_queries.py (they need ``of.windows``)."""
    def query(events: of.DataStream, **options: Any) -> of.DataStream:
        import window_queries

        return getattr(window_queries, name)(events, **options)  # type: ignore[no-any-return]

    query.__name__ = name
    return query


QUERIES: dict[str, Callable[..., of.DataStream]] = {
    "q0": q0, "q1": q1, "q2": q2, "q3": q3,
    **{q: _windowed(q) for q in ("q4", "q5", "q7", "q8", "q11")},
}

#: the queries that use event time (windows, interval joins, event-time timers). Only
#: their source assigns timestamps and watermarks: q0-q2 are per-record projections and
#: q3 a regular join, none reads an event's time, so (as a user would write them, and as
#: the Python peers' versions do) they run without; a watermark would cost a timestamp
#: per event and a watermark per batch for nothing.
EVENT_TIME_QUERIES = frozenset({"q4", "q5", "q7", "q8", "q11"})


def build(flow: of.Flow, query: str, config: NexmarkConfig, sink: Any,
          partitions: int | None = None, kafka: tuple[str, str] | None = None,
          throttle_to: float | None = None) -> None:
    """The source, the query and ``sink``, added to ``flow``. ``kafka``: ``(bootstrap,
    topic)`` to read the events from a topic ``prefill_kafka`` filled (JSON, read to the
    end offsets it has when the job starts) instead of the generator in-process; per-
    partition watermarks either way for the queries in :data:`EVENT_TIME_QUERIES` (no
    event time for the others). ``throttle_to``: at most this many events/s per
    subtask (crash tests, so a kill lands mid-run)."""
    source: Any
    if kafka is not None:
        from onceflow.kafka import KafkaSource

        source = KafkaSource(kafka[0], kafka[1], deserializer="json", value_only=True,
                             stop_at="end", group_id=f"{flow.name}-reader")
    else:
        source = NexmarkSource(config, partitions=partitions)
    events = flow.source(source, name="nexmark",
                         watermarks=watermarks(config) if query in EVENT_TIME_QUERIES
                         else None)
    if throttle_to:
        from onceflow.testing import throttle

        events = events.map(throttle(throttle_to), name="throttle")
    # q4 holds an auction open until its late bids can no longer come: as long as the
    # generator's late events can be behind the watermark (late_by: see lateness())
    options = {"allowed_lateness": lateness(config)} if query == "q4" else {}
    QUERIES[query](events, **options).sink(sink, name="results")


def lateness(config: NexmarkConfig) -> float:
    """How far behind the watermark of :func:`onceflow.nexmark.watermarks` the events
    of ``config`` can arrive: ``late_by`` when some are shifted late, else 0 (a shifted
    event's time is ``nominal - out_of_orderness - late_by``, and the watermark is below
    ``nominal - out_of_orderness`` of every event not read yet of its split)."""
    return config.late_by if config.late_fraction > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("query", choices=sorted(QUERIES))
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix=f"nexmark-{args.query}-")
    flow = of.Flow(f"nexmark-{args.query}", parallelism=args.parallelism)
    build(flow, args.query, NexmarkConfig(events=args.events, seed=args.seed),
          of.sinks.FileSink(out))
    result = flow.run()
    rows = of.sinks.read_committed(out)
    print(f"{args.query}: {len(rows)} results from {args.events} events in "
          f"{result.duration:.2f} s ({out})")
    for r in itertools.islice(rows, 5):
        print("  ", r)


if __name__ == "__main__":
    main()
