"""The small things of a user's first hour (issue 12 #4 and #8), each through the real
`onceflow` command or a real flow."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import onceflow as of
from onceflow.cli import progress
from onceflow.cli.verify import kill_spacing

EXE = shutil.which("onceflow", path=os.path.dirname(sys.executable))


def onceflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert EXE, "the onceflow command is installed with the package"
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=180, cwd=cwd)


def _job(tmp_path: Path, body: str = "", n: int = 2000, name: str = "newcomer") -> Path:
    job = tmp_path / "job.py"
    job.write_text(f"""
import onceflow as of
{body}
flow = of.Flow({name!r}, parallelism=2)
flow.enable_checkpointing(0.1, {str(tmp_path / 'ck')!r})
(flow.source(of.sources.Range(0, {n}), name="numbers")
     .key_by(lambda i: i % 5)
     .reduce(lambda a, b: a + b, name="sum")
     .sink(of.sinks.FileSink({str(tmp_path / 'out')!r}), name="files"))
""")
    return job


# --- #4: a job split over files -------------------------------------------------------------
def test_run_imports_a_sibling_module_of_the_job_file(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "helpers.py").write_text("def triple(i):\n    return 3 * i\n")
    (jobs / "job.py").write_text(f"""
import onceflow as of
from helpers import triple
flow = of.Flow("split-job")
flow.source(of.sources.Range(0, 100)).map(triple).sink(of.sinks.FileSink({str(tmp_path / 'o')!r}))
""")
    r = onceflow("run", "jobs/job.py", "--no-progress", cwd=tmp_path)  # from another folder
    assert r.returncode == 0, r.stderr
    assert sorted(of.sinks.read_committed(tmp_path / "o")) == [3 * i for i in range(100)]


def test_an_error_in_the_job_file_shows_the_users_line_not_runpy(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import onceflow as of\n\nimport no_such_module_here\n")
    r = onceflow("run", str(job))
    assert r.returncode == 2
    assert f'File "{job}", line 3, in <module>' in r.stderr
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in r.stderr
    assert "runpy" not in r.stderr and "onceflow/cli" not in r.stderr


# --- #8 -------------------------------------------------------------------------------------
def test_version() -> None:
    r = onceflow("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"onceflow {of.__version__}"


def test_inspect_on_a_flow_folder_shows_its_latest_checkpoint(tmp_path: Path) -> None:
    assert onceflow("run", str(_job(tmp_path)), "--no-progress").returncode == 0
    newest = max(int(p.name.split("-")[1]) for p in (tmp_path / "ck" / "newcomer").glob("chk-*"))
    for where in (tmp_path / "ck" / "newcomer", tmp_path / "ck"):
        r = onceflow("inspect", str(where))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"checkpoint {newest} of flow 'newcomer'"), r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    r = onceflow("inspect", str(empty))
    assert r.returncode == 2 and "holds no complete checkpoint" in r.stderr


def test_inspect_prints_key_group_ranges_like_the_docs(tmp_path: Path) -> None:
    assert onceflow("run", str(_job(tmp_path)), "--no-progress").returncode == 0
    r = onceflow("inspect", str(tmp_path / "ck"))
    assert re.findall(r"key_groups=(\S+)", r.stdout) == ["0..63", "64..127"], r.stdout
    concepts = (Path(__file__).parents[1] / "docs" / "concepts.md").read_text()
    assert "key groups 0..41" in concepts and "key groups 85..127" in concepts
    as_json = json.loads(onceflow("inspect", str(tmp_path / "ck"), "--json").stdout)
    ranges = [s["key_groups"] for o in as_json["operators"] if o["uid"] == "sum"
              for s in o["subtasks"]]
    assert ranges == [[0, 64], [64, 128]]  # JSON: Python's half-open [start, end)


def test_no_broken_pipe_message_when_the_reader_goes_away(tmp_path: Path) -> None:
    assert onceflow("run", str(_job(tmp_path)), "--no-progress").returncode == 0
    for args in (("checkpoints", str(tmp_path / "ck")), ("inspect", str(tmp_path / "ck"))):
        read, write = os.pipe()
        os.close(read)  # like `| head` that has already exited
        assert EXE
        try:
            r = subprocess.run([EXE, *args], stdout=write, stderr=subprocess.PIPE, text=True,
                               timeout=120)
        finally:
            os.close(write)
        assert r.stderr == "", r.stderr
        assert r.returncode == 141


def test_cli_log_lines_carry_their_level(tmp_path: Path) -> None:
    job = _job(tmp_path, n=200)
    assert onceflow("run", str(job), "--no-progress").returncode == 0
    r = onceflow("run", str(job), "--no-progress", "--fresh")  # logs a WARNING
    assert r.returncode == 0, r.stderr
    assert re.search(r"^WARNING onceflow: flow 'newcomer' starts over", r.stderr, re.M), r.stderr
    v = onceflow("run", str(job), "--no-progress", "--restore", "latest", "-v")
    assert re.search(r"^\S+ \S+ INFO onceflow: restoring from checkpoint", v.stderr, re.M), \
        v.stderr


PLAIN = """
import logging, sys
import onceflow as of
if sys.argv[1] == "configured":
    logging.basicConfig(format="MINE %(levelname)s %(message)s")
flow = of.Flow("plain")
flow.enable_checkpointing(0.1, sys.argv[2])
flow.source(of.sources.Range(0, 10)).sink(of.sinks.Discard())
flow.run(restore="latest")   # no checkpoint yet: one WARNING
"""


def test_warnings_without_logging_configured_are_documented_and_levelled(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(PLAIN)
    bare = subprocess.run([sys.executable, str(script), "bare", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=120)
    assert bare.returncode == 0, bare.stderr
    assert bare.stderr.splitlines() == [
        f"WARNING onceflow: restore='latest': no complete checkpoint in {tmp_path / 'a'}/plain; "
        "starting from the beginning"]
    mine = subprocess.run([sys.executable, str(script), "configured", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    assert [ln for ln in mine.stderr.splitlines() if "no complete checkpoint" in ln] == [
        f"MINE WARNING restore='latest': no complete checkpoint in {tmp_path / 'b'}/plain; "
        "starting from the beginning"], "the program's handlers only, no second copy"
    ops = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    assert "configured no logging at all" in ops and "WARNING onceflow:" in ops


def test_storage_writable_by_others_is_warned_about(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    flow = of.Flow("open-storage")
    flow.enable_checkpointing(0.1, root)
    flow.source(of.sources.Range(0, 10)).sink(of.sinks.Discard())
    with caplog.at_level(logging.WARNING, logger="onceflow.checkpoint"):
        flow.run()
    warned = [r.getMessage() for r in caplog.records if "not private" in r.getMessage()]
    assert len(warned) == 1 and str(root) in warned[0] and "777" in warned[0]
    assert "pickles" in warned[0]
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    caplog.clear()
    flow.enable_checkpointing(0.1, private)
    with caplog.at_level(logging.WARNING, logger="onceflow.checkpoint"):
        flow.run()
    assert not [r for r in caplog.records if "not private" in r.getMessage()]


def test_progress_survives_a_terminal_reporting_0_columns(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    monkeypatch.delenv("COLUMNS", raising=False)
    stream = io.StringIO()
    stream.fileno = lambda: 2  # type: ignore[method-assign]
    assert progress._columns(stream) == 80
    monkeypatch.setenv("COLUMNS", "132")
    assert progress._columns(stream) == 132


def test_verify_schedules_kills_within_the_measured_processing_time() -> None:
    # 0.6 s of processing after 3 s of start-up: 2 kills must fit in the 0.6 s
    assert kill_spacing(0.6, 2) * 2 < 0.6
    assert kill_spacing(0.6, 2) == pytest.approx(0.2)


SLOW_START = '''
import time
import onceflow as of
from onceflow.testing import throttle

class SlowToStart(of.sources.Range):
    def validate(self):
        time.sleep(2.0)   # a start-up much longer than the processing

flow = of.Flow("short-job", batch_size=32)
flow.enable_checkpointing(0.05, "/nonexistent/replaced-by-verify")
(flow.source(SlowToStart(0, 2400), name="numbers")
     .map(throttle(4000, every=32), name="slow")
     .sink(of.sinks.FileSink("/nonexistent/replaced-by-verify"), name="files"))
'''


def test_verify_gets_all_its_kills_into_a_short_job(tmp_path: Path) -> None:
    job = tmp_path / "short.py"
    job.write_text(SLOW_START)
    r = onceflow("verify", str(job), "--kills", "3", "--seed", "7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kill(s), 3 restart(s)" in r.stdout and "result: identical" in r.stdout


def test_user_code_failing_in_the_driver_shows_the_users_frames(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import onceflow as of\n"
                   "class Bad(of.sources.Range):\n"
                   "    def splits(self, n):\n"
                   "        raise KeyError('nope')\n"
                   "flow = of.Flow('splits-fail')\n"
                   "flow.source(Bad(0, 10)).sink(of.sinks.Discard())\n")
    r = onceflow("run", str(job), "--no-progress")
    assert r.returncode == 1
    assert f'File "{job}", line 4, in splits' in r.stderr and "KeyError: 'nope'" in r.stderr
    assert "onceflow/runtime" not in r.stderr and "Traceback (most recent call last):" \
        not in r.stderr
