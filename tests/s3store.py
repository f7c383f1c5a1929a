"""The real S3-compatible object store of the tests (SeaweedFS, ``scripts/s3``).

``s3_url`` (a pytest fixture; import it into a test module) returns a fresh
``s3://onceflow-test/<unique prefix>`` with the ``AWS_*`` variables set for this process
and its children, so any test can put checkpoints on the store:
``flow.enable_checkpointing(0.5, s3_url)``. A missing or broken server fails the test
(never a skip): ``ensure_server`` starts it with ``scripts/s3 start`` (idempotent).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "s3")
BUCKET = "onceflow-test"
# Inside scripts/netns-run the machine's server is unreachable: a process there runs its
# own, on other ports (SeaweedFS names unix sockets in /tmp by port, shared by namespaces).
IN_NETNS = os.environ.get("ONCEFLOW_IN_NETNS") == "1"
PORTS = ({"ONCEFLOW_S3_PORT": "38533", "ONCEFLOW_S3_BASE_PORT": "38600"} if IN_NETNS
         else {k: os.environ[k] for k in ("ONCEFLOW_S3_PORT", "ONCEFLOW_S3_BASE_PORT")
               if k in os.environ})
ENV = {
    "AWS_ENDPOINT_URL_S3": os.environ.get(
        "ONCEFLOW_S3_ENDPOINT",
        f"http://127.0.0.1:{PORTS.get('ONCEFLOW_S3_PORT', '38333')}"),
    "AWS_ACCESS_KEY_ID": os.environ.get("ONCEFLOW_S3_ACCESS_KEY", "onceflow-test"),
    "AWS_SECRET_ACCESS_KEY": os.environ.get("ONCEFLOW_S3_SECRET_KEY", "onceflow-test-secret"),
    "AWS_REGION": "us-east-1",
}
_started = False


def data_dir() -> str:
    """The server's directory. Inside ``scripts/netns-run`` (the Ray tests' loopback-only
    network namespace) the machine's server cannot be reached: such a process starts a
    server of its own in the namespace, with its own directory and ports, removed at
    exit."""
    if IN_NETNS:
        return f"/tmp/onceflow-s3-netns-{os.getpid()}"
    return os.environ.get("ONCEFLOW_S3_DIR", "/tmp/onceflow-s3")


def ensure_server() -> str:
    """Start SeaweedFS unless it runs (``scripts/s3 start``); its endpoint."""
    global _started
    if not _started:
        env = {**os.environ, **PORTS, "ONCEFLOW_S3_DIR": data_dir()}
        if IN_NETNS:
            atexit.register(subprocess.run, [SCRIPT, "reset"], env=env,
                            capture_output=True, timeout=60)
        proc = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=900,
                              env=env)
        assert proc.returncode == 0, f"scripts/s3 start failed:\n{proc.stderr[-3000:]}"
        assert proc.stdout.strip().splitlines()[-1] == ENV["AWS_ENDPOINT_URL_S3"]
        _started = True
        c = client()
        try:
            c.head_bucket(Bucket=BUCKET)
        except Exception:
            c.create_bucket(Bucket=BUCKET)
    return ENV["AWS_ENDPOINT_URL_S3"]


def client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=ENV["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"], region_name=ENV["AWS_REGION"],
        config=Config(s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


def keys(url: str) -> dict[str, int]:
    """Every object below ``url`` (``s3://bucket/prefix``): key relative to it -> size."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/"
    out: dict[str, int] = {}
    for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                   Prefix=prefix):
        for o in page.get("Contents", ()):
            out[o["Key"][len(prefix):]] = int(o["Size"])
    return out


def folders(url: str) -> list[str]:
    """The "folders" the store lists directly below ``url`` (common prefixes, relative)."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/"
    out: list[str] = []
    for page in client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"):
        out.extend(p["Prefix"][len(prefix):] for p in page.get("CommonPrefixes", ()))
    return sorted(out)


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh ``s3://onceflow-test/<prefix>`` on the running store, env set."""
    ensure_server()
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    yield f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"
