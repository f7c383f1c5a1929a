"""The onceflow command, run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onceflow as of

JOB = '''
import onceflow as of
flow = of.Flow("cli-job", parallelism=2)
flow.enable_checkpointing(0.05, {ckpt!r}, retained=3)
(flow.source(of.sources.Range(0, 20000), name="numbers")
     .map(lambda i: (i % 10, 1), name="pairs")
     .key_by(lambda kv: kv[0])
     .reduce(lambda a, b: (a[0], a[1] + b[1]), name="counts")
     .sink(of.sinks.FileSink({out!r}), name="files"))
if __name__ == "__main__":
    raise SystemExit("run me with `onceflow run`")
'''


def onceflow(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "onceflow.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


def test_run_checkpoints_and_inspect(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB.format(ckpt=str(tmp_path / "ck"), out=str(tmp_path / "out")))
    run = onceflow("run", str(job), "--parallelism", "1")
    assert run.returncode == 0, run.stderr
    assert "counts" in run.stdout and "x1" in run.stdout  # the override took effect
    assert len(of.sinks.read_committed(tmp_path / "out")) == 20000

    listed = onceflow("checkpoints", str(tmp_path / "ck"), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert rows and all(r["status"].startswith("complete") for r in rows)
    assert rows[-1]["status"] == "complete (final)" and rows[-1]["files"] == 2
    text = onceflow("checkpoints", str(tmp_path / "ck"))
    assert "complete (final)" in text.stdout

    last = rows[-1]["path"]
    info = onceflow("inspect", last, "--json")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    ops = {o["uid"]: o for o in doc["operators"]}
    assert ops["numbers"]["subtasks"][0]["splits"][0]["finished"] is True
    assert ops["counts"]["subtasks"][0]["key_groups"] == [0, 128]
    assert ops["counts"]["subtasks"][0]["keyed_state"] == {"reduce": 10}
    assert "pending_transactions" in ops["files"]["subtasks"][0]
    assert ops["pairs"]["stateful"] is False
    assert "counts (reduce, parallelism 1)" in onceflow("inspect", last).stdout


def test_bad_arguments_give_clear_messages_and_exit_codes(tmp_path: Path) -> None:
    missing = onceflow("run", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    nothing = tmp_path / "empty.py"
    nothing.write_text("x = 1\n")
    no_flow = onceflow("run", str(nothing))
    assert no_flow.returncode == 2 and "defines no 'flow'" in no_flow.stderr
    bad = onceflow("inspect", str(tmp_path))
    assert bad.returncode == 2 and "_metadata" in bad.stderr
    usage = onceflow("frobnicate")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    for sub in ("run", "checkpoints", "inspect", "kafka", "verify", "savepoint", "stop"):
        assert onceflow(sub, "--help").returncode == 0


def test_a_failing_job_exits_1(tmp_path: Path) -> None:
    job = tmp_path / "bad.py"
    job.write_text(
        "import onceflow as of\n"
        "flow = of.Flow('bad', restart_strategy=of.restart.no_restart())\n"
        "flow.source(of.sources.Range(0, 10)).map(lambda i: 1 / (i - 5), name='div')"
        ".sink(of.sinks.Discard())\n")
    r = onceflow("run", str(job))
    assert r.returncode == 1
    assert "'div'" in r.stderr and "record 5" in r.stderr
