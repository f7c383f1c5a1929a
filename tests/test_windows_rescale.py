"""Rescaling window jobs 2 -> 3 -> 1 with windows open and timers pending: through
savepoints (stop-with-savepoint keeps windows open) and through the checkpoints of killed
drivers. The committed output must equal the failure-free run's (``crashjobs.expected``)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import crashjobs
import pytest
from jobproc import assert_no_orphans
from test_exactly_once import Job

import onceflow as of

RECORDS = 20_000


def _flow(shape: str, p: int, tmp: Path, backend: str) -> of.Flow:
    be = of.state.RocksDBBackend(layer_entries=2_000) if backend == "rocksdb" \
        else of.state.MemoryBackend()
    flow = of.Flow(f"rescale-{shape}", parallelism=p, batch_size=128, state_backend=be,
                   restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.2, str(tmp / "ck"))
    crashjobs.build(shape, flow, RECORDS, 3000.0, str(tmp / "out"), "")
    return flow


def _stop_mid_run(flow: of.Flow, restore: str | None, out: Path, sp: Path) -> str:
    before = len(list(out.glob("*.jsonl"))) if out.exists() else 0
    client = flow.start(restore=restore)
    deadline = time.monotonic() + 60
    while (len(list(out.glob("*.jsonl"))) if out.exists() else 0) <= before:
        assert time.monotonic() < deadline and not client.done(), "no progress"
        time.sleep(0.05)
    path = client.stop_with_savepoint(str(sp), timeout=120)
    result = client.result(timeout=120)
    assert result.records_out("numbers") < RECORDS, "the job ended before the stop"
    return path


@pytest.mark.parametrize(("shape", "backend"), [("window_session", "memory"),
                                                ("window_tumbling", "rocksdb"),
                                                ("window_sliding", "memory"),
                                                pytest.param("window_sliding", "rocksdb",
                                                             marks=pytest.mark.soak),
                                                pytest.param("window_tumbling", "memory",
                                                             marks=pytest.mark.soak)])
def test_rescale_2_3_1_through_savepoints(tmp_path: Path, shape: str, backend: str) -> None:
    out, sp = tmp_path / "out", tmp_path / "sp"
    s1 = _stop_mid_run(_flow(shape, 2, tmp_path, backend), None, out, sp)
    s2 = _stop_mid_run(_flow(shape, 3, tmp_path, backend), s1, out, sp)
    result = _flow(shape, 1, tmp_path, backend).run(restore=s2)
    assert result.restored_from == s2
    got = crashjobs.committed(str(out))
    want = crashjobs.expected(shape, RECORDS)
    assert got == want, crashjobs.diff(got, want)


def test_rescale_2_3_1_from_killed_drivers_checkpoints(tmp_path: Path) -> None:
    job = Job(tmp_path, "window_session", "--rate", "3000", "--backend", "rocksdb",
              "--incremental", records=RECORDS)
    for p in (2, 3):
        proc = job.start("--parallelism", str(p), *(["--restore", "latest"] if p == 3 else []))
        started = time.monotonic()
        while time.monotonic() - started < 1.5 or \
                not list(job.ckpt.glob("*/chk-*/_metadata")):
            assert time.monotonic() - started < 60 and proc.poll() is None, job.tail(2000)
            time.sleep(0.1)
        pids = [w.pid for w in job.workers()]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_no_orphans(pids)
    job.start("--parallelism", "1", "--restore", "latest")
    code, result = job.wait()
    assert code == 0, job.tail(3000)
    assert result is not None and result["restored_from"]
    job.check_exact()
