"""Large state (issue #5): the RocksDB backend, incremental checkpoints and the shared-file
registry, rescaling from checkpoints and savepoints, savepoints, and state schema safety.

Everything runs on a real RocksDB (rocksdict), real files, and real processes killed with
SIGKILL; outputs are compared with the exact expected multiset of running counts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import crashjobs
import pytest
import statejobs
from jobproc import JobProcess, assert_no_orphans, kill_randomly

import onceflow as of
from onceflow.state.backend import SnapshotTarget
from onceflow.state.memory import KeyedStore
from onceflow.state.rocksdb import RocksDBStore

SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261127"))
CRASH_JOB = str(Path(__file__).with_name("crashjobs.py"))
STATE_JOB = str(Path(__file__).with_name("statejobs.py"))


def shared_files(flow_dir: Path) -> set[str]:
    root = flow_dir / "shared"
    if not root.exists():
        return set()
    return {f"shared/{p.parent.name}/{p.name}" for p in root.glob("*/*")}


def referenced_files(flow_dir: Path) -> set[str]:
    refs: set[str] = set()
    for meta in flow_dir.glob("chk-*/_metadata"):
        refs.update(json.loads(meta.read_text())["body"]["shared"])
    return refs


def assert_shared_clean(flow_dir: Path) -> None:
    """Storage holds exactly the shared files the retained checkpoints reference."""
    have, need = shared_files(flow_dir), referenced_files(flow_dir)
    assert need <= have, f"referenced but missing: {sorted(need - have)[:5]}"
    assert have <= need, f"unreferenced shared files left: {sorted(have - need)[:5]}"


# --- the store itself --------------------------------------------------------------------
def _ops(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    keys = [f"k{i}" for i in range(40)] + list(range(40))
    out: list[tuple[Any, ...]] = []
    for _ in range(n):
        key = rng.choice(keys)
        kind = rng.choice(["v+", "v-", "l+", "l=", "l-", "m+", "m-", "mc", "read", "snap"])
        out.append((kind, key, rng.randrange(6), rng.randrange(1000)))
    return out


def _apply(store: Any, handles: dict[str, Any], op: tuple[Any, ...]) -> Any:
    kind, key, mk, val = op
    store.scope.key = key
    v, lst, m = handles["v"], handles["l"], handles["m"]
    if kind == "v+":
        v.update({"n": val})
    elif kind == "v-":
        v.clear()
    elif kind == "l+":
        lst.add(val)
    elif kind == "l=":
        lst.update([val, val + 1])
    elif kind == "l-":
        lst.clear()
    elif kind == "m+":
        m.put(mk, val)
    elif kind == "m-":
        m.remove(mk)
    elif kind == "mc":
        m.clear()
    store.after_batch()
    # map iteration order is unspecified (as in Flink): compare as sorted
    return (v.value(), lst.get(), sorted(m.items()), m.get(mk), m.contains(mk), m.is_empty())


def isolated(fn: Any, *args: Any) -> Any:
    """Run ``fn`` in a fresh (spawned) interpreter. RocksDB's background threads do not
    survive ``fork``: a process that opened a database must not fork workers later, so
    tests that drive a store directly keep it out of the pytest process."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result(timeout=240)


def test_rocksdb_store_reads_exactly_what_the_memory_store_reads(tmp_path: Path) -> None:
    isolated(_differential, tmp_path)


def test_incremental_checkpoint_after_1pct_updates_uploads_only_new_files(
        tmp_path: Path) -> None:
    isolated(_incremental_1pct, tmp_path)


def _differential(tmp_path: Path) -> None:
    """Differential test: the same random operations (value/list/map, clears, snapshots
    that freeze the write layer, tiny layers that spill) give the same reads."""
    rng = random.Random(SEED)
    mem = KeyedStore(128, (0, 128))
    rocks = RocksDBStore(of.state.RocksDBBackend(local_dir=str(tmp_path / "local"),
                                                 layer_entries=7),
                         128, (0, 128), operator="t", owner="t-0", incremental=True,
                         flow_dir=str(tmp_path))
    hm = {"v": mem.value_state("v"), "l": mem.list_state("l"), "m": mem.map_state("m")}
    hr = {"v": rocks.value_state("v"), "l": rocks.list_state("l"), "m": rocks.map_state("m")}
    pending = []
    try:
        for i, op in enumerate(_ops(rng, 3000)):
            if op[0] == "snap":
                pending.append(rocks.snapshot(i))
                continue
            assert _apply(rocks, hr, op) == _apply(mem, hm, op), f"op {i}: {op}"
        for p in pending:
            p.discard()
        # the whole state, exported in the neutral format, equals the memory tables
        export = rocks.writer.submit(rocks._export, rocks._freeze()).result()["tables"]
        assert export == {k: t for k, t in mem.tables.items() if t}
    finally:
        rocks.close()


def _target(flow_dir: Path, cid: int) -> SnapshotTarget:
    d = flow_dir / f"chk-{cid}"
    d.mkdir(parents=True)
    return SnapshotTarget(cid, str(d), str(flow_dir / "shared"), "op-0")


def _incremental_1pct(tmp_path: Path) -> None:
    n = 100_000
    rng = random.Random(SEED)
    store = RocksDBStore(of.state.RocksDBBackend(local_dir=str(tmp_path / "local")), 128,
                         (0, 128), operator="big", owner="op-0", incremental=True,
                         flow_dir=str(tmp_path))
    try:
        v = store.value_state("v")
        for k in range(n):
            store.scope.key = k
            v.update(rng.randbytes(100))
            if k % 1000 == 0:
                store.after_batch()
        t1 = _target(tmp_path, 1)
        m1 = store.snapshot(1).run(t1)
        store.notify_complete(1)
        full_bytes = t1.new_bytes
        assert full_bytes > n * 100  # the values do not compress: all of it was uploaded
        changed = rng.sample(range(n), n // 100)
        changed_bytes = 0
        for k in changed:
            store.scope.key = k
            val = rng.randbytes(100)
            v.update(val)
            changed_bytes += len(val) + 16
        t2 = _target(tmp_path, 2)
        m2 = store.snapshot(2).run(t2)
        sst1 = {name: e for name, e in m1["files"].items() if name.endswith(".sst")}
        sst2 = {name: e for name, e in m2["files"].items() if name.endswith(".sst")}
        new = [name for name in sst2 if name not in sst1]
        assert new, "the updates produced no new SST file"
        for name in sst1.keys() & sst2.keys():  # an old file is referenced, not copied again
            p1 = os.path.normpath(os.path.join(t1.checkpoint_dir, sst1[name][0]))
            p2 = os.path.normpath(os.path.join(t2.checkpoint_dir, sst2[name][0]))
            assert p1 == p2
        assert t2.new_bytes <= 3 * changed_bytes, (t2.new_bytes, changed_bytes)
        assert t2.new_bytes < full_bytes / 20
    finally:
        store.close()


def test_registry_deletes_a_file_only_when_unreferenced_and_no_older_checkpoint_in_flight(
        tmp_path: Path) -> None:
    from onceflow.checkpoint.shared import SharedRegistry

    owner = tmp_path / "shared" / "op-0"
    owner.mkdir(parents=True)
    for name in ("a", "b", "c", "orphan"):
        (owner / name).write_bytes(b"x")
    rel = {n: f"shared/op-0/{n}" for n in ("a", "b", "c", "orphan")}
    reg = SharedRegistry(str(tmp_path))
    reg.register(1, [rel["a"], rel["b"]])
    reg.register(2, [rel["b"], rel["c"]])
    reg.release(1, in_flight={3})  # checkpoint 3 was triggered before 1 was dropped
    reg.collect({3})
    assert (owner / "a").exists(), "deleted while a checkpoint that may use it was in flight"
    reg.register(3, [rel["a"]])  # ... and 3 did reference it
    reg.collect(set())
    assert (owner / "a").exists()
    reg.release(3, in_flight=set())
    reg.collect(set())
    assert not (owner / "a").exists()
    assert (owner / "b").exists() and (owner / "c").exists()
    reg.sweep()  # between attempts: files no checkpoint ever registered go
    assert not (owner / "orphan").exists()
    assert sorted(p.name for p in owner.iterdir()) == ["b", "c"]


# --- crashes -----------------------------------------------------------------------------
class StateJob(JobProcess):
    def __init__(self, tmp: Path, *args: str) -> None:
        super().__init__(tmp)
        self.args = list(args)

    def command(self) -> list[str]:
        return [STATE_JOB, *self.args]


class CrashJob(JobProcess):
    def __init__(self, tmp: Path, shape: str, *extra: str,
                 env: dict[str, str] | None = None, records: int = 40_000) -> None:
        super().__init__(tmp, env)
        self.shape, self.records = shape, records
        self.out, self.ckpt = tmp / "out", tmp / "ckpt"
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [CRASH_JOB, self.shape, "--out", str(self.out), "--ckpt", str(self.ckpt),
                "--records", str(self.records), *self.extra]

    def check_exact(self) -> None:
        got = crashjobs.committed(str(self.out))
        want = crashjobs.expected(self.shape, self.records)
        assert got == want, crashjobs.diff(got, want) + f"\nlog: {self.tail(3000)}"

    @property
    def flow_dir(self) -> Path:
        return self.ckpt / f"crash-{self.shape}"


BACKEND_CASES = [
    ("two_keyed", 2, "rocksdb", True),
    ("keyed_count", 1, "rocksdb", False),
    ("two_keyed", 2, "memory", True),
]


@pytest.mark.parametrize(("shape", "parallelism", "backend", "incremental"), BACKEND_CASES)
def test_random_kills_with_state_backend_leave_output_exact(
        tmp_path: Path, shape: str, parallelism: int, backend: str, incremental: bool) -> None:
    rng = random.Random(f"{SEED}-{shape}-{backend}-{incremental}")
    flags = ["--incremental"] if incremental else []
    job = CrashJob(tmp_path, shape, "--parallelism", str(parallelism), "--rate", "6000",
                   "--interval", "0.15", "--retained", "1", "--backend", backend, *flags)
    job.start()
    assert kill_randomly(job, rng, kills=3) >= 1
    code, result = job.wait()
    assert code == 0, job.log.read_text()[-3000:]
    assert result is not None and result["restarts"] >= 1
    job.check_exact()
    if incremental:
        assert_shared_clean(job.flow_dir)


def test_kill_during_upload_leaves_storage_restorable_and_clean(tmp_path: Path) -> None:
    token = tmp_path / "fault-fired"
    job = CrashJob(tmp_path, "two_keyed", "--parallelism", "2", "--rate", "8000",
                   "--interval", "0.15", "--retained", "1", "--backend", "rocksdb",
                   "--incremental",
                   env={"ONCEFLOW_FAULT": "snapshot.upload@checkpoint=4,subtask=1",
                        "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    code, result = job.wait()
    assert token.exists(), "the fault never fired"
    assert code == 0, job.log.read_text()[-3000:]
    assert result is not None and result["restarts"] == 1
    job.check_exact()
    assert_shared_clean(job.flow_dir)


def test_restore_from_checkpoint_with_deleted_shared_file_fails_clearly(
        tmp_path: Path) -> None:
    flow = statejobs.build(str(tmp_path / "out"), str(tmp_path / "ck"), backend_name="rocksdb",
                           parallelism=1, records=3000, rate=1e9, incremental=True)
    flow.run()
    flow_dir = tmp_path / "ck" / "statejob"
    chk = sorted(flow_dir.glob("chk-*"), key=lambda p: int(p.name[4:]))[-1]
    victim = sorted(referenced_files(flow_dir))[0]
    os.unlink(flow_dir / victim)
    again = statejobs.build(str(tmp_path / "out2"), str(tmp_path / "ck"),
                            backend_name="rocksdb", parallelism=1, records=3000, rate=1e9,
                            incremental=True)
    with pytest.raises(of.CorruptCheckpointError) as err:
        again.run(restore=str(chk))
    assert os.path.basename(victim) in str(err.value) and "missing" in str(err.value)


# --- savepoints, rescaling ---------------------------------------------------------------
def _run_until_stopped(flow: of.Flow, restore: str | None, out: Path, directory: str,
                       records: int) -> str:
    """Start ``flow``, wait until it committed output of its own (so it is mid-run), then
    stop it with a savepoint; check it really stopped before the end of its input."""
    before = _committed_files(out)
    client = flow.start(restore=restore)
    deadline = time.monotonic() + 60
    while _committed_files(out) <= before:
        assert time.monotonic() < deadline and not client.done(), "the job made no progress"
        time.sleep(0.05)
    path = client.stop_with_savepoint(directory, timeout=120)
    result = client.result(timeout=120)
    assert result.savepoint == path
    assert result.records_out("numbers") < records, "the job ended before the stop"
    return path


def _committed_files(out: Path) -> int:
    return len(list(out.glob("*.jsonl"))) if out.exists() else 0


def assert_continues(out: Path, records: int) -> None:
    """A run restored from a mid-run snapshot commits, per key, the counts from where the
    snapshot was (the same point for both stateful operators) up to the final count, each
    once: state restored, nothing lost, nothing twice."""
    got = statejobs.committed(str(out))
    assert sum(got.values()) == len(got), "a count was committed twice"
    final: dict[Any, int] = {}
    for _, key, c in statejobs.expected(records):
        final[key] = max(final.get(key, 0), c)
    per: dict[tuple[str, Any], list[int]] = {}
    for kind, key, c in got:
        per.setdefault((kind, key), []).append(c)
    assert any(min(cs) > 1 for cs in per.values()), "nothing was restored"
    for key, last in final.items():
        a = sorted(per.get(("count", key), []))
        b = sorted(per.get(("tally", key), []))
        assert a == b, f"key {key}: the two operators restored different counts"
        if a:
            assert a == list(range(a[0], last + 1)), f"key {key}: {a[:5]}...{a[-5:]}"


def _check(out: Path, records: int, key_type: str = "int") -> None:
    got = statejobs.committed(str(out))
    want = statejobs.expected(records, key_type)
    assert got == want, crashjobs.diff(got, want)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_rescale_2_3_1_through_savepoints_equals_failure_free_output(
        tmp_path: Path, backend: str) -> None:
    out, ck, sp = tmp_path / "out", str(tmp_path / "ck"), str(tmp_path / "sp")
    n = 30_000

    def flow(p: int) -> of.Flow:
        return statejobs.build(str(out), ck, backend_name=backend, parallelism=p,
                               records=n, rate=2500, incremental=True)

    s1 = _run_until_stopped(flow(2), None, out, sp, n)
    s2 = _run_until_stopped(flow(3), s1, out, sp, n)
    meta = json.loads((Path(s2) / "_metadata").read_text())["body"]
    assert meta["kind"] == "savepoint" and meta["shared"] == []
    assert meta["operators"]["count"]["parallelism"] == 3
    result = flow(1).run(restore=s2)
    assert result.restored_from == s2
    _check(out, n)
    assert Path(s1).exists() and Path(s2).exists(), "savepoints must never be deleted"


def test_rescale_from_a_killed_jobs_incremental_checkpoint(tmp_path: Path) -> None:
    """p=2 → SIGKILL of the driver → p=3 from its latest RocksDB incremental checkpoint →
    SIGKILL → p=1 from the latest checkpoint, to the end: exact output."""
    out, ck = tmp_path / "out", tmp_path / "ck"
    n = 16_000
    for p in (2, 3):
        job = StateJob(tmp_path, "--out", str(out), "--ckpt", str(ck), "--backend", "rocksdb",
                       "--parallelism", str(p), "--records", str(n), "--rate", "2000",
                       "--incremental", *(["--restore", "latest"] if p == 3 else []))
        proc = job.start()
        started = time.monotonic()
        # let it run past a few checkpoints (at least 1.5 s), then kill the driver
        while time.monotonic() - started < 1.5 or \
                not list((ck / "statejob").glob("chk-*/_metadata")):
            assert time.monotonic() - started < 60 and proc.poll() is None, job.tail(2000)
            time.sleep(0.1)
        workers = [w.pid for w in job.workers()]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_no_orphans(workers)
    flow = statejobs.build(str(out), str(ck), backend_name="rocksdb", parallelism=1,
                           records=n, rate=1e9, incremental=True)
    result = flow.run(restore="latest")
    assert result.restored_from is not None
    _check(out, n)
    assert_shared_clean(ck / "statejob")


def test_savepoint_round_trip_memory_rocksdb_memory(tmp_path: Path) -> None:
    out, ck, sp = tmp_path / "out", str(tmp_path / "ck"), str(tmp_path / "sp")
    n = 30_000

    def flow(backend: str, p: int) -> of.Flow:
        return statejobs.build(str(out), ck, backend_name=backend, parallelism=p,
                               records=n, rate=2500)

    s1 = _run_until_stopped(flow("memory", 2), None, out, sp, n)
    s2 = _run_until_stopped(flow("rocksdb", 2), s1, out, sp, n)
    flow("memory", 1).run(restore=s2)
    _check(out, n)


def test_savepoint_of_a_running_job_is_portable_and_kept(tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    n = 8_000
    flow = statejobs.build(str(out), str(ck), backend_name="rocksdb", parallelism=2,
                           records=n, rate=2500, incremental=True, retained=1)
    client = flow.start()
    time.sleep(1.0)
    path = client.savepoint()
    result = client.result(timeout=120)
    assert result.savepoints and result.savepoints[0].path == path
    assert len(result.completed_checkpoints) >= 3
    assert Path(path, "_metadata").exists(), "the savepoint was deleted"
    # self-contained: copy it elsewhere, remove all checkpoint storage, restore the copy
    copy = tmp_path / "moved" / "sp"
    shutil.copytree(path, copy)
    shutil.rmtree(ck)
    out2 = tmp_path / "out2"
    again = statejobs.build(str(out2), str(tmp_path / "ck2"), backend_name="memory",
                            parallelism=3, records=n, rate=1e9)
    again.run(restore=str(copy))
    assert_continues(out2, n)


def test_savepoint_needs_checkpointing_and_a_writable_directory(tmp_path: Path) -> None:
    flow = of.Flow("nock")
    flow.source(of.sources.Range(0, 200_000)).map(statejobs.throttle(20_000)) \
        .sink(of.sinks.Discard())
    client = flow.start()
    with pytest.raises(of.ConfigurationError, match="enable_checkpointing"):
        client.savepoint()
    client.result(timeout=60)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    flow2 = statejobs.build(str(tmp_path / "o"), str(tmp_path / "ck"), backend_name="memory",
                            parallelism=1, records=20_000, rate=5000)
    c2 = flow2.start()
    time.sleep(0.5)
    with pytest.raises(of.SavepointError, match="cannot create savepoint directory"):
        c2.savepoint(str(blocked))
    c2.result(timeout=60)
    _check(tmp_path / "o", 20_000)


# --- schema safety -----------------------------------------------------------------------
def test_changed_key_type_is_refused_naming_the_operator(tmp_path: Path) -> None:
    out, ck, sp = tmp_path / "out", str(tmp_path / "ck"), str(tmp_path / "sp")
    f1 = statejobs.build(str(out), ck, backend_name="memory", parallelism=1, records=20_000,
                         rate=2000)
    s1 = _run_until_stopped(f1, None, out, sp, 20_000)
    f2 = statejobs.build(str(out), ck, backend_name="rocksdb", parallelism=1, records=6000,
                         rate=1e9, key_type="str")
    f2.restart_strategy = of.restart.no_restart()
    with pytest.raises(of.JobFailedError, match=r"operator '(count|tally)'.*keyed by int.*str"):
        f2.run(restore=s1)


def test_changed_state_kind_is_refused(tmp_path: Path) -> None:
    class AsList(of.KeyedProcessFunction):
        def open(self, ctx: of.RuntimeContext) -> None:
            self.count = ctx.list_state("count")

        def process_element(self, value: Any, ctx: of.ProcessContext) -> None:
            self.count.add(1)

    ck = tmp_path / "ck"
    f1b = of.Flow("kinds", restart_strategy=of.restart.no_restart())
    f1b.enable_checkpointing(0.1, ck)
    f1b.source(of.sources.Range(0, 100)).map(lambda x: (x % 3, x)).key_by(lambda kv: kv[0]) \
        .process(statejobs.Tally(), name="tally").sink(of.sinks.Discard())
    f1b.run()
    f2 = of.Flow("kinds", restart_strategy=of.restart.no_restart())
    f2.enable_checkpointing(0.1, ck)
    f2.source(of.sources.Range(0, 100)).map(lambda x: (x % 3, x)).key_by(lambda kv: kv[0]) \
        .process(AsList(), name="tally").sink(of.sinks.Discard())
    with pytest.raises(of.JobFailedError, match=r"operator 'tally'.*'count' is value state"):
        f2.run(restore="latest")


def test_rocksdb_checkpoint_restores_into_the_memory_backend(tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    n = 9_000
    f1 = statejobs.build(str(out), str(ck), backend_name="rocksdb", parallelism=2,
                         records=n, rate=2500, incremental=True)
    client = f1.start()
    time.sleep(1.2)
    # a checkpoint (not a savepoint) of a job killed mid-run: simulate by restoring the
    # newest retained checkpoint into another flow while this one is stopped hard
    client.stop_with_savepoint(str(tmp_path / "sp"))
    client.result(timeout=60)
    chk = sorted((ck / "statejob").glob("chk-*"), key=lambda p: int(p.name[4:]))[-1]
    meta = json.loads((chk / "_metadata").read_text())["body"]
    assert meta["shared"], "expected an incremental RocksDB checkpoint"
    out2 = tmp_path / "out2"
    f2 = statejobs.build(str(out2), str(tmp_path / "ck2"), backend_name="memory",
                         parallelism=1, records=n, rate=1e9)
    result = f2.run(restore=str(chk))
    assert result.restored_from == str(chk)
    assert_continues(out2, n)


def test_memory_changelog_checkpoints_write_only_changed_keys(tmp_path: Path) -> None:
    """100k keys loaded first, then many updates to 500 of them: checkpoints write a small
    delta, and every ``full_every``-th a full snapshot (so the chain stays short)."""
    ck = tmp_path / "ck"
    n = 100_000
    flow = of.Flow("changelog", state_backend=of.state.MemoryBackend(full_every=4),
                   restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.05, ck, incremental=True, retained=2)
    flow.batch_size = 100

    def pace(i: int) -> int:  # the update phase runs at about 20,000 records/s
        if i >= n and i % 20 == 0:
            time.sleep(0.001)
        return i

    (flow.source(of.sources.Range(0, n + 60_000), name="numbers")
         .map(pace, name="pace")
         .key_by(lambda i: i if i < n else i % 500)
         .reduce(lambda a, b: a + b, name="sum").sink(of.sinks.Discard()))
    result = flow.run()
    loaded = [c for c in result.completed_checkpoints if c.size > n * 5]
    assert len(loaded) >= 6, [(c.id, c.size, c.incremental_size) for c in loaded]
    deltas = [c for c in loaded if c.incremental_size < c.size / 10]
    fulls = [c for c in loaded if c.incremental_size > c.size / 2]
    assert len(deltas) >= len(loaded) // 2, [(c.id, c.size, c.incremental_size) for c in loaded]
    assert fulls, "no full snapshot folded the changelog"
    assert_shared_clean(ck / "changelog")


def test_changing_max_parallelism_is_refused(tmp_path: Path) -> None:
    ck = str(tmp_path / "ck")
    f1 = statejobs.build(str(tmp_path / "o"), ck, backend_name="rocksdb", parallelism=1,
                         records=500, rate=1e9)
    f1.run()
    f2 = statejobs.build(str(tmp_path / "o"), ck, backend_name="rocksdb", parallelism=1,
                         records=500, rate=1e9)
    f2.max_parallelism = 256
    with pytest.raises(of.IncompatibleStateError, match="max_parallelism"):
        f2.run(restore="latest")


def test_rocksdb_backend_settings_are_checked() -> None:
    flow = of.Flow("bad", state_backend=of.state.RocksDBBackend(layer_entries=0))
    flow.source(of.sources.Range(0, 1)).sink(of.sinks.Discard())
    with pytest.raises(of.ConfigurationError, match="layer_entries"):
        flow.run()
    flow2 = of.Flow("bad2", state_backend="rocksdb")  # type: ignore[arg-type]
    flow2.source(of.sources.Range(0, 1)).sink(of.sinks.Discard())
    with pytest.raises(of.ConfigurationError, match="state_backend"):
        flow2.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))


def test_cli_lists_savepoints_and_incremental_sizes_and_inspects_rocksdb_state(
        tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    flow = statejobs.build(str(out), str(ck), backend_name="rocksdb", parallelism=2,
                           records=30_000, rate=2500, incremental=True, retained=3)
    flow_dir = ck / "statejob"
    _run_until_stopped(flow, None, out, str(flow_dir), 30_000)
    found = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    assert found, "the onceflow command is not installed next to this Python"
    exe = [found]
    rows = json.loads(subprocess.run([*exe, "checkpoints", str(ck), "--json"], check=True,
                                     capture_output=True, text=True).stdout)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"checkpoint", "savepoint"}, rows
    for r in rows:
        assert r["status"].startswith("complete"), r
        assert 0 < r["incremental_size"] <= r["size"] and r["files"] > 1, r
    savepoint = next(r for r in rows if r["kind"] == "savepoint")
    assert savepoint["shared_files"] == 0
    chk = max((r for r in rows if r["kind"] == "checkpoint"), key=lambda r: r["id"])
    doc = json.loads(subprocess.run([*exe, "inspect", chk["path"], "--json"], check=True,
                                    capture_output=True, text=True).stdout)
    tally = next(op for op in doc["operators"] if op["uid"] == "tally")
    assert [s["keyed_state"] for s in tally["subtasks"]] == ["rocksdb (incremental)"] * 2
    assert [s["key_groups"] for s in tally["subtasks"]] == [[0, 64], [64, 128]]


@pytest.mark.parametrize("where", ["flow-dir", "elsewhere"])
def test_failover_after_a_savepoint_resumes_from_it_not_from_before(
        tmp_path: Path, where: str) -> None:
    """A savepoint commits its transactions; a worker killed before the next checkpoint
    must resume from the savepoint (not the beginning, which would commit its output
    twice). Also restore="latest" of a later run considers it."""
    out, ck = tmp_path / "out", tmp_path / "ck"
    n = 30_000
    flow = statejobs.build(str(out), str(ck), backend_name="memory", parallelism=2,
                           records=n, rate=2500, interval=600.0)  # no periodic checkpoint
    client = flow.start()
    deadline = time.monotonic() + 60
    while client.status.state.value != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    path = client.savepoint(None if where == "flow-dir" else str(tmp_path / "sp"))
    while _committed_files(out) == 0:  # workers commit when they hear of completion
        assert time.monotonic() < deadline, "the savepoint committed nothing"
        time.sleep(0.01)
    pids = client.status.worker_pids()
    os.kill(sorted(pids.values())[0], signal.SIGKILL)
    result = client.result(timeout=120)
    assert result.restarts == 1
    assert result.records_out("numbers") == n
    _check(out, n)
    flow_dir = ck / "statejob"
    if where == "elsewhere":
        assert (flow_dir / f"savepoint-{Path(path).name.split('-')[1]}.ref").exists()
    # the final checkpoint is newer than the savepoint: latest picks it
    again = statejobs.build(str(out), str(ck), backend_name="memory", parallelism=1,
                            records=n, rate=1e9, interval=600.0)
    assert again.run(restore="latest").restored_from != path
