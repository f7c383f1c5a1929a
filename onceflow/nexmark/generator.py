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
  Each of these draws is the specification's ``nextInt(ratio) > 0`` made from 64 random
  bits by a multiply-shift (``(u * ratio) >> 64``), so the non-hot share is ``1/ratio``
  to within 2**-64 for any ratio (one byte modulo the ratio, as before, made every ratio
  from 256 up behave like 256 and biased ratios that do not divide 256).
* **Event time**: event ``n`` happens at ``base_time + n / rate`` seconds, whatever the
  speed at which events are read; with ``out_of_orderness`` each event's timestamp is up
  to that many seconds earlier (so a ``bounded_out_of_orderness`` watermark of that
  bound keeps them on time), and a ``late_fraction`` of events are a further
  ``late_by`` seconds earlier. Such an event is late against that watermark only if the
  watermark has already passed its timestamp when it is read, i.e. if events read
  before it (in earlier batches of its split: the watermark moves between batches; and,
  the watermark being the minimum, of the other splits too) have times more than about
  ``late_by`` seconds after it. So the events of a split's first batch, or of roughly
  the first ``late_by`` seconds of event time, are on time, and with ``late_fraction=1``
  none is late (every timestamp is shifted alike, so they are as ordered as before).
* **Prices** are log-uniform between 100 and 100,000,000 (``10 ** (6 r) * 100`` rounded,
  as in Nexmark), categories 10..14, states of the US from a short list, cities likewise.

Events are plain dictionaries (JSON-ready); ``"kind"`` is ``"person"``, ``"auction"`` or
``"bid"``, and ``"date_time"`` is the event time in seconds.
"""

from __future__ import annotations

import functools
import math
import random
import struct
import sys
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

BLOCK = 1024  # events per block of random bytes
_BYTES = 32  # random bytes per event (16 for the fields, 16 for two 64-bit hot draws)
_HOT_DRAW = 16  # offset of the first 64-bit hot draw (hot auction, or hot seller)
_HOT_DRAW2 = 24  # offset of the second (a bid's hot bidder)
_TWO_64 = 1 << 64


def _block(seed: int, blk: int) -> bytes:
    """The random bytes of events ``blk * BLOCK ..``: 32 per event, from a Mersenne
    Twister seeded by (seed, block) (the same on every platform and Python 3.9+)."""
    return random.Random(f"nexmark:{seed}:{blk}").randbytes(BLOCK * _BYTES)


def _not_hot_below(ratio: int) -> int:
    """The 64-bit draws ``u`` below this value are the non-hot ones: ``(u * ratio) >> 64
    == 0`` (the definition, see :meth:`Generator.events_reference`) holds exactly when
    ``u < ceil(2**64 / ratio)``, one comparison per event on the fast paths."""
    return -(-_TWO_64 // ratio)


#: a bid's 32 bytes as the fields the fast path reads (see ``Generator.events_reference``):
#: (0 unused), 1-2 auction, (3 unused), 4-5 bidder, 6 channel and URL, (7 unused), 8 and
#: 9-10 the price's high byte and low 16 bits, (11-12 jitter, 13-14 lateness draw, 15
#: people's and auctions' only), 16-23 the hot-auction draw, 24-31 the hot-bidder draw
_BID_FIELDS = struct.Struct(">xHxHBxBH5xQQ")
_U64 = struct.Struct(">Q")


@functools.lru_cache(maxsize=16)
def _strided(step: int) -> struct.Struct:
    """A bid's fields and then the bytes of the ``step - 1`` events after it, skipped."""
    return struct.Struct(f"{_BID_FIELDS.format}{_BYTES * (step - 1)}x")


def _bid_fields(buf: bytes, phase: int, step: int) -> list[tuple[int, ...]]:
    """The fields of events ``phase, phase + step, ...`` of a block (one ``struct`` call
    for the events a split of ``step`` reads, not for all the block's events)."""
    if step == 1:
        return list(_BID_FIELDS.iter_unpack(buf))
    st = _strided(step)
    view = buf[phase * _BYTES:]
    view += bytes(-len(view) % st.size)  # the last event's record, padded to full size
    return list(st.iter_unpack(view))


def _next_int(buf: bytes, o: int, ratio: int) -> int:
    """A draw in ``[0, ratio)`` from the 64 random bits at ``buf[o:o + 8]``, as Java's
    ``nextInt(ratio)`` in the specification: a multiply-shift, each value with probability
    ``1/ratio`` to within 2**-64 (one byte modulo the ratio could not reach ratios above
    256 and was biased for ratios not dividing 256)."""
    return (int.from_bytes(buf[o:o + 8], "big") * ratio) >> 64


@dataclass(frozen=True)
class NexmarkConfig:
    """The generator's settings (W5 in the benchmark notes uses the defaults with
    ``events=5_000_000``).

    ``late_fraction`` is the share of events whose timestamps are shifted ``late_by``
    seconds beyond ``out_of_orderness``; how many of them are *late* against the
    watermark depends on what was read before them (see the module docstring: none in a
    split's first batch, none with ``late_fraction=1``)."""

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
    late_fraction: float = 0.0  # share of events shifted late_by beyond that bound
    late_by: float = 1.0  # seconds beyond the bound such an event is earlier

    def validate(self) -> None:
        def bad(what: str, v: Any) -> ConfigurationError:
            return ConfigurationError(f"Nexmark: {what}, got {v!r}")

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def number(v: Any) -> bool:  # a finite int or float (not a bool, NaN or infinity)
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        if not integer(self.events) or self.events < 0:
            raise bad("events must be an integer >= 0", self.events)
        if not integer(self.seed):
            raise bad("seed must be an integer", self.seed)
        if not number(self.rate) or not self.rate > 0:
            raise bad("rate must be a finite number > 0 of events per second of event time",
                      self.rate)
        if not number(self.base_time):
            raise bad("base_time must be a finite number of seconds", self.base_time)
        for name in ("active_people", "in_flight_auctions", "hot_auction_ratio",
                     "hot_seller_ratio", "hot_bidder_ratio"):
            v = getattr(self, name)
            if not integer(v) or v < 1:
                raise bad(f"{name} must be an integer >= 1", v)
        if not number(self.out_of_orderness) or self.out_of_orderness < 0:
            raise bad("out_of_orderness must be a finite number >= 0 of seconds",
                      self.out_of_orderness)
        if not number(self.late_fraction) or not 0 <= self.late_fraction <= 1:
            raise bad("late_fraction must be between 0 and 1", self.late_fraction)
        if not number(self.late_by) or not self.late_by > 0:
            raise bad("late_by must be a finite number > 0 of seconds", self.late_by)
        self._validate_derived_times()

    def _validate_derived_times(self) -> None:
        """Each setting can be finite while the times made from them are not (``rate=1e-310``
        puts event 1 at ``1e310`` s, i.e. infinity; a huge ``in_flight_auctions`` makes
        expiries infinite): check the extremes the generator can produce. An event's time
        is ``base_time + n / rate`` for ``n < events``, shifted down by up to
        ``out_of_orderness`` and, with ``late_fraction``, by ``late_by`` more; an
        auction expires up to ``0.001 + 2 * in_flight_auctions * 50 / 3 / rate`` seconds
        after its time."""
        late_by = self.late_by if self.late_fraction > 0 else 0.0
        try:
            last = self.base_time + max(self.events - 1, 0) / self.rate
            earliest = self.base_time - self.out_of_orderness - late_by
            span = self.in_flight_auctions * TOTAL_PROPORTION / AUCTION_PROPORTION / self.rate
            expires = last + 0.001 + 2.0 * span
        except OverflowError:  # an int too large for a float
            last = earliest = expires = math.inf
        limit = f"finite (below {sys.float_info.max:.3g} in magnitude)"
        if not math.isfinite(last):
            raise ConfigurationError(
                f"Nexmark: the last event's time base_time + (events - 1) / rate is {last} "
                f"with base_time={self.base_time!r}, events={self.events!r}, "
                f"rate={self.rate!r}; event times must be {limit}: raise rate or lower "
                "events or base_time")
        if not math.isfinite(earliest):
            raise ConfigurationError(
                f"Nexmark: the earliest event time base_time - out_of_orderness - late_by is "
                f"{earliest} with base_time={self.base_time!r}, "
                f"out_of_orderness={self.out_of_orderness!r}, late_by={self.late_by!r} "
                f"(late_fraction={self.late_fraction!r}); event times must be {limit}: "
                "lower out_of_orderness or late_by, or raise base_time")
        if not math.isfinite(expires):
            raise ConfigurationError(
                f"Nexmark: the latest auction expiry, the last event's time + 0.001 + "
                f"2 * in_flight_auctions * 50 / 3 / rate, is {expires} with "
                f"in_flight_auctions={self.in_flight_auctions!r}, rate={self.rate!r}, "
                f"events={self.events!r}, base_time={self.base_time!r}; expiries must be "
                f"{limit}: lower in_flight_auctions or raise rate")


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


class Generator:
    """Events by number: ``event(n)`` for any ``n``; ``events(start, stop, step)``.

    The random choices of event ``n`` are the 32 bytes at ``n % BLOCK`` of its block's
    random bytes (:func:`_block`), so no state carries from one event to the next and any
    event can be made without the ones before it."""

    def __init__(self, config: NexmarkConfig) -> None:
        config.validate()
        self.c = config
        # event time one auction stays open, on average (so about in_flight_auctions are)
        self._auction_span = (config.in_flight_auctions * TOTAL_PROPORTION /
                              AUCTION_PROPORTION) / config.rate
        self._urls = [[f"https://www.nexmark.com/{ch.lower()}/item.htm?query={q}"
                       for q in range(64)] for ch in CHANNELS]
        # channel and URL of a bid by its byte: channel = byte & 3, query = byte >> 2
        self._chan = [CHANNELS[cb & 3] for cb in range(256)]
        self._url = [self._urls[cb & 3][cb >> 2] for cb in range(256)]
        self._cache: tuple[int, bytes] = (-1, b"")
        # (block, phase, step) -> the fields of that block's events phase, phase + step, ..
        self._fields: tuple[tuple[int, int, int], list[tuple[int, ...]]] = ((-1, 0, 1), [])
        # tables for the in-order path's people and auctions (the same strings as
        # _person / _auction make)
        self._names = [(f"{f} {last}", f.lower()) for f in FIRST_NAMES for last in LAST_NAMES]
        self._card4 = [f"{i:04d}" for i in range(10000)]
        self._descriptions = [f"description-{i}" for i in range(32)]
        self._seller_not_hot_below = _not_hot_below(config.hot_seller_ratio)

    def nominal_time(self, n: int) -> float:
        return self.c.base_time + n / self.c.rate

    def event(self, n: int) -> dict[str, Any]:
        return self.events(n, n + 1)[0]

    def events(self, start: int, stop: int, step: int = 1) -> list[dict[str, Any]]:
        """Events ``start, start + step, ... < stop`` (equal to :meth:`events_reference`).

        Faster: the ids a bid can draw from are the same for the 50 events of an epoch, so
        they are worked out once per epoch; channel and URL come from one table indexed by
        their byte; a block's bytes are fetched once per 1,024 events."""
        if step < 1:
            return self.events_reference(start, stop, step)
        if not self.c.out_of_orderness and not self.c.late_fraction:
            return self._events_in_order(start, stop, step)
        c = self.c
        seed, rate, base = c.seed, c.rate, c.base_time
        disorder, late_p, late_by = c.out_of_orderness, c.late_fraction, c.late_by
        # the 64-bit draws below these are the non-hot ones (see _not_hot_below)
        a_cold, b_cold = _not_hot_below(c.hot_auction_ratio), _not_hot_below(c.hot_bidder_ratio)
        u64 = _U64.unpack_from
        active, inflight = c.active_people, c.in_flight_auctions
        chan, url = self._chan, self._url
        cur, buf = self._cache
        out: list[dict[str, Any]] = []
        ap = out.append
        first_bid = PERSON_PROPORTION + AUCTION_PROPORTION
        n = start
        while n < stop:
            epoch = n // TOTAL_PROPORTION
            e0 = epoch * TOTAL_PROPORTION
            end = min(stop, e0 + TOTAL_PROPORTION)  # this epoch's events
            bids_from, auctions_from = e0 + first_bid, e0 + PERSON_PROPORTION
            # what a bid of this epoch may draw: ids are +FIRST_*_ID already
            newest_a = epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
            hot_a = (newest_a // HOT_ID_STEP) * HOT_ID_STEP + FIRST_AUCTION_ID
            oldest = newest_a - inflight if newest_a > inflight else 0
            a_lo, a_mod = oldest + FIRST_AUCTION_ID, newest_a - oldest + 1 + AUCTION_ID_LEAD
            people = epoch * PERSON_PROPORTION + PERSON_PROPORTION
            hot_b = ((people - 1) // HOT_ID_STEP) * HOT_ID_STEP + 1 + FIRST_PERSON_ID
            act = people if people < active else active
            b_lo, b_mod = people - act + FIRST_PERSON_ID, act + PERSON_ID_LEAD
            for m in range(n, end, step):
                blk = m // BLOCK
                if blk != cur:
                    cur, buf = blk, _block(seed, blk)
                o = (m - blk * BLOCK) * _BYTES
                ts = base + m / rate
                if disorder:
                    ts -= (buf[o + 11] << 8 | buf[o + 12]) * (1.0 / 65536) * disorder
                if late_p and (buf[o + 13] << 8 | buf[o + 14]) * (1.0 / 65536) < late_p:
                    ts = base + m / rate - disorder - late_by
                if m >= bids_from:
                    cb = buf[o + 6]
                    ap({"kind": "bid",
                        "auction": a_lo + (buf[o + 1] << 8 | buf[o + 2]) % a_mod
                        if u64(buf, o + _HOT_DRAW)[0] < a_cold else hot_a,
                        "bidder": b_lo + (buf[o + 4] << 8 | buf[o + 5]) % b_mod
                        if u64(buf, o + _HOT_DRAW2)[0] < b_cold else hot_b,
                        "price": round(10.0 ** ((buf[o + 8] << 16 | buf[o + 9] << 8
                                                 | buf[o + 10]) * (6.0 / 16777216)) * 100.0),
                        "channel": chan[cb], "url": url[cb], "date_time": ts, "extra": ""})
                elif m >= auctions_from:
                    ap(self._auction(m, buf, o, ts))
                else:
                    ap(self._person(m, buf, o, ts))
            n += -((n - end) // step) * step  # the first event number >= end
        self._cache = (cur, buf)
        return out

    def _events_in_order(self, start: int, stop: int, step: int) -> list[dict[str, Any]]:
        """:meth:`events` without disorder or late events (W5's case), cheaper still: a
        block's bytes are unpacked into each event's fields by one ``struct`` call, and
        the bids of one epoch within one block are made by one list comprehension."""
        c = self.c
        seed, rate, base = c.seed, c.rate, c.base_time
        # the 64-bit draws below these are the non-hot ones (see _not_hot_below)
        a_cold, b_cold = _not_hot_below(c.hot_auction_ratio), _not_hot_below(c.hot_bidder_ratio)
        active, inflight = c.active_people, c.in_flight_auctions
        chan, url = self._chan, self._url
        cur, buf = self._cache
        fcur, fields = self._fields
        out: list[dict[str, Any]] = []
        ap, extend = out.append, out.extend
        first_bid = PERSON_PROPORTION + AUCTION_PROPORTION
        p6 = 6.0 / 16777216
        n = start
        while n < stop:
            epoch = n // TOTAL_PROPORTION
            e0 = epoch * TOTAL_PROPORTION
            end = min(stop, e0 + TOTAL_PROPORTION)  # this epoch's events
            bids_from = e0 + first_bid
            # the people and auctions of this epoch first
            while n < end and n < bids_from:
                blk = n // BLOCK
                if blk != cur:
                    cur, buf = blk, _block(seed, blk)
                o = (n - blk * BLOCK) * _BYTES
                ts = base + n / rate
                if n >= e0 + PERSON_PROPORTION:
                    ap(self._auction_in_order(n - e0, epoch, buf, o, ts))
                else:
                    ap(self._person_in_order(epoch, buf, o, ts))
                n += step
            if n < end:  # then its bids, block by block
                newest_a = epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
                hot_a = (newest_a // HOT_ID_STEP) * HOT_ID_STEP + FIRST_AUCTION_ID
                oldest = newest_a - inflight if newest_a > inflight else 0
                a_lo = oldest + FIRST_AUCTION_ID
                a_mod = newest_a - oldest + 1 + AUCTION_ID_LEAD
                people = epoch * PERSON_PROPORTION + PERSON_PROPORTION
                hot_b = ((people - 1) // HOT_ID_STEP) * HOT_ID_STEP + 1 + FIRST_PERSON_ID
                act = people if people < active else active
                b_lo, b_mod = people - act + FIRST_PERSON_ID, act + PERSON_ID_LEAD
                while n < end:
                    blk = n // BLOCK
                    b0 = blk * BLOCK
                    phase = (n - b0) % step
                    if fcur != (blk, phase, step):
                        if blk != cur:
                            cur, buf = blk, _block(seed, blk)
                        fcur, fields = (blk, phase, step), _bid_fields(buf, phase, step)
                    seg_end = min(end, b0 + BLOCK)
                    j = (n - b0) // step  # fields[j] is event n's
                    extend([{"kind": "bid",
                             "auction": a_lo + f[0] % a_mod if f[5] < a_cold else hot_a,
                             "bidder": b_lo + f[1] % b_mod if f[6] < b_cold else hot_b,
                             "price": round(10.0 ** ((f[3] << 16 | f[4]) * p6) * 100.0),
                             "channel": chan[f[2]], "url": url[f[2]],
                             "date_time": base + m / rate, "extra": ""}
                            for m, f in zip(range(n, seg_end, step),
                                            fields[j:j + len(range(n, seg_end, step))],
                                            strict=True)])
                    n += -((n - seg_end) // step) * step  # the first number >= seg_end
            n += -((n - end) // step) * step  # the first event number >= end
        self._cache = (cur, buf)
        self._fields = (fcur, fields)
        return out

    def _person_in_order(self, epoch: int, b: bytes, o: int, ts: float) -> dict[str, Any]:
        """:meth:`_person` of the epoch's person (its ids worked out from ``epoch``,
        strings from tables)."""
        pid = epoch + FIRST_PERSON_ID  # last_person(n) is the epoch for a person event
        name, lower = self._names[b[o] % len(FIRST_NAMES) * len(LAST_NAMES)
                                         + b[o + 1] % len(LAST_NAMES)]
        c4 = self._card4
        return {
            "kind": "person", "id": pid, "name": name,
            "email_address": f"{lower}{pid}@example.com",
            "credit_card": f"{c4[(b[o + 2] << 8 | b[o + 3]) % 10000]} "
                           f"{c4[(b[o + 4] << 8 | b[o + 5]) % 10000]} "
                           f"{c4[(b[o + 6] << 8 | b[o + 7]) % 10000]} "
                           f"{c4[(b[o + 8] << 8 | b[o + 9]) % 10000]}",
            "city": US_CITIES[b[o + 10] % len(US_CITIES)],
            "state": US_STATES[b[o + 15] % len(US_STATES)],
            "date_time": ts, "extra": "",
        }

    def _auction_in_order(self, off: int, epoch: int, b: bytes, o: int, ts: float
                          ) -> dict[str, Any]:
        """:meth:`_auction` of the epoch's auction at offset ``off`` (1..3)."""
        c = self.c
        # last_auction(n) and last_person(n) of an auction event
        aid = epoch * AUCTION_PROPORTION + off - PERSON_PROPORTION + FIRST_AUCTION_ID
        if _U64.unpack_from(b, o + _HOT_DRAW)[0] >= self._seller_not_hot_below:
            seller = (epoch // HOT_ID_STEP) * HOT_ID_STEP
        else:
            people = epoch + 1
            active = people if people < c.active_people else c.active_people
            seller = people - active + (b[o + 1] << 8 | b[o + 2]) % (active + PERSON_ID_LEAD)
        p6 = 6.0 / 16777216
        initial = round(10.0 ** ((b[o + 3] << 16 | b[o + 4] << 8 | b[o + 5]) * p6) * 100.0)
        reserve = initial + round(10.0 ** ((b[o + 6] << 16 | b[o + 7] << 8 | b[o + 8]) * p6)
                                  * 100.0)
        length = (b[o + 9] << 8 | b[o + 10]) * (1.0 / 65536)
        b15 = b[o + 15]
        return {
            "kind": "auction", "id": aid, "item_name": f"item-{b[o + 10] << 8 | b[o + 9]}",
            "description": self._descriptions[b15 >> 3], "initial_bid": initial,
            "reserve": reserve, "date_time": ts,
            "expires": ts + 0.001 + length * 2.0 * self._auction_span,
            "seller": seller + FIRST_PERSON_ID,
            "category": FIRST_CATEGORY_ID + b15 % NUM_CATEGORIES, "extra": "",
        }

    def events_reference(self, start: int, stop: int, step: int = 1) -> list[dict[str, Any]]:
        """The same as :meth:`events`, one event at a time in the plainest form: the
        definition the faster :meth:`events` must equal (the tests compare them). A bid's
        bytes: 1-2 auction, 4-5 bidder, 6 channel and URL, 8-10 price, 11-12 timestamp
        jitter, 13-14 lateness draw, 16-23 hot-auction draw, 24-31 hot-bidder draw (a hot
        draw is ``nextInt(ratio) > 0``, ``nextInt`` a multiply-shift of 64 random bits)."""
        c = self.c
        seed, rate, base = c.seed, c.rate, c.base_time
        disorder, late_p, late_by = c.out_of_orderness, c.late_fraction, c.late_by
        har, hbr = c.hot_auction_ratio, c.hot_bidder_ratio
        active, inflight = c.active_people, c.in_flight_auctions
        urls = self._urls
        cur, buf = self._cache
        out: list[dict[str, Any]] = []
        ap = out.append
        for n in range(start, stop, step):
            blk, i = divmod(n, BLOCK)
            if blk != cur:
                cur, buf = blk, _block(seed, blk)
            o = i * _BYTES
            ts = base + n / rate
            if disorder:
                ts -= (buf[o + 11] << 8 | buf[o + 12]) * (1.0 / 65536) * disorder
            if late_p and (buf[o + 13] << 8 | buf[o + 14]) * (1.0 / 65536) < late_p:
                ts = base + n / rate - disorder - late_by
            epoch, off = divmod(n, TOTAL_PROPORTION)
            if off >= PERSON_PROPORTION + AUCTION_PROPORTION:  # a bid
                newest_a = epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
                if _next_int(buf, o + _HOT_DRAW, har) > 0:
                    auction = (newest_a // HOT_ID_STEP) * HOT_ID_STEP
                else:
                    oldest = newest_a - inflight if newest_a > inflight else 0
                    auction = oldest + (buf[o + 1] << 8 | buf[o + 2]) % (
                        newest_a - oldest + 1 + AUCTION_ID_LEAD)
                people = epoch * PERSON_PROPORTION + PERSON_PROPORTION  # newest + 1
                if _next_int(buf, o + _HOT_DRAW2, hbr) > 0:
                    bidder = ((people - 1) // HOT_ID_STEP) * HOT_ID_STEP + 1
                else:
                    act = people if people < active else active
                    bidder = people - act + (buf[o + 4] << 8 | buf[o + 5]) % (
                        act + PERSON_ID_LEAD)
                cb = buf[o + 6]
                ch = cb & 3
                u = (buf[o + 8] << 16 | buf[o + 9] << 8 | buf[o + 10]) * (6.0 / 16777216)
                ap({"kind": "bid", "auction": auction + FIRST_AUCTION_ID,
                    "bidder": bidder + FIRST_PERSON_ID,
                    "price": round(10.0 ** u * 100.0),
                    "channel": CHANNELS[ch], "url": urls[ch][cb >> 2],
                    "date_time": ts, "extra": ""})
            elif off >= PERSON_PROPORTION:
                ap(self._auction(n, buf, o, ts))
            else:
                ap(self._person(n, buf, o, ts))
        self._cache = (cur, buf)
        return out

    # --- people and auctions (8 % of the events) ------------------------------------------
    def _random_person(self, n: int, r: int) -> int:
        people = last_person(n) + 1
        active = min(people, self.c.active_people)
        return people - active + r % (active + PERSON_ID_LEAD)

    @staticmethod
    def _price(b: bytes, o: int) -> int:
        return round(10.0 ** ((b[o] << 16 | b[o + 1] << 8 | b[o + 2]) * (6.0 / 16777216))
                     * 100.0)

    def _person(self, n: int, b: bytes, o: int, ts: float) -> dict[str, Any]:
        """Bytes: 0 first name, 1 last name, 2-9 credit card, 10 city, 15 state (11-14 are
        the timestamp's, as for every kind)."""
        pid = last_person(n) + FIRST_PERSON_ID
        first = FIRST_NAMES[b[o] % len(FIRST_NAMES)]
        name = f"{first} {LAST_NAMES[b[o + 1] % len(LAST_NAMES)]}"
        card = " ".join(f"{(b[o + k] << 8 | b[o + k + 1]) % 10000:04d}" for k in (2, 4, 6, 8))
        return {
            "kind": "person", "id": pid, "name": name,
            "email_address": f"{first.lower()}{pid}@example.com", "credit_card": card,
            "city": US_CITIES[b[o + 10] % len(US_CITIES)],
            "state": US_STATES[b[o + 15] % len(US_STATES)],
            "date_time": ts, "extra": "",
        }

    def _auction(self, n: int, b: bytes, o: int, ts: float) -> dict[str, Any]:
        """Bytes: 1-2 seller, 3-5 initial bid, 6-8 reserve above it, 9-10 item and length,
        15 category and description, 16-23 hot-seller draw."""
        c = self.c
        aid = last_auction(n) + FIRST_AUCTION_ID
        if _next_int(b, o + _HOT_DRAW, c.hot_seller_ratio) > 0:
            seller = (last_person(n) // HOT_ID_STEP) * HOT_ID_STEP
        else:
            seller = self._random_person(n, b[o + 1] << 8 | b[o + 2])
        initial = self._price(b, o + 3)
        length = (b[o + 9] << 8 | b[o + 10]) * (1.0 / 65536)
        return {
            "kind": "auction", "id": aid, "item_name": f"item-{b[o + 10] << 8 | b[o + 9]}",
            "description": f"description-{b[o + 15] >> 3}", "initial_bid": initial,
            "reserve": initial + self._price(b, o + 6), "date_time": ts,
            "expires": ts + 0.001 + length * 2.0 * self._auction_span,
            "seller": seller + FIRST_PERSON_ID,
            "category": FIRST_CATEGORY_ID + b[o + 15] % NUM_CATEGORIES, "extra": "",
        }
