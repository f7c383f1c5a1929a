"""Savepoints to any ``s3://`` URL (``savepoint(directory="s3://bucket/prefix")``), on the
real object store (SeaweedFS from ``scripts/s3``): from a job whose checkpoints are in a
directory and from one whose checkpoints are on the store, self-contained (the job's
checkpoints deleted, the savepoint still restores, at another parallelism, output exact),
a local savepoint from a job on the store, a worker SIGKILLed in the middle of a savepoint's
upload, ``_job.json`` on the store for ``onceflow savepoint s3://...``, and bad targets
named clearly. Never a mock."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import s3store
import statejobs

import onceflow as of
from onceflow import _faults, cli
from onceflow.checkpoint.s3 import savepoint_remote
from onceflow.checkpoint.storage import open_storage

s3_url = s3store.s3_url  # the fixture: a fresh s3:// prefix, env set
RECORDS = 30_000


def _start_and_wait(flow: of.Flow, out: Path) -> of.JobClient:
    client = flow.start()
    deadline = time.monotonic() + 60
    while not list(out.glob("*.jsonl")):
        assert time.monotonic() < deadline and not client.done(), "no output yet"
        time.sleep(0.05)
    return client


def _stop_to(client: of.JobClient, target: str) -> str:
    path = client.stop_with_savepoint(target, timeout=120)
    result = client.result(timeout=120)
    assert result.records_out("numbers") < RECORDS, "the job ended before the savepoint"
    return path


def _assert_self_contained(path: str) -> None:
    meta = open_storage("unused-dir", "statejob").metadata(path)
    assert meta.is_savepoint and meta.shared == ()
    objects = s3store.keys(path)
    assert "_metadata" in objects
    for rel in [*meta.files, *meta.extra_files]:
        assert rel in objects, f"savepoint file {rel} is not below {path}"
        assert not rel.startswith(".."), rel


def _assert_no_staging_left(path: str, job: str | None = None) -> None:
    """A completed savepoint on a store leaves nothing in the local staging directory the
    workers wrote it through: not its emptied folders, nor its target's."""
    job_remote = None if job is None else open_storage(job, "statejob").remote
    remote, key = savepoint_remote(path, job_remote)
    for k in (key, key.rsplit("/", 1)[0]):
        local = remote.path(k)
        assert not os.path.exists(local), f"{local}: {sorted(os.walk(local))[:5]}"


def test_savepoint_to_s3_from_a_directory_job_restores_after_its_checkpoints_are_gone(
        s3_url: str, tmp_path: Path) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    flow = statejobs.build(str(out), str(ckpt), backend_name="rocksdb", parallelism=2,
                           records=RECORDS, rate=4000, interval=0.2, incremental=True)
    path = _stop_to(_start_and_wait(flow, out), f"{s3_url}/sp/")
    assert path.startswith(f"{s3_url}/sp/savepoint-"), path
    _assert_self_contained(path)
    _assert_no_staging_left(path)
    latest = open_storage(str(ckpt), "statejob").latest_valid()  # failover would use it
    assert latest is not None and latest.location == path, latest
    rerun = statejobs.build(str(out), str(ckpt), backend_name="memory", parallelism=1,
                            records=RECORDS, rate=1e9)
    with pytest.raises(of.ExistingCheckpointError, match="stopped with this savepoint") as e:
        rerun.run()
    assert path in str(e.value)
    shutil.rmtree(ckpt)  # the job's checkpoints (and the .ref to the savepoint) are gone
    again = statejobs.build(str(out), str(tmp_path / "ckpt2"), backend_name="memory",
                            parallelism=3, records=RECORDS, rate=1e9)
    res = again.run(restore=path)
    assert res.restored_from == path
    assert statejobs.committed(str(out)) == statejobs.expected(RECORDS)


def test_savepoint_to_another_prefix_from_an_s3_job_is_self_contained(
        s3_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flow = statejobs.build(str(out), f"{s3_url}/ck", backend_name="rocksdb", parallelism=2,
                           records=RECORDS, rate=4000, interval=0.2, incremental=True)
    path = _stop_to(_start_and_wait(flow, out), f"{s3_url}/sp")
    assert path.startswith(f"{s3_url}/sp/savepoint-"), path
    _assert_self_contained(path)
    _assert_no_staging_left(path, job=f"{s3_url}/ck")
    rerun = statejobs.build(str(out), f"{s3_url}/ck", backend_name="memory", parallelism=1,
                            records=RECORDS, rate=1e9)
    with pytest.raises(of.ExistingCheckpointError, match="stopped with this savepoint") as e:
        rerun.run()  # a run without restore= names the savepoint on the other prefix
    assert path in str(e.value)
    ck = s3store.keys(f"{s3_url}/ck")
    assert any(k.startswith("statejob/shared/") for k in ck), sorted(ck)[:20]
    assert ck.get(f"statejob/savepoint-{path.rsplit('savepoint-', 1)[1].split('-')[0]}.ref")
    bucket, _, prefix = f"{s3_url}/ck/".removeprefix("s3://").partition("/")
    c = s3store.client()
    c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": prefix + k} for k in ck]})
    assert s3store.keys(f"{s3_url}/ck") == {}
    again = statejobs.build(str(out), f"{s3_url}/ck2", backend_name="rocksdb",
                            parallelism=1, records=RECORDS, rate=1e9)
    res = again.run(restore=path)
    assert res.restored_from == path
    assert statejobs.committed(str(out)) == statejobs.expected(RECORDS)


def test_local_savepoint_from_an_s3_job_still_works(s3_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flow = statejobs.build(str(out), s3_url, backend_name="rocksdb", parallelism=2,
                           records=RECORDS, rate=4000, interval=0.2)
    path = _stop_to(_start_and_wait(flow, out), str(tmp_path / "sp"))
    assert path.startswith(str(tmp_path / "sp" / "savepoint-")), path
    again = statejobs.build(str(out), s3_url, backend_name="memory", parallelism=3,
                            records=RECORDS, rate=1e9)
    res = again.run(restore=path)
    assert res.restored_from == path
    assert statejobs.committed(str(out)) == statejobs.expected(RECORDS)


def test_a_bad_savepoint_url_or_missing_bucket_is_named_and_the_job_runs_on(
        s3_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flow = statejobs.build(str(out), str(tmp_path / "ckpt"), backend_name="memory",
                           parallelism=1, records=RECORDS, rate=4000, interval=0.2)
    client = _start_and_wait(flow, out)
    with pytest.raises(of.SavepointError, match="no-such-bucket-onceflow") as err:
        client.savepoint("s3://no-such-bucket-onceflow/sp", timeout=60)
    assert "does not exist" in str(err.value)
    with pytest.raises(of.SavepointError, match="names no bucket") as err:
        client.savepoint("s3:///sp", timeout=60)
    assert "s3:///sp" in str(err.value)
    path = _stop_to(client, f"{s3_url}/sp")  # the job was not harmed
    assert path.startswith(f"{s3_url}/sp/savepoint-")


class _SilentEndpoint:
    """An "S3 endpoint" that accepts connections and never answers (a store that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return  # closed

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def _completed(client: of.JobClient) -> int:
    return int(client.status.snapshot()["checkpoints"]["completed"])


def test_a_savepoint_target_that_does_not_answer_holds_up_no_checkpoint(
        s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onceflow.checkpoint import coordinator

    monkeypatch.setattr(coordinator, "SAVEPOINT_TARGET_TIMEOUT_S", 3.0)
    out = tmp_path / "out"
    flow = statejobs.build(str(out), str(tmp_path / "ckpt"), backend_name="memory",
                           parallelism=1, records=RECORDS, rate=4000, interval=0.2)
    client = _start_and_wait(flow, out)
    silent = _SilentEndpoint()
    good = os.environ["AWS_ENDPOINT_URL_S3"]
    try:
        # the target's endpoint, for the driver's bucket check (the workers run already)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", silent.url)
        before, t0 = _completed(client), time.monotonic()
        with pytest.raises(of.SavepointError, match="did not answer within 3 s") as err:
            client.savepoint("s3://onceflow-test/hangs", timeout=60)
        took, during = time.monotonic() - t0, _completed(client) - before
        assert silent.url in str(err.value) and "s3://onceflow-test/hangs" in str(err.value)
        assert 2.5 < took < 20, took
        # the driver loop went on: checkpoints every 0.2 s kept completing meanwhile
        assert during >= 3, f"only {during} checkpoint(s) completed in {took:.1f} s"
    finally:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", good)
        silent.close()
    path = _stop_to(client, f"{s3_url}/sp")  # the job was not harmed
    assert path.startswith(f"{s3_url}/sp/savepoint-")


def test_a_closed_endpoint_fails_the_savepoint_at_once_and_the_job_runs_on(
        s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    flow = statejobs.build(str(out), str(tmp_path / "ckpt"), backend_name="memory",
                           parallelism=1, records=RECORDS, rate=4000, interval=0.2)
    client = _start_and_wait(flow, out)
    good = os.environ["AWS_ENDPOINT_URL_S3"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", closed)
        t0 = time.monotonic()
        with pytest.raises(of.SavepointError, match="cannot reach the S3 endpoint") as err:
            client.savepoint(f"{s3_url}/refused", timeout=60)
        assert closed in str(err.value) and time.monotonic() - t0 < 15
    finally:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", good)
    assert s3store.folders(s3_url) == [] and s3store.keys(s3_url) == {}
    path = _stop_to(client, f"{s3_url}/sp")
    assert path.startswith(f"{s3_url}/sp/savepoint-")


def test_deleting_a_prefix_leaves_no_empty_folder_on_the_store(s3_url: str) -> None:
    remote, key = savepoint_remote(f"{s3_url}/sp/savepoint-7-x")
    for k in ("a.state", "sub/b.state", "sub/deeper/c.state"):
        remote.put_bytes(f"{key}/{k}", b"1")
    remote.put_bytes(f"{key}-sibling/keep", b"2")  # a neighbour with the same start
    remote.delete_prefix(key)
    assert s3store.keys(s3_url) == {"sp/savepoint-7-x-sibling/keep": 1}
    # (SeaweedFS lists an emptied "folder" as a common prefix until it is deleted itself)
    assert s3store.folders(f"{s3_url}/sp") == ["savepoint-7-x-sibling/"]


def _onceflow(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
              *args: str, token: str | None = None) -> tuple[int, str, str]:
    """``onceflow ARGS`` in this process (as the command line runs it): code, out, err."""
    capsys.readouterr()
    if token is None:
        monkeypatch.delenv("ONCEFLOW_DASHBOARD_TOKEN", raising=False)
    else:
        monkeypatch.setenv("ONCEFLOW_DASHBOARD_TOKEN", token)
    code = cli.main(list(args))
    got = capsys.readouterr()
    return code, got.out, got.err


def test_job_json_is_published_on_the_store_and_the_cli_finds_the_job_there(
        s3_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out, token = tmp_path / "out", "a-secret-token-1234"
    flow = statejobs.build(str(out), s3_url, backend_name="memory", parallelism=1,
                           records=RECORDS, rate=3000, interval=0.2)
    client = flow.start(dashboard=0, dashboard_token=token)
    try:
        deadline = time.monotonic() + 60
        while "statejob/_job.json" not in s3store.keys(s3_url):
            assert time.monotonic() < deadline and not client.done(), "no _job.json object"
            time.sleep(0.1)
        bucket, _, prefix = s3_url.removeprefix("s3://").partition("/")
        raw = s3store.client().get_object(
            Bucket=bucket, Key=f"{prefix}/statejob/_job.json")["Body"].read()
        doc = json.loads(raw)
        assert doc["url"].startswith("http://127.0.0.1:") and doc["token_required"] is True
        assert token.encode() not in raw  # the token is never published
        code, _, err = _onceflow(capsys, monkeypatch, "savepoint", s3_url)
        assert code == 1 and "ONCEFLOW_DASHBOARD_TOKEN" in err
        code, sp, err = _onceflow(capsys, monkeypatch, "savepoint", s3_url, "--dir",
                                  f"{s3_url}/sp", token=token)  # found below the root
        assert code == 0, err
        path = sp.strip()
        assert path.startswith(f"{s3_url}/sp/savepoint-"), path
        assert "_metadata" in s3store.keys(path)
        code, stop, err = _onceflow(capsys, monkeypatch, "stop", f"{s3_url}/statejob",
                                    "--savepoint", token=token)  # or in the flow's folder
        assert code == 0, err
        assert stop.strip().startswith(f"{s3_url}/statejob/savepoint-"), stop
        result = client.result(timeout=120)
        assert result.records_out("numbers") < RECORDS
    finally:
        if not client.done():
            client.stop_with_savepoint(timeout=60)
    assert "statejob/_job.json" not in s3store.keys(s3_url)  # removed when the job ended
    code, _, err = _onceflow(capsys, monkeypatch, "savepoint", s3_url)
    assert code == 2 and "no running job found" in err and s3_url in err


def test_a_worker_killed_mid_upload_of_an_s3_savepoint_leaves_no_savepoint_and_exact_output(
        s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "fault-fired"
    # a directory-storage job uploads only the savepoint: the fault fires inside its upload
    monkeypatch.setenv("ONCEFLOW_FAULT", "snapshot.s3_upload@subtask=1")
    monkeypatch.setenv("ONCEFLOW_FAULT_TOKEN", str(token))
    _faults.reload()  # the forked workers inherit it
    try:
        out = tmp_path / "out"
        flow = statejobs.build(str(out), str(tmp_path / "ckpt"), backend_name="rocksdb",
                               parallelism=2, records=RECORDS, rate=4000, interval=0.2)
        client = _start_and_wait(flow, out)
        with pytest.raises(of.SavepointError):
            client.savepoint(f"{s3_url}/broken", timeout=120)
        assert token.exists(), "the fault inside the savepoint's upload never fired"
        # the attempt's workers are stopped before the driver discards the aborted
        # savepoint: nothing of it is left, and certainly no _metadata
        assert s3store.keys(f"{s3_url}/broken") == {}
        assert s3store.folders(f"{s3_url}/broken") == []  # no emptied savepoint "folder"
        remote, key = savepoint_remote(f"{s3_url}/broken")
        assert not os.path.exists(remote.path(key)), os.listdir(remote.path(key))  # staging
        path = _stop_to(client, f"{s3_url}/sp")  # after the restart, a savepoint succeeds
        assert client.result(timeout=60).restarts == 1
    finally:
        monkeypatch.delenv("ONCEFLOW_FAULT")
        _faults.reload()
    again = statejobs.build(str(out), str(tmp_path / "ckpt2"), backend_name="memory",
                            parallelism=3, records=RECORDS, rate=1e9)
    again.run(restore=path)
    assert statejobs.committed(str(out)) == statejobs.expected(RECORDS)
