"""What users see of event time and unaligned checkpoints: operator watermarks in the job
result, the live status and Prometheus; in-flight bytes and aligned/unaligned per checkpoint
in the result, the metadata and ``onceflow checkpoints``; watermark alignment across
subtasks through the driver."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onceflow as of
from onceflow.checkpoint.storage import load_checkpoint
from onceflow.runtime import messages as m
from onceflow.runtime.driver import _Attempt


def _event_flow(out: Path) -> of.Flow:
    flow = of.Flow("wm-metrics", parallelism=2, batch_size=64)
    ws = of.WatermarkStrategy.bounded_out_of_orderness(1.0).with_timestamps(lambda r: r[1])
    (flow.source(of.sources.Collection([(i % 5, float(i)) for i in range(2000)]),
                 name="events", watermarks=ws)
         .key_by(lambda r: r[0])
         .process(lambda r, ctx: [r], name="pass")
         .sink(of.sinks.FileSink(str(out)), name="files"))
    return flow


def test_the_result_carries_each_operators_watermark(tmp_path: Path) -> None:
    result = _event_flow(tmp_path / "out").run()
    assert result.operators["pass"].watermark == math.inf, "bounded input ended"
    assert result.operators["events"].watermark == math.inf
    assert "watermark end of input" in result.summary()


def test_live_status_and_prometheus_show_watermarks(tmp_path: Path) -> None:
    flow = of.Flow("wm-live", parallelism=1)
    flow.enable_checkpointing(0.5, str(tmp_path / "ck"))
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda i: float(i))
    (flow.source(of.sources.DataGen(lambda i: i, rate=2000.0, count=20_000), name="gen",
                 watermarks=ws)
         .key_by(lambda i: i % 3).process(lambda r, ctx: None, name="sinkless")
         .sink(of.sinks.Discard()))
    client = flow.start(metrics_port=0)
    try:
        deadline = time.monotonic() + 30
        wm = None
        while time.monotonic() < deadline:
            ops = {o["name"]: o for o in client.status.snapshot()["operators"]}
            wm = ops["sinkless"]["watermark"]
            if isinstance(wm, float) and wm > 100:
                break
            time.sleep(0.2)
        assert isinstance(wm, float) and wm > 100, wm
        url = client.status.snapshot()["endpoints"]["metrics"]
        import urllib.request

        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'onceflow_operator_watermark_seconds{' in text
        line = next(ln for ln in text.splitlines()
                    if ln.startswith("onceflow_operator_watermark_seconds")
                    and 'operator_name="sinkless"' in ln)
        assert float(line.rsplit(" ", 1)[1]) > 100
    finally:
        client.stop_with_savepoint(str(tmp_path / "sp"), timeout=60)
        client.result(timeout=60)


def _slow(r: Any) -> Any:
    time.sleep(0.0004)
    return r


def test_unaligned_checkpoints_report_their_in_flight_bytes(tmp_path: Path) -> None:
    flow = of.Flow("ua-metrics", parallelism=2, batch_size=128)
    flow.enable_checkpointing(0.3, str(tmp_path / "ck"), unaligned=True, retained=50)
    (flow.source(of.sources.Range(0, 12_000))
         .key_by(lambda i: i % 7).reduce(lambda a, b: a + b)
         .rebalance().map(_slow, name="slow")
         .sink(of.sinks.FileSink(str(tmp_path / "out"))))
    result = flow.run()
    done = [c for c in result.completed_checkpoints if not c.final]
    flying = [c for c in done if c.unaligned]
    assert flying, "under backpressure some checkpoint must have overtaken records"
    assert all(c.inflight_bytes > 0 for c in flying)
    assert all(not c.unaligned for c in result.completed_checkpoints if c.final)
    meta = load_checkpoint(flying[-1].path).meta  # type: ignore[arg-type]
    assert meta.inflight_bytes == flying[-1].inflight_bytes and meta.unaligned_subtasks >= 1
    exe = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    assert exe is not None, "the onceflow command is installed with the package"
    out = subprocess.run([exe, "checkpoints", str(tmp_path / "ck")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "unaligned" in out.stdout and "in-flight" in out.stdout


class _Conns:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_all(self, data: bytes) -> None:
        self.sent.append(m.decode(data))


def test_the_driver_sends_each_groups_job_wide_minimum_when_it_changes() -> None:
    att = _Attempt(0, None)
    conns = _Conns()
    att.workers = conns  # type: ignore[assignment]
    att.align(0, {"g": 50.0})
    att.align(1, {"g": 20.0, "h": 5.0})
    att.align(0, {"g": 60.0})  # no change of the minimum: nothing sent
    att.align(1, {"g": 30.0, "h": 5.0})
    assert conns.sent == [m.AlignWatermarks({"g": 50.0}),
                          m.AlignWatermarks({"g": 20.0, "h": 5.0}),
                          m.AlignWatermarks({"g": 30.0, "h": 5.0})]
