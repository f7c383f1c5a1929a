"""The web dashboard: its access rules, savepoint/stop through it, and a real browser
(Debian's headless Chromium, installed by ``scripts/browser``) looking at a running job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_cli import onceflow

import onceflow as of
from onceflow.runtime.status import JobStatus
from onceflow.web.server import DashboardServer

ARTIFACTS = Path(__file__).parent / "artifacts"
READ_PAGE = """
const all = (css) => Array.from(document.querySelectorAll(css));
const text = (id) => document.getElementById(id).textContent;
return {
  state: text("state"), rate_in: text("rate-in"), savepoint: text("savepoint-result"),
  titles: all("#graph g.task .task-title").map((e) => e.textContent),
  ops: all("#graph g.operator").map((e) => e.getAttribute("data-uid")),
  edges: all("#graph .edge-label").map((e) => e.textContent),
  chart_lines: all("#chart polyline.line-dur").length,
  rows: all("#checkpoints tbody tr").map((tr) => ({
    cls: tr.className, cells: Array.from(tr.cells).map((td) => td.textContent)})),
};
"""
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

LONG_JOB = '''
import onceflow as of
from onceflow.testing import throttle
flow = of.Flow("dashboard-job", parallelism=2, batch_size=64)
flow.enable_checkpointing(0.5, {ckpt!r})
(flow.source(of.sources.Range(0, {n}), name="numbers")
     .map(throttle({rate}, every=64), name="slow")
     .key_by(lambda i: i % 10)
     .reduce(lambda a, b: a + b, name="sums")
     .map(lambda s: {{"sum": s}}, name="format")
     .rebalance()
     .sink(of.sinks.FileSink({out!r}), name="files"))
'''


def _request(url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None,
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class RunningJob:
    """``onceflow run LONG_JOB --dashboard 0`` as a real process."""

    def __init__(self, tmp: Path, n: int = 40000, rate: int = 2000) -> None:
        self.tmp = tmp
        job = tmp / "job.py"
        job.write_text(LONG_JOB.format(ckpt=str(tmp / "ck"), out=str(tmp / "out"), n=n,
                                       rate=rate))
        self.stderr = tmp / "stderr.txt"
        exe = os.path.join(os.path.dirname(sys.executable), "onceflow")
        self.proc = subprocess.Popen([exe, "run", str(job), "--dashboard", "0", "--no-progress"],
                                     stdout=subprocess.PIPE, stderr=open(self.stderr, "w"),
                                     text=True)
        self.job_file = tmp / "ck" / "dashboard-job" / "_job.json"
        deadline = time.monotonic() + 30
        while not self.job_file.exists():
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, "no _job.json after 30 s"
            time.sleep(0.05)
        self.url = json.loads(self.job_file.read_text())["url"]
        assert self.url.startswith("http://127.0.0.1:")

    def job(self) -> dict[str, Any]:
        code, _, body = _request(self.url + "/api/job")
        assert code == 200
        return dict(json.loads(body))

    def wait(self, timeout: float = 90) -> tuple[int, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, out

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.wait(30)


# --- access rules --------------------------------------------------------------------------
def _status() -> JobStatus:
    st = JobStatus("token-job")
    flow = of.Flow("token-job")
    flow.source(of.sources.Range(0, 3), name="numbers").sink(of.sinks.Discard(), name="out")
    from onceflow.graph.jobgraph import build

    st.set_graph(build(flow._plan, 1, 128))
    return st


def test_a_token_is_required_beyond_loopback_and_checked_on_every_request() -> None:
    with pytest.raises(of.ConfigurationError, match="access token"):
        DashboardServer(_status(), "0.0.0.0", 0)
    with pytest.raises(of.ConfigurationError, match="access token"):
        flow = of.Flow("x")
        flow.source(of.sources.Range(0, 3)).sink(of.sinks.Discard())
        flow.run(dashboard="0.0.0.0:0")
    token = "correct-horse-battery"
    web = DashboardServer(_status(), "0.0.0.0", 0, token=token).start()
    base = f"http://127.0.0.1:{web.port}"
    try:
        for path in ("/", "/api/job", "/static/app.js", "/nope"):
            assert _request(base + path)[0] == 401, path
            assert _request(base + path, headers={"Authorization": "Bearer wrong-token!"})[0] \
                == 401
        assert _request(base + "/api/savepoint", method="POST", data=b"{}",
                        headers={"Content-Type": "application/json"})[0] == 401
        code, _, body = _request(base + "/api/job", headers={"Authorization": f"Bearer {token}"})
        assert code == 200 and json.loads(body)["flow"] == "token-job"
        # the page's way in: ?token= sets an HttpOnly cookie and drops the token from the URL
        code, headers, _ = _request(base + f"/?token={token}")
        assert code == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        code, _, js = _request(base + "/static/app.js", headers={"Cookie": cookie})
        assert code == 200 and b"/api/job" in js
        assert _request(base + "/", headers={"Cookie": "onceflow_token=nope"})[0] == 401
    finally:
        web.close()


def test_the_default_binding_is_loopback_and_refuses_foreign_hosts_and_origins() -> None:
    web = DashboardServer(_status(), "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{web.port}"
    try:
        code, headers, page = _request(base + "/")
        assert code == 200 and b"<svg id=\"graph\"" in page
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        # DNS rebinding: a page of evil.example resolving to 127.0.0.1
        assert _request(base + "/api/job", headers={"Host": "evil.example"})[0] == 403
        post = {"Content-Type": "application/json"}
        assert _request(base + "/api/savepoint", method="POST", data=b"{}",
                        headers={**post, "Origin": "http://evil.example"})[0] == 403
        assert _request(base + "/api/savepoint", method="POST", data=b"{}",
                        headers={"Content-Type": "text/plain"})[0] == 415
        code, _, body = _request(base + "/api/savepoint", method="POST", data=b"[1]",
                                 headers=post)
        assert code == 400 and b"JSON object" in body
        code, _, body = _request(base + "/api/savepoint", method="POST", data=b"{}",
                                 headers=post)
        assert code == 501  # no savepoint control behind this bare status
    finally:
        web.close()


def test_cli_refuses_a_public_dashboard_without_a_token(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import onceflow as of\nflow = of.Flow('j')\n"
                   "flow.source(of.sources.Range(0, 3)).sink(of.sinks.Discard())\n")
    r = onceflow("run", str(job), "--dashboard", "0.0.0.0:0")
    assert r.returncode == 2 and "access token" in r.stderr
    for bad in ("--dashboard", "host:port"), ("--dashboard", "70000"), ("--metrics-port", "x"):
        r = onceflow("run", str(job), *bad)
        assert r.returncode == 2, bad
        assert re.search(r"port|PORT", r.stderr), r.stderr
    r = onceflow("stop", "http://127.0.0.1:1")
    assert r.returncode == 2 and "--savepoint" in r.stderr
    r = onceflow("savepoint", str(tmp_path))
    assert r.returncode == 2 and "no running job found" in r.stderr
    r = onceflow("savepoint", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert r.returncode == 1 and "no job answers" in r.stderr
    for sub in ("verify", "savepoint", "stop"):
        h = onceflow(sub, "--help")
        assert h.returncode == 0 and "usage:" in h.stdout


# --- savepoint and stop through the dashboard ----------------------------------------------
def test_savepoint_and_stop_with_savepoint_from_the_command_line(tmp_path: Path) -> None:
    job = RunningJob(tmp_path, n=60000, rate=2000)
    try:
        deadline = time.monotonic() + 30
        while job.job()["checkpoints"]["completed"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sp = onceflow("savepoint", str(tmp_path / "ck"))  # found through _job.json
        assert sp.returncode == 0, sp.stderr
        path = Path(sp.stdout.strip())
        assert path.is_dir() and (path / "_metadata").exists()
        history = job.job()["checkpoints"]["history"]
        assert any(h["kind"] == "savepoint" and h["path"] == str(path) for h in history)

        stop = onceflow("stop", job.url, "--savepoint", "--dir", str(tmp_path / "sp"))
        assert stop.returncode == 0, stop.stderr
        final = Path(stop.stdout.strip())
        assert final.parent == tmp_path / "sp" and (final / "_metadata").exists()
        code, out = job.wait(60)
        assert code == 0, job.stderr.read_text()
        assert "flow 'dashboard-job'" in out
        committed = of.sinks.read_committed(tmp_path / "out")
        assert 0 < len(committed) < 60000  # stopped early, and what it wrote is committed
        assert not job.job_file.exists()  # removed when the job ended
    finally:
        job.interrupt()


# --- a real browser ------------------------------------------------------------------------
def test_browser_shows_graph_and_checkpoints_of_a_running_job(tmp_path: Path) -> None:
    # Installed by `make services` (scripts/browser): a missing browser is a failure, not a
    # skip, so CI cannot pass without having looked at the page.
    assert os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM), \
        "headless Chromium is missing: run scripts/browser install (make services does)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    job = RunningJob(tmp_path, n=40000, rate=1500)  # ~13 s, a checkpoint every 0.5 s
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,1200"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)

    def page() -> dict[str, Any]:
        # The page redraws every second; one script reads it between two redraws.
        return dict(browser.execute_script(READ_PAGE))

    try:
        browser.get(job.url + "/")
        wait = WebDriverWait(browser, 30, poll_frequency=0.2)
        wait.until(lambda b: sum(r["cls"] == "completed" for r in page()["rows"]) >= 3)
        wait.until(lambda b: page()["state"] == "RUNNING")
        wait.until(lambda b: re.search(r"[1-9]", page()["rate_in"]))
        seen = page()
        times = "\u00d7"  # the page writes parallelism as "x2" with a multiplication sign
        assert sorted(seen["titles"]) == [f"files {times}2", f"numbers -> slow {times}2",
                                          f"sums -> format {times}2"]
        assert set(seen["ops"]) == {"numbers", "slow", "sums", "format", "files"}
        assert sorted(seen["edges"]) == ["key", "rebalance"]
        first = next(r["cells"] for r in seen["rows"] if r["cls"] == "completed")
        assert first[0].isdigit() and first[2].startswith("completed")
        assert first[4].endswith("ms") and first[8].endswith(("B", "KiB", "MiB"))
        assert seen["chart_lines"] == 1
        browser.find_element(By.ID, "savepoint").click()  # POST /api/savepoint
        wait.until(lambda b: page()["savepoint"].startswith("savepoint: /"))
        path = page()["savepoint"].removeprefix("savepoint: ")
        assert (Path(path) / "_metadata").exists()
        wait.until(lambda b: any(r["cells"][1] == "savepoint" for r in page()["rows"]))
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe  # no script error, no failed request
    finally:
        browser.quit()
        job.interrupt()


def test_the_page_is_package_data() -> None:
    """setuptools ships onceflow/web/static/* only if pyproject.toml says so."""
    import fnmatch
    import tomllib

    root = Path(__file__).parent.parent
    conf = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["onceflow.web"]
    static = root / "onceflow" / "web" / "static"
    files = sorted(p.name for p in static.iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns), name
