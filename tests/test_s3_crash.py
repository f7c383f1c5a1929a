"""Exactly-once with checkpoints on a real S3-compatible object store (SeaweedFS): the crash
test job shapes (``crashjobs.py``) with ``--ckpt s3://...``, workers SIGKILLed at random
moments and in the middle of a checkpoint upload, the driver killed and the job restored
(``restore="latest"`` and an explicit ``s3://.../chk-<n>``, at another parallelism);
committed output compared exactly with a failure-free run."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import s3store
from test_exactly_once import SEED, Job, _assert_no_orphans, _kill_randomly

from onceflow.checkpoint.storage import open_storage

s3_url = s3store.s3_url  # the fixture: a fresh s3:// prefix, env set


class S3Job(Job):
    def __init__(self, tmp: Path, url: str, shape: str, *extra: str,
                 env: dict[str, str] | None = None, records: int = 60_000) -> None:
        super().__init__(tmp, shape, *extra, env={**s3store.ENV, **(env or {})},
                         records=records)
        self.url = url
        self.ckpt = url  # type: ignore[assignment]  # crashjobs passes it to storage=

    @property
    def flow_url(self) -> str:
        return f"{self.url}/crash-{self.shape}"


@pytest.mark.parametrize(("shape", "backend"), [("keyed_count", "memory"),
                                                 ("two_keyed", "rocksdb")])
def test_random_worker_kills_with_s3_checkpoints_leave_output_exact(
        s3_url: str, tmp_path: Path, shape: str, backend: str) -> None:
    extra = ["--backend", backend] + (["--incremental"] if backend == "rocksdb" else [])
    job = S3Job(tmp_path, s3_url, shape, "--parallelism", "2", "--rate", "8000", *extra,
                records=40_000)
    job.start()
    delivered = _kill_randomly(job, random.Random(f"{SEED}-s3-{shape}"), kills=2,
                               pause=(0.8, 1.6))
    code, result = job.wait()
    assert code == 0, job.tail()
    assert result is not None and delivered >= 1 and result["restarts"] >= 1
    assert result["checkpoints"] >= 2
    job.check_exact()
    listed = s3store.keys(job.flow_url)
    assert any(k.endswith("/_metadata") for k in listed)
    if backend == "rocksdb":
        assert any(k.startswith("shared/") for k in listed), "no incremental shared objects"


def test_worker_killed_in_the_middle_of_an_upload_leaves_storage_restorable(
        s3_url: str, tmp_path: Path) -> None:
    token = tmp_path / "fault-fired"
    job = S3Job(tmp_path, s3_url, "two_keyed", "--backend", "rocksdb", "--incremental",
                "--rate", "10000", records=30_000,
                env={"ONCEFLOW_FAULT": "snapshot.s3_upload@checkpoint=3,subtask=1",
                     "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    code, result = job.wait()
    assert token.exists(), "the fault inside the upload never fired"
    assert code == 0, job.tail()
    assert result is not None and result["restarts"] == 1
    job.check_exact()
    listed = s3store.keys(job.flow_url)
    assert "chk-3/_metadata" not in listed
    # what the killed upload left was swept: every shared object is one a retained
    # checkpoint references, and every one they reference is there
    st = open_storage(job.url, "crash-two_keyed")
    referenced = {f for cid in st.complete_ids() for f in st.metadata(st.path(cid)).shared}
    assert referenced and referenced == {k for k in listed if k.startswith("shared/")}


def test_driver_killed_before_metadata_then_restored_from_s3(
        s3_url: str, tmp_path: Path) -> None:
    token = tmp_path / "fault-fired"
    job = S3Job(tmp_path, s3_url, "keyed_count", "--rate", "15000", records=30_000)
    proc = job.start(env={"ONCEFLOW_FAULT": "coordinator.before_metadata_rename@checkpoint=3",
                          "ONCEFLOW_FAULT_TOKEN": str(token)})
    pids: list[int] = []
    while proc.poll() is None:
        pids = [w.pid for w in job.workers()] or pids
        time.sleep(0.02)
    assert proc.returncode == -signal.SIGKILL, job.tail()
    _assert_no_orphans(pids)
    listed = s3store.keys(job.flow_url)
    assert "chk-2/_metadata" in listed and "chk-3/_metadata" not in listed
    assert any(k.startswith("chk-3/") for k in listed), "checkpoint 3 uploaded no state"
    job.start("--restore", "latest")
    code, result = job.wait()
    assert code == 0, job.tail()
    assert result is not None and result["restored_from"] == f"{job.flow_url}/chk-2"
    job.check_exact()


def test_restore_from_an_s3_checkpoint_url_at_another_parallelism(
        s3_url: str, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-s3-rescale")
    job = S3Job(tmp_path, s3_url, "two_keyed", "--parallelism", "2", "--rate", "6000",
                "--backend", "rocksdb", "--incremental", records=24_000)
    proc = job.start()
    deadline = time.monotonic() + 60
    while not any(k.endswith("/_metadata") for k in s3store.keys(job.flow_url)):
        assert time.monotonic() < deadline and proc.poll() is None, job.tail()
        time.sleep(0.1)
    time.sleep(rng.uniform(0.3, 0.8))
    pids = [w.pid for w in job.workers()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_no_orphans(pids)
    done = sorted(int(k.split("/")[0][4:]) for k in s3store.keys(job.flow_url)
                  if k.startswith("chk-") and k.endswith("/_metadata"))
    chk = f"{job.flow_url}/chk-{done[-1]}"
    job.start("--restore", chk, "--parallelism", "3")
    code, result = job.wait()
    assert code == 0, job.tail()
    assert result is not None and result["restored_from"] == chk
    job.check_exact()
    assert os.path.exists(job.out)
