"""A full checkpoint disk: the job fails with a message naming the file and the cause,
and nothing uncovered by a checkpoint is committed. Uses a real, tiny tmpfs."""

from __future__ import annotations

import json
import os
import re
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


def _covered(ckpt: Path) -> int:
    """Records the FileSink "files" had taken in at the newest complete checkpoint under
    ``ckpt`` (its counters in ``_metadata``, summed over the tasks that run it); 0 if no
    checkpoint completed."""
    done = [c for c in ckpt.iterdir() if (c / "_metadata").exists()] if ckpt.exists() else []
    if not done:
        return 0
    newest = max(done, key=lambda c: int(c.name.split("-")[1]))
    meta = json.loads((newest / "_metadata").read_text())["body"]
    return sum(ops["files"][0] for ops in meta["metrics"].values() if "files" in ops)


def _committed(out: Path) -> list[int]:
    return sorted(r[0] for r in of.sinks.read_committed(out))


# Why the committed output is checked against the checkpoint as "at most what it covers"
# and then completed by a restore: the disk can fill between checkpoint n's ``_metadata``
# being written (n is complete) and the sink's commit of n (notify-complete). The job then
# fails with n's pre-committed files still pending, which is correct: a complete
# checkpoint's pending transactions are committed when the job is restored from it. So the
# tests restore the job (the same flow, the same checkpoint directory, with room on the
# disk) and require the whole input exactly once in the end.


def _checkpoint_disk_flow(ckpt: Path, out: Path) -> of.Flow:
    flow = of.Flow("full-disk", restart_strategy=of.restart.fixed_delay(1, 0.05))
    flow.enable_checkpointing(0.1, ckpt)
    (flow.source(of.sources.Range(0, 300_000), name="src")
         .map(lambda i: (i, "x" * 50), name="wide")
         .key_by(lambda kv: kv[0])
         .reduce(lambda a, b: a, name="big-state")
         .sink(of.sinks.FileSink(out), name="files"))
    return flow


def test_full_checkpoint_disk_fails_clearly_and_commits_nothing(tiny_disk: Path,
                                                                tmp_path: Path) -> None:
    ckpt, out = tiny_disk / "ckpt", tmp_path / "out"
    with pytest.raises(of.JobFailedError) as err:
        _checkpoint_disk_flow(ckpt, out).run()
    msg = str(err.value)
    assert "No space left on device" in msg
    # Which write meets the full disk first depends on timing: the big operator's state
    # (nearly always), a small task's state, or the checkpoint's _metadata. The message
    # names that write and the checkpoint directory, whichever it is.
    assert re.search(r"writing (state of task '(src|wide|big-state|files)[^']*' subtask \d+"
                     r"|metadata) to " + re.escape(str(ckpt)), msg), msg
    # Nothing beyond the last complete checkpoint (if one fit on the disk before it filled
    # up) is committed, and no record twice; its own commit may still be pending.
    committed = [r[0] for r in of.sinks.read_committed(out)]
    assert len(committed) == len(set(committed))
    assert len(committed) <= _covered(ckpt / "full-disk")
    # The disk is made larger (tmpfs resizes in place) and the job restored: every record
    # exactly once, none lost and none twice.
    r = subprocess.run(["mount", "-o", "remount,size=256m", str(tiny_disk)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"remount of the tmpfs failed: {r.stderr}"
    _checkpoint_disk_flow(ckpt, out).run(restore="latest")
    assert _committed(out) == list(range(300_000))


def _rocksdb_flow(local: Path, ckpt: Path, out: Path) -> of.Flow:
    flow = of.Flow("full-rocks", restart_strategy=of.restart.no_restart(),
                   state_backend=of.state.RocksDBBackend(local_dir=str(local),
                                                         write_buffer_mb=1,
                                                         layer_entries=1_000))
    flow.enable_checkpointing(0.2, ckpt, incremental=True, retained=1)
    (flow.source(of.sources.Range(0, 400_000), name="src")
         .map(lambda i: (i, os.urandom(64).hex()), name="wide")
         .key_by(lambda kv: kv[0])
         .reduce(lambda a, b: b, name="big-state")
         .sink(of.sinks.FileSink(out), name="files"))
    return flow


# room for a few checkpoints, even under load
@pytest.mark.parametrize("tiny_disk", ["12m"], indirect=True)
def test_full_rocksdb_disk_fails_the_job_naming_rocksdb_and_the_directory(
        tiny_disk: Path, tmp_path: Path) -> None:
    """RocksDB's working directory fills up mid-run: the job fails with a message naming
    the operator, RocksDB and local_dir; what is committed is a duplicate-free prefix of
    what the last complete checkpoint covers; restored from that checkpoint with local_dir
    on a normal disk, the job ends with every record exactly once."""
    local, ckpt, out = tiny_disk / "rocksdb", tmp_path / "ckpt", tmp_path / "out"
    with pytest.raises(of.JobFailedError) as err:
        _rocksdb_flow(local, ckpt, out).run()
    msg = str(err.value)
    assert "big-state" in msg and "RocksDB" in msg and str(local) in msg, msg
    assert "No space left on device" in msg, msg
    covered = _covered(ckpt / "full-rocks")
    assert covered, "the disk filled up before any checkpoint completed: make it larger"
    assert 0 < covered < 400_000
    # one source subtask reads in order: the committed records are the first k, k at most
    # ``covered`` (Complete(n) reaches the sink before barrier n+1, in one worker; n's own
    # commit may not have happened before the failure)
    committed = _committed(out)
    assert committed == list(range(len(committed)))
    assert len(committed) <= covered
    _rocksdb_flow(tmp_path / "rocksdb", ckpt, out).run(restore="latest")
    assert _committed(out) == list(range(400_000))
