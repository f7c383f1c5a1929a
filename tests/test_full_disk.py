"""A full checkpoint disk: the job fails with a message naming the file and the cause,
and nothing uncovered by a checkpoint is committed. Uses a real, tiny tmpfs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import onceflow as of


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
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
    assert of.sinks.read_committed(tmp_path / "out") == []
