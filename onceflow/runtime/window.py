"""The window operator: keyed state plus timers, nothing more.

State: one value per key, a dict ``{Window: accumulator}`` of the key's open windows (table
``"windows"``), and with a count trigger ``{Window: records since the last firing}``
(``"counts"``). Timers (the state backend's, per (time, key), snapshotted with the state):
at a window's end (it fires) and at end + allowed lateness (its state is dropped); with the
memory backend both are the same timer when the lateness is 0.

A batch is grouped first, by (key, pane) (a pane: the slide-aligned slice of time whose
records share the same windows), so the user's function folds a whole group at once and
the lateness check, timer registration and state access happen once per group, not per
record. The user's reduce/aggregate/process is wrapped by one of three adapters with the
same four operations (create, add_all, merge, result), chosen when the operator is built.

Semantics (DESIGN §11): with watermark ``W``, a window ``[start, end)`` fires when
``W >= end``; a record is late for a window when ``end + lateness <= W``, and late when it
is late for all its windows (it goes to the late-data side output, or is counted in
``late_dropped``); a record added to a window that already fired (within the lateness)
fires the window again at once with the updated result.
"""

from __future__ import annotations

import math
from collections import _count_elements  # type: ignore[attr-defined]
from collections.abc import Callable, Iterable
from typing import Any

from onceflow import _faults
from onceflow.api.windowing import WindowSpec
from onceflow.errors import ConfigurationError, OnceflowError, UserFunctionError
from onceflow.graph.logical import Node
from onceflow.runtime.operators import OperatorEnv, _KeyedOp
from onceflow.runtime.sessions import MergingWindowSet, merge_sorted
from onceflow.state.timers import TimerQueue
from onceflow.windows import EVENT, PROCESSING, Window, _Session, _Sliding, _Tumbling

_INF = math.inf
_NEG_INF = -math.inf
_W = tuple[float, float]  # a window as state holds it: (start, end)
_GLOBAL = (_NEG_INF, _INF)  # windows are plain (start, end) tuples in state


class _Nothing:
    """A reduce accumulator before its first record (pickles to the one instance)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "NOTHING"


NOTHING = _Nothing()
_SKIP = object()  # a process function returned None: no result


# --- adapters: the user's function as create / add_all / merge / result ------------------
class _Adapter:
    def __init__(self, op: str, spec: WindowSpec) -> None:
        self.op, self.fn, self.post = op, spec.fn, spec.post

    def create(self) -> Any:
        raise NotImplementedError

    def add_all(self, acc: Any, recs: list[Any]) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def merge_all(self, accs: list[Any]) -> Any:
        acc = accs[0]
        for a in accs[1:]:
            acc = self.merge(acc, a)
        return acc

    def result(self, key: Any, start: float, end: float, acc: Any) -> Any:
        """The window's value (``_SKIP``: none); a Window is built only for user code."""
        raise NotImplementedError

    def _fail(self, what: Any, e: Exception) -> None:
        if isinstance(e, OnceflowError):
            raise e
        raise UserFunctionError(self.op, what, e) from e


class _AggregateAdapter(_Adapter):
    def create(self) -> Any:
        try:
            return self.fn.create_accumulator()
        except Exception as e:
            self._fail("<create_accumulator>", e)
            raise

    def add_all(self, acc: Any, recs: list[Any]) -> Any:
        try:
            return self.fn.add_all(recs, acc)
        except Exception as e:
            bad = recs[0]
            add, probe = self.fn.add, acc
            for r in recs:  # find the record that fails
                try:
                    probe = add(r, probe)
                except Exception:
                    bad = r
                    break
            self._fail(bad, e)
            raise

    def merge(self, a: Any, b: Any) -> Any:
        try:
            return self.fn.merge(a, b)
        except Exception as e:
            self._fail("<merge of two accumulators>", e)
            raise

    def merge_all(self, accs: list[Any]) -> Any:
        try:
            return self.fn.merge_all(accs)
        except Exception as e:
            self._fail("<merge of accumulators>", e)
            raise

    def result(self, key: Any, start: float, end: float, acc: Any) -> Any:
        try:
            v = self.fn.get_result(acc)
            if self.post is not None:
                v = self.post(key, Window(start, end), v)
                return _SKIP if v is None else v
            return v
        except Exception as e:
            self._fail(f"<window ({start}, {end}) of key {key!r}>", e)
            raise


class _ReduceAdapter(_Adapter):
    def create(self) -> Any:
        return NOTHING

    def add_all(self, acc: Any, recs: list[Any]) -> Any:
        fn = self.fn
        it = iter(recs)
        r: Any = None
        try:
            if acc is NOTHING:
                acc = r = next(it)
            for r in it:
                acc = fn(acc, r)
        except Exception as e:
            self._fail(r, e)
            raise
        return acc

    def merge(self, a: Any, b: Any) -> Any:
        if a is NOTHING:
            return b
        if b is NOTHING:
            return a
        try:
            return self.fn(a, b)
        except Exception as e:
            self._fail(b, e)
            raise

    def result(self, key: Any, start: float, end: float, acc: Any) -> Any:
        return _SKIP if acc is NOTHING else acc


class _ProcessAdapter(_Adapter):
    """Keeps every record (a list per window) for ``fn(key, window, elements)``."""

    def create(self) -> Any:
        return []

    def add_all(self, acc: Any, recs: list[Any]) -> Any:
        return acc + recs

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def result(self, key: Any, start: float, end: float, acc: Any) -> Any:
        try:
            v = self.fn(key, Window(start, end), list(acc))
        except Exception as e:
            self._fail(f"<window ({start}, {end}) of key {key!r} with {len(acc)} elements>", e)
            raise
        return _SKIP if v is None else v


_ADAPTERS: dict[str, type[_Adapter]] = {
    "aggregate": _AggregateAdapter, "reduce": _ReduceAdapter, "process": _ProcessAdapter}


# --- state tables ------------------------------------------------------------------------
class _FastTable:
    """A value table of the memory backend used directly (a dict per key, changed in
    place; the changed keys are marked for changelog snapshots)."""

    def __init__(self, table: dict[Any, Any], dirty: set[Any] | None) -> None:
        self.t = table
        self.dirty = dirty
        self.get = self.t.get

    def put(self, key: Any, value: Any) -> None:
        self.t[key] = value
        if self.dirty is not None:
            self.dirty.add(key)

    def drop(self, key: Any) -> None:
        self.t.pop(key, None)
        if self.dirty is not None:
            self.dirty.add(key)


class _HandleTable:
    """A value state of any backend (RocksDB: each get is a fresh copy, put writes)."""

    def __init__(self, store: Any, name: str) -> None:
        self.h = store.value_state(name, None)
        self.scope = store.scope

    def get(self, key: Any) -> Any:
        self.scope.key = key
        return self.h.value()

    def put(self, key: Any, value: Any) -> None:
        self.scope.key = key
        self.h.update(value)

    def drop(self, key: Any) -> None:
        self.scope.key = key
        self.h.clear()


def _table(store: Any, name: str) -> _FastTable | _HandleTable:
    fast = store.value_table(name)
    return _FastTable(*fast) if fast is not None else _HandleTable(store, name)


def _slice(t: float, width: float, offset: float) -> float:
    """The index ``i`` of the slice (tumbling window, or pane of sliding windows) holding
    timestamp ``t``: ``i*width + offset <= t < (i+1)*width + offset``, evaluated in floats
    as the bounds the windows report are. ``(t - offset) // width`` alone can be one off:
    ``(2.3 - 0.3) // 1.0`` is 1 (2.3 - 0.3 is 1.9999999999999998), and ``841.7 // 0.1`` is
    8416, whose slice ``[841.6, 841.7)`` ends at the record's own timestamp; such a record
    was counted into a window that does not hold it and, once that window fired, an
    in-order record of the same timestamp was late."""
    i = (t - offset) // width
    while (i + 1) * width + offset <= t:
        i += 1
    while i * width + offset > t:
        i -= 1
    return i


def _first_window(t: float, size: float, slide: float, offset: float) -> int:
    """The first sliding window (start ``j*slide + offset``, end that ``+ size``) holding
    ``t``, when ``slide`` does not divide ``size``: the smallest ``j`` whose end lies
    past ``t``, evaluated in floats as the bounds the windows report are."""
    j = int((t - offset - size) // slide) + 1
    while j * slide + offset + size <= t:
        j += 1
    while (j - 1) * slide + offset + size > t:
        j -= 1
    return j


def _no_timestamps(op: str, untimed: tuple[str, ...] = ()) -> ConfigurationError:
    where = "the source" if not untimed else (
        f"source {', '.join(map(repr, untimed))} (records of it reach the window through a "
        "union or connect with no timestamps given on the way)")
    return ConfigurationError(
        f"window operator {op!r} is an event-time window but its input records have no "
        f"timestamps: add watermarks= to {where} or assign_timestamps_and_watermarks(...) "
        "before it, or use time='processing'")


class WindowOperator(_KeyedOp):
    """Keyed windows of any assigner and trigger (see the module docstring)."""

    has_timers = True  # processing-time windows and triggers
    emits_side = True  # late records

    def __init__(self, node: Node, key_fn: Callable[[Any], Any]) -> None:
        super().__init__(node, key_fn)
        spec: WindowSpec = node.fn
        self.spec = spec
        self.assigner = spec.assigner
        tr = spec.trigger
        self.fire_domain = tr.domain  # fire at the window's end in this time, or never
        self.every = tr.every
        self.interval = tr.interval
        self.purge = tr.purge
        self.time = self.assigner.time  # the windows' own time (None: global windows)
        self.lateness = spec.lateness
        self.late_tag = spec.late_tag
        self.adapter = _ADAPTERS[spec.function](node.name, spec)
        self.late_dropped = 0  # late records without a late-data side output
        self.subtask = 0
        self._firings = 0  # watermark advances that fired timers (for fault points)
        self.clock: Callable[[], float] = lambda: 0.0
        self.windows: _FastTable | _HandleTable | None = None
        self.counts: _FastTable | _HandleTable | None = None
        a = self.assigner
        if isinstance(a, _Sliding):
            n = a.size / a.slide
            self._panes = int(n) if n == int(n) else 0  # 0: windows per record
        self._out: list[Any] = []
        self._out_ts: list[float] = []

    def open(self, rt: OperatorEnv) -> None:
        self.store = rt.keyed_store(self)
        self.clock = rt.clock
        self.subtask = rt.subtask
        self._bind()

    def _bind(self) -> None:
        self.windows = _table(self.store, "windows")
        if self.every is not None:
            self.counts = _table(self.store, "counts")

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        super().restore(states, filter_keys)
        self._bind()

    # --- records -------------------------------------------------------------------------
    def process(self, batch: list[Any]) -> list[Any]:
        if self.time == EVENT or (self.time is None and self.fire_domain == EVENT):
            raise _no_timestamps(self.name, self.spec.untimed_sources)
        out, _ = self._records(batch, None)
        return out

    def process_ts(self, batch: list[Any], ts: list[float]
                   ) -> tuple[list[Any], list[float] | None]:
        return self._records(batch, ts)

    def _start_batch(self, batch: list[Any]) -> tuple[list[Any], list[float]]:
        """The key type check after a restore, and the lists the firings append to."""
        if self._check_key_type:
            self._verify_key_type(batch)
        out: list[Any] = []
        out_ts: list[float] = []
        self._out, self._out_ts = out, out_ts
        return out, out_ts

    def _records(self, batch: list[Any], ts: list[float] | None
                 ) -> tuple[list[Any], list[float] | None]:
        out, out_ts = self._start_batch(batch)
        a = self.assigner
        if self.time == PROCESSING:
            now = self.clock()
            ts = [now] * len(batch)
        if a.merging:
            assert ts is not None
            self._sessions(batch, ts)
        elif self.time is None:
            self._global(batch, ts)
        else:
            assert ts is not None
            self._time_windows(batch, ts)
        self.store.after_batch()
        if self.time == PROCESSING:
            return out, None
        return out, out_ts

    def _key_error(self, batch: list[Any], e: Exception) -> None:
        if isinstance(e, OnceflowError):
            raise e
        for r in batch:
            try:
                self.key_fn(r)
            except Exception:
                raise UserFunctionError(f"{self.name} (key)", r, e) from e
        raise UserFunctionError(f"{self.name} (key)", batch[0] if batch else None, e) from e

    def _group(self, batch: list[Any], ts: list[float], width: float, offset: float
               ) -> dict[tuple[Any, float], list[Any]]:
        """Records by (key, index of their slice of ``width`` seconds)."""
        kf = self.key_fn
        self._late_from(batch, ts, lambda r, t: (kf(r), _slice(t, width, offset)))
        groups: dict[tuple[Any, float], list[Any]] = {}
        get = groups.get
        try:
            for r, t in zip(batch, ts, strict=True):
                i = (t - offset) // width
                if (i + 1) * width + offset <= t or i * width + offset > t:
                    i = _slice(t, width, offset)  # rounding put t past a bound (_slice)
                g = (kf(r), i)
                lst = get(g)
                if lst is None:
                    groups[g] = [r]
                else:
                    lst.append(r)
        except Exception as e:
            self._key_error(batch, e)
        return groups

    def _time_windows(self, batch: list[Any], ts: list[float]) -> None:
        a = self.assigner
        if isinstance(a, _Tumbling):
            size, off = a.size, a.offset
            groups = self._group(batch, ts, size, off)
            # bounds as slices: a window ends where the next starts (``s + size`` can
            # differ from that by rounding, leaving a record in no window or two)
            for (k, idx), recs in groups.items():
                self._add(k, ((idx * size + off, (idx + 1) * size + off),), recs, (k, idx))
            return
        assert isinstance(a, _Sliding)
        size, slide, off = a.size, a.slide, a.offset
        n = self._panes
        if n:
            groups = self._group(batch, ts, slide, off)
            for (k, idx), recs in groups.items():
                ws = tuple((j * slide + off, (j + n) * slide + off)  # as the panes'
                           for j in range(int(idx) - n + 1, int(idx) + 1))
                self._add(k, ws, recs, (k, idx))
            return
        # slide does not divide size: a record's windows depend on where in its slide it is
        kf = self.key_fn
        per: dict[tuple[Any, int, int], list[Any]] = {}
        self._late_from(batch, ts, lambda r, t: (kf(r), _first_window(t, size, slide, off),
                                                 int(_slice(t, slide, off))))
        try:
            for r, t in zip(batch, ts, strict=True):
                last = int(_slice(t, slide, off))
                first = _first_window(t, size, slide, off)
                per.setdefault((kf(r), first, last), []).append(r)
        except Exception as e:
            self._key_error(batch, e)
        for (k, first, last), recs in per.items():
            self._add(k, tuple((j * slide + off, j * slide + off + size)
                               for j in range(first, last + 1)), recs, (k, first, last))

    def _global(self, batch: list[Any], ts: list[float] | None) -> None:
        kf = self.key_fn
        groups: dict[Any, list[Any]] = {}
        try:
            for r in batch:
                k = kf(r)
                lst = groups.get(k)
                if lst is None:
                    groups[k] = [r]
                else:
                    lst.append(r)
        except Exception as e:
            self._key_error(batch, e)
        self._ts_hint = min(ts) if ts else _NEG_INF
        for k, recs in groups.items():
            self._add(k, (_GLOBAL,), recs)

    def _add(self, k: Any, ws: tuple[_W, ...], recs: list[Any], group: Any = None) -> None:
        """Add one group of records of key ``k`` to its windows ``ws`` (all time windows
        of the same time, oldest first); ``group``: the group's key in ``_late_from``."""
        table = self.windows
        assert table is not None
        store = self.store
        store.scope.key = k
        wm = self.watermark if self.time == EVENT else _NEG_INF
        lat = self.lateness
        d = table.get(k)
        if d is None:
            d = {}
        ad = self.adapter
        added = False
        for w in ws:
            end = w[1]
            if end + lat <= wm:
                continue  # late for this window
            added = True
            if self.every is not None:
                self._add_counted(k, d, w, recs)
            else:
                acc = d.get(w)
                d[w] = ad.add_all(ad.create() if acc is None else acc, recs)
            self._on_element(k, d, w, end, wm)
        if not added:
            self._late(recs, group=group)
            return
        if d:
            table.put(k, d)
        else:
            table.drop(k)

    def _on_element(self, k: Any, d: dict[Any, Any], w: _W, end: float, wm: float) -> None:
        """Timers for window ``w`` that just got records (scope key is ``k``)."""
        store = self.store
        if self.time == EVENT:
            if self.lateness or self.fire_domain != EVENT:
                store.register_event_timer(end + self.lateness)  # cleanup
        elif self.time == PROCESSING:
            store.register_timer(end)  # fire and clean up
        fd = self.fire_domain
        if fd == EVENT:
            if end <= wm:  # the window already fired: a late firing with the new result
                if w in d:
                    self._fire(k, d, w)
            else:
                store.register_event_timer(end)
        elif fd == PROCESSING and self.time != PROCESSING and end != _INF:
            store.register_timer(end)
        if self.interval is not None:
            iv = self.interval
            if fd == EVENT:
                base = wm if wm > _NEG_INF else (w[0] if w[0] > _NEG_INF else self._ts_hint)
                if base > _NEG_INF:
                    nxt = (base // iv + 1) * iv
                    if nxt < end:
                        store.register_event_timer(nxt)
            else:
                now = self.clock()
                nxt = (now // iv + 1) * iv
                if nxt < end:
                    store.register_timer(nxt)

    _ts_hint = _NEG_INF

    def _add_counted(self, k: Any, d: dict[Any, Any], w: _W, recs: list[Any]) -> None:
        """Add records in slices so a count trigger fires at exactly every n-th record."""
        counts = self.counts
        assert counts is not None and self.every is not None
        cd = counts.get(k) or {}
        c = cd.get(w, 0)
        every, ad = self.every, self.adapter
        i, n = 0, len(recs)
        while i < n:
            take = min(every - c, n - i)
            acc = d.get(w)
            d[w] = ad.add_all(ad.create() if acc is None else acc, recs[i:i + take])
            c += take
            i += take
            if c >= every:
                c = 0
                self._fire(k, d, w)  # may purge
        if c:
            cd[w] = c
        else:
            cd.pop(w, None)
        if cd:
            counts.put(k, cd)
        else:
            counts.drop(k)

    def _sessions(self, batch: list[Any], ts: list[float]) -> None:
        a = self.assigner
        assert isinstance(a, _Session)
        kf = self.key_fn
        per: dict[Any, list[tuple[float, float, Any]]] = {}
        gap = a.gap
        r: Any = None
        try:
            if callable(gap):
                for r, t in zip(batch, ts, strict=True):
                    g = gap(r)
                    if isinstance(g, bool) or not isinstance(g, int | float) or not g > 0 \
                            or g == _INF:
                        raise ValueError(
                            f"the session gap function returned {g!r}; it must return a "
                            "number of seconds > 0")
                    per.setdefault(kf(r), []).append((t, t + g, r))
            else:
                for r, t in zip(batch, ts, strict=True):
                    per.setdefault(kf(r), []).append((t, t + gap, r))
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(f"{self.name} (session gap or key)", r, e) from e
        table = self.windows
        assert table is not None
        ad, store, lat = self.adapter, self.store, self.lateness
        wm = self.watermark if self.time == EVENT else _NEG_INF
        for k, items in per.items():
            store.scope.key = k
            d = table.get(k)
            if not d and len(items) == 1:  # the common case: a new session of one record
                t0, e0, r = items[0]
                if e0 + lat <= wm:
                    self._late([r], [t0])
                    continue
                w = (t0, e0)
                d = {w: ad.add_all(ad.create(), [r])}
                self._on_element(k, d, w, e0, wm)
                table.put(k, d)
                continue
            if d is None:
                d = {}
            held = MergingWindowSet(d)
            if len(items) > 1:
                items.sort(key=_first)
            keep: list[tuple[float, float, Any]] = []
            late: list[Any] = []
            late_ts: list[float] = []
            for it in items:
                if it[1] + lat <= wm and not held.intersects((it[0], it[1])):
                    late.append(it[2])
                    late_ts.append(it[0])
                else:
                    keep.append(it)
            if late:
                self._late(late, late_ts)
            for s0, e0, i, j in merge_sorted([(it[0], it[1]) for it in keep]):
                merged, absorbed = held.add((s0, e0))
                acc = d.pop(merged, None)
                for old in absorbed:
                    prev = d.pop(old)
                    acc = prev if acc is None else ad.merge(acc, prev)
                    self._drop_timers(old)
                acc = ad.add_all(ad.create() if acc is None else acc,
                                 [it[2] for it in keep[i:j]])
                d[merged] = acc
                self._on_element(k, d, merged, merged[1], wm)
            if d:
                table.put(k, d)
            else:
                table.drop(k)

    def _drop_timers(self, w: _W) -> None:
        store = self.store
        if self.time == EVENT:
            store.delete_event_timer(w[1] + self.lateness)
            store.delete_event_timer(w[1])
        else:
            store.delete_timer(w[1])

    def _late(self, recs: list[Any], ts: list[float] | None = None, group: Any = None
              ) -> None:
        """Late records: to the late-data side output with their event timestamps (``ts``,
        or found by their ``group`` key, see ``_late_from``), or counted in
        ``late_dropped`` (checkpointed with the task's counters, so exact after a restore)."""
        tag = self.late_tag
        if tag is None or tag not in self.side_wanted:
            self.late_dropped += len(recs)
            return
        if ts is None:
            ts = self._late_ts(group)
        for r, t in zip(recs, ts, strict=True):
            self.emit_side(tag, r, t)

    _late_src: tuple[list[Any], list[float], Callable[[Any, float], Any]] | None = None
    _late_index: dict[Any, list[float]] | None = None

    def _late_from(self, batch: list[Any], ts: list[float],
                   group_of: Callable[[Any, float], Any]) -> None:
        """The batch being grouped by ``group_of(record, ts)``: the timestamps of a late
        group are found from it only when one is late (grouping keeps records only)."""
        self._late_src = (batch, ts, group_of)
        self._late_index = None

    def _late_ts(self, group: Any) -> list[float]:
        idx = self._late_index
        if idx is None:
            assert self._late_src is not None
            batch, ts, group_of = self._late_src
            idx = {}
            for r, t in zip(batch, ts, strict=True):
                g = group_of(r, t)
                lst = idx.get(g)
                if lst is None:
                    idx[g] = [t]
                else:
                    lst.append(t)
            self._late_index = idx
        return idx[group]

    # --- firing --------------------------------------------------------------------------
    def _fire(self, k: Any, d: dict[Any, Any], w: _W) -> None:
        acc = d[w]
        v = self.adapter.result(k, w[0], w[1], acc)
        if v is not _SKIP:
            self._out.append((k, w[0], w[1], v))
            self._out_ts.append(math.nextafter(w[1], _NEG_INF))
        if self.purge:
            del d[w]

    def on_watermark(self, watermark: float) -> tuple[list[Any], list[float] | None]:
        store = self.store
        out: list[Any] = []
        ts: list[float] | None = []
        if watermark == _INF and store.next_timer() is not None:
            # the end of a bounded input: processing-time windows fire too, before the
            # final checkpoint (their results would be lost otherwise)
            out, ts = self.fire_timers(_INF)
        nt = store.next_event_timer()
        if nt is None or nt > watermark:
            return out, ts
        self._firings += 1
        _faults.point("window.fire", operator=self.name, subtask=self.subtask,
                      firing=self._firings)
        more, more_ts = self._timers(EVENT, store.pop_due_event_timers(watermark))
        if not out:
            return more, more_ts
        out.extend(more)
        if ts is not None and more_ts is not None:
            ts.extend(more_ts)
        return out, ts

    def next_timer(self) -> float | None:
        return self.store.next_timer()

    def fire_timers(self, now: float) -> tuple[list[Any], list[float] | None]:
        out, ts = self._timers(PROCESSING, self.store.pop_due_timers(now))
        return out, (None if self.time == PROCESSING else ts)

    def _timers(self, domain: str, due: list[tuple[float, Any]]
                ) -> tuple[list[Any], list[float] | None]:
        out: list[Any] = []
        out_ts: list[float] = []
        self._out, self._out_ts = out, out_ts
        table = self.windows
        assert table is not None
        store = self.store
        lat = self.lateness
        cleans = self.time == domain
        fires = self.fire_domain == domain
        iv = self.interval if fires else None
        seen = set(due)
        for t, k in due:
            d = table.get(k)
            if not d:
                continue
            store.scope.key = k
            changed = False
            for w in list(d):
                s, e = w
                if fires and e == t:
                    self._fire(k, d, w)
                    changed = changed or self.purge
                elif iv is not None and s < t < e:
                    self._fire(k, d, w)
                    changed = changed or self.purge
                    nxt = t + iv
                    if nxt < e and (nxt, k) not in seen:
                        if domain == EVENT:
                            store.register_event_timer(nxt)
                        else:
                            store.register_timer(nxt)
                if cleans and w in d and e + lat <= t:
                    del d[w]
                    changed = True
                    if self.counts is not None:
                        self._clear_count(k, w)
            if changed:
                if d:
                    table.put(k, d)
                else:
                    table.drop(k)
        store.after_batch()
        if out:
            _faults.point("window.fired", operator=self.name, subtask=self.subtask,
                          firing=self._firings)
        return out, out_ts

    def _clear_count(self, k: Any, w: _W) -> None:
        counts = self.counts
        assert counts is not None
        cd = counts.get(k)
        if cd and w in cd:
            del cd[w]
            if cd:
                counts.put(k, cd)
            else:
                counts.drop(k)

    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        _faults.point("window.snapshot", operator=self.name, subtask=self.subtask,
                      checkpoint=checkpoint_id)
        return super().snapshot(checkpoint_id, savepoint)


def _first(item: tuple[float, float, Any]) -> float:
    return item[0]


class PaneWindowOperator(WindowOperator):
    """Tumbling and sliding windows with their default trigger (fire at the end, in the
    windows' own time), the common case, kept per *pane*: the slide-sized slices of time.
    State per key is ``{pane index: accumulator}`` (table ``"panes"``); a record updates
    one pane however many windows it is in, and a window's value is the merge of its
    panes when it fires. Pane ``p`` covers ``[p*slide + offset, (p+1)*slide + offset)``;
    window ``j`` ends at ``j*slide + offset`` and holds panes ``j-n .. j-1`` (``n =
    size / slide``; tumbling: ``n = 1``). Timers sit on window ends: a new pane registers
    the first of its windows not fired yet (and, with lateness, the window end by which
    all its windows are past lateness, to drop it); a firing registers the next window end
    while panes remain for it. Times are computed from integer indexes, so every record,
    timer and firing agrees on the same float."""

    def __init__(self, node: Node, key_fn: Callable[[Any], Any]) -> None:
        super().__init__(node, key_fn)
        a = self.assigner
        assert isinstance(a, _Tumbling | _Sliding)
        self.slide = a.slide if isinstance(a, _Sliding) else a.size
        self.size = a.size
        self.offset = a.offset
        self.n = round(self.size / self.slide)
        ad = self.adapter
        if isinstance(ad, _AggregateAdapter):
            self._add_one: Callable[[Any, Any], Any] = ad.fn.add
            self._fused = True
        elif isinstance(ad, _ReduceAdapter):
            fn = ad.fn

            def fold(r: Any, acc: Any) -> Any:
                return r if acc is NOTHING else fn(acc, r)

            self._add_one = fold
            self._fused = True
        else:
            self._fused = False
        lat_panes = math.ceil(self.lateness / self.slide) if self.lateness else 0
        self.clean_after = self.n + lat_panes  # panes after p whose end drops pane p
        self.panes: _FastTable | _HandleTable | None = None

    def _bind(self) -> None:
        self.panes = _table(self.store, "panes")

    def _records(self, batch: list[Any], ts: list[float] | None
                 ) -> tuple[list[Any], list[float] | None]:
        out, out_ts = self._start_batch(batch)
        event = self.time == EVENT
        if event:
            assert ts is not None
            wm = self.watermark
        else:
            ts = [self.clock()] * len(batch)
            wm = _NEG_INF
        if self._fused and type(self.panes) is _FastTable:
            return self._records_fused(batch, ts, wm, event)
        slide, off, n, lat = self.slide, self.offset, self.n, self.lateness
        groups = self._group(batch, ts, slide, off)
        table = self.panes
        assert table is not None
        get, put = table.get, table.put
        store = self.store
        ad = self.adapter
        create, add_all = ad.create, ad.add_all
        if type(ad) is _AggregateAdapter:  # call the AggregateFunction itself; on an
            fold = ad.fn.add_all  # error the adapter's add_all names the record
        else:
            def fold(recs: list[Any], acc: Any) -> Any:
                return add_all(acc, recs)
        live = type(table) is _FastTable  # dicts changed in place; mark them changed
        dirty = table.dirty if isinstance(table, _FastTable) else None
        for (k, p), recs in groups.items():
            last_end = (p + n) * slide + off  # the end of the last window holding pane p
            if last_end + lat <= wm:
                self._late(recs, group=(k, p))
                continue
            d = get(k)
            fresh = d is None
            if d is None:
                d = {}
            acc = d.get(p)
            try:
                d[p] = fold(recs, create() if acc is None else acc)
            except Exception:
                d[p] = add_all(create() if acc is None else acc, recs)  # raises, naming
                raise
            if fresh or not live:
                put(k, d)
            elif dirty is not None:
                dirty.add(k)
            if acc is None:
                self._pane_timers_for(((k, p),), wm, event)
            if (p + 1) * slide + off <= wm:  # late records within lateness: fire again
                self._refire(k, d, p, wm)
        store.after_batch()
        return out, (out_ts if event else None)

    def _records_fused(self, batch: list[Any], ts: list[float], wm: float, event: bool
                       ) -> tuple[list[Any], list[float] | None]:
        """The memory backend with an aggregate or reduce: one pass over the records,
        each folded into its pane's accumulator in place (no grouping: with many keys per
        batch, grouping costs more than it saves)."""
        table = self.panes
        assert isinstance(table, _FastTable)
        tab, dirty = table.t, table.dirty
        tget = tab.get
        slide, off, n, lat = self.slide, self.offset, self.n, self.lateness
        ad = self.adapter
        create = ad.create
        add = self._add_one
        kf = self.key_fn
        late: list[Any] = []
        late_ts: list[float] = []
        new: list[tuple[Any, float]] = []
        refire: list[tuple[Any, float]] = []
        # quick filters, one more pane wide than exact; the exact test decides
        horizon = (wm - off - lat) / slide - n + 1  # late panes are at most this
        fired = (wm - off) / slide  # panes with fired windows are at most this
        r: Any = None
        try:
            for r, t in zip(batch, ts, strict=True):
                k = kf(r)
                p = (t - off) // slide
                if (p + 1) * slide + off <= t or p * slide + off > t:
                    p = _slice(t, slide, off)
                if p <= horizon and (p + n) * slide + off + lat <= wm:
                    late.append(r)
                    late_ts.append(t)
                    continue
                d = tget(k)
                if d is None:
                    d = tab[k] = {}
                acc = d.get(p)
                if acc is None:
                    d[p] = add(r, create())
                    new.append((k, p))
                else:
                    d[p] = add(r, acc)
                if p <= fired and (p + 1) * slide + off <= wm:
                    refire.append((k, p))
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, e) from e
        if dirty is not None:
            dirty.update(k for k, _ in new)
            dirty.update(kf(r) for r in batch)
        if late:
            self._late(late, late_ts)
        if new:
            self._pane_timers_for(new, wm, event)
        for k, p in dict.fromkeys(refire):
            self._refire(k, tab[k], p, wm)
        self.store.after_batch()
        return self._out, (self._out_ts if event else None)

    def _pane_timers_for(self, new: Iterable[tuple[Any, float]], wm: float, event: bool
                         ) -> None:
        """Timers of new panes: the first of their windows not fired yet (some may have
        fired already), and the cleanup with lateness."""
        store = self.store
        scope = store.scope
        reg = store.register_event_timer if event else store.register_timer
        slide, off, n, lat, clean = self.slide, self.offset, self.n, self.lateness, \
            self.clean_after
        for k, p in new:
            scope.key = k
            first = p + 1
            if first * slide + off <= wm:
                first = math.floor((wm - off) / slide) + 1.0
                while first * slide + off <= wm:
                    first += 1.0
            if first <= p + n:
                reg(first * slide + off)
            if lat:
                reg((p + clean) * slide + off)

    def _refire(self, k: Any, d: dict[Any, Any], p: float, wm: float) -> None:
        """Late records within the lateness: fire pane ``p``'s fired windows again."""
        slide, off, n, lat = self.slide, self.offset, self.n, self.lateness
        j = p + 1
        while j <= p + n:
            e = j * slide + off
            if e > wm:
                break
            if e + lat > wm:
                self._emit_window(k, d, j)
            j += 1.0

    def _fire_live(self, due: list[tuple[float, Any]], t: float,
                   reg: Callable[[float], None]) -> None:
        """The timers of one window end ``t`` (all keys at once) on the memory backend:
        the window's bounds, cleanup and next end are computed once for all keys, and the
        dicts are changed in place."""
        table = self.panes
        assert isinstance(table, _FastTable)
        tab, dirty = table.t, table.dirty
        slide, off, n = self.slide, self.offset, self.n
        j = float(round((t - off) / slide))
        lo = j - n
        start, end = lo * slide + off, j * slide + off
        ts = math.nextafter(end, _NEG_INF)
        cut = j - n - self.lateness / slide  # panes at or below are past their lateness
        nxt = (j + 1.0) * slide + off
        ad = self.adapter
        result = ad.result
        merge_all = ad.merge_all
        out, out_ts = self._out, self._out_ts
        scope = self.store.scope
        for _, k in due:
            d = tab.get(k)
            if not d:
                continue
            mn = min(d)
            if n == 1:
                acc = d.get(lo)
            elif lo <= mn and max(d) < j:
                accs = list(d.values())
                acc = accs[0] if len(accs) == 1 else merge_all(accs)
            else:
                accs = [pacc for p, pacc in d.items() if lo <= p < j]
                acc = None if not accs else accs[0] if len(accs) == 1 else merge_all(accs)
            if acc is not None:
                v = result(k, start, end, acc)
                if v is not _SKIP:
                    out.append((k, start, end, v))
                    out_ts.append(ts)
            if mn <= cut:
                for p in [p for p in d if p <= cut]:
                    del d[p]
                if not d:
                    del tab[k]
                    if dirty is not None:
                        dirty.add(k)
                    continue
                mn = min(d)
            if dirty is not None:
                dirty.add(k)
            if mn <= j:  # panes for window j + 1 (or kept for lateness)
                scope.key = k
                reg(nxt)

    def _emit_window(self, k: Any, d: dict[Any, Any], j: float) -> bool:
        """Emit window ``j`` of key ``k`` from the panes it holds; False if it has none."""
        n, slide, off = self.n, self.slide, self.offset
        lo = j - n
        ad = self.adapter
        if n == 1:
            acc = d.get(lo)
            if acc is None:
                return False
        elif lo <= min(d) and max(d) < j:
            accs = list(d.values())
            acc = accs[0] if len(accs) == 1 else ad.merge_all(accs)
        else:
            accs = [pacc for p, pacc in d.items() if lo <= p < j]
            if not accs:
                return False
            acc = accs[0] if len(accs) == 1 else ad.merge_all(accs)
        end = j * slide + off
        start = lo * slide + off
        v = ad.result(k, start, end, acc)
        if v is not _SKIP:
            self._out.append((k, start, end, v))
            self._out_ts.append(math.nextafter(end, _NEG_INF))
        return True

    def on_watermark(self, watermark: float) -> tuple[list[Any], list[float] | None]:
        store = self.store
        if self.time == PROCESSING:
            if watermark == _INF and store.next_timer() is not None:
                return self.fire_timers(_INF)  # end of input: fire what is open
            return [], None
        nt = store.next_event_timer()
        if nt is None or nt > watermark:
            return [], None
        self._firings += 1
        _faults.point("window.fire", operator=self.name, subtask=self.subtask,
                      firing=self._firings)
        return self._pane_timers(store.pop_due_event_timers, watermark, True)

    def fire_timers(self, now: float) -> tuple[list[Any], list[float] | None]:
        out, _ = self._pane_timers(self.store.pop_due_timers, now, False)
        return out, None

    def _pane_timers(self, pop: Callable[[float], list[tuple[float, Any]]], upto: float,
                     event: bool) -> tuple[list[Any], list[float] | None]:
        out: list[Any] = []
        out_ts: list[float] = []
        self._out, self._out_ts = out, out_ts
        table = self.panes
        assert table is not None
        store = self.store
        scope = store.scope
        reg = store.register_event_timer if event else store.register_timer
        slide, off, n = self.slide, self.offset, self.n
        keep = n + self.lateness / slide  # pane p is dropped at window end j >= p + keep
        peek = store.next_event_timer if event else store.next_timer
        fast = type(table) is _FastTable and type(self.adapter) is not _ProcessAdapter
        while True:
            # one window end at a time, in time order: a firing registers the key's next
            # window end, which may be due too and must fire before any later one
            nt = peek()
            if nt is None or nt > upto:
                break
            if fast:
                self._fire_live(pop(nt), nt, reg)
                continue
            for t, k in pop(nt):
                d = table.get(k)
                if not d:
                    continue
                j = float(round((t - off) / slide))
                self._emit_window(k, d, j)
                cut = j - keep
                if min(d) <= cut:
                    for p in [p for p in d if p <= cut]:
                        del d[p]
                if d:
                    table.put(k, d)
                    nxt = (j + 1.0) * slide + off
                    # panes for window j + 1 (or kept for lateness)
                    if min(d) <= j:
                        scope.key = k
                        reg(nxt)
                else:
                    table.drop(k)
        store.after_batch()
        if out:
            _faults.point("window.fired", operator=self.name, subtask=self.subtask,
                          firing=self._firings)
        return out, out_ts


def make_window_operator(node: Node, key_fn: Callable[[Any], Any]) -> WindowOperator:
    """The pane operator for tumbling/sliding windows with their default trigger (and a
    slide that divides the size); the general one for everything else."""
    spec: WindowSpec = node.fn
    a, tr = spec.assigner, spec.trigger
    if isinstance(a, _Tumbling | _Sliding) and tr.domain == a.time and tr.every is None \
            and tr.interval is None and not tr.purge:
        n = a.size / a.slide if isinstance(a, _Sliding) else 1.0
        if n == int(n):
            return EventPaneWindowOperator(node, key_fn)  # PaneWindowOperator if not event
            # time with an aggregate or reduce on the memory backend
    return WindowOperator(node, key_fn)


_MISSING = object()


class EventPaneWindowOperator(PaneWindowOperator):
    """Event-time tumbling and sliding windows with an aggregate or reduce on the memory
    backend (the common case, made fast): state is kept *per pane*, ``{pane index: {key:
    accumulator}}``, so a watermark fires one window for all keys in one pass over the
    dicts of its panes, with no timer per key. A count keeps a running window count per key
    (the next pane added, the expired one subtracted: exact, counts are integers); other
    functions merge a window's panes in time order, key by key.

    Checkpoints hold what ``PaneWindowOperator`` holds (per key ``{pane: accumulator}`` and
    an event timer per key at its next window end, plus the lateness cleanup timers), built
    in the snapshot; so a checkpoint restores into either operator and any backend. On a
    restore, a key's smallest restored timer says which of its windows fired already
    (those below it): windows below it are skipped for that key until the firing passes
    it. Any other backend, or processing time, uses ``PaneWindowOperator`` unchanged."""

    def __init__(self, node: Node, key_fn: Callable[[Any], Any]) -> None:
        super().__init__(node, key_fn)
        self.bp: dict[float, dict[Any, Any]] = {}
        self.fired_j = _NEG_INF  # windows up to this index fired (for all keys)
        self.resume: dict[Any, float] = {}  # restored keys: their first unfired window
        self.restored_panes: dict[Any, list[float]] = {}  # ... and their restored panes
        self._resume_max = _NEG_INF
        self._win: dict[Any, int] | None = None  # count: window counts, panes ready for
        self._win_next = _NEG_INF  # window _win_next (its last pane not added yet)
        ad = self.adapter
        fn = getattr(ad, "fn", None)
        from onceflow.agg import _Count, _Sum

        self._count = isinstance(ad, _AggregateAdapter) and type(fn) is _Count
        self._plain = isinstance(ad, _AggregateAdapter) and ad.post is None and \
            type(fn) in (_Count, _Sum)  # the accumulator is the result
        self._fast = False
        self._mirror = False  # the state table holds the last snapshot's copy

    def _bind(self) -> None:
        super()._bind()
        self._fast = self.time == EVENT and self._fused and type(self.panes) is _FastTable

    # --- records -------------------------------------------------------------------------
    def _records(self, batch: list[Any], ts: list[float] | None
                 ) -> tuple[list[Any], list[float] | None]:
        if not self._fast:
            return super()._records(batch, ts)
        assert ts is not None
        out, out_ts = self._start_batch(batch)
        if self._mirror:
            self._drop_mirror()
        wm = self.watermark
        slide, off, n, lat = self.slide, self.offset, self.n, self.lateness
        kf = self.key_fn
        bp = self.bp
        if self._count and batch:
            p = _slice(min(ts), slide, off)
            if (p + 1) * slide + off > wm and _slice(max(ts), slide, off) == p:
                pd = bp.get(p)  # one pane, on time, not fired: count at C speed
                if pd is None:
                    pd = bp[p] = {}
                try:
                    _count_elements(pd, map(kf, batch))
                except Exception as e:
                    self._key_error(batch, e)
                return out, out_ts
        create, add = self.adapter.create, self._add_one
        count = self._count
        horizon = (wm - off - lat) / slide - n + 1  # late panes are at most this
        fired = (wm - off) / slide  # panes with fired windows are at most this
        late: list[Any] = []
        late_ts: list[float] = []
        refire: list[tuple[Any, float]] = []
        cur_p: float | None = None
        pd = {}
        r: Any = None
        try:
            for r, t in zip(batch, ts, strict=True):
                k = kf(r)
                p = (t - off) // slide
                if (p + 1) * slide + off <= t or p * slide + off > t:
                    p = _slice(t, slide, off)
                if p <= horizon and (p + n) * slide + off + lat <= wm:
                    late.append(r)
                    late_ts.append(t)
                    continue
                if p != cur_p:
                    cur_p = p
                    got = bp.get(p)
                    if got is None:
                        got = bp[p] = {}
                    pd = got
                if count:
                    pd[k] = pd.get(k, 0) + 1
                else:
                    acc = pd.get(k, _MISSING)
                    pd[k] = add(r, create() if acc is _MISSING else acc)
                if p <= fired and (p + 1) * slide + off <= wm:
                    refire.append((k, p))
        except Exception as e:
            if isinstance(e, OnceflowError):
                raise
            raise UserFunctionError(self.name, r, e) from e
        if late:
            self._late(late, late_ts)
        if refire:
            self._win = None  # a fired window changed: rebuild the running counts
            again: dict[tuple[Any, float], None] = {}
            for k, p in dict.fromkeys(refire):
                self._refire_windows(k, p, wm, again)
            for k, j in again:  # each changed window once, with all of the batch
                self._emit_key_window(k, j)
        return out, out_ts

    def _key_acc(self, k: Any, lo: float, j: float) -> Any:
        """Key ``k``'s accumulator of panes ``lo .. j-1`` (merged in time order), or
        ``_MISSING``."""
        bp, merge = self.bp, self.adapter.merge
        acc: Any = _MISSING
        q = lo
        while q < j:
            pd = bp.get(q)
            if pd is not None:
                a = pd.get(k, _MISSING)
                if a is not _MISSING:
                    acc = a if acc is _MISSING else merge(acc, a)
            q += 1.0
        return acc

    def _refire_windows(self, k: Any, p: float, wm: float,
                        again: dict[tuple[Any, float], None]) -> None:
        """Late records within the lateness in pane ``p``: its windows that fired and are
        not past their lateness fire again (collected in ``again``)."""
        slide, off, n, lat = self.slide, self.offset, self.n, self.lateness
        j = p + 1
        while j <= p + n:
            e = j * slide + off
            if e > wm:
                break
            if e + lat > wm:
                again[(k, j)] = None
            j += 1.0

    def _emit_key_window(self, k: Any, j: float) -> None:
        acc = self._key_acc(k, j - self.n, j)
        if acc is _MISSING:
            return
        slide, off = self.slide, self.offset
        start, end = (j - self.n) * slide + off, j * slide + off
        v = self.adapter.result(k, start, end, acc)
        if v is not _SKIP:
            self._out.append((k, start, end, v))
            self._out_ts.append(math.nextafter(end, _NEG_INF))

    # --- firing --------------------------------------------------------------------------
    def on_watermark(self, watermark: float) -> tuple[list[Any], list[float] | None]:
        if not self._fast:
            return super().on_watermark(watermark)
        if self._mirror:
            self._drop_mirror()
        if watermark == _NEG_INF:
            return [], None
        bp = self.bp
        slide, off, n = self.slide, self.offset, self.n
        top = math.floor((watermark - off) / slide) if watermark < _INF else _INF
        if top < _INF:
            while top * slide + off > watermark:  # the last window end <= watermark
                top -= 1
            while (top + 1) * slide + off <= watermark:
                top += 1
        if not bp:
            if top > self.fired_j:
                self.fired_j = float(top)
            return [], None
        ps = sorted(bp)
        j = max(self.fired_j + 1.0, ps[0] + 1.0)
        last = min(top, ps[-1] + n)
        out: list[Any] = []
        out_ts: list[float] = []
        self._out, self._out_ts = out, out_ts
        if j <= last:
            self._firings += 1
            _faults.point("window.fire", operator=self.name, subtask=self.subtask,
                          firing=self._firings)
            i = 0  # ps[i]: the first pane >= j - n
            while j <= last:
                while i < len(ps) and ps[i] < j - n:
                    i += 1
                if i == len(ps):
                    break
                if ps[i] >= j:  # no pane in window j: jump to the next pane's first window
                    j = ps[i] + 1.0
                    continue
                self._fire_window(j)
                j += 1.0
        if top > self.fired_j:
            self.fired_j = float(top)
        self._clean(watermark)
        if out:
            _faults.point("window.fired", operator=self.name, subtask=self.subtask,
                          firing=self._firings)
        return out, out_ts

    def _fire_window(self, j: float) -> None:
        """Fire window ``j`` (panes ``j-n .. j-1``) for every key that has records in it."""
        bp, n, slide, off = self.bp, self.n, self.slide, self.offset
        lo = j - n
        start, end = lo * slide + off, j * slide + off
        vals: dict[Any, Any]
        if self._count:
            w = self._win
            if w is None or self._win_next != j:  # (re)build from the window's panes
                w = {}
                q = lo
                while q < j - 1:
                    pd = bp.get(q)
                    if pd:
                        _add_counts(w, pd)
                    q += 1.0
            pd = bp.get(j - 1)
            if pd:
                _add_counts(w, pd)
            self._win = vals = w
        else:
            pds = []
            q = lo
            while q < j:
                pd = bp.get(q)
                if pd:
                    pds.append(pd)
                q += 1.0
            if len(pds) == 1:
                vals = pds[0]
            else:
                vals = dict(pds[0])
                merge = self.adapter.merge
                get = vals.get
                for pd in pds[1:]:
                    for k, a in pd.items():
                        prev = get(k, _MISSING)
                        vals[k] = a if prev is _MISSING else merge(prev, a)
        resume = self.resume
        if resume and j >= self._resume_max:
            resume.clear()
            self.restored_panes.clear()
        if resume:  # skip a key only where this window fired before the restore for it
            rp = self.restored_panes
            vals = {k: v for k, v in vals.items() if resume.get(k, _NEG_INF) <= j
                    or not any(lo <= q < j for q in rp.get(k, ()))}
        if self._plain:
            emitted = [(k, start, end, v) for k, v in vals.items()]
        else:
            result = self.adapter.result
            emitted = []
            for k, acc in vals.items():
                v = result(k, start, end, acc)
                if v is not _SKIP:
                    emitted.append((k, start, end, v))
        self._out.extend(emitted)
        self._out_ts.extend([math.nextafter(end, _NEG_INF)] * len(emitted))
        if self._count:  # the oldest pane leaves: the counts are ready for window j + 1
            w = self._win
            assert w is not None
            old = bp.get(lo)
            if old:
                for k, a in old.items():
                    c = w[k] - a
                    if c:
                        w[k] = c
                    else:
                        del w[k]
            self._win_next = j + 1.0

    # --- checkpoints ---------------------------------------------------------------------
    def snapshot(self, checkpoint_id: int, savepoint: bool = False) -> Any:
        if not self._fast:
            return super().snapshot(checkpoint_id, savepoint)
        store = self.store
        if isinstance(store, TimerQueue):  # the memory store: list the timers directly
            store.extra_event_timers = self._materialize(listed=True)
            try:
                return super().snapshot(checkpoint_id, savepoint)
            finally:
                store.extra_event_timers = None
        self._materialize(listed=False)
        try:
            return super().snapshot(checkpoint_id, savepoint)
        finally:  # the timers were for the snapshot only (listed in its sync phase)
            store.pop_due_event_timers(_INF)

    _snap_keys: set[Any] | frozenset[Any] = frozenset()

    def _materialize(self, listed: bool) -> list[tuple[float, Any]]:
        """Write the panes into the state table as ``PaneWindowOperator`` keeps them, with
        its timers: per key, the first window not fired yet, and with lateness each pane's
        cleanup (``listed``: returned as a list, else registered in the store). The copy
        is dropped at the next batch or watermark."""
        table = self.panes
        assert isinstance(table, _FastTable)
        tab, dirty = table.t, table.dirty
        tab.clear()
        for p in sorted(self.bp):
            for k, acc in self.bp[p].items():
                d = tab.get(k)
                if d is None:
                    tab[k] = {p: acc}
                else:
                    d[p] = acc
        if dirty is not None:  # changelog: every key written now or in the last snapshot
            dirty.update(self._snap_keys)
            dirty.update(tab)
            self._snap_keys = set(tab)
        store = self.store
        scope = store.scope
        listing: list[tuple[float, Any]] = []
        reg: Callable[[float], None] = store.register_event_timer
        if listed:
            def reg(t: float) -> None:  # listed instead of registered
                listing.append((t, k))
        slide, off, lat, clean = self.slide, self.offset, self.lateness, self.clean_after
        base = self.fired_j + 1.0
        resume = self.resume
        if listed and not resume and not lat:  # the same as the loop below, in bulk
            if base > _NEG_INF:
                bt = base * slide + off
                listing = [(bt, k) for k in tab]
            listing += [((p0 + 1.0) * slide + off, k) for k, d in tab.items()
                        if (p0 := next(iter(d))) + 1.0 > base]
            self._mirror = True
            return listing
        for k, d in tab.items():  # d's panes in time order
            scope.key = k
            b = base  # the key's first window not fired yet
            if resume:
                u = resume.get(k)
                if u is not None and u > b:
                    b = u
            if b > _NEG_INF:
                reg(b * slide + off)  # also marks where the firing was (see restore)
            first = next(iter(d)) + 1.0
            if first > b:
                reg(first * slide + off)
            if lat:
                for p in d:
                    reg((p + clean) * slide + off)
        self._mirror = True
        return listing

    def _drop_mirror(self) -> None:
        table = self.panes
        assert isinstance(table, _FastTable)
        table.t.clear()
        self._mirror = False

    def restore(self, states: list[Any], filter_keys: bool) -> None:
        super().restore(states, filter_keys)
        if not self._fast:
            return
        table = self.panes
        assert isinstance(table, _FastTable)
        tab = table.t
        slide, off, n = self.slide, self.offset, self.n
        first: dict[Any, float] = {}
        for t, k in self.store.pop_due_event_timers(_INF):
            j = float(round((t - off) / slide))
            if j < first.get(k, _INF):
                first[k] = j
        bp: dict[float, dict[Any, Any]] = {}
        resume: dict[Any, float] = {}
        restored: dict[Any, list[float]] = {}
        for k, d in tab.items():
            for p, acc in d.items():
                pd = bp.get(p)
                if pd is None:
                    pd = bp[p] = {}
                pd[k] = acc
            # the windows below the key's first timer that hold one of its restored panes
            # fired before (this operator's snapshots have a timer at the first window not
            # fired, as PaneWindowOperator's chain of timers has); no timer: all of them.
            # Windows below it without a restored pane of the key had no records of it:
            # one that arrives now (out of order, not late) must still fire there.
            resume[k] = first.get(k, max(d) + n + 1.0)
            restored[k] = list(d)
        self.bp, self.resume, self.restored_panes = bp, resume, restored
        self._resume_max = max(resume.values(), default=_NEG_INF)
        self.fired_j = _NEG_INF
        self._win = None
        if table.dirty is not None:
            self._snap_keys = set(tab)
        tab.clear()  # the panes are in bp now

    def _clean(self, wm: float) -> None:
        """Drop the panes all of whose windows are past their lateness."""
        slide, off, n, lat = self.slide, self.offset, self.n, self.lateness
        for p in [p for p in self.bp if (p + n) * slide + off + lat <= wm]:
            del self.bp[p]


def _add_counts(w: dict[Any, int], pd: dict[Any, int]) -> None:
    get = w.get
    for k, c in pd.items():
        w[k] = get(k, 0) + c
