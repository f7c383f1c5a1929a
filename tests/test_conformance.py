"""The shipped sink conformance check: passes for FileSink, catches a naive sink."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onceflow as of
from onceflow.testing import check_sink_exactly_once


def test_file_sink_passes_every_crash_point(tmp_path: Path) -> None:
    report = check_sink_exactly_once(
        lambda case: of.sinks.FileSink(tmp_path / case),
        lambda case: of.sinks.read_committed(tmp_path / case),
        workdir=str(tmp_path), records=12_000)
    assert len(report.cases) >= 6
    assert all(c.fired for c in report.cases), str(report)
    assert all(c.restarts >= 1 for c in report.cases), str(report)
    assert report.ok, str(report)


class AppendAsYouGo(of.sinks.Sink):
    """Writes records immediately: at-least-once, so replays duplicate."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, ctx: of.sinks.SinkContext) -> None:
        self.file = open(f"{self.path}.out-{ctx.subtask}", "a")

    def write(self, records: list[Any]) -> None:
        self.file.write("".join(json.dumps(r) + "\n" for r in records))
        self.file.flush()


def _read_appended(path: Path) -> list[Any]:
    out = []
    for name in os.listdir(path.parent):
        if name.startswith(path.name + ".out-"):
            with open(path.parent / name) as f:
                out.extend(json.loads(line) for line in f)
    return out


def test_naive_sink_is_caught_duplicating(tmp_path: Path) -> None:
    report = check_sink_exactly_once(
        lambda case: AppendAsYouGo(tmp_path / case),
        lambda case: _read_appended(tmp_path / case),
        workdir=str(tmp_path), records=12_000,
        points=["snapshot.sync@checkpoint=4,subtask=0", "source.after_batch@records=4096"])
    assert all(c.fired for c in report.cases), str(report)
    assert not report.ok
    assert any(c.duplicated > 0 for c in report.cases), str(report)
    assert all(c.missing == 0 for c in report.cases), str(report)
