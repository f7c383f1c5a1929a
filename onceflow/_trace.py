"""A timeline of a job's control events, for "where does the time go" (off by default).

With ``ONCEFLOW_TRACE`` set to a file path, every process of the job (driver and workers)
appends one JSON line per event to it: ``{"t": wall-clock seconds, "pid": ..., "ev": name,
...fields}``: when each source subtask read its first and last record, each barrier arrived
on each input channel, alignments ended, sinks pre-committed and committed, the
coordinator triggered and completed checkpoints, workers finished. Timestamps, unlike CPU
profiles, do not depend on how loaded the machine is, so they show waiting.

Without ``ONCEFLOW_TRACE`` :func:`event` is a check of one module global (call sites test
:data:`ON` first, so no arguments are even built). Not for per-record paths.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_PATH = os.environ.get("ONCEFLOW_TRACE", "")
ON = bool(_PATH)


def event(ev: str, **fields: Any) -> None:
    """Append one event to the trace file (a no-op when tracing is off)."""
    if not ON:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "ev": ev, **fields},
                      default=str) + "\n"
    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines do not interleave
    finally:
        os.close(fd)


def read(path: str) -> list[dict[str, Any]]:
    """The events of a trace file, in time order."""
    with open(path, encoding="utf-8") as f:
        return sorted((json.loads(line) for line in f if line.strip()), key=lambda e: e["t"])
