"""Timers of the RocksDB backend, stored in RocksDB (millions of keys with a timer each fit).

Layout. A timer is one entry with an empty value under its key group's prefix, with a
reserved name header per time domain::

    kg(2) | 0x01 0xFE or 0x01 0xFF | time(8) | len(key)(4) | pickle(key)

(0xFE: processing time, 0xFF: event time). The header is a one-byte "name" that no state
name can have (0xFE and 0xFF never occur in UTF-8), and the time is a float64 encoded so
that byte order is numeric order. So timers
are in the RocksDB checkpoint like all other state (incremental: only new SST files are
uploaded), and key-group range deletes and copies move them on a rescale unchanged. Within
one key group, a seek to ``kg | header`` finds the earliest timer.

Writes go through the store's write layers like every other write (``b""`` = registered,
None = deleted), so the writer thread's checkpoint holds exactly the timers at the barrier.
Each layer also indexes the timers it *added*, per key group, so a read can merge layers
with RocksDB without scanning whole layers.

Time order across key groups. Per key group the domain keeps a **cache**: a sorted list of
the group's earliest live timers (a prefix of all of them, in byte order), marked
*complete* when it holds every timer of the group. A heap holds each cached group's first
timer (stale entries are dropped lazily). Registering a timer below the cache's last entry
(or into a complete cache) inserts it; deleting removes it; when a group's cache runs empty
and is not complete, the group is *unknown* and the next peek refills it: up to ``limit``
live entries read from RocksDB (seeking from a lower bound of its timers, which skips the
deletions of timers already fired), merged with the timers the layers added. A group with
no timers costs nothing; one with many costs at most ``2 * limit`` cached entries, where
``limit`` is ``CACHE`` but smaller when the subtask owns many key groups (at most about
``CACHE_TOTAL`` entries are read when all groups are refilled after a restore).

Register and delete need to know whether the timer exists (at most one timer per time and
key, and the per-key-group counts that the snapshot head carries). The answer comes from
memory when it can: the current layer, including the timers it found to exist (a window
operator registers the same timer for every record of a window), a complete cache, or a
cache whose range covers the time; otherwise a point read (RocksDB's bloom filters make a
read of a missing key cheap).
"""

from __future__ import annotations

import heapq
import pickle
import struct
from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onceflow.state.rocksdb import RocksDBStore

PROC_HDR = b"\x01\xfe"
EVENT_HDR = b"\x01\xff"
CACHE = 128  # timers read per refill of one key group; a cache holds at most twice this
CACHE_TOTAL = 32768  # ... but at most about this many over all key groups of the subtask
POP_FLUSH = 10_000  # pops between checks whether the write layer is full
_MISSING = object()
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def encode_time(when: float) -> bytes:
    """A float as 8 bytes whose byte order is the numeric order (-0.0 is 0.0)."""
    (u,) = struct.unpack(">Q", struct.pack(">d", float(when) + 0.0))
    return struct.pack(">Q", u ^ _ALL if u & _SIGN else u | _SIGN)


def decode_time(b: bytes) -> float:
    (u,) = struct.unpack(">Q", b[:8])
    u = u ^ _SIGN if u & _SIGN else u ^ _ALL
    return float(struct.unpack(">d", struct.pack(">Q", u))[0])


def is_timer_key(k: bytes) -> bool:
    return k[2:4] in (PROC_HDR, EVENT_HDR)


def split_timer_key(k: bytes) -> tuple[bytes, float, Any]:
    """A stored timer key -> (header, time, key)."""
    return k[2:4], decode_time(k[4:12]), pickle.loads(k[16:])  # storage is trusted


def timer_key(kg: int, hdr: bytes, when: float, key: Any) -> bytes:
    kb = pickle.dumps(key, protocol=5)
    return kg.to_bytes(2, "big") + hdr + encode_time(when) + len(kb).to_bytes(4, "big") + kb


class _Group:
    __slots__ = ("cache", "complete")

    def __init__(self, cache: list[bytes], complete: bool) -> None:
        self.cache = cache  # sorted suffixes (time(8) | len(key) | key): the earliest timers
        self.complete = complete  # the cache holds every timer of the group


class RocksTimers:
    """The timers of one time domain of a :class:`RocksDBStore`."""

    def __init__(self, store: RocksDBStore, hdr: bytes) -> None:
        self.store = store
        self.hdr = hdr
        self.counts: dict[int, int] = {}  # key group -> live timers
        self.groups: dict[int, _Group] = {}  # key groups with a cache
        # key groups whose earliest timers are not known: kg -> a lower bound of their
        # timers (suffix; b"" = the start). Groups in neither dict have no timers.
        self.unknown: dict[int, bytes] = {}
        self.heap: list[tuple[bytes, int]] = []  # (first cached suffix, kg), lazily cleaned
        self._last: tuple[float, bytes] = (0.0, encode_time(0.0))  # the last time encoded
        lo, hi = store.kg_range
        self._groups_owned = max(1, hi - lo)

    def _limit(self) -> int:
        return max(2, min(CACHE, CACHE_TOTAL // self._groups_owned))

    def _time(self, when: float) -> bytes:
        """``encode_time``, remembering the last time (a window operator registers the same
        window end for every record of a window)."""
        last = self._last
        if when == last[0]:
            return last[1]
        b = encode_time(when)
        self._last = (when, b)
        return b

    # --- the operations ------------------------------------------------------------------
    def register(self, when: float) -> None:
        store = self.store
        kgb, kb = store._key_prefix()
        suffix = self._time(when) + kb
        full = kgb + self.hdr + suffix
        cur = store.cur
        v = cur.data.get(full, _MISSING)
        if v is not None:
            if v is not _MISSING or full in cur.timer_seen:
                return  # registered, or seen, since the layer was frozen
            kg = int.from_bytes(kgb, "big")
            if self._exists(kg, suffix, full):
                cur.timer_seen.add(full)
                return
        else:
            kg = int.from_bytes(kgb, "big")
        cur.data[full] = b""
        cur.timer_adds.setdefault(kgb + self.hdr, set()).add(full)
        self.counts[kg] = self.counts.get(kg, 0) + 1
        g = self.groups.get(kg)
        if g is None:
            floor = self.unknown.get(kg)
            if floor is None:
                self.groups[kg] = _Group([suffix], True)  # the group's first timer
                self._push(suffix, kg)
            elif suffix < floor:
                self.unknown[kg] = suffix
            return
        cache = g.cache
        if g.complete or suffix < cache[-1]:
            insort(cache, suffix)
            if cache[0] == suffix:
                self._push(suffix, kg)
            limit = self._limit()
            if len(cache) > 2 * limit:
                del cache[limit:]
                g.complete = False

    def delete(self, when: float) -> None:
        store = self.store
        kgb, kb = store._key_prefix()
        suffix = self._time(when) + kb
        full = kgb + self.hdr + suffix
        kg = int.from_bytes(kgb, "big")
        if not self._exists(kg, suffix, full):
            return
        self._remove(kg, kgb, full)
        g = self.groups.get(kg)
        if g is not None:
            cache = g.cache
            i = bisect_left(cache, suffix)
            if i < len(cache) and cache[i] == suffix:
                del cache[i]
                self._shrunk(kg, g, suffix, i == 0)

    def peek(self) -> float | None:
        if self.unknown:
            self._refill_unknown()
        heap, groups = self.heap, self.groups
        while heap:
            s, kg = heap[0]
            g = groups.get(kg)
            if g is not None and g.cache[0] == s:
                return decode_time(s)
            heapq.heappop(heap)
        return None

    def pop_due(self, upto: float) -> list[tuple[float, Any]]:
        if self.unknown:
            self._refill_unknown()
        limit = encode_time(upto)
        heap, groups, hdr = self.heap, self.groups, self.hdr
        due: list[tuple[float, Any]] = []
        while heap:
            s, kg = heap[0]
            g = groups.get(kg)
            if g is None or g.cache[0] != s:
                heapq.heappop(heap)
                continue
            if s[:8] > limit:
                break
            heapq.heappop(heap)
            kgb = kg.to_bytes(2, "big")
            self._remove(kg, kgb, kgb + hdr + s)
            del g.cache[0]
            due.append((decode_time(s), pickle.loads(s[12:])))  # storage is trusted
            self._shrunk(kg, g, s, True)
            if kg in self.unknown:
                self._refill(kg)
            if len(due) % POP_FLUSH == 0:  # many due at once: hand full layers to the writer
                self.store.after_batch()
        return due

    def count(self) -> int:
        return sum(self.counts.values())

    # --- internals -----------------------------------------------------------------------
    def _exists(self, kg: int, suffix: bytes, full: bytes) -> bool:
        g = self.groups.get(kg)
        if g is not None and (g.complete or suffix <= g.cache[-1]):
            i = bisect_left(g.cache, suffix)
            return i < len(g.cache) and g.cache[i] == suffix
        if g is None and kg not in self.unknown:
            return False  # the group has no timers
        return self.store.get(full) is not None

    def _remove(self, kg: int, kgb: bytes, full: bytes) -> None:
        cur = self.store.cur
        cur.data[full] = None
        cur.timer_seen.discard(full)
        adds = cur.timer_adds.get(kgb + self.hdr)
        if adds is not None:
            adds.discard(full)
        n = self.counts[kg] - 1
        if n:
            self.counts[kg] = n
        else:
            del self.counts[kg]

    def _shrunk(self, kg: int, g: _Group, removed: bytes, was_first: bool) -> None:
        """After ``removed`` left the group's cache: an empty cache that was not complete
        makes the group unknown; every remaining timer of the group is above ``removed``
        (the cache is the group's earliest timers), so a refill seeks from there."""
        if g.cache:
            if was_first:
                self._push(g.cache[0], kg)
            return
        del self.groups[kg]
        if not g.complete:
            self.unknown[kg] = removed

    def _push(self, suffix: bytes, kg: int) -> None:
        heap = self.heap
        heapq.heappush(heap, (suffix, kg))
        if len(heap) > 2 * len(self.groups) + 64:  # too many stale entries: rebuild
            heap[:] = [(g.cache[0], k) for k, g in self.groups.items()]
            heapq.heapify(heap)

    def _refill_unknown(self) -> None:
        for kg in sorted(self.unknown):
            self._refill(kg)

    def _refill(self, kg: int) -> None:
        """Read the earliest ``limit`` live timers of one key group: RocksDB from the
        group's lower bound, merged with what the layers (newest first) added or deleted."""
        store = self.store
        floor = self.unknown.pop(kg)
        base = kg.to_bytes(2, "big") + self.hdr
        n = len(base)
        limit = self._limit()
        layers = [store.cur, *reversed(store.frozen)]

        def newest(full: bytes) -> Any:
            for ly in layers:
                v = ly.data.get(full, _MISSING)
                if v is not _MISSING:
                    return v
            return _MISSING

        found: set[bytes] = set()
        for i, ly in enumerate(layers):
            for full in ly.timer_adds.get(base, ()):
                if full not in found and (i == 0 or newest(full) is not None):
                    found.add(full)
        it = store.db.iter()
        it.seek(base + floor)
        from_db: list[bytes] = []
        exhausted = True
        while it.valid():
            k = it.key()
            if not k.startswith(base):
                break
            if len(from_db) == limit:
                exhausted = False
                break
            if newest(k) is not None:
                from_db.append(k)
            it.next()
        merged = sorted(found.union(from_db))
        if not exhausted:  # beyond the last entry read from RocksDB, more may follow
            cut = bisect_left(merged, from_db[-1]) + 1
            del merged[cut:]
        complete = exhausted
        if len(merged) > 2 * limit:
            del merged[limit:]
            complete = False
        if merged:
            g = _Group([m[n:] for m in merged], complete)
            self.groups[kg] = g
            self._push(g.cache[0], kg)
        elif not complete:  # cannot happen: an unexhausted read found entries
            self.unknown[kg] = floor

    # --- snapshot / restore --------------------------------------------------------------
    def reset(self) -> None:
        """After a restore: every key group with timers is unknown."""
        self.groups.clear()
        self.heap.clear()
        self.unknown = dict.fromkeys(self.counts, b"")
