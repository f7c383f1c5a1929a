"""State time-to-live over both backends: expired entries are invisible on read, cleaned
up while the operator runs, and dropped at restore; event-time TTL in a running flow."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.errors import ConfigurationError
from onceflow.state.memory import neutral
from onceflow.state.ttl import ttl_state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(backend: str, tmp: Path) -> Any:
    if backend == "rocksdb":
        return of.state.RocksDBBackend(local_dir=str(tmp / "rocks")).create(
            8, (0, 8), operator="op", owner="op-0")
    return of.state.MemoryBackend().create(8, (0, 8), operator="op")


def _handles(store: Any, clock: Clock, cleaners: dict[int, Any], ttl: Any = 10.0
             ) -> tuple[Any, Any, Any]:
    def mk(kind: str, name: str) -> Any:
        return ttl_state(store, kind, name, "dflt" if kind == "value" else None, ttl, clock,
                         clock, clock, cleaners, "operator 'op'")
    return mk("value", "v"), mk("list", "l"), mk("map", "m")


def isolated(fn: Any, *args: Any) -> Any:
    """Run ``fn`` in a fresh (spawned) interpreter when it opens RocksDB: RocksDB's
    background threads do not survive ``fork``, so the pytest process, which later forks
    the workers of other tests' jobs, must never open a database itself."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result(timeout=240)


def _run(fn: Any, tmp_path: Path, backend: str) -> None:
    if backend == "rocksdb":
        isolated(fn, tmp_path, backend)
    else:
        fn(tmp_path, backend)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_expired_entries_are_invisible_and_cleaned_up(tmp_path: Path, backend: str) -> None:
    _run(_expired_case, tmp_path, backend)


def _expired_case(tmp_path: Path, backend: str) -> None:
    store = _store(backend, tmp_path)
    clock = Clock()
    v, lst, m = _handles(store, clock, {})
    for key in ("a", "b"):
        store.scope.key = key
        v.update(1)
        lst.add("x")
        m.put("k1", 1)
    clock.now += 5
    store.scope.key = "a"
    lst.add("y")  # written later: expires later
    m.put("k2", 2)
    assert (v.value(), lst.get(), sorted(m.items())) == (1, ["x", "y"], [("k1", 1), ("k2", 2)])
    clock.now += 6  # 11 s after the first writes, 6 after the second
    assert v.value() == "dflt"
    assert lst.get() == ["y"]
    assert m.get("k1") is None and m.get("k2") == 2 and not m.contains("k1")
    if backend == "memory":  # key "b" was never read after expiry: cleaned up anyway
        assert all("b" not in t for t in store.tables.values()), store.tables
    store.scope.key = "b"
    assert (v.value(), lst.get(), m.items()) == ("dflt", [], [])
    clock.now += 100
    store.scope.key = "a"
    assert (v.value(), lst.get(), m.is_empty()) == ("dflt", [], True)
    if backend == "memory":
        assert store.size() == 0, store.tables
    store.close()


def test_cleanup_runs_without_reads_of_the_expired_keys(tmp_path: Path) -> None:
    store = _store("memory", tmp_path)
    clock = Clock()
    cleaners: dict[int, Any] = {}
    v, _, _ = _handles(store, clock, cleaners)
    for k in range(100):
        store.scope.key = k
        v.update(k)
    assert len(store.tables["v"]) == 100
    clock.now += 11
    store.scope.key = "other"
    v.update(0)  # any access runs the cleanup of what is due
    assert list(store.tables["v"]) == ["other"]
    assert cleaners[(id(store), False)].cleaned == 100
    assert store.scope.key == "other"


def test_the_cleanup_queue_holds_one_entry_per_key_however_often_it_is_written(
        tmp_path: Path) -> None:
    store = _store("memory", tmp_path)
    clock = Clock()
    cleaners: dict[int, Any] = {}
    v, _, _ = _handles(store, clock, cleaners)
    for i in range(1000):
        store.scope.key = i % 3
        clock.now += 0.001
        v.update(i)
    cleaner = cleaners[(id(store), False)]
    assert len(cleaner.heap) == 3
    clock.now += 9.5  # the first hints are due, but the keys were written since: kept
    store.scope.key = 0
    assert v.value() == 999  # key 0 was last written with i = 999
    assert len(store.tables["v"]) == 3 and len(cleaner.heap) == 3
    clock.now += 1.0
    v.value()
    assert store.tables.get("v", {}) == {} and cleaner.heap == []


def test_update_on_read_extends_the_life(tmp_path: Path) -> None:
    store = _store("memory", tmp_path)
    clock = Clock()
    v, _, _ = _handles(store, clock, {}, ttl=of.StateTtl(10.0, update_on_read=True))
    store.scope.key = "a"
    v.update("x")
    for _ in range(5):
        clock.now += 8
        assert v.value() == "x"
    clock.now += 11
    assert v.value() == "dflt"


@pytest.mark.parametrize("read", ["items", "keys", "values"])
def test_update_on_read_extends_the_life_of_map_entries_read_in_bulk(tmp_path: Path,
                                                                      read: str) -> None:
    store = _store("memory", tmp_path)
    clock = Clock()
    _, _, m = _handles(store, clock, {}, ttl=of.StateTtl(10.0, update_on_read=True))
    store.scope.key = "a"
    m.put("x", 1)
    for _ in range(3):
        clock.now += 8
        assert getattr(m, read)() == {"items": [("x", 1)], "keys": ["x"], "values": [1]}[read]
    clock.now += 8
    assert not m.is_empty()  # asks whether any entry lives; reads none: restarts no time
    clock.now += 3  # 11 s after the last read of the entry
    assert m.items() == []


def test_an_earlier_expiry_of_a_queued_key_is_cleaned_up_at_its_own_time(
        tmp_path: Path) -> None:
    """Event time: a key written at t=100 (expires at 110), then by an out-of-order record
    at t=95 (expires at 105). Once the watermark passes 105, the next access to TTL state
    removes the earlier entry, though the key was queued first for 110."""
    store = _store("memory", tmp_path)
    watermark, event_time = Clock(), Clock()
    cleaners: dict[int, Any] = {}
    lst = ttl_state(store, "list", "l", None, of.StateTtl(10.0, of.TimeDomain.EVENT_TIME),
                    watermark, watermark, event_time, cleaners, "operator 'op'")
    watermark.now = 90.0
    store.scope.key = "k"
    for t in (100.0, 95.0):
        event_time.now = t
        lst.add(f"k@{t}")
    watermark.now = 107.0
    store.scope.key = "other"
    event_time.now = 107.0
    lst.add("o")  # any access runs what is due
    assert [v for _, v in store.tables["l"]["k"]] == ["k@100.0"]
    watermark.now = 111.0
    lst.add("o2")
    assert "k" not in store.tables["l"]
    assert cleaners[(id(store), True)].cleaned == 2


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_restore_drops_what_expired(tmp_path: Path, backend: str) -> None:
    _run(_restore_case, tmp_path, backend)


def _restore_case(tmp_path: Path, backend: str) -> None:
    store = _store(backend, tmp_path)
    clock = Clock()
    v, lst, _ = _handles(store, clock, {})
    for k in range(20):
        store.scope.key = k
        v.update(k)
        lst.add(k)
    clock.now += 5
    for k in range(10):
        store.scope.key = k
        v.update(-k)  # these 10 live 5 s longer
    snap = pickle.loads(pickle.dumps(neutral(_savepoint(store), "op")))
    store.close()
    clock.now += 7  # 12 s after the first writes: keys 10..19 expired, 0..9 live
    fresh = _store(backend, tmp_path / "again")
    v2, lst2, _ = _handles(fresh, clock, {})
    fresh.restore([snap], False)
    fresh.scope.key = 3
    assert v2.value() == -3  # the first access scans the restored state
    assert lst2.get() == []  # list element written 12 s ago: expired
    if backend == "memory":
        assert sorted(fresh.tables["v"]) == list(range(10))
        assert fresh.tables.get("l", {}) == {}
    else:
        for k in range(10, 20):
            fresh.scope.key = k
            assert v2.value() == "dflt"
    fresh.close()


def _savepoint(store: Any) -> dict[str, Any]:
    """The store's backend-neutral savepoint, as a checkpoint reader would assemble it."""
    snap = store.snapshot(1, savepoint=True)
    if isinstance(snap, dict):
        return snap
    return {**snap.sync_state, **snap.run(None)}  # RocksDB: the export's tables


def test_bad_ttl_settings_name_the_state() -> None:
    store = of.state.MemoryBackend().create(8, (0, 8), operator="op")
    for bad in (0, -1.0, "10", float("inf"), True):
        with pytest.raises(ConfigurationError, match="state 'x': ttl must be"):
            ttl_state(store, "value", "x", None, bad, Clock(), Clock(), Clock(), {},
                      "operator 'op'")
    with pytest.raises(ConfigurationError, match="update_on_read must be True or False"):
        ttl_state(store, "value", "x", None, of.StateTtl(5.0, update_on_read="yes"),  # type: ignore[arg-type]
                  Clock(), Clock(), Clock(), {}, "operator 'op'")


class LastSeen(of.KeyedProcessFunction):
    """Emits (key, previous value or None) per record; the value has a 10 s event-time TTL."""

    def open(self, ctx: of.RuntimeContext) -> None:
        ttl = of.StateTtl(10.0, time_domain=of.TimeDomain.EVENT_TIME)
        self.last = ctx.value_state("last", ttl=ttl)

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        prev = self.last.value()
        self.last.update(value[1])
        return [(value[0], value[1], prev)]


def test_event_time_ttl_in_a_flow_is_deterministic(tmp_path: Path) -> None:
    # one record per key every 4 s, with a 30 s gap for key "a" at t = 20..50
    recs = [("a", float(t)) for t in (0, 4, 8, 12, 16, 50, 54)] + \
           [("b", float(t)) for t in range(0, 60, 4)]
    recs.sort(key=lambda r: r[1])
    flow = of.Flow("ttl-flow", parallelism=2, batch_size=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[1])
    (flow.source(of.sources.Collection(recs), watermarks=ws, parallelism=1)
         .key_by(lambda r: r[0]).process(LastSeen())
         .sink(of.sinks.FileSink(tmp_path / "o")))
    flow.run()
    got = sorted(map(tuple, of.sinks.read_committed(tmp_path / "o")))
    want = []
    for k in ("a", "b"):
        ts = [t for kk, t in recs if kk == k]
        want += [(k, t, (p if t - p <= 10.0 else None) if p is not None else None)
                 for p, t in zip([None, *ts], ts, strict=False)]
    assert got == sorted(want, key=lambda r: (r[0], r[1]))
    assert ("a", 50.0, None) in got  # forgotten after the gap


def test_keys_equal_in_python_but_of_other_types_are_cleaned_up_each(tmp_path: Path) -> None:
    """RocksDB keeps 1, 1.0 and True apart: each one's expired entry must be queued and
    removed (the queue had taken them for one key and cleaned only the first)."""
    assert isolated(_mixed_keys_case, tmp_path) == 3


def _mixed_keys_case(tmp_path: Path) -> int:
    store = _store("rocksdb", tmp_path)
    clock = Clock()
    cleaners: dict[int, Any] = {}
    v, _, _ = _handles(store, clock, cleaners)
    for key in (1, 1.0, True):
        store.scope.key = key
        v.update(str(key))
    clock.now += 11
    store.scope.key = "other"
    v.update(0)  # runs the cleanup of what is due
    n = cleaners[(id(store), False)].cleaned
    store.close()
    return int(n)


def test_a_savepoint_refuses_rocksdb_keys_that_a_dictionary_would_merge(tmp_path: Path
                                                                        ) -> None:
    msg = isolated(_colliding_export_case, tmp_path)
    assert "holds keys True (bool) and 1 (int), which are equal in Python" in msg, msg
    assert "Make key_by return one type" in msg


def _colliding_export_case(tmp_path: Path) -> str:
    from onceflow.errors import OnceflowError

    store = _store("rocksdb", tmp_path)
    v = store.value_state("v", None)
    for key in (1, True):
        store.scope.key = key
        v.update(str(key))
    try:
        _savepoint(store)
    except OnceflowError as e:
        return str(e)
    finally:
        store.close()
    return "no error"


@pytest.mark.parametrize("event_at", [0.0, 1.7e12], ids=["seconds-from-0", "epoch-millis"])
def test_processing_and_event_time_ttl_states_of_one_operator_keep_their_own_clocks(
        event_at: float) -> None:
    """Both domains shared one expiry queue, cleaned up to whichever clock's "now" the
    accessed state had: a wall-clock access removed event-time entries (expiring at event
    time 10), an access at a watermark in epoch milliseconds removed processing-time ones
    (live for an hour of wall clock). Removed, not only hidden: the loss reached
    checkpoints."""
    store = of.state.MemoryBackend().create(8, (0, 8), operator="op")
    wall, watermark, event_time = Clock(), Clock(), Clock()
    wall.now, watermark.now, event_time.now = 1.79e9, event_at, event_at
    cleaners: dict[Any, Any] = {}
    e = ttl_state(store, "value", "e", None,
                  of.StateTtl(10.0, time_domain=of.TimeDomain.EVENT_TIME), wall, watermark,
                  event_time, cleaners, "operator 'op'")
    p = ttl_state(store, "value", "p", None, 3600.0, wall, watermark, event_time, cleaners,
                  "operator 'op'")
    store.scope.key = "u"
    e.update("event")
    p.update("wall")
    for step in range(1, 4):  # the next records: each touches both, event time moving on
        wall.now += 1.0
        watermark.now = event_time.now = event_at + step
        assert p.value() == "wall"
        assert e.value() == "event"
        e.update("event")
        p.update("wall")
    watermark.now = event_at + 100.0  # the event-time entry's time has come; not the other's
    assert e.value() is None
    assert p.value() == "wall"
    wall.now += 7200.0
    assert p.value() is None


def test_a_bad_state_ttl_is_refused_where_it_is_written() -> None:
    for bad in (-5.0, 0, float("nan")):
        with pytest.raises(ConfigurationError, match=r"of\.StateTtl: ttl must be a number"):
            of.StateTtl(bad)
