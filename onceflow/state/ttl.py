"""State time-to-live: keyed state whose entries expire ``ttl`` seconds after they were
written (``ctx.value_state("x", ttl=60.0)``, also ``list_state`` and ``map_state``).

* **Time**: processing time by default (the wall clock, ``time.time()``); with
  ``of.StateTtl(seconds, time_domain=of.TimeDomain.EVENT_TIME)`` the operator's current
  watermark instead, which makes expiry deterministic across failures and replays.
* **What expires**: a value state's value, each element of a list state, each entry of a
  map state, ``ttl`` seconds after it was written (``update_on_read=True``: after it was
  last read or written).
* **Invisible on read**: an expired entry reads as absent (the default, not in the list
  or map) from the moment it expires, whether or not it was cleaned up yet.
* **Cleaned up**: every write remembers when its entry expires; each access to any TTL
  state of the operator in the same time domain first removes the entries whose time has
  come by that domain's clock (so expired state does not pile up while the operator
  runs; each domain has its own queue), and after a restore the first access scans
  the restored state once and removes what expired meanwhile. A checkpoint therefore
  holds no entry that expired before the last access to TTL state; restore drops every
  entry that expired before it.

This is a wrapper over any backend's state handles (memory or RocksDB): the stored value
is ``(expires_at, value)``. So a state keeps its TTL setting across restores: turning TTL
on or off for an existing state needs a new state name.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from onceflow.api.functions import TimeDomain
from onceflow.errors import ConfigurationError


@dataclass(frozen=True)
class StateTtl:
    """Time-to-live of a keyed state: ``seconds`` after the last write (and, with
    ``update_on_read``, read) in ``time_domain`` (processing time by default)."""

    seconds: float
    time_domain: TimeDomain = TimeDomain.PROCESSING_TIME
    update_on_read: bool = False

    def __post_init__(self) -> None:
        self.validate("of.StateTtl")  # a bad value is refused where it is written

    def validate(self, where: str) -> None:
        _check_seconds(self.seconds, where)
        if not isinstance(self.time_domain, TimeDomain):
            raise ConfigurationError(
                f"{where}: StateTtl time_domain must be an of.TimeDomain, got "
                f"{self.time_domain!r}")
        if not isinstance(self.update_on_read, bool):
            raise ConfigurationError(
                f"{where}: StateTtl update_on_read must be True or False, got "
                f"{self.update_on_read!r}")


def _check_seconds(s: Any, where: str) -> None:
    if isinstance(s, bool) or not isinstance(s, int | float) or not s > 0 or math.isinf(s):
        raise ConfigurationError(f"{where}: ttl must be a number of seconds > 0, got {s!r}")


def as_ttl(ttl: Any, where: str) -> StateTtl:
    if isinstance(ttl, StateTtl):
        return ttl  # checked when it was made (frozen)
    _check_seconds(ttl, where)  # said of the state, before StateTtl says it of itself
    return StateTtl(ttl)


_MISSING = object()


class TtlCleaner:
    """The expiry queue of one keyed store's TTL states: one live entry
    ``(expires_at, seq, state, key)`` per state and key, at the earliest expiry noted for
    it, so it is about as large as the live state, however often a key is written. Entries
    are hints: cleaning re-reads the stored expiries, and a key whose entries were written
    again since is queued again at its next expiry. A note earlier than the key's queued
    one (an event-time write of an out-of-order record, or a list or map whose entries
    expire at different times) queues it again at the earlier time; the later entry is
    then stale and skipped when it comes up."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.heap: list[tuple[float, int, _TtlBase, Any]] = []
        #: (state, key) -> (expiry, seq) of its live heap entry
        self.pending: dict[tuple[int, type, Any], tuple[float, int]] = {}
        self.seq = 0
        self.cleaned = 0  # entries removed (for tests and metrics)
        self._cleaning = False

    def note(self, state: _TtlBase, key: Any, expires: float) -> None:
        # with the key's type: RocksDB keeps 1, 1.0 and True apart, so must the queue
        marker = (id(state), type(key), key)
        queued = self.pending.get(marker)
        if queued is not None and queued[0] <= expires:
            return  # already queued at an earlier (or equal) time: checked then
        self.seq += 1
        self.pending[marker] = (expires, self.seq)
        heapq.heappush(self.heap, (expires, self.seq, state, key))

    def run(self, now: float) -> None:
        heap = self.heap
        if not heap or heap[0][0] > now or self._cleaning:
            return
        self._cleaning = True
        scope = self.store.scope
        saved = scope.key
        try:
            while heap and heap[0][0] <= now:
                _, seq, state, key = heapq.heappop(heap)
                marker = (id(state), type(key), key)
                queued = self.pending.get(marker)
                if queued is None or queued[1] != seq:
                    continue  # stale: the key was queued again at an earlier time
                del self.pending[marker]
                scope.key = key
                self.cleaned += state._purge(now)
                nxt = state._earliest()
                if nxt is not None:
                    self.note(state, key, nxt)
        finally:
            scope.key = saved
            self._cleaning = False


class _TtlBase:
    kind = ""

    def __init__(self, store: Any, name: str, inner: Any, ttl: StateTtl,
                 clock: Callable[[], float], cleaner: TtlCleaner) -> None:
        self._store, self._name, self._inner = store, name, inner
        self._ttl = float(ttl.seconds)
        self._on_read = ttl.update_on_read
        self._clock = clock
        self._cleaner = cleaner
        self._scanned = False
        self._write_clock: Callable[[], float] | None = None  # event time: see ttl_state

    def _now(self) -> float:
        if not self._scanned:
            self._scanned = True
            self._scan()
        now = self._clock()
        self._cleaner.run(now)
        return now

    def _expiry(self, now: float) -> float:
        w = self._write_clock
        exp = (now if w is None else w()) + self._ttl
        if exp == -math.inf:
            exp = math.inf  # event time before any watermark or timestamp: not expiring
        self._cleaner.note(self, self._store.scope.key, exp)
        return exp

    def _purge(self, now: float) -> int:
        """Remove the current key's expired entries; returns how many."""
        raise NotImplementedError

    def _scan(self) -> None:
        """Once, at the first access (after any restore): every key of this state gets a
        cleaning hint, and what already expired is removed."""
        scope = self._store.scope
        saved = scope.key
        now = self._clock()
        try:
            for key in _keys_of(self._store, self._name):
                scope.key = key
                self._cleaner.cleaned += self._purge(now)
                exp = self._earliest()
                if exp is not None:
                    self._cleaner.note(self, key, exp)
        finally:
            scope.key = saved

    def _earliest(self) -> float | None:
        raise NotImplementedError


class TtlValueState(_TtlBase):
    kind = "value"

    def __init__(self, store: Any, name: str, default: Any, ttl: StateTtl,
                 clock: Callable[[], float], cleaner: TtlCleaner) -> None:
        super().__init__(store, name, store.value_state(name, None), ttl, clock, cleaner)
        self._default = default

    def value(self) -> Any:
        now = self._now()
        raw = self._inner.value()
        if raw is None:
            return self._default
        exp, v = raw
        if exp <= now:
            self._inner.clear()
            return self._default
        if self._on_read:
            self._inner.update((self._expiry(now), v))
        return v

    def update(self, value: Any) -> None:
        now = self._now()
        self._inner.update((self._expiry(now), value))

    def clear(self) -> None:
        self._inner.clear()

    def _purge(self, now: float) -> int:
        raw = self._inner.value()
        if raw is not None and raw[0] <= now:
            self._inner.clear()
            return 1
        return 0

    def _earliest(self) -> float | None:
        raw = self._inner.value()
        return None if raw is None else float(raw[0])


class TtlListState(_TtlBase):
    kind = "list"

    def __init__(self, store: Any, name: str, ttl: StateTtl, clock: Callable[[], float],
                 cleaner: TtlCleaner) -> None:
        super().__init__(store, name, store.list_state(name), ttl, clock, cleaner)

    def get(self) -> list[Any]:
        now = self._now()
        raw = self._inner.get()
        live = [e for e in raw if e[0] > now]
        if len(live) != len(raw):
            self._write(live)
        if self._on_read and live:
            exp = self._expiry(now)
            live = [(exp, v) for _, v in live]
            self._inner.update(live)
        return [v for _, v in live]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.get())

    def _write(self, entries: list[tuple[float, Any]]) -> None:
        if entries:
            self._inner.update(entries)
        else:
            self._inner.clear()

    def add(self, value: Any) -> None:
        now = self._now()
        self._inner.add((self._expiry(now), value))

    def add_all(self, values: Iterable[Any]) -> None:
        now = self._now()
        vals = list(values)
        if vals:
            exp = self._expiry(now)
            self._inner.add_all([(exp, v) for v in vals])

    def update(self, values: Iterable[Any]) -> None:
        now = self._now()
        vals = list(values)
        if not vals:
            self._inner.clear()
            return
        exp = self._expiry(now)
        self._inner.update([(exp, v) for v in vals])

    def clear(self) -> None:
        self._inner.clear()

    def _purge(self, now: float) -> int:
        raw = self._inner.get()
        live = [e for e in raw if e[0] > now]
        if len(live) != len(raw):
            self._write(live)
        return len(raw) - len(live)

    def _earliest(self) -> float | None:
        raw = self._inner.get()
        return min((e[0] for e in raw), default=None)


class TtlMapState(_TtlBase):
    kind = "map"

    def __init__(self, store: Any, name: str, ttl: StateTtl, clock: Callable[[], float],
                 cleaner: TtlCleaner) -> None:
        super().__init__(store, name, store.map_state(name), ttl, clock, cleaner)

    def _live(self, k: Any, now: float) -> Any:
        raw = self._inner.get(k, _MISSING)
        if raw is _MISSING:
            return _MISSING
        exp, v = raw
        if exp <= now:
            self._inner.remove(k)
            return _MISSING
        if self._on_read:
            self._inner.put(k, (self._expiry(now), v))
        return v

    def get(self, key: Any, default: Any = None) -> Any:
        v = self._live(key, self._now())
        return default if v is _MISSING else v

    def contains(self, key: Any) -> bool:
        return self._live(key, self._now()) is not _MISSING

    def put(self, key: Any, value: Any) -> None:
        now = self._now()
        self._inner.put(key, (self._expiry(now), value))

    def put_all(self, items: dict[Any, Any]) -> None:
        now = self._now()
        if items:
            exp = self._expiry(now)
            self._inner.put_all({k: (exp, v) for k, v in items.items()})

    def remove(self, key: Any) -> None:
        self._inner.remove(key)

    def items(self) -> list[tuple[Any, Any]]:
        """The live entries (a read of each: with ``update_on_read`` their time restarts,
        as ``get`` restarts one entry's)."""
        return self._live_items(self._on_read)

    def _live_items(self, refresh: bool) -> list[tuple[Any, Any]]:
        now = self._now()
        out = []
        for k, (exp, v) in self._inner.items():
            if exp <= now:
                self._inner.remove(k)
            else:
                out.append((k, v))
        if refresh and out:
            exp = self._expiry(now)
            self._inner.put_all({k: (exp, v) for k, v in out})
        return out

    def keys(self) -> list[Any]:
        return [k for k, _ in self.items()]

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def is_empty(self) -> bool:
        return not self._live_items(False)  # reads no entry's value: restarts no time

    def clear(self) -> None:
        self._inner.clear()

    def _purge(self, now: float) -> int:
        n = 0
        for k, (exp, _) in self._inner.items():
            if exp <= now:
                self._inner.remove(k)
                n += 1
        return n

    def _earliest(self) -> float | None:
        return min((e for _, (e, _) in self._inner.items()), default=None)


def _keys_of(store: Any, name: str) -> list[Any]:
    """Every key that has an entry in state ``name`` of ``store`` (memory or RocksDB)."""
    tables = getattr(store, "tables", None)
    if tables is not None:
        return list(tables.get(name, ()))
    db = getattr(store, "db", None)
    if db is None:
        return []
    import pickle

    from onceflow.state.rocksdb import _iter_raw, _split

    keys: dict[bytes, None] = {}
    for k, _ in _iter_raw(db):
        n, kb, _mk = _split(k)
        if n == name:
            keys[kb] = None
    return [pickle.loads(kb) for kb in keys]  # state storage is trusted


def ttl_state(store: Any, kind: str, name: str, default: Any, ttl: Any,
              clock: Callable[[], float], watermark: Callable[[], float],
              event_time: Callable[[], float], cleaners: dict[tuple[int, bool], TtlCleaner],
              where: str) -> Any:
    """A TTL handle of ``kind`` over ``store``'s own handle of that state. One expiry queue
    per store and time domain: a queue is cleaned up to one clock's "now", and an
    event-time expiry compared with the wall clock (or the other way round) would remove
    live entries."""
    cfg = as_ttl(ttl, f"{where}: state {name!r}")
    event = cfg.time_domain is TimeDomain.EVENT_TIME
    cleaner = cleaners.setdefault((id(store), event), TtlCleaner(store))
    now = watermark if event else clock
    h: _TtlBase
    if kind == "value":
        h = TtlValueState(store, name, default, cfg, now, cleaner)
    elif kind == "list":
        h = TtlListState(store, name, cfg, now, cleaner)
    else:
        h = TtlMapState(store, name, cfg, now, cleaner)
    if event:
        # an entry written at event time t (the record's timestamp, or the watermark if
        # later) expires once the watermark passes t + ttl
        h._write_clock = event_time
    return h
