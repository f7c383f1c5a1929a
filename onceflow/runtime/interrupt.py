"""Ctrl-C and SIGTERM while a job runs: stop with a savepoint, or at once when asked twice.

While ``flow.run()`` blocks in the main thread (``onceflow run`` does that), SIGINT (Ctrl-C)
and SIGTERM (what a container orchestrator sends) are handled like this:

1. the first one asks the job to **stop with a savepoint**: the sources stop, the last
   transactions commit, the savepoint is written, and ``run()`` returns normally with
   ``JobResult.savepoint`` set; how to resume is printed to stderr;
2. a second one **stops at once**: the workers are killed, the latest complete checkpoint
   and the resume command are printed, and ``KeyboardInterrupt`` is raised (``onceflow run``
   turns that into a message, no traceback).

Without checkpointing there is no savepoint to take: the first signal stops at once.
Workers ignore SIGINT (a terminal sends Ctrl-C to the whole process group); only the
driver decides. Outside the main thread (``Flow.start()``) nothing is installed.
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent.futures import Future
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from onceflow.checkpoint.storage import open_storage
from onceflow.runtime.control import Request
from onceflow.runtime.rerun import newest_completed

if TYPE_CHECKING:
    from onceflow.runtime.driver import JobDriver

#: How the printed messages say to resume; ``onceflow run`` sets its own command line.
resume_hint = 'flow.run(restore="latest")'
#: The signal that stopped the last job run in this process (None: none did).
last_signal: int | None = None

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _say(text: str) -> None:
    try:
        print(f"\nonceflow: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr is gone; the stop itself must still happen


class GracefulStop:
    """A context manager around one ``JobDriver.run``: installs the handlers (main thread
    only) and restores the previous ones after."""

    def __init__(self, driver: JobDriver) -> None:
        self.driver = driver
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        global last_signal
        if threading.current_thread() is threading.main_thread():
            last_signal = None
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        path = self.driver.stopped_with_savepoint
        if self.received and kind is None and path is not None:
            _say(f"job {self.driver.cfg.flow!r} stopped with savepoint {path} (its "
                 f"transactions are committed); resume with: {resume_hint}")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        global last_signal
        last_signal = signum
        self.received += 1
        name = signal.Signals(signum).name
        flow = self.driver.cfg.flow
        if self.driver.waiting_to_start:
            _say(f"{name}: stopping job {flow!r} at once; it had not started (run() was "
                 "waiting for a server its sources or sinks need), so nothing was read or "
                 "written")
            raise KeyboardInterrupt
        if self.received == 1 and self.driver.cfg.checkpoint is not None:
            req = Request("savepoint", {"directory": None, "stop": True})
            try:
                self.driver.control._submit(req)
            except Exception:
                return  # the job is ending anyway
            req.future.add_done_callback(self._savepoint_done)
            again = "Ctrl-C" if signum == signal.SIGINT else name
            _say(f"{name}: stopping job {flow!r} with a savepoint (sources stop, the last "
                 f"transactions commit); {again} again stops at once")
            return
        ck = self.driver.cfg.checkpoint
        if ck is None or not ck.storage:
            _say(f"{name}: stopping job {flow!r} at once; checkpointing is off, so there is "
                 "nothing to resume from (uncommitted output is discarded)")
        else:
            newest = newest_completed(open_storage(ck.storage, flow))
            where = (f"the latest checkpoint is {newest[0]} at {newest[1]}" if newest
                     else "no checkpoint completed yet: a restore starts from the beginning")
            _say(f"{name}: stopping job {flow!r} at once; {where}; resume with: "
                 f"{resume_hint}")
        raise KeyboardInterrupt

    def _savepoint_done(self, future: Future[Any]) -> None:
        error = future.exception()
        if error is not None and self.received == 1:
            _say(f"the savepoint failed ({error}); the job goes on: press Ctrl-C again to "
                 "stop it at once")
