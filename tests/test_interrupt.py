"""Ctrl-C (SIGINT) and SIGTERM to a running job (issue 12 #5): the first stops it with a
savepoint, a second stops it at once; no traceback; ``--restore latest`` then continues
with exactly-once output. Real `onceflow run` processes, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import accumulate
from pathlib import Path

import onceflow as of

N = 30_000

JOB = '''
import onceflow as of
from onceflow.testing import throttle
flow = of.Flow("sigjob", batch_size=64)
flow.enable_checkpointing(0.2, {ckpt!r})
(flow.source(of.sources.Range(0, {n}), name="numbers")
     .map(throttle(4000, every=64), name="slow")
     .key_by(lambda i: i % 7)
     .reduce(lambda a, b: a + b, name="sum")
     .sink(of.sinks.FileSink({out!r}), name="files"))
if __name__ == "__main__":
    result = flow.run()
    print("SAVEPOINT", result.savepoint)
'''


def _expected() -> list[int]:
    return sorted(s for k in range(7) for s in accumulate(range(k, N, 7)))


def _job(tmp_path: Path) -> Path:
    job = tmp_path / "job.py"
    job.write_text(JOB.format(ckpt=str(tmp_path / "ck"), out=str(tmp_path / "out"), n=N))
    return job


def _onceflow(*args: str) -> list[str]:
    exe = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    assert exe, "the onceflow command is installed with the package"
    return [exe, *args]


def _start(cmd: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)


def _wait_for_checkpoint(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    deadline = time.monotonic() + 60
    while not list((tmp_path / "ck" / "sigjob").glob("chk-*/_metadata")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.05)


def _stderr_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    """The lines ``proc`` writes to stderr up to the first that holds ``text`` (or all)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            break
    return seen


def _finish_with_restore(job: Path, tmp_path: Path) -> None:
    r = subprocess.run(_onceflow("run", str(job), "--no-progress", "--restore", "latest"),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert sorted(of.sinks.read_committed(tmp_path / "out")) == _expected()


def test_sigint_stops_with_a_savepoint_then_restore_continues_exactly_once(
        tmp_path: Path) -> None:
    job = _job(tmp_path)
    proc = _start(_onceflow("run", str(job), "--no-progress"), tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped with savepoint" in out  # the run's summary
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopping job 'sigjob' with a savepoint" in err
    assert "stopped with savepoint" in err
    assert f"resume with: onceflow run {job} --restore latest" in err
    savepoints = list((tmp_path / "ck" / "sigjob").glob("savepoint-*/_metadata"))
    assert len(savepoints) == 1, "a completed savepoint"
    partial = of.sinks.read_committed(tmp_path / "out")
    assert 0 < len(partial) < N, "stopped mid-job, its output so far committed"
    assert set(partial) <= set(_expected())
    _finish_with_restore(job, tmp_path)


def test_a_second_sigint_stops_at_once_and_names_the_latest_checkpoint(tmp_path: Path) -> None:
    job = _job(tmp_path)
    proc = _start(_onceflow("run", str(job), "--no-progress"), tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    # Python runs a signal handler once for signals that arrive before it got to run:
    # wait until the first one was handled (it says so) before sending the second
    seen = _stderr_until(proc, "with a savepoint")
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "at once; the latest checkpoint is" in err
    assert "--restore latest" in err
    _finish_with_restore(job, tmp_path)


def test_sigterm_is_the_same_with_exit_code_143(tmp_path: Path) -> None:
    job = _job(tmp_path)
    proc = _start(_onceflow("run", str(job), "--no-progress"), tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopping job 'sigjob' with a savepoint" in err and "Traceback" not in err
    _finish_with_restore(job, tmp_path)


def test_sigint_to_a_plain_python_program_returns_a_result_with_the_savepoint(
        tmp_path: Path) -> None:
    job = _job(tmp_path)
    proc = _start([sys.executable, str(job)], tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err  # run() returned normally
    assert "SAVEPOINT " + str(tmp_path / "ck" / "sigjob" / "savepoint-") in out
    assert 'resume with: flow.run(restore="latest")' in err
    _finish_with_restore(job, tmp_path)


WAITING_JOB = '''
import onceflow as of
from onceflow.postgres import PostgresSink
flow = of.Flow("waitjob", restart_strategy=of.restart.fixed_delay(attempts=1000, delay=1.0))
flow.enable_checkpointing(0.2, {ckpt!r})
(flow.source(of.sources.Range(0, 100), name="numbers")
     .sink(PostgresSink("postgresql://postgres@127.0.0.1:1/none", "t", columns=["a"],
                        connect_timeout=2), name="pg"))
'''


def test_sigint_while_run_waits_for_an_unreachable_server_stops_at_once(
        tmp_path: Path) -> None:
    """run() asks a server that is down again as the restart strategy allows (here for
    1,000 s); a Ctrl-C meanwhile stops it at once, saying nothing started: there is no
    running job to take a savepoint of (before, the savepoint request waited for the start)."""
    job = tmp_path / "wait.py"
    job.write_text(WAITING_JOB.format(ckpt=str(tmp_path / "ck")))
    proc = _start(_onceflow("run", str(job), "--no-progress"), tmp_path)
    seen = _stderr_until(proc, "cannot start yet")
    assert seen and "cannot start yet" in seen[-1], "".join(seen)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = "".join(seen) + rest
    assert time.monotonic() - sent < 10, err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "SIGINT: stopping job 'waitjob' at once; it had not started" in err
    assert not list((tmp_path / "ck").rglob("_metadata")), "nothing ran, nothing to restore"
