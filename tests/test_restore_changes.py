"""Restoring into a changed flow or environment: new sources, removed operators, another
parallelism for write-ahead sinks, and many finished splits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import onceflow as of


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
