"""List state of the RocksDB backend is one entry per element (issue 14: q4 buffers bids in
a list, and a list stored whole made every ``add`` read and rewrite the list): ``add``
reads nothing, the elements come back in append order across write layers, snapshots,
restores and rescales, and checkpoints of the older ``rocksdb-1`` layout (a list stored
whole under its key) still restore and keep their elements first.

Every RocksDB store runs in a spawned interpreter (RocksDB's threads do not survive fork).
"""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import onceflow as of
from onceflow.graph.keygroups import key_group
from onceflow.state import formats
from onceflow.state.backend import SnapshotTarget
from onceflow.state.memory import KeyedStore
from onceflow.state.rocksdb import FORMAT, RocksDBStore, _iter_raw, _split, export_neutral
from onceflow.state.rocksdb_timers import is_timer_key

MP = 16


def isolated(fn: Any, *args: Any) -> Any:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result(timeout=300)


def rocks_store(tmp: Path, kg_range: tuple[int, int], owner: str,
                layer_entries: int = 5) -> RocksDBStore:
    cfg = of.state.RocksDBBackend(local_dir=str(tmp / "local"), layer_entries=layer_entries)
    return RocksDBStore(cfg, MP, kg_range, operator="t", owner=owner, incremental=True,
                        flow_dir=str(tmp))


_counter = iter(range(1, 1 << 30))


def checkpoint(store: RocksDBStore, tmp: Path) -> dict[str, Any]:
    """What restore gets back from storage for one subtask (as ``read_state`` builds it)."""
    cid = next(_counter)
    d = tmp / f"chk-{cid}"
    d.mkdir(parents=True)
    snap = store.snapshot(cid)
    head = pickle.loads(pickle.dumps(snap.sync_state))
    manifest = snap.run(SnapshotTarget(cid, str(d), str(tmp / "shared"), f"{store.owner}-{cid}"))
    store.notify_complete(cid)
    return {**head, "manifest": manifest, "_base": str(d)}


def list_entries(store: RocksDBStore, name: str) -> dict[Any, int]:
    """Stored RocksDB entries of list state ``name``, counted per key."""
    out: dict[Any, int] = {}
    for k, _ in _iter_raw(store.db):
        if is_timer_key(k):
            continue
        n, kb, _rest = _split(k)
        if n == name:
            key = pickle.loads(kb)
            out[key] = out.get(key, 0) + 1
    return out


class _CountingDb:
    """The store's real database, with its reads counted."""

    def __init__(self, db: Any) -> None:
        self.db, self.reads = db, 0

    def get(self, key: bytes) -> Any:
        self.reads += 1
        return self.db.get(key)

    def iter(self, *args: Any) -> Any:
        self.reads += 1
        return self.db.iter(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


# --- appends are writes only -------------------------------------------------------------
def _add_reads_nothing(tmp: Path) -> None:
    s = rocks_store(tmp, (0, MP), "a", layer_entries=100_000)
    try:
        lst = s.list_state("l")
        s.scope.key = "k"
        lst.add_all(range(500))
        checkpoint(s, tmp)  # the 500 elements are in RocksDB now, the layer is empty
        assert list_entries(s, "l") == {"k": 500}  # one entry per element
        counting = _CountingDb(s.db)
        s.db = counting
        for i in range(500, 3000):
            lst.add(i)
        assert counting.reads == 0, "an append read the database"
        assert lst.get() == list(range(3000))
        assert counting.reads == 1  # a read is one prefix scan
        s.db = counting.db
        s.after_batch()
        assert s.size() == 1  # one list, however many elements
    finally:
        s.close()


def test_list_add_writes_one_entry_and_reads_nothing(tmp_path: Path) -> None:
    isolated(_add_reads_nothing, tmp_path)


# --- order across layers, clears, snapshots and restores ---------------------------------
def _order_survives_layers_and_restore(tmp: Path) -> None:
    s = rocks_store(tmp, (0, MP), "b", layer_entries=3)  # tiny layers: writes spill often
    mem = KeyedStore(MP, (0, MP))
    rl, ml = s.list_state("l"), mem.list_state("l")
    try:
        for i in range(400):
            key = i % 7
            s.scope.key = mem.scope.key = key
            if i % 53 == 0:
                rl.update([-i, -i - 1])
                ml.update([-i, -i - 1])
            elif i % 61 == 0:
                rl.clear()
                ml.clear()
            else:
                rl.add(i)
                ml.add(i)
            s.after_batch()
            assert rl.get() == ml.get(), f"step {i}"
            if i % 97 == 0:
                checkpoint(s, tmp)
        snap = checkpoint(s, tmp)
        assert snap["format"] == FORMAT == "rocksdb-2"
        assert snap["list_seq"] > 0
        want = {k: v for k, v in mem.tables["l"].items() if v}
        assert export_neutral(snap, "t")["tables"]["l"] == want
        # and into the memory backend, whose reads are the same
        back = KeyedStore(MP, (0, MP))
        back.restore([snap], filter_by_range=False)
        assert back.tables["l"] == want
    finally:
        s.close()


def test_list_order_survives_layers_clears_and_snapshots(tmp_path: Path) -> None:
    isolated(_order_survives_layers_and_restore, tmp_path)


def _appends_after_rescale_go_last(tmp: Path) -> None:
    """Two subtasks' snapshots merged into one (a rescale 2 -> 1), the one with the lower
    sequence numbers first: appends after the restore must sort after every restored
    element of either, so the counter is the maximum of all restored heads."""
    keys = list(range(40))
    low = [k for k in keys if key_group(k, MP) < MP // 2]
    high = [k for k in keys if key_group(k, MP) >= MP // 2]
    assert low and high
    a = rocks_store(tmp, (0, MP // 2), "lo")
    b = rocks_store(tmp, (MP // 2, MP), "hi")
    try:
        la, lb = a.list_state("l"), b.list_state("l")
        for k in low:
            a.scope.key = k
            la.add(("a", k))
        for r in range(50):  # many more appends: higher sequence numbers
            for k in high:
                b.scope.key = k
                lb.add(("b", k, r))
        sa, sb = checkpoint(a, tmp), checkpoint(b, tmp)
        assert sa["list_seq"] < sb["list_seq"]
    finally:
        a.close()
        b.close()
    merged = rocks_store(tmp, (0, MP), "merged")
    try:
        merged.restore([sa, sb], filter_by_range=True)
        lm = merged.list_state("l")
        for k in keys:
            merged.scope.key = k
            lm.add("new")
        for k in low:
            merged.scope.key = k
            assert lm.get() == [("a", k), "new"]
        for k in high:
            merged.scope.key = k
            assert lm.get() == [*(("b", k, r) for r in range(50)), "new"]
    finally:
        merged.close()
    # a memory snapshot restored into RocksDB: its lists become elements, appends go last
    mem = KeyedStore(MP, (0, MP))
    ml = mem.list_state("l")
    for k in keys:
        mem.scope.key = k
        ml.add_all([k, k + 1])
    msnap = pickle.loads(pickle.dumps(mem.snapshot()))
    r = rocks_store(tmp, (0, MP), "from-memory")
    try:
        r.restore([msnap], filter_by_range=False)
        rl = r.list_state("l")
        assert list_entries(r, "l") == {k: 2 for k in keys}
        for k in keys:
            r.scope.key = k
            rl.add("new")
            assert rl.get() == [k, k + 1, "new"]
    finally:
        r.close()


def test_appends_after_a_rescale_restore_sort_after_the_restored_elements(
        tmp_path: Path) -> None:
    isolated(_appends_after_rescale_go_last, tmp_path)


# --- the rocksdb-1 layout ----------------------------------------------------------------
def _old_layout(tmp: Path) -> None:
    """A ``rocksdb-1`` checkpoint: each list one pickled Python list under its key."""
    old = rocks_store(tmp, (0, MP), "old")
    try:
        old.kinds["l"] = "list"
        hdr = bytes([1]) + b"l"
        for k in range(10):
            old.scope.key = k
            old.db.put(old.base(hdr), pickle.dumps([k, "x"], protocol=5))
        snap = checkpoint(old, tmp)
    finally:
        old.close()
    snap["format"] = "rocksdb-1"
    del snap["list_seq"]
    assert export_neutral(snap, "t")["tables"]["l"] == {k: [k, "x"] for k in range(10)}
    assert formats.to_neutral(snap, "t")["tables"]["l"] == {k: [k, "x"] for k in range(10)}
    s = rocks_store(tmp, (0, MP), "new")
    try:
        s.restore([snap], filter_by_range=False)
        lst = s.list_state("l")
        for k in range(10):
            s.scope.key = k
            assert lst.get() == [k, "x"]
            lst.add("y")  # after the whole list
            assert lst.get() == [k, "x", "y"]
        s.scope.key = 3
        lst.update(["z"])  # replaces the old whole list too
        s.scope.key = 4
        lst.clear()
        s.after_batch()
        again = checkpoint(s, tmp)
        assert s.size() == 9
        want = {k: [k, "x", "y"] for k in range(10) if k not in (3, 4)} | {3: ["z"]}
        assert export_neutral(again, "t")["tables"]["l"] == want
        s2 = rocks_store(tmp, (0, MP), "again")
        try:
            s2.restore([again], filter_by_range=False)
            l2 = s2.list_state("l")
            for k, v in want.items():
                s2.scope.key = k
                assert l2.get() == v
            s2.scope.key = 4
            assert l2.get() == []
        finally:
            s2.close()
    finally:
        s.close()


def test_rocksdb_1_checkpoint_lists_still_restore_and_take_appends(tmp_path: Path) -> None:
    isolated(_old_layout, tmp_path)
