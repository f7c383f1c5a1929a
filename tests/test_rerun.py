"""A run without restore over a flow's own completed checkpoints is refused (issue 12 #1):
the output those checkpoints committed would otherwise be written a second time."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import onceflow as of
from onceflow.checkpoint.metadata import CheckpointMetadata
from onceflow.checkpoint.storage import CheckpointStorage
from onceflow.runtime.rerun import describe
from onceflow.testing import throttle

N = 3000


def _flow(tmp_path: Path, name: str = "rerun", n: int = N) -> of.Flow:
    flow = of.Flow(name, restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.1, tmp_path / "ck")
    (flow.source(of.sources.Range(0, n), name="numbers")
         .map(lambda i: i * 2, name="double")
         .sink(of.sinks.FileSink(tmp_path / "out"), name="files"))
    return flow


def _committed(tmp_path: Path) -> list[int]:
    return sorted(of.sinks.read_committed(tmp_path / "out"))


def test_second_run_without_restore_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    first = _flow(tmp_path).run()
    final = first.completed_checkpoints[-1]
    with pytest.raises(of.ExistingCheckpointError) as exc:
        _flow(tmp_path).run()
    msg = str(exc.value)
    assert f"checkpoint {final.id}" in msg and str(tmp_path / "ck") in msg
    assert "the job had finished" in msg
    assert time.strftime("%Y-%m-%d", time.gmtime()) in msg  # when it completed
    assert 'restore="latest"' in msg and "fresh=True" in msg and "--fresh" in msg
    assert exc.value.checkpoint_id == final.id
    assert isinstance(exc.value, of.CheckpointError)
    assert _committed(tmp_path) == [2 * i for i in range(N)], "nothing written twice"


def test_start_is_refused_too(tmp_path: Path) -> None:
    _flow(tmp_path).run()
    with pytest.raises(of.ExistingCheckpointError):
        _flow(tmp_path).start()


def test_restore_latest_of_a_finished_job_writes_nothing_again(tmp_path: Path) -> None:
    _flow(tmp_path).run()
    again = _flow(tmp_path).run(restore="latest")
    assert again.restored_from is not None
    assert _committed(tmp_path) == [2 * i for i in range(N)]


def test_fresh_starts_over_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _flow(tmp_path).run()
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        result = _flow(tmp_path).run(fresh=True)
    assert result.restored_from is None
    assert any("fresh=True" in r.getMessage() and "written again" in r.getMessage()
               for r in caplog.records)
    assert _committed(tmp_path) == sorted([2 * i for i in range(N)] * 2), "asked for twice"


def test_fresh_and_restore_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(of.ConfigurationError, match="choose one"):
        _flow(tmp_path).run(restore="latest", fresh=True)
    with pytest.raises(of.ConfigurationError, match="fresh"):
        _flow(tmp_path).run(fresh="yes")  # type: ignore[arg-type]


def test_another_flow_in_the_same_storage_is_not_refused(tmp_path: Path) -> None:
    _flow(tmp_path, "first").run()
    shutil.rmtree(tmp_path / "out")
    assert _flow(tmp_path, "second").run().restored_from is None


def test_a_stop_with_savepoint_counts_and_restore_continues(tmp_path: Path) -> None:
    flow = of.Flow("stopped", batch_size=64, restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.1, tmp_path / "ck")
    flow.source(of.sources.Range(0, 20_000), name="numbers") \
        .map(throttle(4000, every=64), name="slow") \
        .sink(of.sinks.FileSink(tmp_path / "out"), name="files")
    client = flow.start()
    time.sleep(1.0)
    client.stop_with_savepoint()
    client.result(timeout=60)
    with pytest.raises(of.ExistingCheckpointError, match="stopped with this savepoint"):
        flow.run()
    flow.run(restore="latest")
    assert _committed(tmp_path) == list(range(20_000))


def test_describe_says_when_the_job_had_not_finished(tmp_path: Path) -> None:
    storage = CheckpointStorage(str(tmp_path), "crashed")
    storage.prepare()
    storage.write_metadata(CheckpointMetadata(
        flow="crashed", checkpoint_id=4, kind="checkpoint", final=False, trigger_time=1.0e9,
        completion_time=1.0e9, max_parallelism=128, operators={}, files={}))
    text = describe(4, storage.path(4))
    assert "checkpoint 4" in text and "2001-09-09 01:46:40 UTC" in text
    assert "had not finished" in text


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    assert exe, "the onceflow command is installed with the package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_onceflow_run_refuses_then_restore_and_fresh_work(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(f"""
import onceflow as of
from onceflow.testing import throttle
flow = of.Flow("cli-rerun")
flow.enable_checkpointing(0.1, {str(tmp_path / 'ck')!r})
flow.source(of.sources.Range(0, 500)).sink(of.sinks.FileSink({str(tmp_path / 'out')!r}))
""")
    assert _cli("run", str(job), "--no-progress").returncode == 0
    refused = _cli("run", str(job), "--no-progress")
    assert refused.returncode == 2, refused.stderr
    assert "--restore latest" in refused.stderr and "--fresh" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _committed(tmp_path) == list(range(500))
    assert _cli("run", str(job), "--no-progress", "--restore", "latest").returncode == 0
    assert _committed(tmp_path) == list(range(500))
    fresh = _cli("run", str(job), "--no-progress", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert _committed(tmp_path) == sorted(list(range(500)) * 2)
    assert os.path.isdir(tmp_path / "ck" / "cli-rerun")


def test_the_conformance_check_may_be_run_again_with_the_same_workdir(tmp_path: Path) -> None:
    from onceflow.testing import check_sink_exactly_once

    for attempt in range(2):
        out = tmp_path / f"out-{attempt}"  # the sink's output is the caller's to clear
        report = check_sink_exactly_once(
            lambda case, o=out: of.sinks.FileSink(o / case),
            lambda case, o=out: of.sinks.read_committed(o / case),
            workdir=str(tmp_path / "work"), records=3000,
            points=["sink.before_commit@checkpoint=2"])
        assert report.ok, str(report)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["case0-ckpt", "case0.fired"]
