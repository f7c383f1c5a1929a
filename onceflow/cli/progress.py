"""Live progress of a running job, printed from a daemon thread of the driver.

On a terminal one line is redrawn in place; otherwise (a file, a pipe, CI) a plain line is
printed every ``interval`` seconds, so logs stay readable::

    [RUNNING 12s] in 48,210 rec/s out 48,190 rec/s (total 530,112 / 529,870) |
        checkpoint 23 ok 41 ms (0.8 s ago) | restarts 0        (one line)

"in" counts the records the sources emit, "out" the records the sinks receive. The last
line is printed when the job ends. When onceflow logs JSON (``onceflow.logging``), each
line is a log record of logger ``onceflow.progress`` instead, with the numbers as fields.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

from onceflow.runtime.status import JobStatus

log = logging.getLogger("onceflow.progress")


def numbers(snap: dict[str, Any]) -> dict[str, Any]:
    """The figures of one progress line."""
    ops = snap["operators"]
    last = snap["checkpoints"]["last_completed"]
    return {
        "state": snap["state"],
        "records_in_per_s": sum(o["records_out_per_s"] for o in ops if o["kind"] == "source"),
        "records_out_per_s": sum(o["records_in_per_s"] for o in ops if o["kind"] == "sink"),
        "records_in": sum(o["records_out"] for o in ops if o["kind"] == "source"),
        "records_out": sum(o["records_in"] for o in ops if o["kind"] == "sink"),
        "last_checkpoint_id": last["id"] if last else None,
        "last_checkpoint_ms": last["duration_ms"] if last else None,
        "checkpoints_failed": snap["checkpoints"]["failed"],
        "restarts": len(snap["restarts"]),
    }


def format_line(snap: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    n = numbers(snap)
    rin, rout = n["records_in_per_s"], n["records_out_per_s"]
    total_in, total_out = n["records_in"], n["records_out"]
    ck = snap["checkpoints"]
    last = ck["last_completed"]
    if last is None:
        cks = "no checkpoint yet"
    else:
        age = now - last["trigger_time"] - (last["duration_ms"] or 0) / 1e3
        cks = (f"checkpoint {last['id']} ok {last['duration_ms'] or 0:.0f} ms "
               f"({max(age, 0):.1f} s ago)")
    if ck["failed"]:
        cks += f", {ck['failed']} failed"
    return (f"[{snap['state']} {snap['uptime_s']:.0f}s] in {rin:,.0f} rec/s "
            f"out {rout:,.0f} rec/s (total {total_in:,} / {total_out:,}) | {cks} | "
            f"restarts {len(snap['restarts'])}")


class ProgressPrinter:
    """Prints :func:`format_line` for ``status`` until :meth:`close`."""

    def __init__(self, status: JobStatus, stream: TextIO | None = None,
                 interval: float | None = None) -> None:
        self.status = status
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = interval if interval is not None else (0.5 if self.tty else 5.0)
        from onceflow.logging import json_active

        self.as_log = json_active()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="onceflow-progress",
                                        daemon=True)
        self._width = 0

    def start(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._print(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._print(final=False)

    def _print(self, final: bool) -> None:
        snap = self.status.snapshot()
        line = format_line(snap)
        if self.as_log:
            log.info("%s", line, extra={"event": "progress", "flow": snap["flow"],
                                        **numbers(snap)})
            return
        try:
            if self.tty:
                line = line[:_columns(self.stream) - 1]  # a wrapped line cannot be redrawn
                pad = max(0, self._width - len(line))
                self._width = len(line)
                self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self._stop.set()  # the stream went away: stop printing, never fail the job


def _columns(stream: TextIO) -> int:
    """The terminal's width. Some terminals (serial consoles, ``docker exec`` without a
    size, some CI runners) report 0 columns: that means unknown, so use ``$COLUMNS`` or 80."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 200
    if columns <= 0:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        columns = columns if columns > 0 else 80
    return max(20, columns)
