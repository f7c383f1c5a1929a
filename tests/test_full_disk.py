"""A full checkpoint disk: the job fails with a message naming the file and the cause,
and nothing uncovered by a checkpoint is committed. Uses a real, tiny tmpfs."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import onceflow as of


@pytest.fixture
def tiny_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    size = getattr(request, "param", "256k")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"this test mounts a tmpfs (needs root): {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_checkpoint_disk_fails_clearly_and_commits_nothing(tiny_disk: Path,
                                                                tmp_path: Path) -> None:
    flow = of.Flow("full-disk", restart_strategy=of.restart.fixed_delay(1, 0.05))
    flow.enable_checkpointing(0.1, tiny_disk / "ckpt")
    (flow.source(of.sources.Range(0, 300_000), name="src")
         .map(lambda i: (i, "x" * 50), name="wide")
         .key_by(lambda kv: kv[0])
         .reduce(lambda a, b: a, name="big-state")
         .sink(of.sinks.FileSink(tmp_path / "out"), name="files"))
    with pytest.raises(of.JobFailedError) as err:
        flow.run()
    msg = str(err.value)
    assert "No space left on device" in msg
    assert "big-state" in msg and str(tiny_disk / "ckpt") in msg
    # What is committed is exactly what the last complete checkpoint covers (if one fit on
    # the disk before it filled up): no record twice, none beyond it.
    committed = [r[0] for r in of.sinks.read_committed(tmp_path / "out")]
    assert len(committed) == len(set(committed))
    done = [c for c in (tiny_disk / "ckpt" / "full-disk").iterdir()
            if (c / "_metadata").exists()]
    covered = 0
    if done:
        newest = max(done, key=lambda c: int(c.name.split("-")[1]))
        meta = json.loads((newest / "_metadata").read_text())["body"]
        covered = sum(ops["files"][0] for ops in meta["metrics"].values() if "files" in ops)
    assert len(committed) == covered


# room for a few checkpoints, even under load
@pytest.mark.parametrize("tiny_disk", ["12m"], indirect=True)
def test_full_rocksdb_disk_fails_the_job_naming_rocksdb_and_the_directory(
        tiny_disk: Path, tmp_path: Path) -> None:
    """RocksDB's working directory fills up mid-run: the job fails with a message naming
    the operator, RocksDB and local_dir, and what is committed is exactly what the last
    complete checkpoint covers."""
    local = tiny_disk / "rocksdb"
    flow = of.Flow("full-rocks", restart_strategy=of.restart.no_restart(),
                   state_backend=of.state.RocksDBBackend(local_dir=str(local),
                                                         write_buffer_mb=1,
                                                         layer_entries=1_000))
    flow.enable_checkpointing(0.2, tmp_path / "ckpt", incremental=True, retained=1)
    (flow.source(of.sources.Range(0, 400_000), name="src")
         .map(lambda i: (i, os.urandom(64).hex()), name="wide")
         .key_by(lambda kv: kv[0])
         .reduce(lambda a, b: b, name="big-state")
         .sink(of.sinks.FileSink(tmp_path / "out"), name="files"))
    with pytest.raises(of.JobFailedError) as err:
        flow.run()
    msg = str(err.value)
    assert "big-state" in msg and "RocksDB" in msg and str(local) in msg, msg
    assert "No space left on device" in msg, msg
    done = [c for c in (tmp_path / "ckpt" / "full-rocks").iterdir()
            if (c / "_metadata").exists()]
    assert done, "the disk filled up before any checkpoint completed: make it larger"
    newest = max(done, key=lambda c: int(c.name.split("-")[1]))
    meta = json.loads((newest / "_metadata").read_text())["body"]
    # records the sink had taken in (its counters, by the task that runs it)
    (covered,) = [ops["files"][0] for ops in meta["metrics"].values() if "files" in ops]
    assert 0 < covered < 400_000
    # one source subtask reads in order: the committed records are exactly the first
    # ``covered`` ones (Complete(n) reaches the sink before barrier n+1, in one worker)
    committed = sorted(r[0] for r in of.sinks.read_committed(tmp_path / "out"))
    assert committed == list(range(covered))
