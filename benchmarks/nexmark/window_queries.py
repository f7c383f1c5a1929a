"""The Nexmark queries that need windows (q4, q5, q7, q8, q11), with the public API; see
queries.py for how to run them (``python benchmarks/nexmark/queries.py q5``)."""

from __future__ import annotations

import math
from typing import Any

import onceflow as of


def _is_bid(e: dict[str, Any]) -> bool:
    return e["kind"] == "bid"


#: q4's late records: auctions and bids more than its ``allowed_lateness`` behind the
#: watermark when they arrive (q4 cannot take them into account without retracting a
#: result it emitted)
Q4_LATE = of.OutputTag("q4-late")


def _after(t: float) -> float:
    """An event-time timer fires once the watermark *reaches* its time: one at
    ``_after(t)`` fires once the watermark has passed ``t``."""
    return math.nextafter(t, math.inf)


class _WinningBid(of.CoProcessFunction):
    """q4's inner query per auction: the highest bid between the auction's start and its
    expiry, emitted once, when no bid that counts can still arrive. State keeps only what
    the query reads (an auction's start, expiry and category; a bid's time and price), as
    Flink SQL's plan projects its columns.

    ``allowed_lateness`` (seconds, >= 0) is how far behind the watermark a record may
    arrive and still count; a record further behind (``date_time + allowed_lateness <
    watermark``) goes to the side output :data:`Q4_LATE` instead. Within that bound
    nothing is lost and nothing has to be retracted (the downstream average cannot take a
    result back):

    * an auction's result is emitted when the watermark passes ``expires +
      allowed_lateness``: a bid arriving later is more than ``allowed_lateness`` behind
      the watermark, or else its time is after ``expires`` and it does not count;
    * a bid that arrives before its auction waits in state until the watermark passes its
      time plus ``allowed_lateness``: the auction, if it counts, arrives before that
      (its start is at or before the bid's time). So does a late auction's: its timer is
      never in the past.

    State is cleared at those two points, so bids for auctions that never come and bids
    that arrive after their auction closed do not stay for ever."""

    def __init__(self, allowed_lateness: float = 0.0) -> None:
        if isinstance(allowed_lateness, bool) or not isinstance(allowed_lateness, int | float) \
                or not math.isfinite(allowed_lateness) or allowed_lateness < 0:
            raise of.ConfigurationError(
                f"q4: allowed_lateness must be a finite number >= 0 of seconds of event "
                f"time (how far behind the watermark a record may still count), got "
                f"{allowed_lateness!r}")
        self.lateness = float(allowed_lateness)

    def open(self, ctx: of.RuntimeContext) -> None:
        self.auction = ctx.value_state("auction")
        self.best = ctx.value_state("best")
        self.early = ctx.list_state("early")

    def _too_late(self, when: float, ctx: of.ProcessContext) -> bool:
        return when + self.lateness < ctx.timer_service.current_watermark()

    def _offer(self, a: tuple[float, float, int], when: float, price: int) -> None:
        if a[0] <= when <= a[1]:
            best = self.best.value()
            if best is None or price > best:
                self.best.update(price)

    def process_element1(self, a: dict[str, Any], ctx: of.ProcessContext) -> None:
        if self._too_late(a["date_time"], ctx):
            ctx.output(Q4_LATE, a)
            return
        kept = (a["date_time"], a["expires"], a["category"])
        self.auction.update(kept)
        for when, price in self.early.get():
            self._offer(kept, when, price)
        self.early.clear()  # the bids outside the auction's time never count
        ctx.timer_service.register_event_time_timer(_after(a["expires"] + self.lateness))

    def process_element2(self, b: dict[str, Any], ctx: of.ProcessContext) -> None:
        if self._too_late(b["date_time"], ctx):
            ctx.output(Q4_LATE, b)
            return
        a = self.auction.value()
        if a is None:  # the auction has not come (yet), or has closed
            self.early.add((b["date_time"], b["price"]))
            ctx.timer_service.register_event_time_timer(_after(b["date_time"] + self.lateness))
        else:
            self._offer(a, b["date_time"], b["price"])

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> list[Any]:
        a = self.auction.value()
        if a is not None:
            if timestamp != _after(a[1] + self.lateness):
                return []  # a waiting bid's timer; the auction took its bids already
            best = self.best.value()
            self.auction.clear()
            self.best.clear()
            return [] if best is None else [(a[2], best)]
        # no auction: the waiting bids whose auction would have come by now never count
        waiting = self.early.get()
        keep = [wp for wp in waiting if _after(wp[0] + self.lateness) > timestamp]
        if not keep:
            self.early.clear()
        elif len(keep) != len(waiting):
            self.early.update(keep)
        return []


def _running_mean(acc: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
    category, total, n = acc[0], acc[1] + new[1], acc[2] + new[2]
    return (category, total, n, total / n)


def q4_with_late(events: of.DataStream, allowed_lateness: float = 0.0
                 ) -> tuple[of.DataStream, of.DataStream]:
    """:func:`q4` and the stream of its late records (the auction and bid events it
    could not take into account, see :class:`_WinningBid`)."""
    auctions = events.filter(lambda e: e["kind"] == "auction", name="q4-auctions")
    bids = events.filter(_is_bid, name="q4-bids")
    closed = (auctions.key_by(lambda a: a["id"]).connect(bids.key_by(lambda b: b["auction"]))
                      .process(_WinningBid(allowed_lateness), name="q4-winning-bid"))
    result = (closed.map(lambda cp: (cp[0], cp[1], 1, float(cp[1])), name="q4-one")
                    .key_by(lambda r: r[0]).reduce(_running_mean, name="q4-average"))
    return result, closed.side_output(Q4_LATE)


def q4(events: of.DataStream, allowed_lateness: float = 0.0) -> of.DataStream:
    """Average closing price per category::

        SELECT Q.category, AVG(Q.final) FROM (
            SELECT MAX(B.price) AS final, A.category FROM auction A, bid B
            WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
            GROUP BY A.id, A.category) Q
        GROUP BY Q.category

    A continuous query: each closing auction updates its category's average; results are
    ``(category, sum, count, average)`` updates (the last one per category is the SQL's
    row). An auction closes when the watermark passes its expiry plus
    ``allowed_lateness``; set that to how far behind the watermark the events can be
    (for the generator's, ``late_by`` when ``late_fraction > 0``, else 0) and the result
    is the SQL's over all events. Records later than that are not lost silently: they go
    to an operator named ``q4-late`` (``flow.run().records_in("q4-late")`` counts them;
    :func:`q4_with_late` gives them as a stream), and the result is the SQL's over the
    other events."""
    result, late = q4_with_late(events, allowed_lateness)
    late.sink(of.sinks.Discard(), name="q4-late")
    return result


def _hottest(key: Any, window: Any, results: list[Any]) -> list[Any]:
    top = max(r[3] for r in results)
    return [(r[0], r[3], r[1]) for r in results if r[3] == top]


def q5(events: of.DataStream) -> of.DataStream:
    """Hot items: the auctions with the most bids in each sliding window of 10 s every 2 s
    (``(auction, num, window_start)``)::

        SELECT auction, num FROM (count per auction and HOP(date_time, 2 s, 10 s))
        WHERE num >= the window's maximum count"""
    counts = (events.filter(_is_bid, name="q5-bids")
                    .key_by(lambda b: b["auction"])
                    .window(of.windows.sliding(10.0, 2.0))
                    .aggregate(of.agg.count(), name="q5-count"))
    # each window's counts carry a timestamp just below its end: one 2 s tumbling window
    # per sliding window, keyed by the window's start, holds them all
    return (counts.key_by(lambda r: r[1]).window(of.windows.tumbling(2.0))
                  .process(_hottest, name="q5-max")
                  .flat_map(lambda r: r[3], name="q5-rows"))


class _MaxBids(of.agg.AggregateFunction):
    """The highest price of a window and the bids that offered it."""

    def create_accumulator(self) -> Any:
        return (-1, ())

    def add(self, value: Any, accumulator: Any) -> Any:
        p = value["price"]
        if p > accumulator[0]:
            return (p, (value,))
        if p == accumulator[0]:
            return (p, (*accumulator[1], value))
        return accumulator

    def merge(self, a: Any, b: Any) -> Any:
        if a[0] == b[0]:
            return (a[0], a[1] + b[1])
        return a if a[0] > b[0] else b

    def get_result(self, accumulator: Any) -> Any:
        return accumulator[1]


def q7(events: of.DataStream) -> of.DataStream:
    """Highest bid per 10 s tumbling window::

        SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B
        JOIN (SELECT MAX(price) AS maxprice, TUMBLE_ROWTIME(date_time, 10 s) AS t
              FROM bid GROUP BY TUMBLE(date_time, 10 s)) B1
        ON B.price = B1.maxprice AND B.date_time BETWEEN B1.t - 10 s AND B1.t

    Two steps: the best bids per auction and window (in parallel), then per window."""
    per_auction = (events.filter(_is_bid, name="q7-bids")
                         .key_by(lambda b: b["auction"])
                         .window(of.windows.tumbling(10.0))
                         .aggregate(_MaxBids(), name="q7-max-per-auction")
                         .flat_map(lambda r: r[3], name="q7-candidates"))
    return (per_auction.window_all(of.windows.tumbling(10.0))
                       .aggregate(_MaxBids(), name="q7-max")
                       .flat_map(lambda r: [(b["auction"], b["price"], b["bidder"],
                                             b["date_time"], b["extra"]) for b in r[3]],
                                 name="q7-rows"))


def _new_sellers(key: Any, window: Any, elements: list[Any]) -> Any:
    names = [e["name"] for side, e in elements if side == 0]
    if names and any(side == 1 for side, _ in elements):
        return [(key, names[0], window.start)]
    return None


def q8(events: of.DataStream) -> of.DataStream:
    """Monitor new users: people who opened an auction in the same 10 s tumbling window in
    which they registered (``(id, name, window_start)``)::

        SELECT P.id, P.name, P.starttime FROM
          (person per id, name, TUMBLE(date_time, 10 s)) P JOIN
          (auction per seller, TUMBLE(date_time, 10 s)) A
        ON P.id = A.seller AND P.starttime = A.starttime

    A window join of the two kinds (tagged, united, keyed by person id, windowed)."""
    people = events.filter(lambda e: e["kind"] == "person", name="q8-people") \
        .map(lambda p: (0, p), name="q8-tag-people")
    sellers = events.filter(lambda e: e["kind"] == "auction", name="q8-auctions") \
        .map(lambda a: (1, a), name="q8-tag-auctions")
    return (people.union(sellers, name="q8-union")
                  .key_by(lambda t: t[1]["id"] if t[0] == 0 else t[1]["seller"])
                  .window(of.windows.tumbling(10.0))
                  .process(_new_sellers, name="q8-join")
                  .flat_map(lambda r: r[3], name="q8-rows"))


def q11(events: of.DataStream) -> of.DataStream:
    """User sessions: bids per bidder per session (gap 10 s),
    ``(bidder, window_start, window_end, bid_count)``::

        SELECT bidder, count(*), SESSION_START(date_time, 10 s), SESSION_END(date_time, 10 s)
        FROM bid GROUP BY bidder, SESSION(date_time, 10 s)"""
    return (events.filter(_is_bid, name="q11-bids")
                  .key_by(lambda b: b["bidder"])
                  .window(of.windows.session(10.0))
                  .aggregate(of.agg.count(), name="q11-sessions"))
