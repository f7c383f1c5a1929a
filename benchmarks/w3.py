"""W3 large-state checkpoints benchmark (see /work/shared/bench/WORKLOADS.md, benchmarks/README.md).

    python benchmarks/w3.py                        # all backends, W3 sizes, 3 interleaved runs
    python benchmarks/w3.py --quick                # small sizes, one run: a smoke check
    python benchmarks/w3.py --backends rocks-inc --runs 1
    python benchmarks/w3.py --one --backend rocks-inc   # one run in this process, one JSON line

The job: a source first emits ``--keys`` load records ``(key, 100-byte value, 0.0)``, then
updates ``(uniform random key, 100-byte value, scheduled time)`` at ``--rate`` per second
for ``--seconds`` on a wall-clock schedule (a record is emitted only once its scheduled
time has come, so a stall shows up as lag = processing time - scheduled time), then ends.
Key by key; a KeyedProcessFunction writes the value into value state and counts processed
records per 100 ms bucket (in the worker; written to a file at close). Checkpoints every
``--interval`` s. After the run a fresh job restores the last checkpoint (time to running)
and checks a sample of keys against the values the run must have left.

Every run is a fresh subprocess; runs are interleaved over the configurations. Results go to
benchmarks/results/w3.json and benchmarks/results/w3.md.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import pickle
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from array import array
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from w1 import machine_info, run_child, save_results  # noqa: E402

DASH = "\u2013"
BUCKET = 0.1  # seconds per throughput bucket
VALUE_LEN = 100
BIG_LEN = 1 << 20  # values are slices of one random bytes object of this size
CHUNK_BITS = 16  # update keys are generated in chunks of 65,536
SEED = 20260101

CONFIGS: dict[str, dict[str, Any]] = {
    "rocks-inc": {"name": "RocksDB, incremental", "backend": "rocksdb", "incremental": True},
    "rocks-full": {"name": "RocksDB, full", "backend": "rocksdb", "incremental": False},
    "mem-inc": {"name": "memory, incremental (changelog)", "backend": "memory",
                "incremental": True},
    "mem-full": {"name": "memory, full", "backend": "memory", "incremental": False},
}


# --- the deterministic input ---------------------------------------------------------------
def big_bytes() -> bytes:
    return random.Random(SEED).randbytes(BIG_LEN + VALUE_LEN)


def value_offset(position: int) -> int:
    """Where the value of the record at source position ``position`` starts in big_bytes()."""
    return (position * 7919) % BIG_LEN


def update_keys(chunk: int, keys: int) -> list[int]:
    """The keys of updates chunk*65536 .. (chunk+1)*65536-1 (uniform over 0..keys-1)."""
    arr = array("I")
    arr.frombytes(random.Random(SEED * 1_000_003 + chunk).randbytes(4 << CHUNK_BITS))
    return [x % keys for x in arr]


def update_key_range(j0: int, j1: int, keys: int) -> list[int]:
    out: list[int] = []
    c = j0 >> CHUNK_BITS
    while (c << CHUNK_BITS) < j1:
        ks = update_keys(c, keys)
        base = c << CHUNK_BITS
        out.extend(ks[max(0, j0 - base):min(len(ks), j1 - base)])
        c += 1
    return out


def _make_classes() -> dict[str, type]:
    import onceflow as of

    class W3Reader(of.sources.SplitReader):
        def __init__(self, keys: int, updates: int, rate: float, pos: int, out_dir: str) -> None:
            self.keys, self.updates, self.rate = keys, updates, rate
            self.pos = pos
            self.out_dir = out_dir
            self.big = big_bytes()
            self.t0: float | None = None
            self._chunk = -1
            self._chunk_keys: list[int] = []

        def _phase(self, what: str) -> None:
            with open(os.path.join(self.out_dir, "source-events.jsonl"), "a") as f:
                f.write(json.dumps({"event": what, "t": time.time(), "pos": self.pos}) + "\n")

        def read_batch(self, max_records: int) -> list[Any] | None:
            keys, pos = self.keys, self.pos
            if pos >= keys + self.updates:
                return None
            big = self.big
            if pos < keys:
                end = min(pos + max_records, keys)
                out = []
                ap = out.append
                for i in range(pos, end):
                    o = (i * 7919) % BIG_LEN
                    ap((i, big[o:o + VALUE_LEN], 0.0))
                self.pos = end
                if end == keys:
                    self._phase("load_read")
                return out
            if self.t0 is None:  # the update schedule starts when the load is read
                self.t0 = time.time()
                self._phase("updates_start")
            t0, rate = self.t0, self.rate
            j0 = pos - keys
            due = min(self.updates, int((time.time() - t0) * rate) + 1)
            if due <= j0:
                return []
            j1 = min(due, j0 + max_records)
            out = []
            ap = out.append
            for j in range(j0, j1):
                c = j >> CHUNK_BITS
                if c != self._chunk:
                    self._chunk, self._chunk_keys = c, update_keys(c, keys)
                o = ((keys + j) * 7919) % BIG_LEN
                ap((self._chunk_keys[j - (c << CHUNK_BITS)], big[o:o + VALUE_LEN],
                    t0 + j / rate))
            self.pos = keys + j1
            if j1 == self.updates:
                self._phase("updates_read")
            return out

        def position(self) -> int:
            return self.pos

        def notify_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:
            # the source position each completed checkpoint recorded: the exact cut of the
            # input, from which the changed state per checkpoint is computed afterwards
            with open(os.path.join(self.out_dir, "positions.jsonl"), "a") as f:
                f.write(json.dumps({"id": checkpoint_id, "pos": position,
                                    "t": time.time()}) + "\n")

    class W3Source(of.sources.Source):
        def __init__(self, keys: int, updates: int, rate: float, out_dir: str) -> None:
            self.keys, self.updates, self.rate, self.out_dir = keys, updates, rate, out_dir

        def splits(self, parallelism: int) -> list[Any]:
            return ["w3"]

        def initial_position(self, split: Any) -> int:
            return 0

        def reader(self, split: Any, position: int) -> Any:
            return W3Reader(self.keys, self.updates, self.rate, position, self.out_dir)

    class VerifySource(of.sources.Source):
        """Restore check: emits (key, None, -1.0) for a sample of keys."""

        def __init__(self, sample: list[int]) -> None:
            self.sample = sample

        def splits(self, parallelism: int) -> list[Any]:
            return ["verify"]

        def initial_position(self, split: Any) -> int:
            return 0

        def reader(self, split: Any, position: int) -> Any:
            return of.sources.Collection([(k, None, -1.0) for k in self.sample]).reader(
                (0, 0, len(self.sample)), position)

    class W3State(of.KeyedProcessFunction):
        """value_state("v").update(value); processed records per 100 ms bucket (load /
        update counts and the largest lag), written to a file at close."""

        def __init__(self, out_dir: str) -> None:
            self.out_dir = out_dir

        def open(self, ctx: Any) -> None:
            self.v = ctx.value_state("v")
            self.sub = ctx.subtask_index
            self.buckets: dict[int, list[float]] = {}
            self.cur_b = -1
            self.cur: list[float] = [0, 0, 0.0]
            self.verified: list[tuple[int, int | None]] = []

        def process_element(self, value: Any, ctx: Any) -> None:
            sched = value[2]
            if sched < 0:  # restore check
                v = self.v.value()
                self.verified.append((value[0], None if v is None else zlib.crc32(v)))
                return None
            self.v.update(value[1])
            now = time.time()
            b = int(now / BUCKET)
            cur = self.cur
            if b != self.cur_b:
                cur = self.buckets.get(b)
                if cur is None:
                    cur = self.buckets[b] = [0, 0, 0.0]
                self.cur, self.cur_b = cur, b
            if sched:
                cur[1] += 1
                lag = now - sched
                if lag > cur[2]:
                    cur[2] = lag
            else:
                cur[0] += 1
            return None

        def close(self) -> None:
            path = os.path.join(self.out_dir, f"state-{self.sub}-{os.getpid()}.json")
            with open(path, "w") as f:
                json.dump({"buckets": sorted([b, *c] for b, c in self.buckets.items()),
                           "verified": self.verified}, f)

    return {"W3Source": W3Source, "VerifySource": VerifySource, "W3State": W3State}


def build_flow(cfg: dict[str, Any], keys: int, updates: int, rate: float, interval: float,
               tmp: str, verify_sample: list[int] | None = None) -> Any:
    import onceflow as of

    cls = _make_classes()
    out_dir = os.path.join(tmp, "out")
    os.makedirs(out_dir, exist_ok=True)
    if cfg["backend"] == "rocksdb":
        backend: Any = of.state.RocksDBBackend(local_dir=os.path.join(tmp, "rocksdb"))
    else:
        backend = of.state.MemoryBackend()
    flow = of.Flow("w3", parallelism=1, state_backend=backend)
    flow.enable_checkpointing(interval, os.path.join(tmp, "ckpt"),
                              incremental=cfg["incremental"], retained=1)
    stream = flow.source(cls["W3Source"](keys, updates, rate, out_dir), name="w3-source",
                         uid="w3-source")
    if verify_sample is not None:
        stream = stream.union(flow.source(cls["VerifySource"](verify_sample), name="w3-verify",
                                          uid="w3-verify"), name="w3-union", uid="w3-union")
    (stream.key_by(lambda r: r[0])
           .process(cls["W3State"](out_dir), name="w3-state", uid="w3-state")
           .sink(of.sinks.Discard(), name="sink", uid="sink"))
    return flow


class _RestoreLog(logging.Handler):
    """Captures the driver's "restored checkpoint N in X s" event."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.restored: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "restored":
            self.restored.append((record.checkpoint_id, record.duration_s))  # type: ignore[attr-defined]


# --- analysis -------------------------------------------------------------------------------
def _stored_key_len(k: int) -> int:
    """RocksDB key bytes of value state "v" for key k: kg(2) + len(name)(1) + "v" + len(4) +
    pickle(k) (the same for every backend's definition of "changed bytes")."""
    return 2 + 1 + 1 + 4 + len(pickle.dumps(k, protocol=5))


VALUE_STORED = len(pickle.dumps(b"x" * VALUE_LEN, protocol=5))


def changed_state(prev: int, pos: int, keys: int) -> tuple[int, int]:
    """(distinct keys, bytes) written by source positions prev .. pos-1."""
    lo, hi = min(prev, keys), min(pos, keys)  # load records: key == position
    upd = set(update_key_range(max(prev - keys, 0), max(pos - keys, 0), keys))
    n_load = hi - lo
    extra = [k for k in upd if not lo <= k < hi]
    nbytes = n_load * VALUE_STORED + VALUE_STORED * len(extra)
    if n_load:
        # key sizes in [lo, hi): pickle size changes at 256 and 65,536
        for a, b in ((0, 256), (256, 65_536), (65_536, 1 << 31)):
            n = max(0, min(hi, b) - max(lo, a))
            nbytes += n * _stored_key_len(a)
    nbytes += sum(_stored_key_len(k) for k in extra)
    return n_load + len(extra), nbytes


def expected_values(sample: list[int], keys: int, updates: int, big: bytes) -> dict[int, int]:
    """crc32 of the value each sampled key must hold after all positions."""
    want = set(sample)
    last = {k: k for k in sample}  # load position of key k is k
    for c in range(0, (updates >> CHUNK_BITS) + 1):
        base = c << CHUNK_BITS
        if base >= updates:
            break
        ks = update_keys(c, keys)[:updates - base]
        for i, k in enumerate(ks):
            if k in want:
                last[k] = keys + base + i
    out = {}
    for k, p in last.items():
        o = value_offset(p)
        out[k] = zlib.crc32(big[o:o + VALUE_LEN])
    return out


def _overlap(a0: float, a1: float, windows: list[tuple[float, float]],
             starts: list[float]) -> float:
    tot = 0.0
    i = max(0, bisect.bisect_right(starts, a0) - 1)
    while i < len(windows) and windows[i][0] < a1:
        w0, w1 = windows[i]
        tot += max(0.0, min(a1, w1) - max(a0, w0))
        i += 1
    return min(tot, a1 - a0)


def throughput(buckets: list[list[float]], col: int, windows: list[tuple[float, float]]
               ) -> dict[str, Any]:
    """Processed records/s inside checkpoint windows vs outside, over the buckets from the
    first to the last one with records of column ``col`` (1 = load, 2 = update); the first and
    last (partial) buckets are left out, empty buckets in between count as 0. A bucket that
    overlaps a window by a fraction f counts f of its records and time as "during"."""
    have = {int(b[0]): b for b in buckets if b[col] > 0}
    if len(have) < 3:
        return {}
    first, last = min(have), max(have)
    windows = sorted(windows)
    starts = [w[0] for w in windows]
    dn = dt_ = bn = bt = 0.0
    lag_d = lag_b = 0.0
    for b in range(first + 1, last):
        n = have[b][col] if b in have else 0
        lag = have[b][3] if b in have else 0.0
        t0 = b * BUCKET
        f = _overlap(t0, t0 + BUCKET, windows, starts) / BUCKET
        dn += f * n
        dt_ += f * BUCKET
        bn += (1 - f) * n
        bt += (1 - f) * BUCKET
        if f > 0:
            lag_d = max(lag_d, lag)
        if f < 1:
            lag_b = max(lag_b, lag)
    during = dn / dt_ if dt_ > 0 else None
    between = bn / bt if bt > 0 else None
    return {
        "span_s": (last - first - 1) * BUCKET,
        "during_s": dt_, "between_s": bt,
        "during_records_per_s": during, "between_records_per_s": between,
        "ratio": during / between if during is not None and between else None,
        "max_lag_s_during": lag_d if col == 2 else None,
        "max_lag_s_between": lag_b if col == 2 else None,
    }


# --- one run, in the child process ----------------------------------------------------------
def run_one(key: str, keys: int, seconds: float, rate: float, interval: float,
            do_restore: bool) -> dict[str, Any]:
    import resource

    cfg = CONFIGS[key]
    updates = round(seconds * rate)
    tmp = tempfile.mkdtemp(prefix="w3-", dir="/tmp")
    handler = _RestoreLog()
    logging.getLogger("onceflow").addHandler(handler)
    logging.getLogger("onceflow").setLevel(logging.INFO)
    problems: list[str] = []
    try:
        flow = build_flow(cfg, keys, updates, rate, interval, tmp)
        result = flow.run()
        out_dir = os.path.join(tmp, "out")
        done = result.completed_checkpoints
        failed = [c for c in result.checkpoints if c.status.value != "completed"]
        events = [json.loads(ln) for ln in Path(out_dir, "source-events.jsonl").read_text()
                  .splitlines()]
        ev = {e["event"]: e for e in events}
        positions = {}
        pfile = Path(out_dir, "positions.jsonl")
        if pfile.exists():
            for ln in pfile.read_text().splitlines():
                d = json.loads(ln)
                positions[d["id"]] = d["pos"]
        sfiles = sorted(Path(out_dir).glob("state-*.json"))
        buckets: list[list[float]] = []
        for f in sfiles:
            buckets.extend(json.loads(f.read_text())["buckets"])
            f.unlink()
        if result.restarts:
            problems.append(f"{result.restarts} restart(s): {result.failures}")
        total_in = result.records_in("w3-state")
        if total_in != keys + updates:
            problems.append(f"w3-state records_in {total_in} != {keys + updates}")
        load_n = sum(b[1] for b in buckets)
        upd_n = sum(b[2] for b in buckets)
        if load_n != keys or upd_n != updates:
            problems.append(f"bucket counts load {load_n} / updates {upd_n}")
        t_proc = result.processing_started_at
        ckpts = []
        prev_pos = 0
        for c in done:
            pos = positions.get(c.id)
            row: dict[str, Any] = {
                "id": c.id, "final": c.final,
                "trigger_s": c.trigger_time - t_proc,
                "duration_ms": (c.duration or 0) * 1e3,
                "max_sync_ms": c.max_sync_ms,
                "max_async_ms": max((s.async_ms for s in c.subtasks), default=0.0),
                "max_alignment_ms": max((s.alignment_ms for s in c.subtasks), default=0.0),
                "size": c.size, "uploaded": c.incremental_size, "position": pos,
            }
            if pos is None:
                problems.append(f"no source position for checkpoint {c.id}")
            else:
                n, nb = changed_state(prev_pos, pos, keys)
                row["phase"] = ("load" if pos <= keys else "update" if prev_pos >= keys
                                else "transition")
                row["changed_keys"], row["changed_bytes"] = n, nb
                row["uploaded_per_changed"] = c.incremental_size / nb if nb else None
                prev_pos = pos
            ckpts.append(row)
        windows = [(c.trigger_time, c.trigger_time + (c.duration or 0))
                   for c in result.checkpoints if not c.final and c.duration is not None]
        thr_upd = throughput(buckets, 2, windows)
        thr_load = throughput(buckets, 1, windows)
        max_lag = max((b[3] for b in buckets), default=None)
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        rec: dict[str, Any] = {
            "key": key, "keys": keys, "updates": updates, "rate": rate, "interval": interval,
            "seconds_updates": seconds,
            "processing_s": result.processing_seconds,
            "startup_s": result.processing_started_at - result.started_at,
            "load_s": (ev["load_read"]["t"] - t_proc) if "load_read" in ev else None,
            "updates_window_s": (ev["updates_read"]["t"] - ev["updates_start"]["t"])
            if "updates_read" in ev and "updates_start" in ev else None,
            "checkpoints": ckpts,
            "checkpoints_failed": [{"id": c.id, "failure": c.failure} for c in failed],
            "throughput_updates": thr_upd,
            "throughput_load": thr_load,
            "max_lag_s": max_lag,
            "cpu_driver_s": ru_self.ru_utime + ru_self.ru_stime,
            "cpu_workers_s": ru_kids.ru_utime + ru_kids.ru_stime,
            "disk_ckpt_bytes_end": _du(os.path.join(tmp, "ckpt")),
        }
        if do_restore:
            rec["restore"] = _restore(cfg, keys, updates, rate, interval, tmp, handler,
                                      problems)
        rec["valid"] = not problems
        rec["problems"] = problems
        return rec
    finally:
        logging.getLogger("onceflow").removeHandler(handler)
        shutil.rmtree(tmp, ignore_errors=True)


def _du(path: str) -> int:
    tot = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                tot += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return tot


def _restore(cfg: dict[str, Any], keys: int, updates: int, rate: float, interval: float,
             tmp: str, handler: _RestoreLog, problems: list[str]) -> dict[str, Any]:
    """A fresh job (same flow) restores the newest checkpoint: its source is finished, a
    second source emits a sample of keys whose state values are checked."""
    rng = random.Random(7)
    sample = sorted(rng.sample(range(keys), min(2000, keys)))
    handler.restored.clear()
    flow = build_flow(cfg, keys, updates, rate, interval, tmp, verify_sample=sample)
    result = flow.run(restore="latest")
    out_dir = os.path.join(tmp, "out")
    got: dict[int, int | None] = {}
    for f in Path(out_dir).glob("state-*.json"):
        got.update({int(k): v for k, v in json.loads(f.read_text())["verified"]})
    want = expected_values(sample, keys, updates, big_bytes())
    wrong = [k for k in sample if got.get(k) != want[k]]
    if wrong or len(got) != len(sample):
        problems.append(f"restore check: {len(wrong)} of {len(sample)} sampled keys wrong "
                        f"(got {len(got)}), e.g. {wrong[:5]}")
    restored = handler.restored[-1] if handler.restored else (None, None)
    if result.restored_from is None:
        problems.append("restore run did not restore a checkpoint")
    return {
        "checkpoint_id": restored[0],
        "restore_s": restored[1],  # driver: attempt start -> every task open (state loaded)
        "time_to_running_s": result.processing_started_at - result.started_at,
        "total_s": result.duration,
        "sample_checked": len(sample), "sample_wrong": len(wrong),
    }


# --- the parent -----------------------------------------------------------------------------
def run_subprocess(key: str, args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.seconds
    if key == "mem-full" and args.mem_full_seconds is not None:
        seconds = min(seconds, args.mem_full_seconds)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--backend", key,
           "--keys", str(args.keys), "--seconds", str(seconds), "--rate", str(args.rate),
           "--interval", str(args.interval)]
    if args.no_restore:
        cmd.append("--no-restore")
    run = run_child(cmd, timeout=args.timeout)
    rec = run.rec
    if rec is None:
        return {"key": key, "valid": False, "wall_s": run.wall_s,
                "problems": [f"exit code {run.returncode}: {run.err.strip()[-3000:]}"]}
    if run.returncode != 0:
        rec["valid"] = False
        rec.setdefault("problems", []).append(f"exit code {run.returncode}")
    rec["wall_s"] = run.wall_s
    rec["peak_rss_mb"] = run.sampled_tree_rss_mb
    warn = [ln for ln in run.err.splitlines() if "WARNING" in ln or "ERROR" in ln]
    rec["log_warnings"] = warn[-20:]
    return rec


def _med(vals: list[Any]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def _span(vals: list[Any]) -> tuple[float | None, float | None]:
    v = [x for x in vals if x is not None]
    return (min(v), max(v)) if v else (None, None)


def run_figures(r: dict[str, Any]) -> dict[str, Any]:
    """The per-run figures the summary and the targets use."""
    per = [c for c in r.get("checkpoints", []) if not c["final"]]
    steady = [c for c in per if c.get("phase") == "update"]
    full_state = [c for c in per if c.get("phase") in ("update", "transition")]
    ratios = [c["uploaded_per_changed"] for c in steady if c.get("uploaded_per_changed")]
    thr = r.get("throughput_updates") or {}
    thl = r.get("throughput_load") or {}
    rs = r.get("restore") or {}
    return {
        "checkpoints_periodic": len(per),
        "checkpoints_update_phase": len(steady),
        "checkpoints_failed": len(r.get("checkpoints_failed", [])),
        "uploaded_mb_median": _med([c["uploaded"] / 1e6 for c in steady]),
        "uploaded_mb_max": max((c["uploaded"] / 1e6 for c in steady), default=None),
        "changed_mb_median": _med([c["changed_bytes"] / 1e6 for c in steady]),
        "referenced_mb_median": _med([c["size"] / 1e6 for c in steady]),
        "uploaded_per_changed_median": _med(ratios),
        "uploaded_per_changed_max": max(ratios, default=None),
        "within_3x": sum(1 for x in ratios if x <= 3),
        # all bytes uploaded by update-phase checkpoints / all changed bytes they cover
        # (compactions included: the amortised cost)
        "uploaded_per_changed_total": (sum(c["uploaded"] for c in steady)
                                       / sum(c["changed_bytes"] for c in steady))
        if steady and sum(c["changed_bytes"] for c in steady) else None,
        "sync_ms_max_5m": max((c["max_sync_ms"] for c in full_state), default=None),
        "sync_ms_median_5m": _med([c["max_sync_ms"] for c in full_state]),
        "sync_ms_max_all": max((c["max_sync_ms"] for c in per), default=None),
        "duration_ms_median": _med([c["duration_ms"] for c in steady]),
        "duration_ms_max": max((c["duration_ms"] for c in steady), default=None),
        "thr_during": thr.get("during_records_per_s"),
        "thr_between": thr.get("between_records_per_s"),
        "thr_ratio": thr.get("ratio"),
        "load_thr_during": thl.get("during_records_per_s"),
        "load_thr_between": thl.get("between_records_per_s"),
        "load_thr_ratio": thl.get("ratio"),
        "max_lag_s": r.get("max_lag_s"),
        "load_s": r.get("load_s"),
        "restore_s": rs.get("restore_s"),
        "time_to_running_s": rs.get("time_to_running_s"),
        "startup_s": r.get("startup_s"),
        "peak_rss_mb": r.get("peak_rss_mb"),
        "cpu_s": (r.get("cpu_driver_s") or 0) + (r.get("cpu_workers_s") or 0),
    }


def summarize(key: str, runs: list[dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("valid")]
    figs = [run_figures(r) for r in ok]
    out: dict[str, Any] = {
        "workload": "W3 large-state checkpoints",
        "configuration": CONFIGS[key]["name"],
        "key": key,
        "records": (ok[0]["keys"] + ok[0]["updates"]) if ok else None,
        "seconds": _med([r.get("processing_s") for r in ok]),
        "records_per_s": _med([(r["keys"] + r["updates"]) / r["processing_s"] for r in ok]),
        "peak_rss_mb": _med([r.get("peak_rss_mb") for r in ok]),
        "valid_runs": len(ok),
        "total_runs": len(runs),
    }
    lo, hi = _span([r.get("peak_rss_mb") for r in ok])
    out["peak_rss_mb_min"], out["peak_rss_mb_max"] = lo, hi
    if figs:
        for f in figs[0]:
            if f in out:
                continue
            vals = [g[f] for g in figs]
            lo, hi = _span(vals)
            out[f] = {"median": _med(vals), "min": lo, "max": hi}
    out["runs"] = runs
    out["machine"] = machine
    return out


def _f(x: float | None, d: int = 1) -> str:
    return "-" if x is None else f"{x:,.{d}f}"


def _mmm(s: dict[str, Any], f: str, d: int = 1) -> str:
    v = s.get(f)
    if not isinstance(v, dict) or v["median"] is None:
        return "-"
    if s["valid_runs"] == 1 or v["min"] == v["max"]:
        return _f(v["median"], d)
    return f"{_f(v['median'], d)} ({_f(v['min'], d)}{DASH}{_f(v['max'], d)})"


def render(summaries: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| configuration | valid runs | update-phase ckpts | uploaded MB / ckpt | changed MB / "
        "ckpt | uploaded / changed: median (max of runs' max) | uploaded / changed over the "
        "update phase (sum / sum) | referenced MB | max sync ms (full state) | ckpt duration "
        "ms median | updates/s during / between ckpts | ratio "
        "| max lag s | restore: time to running s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        if not s["valid_runs"]:
            rows.append(f"| {s['configuration']} | 0 / {s['total_runs']} | "
                        + " | ".join(["-"] * 13) + " |")
            continue
        mx = s["uploaded_per_changed_max"]["max"] if s.get("uploaded_per_changed_max") else None
        rows.append(
            f"| {s['configuration']} | {s['valid_runs']} / {s['total_runs']} "
            f"| {_mmm(s, 'checkpoints_update_phase', 0)} | {_mmm(s, 'uploaded_mb_median')} "
            f"| {_mmm(s, 'changed_mb_median')} "
            f"| {_mmm(s, 'uploaded_per_changed_median', 2)} ({_f(mx, 1)}) "
            f"| {_mmm(s, 'uploaded_per_changed_total', 2)} "
            f"| {_mmm(s, 'referenced_mb_median', 0)} | {_mmm(s, 'sync_ms_max_5m')} "
            f"| {_mmm(s, 'duration_ms_median', 0)} "
            f"| {_f(s['thr_during']['median'], 0)} / {_f(s['thr_between']['median'], 0)} "
            f"| {_mmm(s, 'thr_ratio', 2)} | {_mmm(s, 'max_lag_s', 2)} "
            f"| {_mmm(s, 'time_to_running_s')} | {_f(s['peak_rss_mb'], 0)} |")
    return "\n".join(rows)


def targets(s: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    out: list[tuple[str, str, str, bool | None]] = []
    if not s or not s["valid_runs"]:
        return out
    med = s["uploaded_per_changed_median"]["median"]
    mx = s["uploaded_per_changed_max"]["max"]
    n_ok = sum(run_figures(r)["within_3x"] for r in s["runs"] if r.get("valid"))
    n_all = sum(run_figures(r)["checkpoints_update_phase"] for r in s["runs"] if r.get("valid"))
    if med is not None:
        out.append(("uploaded bytes / changed-state bytes per incremental checkpoint",
                    f"median {med:.2f}, max {mx:.1f}; {n_ok} of {n_all} checkpoints <= 3x",
                    "<= 3x", med <= 3))
        tot = s["uploaded_per_changed_total"]
        out.append(("the same over the whole update phase: sum uploaded / sum changed "
                    "(compaction uploads included)",
                    f"{tot['median']:.2f} (runs {tot['min']:.2f}{DASH}{tot['max']:.2f})",
                    "<= 3x", tot["median"] <= 3))
    sync = s["sync_ms_max_5m"]["max"]
    if sync is not None:
        keys = next(r["keys"] for r in s["runs"] if r.get("valid"))
        out.append((f"sync-phase pause at {keys:,} keys (max over the transition and "
                    "update-phase checkpoints of all runs)",
                    f"{sync:.1f} ms (median of the runs' max "
                    f"{s['sync_ms_max_5m']['median']:.1f} ms)", "<= 50 ms", sync <= 50))
    r = s["thr_ratio"]
    if r["median"] is not None:
        out.append(("update throughput during checkpoints / between (median of runs)",
                    f"{100 * r['median']:.1f} % (runs {100 * r['min']:.1f}{DASH}"
                    f"{100 * r['max']:.1f} %)", ">= 80 %", r["median"] >= 0.8))
    t = s["time_to_running_s"]
    if t["median"] is not None:
        keys = next(r["keys"] for r in s["runs"] if r.get("valid"))
        out.append((f"restore of {keys:,} keys: run() -> all tasks running (median of "
                    "runs; met if every run is)",
                    f"{t['median']:.1f} s (runs {t['min']:.1f}{DASH}{t['max']:.1f} s)",
                    "< 20 s", t["max"] < 20))
    return out


def render_ckpts(run: dict[str, Any]) -> str:
    rows = ["| id | phase | trigger s | duration ms | sync ms | async ms | referenced MB "
            "| uploaded MB | changed keys | changed MB | uploaded / changed |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in run.get("checkpoints", []):
        phase = "final" if c["final"] else c.get("phase", "?")
        rows.append(f"| {c['id']} | {phase} | {c['trigger_s']:.1f} | {c['duration_ms']:.0f} "
                    f"| {c['max_sync_ms']:.1f} | {c['max_async_ms']:.0f} | {c['size'] / 1e6:.1f} "
                    f"| {c['uploaded'] / 1e6:.1f} | {c.get('changed_keys', 0):,} "
                    f"| {c.get('changed_bytes', 0) / 1e6:.1f} "
                    f"| {_f(c.get('uploaded_per_changed'), 2)} |")
    return "\n".join(rows)


def main_parent(args: argparse.Namespace) -> int:
    st = shutil.disk_usage("/tmp")
    need = args.keys * 140 * 6  # local DB + checkpoints + restore copy, with headroom
    print(f"/tmp: {st.free / 1e9:.1f} GB free (need about {need / 1e9:.1f} GB)", flush=True)
    if st.free < need:
        print("not enough free disk in /tmp", file=sys.stderr)
        return 2
    machine = machine_info()
    keys = [k for k in args.backends.split(",") if k]
    for k in keys:
        if k not in CONFIGS:
            print(f"unknown backend {k!r}; choose from {','.join(CONFIGS)}", file=sys.stderr)
            return 2
    print(f"W3: {args.keys:,} keys, updates {args.rate:,.0f}/s for {args.seconds:g} s, "
          f"checkpoint every {args.interval:g} s, {args.runs} interleaved run(s) of "
          f"{', '.join(keys)}; {machine['cores']} cores, Python {machine['python']}",
          flush=True)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for i in range(args.runs):
        for k in keys:
            rec = run_subprocess(k, args)
            rec["run"] = i + 1
            runs[k].append(rec)
            if rec.get("valid"):
                f = run_figures(rec)
                print(f"  run {i + 1} {k:<10} load {_f(f['load_s'])} s, {f['checkpoints_periodic']}"
                      f" ckpts ({f['checkpoints_update_phase']} update-phase), uploaded/changed "
                      f"median {_f(f['uploaded_per_changed_median'], 2)} max "
                      f"{_f(f['uploaded_per_changed_max'], 2)}, max sync (full state) "
                      f"{_f(f['sync_ms_max_5m'])} ms, thr ratio {_f(f['thr_ratio'], 2)}, "
                      f"max lag {_f(f['max_lag_s'], 2)} s, restore "
                      f"{_f(f['time_to_running_s'])} s, RSS {_f(f['peak_rss_mb'], 0)} MB, "
                      f"wall {_f(rec['wall_s'])} s", flush=True)
            else:
                print(f"  run {i + 1} {k:<10} INVALID: {rec.get('problems')}", flush=True)
    summaries = {k: summarize(k, runs[k], machine) for k in keys}
    table = render(summaries)
    tg = targets(summaries.get("rocks-inc", {}))
    ttable = "\n".join(["| target (RocksDB, incremental) | measured | target | met |",
                        "|---|---|---|---|"] + [
        f"| {n} | {v} | {t} | {'-' if m is None else ('yes' if m else 'NO')} |"
        for n, v, t, m in tg])
    detail = ""
    main_key = "rocks-inc" if "rocks-inc" in summaries else keys[0]
    ok_runs = [r for r in runs[main_key] if r.get("valid")]
    if ok_runs:
        ok_runs.sort(key=lambda r: run_figures(r)["uploaded_per_changed_median"] or 0)
        mid = ok_runs[len(ok_runs) // 2]
        detail = (f"Checkpoints of one run of {CONFIGS[main_key]['name']} (run {mid['run']}, "
                  f"the median run by uploaded/changed):\n\n{render_ckpts(mid)}\n")
    extra = []
    for s in summaries.values():
        if s["valid_runs"] and s["load_thr_ratio"]["median"] is not None:
            extra.append(f"| {s['configuration']} | {_mmm(s, 'load_s')} "
                         f"| {_f(s['load_thr_during']['median'], 0)} / "
                         f"{_f(s['load_thr_between']['median'], 0)} "
                         f"| {_mmm(s, 'load_thr_ratio', 2)} | {_mmm(s, 'sync_ms_max_all')} "
                         f"| {_mmm(s, 'cpu_s')} |")
    load_table = ""
    if extra:
        load_table = ("Load phase (unthrottled, so this shows the processing capacity a "
                      "checkpoint takes away):\n\n| configuration | load s (processing start -> "
                      "last load record read) | load records/s during / between ckpts | ratio "
                      "| max sync ms over all ckpts | CPU s (driver + workers) |\n"
                      "|---|---|---|---|---|---|\n" + "\n".join(extra) + "\n")
    git = machine.get("onceflow_uncommitted_changes")
    cmdline = " ".join(["python benchmarks/w3.py", *sys.argv[1:]])
    head = "\n".join([
        "# W3 large-state checkpoints results",
        "",
        f"`{cmdline}`: {args.keys:,} keys x 100-byte values, then {args.rate:,.0f} updates/s "
        f"(uniform keys) for {args.seconds:g} s, checkpoint every {args.interval:g} s, "
        f"parallelism 1, {args.runs} interleaved run(s) per configuration (fresh subprocess "
        f"each). Machine: {machine['cores']} cores ({machine['cpu']}), "
        f"{machine['implementation']} {machine['python']}; {machine['date']}; load average "
        f"at start {machine['loadavg_at_start']}. Shared, noisy machine. Engine: git "
        f"{machine.get('git_head')}" + (f" plus uncommitted changes in onceflow/ ({git})"
                                        if git else "") + ".",
        "",
        "- Values are medians over valid runs (min" + DASH + "max in brackets). Per-checkpoint "
        "figures are over the *update-phase* checkpoints (the previous checkpoint's cut was "
        "already past the load), except max sync, which also includes the transition "
        "checkpoint (first after the load; 5 M keys in state).",
        "- uploaded = `CheckpointStats.incremental_size`; referenced = `.size`; changed = "
        "distinct keys written between the previous completed checkpoint's source position "
        "and this one's (exact, from the positions the source was notified of) x stored "
        f"bytes per entry (RocksDB key 25 B + pickled value {VALUE_STORED} B).",
        "- throughput: records the keyed function processed per 100 ms bucket, split by "
        "overlap with [trigger, trigger + duration] of every periodic checkpoint. With the "
        "rate-limited update stream both rates are ~the offered rate unless processing "
        "stalls; lag = processing time - scheduled time shows the stalls.",
        "- restore: a fresh job (same flow + a 2,000-key check source) restores the newest "
        "checkpoint; time from run() to all tasks running. Every run checks the sampled "
        "keys' values after restore.",
        "",
    ])
    md = f"{head}\n{table}\n\n{ttable}\n\n{load_table}\n{detail}"
    print()
    print(md)
    return save_results("w3", summaries, md, save=not args.no_save)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=5_000_000)
    ap.add_argument("--seconds", type=float, default=60.0, help="update phase length, s")
    ap.add_argument("--interval", type=float, default=5.0, help="checkpoint interval, s")
    ap.add_argument("--rate", type=float, default=None,
                    help="updates/s (default: 1 %% of --keys per second)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", default=",".join(CONFIGS),
                    help=f"comma-separated: {','.join(CONFIGS)}")
    ap.add_argument("--mem-full-seconds", type=float, default=None,
                    help="cap the update phase of mem-full (full snapshots of all state)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 200,000 keys, 10 s, checkpoint every 2 s, 1 run")
    ap.add_argument("--no-restore", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per run, s")
    ap.add_argument("--one", action="store_true", help="one run in this process, JSON line")
    ap.add_argument("--backend", default="rocks-inc", help="with --one")
    args = ap.parse_args()
    if args.quick:
        args.keys, args.seconds, args.interval, args.runs = 200_000, 10.0, 2.0, 1
        args.no_save = True
    if args.rate is None:
        args.rate = args.keys / 100
    if args.one:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        rec = run_one(args.backend, args.keys, args.seconds, args.rate, args.interval,
                      not args.no_restore)
        print(json.dumps(rec), flush=True)
        return 0 if rec["valid"] else 1
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
