"""Timers of the RocksDB backend live in RocksDB (issue 13 item 5): they pop in time order
like the memory store's heap, survive snapshots and rescales with their key groups, restore
from snapshots written when they were in the head, cross savepoints between backends, and a
million of them leave the snapshot head small and the process far smaller than the heap.

Every RocksDB store runs in a spawned interpreter (RocksDB's threads do not survive fork).
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.cli import _timer_count
from onceflow.graph.keygroups import key_group, key_group_range
from onceflow.state import rocksdb_timers
from onceflow.state.backend import SnapshotTarget
from onceflow.state.memory import KeyedStore
from onceflow.state.rocksdb import RocksDBStore, export_neutral
from onceflow.state.rocksdb_timers import decode_time, encode_time

SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261201"))
MP = 16


def isolated(fn: Any, *args: Any) -> Any:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result(timeout=600)


def rocks_store(tmp: Path, kg_range: tuple[int, int], mp: int = MP, layer_entries: int = 5,
                owner: str = "t-0") -> RocksDBStore:
    cfg = of.state.RocksDBBackend(local_dir=str(tmp / "local"), layer_entries=layer_entries)
    return RocksDBStore(cfg, mp, kg_range, operator="t", owner=owner, incremental=True,
                        flow_dir=str(tmp))


_counter = iter(range(1, 1 << 30))


def checkpoint(store: RocksDBStore, tmp: Path, savepoint: bool = False) -> dict[str, Any]:
    """What restore gets back from storage for one subtask (as ``read_state`` builds it)."""
    cid = next(_counter)
    d = tmp / f"chk-{cid}"
    d.mkdir(parents=True)
    snap = store.snapshot(cid, savepoint=savepoint)
    head = pickle.loads(pickle.dumps(snap.sync_state))
    manifest = snap.run(SnapshotTarget(cid, str(d), None if savepoint else str(tmp / "shared"),
                                       f"{store.owner}-{cid}"))
    if "tables" in manifest:
        return {**head, "tables": manifest["tables"], "_base": str(d)}
    store.notify_complete(cid)
    return {**head, "manifest": manifest, "_base": str(d)}


def mem_snapshot(store: KeyedStore) -> dict[str, Any]:
    snap = store.snapshot()
    assert isinstance(snap, dict)
    return pickle.loads(pickle.dumps(snap))


def normalized(due: list[tuple[float, Any]]) -> list[tuple[float, str]]:
    """Timers at the same time may fire in any order (memory: registration order; RocksDB:
    key bytes): compare as time-sorted multisets, after checking the time order."""
    times = [t for t, _ in due]
    assert times == sorted(times), f"timers did not pop in time order: {times}"
    return sorted((float(t), repr(k)) for t, k in due)


# --- the encoding ------------------------------------------------------------------------
def test_time_encoding_sorts_like_the_numbers() -> None:
    rng = random.Random(SEED)
    values = [0.0, -0.0, 1.0, -1.0, 1e-300, -1e-300, 1e300, -1e300, float("inf"),
              float("-inf"), 1.5, 2, -7, *(rng.uniform(-1e9, 1e9) for _ in range(2000))]
    enc = sorted(values, key=encode_time)
    assert enc == sorted(values)
    for v in values:
        assert decode_time(encode_time(v)) == v
    assert encode_time(-0.0) == encode_time(0.0)


# --- differential: the same operations on both backends -----------------------------------
def _keys(rng: random.Random) -> list[Any]:
    return [*range(40), *(f"k{i}" for i in range(20)), ("t", 1), -3]


def _random_op(rng: random.Random, keys: list[Any]) -> tuple[Any, ...]:
    r = rng.random()
    t = rng.choice([rng.randrange(-4, 60) / 2, rng.randrange(0, 8)])
    if r < 0.30:
        return ("reg", rng.choice("pe"), rng.choice(keys), t)
    if r < 0.45:
        return ("del", rng.choice("pe"), rng.choice(keys), t)
    if r < 0.55:
        return ("pop", rng.choice("pe"), rng.randrange(-4, 64) / 2)
    if r < 0.65:
        return ("peek", rng.choice("pe"))
    if r < 0.75:
        return ("batch",)
    if r < 0.78:
        return ("count",)
    if r < 0.80:
        return ("snap",)
    return ("reg", rng.choice("pe"), rng.choice(keys), t)


def _do(store: Any, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind in ("reg", "del"):
        _, d, key, t = op
        store.scope.key = key
        name = ("register_" if kind == "reg" else "delete_") + ("timer" if d == "p"
                                                                else "event_timer")
        getattr(store, name)(t)
        return None
    if kind == "pop":
        due = store.pop_due_timers(op[2]) if op[1] == "p" else store.pop_due_event_timers(op[2])
        return normalized(due)
    if kind == "peek":
        return store.next_timer() if op[1] == "p" else store.next_event_timer()
    if kind == "batch":
        store.after_batch()
        return None
    if kind == "count":
        return store.timer_count()
    raise AssertionError(op)


def _listing(store: Any) -> dict[str, list[tuple[float, str]]]:
    snap = store.timers_snapshot()
    return {name: sorted((float(t), repr(k)) for t, k in ts) for name, ts in snap.items()}


def _differential(tmp: Path, cache: int, seed: int) -> tuple[int, int]:
    """Random register/delete/pop/peek on both domains, with tiny write layers (frozen and
    applied often), checkpoints, and a rescale 2 -> 3 -> 1 through snapshots; each store
    gets the operations on the keys of its key-group range."""
    rocksdb_timers.CACHE = cache  # tiny caches: refills and trims happen all the time
    rng = random.Random(seed)
    keys = _keys(rng)
    checked = fired = 0
    mem_snaps: list[dict[str, Any]] = []
    rocks_snaps: list[dict[str, Any]] = []
    for phase, parallelism in enumerate((2, 3, 1)):
        ranges = [key_group_range(i, parallelism, MP) for i in range(parallelism)]
        mems = [KeyedStore(MP, r) for r in ranges]
        rocks = [rocks_store(tmp, r, owner=f"p{phase}-{i}") for i, r in enumerate(ranges)]
        try:
            for m, r in zip(mems, rocks, strict=True):
                if mem_snaps:
                    m.restore(mem_snaps, filter_by_range=True)
                    r.restore(rocks_snaps, filter_by_range=True)
                assert _listing(r) == _listing(m), f"phase {phase}: restored timers differ"
                assert r.timer_count() == m.timer_count()
            for i in range(2500):
                op = _random_op(rng, keys)
                if op[0] in ("reg", "del"):
                    sub = next(j for j, (lo, hi) in enumerate(ranges)
                               if lo <= key_group(op[2], MP) < hi)
                    targets = [sub]
                else:
                    targets = list(range(parallelism))
                for j in targets:
                    if op[0] == "snap":
                        checkpoint(rocks[j], tmp)  # freezes the layer mid-run
                        continue
                    got, want = _do(rocks[j], op), _do(mems[j], op)
                    assert got == want, f"phase {phase} op {i} {op} on subtask {j}"
                    checked += 1
                    if op[0] == "pop":
                        fired += len(got)
            mem_snaps = [mem_snapshot(m) for m in mems]
            rocks_snaps = [checkpoint(r, tmp) for r in rocks]
            for m, r, rs in zip(mems, rocks, rocks_snaps, strict=True):
                assert _listing(r) == _listing(m)
                assert rs["timer_count"] == m.timer_count()
                assert "timers" not in rs and "event_timers" not in rs  # not in the head
        finally:
            for r in rocks:
                r.close()
    return checked, fired


def test_random_timer_operations_match_the_memory_store_across_a_rescale(
        tmp_path: Path) -> None:
    for sub, cache, seed in (("a", 2, SEED), ("b", 128, SEED + 1)):
        checked, fired = isolated(_differential, tmp_path / sub, cache, seed)
        assert checked > 5000 and fired > 1000, (checked, fired)


def _timers_registered_while_firing(tmp: Path) -> None:
    """Timers registered below the current one fire in the same pop loop (as ProcessOp's
    ``_fire`` does), and deleted timers in a refilled group stay deleted."""
    rocksdb_timers.CACHE = 2
    s = rocks_store(tmp, (0, MP), layer_entries=3)
    m = KeyedStore(MP, (0, MP))
    try:
        for st in (s, m):
            for k in range(30):
                st.scope.key = k
                st.register_event_timer(float(k))
                st.register_event_timer(float(k) + 100)
            st.after_batch()
            for k in range(0, 30, 3):
                st.scope.key = k
                st.delete_event_timer(float(k) + 100)
        checkpoint(s, tmp)
        s.after_batch()
        fired: dict[int, list[Any]] = {}
        for idx, st in enumerate((s, m)):
            out = []
            due = st.pop_due_event_timers(150.0)
            while due:
                out += normalized(due)  # each pop in time order
                for when, key in due:
                    if when < 50:  # each early timer registers one more, inside the range
                        st.scope.key = key
                        st.register_event_timer(when + 60.5)
                due = st.pop_due_event_timers(150.0)
            fired[idx] = sorted(out)
            assert st.timer_count() == 0
            assert st.next_event_timer() is None
        assert fired[0] == fired[1]
        assert len(fired[0]) == 30 + 20 + 30
    finally:
        s.close()


def test_timers_registered_while_firing_fire_too(tmp_path: Path) -> None:
    isolated(_timers_registered_while_firing, tmp_path)


def _below_a_refilled_groups_bound(tmp: Path) -> None:
    """A key group whose cache ran empty is refilled from a lower bound (skipping the
    deletions of fired timers); a timer registered below that bound, and already written
    to RocksDB and gone from the layers, is still found."""
    rocksdb_timers.CACHE = 2
    s = rocks_store(tmp, (0, MP), layer_entries=1000)
    try:
        s.scope.key = "k"
        for t in range(10, 20):
            s.register_timer(float(t))
        checkpoint(s, tmp)
        s.after_batch()  # all in RocksDB, the layers dropped
        s.scope.key = "k"
        s.delete_timer(10.0)
        s.delete_timer(11.0)  # the cache (10, 11) is empty: the group must be read again
        s.register_timer(5.0)
        s.register_timer(10.5)
        checkpoint(s, tmp)
        s.after_batch()
        assert not s.frozen and not s.cur.data
        assert s.next_timer() == 5.0
        due = s.pop_due_timers(100.0)
        assert [t for t, _ in due] == [5.0, 10.5, *map(float, range(12, 20))]
        assert s.timer_count() == 0
    finally:
        s.close()


def test_timer_below_a_refilled_groups_bound_is_found(tmp_path: Path) -> None:
    isolated(_below_a_refilled_groups_bound, tmp_path)


def _many_key_groups(tmp: Path) -> None:
    """With 32,768 key groups in one subtask the caches stay small (a few entries each)
    after a restore, and every timer still pops in order."""
    mp = 32768
    s = rocks_store(tmp, (0, mp), mp=mp, layer_entries=100_000, owner="many")
    try:
        for k in range(3000):
            s.scope.key = k
            s.register_event_timer(float(k % 97))
            s.register_event_timer(float(k % 89) + 0.5)
        snap = checkpoint(s, tmp)
    finally:
        s.close()
    r = rocks_store(tmp, (0, mp), mp=mp, owner="many-again")
    try:
        r.restore([snap], filter_by_range=False)
        assert r.timer_count() == 6000
        assert r.next_event_timer() == 0.0
        assert max(len(g.cache) for g in r._etimers.groups.values()) <= 4
        out: list[float] = []
        for wm in range(0, 100, 7):
            out += [t for t, _ in r.pop_due_event_timers(float(wm))]
        assert out == sorted(out) and len(out) == 6000
    finally:
        r.close()


def test_caches_stay_small_with_many_key_groups(tmp_path: Path) -> None:
    isolated(_many_key_groups, tmp_path)


# --- compatibility -----------------------------------------------------------------------
def _old_format(tmp: Path) -> None:
    """A RocksDB snapshot from before this change: timers in the head, none in RocksDB."""
    old = rocks_store(tmp, (0, MP), owner="old")
    try:
        v = old.value_state("v")
        for k in range(50):
            old.scope.key = k
            v.update(k * 10)
        snap = checkpoint(old, tmp)
    finally:
        old.close()
    for k in ("timer_counts", "timer_count"):
        del snap[k]
    snap["timers"] = [(float(k), k) for k in range(0, 50, 2)]
    snap["event_timers"] = [(float(k) + 0.5, k) for k in range(0, 50, 5)]
    want = {"timers": sorted((float(k), repr(k)) for k in range(0, 50, 2)),
            "event_timers": sorted((float(k) + 0.5, repr(k)) for k in range(0, 50, 5))}

    # same parallelism, and rescaled to 2
    for ranges in ([(0, MP)], [(0, MP // 2), (MP // 2, MP)]):
        got: dict[str, list[Any]] = {"timers": [], "event_timers": []}
        for i, r in enumerate(ranges):
            s = rocks_store(tmp, r, owner=f"new-{len(ranges)}-{i}")
            try:
                s.restore([snap], filter_by_range=len(ranges) > 1)
                for name, ts in _listing(s).items():
                    got[name] += ts
                assert s.value_state("v").value() is None  # no key in scope
                # registered into RocksDB: the next checkpoint has them, its head does not
                again = checkpoint(s, tmp)
                assert "timers" not in again
                s2 = rocks_store(tmp, r, owner=f"again-{len(ranges)}-{i}")
                try:
                    s2.restore([again], filter_by_range=False)
                    assert _listing(s2) == _listing(s)
                    due = s2.pop_due_event_timers(100.0)
                    assert normalized(due) == [t for t in want["event_timers"]
                                               if r[0] <= key_group(int(t[1]), MP) < r[1]]
                finally:
                    s2.close()
            finally:
                s.close()
        assert {k: sorted(v) for k, v in got.items()} == want

    # an old RocksDB checkpoint restores into the memory backend with its timers
    m = KeyedStore(MP, (0, MP))
    m.restore([snap], filter_by_range=False)
    assert _listing(m) == want
    assert export_neutral(snap, "t")["tables"]["v"] == {k: k * 10 for k in range(50)}


def test_snapshot_with_timers_in_the_head_restores_them_into_rocksdb(tmp_path: Path) -> None:
    isolated(_old_format, tmp_path)


def _savepoint_round_trip(tmp: Path) -> None:
    """memory -> RocksDB (rescaled to 2) -> memory (rescaled to 1), through savepoints; and a
    RocksDB checkpoint read by the memory backend."""
    rng = random.Random(SEED)
    mem = KeyedStore(MP, (0, MP))
    v = mem.value_state("v")
    for k in range(300):
        mem.scope.key = k
        v.update(k)
        if rng.random() < 0.7:
            mem.register_event_timer(rng.randrange(100) + 0.25)
        if rng.random() < 0.4:
            mem.register_timer(rng.randrange(100) * 1.0)
    want = _listing(mem)
    assert want["timers"] and want["event_timers"]
    sp1 = mem_snapshot(mem)
    assert _timer_count(sp1) == mem.timer_count()

    ranges = [(0, MP // 2), (MP // 2, MP)]
    sps, cks = [], []
    for i, r in enumerate(ranges):
        s = rocks_store(tmp, r, owner=f"r{i}", layer_entries=100_000)
        try:
            s.restore([sp1], filter_by_range=True)
            sps.append(checkpoint(s, tmp, savepoint=True))
            cks.append(checkpoint(s, tmp))
        finally:
            s.close()
    assert sum(_timer_count(sp) for sp in sps) == mem.timer_count()
    assert sum(_timer_count(ck) for ck in cks) == mem.timer_count()
    for via in (sps, cks):
        back = KeyedStore(MP, (0, MP))
        back.restore(via, filter_by_range=True)
        assert _listing(back) == want
        assert back.tables["v"] == mem.tables["v"]
        # and once more into RocksDB from the neutral savepoint, same parallelism
        s = rocks_store(tmp, (0, MP), owner="r-back")
        try:
            s.restore([mem_snapshot(back)], filter_by_range=False)
            assert _listing(s) == want
            due = s.pop_due_event_timers(1000.0) + s.pop_due_timers(1000.0)
            assert len(due) == mem.timer_count()
        finally:
            s.close()


def test_savepoint_round_trip_memory_rocksdb_memory_keeps_timers(tmp_path: Path) -> None:
    isolated(_savepoint_round_trip, tmp_path)


# --- a million timers --------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _million(tmp: Path, backend: str, n: int) -> dict[str, float]:
    """``n`` keys with one event timer each (as a window operator registers them, one
    register call per record, 4 records per key), one checkpoint, then every timer fired in
    order; returns the memory and time it took."""
    gc.collect()
    base = _rss_mb()
    store: Any = (KeyedStore(128, (0, 128)) if backend == "memory"
                  else RocksDBStore(of.state.RocksDBBackend(local_dir=str(tmp / "local")), 128,
                                    (0, 128), operator="big", owner="big-0", incremental=True,
                                    flow_dir=str(tmp)))
    try:
        scope = store.scope
        t0 = time.perf_counter()
        for k in range(n):
            scope.key = k
            for _ in range(4):
                store.register_event_timer(float(k % 1000) + 10.0)
            if k % 1000 == 999:
                store.after_batch()
        reg_s = time.perf_counter() - t0
        head_bytes = 0.0
        if backend == "rocksdb":
            snap = checkpoint(store, tmp)
            head_bytes = len(pickle.dumps({k: v for k, v in snap.items()
                                           if k not in ("manifest", "_base")}))
            assert snap["timer_count"] == n
        store.after_batch()
        gc.collect()
        rss = _rss_mb() - base
        assert store.timer_count() == n
        t0 = time.perf_counter()
        fired = 0
        last = float("-inf")
        for wm in range(0, 1100, 50):
            due = store.pop_due_event_timers(float(wm))
            for when, _ in due:
                assert when >= last
                last = when
            fired += len(due)
            store.after_batch()
        pop_s = time.perf_counter() - t0
        assert fired == n and store.timer_count() == 0
        return {"rss_mb": rss, "register_s": reg_s, "pop_s": pop_s, "head_bytes": head_bytes}
    finally:
        store.close()


@pytest.mark.timeout(900)  # about a minute here; several under heavy load
def test_a_million_keys_with_a_timer_each_fit_in_rocksdb(tmp_path: Path) -> None:
    """A million keys: fewer would not show it (RocksDB's own memtables and block cache
    take about 50 MB however few keys there are)."""
    n = 1_000_000
    rocks = isolated(_million, tmp_path, "rocksdb", n)
    mem = isolated(_million, tmp_path, "memory", n)
    print(f"\n{n:,} keys with one event timer each (4 registers per key):"
          f"\n  rocksdb: {rocks}\n  memory:  {mem}")
    assert rocks["head_bytes"] < 1 << 20, rocks
    assert rocks["rss_mb"] < mem["rss_mb"] / 2, (rocks, mem)


# --- a real job --------------------------------------------------------------------------
class WindowCount(of.KeyedProcessFunction):
    """Counts records per key and 10 s event-time window with an event-time timer at the
    window's end (registered for every record), plus a processing-time timer that is
    deleted again: a window operator's use of the timer service."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.counts = ctx.map_state("counts")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> None:
        end = (value[1] // 10 + 1) * 10.0
        self.counts.put(end, self.counts.get(end, 0) + 1)
        ts = ctx.timer_service
        ts.register_event_time_timer(end)
        ts.register_processing_time_timer(1e12 + value[1])
        ts.delete_processing_time_timer(1e12 + value[1])

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> list[Any]:
        n = self.counts.get(timestamp)
        self.counts.remove(timestamp)
        return [(ctx.current_key, timestamp, n)]


def test_a_job_with_event_timers_gives_the_same_windows_on_both_backends(
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    events = [(f"u{rng.randrange(50)}", i / 7 + rng.uniform(0, 3)) for i in range(6000)]
    results = {}
    for name, backend in (("memory", of.state.MemoryBackend()),
                          ("rocksdb", of.state.RocksDBBackend(
                              local_dir=str(tmp_path / "local"), layer_entries=300))):
        out = tmp_path / name
        flow = of.Flow(f"windows-{name}", parallelism=2, state_backend=backend)
        flow.enable_checkpointing(interval=0.2, storage=str(tmp_path / f"ckpt-{name}"))
        ws = (of.WatermarkStrategy.bounded_out_of_orderness(3.0)
              .with_timestamps(lambda e: e[1]))
        (flow.source(of.sources.Collection(events), watermarks=ws)
             .key_by(lambda e: e[0]).process(WindowCount(), name="windows")
             .sink(of.sinks.FileSink(str(out))))
        flow.run()
        results[name] = sorted(tuple(r) for r in of.sinks.read_committed(str(out)))
    want: dict[tuple[str, float], int] = {}
    for user, t in events:
        k = (user, (t // 10 + 1) * 10.0)
        want[k] = want.get(k, 0) + 1
    assert results["memory"] == sorted((u, e, n) for (u, e), n in want.items())
    assert results["rocksdb"] == results["memory"]


def _inspect_timers(path: str) -> int:
    """The timers of the window operator that ``onceflow inspect`` reports."""
    exe = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    assert exe, "the onceflow command is not installed next to this Python"
    doc = json.loads(subprocess.run([exe, "inspect", path, "--json"], check=True,
                                    capture_output=True, text=True).stdout)
    op = next(op for op in doc["operators"] if op["uid"] == "windows")
    return sum(int(s["timers"]) for s in op["subtasks"])


def _committed_files(out: Path) -> int:
    return len(list(out.glob("*.jsonl"))) if out.exists() else 0


def test_pending_windows_survive_savepoints_across_rescales_and_backends(
        tmp_path: Path) -> None:
    """The window job stopped mid-run with a savepoint on RocksDB at parallelism 2, resumed
    on the memory backend at 3, stopped again, and finished on RocksDB at 1: every window
    fires exactly once with its full count, so the pending timers crossed every step."""
    from onceflow.testing import throttle

    rng = random.Random(SEED)
    n = 20_000
    events = [(f"u{rng.randrange(200)}", i / 50 + rng.uniform(0, 3)) for i in range(n)]
    out, ck, sp = tmp_path / "out", str(tmp_path / "ck"), str(tmp_path / "sp")

    def flow(p: int, backend: Any) -> of.Flow:
        f = of.Flow("windows", parallelism=p, state_backend=backend)
        f.enable_checkpointing(interval=0.3, storage=ck)
        ws = (of.WatermarkStrategy.bounded_out_of_orderness(3.0)
              .with_timestamps(lambda e: e[1]))
        (f.source(of.sources.Collection(events), name="events", watermarks=ws)
          .map(throttle(3000), name="slow")
          .key_by(lambda e: e[0]).process(WindowCount(), name="windows")
          .sink(of.sinks.FileSink(str(out))))
        return f

    def rocks() -> Any:
        return of.state.RocksDBBackend(local_dir=str(tmp_path / "local"), layer_entries=500)

    restore = None
    for p, backend in ((2, rocks()), (3, of.state.MemoryBackend())):
        before = _committed_files(out)
        client = flow(p, backend).start(restore=restore)
        deadline = time.monotonic() + 120
        while _committed_files(out) <= before:
            assert time.monotonic() < deadline and not client.done(), "no progress"
            time.sleep(0.05)
        restore = client.stop_with_savepoint(sp, timeout=120)
        result = client.result(timeout=120)
        assert result.records_out("events") < n, "the job ended before the stop"
        assert _inspect_timers(restore) > 0, "no window was pending at the savepoint"
    flow(1, rocks()).run(restore=restore)
    want: dict[tuple[str, float], int] = {}
    for user, t in events:
        k = (user, (t // 10 + 1) * 10.0)
        want[k] = want.get(k, 0) + 1
    got = sorted(tuple(r) for r in of.sinks.read_committed(str(out)))
    assert got == sorted((u, e, c) for (u, e), c in want.items())
