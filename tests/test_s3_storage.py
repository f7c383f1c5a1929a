"""Checkpoint storage on a real S3-compatible object store (SeaweedFS from ``scripts/s3``):
atomic completion, conditional create of ``_metadata``, listing, fallback from a corrupt
newest checkpoint, shared objects and their deletion, self-contained savepoints, restore
from an ``s3://`` URL, and clear errors for a missing bucket, refused credentials and an
unreachable endpoint. Never a mock: a missing server fails these tests."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import s3store
import statejobs

import onceflow as of
from onceflow import cli
from onceflow.checkpoint.metadata import CheckpointMetadata
from onceflow.checkpoint.s3 import S3CheckpointStorage, S3Storage
from onceflow.checkpoint.shared import SharedRegistry
from onceflow.checkpoint.storage import open_storage

s3_url = s3store.s3_url  # the fixture: a fresh s3:// prefix, env set


def _meta(cid: int, flow: str = "f") -> CheckpointMetadata:
    return CheckpointMetadata(flow=flow, checkpoint_id=cid, kind="checkpoint", final=False,
                              trigger_time=time.time(), completion_time=time.time(),
                              max_parallelism=128, operators={}, files={})


def _storage(url: str, flow: str = "f") -> S3CheckpointStorage:
    st = open_storage(url, flow)
    assert isinstance(st, S3CheckpointStorage)
    st.prepare()
    return st


def test_every_listener_of_the_store_is_on_loopback_only() -> None:
    s3store.ensure_server()
    pid = Path(s3store.data_dir(), "weed.pid").read_text().strip()
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    mine = [line.split()[4] for line in out.splitlines() if f"pid={pid}," in line]
    assert len(mine) >= 5, f"weed (pid {pid}) listens on too few ports: {mine}\n{out}"
    wide = [a for a in mine if not a.startswith("127.0.0.1:")]
    assert not wide, f"SeaweedFS listens beyond 127.0.0.1: {wide}"


def test_a_checkpoint_exists_only_once_its_metadata_object_does(s3_url: str) -> None:
    st = _storage(s3_url)
    remote = st.remote
    remote.put_bytes(f"{st.prefix}/chk-1/a-0.state", b"x")
    assert st.ids() == [1] and st.complete_ids() == []
    assert st.latest_valid() is None
    st.write_metadata(_meta(1))
    assert st.complete_ids() == [1]
    assert st.next_id() == 2
    # a second coordinator (a zombie) cannot replace it: conditional create
    with pytest.raises(of.CheckpointStorageError, match="already exists") as err:
        st.write_metadata(_meta(1))
    assert isinstance(err.value, OSError)  # fails the checkpoint like a failed write
    assert st.metadata(st.path(1)).checkpoint_id == 1
    # an incomplete one is discarded (no task runs), the complete one stays
    remote.put_bytes(f"{st.prefix}/chk-2/a-0.state", b"y")
    assert st.ids() == [1, 2]
    st.discard_incomplete()
    assert st.ids() == [1]
    assert set(s3store.keys(st.url)) == {"chk-1/a-0.state", "chk-1/_metadata"}


def test_restore_latest_from_s3_and_fallback_from_a_corrupt_newest(
        s3_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flow = statejobs.build(str(tmp_path / "out"), s3_url, backend_name="memory",
                           parallelism=2, records=8000, rate=4000, interval=0.1, retained=3)
    result = flow.run()
    assert result.checkpoint_storage == f"{s3_url}/statejob"
    staging = open_storage(s3_url, "statejob").dir
    left = [os.path.join(d, f) for d, _, fs in os.walk(staging) for f in fs]
    assert not left, f"files stayed in the local staging directory: {left[:5]}"
    st = _storage(s3_url, "statejob")
    done = st.complete_ids()
    assert len(done) == 3, done
    # the newest (the final checkpoint) gets a truncated state file
    newest = done[-1]
    name = sorted(k for k in s3store.keys(st.url) if k.startswith(f"chk-{newest}/")
                  and k.endswith(".state"))[0]
    st.remote.put_bytes(f"{st.prefix}/{name}", b"ONCEFLOW-STATE-2\ntruncated")
    found = st.latest_valid()
    assert found is not None and found.id == done[-2]
    assert found.location == f"{s3_url}/statejob/chk-{done[-2]}"
    listed = s3store.keys(st.url)
    assert any(k.startswith(f"corrupt-chk-{newest}/") for k in listed)
    assert not any(k.startswith(f"chk-{newest}/") for k in listed)
    assert st.complete_ids() == done[:-1]
    # the command line lists and inspects checkpoints on the store too
    assert cli.main(["checkpoints", f"{s3_url}/statejob", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    status = {r["id"]: r["status"] for r in rows}
    assert status[done[-2]].startswith("complete") and "corrupt" in status[newest]
    assert cli.main(["inspect", f"{s3_url}/statejob/chk-{done[-2]}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["checkpoint"] == done[-2] and info["path"] == found.location


def test_shared_objects_are_reference_counted_and_deleted(s3_url: str) -> None:
    st = _storage(s3_url)
    for name in ("a", "b", "c", "stray"):
        st.remote.put_bytes(f"{st.prefix}/shared/op-0/{name}", name.encode())
    reg = SharedRegistry(st.dir, st)
    reg.register(1, ["shared/op-0/a", "shared/op-0/b"])
    reg.register(2, ["shared/op-0/b", "shared/op-0/c"])
    reg.sweep()  # nothing runs: the unreferenced one goes
    assert sorted(s3store.keys(st.url)) == ["shared/op-0/a", "shared/op-0/b", "shared/op-0/c"]
    reg.release(1, in_flight={3})  # checkpoint 3 was in flight: "a" waits for it
    reg.collect(in_flight={3})
    assert "shared/op-0/a" in s3store.keys(st.url)
    reg.collect(in_flight=set())
    assert sorted(s3store.keys(st.url)) == ["shared/op-0/b", "shared/op-0/c"]
    assert reg.deleted == 2


def test_incremental_rocksdb_shares_objects_and_keeps_only_referenced_ones(
        s3_url: str, tmp_path: Path) -> None:
    flow = statejobs.build(str(tmp_path / "out"), s3_url, backend_name="rocksdb",
                           parallelism=2, records=8000, rate=4000, interval=0.1,
                           incremental=True, retained=2)
    result = flow.run()
    assert len(result.completed_checkpoints) >= 3
    st = _storage(s3_url, "statejob")
    done = st.complete_ids()
    assert len(done) == 2
    referenced: set[str] = set()
    for cid in done:
        referenced |= set(st.metadata(st.path(cid)).shared)
    stored = {k for k in s3store.keys(st.url) if k.startswith("shared/")}
    assert referenced, "incremental RocksDB checkpoints referenced no shared objects"
    assert stored == referenced
    # the newest reuses objects an earlier checkpoint uploaded (incremental)
    first, second = (set(st.metadata(st.path(c)).shared) for c in done)
    assert first & second
    # and a restore from it (downloads to local disk) continues exactly
    out2 = tmp_path / "out"
    again = statejobs.build(str(out2), s3_url, backend_name="rocksdb", parallelism=1,
                            records=8000, rate=1e9, incremental=True)
    res = again.run(restore="latest")
    assert res.restored_from == f"{s3_url}/statejob/chk-{done[-1]}"
    assert statejobs.committed(str(out2)) == statejobs.expected(8000)


def test_savepoint_is_self_contained_and_restores_from_its_url(
        s3_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flow = statejobs.build(str(out), s3_url, backend_name="rocksdb", parallelism=2,
                           records=40_000, rate=4000, interval=0.2, incremental=True)
    client = flow.start()
    deadline = time.monotonic() + 60
    while not list(out.glob("*.jsonl")):
        assert time.monotonic() < deadline and not client.done()
        time.sleep(0.05)
    path = client.stop_with_savepoint(timeout=120)
    result = client.result(timeout=120)
    assert path.startswith(f"{s3_url}/statejob/savepoint-"), path
    assert result.records_out("numbers") < 40_000
    sp = path[len(s3_url) + len("/statejob/"):]
    st = _storage(s3_url, "statejob")
    meta = st.metadata(os.path.join(st.dir, sp))
    assert meta.is_savepoint and meta.shared == ()
    objects = s3store.keys(path)
    for rel in [*meta.files, *meta.extra_files]:
        assert rel in objects, f"savepoint file {rel} is not below the savepoint's prefix"
    again = statejobs.build(str(out), s3_url, backend_name="memory", parallelism=3,
                            records=40_000, rate=1e9)
    res = again.run(restore=path)
    assert res.restored_from == path
    assert statejobs.committed(str(out)) == statejobs.expected(40_000)


def test_a_missing_bucket_is_named_at_run(s3_url: str, tmp_path: Path) -> None:
    url = "s3://no-such-bucket-onceflow/x"
    flow = statejobs.build(str(tmp_path / "out"), url, backend_name="memory",
                           parallelism=1, records=10, rate=1e9)
    with pytest.raises(of.ConfigurationError, match="no-such-bucket-onceflow") as err:
        flow.run()
    assert "does not exist" in str(err.value)


def test_refused_credentials_are_named_without_the_secret(
        s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
    flow = statejobs.build(str(tmp_path / "out"), s3_url, backend_name="memory",
                           parallelism=1, records=10, rate=1e9)
    with pytest.raises(of.ConfigurationError, match="refused the credentials") as err:
        flow.run()
    assert s3_url in str(err.value)
    assert "wrong-secret-value-123" not in str(err.value)


def test_an_unreachable_endpoint_is_named(tmp_path: Path) -> None:
    storage = S3Storage("s3://b/p", endpoint="http://127.0.0.1:9", access_key_id="k",
                        secret_access_key="s3cr3t-value")
    assert "s3cr3t" not in repr(storage)
    flow = statejobs.build(str(tmp_path / "out"), "unused", backend_name="memory",
                           parallelism=1, records=10, rate=1e9)
    assert flow.checkpoint_config is not None
    flow.enable_checkpointing(0.5, storage)
    with pytest.raises(of.ConfigurationError, match=r"cannot reach the S3 endpoint "
                       r"http://127\.0\.0\.1:9") as err:
        flow.run()
    assert "s3cr3t" not in str(err.value)


def test_a_malformed_url_is_refused_when_checked() -> None:
    with pytest.raises(of.ConfigurationError, match="names no bucket"):
        cfg = of.Flow("f").enable_checkpointing(1.0, "s3://").checkpoint_config
        assert cfg is not None
        cfg.validate()


_HALF_PUT = r"""
import hashlib, os, signal, socket, sys
from urllib.parse import urlsplit
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

endpoint, bucket, key, how = sys.argv[1:5]
body = os.urandom(4 << 20)
req = AWSRequest(method="PUT", url=f"{endpoint}/{bucket}/{key}", data=body,
                 headers={"Content-Length": str(len(body)),
                          "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
S3SigV4Auth(Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]),
            "s3", "us-east-1").add_auth(req)
u = urlsplit(endpoint)
s = socket.create_connection((u.hostname, u.port))
head = f"PUT /{bucket}/{key} HTTP/1.1\r\nHost: {u.netloc}\r\n"
head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host")
if how == "whole":  # the same request, completed: the object appears
    s.sendall(head.encode() + b"\r\n" + body)
    print(s.recv(100).split(b"\r\n")[0].decode())
    sys.exit(0)
s.sendall(head.encode() + b"\r\n" + body[: len(body) // 2])
os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the upload
"""


def test_an_object_whose_upload_was_killed_is_never_visible(s3_url: str) -> None:
    import sys

    st = _storage(s3_url)
    key = f"{st.prefix}/chk-1/half.state"

    def put(how: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _HALF_PUT,
                               s3store.ENV["AWS_ENDPOINT_URL_S3"], s3store.BUCKET, key, how],
                              env={**os.environ, **s3store.ENV}, capture_output=True,
                              text=True, timeout=60)

    proc = put("half")
    assert proc.returncode == -9, proc.stderr
    time.sleep(0.5)
    assert not st.remote.exists(key)
    assert "chk-1/half.state" not in s3store.keys(st.url)
    # the same request sent whole makes the object (the probe is not vacuous)
    proc = put("whole")
    assert proc.returncode == 0 and proc.stdout.strip() == "HTTP/1.1 200 OK", proc
    assert st.remote.exists(key)


def test_explicit_s3storage_settings_need_no_environment(
        s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    storage = of.S3Storage(s3_url, endpoint=s3store.ENV["AWS_ENDPOINT_URL_S3"],
                           access_key_id=s3store.ENV["AWS_ACCESS_KEY_ID"],
                           secret_access_key=s3store.ENV["AWS_SECRET_ACCESS_KEY"],
                           staging_dir=str(tmp_path / "staging"))
    flow = statejobs.build(str(tmp_path / "out"), "unused", backend_name="rocksdb",
                           parallelism=2, records=1500, rate=3000, incremental=True)
    assert flow.checkpoint_config is not None
    flow.enable_checkpointing(0.1, storage, incremental=True)
    result = flow.run()
    assert len(result.completed_checkpoints) >= 2
    assert result.checkpoint_storage == f"{s3_url}/statejob"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3store.ENV["AWS_ENDPOINT_URL_S3"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3store.ENV["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3store.ENV["AWS_SECRET_ACCESS_KEY"])
    assert any(k.endswith("/_metadata") for k in s3store.keys(f"{s3_url}/statejob"))
