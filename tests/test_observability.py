"""Live progress, Prometheus metrics, JSON logs and `onceflow verify`, with real jobs
(driver and worker processes)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_cli import onceflow

import onceflow as of
import onceflow.logging as oflog
from onceflow.checkpoint.stats import CheckpointStats, CheckpointStatus
from onceflow.graph.jobgraph import build
from onceflow.runtime.status import JobState, JobStatus
from onceflow.testing import throttle
from onceflow.web.metrics import METRICS, StatusCollector

SLOW_JOB = '''
import onceflow as of
from onceflow.testing import throttle
flow = of.Flow("slow-job", parallelism=2, batch_size=128)
flow.enable_checkpointing(0.2, {ckpt!r})
(flow.source(of.sources.Range(0, {n}), name="numbers")
     .map(throttle({rate}, every=128), name="slow")
     .key_by(lambda i: i % 10)
     .reduce(lambda a, b: a + b, name="sums")
     .sink(of.sinks.FileSink({out!r}), name="files"))
'''


def _slow_job(tmp: Path, n: int = 12000, rate: int = 3000) -> Path:
    job = tmp / "job.py"
    job.write_text(SLOW_JOB.format(ckpt=str(tmp / "ck"), out=str(tmp / "out"), n=n, rate=rate))
    return job


# --- JobStatus -----------------------------------------------------------------------------
def _tiny_graph() -> of.Flow:
    flow = of.Flow("tiny", parallelism=2)
    (flow.source(of.sources.Range(0, 10), name="numbers")
         .map(lambda i: i, name="m")
         .sink(of.sinks.Discard(), name="out"))
    return flow


def test_status_computes_rates_states_and_checkpoint_counts() -> None:
    now = [100.0]
    st = JobStatus("tiny", clock=lambda: now[0])
    flow = _tiny_graph()
    st.set_graph(build(flow._plan, 2, 128))
    assert st.state is JobState.CREATED
    st.attempt_started(0, None, {0: 11, 1: 12})
    assert st.attempt_running() is None  # nothing restored
    st.on_metrics({"m#0": (100, 100, 10.0, 0.0)})
    now[0] += 2.0
    st.on_metrics({"m#0": (700, 700, 510.0, 1000.0)})
    snap = st.snapshot()
    m = next(o for o in snap["operators"] if o["uid"] == "m")
    assert m["records_in"] == 700 and m["records_in_per_s"] == pytest.approx(300.0)
    assert m["busy_ms_per_s"] == pytest.approx(250.0)
    assert m["backpressured_ms_per_s"] == pytest.approx(500.0)
    assert snap["workers"] == {0: 11, 1: 12}

    ok = CheckpointStats(1, CheckpointStatus.COMPLETED, 1.0, duration=0.02, size=300)
    late = CheckpointStats(2, CheckpointStatus.ABORTED, 2.0, duration=9.0, failure="expired",
                           counts_as_failure=True)
    moved = CheckpointStats(3, CheckpointStatus.ABORTED, 3.0, failure="the job restarts")
    st.sync_checkpoints([ok, late, moved], pending=1)
    ck = st.snapshot()["checkpoints"]
    assert (ck["completed"], ck["failed"], ck["in_progress"]) == (1, 1, 1)
    assert ck["last_completed"]["id"] == 1 and ck["last_completed"]["duration_ms"] == 20.0

    st.restarting("worker 1 was killed", 1, 0.5)
    assert st.state is JobState.RESTARTING and st.worker_pids() == {}
    st.attempt_started(1, 1, {0: 21, 1: 22})
    restored = st.attempt_running()
    assert restored is not None and restored[1] == 1
    assert st.snapshot()["last_restore"]["checkpoint"] == 1
    assert st.snapshot()["restarts"][0]["cause"] == "worker 1 was killed"
    st.finished({"m#0": (5, 5), "m#1": (5, 5)})
    assert st.state is JobState.FINISHED
    with pytest.raises(RuntimeError, match="illegal transition"):
        st.attempt_running()


# --- progress ------------------------------------------------------------------------------
def test_run_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    job = _slow_job(tmp_path, n=24000)
    r = onceflow("run", str(job), "--progress-interval", "0.5")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[")]
    assert len(lines) >= 3, r.stderr
    pattern = re.compile(r"^\[(RUNNING|FINISHED) \d+s\] in [\d,]+ rec/s out [\d,]+ rec/s "
                         r"\(total [\d,]+ / [\d,]+\) \| .* \| restarts \d+$")
    assert all(pattern.match(ln) for ln in lines), lines
    assert "\r" not in r.stderr  # plain lines, not a redrawn one
    assert any(re.search(r"in [1-9][\d,]* rec/s", ln) for ln in lines), lines
    assert re.search(r"checkpoint \d+ ok \d+ ms", r.stderr)
    assert lines[-1].startswith("[FINISHED") and "(total 24,000 / 24,000)" in lines[-1]
    assert "flow 'slow-job'" in r.stdout  # the summary still goes to stdout
    quiet = onceflow("run", str(job), "--no-progress", "--restore", "latest")
    assert quiet.returncode == 0 and not any(ln.startswith("[") for ln in
                                             quiet.stderr.splitlines())


def test_progress_on_a_terminal_redraws_one_line(tmp_path: Path) -> None:
    import os
    import pty
    import struct
    import subprocess
    import sys
    from fcntl import ioctl
    from termios import TIOCSWINSZ

    job = _slow_job(tmp_path, n=8000)
    master, slave = pty.openpty()
    ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))  # 200 columns
    exe = os.path.join(os.path.dirname(sys.executable), "onceflow")
    proc = subprocess.Popen([exe, "run", str(job), "--progress-interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the job closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    text = b"".join(chunks).decode().replace("\r\n", "\n")  # the tty maps \n to \r\n
    progress = text[text.index("\r["):]
    assert progress.count("\r[") >= 3  # redrawn in place ...
    assert progress.count("\n") == 1 and progress.endswith("\n")  # ... on one line, ended
    assert "[FINISHED" in progress.rsplit("\r", 1)[-1]
    assert b"flow 'slow-job'" in out


# --- metrics -------------------------------------------------------------------------------
def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _records_out(samples: dict, uid: str) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "onceflow_operator_records_out_total"
               and dict(labels)["operator_uid"] == uid)


def test_metrics_endpoint_while_running_matches_the_job_counters(tmp_path: Path) -> None:
    flow = of.Flow("metrics-job", parallelism=2, batch_size=128)
    flow.enable_checkpointing(0.2, tmp_path / "ck")
    (flow.source(of.sources.Range(0, 24000), name="numbers")
         .map(throttle(4000, every=128), name="slow")
         .key_by(lambda i: i % 7)
         .reduce(lambda a, b: a + b, name="sums")
         .sink(of.sinks.FileSink(tmp_path / "out"), name="files"))
    client = flow.start(metrics_port=0)
    status = client.status
    assert isinstance(status, JobStatus)
    deadline = time.monotonic() + 30
    while "metrics" not in status.snapshot()["endpoints"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    url = status.snapshot()["endpoints"]["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    seen: list[float] = []
    scrapes = []
    while not client.done():
        try:
            s = _scrape(url)
        except OSError:
            break  # the job ended between done() and the request
        scrapes.append(s)
        seen.append(_records_out(s, "numbers"))
        time.sleep(0.3)
    result = client.result(timeout=60)
    assert result.restarts == 0
    assert len(scrapes) >= 5, "the job ended too soon to be scraped"
    assert seen == sorted(seen) and seen[-1] > 0  # monotonic while running
    assert seen[-1] <= result.records_out("numbers") == 24000
    running = scrapes[-1]
    assert running[("onceflow_job_state", (("flow", "metrics-job"), ("state", "RUNNING")))] == 1
    assert running[("onceflow_job_checkpoints_completed_total", (("flow", "metrics-job"),))] >= 1
    assert any(n == "onceflow_operator_busy_time_seconds_total" and v > 0
               for (n, _), v in running.items())
    # after the end, the same collector reports exactly the JobResult's counts
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(StatusCollector(status))
    final = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for fam in text_string_to_metric_families(generate_latest(reg).decode())
             for s in fam.samples}
    for name, op in result.operators.items():
        assert _records_out(final, op.uid) == op.records_out, name
    done = len(result.completed_checkpoints)
    assert final[("onceflow_job_checkpoints_completed_total", (("flow", "metrics-job"),))] \
        == done
    assert final[("onceflow_job_state", (("flow", "metrics-job"), ("state", "FINISHED")))] == 1
    names = {n.removesuffix("_total") for n, _ in final} | {n for n, _ in final}
    missing = [m for m in METRICS if m not in names and "restore" not in m
               and "watermark" not in m]
    # every documented metric is exported (restore: only after one; watermarks: only for
    # operators that have one, tests/test_event_time_metrics.py)
    assert not missing


def test_busy_and_backpressure_point_at_the_slow_operator() -> None:
    # Every record goes to one slow subtask, which takes one batch per loop round but is
    # sent two (one by each source subtask): its input channels fill up and the sources
    # wait for room. (A balanced edge never fills: a worker's loop gives the source one
    # step per round, as often as the operator it feeds, so it only runs slower.)
    slow = throttle(4000, every=64)
    flow = of.Flow("bottleneck", parallelism=2, batch_size=64)
    (flow.source(of.sources.Range(0, 16000), name="numbers")
         .key_by(lambda i: 0)
         .process(lambda record, ctx: [slow(record)], name="slow")
         .sink(of.sinks.Discard(), name="out"))
    client = flow.start()
    status = client.status
    assert isinstance(status, JobStatus)
    best: dict[str, float] = {}
    while not client.done():
        ops = {o["uid"]: o for o in status.snapshot()["operators"]}
        if ops and ops["slow"]["subtasks"]:
            best["source_bp"] = max(best.get("source_bp", 0.0),
                                    ops["numbers"]["backpressured_ms_per_s"])
            best["slow_busy"] = max(best.get("slow_busy", 0.0), ops["slow"]["busy_ms_per_s"])
            best["source_busy"] = ops["numbers"]["busy_ms_per_s"]
        time.sleep(0.2)
    assert client.result(timeout=60).records_in("slow") == 16000
    # the source waits for room downstream most of the time; the slow operator works
    assert best["source_bp"] > 500 and best["slow_busy"] > 500, best
    assert best["source_busy"] < 300, best


def test_two_jobs_in_one_process_serve_separate_metrics(tmp_path: Path) -> None:
    clients = []
    for name in ("job-a", "job-b"):
        flow = of.Flow(name, batch_size=64)
        (flow.source(of.sources.Range(0, 6000), name="numbers")
             .map(throttle(2000, every=64), name="slow")
             .sink(of.sinks.Discard(), name="out"))
        clients.append(flow.start(metrics_port=0))
    urls = []
    for c in clients:
        deadline = time.monotonic() + 30
        while "metrics" not in c.status.snapshot()["endpoints"]:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        urls.append(c.status.snapshot()["endpoints"]["metrics"])  # type: ignore[attr-defined]
    assert urls[0] != urls[1]
    flows = [{dict(labels)["flow"] for (_, labels) in _scrape(u)} for u in urls]
    assert flows == [{"job-a"}, {"job-b"}]
    for c in clients:
        assert c.result(timeout=60).records_out("numbers") == 6000


# --- logs ----------------------------------------------------------------------------------
def test_log_json_gives_one_json_line_per_checkpoint_and_restart(tmp_path: Path) -> None:
    job = _slow_job(tmp_path, n=6000)
    r = onceflow("run", str(job), "--log-json", "--progress-interval", "0.5")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(ln) for ln in r.stderr.splitlines()]  # every line is JSON
    done = [d for d in docs if d.get("event") == "checkpoint_completed"]
    assert done and all(isinstance(d["checkpoint_id"], int) and d["duration_ms"] > 0
                        and d["size"] > 0 for d in done)
    assert done[-1]["final"] is True
    progress = [d for d in docs if d.get("event") == "progress"]
    assert progress and progress[-1]["records_in"] == 6000
    assert {"time", "level", "logger", "message", "pid"} <= set(done[0])


def test_restart_log_line_carries_its_numbers(tmp_path: Path) -> None:
    import io
    import logging

    stream = io.StringIO()
    handler = oflog.configure(json=True, stream=stream)
    try:
        token = tmp_path / "fault.token"
        flow = of.Flow("restart-log", batch_size=100,
                       restart_strategy=of.restart.fixed_delay(3, 0.05))
        flow.enable_checkpointing(0.1, tmp_path / "ck")
        (flow.source(of.sources.Range(0, 3000), name="numbers")
             .map(throttle(6000, every=100), name="slow")
             .sink(of.sinks.FileSink(tmp_path / "out"), name="files"))
        import os

        from onceflow import _faults

        os.environ["ONCEFLOW_FAULT"] = "source.after_batch@records=1500"
        os.environ["ONCEFLOW_FAULT_TOKEN"] = str(token)
        _faults.reload()
        try:
            result = flow.run()
        finally:
            del os.environ["ONCEFLOW_FAULT"], os.environ["ONCEFLOW_FAULT_TOKEN"]
            _faults.reload()
    finally:
        logger = logging.getLogger("onceflow")
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert result.restarts == 1
    docs = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    restart = [d for d in docs if d.get("event") == "restart"]
    assert len(restart) == 1 and restart[0]["restart"] == 1
    assert "SIGKILL" in restart[0]["cause"] and restart[0]["delay_s"] == 0.05
    assert any(d.get("event") == "restored" for d in docs) or \
        restart[0]["checkpoint_id"] is None


# --- verify --------------------------------------------------------------------------------
GOOD = '''
import onceflow as of
from onceflow.testing import throttle
flow = of.Flow("verify-good", parallelism=2, batch_size=128)
flow.enable_checkpointing(0.15, "/nonexistent/never-used")
(flow.source(of.sources.Range(0, 20000), name="numbers", parallelism=1)
     .map(throttle(8000, every=128), name="slow", parallelism=1)
     .key_by(lambda i: i % 10)
     .reduce(lambda a, b: a + b, name="sums")
     .sink(of.sinks.FileSink("/nonexistent/out"), name="files"))
'''

APPEND = '''
import os
import onceflow as of
from onceflow.testing import throttle

class AppendSink(of.sinks.FileSink):
    """Not exactly-once: appends every record at once to a visible file."""

    def begin_transaction(self):
        name = f"{self.prefix}-{self._ctx.subtask:03d}-append.jsonl"
        return of.sinks.FileTxn(tmp="", final=os.path.join(self.directory, name))

    def write(self, txn, records):
        with open(txn.final, "ab") as f:
            f.write(b"".join(b"%d\\n" % r for r in records))

    def pre_commit(self, txn): pass
    def commit(self, txn): pass
    def abort(self, txn): pass
    def abort_lingering(self, ctx, keep): pass

flow = of.Flow("verify-append", parallelism=2, batch_size=128)
flow.enable_checkpointing(0.15, "/nonexistent/never-used")
(flow.source(of.sources.Range(0, 20000), name="numbers")
     .map(throttle(5000, every=128), name="slow")
     .sink(AppendSink("/nonexistent/out"), name="append"))
'''


def test_verify_reports_identical_output_of_an_exactly_once_flow(tmp_path: Path) -> None:
    job = tmp_path / "good.py"
    job.write_text(GOOD)
    r = onceflow("verify", str(job), "--kills", "3", "--seed", "7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kill(s), 3 restart(s)" in r.stdout  # the killed run really restarted 3 times
    assert "sink 'files': identical (20,000 lines)" in r.stdout
    assert "result: identical after 3 kill(s)" in r.stdout
    assert not Path("/nonexistent").exists()  # the job's own directories were not used


def test_verify_reports_a_sink_that_is_not_exactly_once(tmp_path: Path) -> None:
    job = tmp_path / "append.py"
    job.write_text(APPEND)
    r = onceflow("verify", str(job), "--kills", "2", "--seed", "3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 kill(s), 2 restart(s)" in r.stdout
    m = re.search(r"sink 'append': DIFFERENT: 0 line\(s\) missing, ([\d,]+) extra", r.stdout)
    assert m and int(m.group(1).replace(",", "")) > 0, r.stdout  # replayed records duplicated
    assert "result: DIFFERENT" in r.stdout


def test_verify_refuses_sinks_it_cannot_read_back(tmp_path: Path) -> None:
    job = tmp_path / "print.py"
    job.write_text("import onceflow as of\n"
                   "flow = of.Flow('p')\n"
                   "flow.source(of.sources.Range(0, 10)).sink(of.sinks.Print(), name='show')\n")
    r = onceflow("verify", str(job), "--kills", "1")
    assert r.returncode == 2
    assert "cannot read back the output of 'show' (Print)" in r.stderr
    zero = onceflow("verify", str(job), "--kills", "0")
    assert zero.returncode == 2 and "--kills must be at least 1" in zero.stderr
