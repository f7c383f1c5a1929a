"""The Nexmark event generator, written from the public description of the benchmark
(an online auction: people register, open auctions, and bid).

Every event is a pure function of ``(seed, event number)``: the generator can start at
any event number and produce exactly what a run from the beginning would, which is what
makes :class:`~onceflow.nexmark.NexmarkSource` replayable (its position is the next event
number). The shape follows the specification:

* **Proportions**: of every 50 consecutive events 1 is a person, 3 are auctions and 46 are
  bids (the standard 1 : 3 : 46).
* **Ids**: people and auctions are numbered from 1000 in the order they are created, so
  the ids known at event ``n`` follow from ``n`` alone.
* **Skew**: a bid is for a *hot* auction (the most recent multiple of 100) with
  probability ``1 - 1/hot_auction_ratio`` (default 1/2), else for a random one of the
  ``in_flight_auctions`` newest (a few ids ahead allowed, as in the original); the bidder
  is a hot bidder (the most recent multiple of 100, plus one) with probability
  ``1 - 1/hot_bidder_ratio`` (3/4), else one of the ``active_people`` newest; an
  auction's seller is a hot seller with probability ``1 - 1/hot_seller_ratio`` (3/4).
* **Event time**: event ``n`` happens at ``base_time + n / rate`` seconds, whatever the
  speed at which events are read; with ``out_of_orderness`` each event's timestamp is up
  to that many seconds earlier (so a ``bounded_out_of_orderness`` watermark of that
  bound keeps them on time), and a ``late_fraction`` of events are a further
  ``late_by`` seconds earlier (late against that watermark).
* **Prices** are log-uniform between 1 and 1,000,000 cents-ish units (``10 ** (6 r) * 100``
  rounded), categories 10..14, states of the US from a short list, cities likewise.

Events are plain dictionaries (JSON-ready); ``"kind"`` is ``"person"``, ``"auction"`` or
``"bid"``, and ``"date_time"`` is the event time in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onceflow.errors import ConfigurationError

PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION = 1, 3, 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION  # 50
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_ID_STEP = 100  # hot auctions / sellers / bidders are the latest multiple of this
PERSON_ID_LEAD = 10  # a random person or auction may be this many ids ahead
AUCTION_ID_LEAD = 10

US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend",
             "Redmond", "Seattle", "Kent", "Cheyenne")
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
               "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
              "Noris")
CHANNELS = ("Google", "Facebook", "Baidu", "Apple")

_M64 = (1 << 64) - 1


class _Rand:
    """SplitMix64: a tiny deterministic random stream for one event (seeded by the
    generator's seed and the event number)."""

    __slots__ = ("s",)

    def __init__(self, seed: int, n: int) -> None:
        self.s = (seed * 0x9E3779B97F4A7C15 + n * 0xD1B54A32D192ED03 + 1) & _M64

    def next(self) -> int:
        self.s = s = (self.s + 0x9E3779B97F4A7C15) & _M64
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n if n > 0 else 0

    def unit(self) -> float:
        return (self.next() >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class NexmarkConfig:
    """The generator's settings (W5 in the benchmark notes uses the defaults with
    ``events=5_000_000``)."""

    events: int = 1_000_000  # events in total (a bounded source)
    seed: int = 0
    rate: float = 10_000.0  # events per second of event time
    base_time: float = 0.0  # event time of event 0, seconds
    active_people: int = 1000
    in_flight_auctions: int = 100
    hot_auction_ratio: int = 2
    hot_seller_ratio: int = 4
    hot_bidder_ratio: int = 4
    out_of_orderness: float = 0.0  # seconds a timestamp may be earlier than its event's
    late_fraction: float = 0.0  # share of events made late beyond that bound
    late_by: float = 1.0  # seconds beyond the bound a late event is earlier

    def validate(self) -> None:
        def bad(what: str, v: Any) -> ConfigurationError:
            return ConfigurationError(f"Nexmark: {what}, got {v!r}")

        if not isinstance(self.events, int) or self.events < 0:
            raise bad("events must be an integer >= 0", self.events)
        if not isinstance(self.seed, int):
            raise bad("seed must be an integer", self.seed)
        if not isinstance(self.rate, int | float) or not self.rate > 0:
            raise bad("rate must be > 0 events per second of event time", self.rate)
        for name in ("active_people", "in_flight_auctions", "hot_auction_ratio",
                     "hot_seller_ratio", "hot_bidder_ratio"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise bad(f"{name} must be an integer >= 1", v)
        if not isinstance(self.out_of_orderness, int | float) or self.out_of_orderness < 0:
            raise bad("out_of_orderness must be >= 0 seconds", self.out_of_orderness)
        if not isinstance(self.late_fraction, int | float) or not 0 <= self.late_fraction <= 1:
            raise bad("late_fraction must be between 0 and 1", self.late_fraction)
        if not isinstance(self.late_by, int | float) or not self.late_by > 0:
            raise bad("late_by must be > 0 seconds", self.late_by)


def kind_of(n: int) -> str:
    off = n % TOTAL_PROPORTION
    if off < PERSON_PROPORTION:
        return "person"
    if off < PERSON_PROPORTION + AUCTION_PROPORTION:
        return "auction"
    return "bid"


def last_person(n: int) -> int:
    """Base-0 id of the newest person at event ``n`` (0 before the first)."""
    epoch, off = divmod(n, TOTAL_PROPORTION)
    return epoch * PERSON_PROPORTION + min(off, PERSON_PROPORTION - 1)


def last_auction(n: int) -> int:
    """Base-0 id of the newest auction at event ``n``."""
    epoch, off = divmod(n, TOTAL_PROPORTION)
    off = max(0, min(off - PERSON_PROPORTION, AUCTION_PROPORTION - 1))
    return epoch * AUCTION_PROPORTION + off


def _mix(seed: int, n: int) -> tuple[int, int]:
    """Two 64-bit values for event ``n``: CPython's tuple hash of integers (xxHash-based,
    computed in C, not randomized by PYTHONHASHSEED), so events are the same in every
    process of one Python version (onceflow pins 3.11)."""
    return hash((seed, n)) & _M64, hash((n, seed, 0x5EED)) & _M64


class Generator:
    """Events by number: ``event(n)`` for any ``n``; ``events(start, stop, step)``.

    The random choices of event ``n`` come from two 64-bit values hashed from
    ``(seed, n)``, cut into bit fields (see :meth:`events`), so no state carries from one
    event to the next."""

    def __init__(self, config: NexmarkConfig) -> None:
        config.validate()
        self.c = config
        self._dt = 1.0 / config.rate
        # event time one auction stays open, on average (so about in_flight_auctions are)
        self._auction_span = (config.in_flight_auctions * TOTAL_PROPORTION /
                              AUCTION_PROPORTION) * self._dt
        self._urls = [[f"https://www.nexmark.com/{ch.lower()}/item.htm?query={q}"
                       for q in range(128)] for ch in CHANNELS]

    def nominal_time(self, n: int) -> float:
        return self.c.base_time + n / self.c.rate

    def event(self, n: int) -> dict[str, Any]:
        return self.events(n, n + 1)[0]

    def events(self, start: int, stop: int, step: int = 1) -> list[dict[str, Any]]:
        """Events ``start, start + step, ... < stop``. A bid takes its fields from bit
        fields of the event's first value (hot-auction draw 0-7, auction 8-27, hot-bidder
        draw 28-35, bidder 36-55, channel 56-57, URL 58-63) and its price, timestamp
        jitter and lateness from the second."""
        c = self.c
        seed, rate, base = c.seed, c.rate, c.base_time
        disorder, late_p, late_by = c.out_of_orderness, c.late_fraction, c.late_by
        har, hbr = c.hot_auction_ratio, c.hot_bidder_ratio
        active, inflight = c.active_people, c.in_flight_auctions
        urls = self._urls
        out: list[dict[str, Any]] = []
        ap = out.append
        for n in range(start, stop, step):
            h = hash((seed, n)) & 0xFFFFFFFFFFFFFFFF  # == _mix(seed, n), inlined
            g = hash((n, seed, 0x5EED)) & 0xFFFFFFFFFFFFFFFF
            ts = base + n / rate
            if disorder:
                ts -= ((g >> 20) & 0xFFFFF) * (1.0 / 0x100000) * disorder
            if late_p and ((g >> 40) & 0xFFFFF) * (1.0 / 0x100000) < late_p:
                ts = base + n / rate - disorder - late_by
            epoch, off = divmod(n, TOTAL_PROPORTION)
            if off >= PERSON_PROPORTION + AUCTION_PROPORTION:  # a bid
                newest_a = epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
                if (h & 0xFF) % har:
                    auction = (newest_a // HOT_ID_STEP) * HOT_ID_STEP
                else:
                    oldest = newest_a - inflight if newest_a > inflight else 0
                    auction = oldest + ((h >> 8) & 0xFFFFF) % (
                        newest_a - oldest + 1 + AUCTION_ID_LEAD)
                people = epoch * PERSON_PROPORTION + PERSON_PROPORTION  # newest + 1
                if ((h >> 28) & 0xFF) % hbr:
                    bidder = ((people - 1) // HOT_ID_STEP) * HOT_ID_STEP + 1
                else:
                    act = people if people < active else active
                    bidder = people - act + ((h >> 36) & 0xFFFFF) % (act + PERSON_ID_LEAD)
                ch = (h >> 56) & 3
                ap({"kind": "bid", "auction": auction + FIRST_AUCTION_ID,
                    "bidder": bidder + FIRST_PERSON_ID,
                    "price": round(10.0 ** ((g & 0xFFFFF) * (6.0 / 0x100000)) * 100.0),
                    "channel": CHANNELS[ch], "url": urls[ch][h >> 57],
                    "date_time": ts, "extra": ""})
            elif off >= PERSON_PROPORTION:
                ap(self._auction(n, _Rand(seed, n), ts))
            else:
                ap(self._person(n, _Rand(seed, n), ts))
        return out

    # --- people and auctions (8 % of the events: plain, not tuned) ----------------------
    def _random_person(self, n: int, r: _Rand) -> int:
        people = last_person(n) + 1
        active = min(people, self.c.active_people)
        return people - active + r.below(active + PERSON_ID_LEAD)

    def _random_auction(self, n: int, r: _Rand) -> int:
        newest = last_auction(n)
        oldest = max(newest - self.c.in_flight_auctions, 0)
        return oldest + r.below(newest - oldest + 1 + AUCTION_ID_LEAD)

    @staticmethod
    def _price(r: _Rand) -> int:
        return round(10.0 ** (r.unit() * 6.0) * 100.0)

    def _person(self, n: int, r: _Rand, ts: float) -> dict[str, Any]:
        pid = last_person(n) + FIRST_PERSON_ID
        name = f"{FIRST_NAMES[r.below(len(FIRST_NAMES))]} {LAST_NAMES[r.below(len(LAST_NAMES))]}"
        return {
            "kind": "person", "id": pid, "name": name,
            "email_address": f"{name.split()[0].lower()}{pid}@example.com",
            "credit_card": " ".join(f"{r.below(10000):04d}" for _ in range(4)),
            "city": US_CITIES[r.below(len(US_CITIES))],
            "state": US_STATES[r.below(len(US_STATES))],
            "date_time": ts, "extra": "",
        }

    def _auction(self, n: int, r: _Rand, ts: float) -> dict[str, Any]:
        c = self.c
        aid = last_auction(n) + FIRST_AUCTION_ID
        if r.below(c.hot_seller_ratio) > 0:
            seller = (last_person(n) // HOT_ID_STEP) * HOT_ID_STEP
        else:
            seller = self._random_person(n, r)
        initial = self._price(r)
        return {
            "kind": "auction", "id": aid, "item_name": f"item-{r.below(100000)}",
            "description": f"description-{r.below(1000)}", "initial_bid": initial,
            "reserve": initial + self._price(r), "date_time": ts,
            "expires": ts + 0.001 + r.unit() * 2.0 * self._auction_span,
            "seller": seller + FIRST_PERSON_ID,
            "category": FIRST_CATEGORY_ID + r.below(NUM_CATEGORIES), "extra": "",
        }
