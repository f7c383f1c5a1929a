"""The RocksDB state backend (``rocksdict``): keyed state larger than memory.

Layout. Every entry's key starts with its **key group** (2 bytes, big-endian), so one key
group's data is one contiguous key range that can be read, copied or deleted on its own::

    kg(2) | len(name)(1) | name | len(key)(4) | pickle(key) [| pickle(map key)]

Value state stores one pickled value per key; map state stores one entry per map key
(a map is a prefix scan); list state stores one entry per element, under the list's key
with an 8-byte big-endian sequence number appended (``| seq(8)``), so an append is one
write, a read is a prefix scan in sequence order and a clear is one range delete. The
sequence numbers come from one counter per store, carried in the snapshot head
(``list_seq``) so appends after a restore sort after what was restored.

Formats. ``rocksdb-2`` is this layout. ``rocksdb-1`` (before 2026-12) stored a list as one
pickled Python list under the list's key itself (no suffix); such entries are still read
(they sort before their list's elements, so they are the list's first elements), so a
``rocksdb-1`` checkpoint restores as it is and its lists become per-element entries as
they are next written. Timers are entries too, under a reserved name per time domain, in
time order within their key group (``state/rocksdb_timers.py``): they are in the RocksDB
checkpoint and move with their key groups on a rescale; the snapshot head carries only their
count per key group.

Writes. The task thread never writes into RocksDB itself: it writes into a dictionary
(*layer*); when the layer is large, or at a checkpoint barrier, the layer is frozen and a
per-store writer thread applies it to RocksDB with one write batch. Reads look at the current
layer, then frozen layers not yet applied (newest first), then RocksDB. So the synchronous
phase of a checkpoint is O(1): freeze the layer, queue "apply, flush, checkpoint". Because
only that one thread writes into RocksDB, in order, the RocksDB checkpoint it creates holds
exactly the state at the barrier. The WAL is off: checkpoints are the durability.

Incremental checkpoints (DESIGN §6): the RocksDB checkpoint (hard links) is read file by file;
an SST file already uploaded by a checkpoint this store saw complete is referenced, not
copied; new SST files are copied into ``<flow>/shared/<operator>-<subtask>/``; the small
files (MANIFEST, CURRENT, OPTIONS) go into the checkpoint's own directory. The metadata
lists every file the checkpoint needs; the coordinator's shared-file registry deletes a
shared file when no retained checkpoint needs it. With ``incremental=False`` every file is
copied into the checkpoint's own directory (a full checkpoint).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from onceflow._optional import require
from onceflow.errors import ConfigurationError, OnceflowError
from onceflow.graph.keygroups import key_group
from onceflow.state import formats
from onceflow.state.backend import (
    NEUTRAL_FORMAT,
    SHARED_DIR,
    AsyncSnapshot,
    SnapshotTarget,
    check_restored_kinds,
    copy_verified,
    remove_tree,
)
from onceflow.state.handles import _KeyScope
from onceflow.state.rocksdb_timers import (
    EVENT_HDR,
    PROC_HDR,
    RocksTimers,
    is_timer_key,
    split_timer_key,
    timer_key,
)
from onceflow.state.timers import TIMER_TABLES, TimerQueue, timer_lists

log = logging.getLogger("onceflow.state")

FORMAT = "rocksdb-2"
#: the formats this module restores (``rocksdb-1``: lists stored whole, see above)
FORMATS = ("rocksdb-1", FORMAT)
_MISSING = object()
_LOCK = threading.Lock()


def _rocksdict() -> Any:
    return require("rocksdict", "RocksDBBackend", "rocksdb", "rocksdict")


@dataclass(frozen=True)
class RocksDBBackend:
    """Keyed state in an embedded RocksDB per operator subtask (via ``rocksdict``).

    ``local_dir``: where working databases live (default: ``<tmp>/onceflow-rocksdb``); use a
    local disk with room for the state. ``write_buffer_mb``: RocksDB memtable size.
    ``block_cache_mb``: read cache. ``layer_entries``: writes buffered in memory before the
    writer thread applies them (bounds memory between checkpoints).
    ``l0_compaction_trigger``: level-0 files (about one per checkpoint) that start a
    compaction into level 1. Every compaction's output is new files the next incremental
    checkpoint uploads, so a higher value uploads less in total, in rarer, larger
    checkpoints, and costs reads (a bloom filter per file keeps point reads cheap)."""

    local_dir: str | None = None
    write_buffer_mb: int = 64
    block_cache_mb: int = 128
    layer_entries: int = 100_000
    l0_compaction_trigger: int = 12

    def validate(self) -> None:
        for name in ("write_buffer_mb", "block_cache_mb", "layer_entries",
                     "l0_compaction_trigger"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigurationError(f"RocksDBBackend({name}={v!r}): must be an integer >= 1")
        if self.local_dir is not None and not isinstance(self.local_dir, str):
            raise ConfigurationError("RocksDBBackend(local_dir=...) must be a path string")
        _rocksdict()

    def create(self, max_parallelism: int, kg_range: tuple[int, int], *, operator: str = "",
               owner: str = "", incremental: bool = False, flow_dir: str | None = None,
               **_: Any) -> RocksDBStore:
        return RocksDBStore(self, max_parallelism, kg_range, operator=operator, owner=owner,
                            incremental=incremental, flow_dir=flow_dir)


def _kgb(kg: int) -> bytes:
    return kg.to_bytes(2, "big")


def _encode(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


class _Layer:
    """Writes not yet in RocksDB. ``data``: full key -> pickled value, None = deleted.
    ``maps``: map base -> the full keys of its entries in ``data``. ``cleared``: map bases
    whose older entries are all gone. ``timer_adds``: ``kg | timer header`` -> the timers
    this layer registered (and did not delete again). ``timer_seen``: timers found in older
    layers or RocksDB while this layer was current (registering them again reads nothing)."""

    __slots__ = ("applied", "cleared", "data", "maps", "timer_adds", "timer_seen")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes | None] = {}
        self.maps: dict[bytes, set[bytes]] = {}
        self.cleared: set[bytes] = set()
        self.timer_adds: dict[bytes, set[bytes]] = {}
        self.timer_seen: set[bytes] = set()
        self.applied = False


class RocksDBStore(TimerQueue):

    def __init__(self, cfg: RocksDBBackend, max_parallelism: int, kg_range: tuple[int, int], *,
                 operator: str, owner: str, incremental: bool, flow_dir: str | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_parallelism = max_parallelism
        self.kg_range = kg_range
        self.operator = operator
        self.owner = owner or "keyed"
        self.incremental = incremental
        self.flow_dir = os.path.abspath(flow_dir) if flow_dir else None
        self.scope = _KeyScope()
        self.kinds: dict[str, str] = {}
        self.restored_key_types: set[str] = set()
        self._db_key_types: set[str] | None = None
        self._error: BaseException | None = None  # a failed write of the writer thread
        self.cur = _Layer()
        self.frozen: list[_Layer] = []
        self._ck_key: Any = _MISSING
        self._ck_prefix = b""
        self._ck_key_bytes = b""
        self.list_seq = 0  # the last sequence number given to a list element
        # shared SST files this store may reference: local name -> (path rel. to flow dir,
        # size, crc) as of the newest checkpoint it saw complete; and per pending checkpoint
        self.confirmed: dict[str, tuple[str, int, int]] = {}
        self.pending_maps: dict[int, dict[str, tuple[str, int, int]]] = {}
        root = cfg.local_dir or os.path.join(tempfile.gettempdir(), "onceflow-rocksdb")
        _sweep_stale(root)
        self.workdir = os.path.join(
            root, f"{os.getpid()}-{_safe(self.owner)}-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.workdir, exist_ok=True)
        self.db_path = os.path.join(self.workdir, "db")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onceflow-rocksdb")
        self.db: Any = None
        self._open(self.db_path)
        self._ptimers = RocksTimers(self, PROC_HDR)
        self._etimers = RocksTimers(self, EVENT_HDR)

    # --- the database --------------------------------------------------------------------
    def _options(self) -> Any:
        rd = _rocksdict()
        o = rd.Options(raw_mode=True)
        o.create_if_missing(True)
        o.set_write_buffer_size(self.cfg.write_buffer_mb << 20)
        o.set_max_write_buffer_number(4)
        trigger = self.cfg.l0_compaction_trigger
        o.set_level_zero_file_num_compaction_trigger(trigger)
        o.set_level_zero_slowdown_writes_trigger(max(20, trigger * 3))
        o.set_level_zero_stop_writes_trigger(max(36, trigger * 5))
        bo = rd.BlockBasedOptions()
        bo.set_block_cache(rd.Cache(self.cfg.block_cache_mb << 20))
        bo.set_bloom_filter(10, False)
        o.set_block_based_table_factory(bo)
        return o

    def _open(self, path: str) -> None:
        rd = _rocksdict()
        try:
            self.db = rd.Rdict(path, self._options())
        except Exception as e:
            raise ConfigurationError(
                f"operator {self.operator!r}: cannot open RocksDB at {path}: {e}; check "
                "RocksDBBackend(local_dir=...) is a writable local directory with free space"
            ) from e
        wo = rd.WriteOptions()
        wo.disable_wal = True
        self.db.set_write_options(wo)

    def close(self) -> None:
        self.writer.shutdown(wait=True)
        if self.db is not None:
            try:
                self.db.close()
            except Exception:
                pass
            self.db = None
        remove_tree(self.workdir)

    # --- keys ----------------------------------------------------------------------------
    def _key_prefix(self) -> tuple[bytes, bytes]:
        """(kg bytes, len+pickled key) of the current key, cached per key object."""
        k = self.scope.key
        if k is not self._ck_key:
            kb = _encode(k)
            self._ck_key = k
            self._ck_prefix = _kgb(key_group(k, self.max_parallelism))
            self._ck_key_bytes = len(kb).to_bytes(4, "big") + kb
        return self._ck_prefix, self._ck_key_bytes

    def base(self, name_hdr: bytes) -> bytes:
        kg, kb = self._key_prefix()
        return kg + name_hdr + kb

    # --- reads and writes ----------------------------------------------------------------
    def get(self, full: bytes, map_base: bytes | None = None) -> bytes | None:
        v = self.cur.data.get(full, _MISSING)
        if v is not _MISSING:
            return v  # type: ignore[return-value]
        if map_base is not None and map_base in self.cur.cleared:
            return None
        for layer in reversed(self.frozen):
            v = layer.data.get(full, _MISSING)
            if v is not _MISSING:
                return v  # type: ignore[return-value]
            if map_base is not None and map_base in layer.cleared:
                return None
        return self.db.get(full)

    def put(self, full: bytes, value: bytes | None, map_base: bytes | None = None) -> None:
        self.cur.data[full] = value
        if map_base is not None:
            self.cur.maps.setdefault(map_base, set()).add(full)

    def clear_map(self, map_base: bytes) -> None:
        layer = self.cur
        for full in layer.maps.pop(map_base, ()):
            layer.data.pop(full, None)
        layer.cleared.add(map_base)

    def next_list_key(self, base: bytes) -> bytes:
        """The key of a new last element of the list at ``base``."""
        self.list_seq = n = self.list_seq + 1
        return base + n.to_bytes(8, "big")

    def scan_map(self, map_base: bytes) -> dict[bytes, bytes]:
        """Every entry of one map (full key -> pickled value), all layers merged."""
        layers, c = self._layers_of(map_base)
        out: dict[bytes, bytes] = {}
        if c is None:
            for k, it in self._under(map_base):
                out[k] = it.value()
        else:
            layers = layers[:c + 1]  # the clearing layer and newer ones
        for layer in reversed(layers):
            for full in layer.maps.get(map_base, ()):
                v = layer.data.get(full)
                if v is None:
                    out.pop(full, None)
                else:
                    out[full] = v
        return out

    def _layers_of(self, map_base: bytes) -> tuple[list[Any], int | None]:
        """The write layers newest first, and the index of the newest that cleared the map
        at ``map_base`` (None: none did, RocksDB's entries count too)."""
        layers = [self.cur, *reversed(self.frozen)]
        return layers, next((i for i, ly in enumerate(layers) if map_base in ly.cleared), None)

    def map_is_empty(self, map_base: bytes) -> bool:
        """No entry under ``map_base`` (all layers merged with RocksDB), without reading
        the whole map: the first live entry found answers."""
        layers, c = self._layers_of(map_base)
        if c is not None:
            layers = layers[:c + 1]
        for i, layer in enumerate(layers):
            for full in layer.maps.get(map_base, ()):
                # live unless a newer layer deleted or rewrote it (then that one decides)
                if layer.data.get(full) is not None and not any(
                        full in newer.data for newer in layers[:i]):
                    return False
        if c is not None:
            return True
        for k, _ in self._under(map_base):
            if not any(k in layer.data for layer in layers):
                return False  # in RocksDB and not deleted since (a rewrite was seen above)
        return True

    def _under(self, prefix: bytes) -> Iterator[tuple[bytes, Any]]:
        """Every key in RocksDB that starts with ``prefix``, in order, with the iterator
        positioned at it (``it.value()`` reads its value only if wanted)."""
        it = self.db.iter()
        it.seek(prefix)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                return
            yield k, it
            it.next()

    def after_batch(self) -> None:
        """Called by the operator between batches: hand a large layer to the writer."""
        if self._error is not None:
            self._fail()
        while self.frozen and self.frozen[0].applied:
            self.frozen.pop(0)
        if len(self.cur.data) + len(self.cur.timer_seen) >= self.cfg.layer_entries:
            layer = self._freeze()
            self.writer.submit(self._apply, layer)

    def _freeze(self) -> _Layer:
        layer = self.cur
        self.cur = _Layer()
        self.frozen.append(layer)
        return layer

    def _apply(self, layer: _Layer) -> None:
        """Writer thread. After a failed write nothing more is applied (a later checkpoint
        would miss that data): the task fails at its next batch, and the job restarts."""
        if self._error is not None:
            self._fail()
        try:
            rd = _rocksdict()
            wb = rd.WriteBatch(raw_mode=True)
            for b in layer.cleared:
                wb.delete_range(b, _prefix_end(b))
            for k, v in layer.data.items():
                if v is None:
                    wb.delete(k)
                else:
                    wb.put(k, v)
            self.db.write(wb)
        except Exception as e:
            self._error = e
            self._fail()
        layer.applied = True

    def _fail(self) -> None:
        raise OnceflowError(
            f"operator {self.operator!r}: writing keyed state to RocksDB in {self.workdir} "
            f"failed ({type(self._error).__name__}: {self._error}); check free space and "
            "permissions of RocksDBBackend(local_dir=...)") from self._error

    # --- handles -------------------------------------------------------------------------
    def _register(self, name: str, kind: str) -> bytes:
        have = self.kinds.setdefault(name, kind)
        if have != kind:
            raise ConfigurationError(
                f"operator {self.operator!r}: state {name!r} is already registered as {have} "
                f"state, not {kind}")
        nb = name.encode()
        if name.startswith("\x00"):
            raise ConfigurationError(f"operator {self.operator!r}: state name {name!r} "
                                     "starts with NUL, which is reserved")
        if len(nb) > 255:
            raise ConfigurationError(f"operator {self.operator!r}: state name {name!r} is "
                                     "longer than 255 bytes")
        return bytes([len(nb)]) + nb

    def value_table(self, name: str) -> None:
        """No dict behind the state: operators use the handles (see KeyedStore)."""
        return None

    def value_state(self, name: str, default: Any = None) -> RocksValueState:
        return RocksValueState(self, self._register(name, "value"), default)

    def list_state(self, name: str) -> RocksListState:
        return RocksListState(self, self._register(name, "list"))

    def map_state(self, name: str) -> RocksMapState:
        return RocksMapState(self, self._register(name, "map"))

    # --- timers (in RocksDB) -------------------------------------------------------------
    def register_timer(self, when: float) -> None:
        self._ptimers.register(when)

    def delete_timer(self, when: float) -> None:
        self._ptimers.delete(when)

    def next_timer(self) -> float | None:
        return self._ptimers.peek()

    def pop_due_timers(self, now: float) -> list[tuple[float, Any]]:
        return self._ptimers.pop_due(now)

    def register_event_timer(self, when: float) -> None:
        self._etimers.register(when)

    def delete_event_timer(self, when: float) -> None:
        self._etimers.delete(when)

    def next_event_timer(self) -> float | None:
        return self._etimers.peek()

    def pop_due_event_timers(self, watermark: float) -> list[tuple[float, Any]]:
        return self._etimers.pop_due(watermark)

    def timer_count(self) -> int:
        return self._ptimers.count() + self._etimers.count()

    def timers_snapshot(self) -> dict[str, list[tuple[float, Any]]]:
        """Every timer (all layers merged with RocksDB), as the memory store lists them; for
        tests and tools: a checkpoint does not need it, the timers are in RocksDB."""
        out: dict[str, list[tuple[float, Any]]] = {"timers": [], "event_timers": []}
        seen: set[bytes] = set()
        for layer in [self.cur, *reversed(self.frozen)]:
            for k, v in layer.data.items():
                if is_timer_key(k) and k not in seen:
                    seen.add(k)
                    if v is not None:
                        _add_timer(out, k)
        for k, _ in _iter_raw(self.db):
            if is_timer_key(k) and k not in seen:
                _add_timer(out, k)
        return {name: sorted(ts, key=repr) for name, ts in out.items()}

    # --- snapshot ------------------------------------------------------------------------
    def _head(self) -> dict[str, Any]:
        counts = {"timers": dict(self._ptimers.counts),
                  "event_timers": dict(self._etimers.counts)}
        return {"max_parallelism": self.max_parallelism, "kinds": dict(self.kinds),
                "timer_counts": counts, "timer_count": self.timer_count(),
                "list_seq": self.list_seq,
                "key_types": sorted(self._sample_key_types())}

    def _sample_key_types(self) -> set[str]:
        """Type names of a sample of keys (restore compares them with the flow's keys)."""
        out: set[str] = set()
        for layer in [self.cur, *self.frozen]:
            out.update(_key_type_of(k) for k in itertools.islice(layer.data, 64))
        out.discard("")
        if self._db_key_types is None:  # read once per store: later keys are in layers
            self._db_key_types = set()
            it = self.db.iter()
            it.seek_to_first()
            for _ in range(64):
                if not it.valid():
                    break
                self._db_key_types.add(_key_type_of(it.key()))
                it.next()
            self._db_key_types.discard("")
        return out | self._db_key_types

    def snapshot(self, checkpoint_id: int = 0, savepoint: bool = False) -> AsyncSnapshot:
        head = self._head()
        layer = self._freeze()
        if savepoint:
            head["format"] = NEUTRAL_FORMAT
            fut: Future[Any] = self.writer.submit(self._export, layer)
            return _RocksExport(head, fut)
        head["format"] = FORMAT
        local = os.path.join(self.workdir, f"chk-{checkpoint_id}")
        fut = self.writer.submit(self._checkpoint, layer, local)
        return _RocksSnapshot(head, fut, self, checkpoint_id, local)

    def _checkpoint(self, layer: _Layer, local: str) -> list[str]:
        """Writer thread: apply the layer, flush, create a RocksDB checkpoint (hard links)."""
        self._apply(layer)
        self.db.flush()
        remove_tree(local)
        _rocksdict().Checkpoint(self.db).create_checkpoint(local)
        return sorted(os.listdir(local))

    def _export(self, layer: _Layer) -> dict[str, Any]:
        """Writer thread: the whole state in the backend-neutral format (savepoints)."""
        self._apply(layer)
        tables: dict[Any, Any] = _read_tables(self.db, None, self.kinds)
        for name, timers in _read_timers(self.db).items():
            if timers:
                tables[TIMER_TABLES[name]] = timers
        return {"tables": tables}

    def notify_complete(self, checkpoint_id: int) -> None:
        done = [c for c in self.pending_maps if c <= checkpoint_id]
        if checkpoint_id in self.pending_maps:
            self.confirmed = self.pending_maps[checkpoint_id]
        for c in done:
            del self.pending_maps[c]

    def notify_aborted(self, checkpoint_id: int) -> None:
        self.pending_maps.pop(checkpoint_id, None)

    # --- restore -------------------------------------------------------------------------
    def restore(self, snapshots: list[dict[str, Any]], filter_by_range: bool) -> None:
        lo, hi = self.kg_range
        rocks = [s for s in snapshots if s.get("format") in FORMATS]
        others = [s for s in snapshots if s.get("format") not in FORMATS]
        # appends after the restore must sort after every restored list element
        self.list_seq = max([self.list_seq, *(s.get("list_seq", 0) for s in rocks)])
        for snap in snapshots:
            self.restored_key_types.update(snap.get("key_types", ()))
            check_restored_kinds(self.operator, self.kinds, snap["kinds"])
            self.kinds.update(snap["kinds"])
        if rocks:
            first, rest = rocks[0], rocks[1:]
            # the first RocksDB snapshot becomes this store's database: files copied in,
            # key groups outside this subtask's range deleted
            self.db.close()
            remove_tree(self.db_path)
            self._download(first, self.db_path)
            self._open(self.db_path)
            if filter_by_range:
                self.db.delete_range(b"\x00\x00", _kgb(lo))
                self.db.delete_range(_kgb(hi), b"\xff\xff\xff")
            elif len(rocks) == 1 and not others:
                self._adopt_shared(first)
            for snap in rest:
                tmp = os.path.join(self.workdir, f"restore-{uuid.uuid4().hex[:8]}")
                self._download(snap, tmp)
                src = _rocksdict().Rdict(tmp, _rocksdict().Options(raw_mode=True))
                try:
                    self._copy_range(src, lo, hi)
                finally:
                    src.close()
                    remove_tree(tmp)
        for snap in others:
            nsnap = formats.to_neutral(snap, self.operator)
            self._insert_neutral(nsnap, lo, hi if filter_by_range else None)
        self._restore_timer_counts(rocks, filter_by_range)
        # snapshots written before timers moved into RocksDB list them in the head
        for snap in rocks:
            if "timer_counts" not in snap:
                self.restore_timers(snap, filter_by_range)

    def restore_timers(self, snap: dict[str, Any], filter_by_range: bool) -> None:
        """Register the timers a snapshot lists (into RocksDB, through the write layer)."""
        lo, hi = self.kg_range
        mp = self.max_parallelism
        scope = self.scope
        for domain, name in ((self._ptimers, "timers"), (self._etimers, "event_timers")):
            for when, key in timer_lists(snap, name):
                if filter_by_range and not lo <= key_group(key, mp) < hi:
                    continue
                scope.key = key
                domain.register(when)
        scope.key = None

    def _restore_timer_counts(self, rocks: list[dict[str, Any]], filter_by_range: bool
                              ) -> None:
        """The timers now in RocksDB: their counts per key group from the heads of RocksDB
        snapshots (in this subtask's range), plus those ``_insert_neutral`` wrote."""
        lo, hi = self.kg_range
        for snap in rocks:
            for domain, name in ((self._ptimers, "timers"), (self._etimers, "event_timers")):
                for kg, n in snap.get("timer_counts", {}).get(name, {}).items():
                    if not filter_by_range or lo <= kg < hi:
                        domain.counts[kg] = domain.counts.get(kg, 0) + n
        self._ptimers.reset()
        self._etimers.reset()

    def _download(self, snap: dict[str, Any], dst: str) -> None:
        os.makedirs(dst, exist_ok=True)
        base = snap["_base"]
        for name, (rel, size, crc) in snap["manifest"]["files"].items():
            copy_verified(base, rel, size, crc, os.path.join(dst, name),
                          f"RocksDB state of operator {self.operator!r}")

    def _adopt_shared(self, snap: dict[str, Any]) -> None:
        """Restored from one of this flow's own checkpoints: its shared files may be
        referenced again (they are in the registry), so the next checkpoint is small."""
        if self.flow_dir is None:
            return
        base = snap["_base"]
        for name, (rel, size, crc) in snap["manifest"]["files"].items():
            if not name.endswith(".sst"):
                continue
            path = os.path.normpath(os.path.join(base, rel))
            if os.path.dirname(os.path.dirname(os.path.dirname(path))) == self.flow_dir:
                self.confirmed[name] = (os.path.relpath(path, self.flow_dir), size, crc)

    def _copy_range(self, src: Any, lo: int, hi: int) -> None:
        rd = _rocksdict()
        it = src.iter()
        it.seek(_kgb(lo))
        end = _kgb(hi)
        wb = rd.WriteBatch(raw_mode=True)
        n = 0
        while it.valid():
            k = it.key()
            if k >= end:
                break
            wb.put(k, it.value())
            n += 1
            if n % 50_000 == 0:
                self.db.write(wb)
                wb = rd.WriteBatch(raw_mode=True)
            it.next()
        self.db.write(wb)

    def _insert_neutral(self, snap: dict[str, Any], lo: int, hi: int | None) -> None:
        rd = _rocksdict()
        mp = self.max_parallelism
        wb = rd.WriteBatch(raw_mode=True)
        n = 0
        for name, table in snap["tables"].items():
            if name in _RESERVED_TABLES:
                continue
            kind = snap["kinds"][name]
            hdr = self._register(name, kind)
            for key, value in table.items():
                kg = key_group(key, mp)
                if hi is not None and not lo <= kg < hi:
                    continue
                kb = _encode(key)
                b = _kgb(kg) + hdr + len(kb).to_bytes(4, "big") + kb
                if kind == "map":
                    for mk, mv in value.items():
                        wb.put(b + _encode(mk), _encode(mv))
                        n += 1
                elif kind == "list":
                    for element in value:
                        wb.put(self.next_list_key(b), _encode(element))
                        n += 1
                else:
                    wb.put(b, _encode(value))
                    n += 1
                if n >= 50_000:
                    self.db.write(wb)
                    wb = rd.WriteBatch(raw_mode=True)
                    n = 0
        for domain, tname in ((self._ptimers, "timers"), (self._etimers, "event_timers")):
            for when, key in timer_lists(snap, tname):
                kg = key_group(key, mp)
                if hi is not None and not lo <= kg < hi:
                    continue
                wb.put(timer_key(kg, domain.hdr, when, key), b"")
                domain.counts[kg] = domain.counts.get(kg, 0) + 1
        self.db.write(wb)

    def size(self) -> int:
        """Entries of keyed state in RocksDB: a value, a map entry, a (whole) list; timers
        not counted, as with the memory store."""
        n = 0
        last_list = b""
        for k, _ in _iter_raw(self.db):
            if is_timer_key(k):
                continue
            name, _kb, rest = _split(k)
            if self.kinds.get(name) == "list":
                base = k[:len(k) - len(rest)]
                if base == last_list:
                    continue
                last_list = base
            n += 1
        return n


class _RocksSnapshot(AsyncSnapshot):
    def __init__(self, head: dict[str, Any], fut: Future[list[str]], store: RocksDBStore,
                 cid: int, local: str) -> None:
        super().__init__(head)
        self.fut, self.store, self.cid, self.local = fut, store, cid, local

    def run(self, target: SnapshotTarget) -> dict[str, Any]:
        names = self.fut.result()
        store = self.store
        confirmed = store.confirmed
        incremental = store.incremental and target.shared_root is not None
        files: dict[str, tuple[str, int, int]] = {}
        mine: dict[str, tuple[str, int, int]] = {}
        flow_dir = os.path.dirname(target.shared_root) if target.shared_root else None
        try:
            for name in names:
                src = os.path.join(self.local, name)
                if incremental and name.endswith(".sst"):
                    size = os.path.getsize(src)
                    have = confirmed.get(name)
                    if have is not None and have[1] == size:
                        rel = target.reuse(*have)
                        files[name] = (rel, size, have[2])
                        mine[name] = have
                        continue
                    rel, size, crc = target.copy_shared(src, ".sst")
                    files[name] = (rel, size, crc)
                    assert flow_dir is not None
                    abs_path = os.path.normpath(os.path.join(target.checkpoint_dir, rel))
                    mine[name] = (os.path.relpath(abs_path, flow_dir), size, crc)
                else:
                    rel, size, crc = target.copy_private(src, name)
                    files[name] = (rel, size, crc)
        finally:
            remove_tree(self.local)
        if incremental:
            store.pending_maps[self.cid] = mine
        return {"files": files, "incremental": incremental}

    def discard(self) -> None:
        remove_tree(self.local)


class _RocksExport(AsyncSnapshot):
    def __init__(self, head: dict[str, Any], fut: Future[dict[str, Any]]) -> None:
        super().__init__(head)
        self.fut = fut

    def run(self, target: SnapshotTarget) -> dict[str, Any]:
        return self.fut.result()


# --- handles -----------------------------------------------------------------------------
class RocksValueState:
    __slots__ = ("_default", "_hdr", "_store")

    def __init__(self, store: RocksDBStore, hdr: bytes, default: Any) -> None:
        self._store, self._hdr, self._default = store, hdr, default

    def value(self) -> Any:
        raw = self._store.get(self._store.base(self._hdr))
        return self._default if raw is None else pickle.loads(raw)

    def update(self, value: Any) -> None:
        self._store.put(self._store.base(self._hdr), _encode(value))

    def clear(self) -> None:
        self._store.put(self._store.base(self._hdr), None)


class RocksListState:
    """A list per key, one RocksDB entry per element (see the module docstring): ``add``
    writes one entry and reads nothing; ``get`` scans the list's entries in order."""

    __slots__ = ("_hdr", "_store")

    def __init__(self, store: RocksDBStore, hdr: bytes) -> None:
        self._store, self._hdr = store, hdr

    def get(self) -> list[Any]:
        b = self._store.base(self._hdr)
        entries = self._store.scan_map(b)
        if not entries:
            return []
        n = len(b)
        out: list[Any] = []
        for k in sorted(entries):
            if len(k) == n:  # a whole list of the rocksdb-1 layout: the first elements
                out.extend(pickle.loads(entries[k]))
            else:
                out.append(pickle.loads(entries[k]))
        return out

    def __iter__(self) -> Iterator[Any]:
        return iter(self.get())

    def add(self, value: Any) -> None:
        store = self._store
        b = store.base(self._hdr)
        store.put(store.next_list_key(b), _encode(value), b)

    def add_all(self, values: Any) -> None:
        store = self._store
        b = store.base(self._hdr)
        for value in values:
            store.put(store.next_list_key(b), _encode(value), b)

    def update(self, values: Any) -> None:
        vals = list(values)  # before clearing: ``values`` may be this list's own iterator
        self.clear()
        self.add_all(vals)

    def clear(self) -> None:
        self._store.clear_map(self._store.base(self._hdr))


class RocksMapState:
    __slots__ = ("_hdr", "_store")

    def __init__(self, store: RocksDBStore, hdr: bytes) -> None:
        self._store, self._hdr = store, hdr

    def get(self, key: Any, default: Any = None) -> Any:
        b = self._store.base(self._hdr)
        raw = self._store.get(b + _encode(key), b)
        return default if raw is None else pickle.loads(raw)

    def put(self, key: Any, value: Any) -> None:
        b = self._store.base(self._hdr)
        self._store.put(b + _encode(key), _encode(value), b)

    def put_all(self, items: dict[Any, Any]) -> None:
        for k, v in items.items():
            self.put(k, v)

    def remove(self, key: Any) -> None:
        b = self._store.base(self._hdr)
        self._store.put(b + _encode(key), None, b)

    def contains(self, key: Any) -> bool:
        b = self._store.base(self._hdr)
        return self._store.get(b + _encode(key), b) is not None

    def _entries(self) -> list[tuple[Any, Any]]:
        b = self._store.base(self._hdr)
        n = len(b)
        return [(pickle.loads(k[n:]), pickle.loads(v))
                for k, v in sorted(self._store.scan_map(b).items())]

    def keys(self) -> list[Any]:
        return [k for k, _ in self._entries()]

    def values(self) -> list[Any]:
        return [v for _, v in self._entries()]

    def items(self) -> list[tuple[Any, Any]]:
        return self._entries()

    def is_empty(self) -> bool:
        return self._store.map_is_empty(self._store.base(self._hdr))

    def clear(self) -> None:
        self._store.clear_map(self._store.base(self._hdr))


# --- reading whole databases -------------------------------------------------------------
def _prefix_end(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``prefix``."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\xff" * (len(prefix) + 1)
    p[-1] += 1
    return bytes(p)


def _iter_raw(db: Any) -> Iterator[tuple[bytes, bytes]]:
    it = db.iter()
    it.seek_to_first()
    while it.valid():
        yield it.key(), it.value()
        it.next()


def _split(k: bytes) -> tuple[str, bytes, bytes]:
    """A stored key -> (state name, pickled key, pickled map key or b'')."""
    nl = k[2]
    name = k[3:3 + nl].decode()
    klen = int.from_bytes(k[3 + nl:7 + nl], "big")
    kb = k[7 + nl:7 + nl + klen]
    return name, kb, k[7 + nl + klen:]


def _key_type_of(k: bytes) -> str:
    """The type name of the key of a stored entry ("" for a timer)."""
    if is_timer_key(k):
        return ""
    return type(pickle.loads(_split(k)[1])).__name__


_RESERVED_TABLES = frozenset(TIMER_TABLES.values())
_DOMAIN_NAMES = {PROC_HDR: "timers", EVENT_HDR: "event_timers"}


def _add_timer(out: dict[str, list[tuple[float, Any]]], k: bytes) -> None:
    hdr, when, key = split_timer_key(k)
    out[_DOMAIN_NAMES[hdr]].append((when, key))


def _read_timers(db: Any) -> dict[str, list[tuple[float, Any]]]:
    """Every timer in a database, per domain (``"timers"``, ``"event_timers"``)."""
    out: dict[str, list[tuple[float, Any]]] = {"timers": [], "event_timers": []}
    for k, _ in _iter_raw(db):
        if is_timer_key(k):
            _add_timer(out, k)
    return out


def _read_tables(db: Any, kg_range: tuple[int, int] | None,
                 kinds: dict[str, str]) -> dict[str, dict[Any, Any]]:
    tables: dict[str, dict[Any, Any]] = {n: {} for n in kinds}
    # the stored key each table key came from: RocksDB keeps keys apart that Python
    # deems equal (1, 1.0, True: different pickles), a dict cannot
    stored: dict[str, dict[Any, bytes]] = {}
    for k, v in _iter_raw(db):
        if kg_range is not None and not kg_range[0] <= int.from_bytes(k[:2], "big") < kg_range[1]:
            continue
        if is_timer_key(k):
            continue
        name, kb, mk = _split(k)
        t = tables.setdefault(name, {})
        key = pickle.loads(kb)  # checkpoint storage is trusted
        first = stored.setdefault(name, {}).setdefault(key, kb)
        if first != kb:
            raise OnceflowError(
                f"state {name!r} holds keys {pickle.loads(first)!r} "
                f"({type(pickle.loads(first)).__name__}) and {key!r} "
                f"({type(key).__name__}), which are equal in Python but two keys in "
                "RocksDB: a backend-neutral copy (a savepoint, or a restore into the memory "
                "backend) would merge their state. Make key_by return one type for equal "
                "keys (for example int(...) or str(...)); this RocksDB checkpoint itself "
                "restores into RocksDB as it is")
        kind = kinds.get(name)
        if kind == "map":
            t.setdefault(key, {})[pickle.loads(mk)] = pickle.loads(v)
        elif kind == "list" and mk:  # one element (rocksdb-2), in sequence order
            t.setdefault(key, []).append(pickle.loads(v))
        elif kind == "list":  # a whole list (rocksdb-1): before the key's elements
            t.setdefault(key, []).extend(pickle.loads(v))
        else:
            t[key] = pickle.loads(v)
    return tables


def export_neutral(snap: dict[str, Any], operator: str) -> dict[str, Any]:
    """A RocksDB checkpoint of one subtask as backend-neutral state (e.g. to restore a
    RocksDB checkpoint into the memory backend), with its timers listed: those in RocksDB
    and those the head of a snapshot written before timers moved into RocksDB lists."""
    rd = _rocksdict()
    tmp = tempfile.mkdtemp(prefix="onceflow-export-")
    try:
        for name, (rel, size, crc) in snap["manifest"]["files"].items():
            copy_verified(snap["_base"], rel, size, crc, os.path.join(tmp, name),
                          f"RocksDB state of operator {operator!r}")
        db = rd.Rdict(tmp, rd.Options(raw_mode=True))
        try:
            tables = _read_tables(db, None, snap["kinds"])
            timers = _read_timers(db)
        finally:
            db.close()
    finally:
        remove_tree(tmp)
    for name, listed in timers.items():
        listed[:0] = snap.get(name, ())
    return {**snap, "format": NEUTRAL_FORMAT, "tables": tables, **timers}


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:80]


def _sweep_stale(root: str) -> None:
    """Remove working directories of worker processes that no longer exist (a killed
    worker cannot clean up after itself)."""
    with _LOCK:
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return
        for n in names:
            pid_s = n.split("-", 1)[0]
            if not pid_s.isdigit():
                continue
            try:
                os.kill(int(pid_s), 0)
            except ProcessLookupError:
                remove_tree(os.path.join(root, n))
            except PermissionError:
                pass


for _fmt in FORMATS:
    formats.register(_fmt, export_neutral)

__all__ = ["SHARED_DIR", "RocksDBBackend", "RocksDBStore", "export_neutral"]
