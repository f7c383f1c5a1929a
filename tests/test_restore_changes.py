"""Restoring into a changed flow or environment: new sources, removed operators, another
parallelism for write-ahead sinks, and many finished splits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import onceflow as of
from onceflow.testing import throttle


def _flow(name: str, ckpt: Path, **kw: object) -> of.Flow:
    flow = of.Flow(name, restart_strategy=of.restart.no_restart(), **kw)  # type: ignore[arg-type]
    flow.enable_checkpointing(0.05, ckpt, retained=2)
    return flow


def test_a_source_added_since_the_checkpoint_reads_from_its_start(tmp_path: Path) -> None:
    f1 = _flow("grow", tmp_path / "ck")
    f1.source(of.sources.Range(0, 100), name="a").sink(of.sinks.FileSink(tmp_path / "o1"),
                                                       name="out")
    f1.run()
    f2 = _flow("grow", tmp_path / "ck")
    a = f2.source(of.sources.Range(0, 100), name="a")
    b = f2.source(of.sources.Range(1000, 1050), name="b")
    a.union(b, name="u").sink(of.sinks.FileSink(tmp_path / "o2"), name="out")
    result = f2.run(restore="latest")
    assert result.restored_from is not None
    # a was finished in the checkpoint; b is new and reads everything
    assert sorted(of.sinks.read_committed(tmp_path / "o2")) == list(range(1000, 1050))


def test_removing_a_stateless_operator_keeps_restore_working(tmp_path: Path) -> None:
    f1 = _flow("shrink", tmp_path / "ck")
    (f1.source(of.sources.Range(0, 10), name="src").map(lambda x: x, name="noop")
       .sink(of.sinks.FileSink(tmp_path / "o"), name="out"))
    f1.run()
    f2 = _flow("shrink", tmp_path / "ck")
    f2.source(of.sources.Range(0, 10), name="src").sink(of.sinks.FileSink(tmp_path / "o"),
                                                        name="out")
    assert f2.run(restore="latest").restored_from is not None


def test_removing_a_stateful_operator_is_refused_with_its_name(tmp_path: Path) -> None:
    f1 = _flow("drop-state", tmp_path / "ck")
    (f1.source(of.sources.Range(0, 10), name="src").key_by(lambda x: x % 2)
       .reduce(lambda a, b: a + b, name="totals")
       .sink(of.sinks.FileSink(tmp_path / "o"), name="out"))
    f1.run()
    f2 = _flow("drop-state", tmp_path / "ck")
    f2.source(of.sources.Range(0, 10), name="src").sink(of.sinks.FileSink(tmp_path / "o"),
                                                        name="out")
    with pytest.raises(of.IncompatibleStateError, match="totals"):
        f2.run(restore="latest")


def test_finished_splits_release_their_files(tmp_path: Path) -> None:
    """More input files than the process may open at once."""
    files = tmp_path / "in"
    files.mkdir()
    for i in range(300):
        (files / f"f{i:03d}.txt").write_text(f"line {i}\n")
    script = textwrap.dedent(f"""
        import resource, onceflow as of
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
        flow = of.Flow("files", restart_strategy=of.restart.no_restart())
        (flow.source(of.sources.TextFiles({str(files / '*.txt')!r}), name="in")
             .sink(of.sinks.Discard(), name="out"))
        print(flow.run().records_in("out"))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "300"


WAL_JOB = textwrap.dedent("""
    import json, os, sys, time, onceflow as of
    out, ckpt, par, restore = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    class KeyedFiles(of.sinks.WriteAheadSink):
        # idempotent: one file per (checkpoint, subtask), written atomically
        def send(self, records, checkpoint_id, ctx):
            path = os.path.join(out, f"{checkpoint_id}-{ctx.subtask}.json")
            with open(path + ".tmp", "w") as f:
                json.dump(records, f)
            os.replace(path + ".tmp", path)

    def slow(i):
        if i % 100 == 0:
            time.sleep(0.01)
        return i

    flow = of.Flow("wal", parallelism=par, batch_size=50,
                   restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.1, ckpt, retained=3)
    (flow.source(of.sources.Range(0, 20000), name="src", parallelism=2)
         .map(slow, name="slow", parallelism=2)
         .rebalance()
         .sink(KeyedFiles(), name="wal"))
    flow.run(restore=None if restore == "-" else restore)
""")


def test_write_ahead_batches_keep_their_identity_across_a_parallelism_change(
        tmp_path: Path) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    out.mkdir()
    job = tmp_path / "wal_job.py"
    job.write_text(WAL_JOB)
    env = {**os.environ, "ONCEFLOW_FAULT": "coordinator.after_metadata_rename@checkpoint=4",
           "ONCEFLOW_FAULT_TOKEN": str(tmp_path / "fired")}
    first = subprocess.run([sys.executable, str(job), str(out), str(ckpt), "2", "-"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = subprocess.run([sys.executable, str(job), str(out), str(ckpt), "1", "latest"],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    got: list[int] = []
    for name in os.listdir(out):
        if name.endswith(".json"):
            got.extend(json.loads((out / name).read_text()))
    assert sorted(got) == list(range(20000))


def test_restore_where_another_parallelism_chains_operators_differently(
        tmp_path: Path) -> None:
    """At parallelism 2 the source (fixed at 1) and the map after it are separate tasks; at
    parallelism 1 they are one chain. Each operator must get its own old state."""
    def build(p: int, out: Path) -> of.Flow:
        flow = _flow("rechain", tmp_path / "ck", parallelism=p)
        (flow.source(of.sources.Range(0, 20_000), name="src", parallelism=1)
             .map(throttle(3000), name="slow")
             .map(lambda i: (i % 7, 1), name="pairs")
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
             .sink(of.sinks.FileSink(out), name="out"))
        return flow

    client = build(2, tmp_path / "o").start()
    deadline = time.monotonic() + 60
    while not list((tmp_path / "o").glob("*.jsonl")):
        assert time.monotonic() < deadline and not client.done()
        time.sleep(0.02)
    path = client.stop_with_savepoint(str(tmp_path / "sp"))
    first = client.result()
    assert first.records_out("src") < 20_000
    result = build(1, tmp_path / "o").run(restore=path)
    assert result.restored_from == path
    got = sorted(tuple(r) for r in of.sinks.read_committed(tmp_path / "o"))
    want = sorted((k, c) for k in range(7) for c in range(1, len(range(k, 20_000, 7)) + 1))
    assert got == want
