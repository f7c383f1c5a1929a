"""Faults of the object store itself: a SeaweedFS server of the test's own (other ports,
its own directory, so the machine's shared store is untouched) SIGKILLed in the middle of
a job whose checkpoints live on it, and started again after a few seconds. Checkpoints
that meet the outage fail; the job must come back by itself once the store is back, and
the committed output must equal the failure-free run's, with nothing lost or doubled."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3store
from test_exactly_once import Job

from onceflow.checkpoint.storage import open_storage

SCRIPT = s3store.SCRIPT
# Below Linux's ephemeral range (32768-60999 by default): a fixed port inside it can be
# taken, by the time this module starts its server, as the local port of one of the
# suite's many outgoing connections ("bind: address already in use", seen in a full run).
# Inside the Ray tests' network namespace another server uses 38533/38600.
PORT, BASE = "28733", "28800"


class OwnStore:
    """A SeaweedFS server of this test module, started and killed with ``scripts/s3``."""

    def __init__(self, root: Path) -> None:
        self.env = {**os.environ, "ONCEFLOW_S3_DIR": str(root), "ONCEFLOW_S3_PORT": PORT,
                    "ONCEFLOW_S3_BASE_PORT": BASE}
        self.client_env = {**s3store.ENV, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{PORT}"}

    def run(self, cmd: str, timeout: float = 900) -> str:
        proc = subprocess.run([SCRIPT, cmd], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"scripts/s3 {cmd} failed:\n{proc.stderr[-3000:]}"
        return proc.stdout

    def start(self) -> None:
        assert self.run("start").strip().splitlines()[-1] == self.client_env[
            "AWS_ENDPOINT_URL_S3"]

    def kill(self) -> None:
        self.run("kill", timeout=60)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnStore]:
    s = OwnStore(tmp_path_factory.mktemp("own-s3"))
    s.start()
    import boto3
    from botocore.config import Config

    boto3.session.Session().client(
        "s3", endpoint_url=s.client_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=s.client_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s.client_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s.client_env["AWS_REGION"],
        config=Config(s3={"addressing_style": "path"})).create_bucket(Bucket=s3store.BUCKET)
    yield s
    s.run("reset", timeout=60)


class StoreJob(Job):
    def __init__(self, tmp: Path, store: OwnStore, shape: str, *extra: str,
                 records: int) -> None:
        super().__init__(tmp, shape, *extra, env=store.client_env, records=records)
        self.url = f"s3://{s3store.BUCKET}/t-{uuid.uuid4().hex[:12]}"
        self.ckpt = self.url  # type: ignore[assignment]  # crashjobs passes it to storage=


def _wait_for_checkpoints(job: StoreJob, store: OwnStore, n: int, timeout: float) -> None:
    """Until the job has ``n`` complete checkpoints on the store (asked the way a restore
    asks: the metadata objects)."""
    os.environ.update(store.client_env)
    deadline = time.monotonic() + timeout
    st = open_storage(job.url, f"crash-{job.shape}")
    while time.monotonic() < deadline:
        assert job.proc is not None and job.proc.poll() is None, job.tail()
        try:
            if len(st.complete_ids()) >= n:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} checkpoints after {timeout}s\n{job.tail()}")


@pytest.mark.parametrize(("shape", "backend", "outage"), [("keyed_count", "memory", 5.0),
                                                          ("two_keyed", "rocksdb", 12.0)])
def test_store_sigkilled_mid_job_and_restarted(store: OwnStore, tmp_path: Path, shape: str,
                                               backend: str, outage: float) -> None:
    extra = ["--backend", backend] + (["--incremental"] if backend == "rocksdb" else [])
    job = StoreJob(tmp_path, store, shape, "--parallelism", "2", "--rate", "2500",
                   "--interval", "0.5", "--restart-delay", "1", *extra, records=60_000)
    job.start()
    try:
        _wait_for_checkpoints(job, store, 2, timeout=90)
        store.kill()
        killed = time.monotonic()
        time.sleep(outage)
        assert job.proc is not None and job.proc.poll() is None, (
            f"the job ended during the store's outage\n{job.tail()}")
        store.start()
        code, result = job.wait(timeout=240)
    finally:
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
        store.start()  # idempotent: the next test needs it
    assert code == 0, job.tail()
    assert result is not None
    assert time.monotonic() - killed > outage
    # with no tolerable checkpoint failures the outage failed the job, and its restarts
    # waited for the store (each one that could not read it is one more failure)
    assert result["restarts"] >= 1, result
    log = job.log.read_text()
    assert "restarting needs the checkpoint storage, which failed" in log, job.tail()
    assert "cannot reach the S3 endpoint" in log, job.tail()
    job.check_exact()
    # the job went on checkpointing once the store was back
    st = open_storage(job.url, f"crash-{job.shape}")
    assert max(st.complete_ids()) >= 3, result
