"""Requests to a running job from other threads (a job client, the dashboard's HTTP server).

The driver's loop owns all job state, so other threads never touch it: they queue a request
here and wake the loop through a socket pair it waits on, then block on a future the loop
completes.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from onceflow.errors import SavepointError

__all__ = ["JobControl", "Request", "SavepointError"]  # SavepointError: its old home


@dataclass
class Request:
    kind: str  # "savepoint"
    args: dict[str, Any]
    future: Future[Any] = field(default_factory=Future)


class JobControl:
    """Thread-safe: ``savepoint`` may be called from any thread while the job runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Request] = deque()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self.closed_reason: str | None = None

    # --- other threads -------------------------------------------------------------------
    def savepoint(self, directory: str | None = None, *, stop: bool = False,
                  timeout: float | None = None) -> str:
        """Take a savepoint into a new folder under ``directory`` (default: the flow's
        checkpoint directory) and return its path; with ``stop`` the job then ends (its
        sources stop, sinks commit). Blocks until written; raises SavepointError."""
        req = Request("savepoint", {"directory": directory, "stop": stop})
        self._submit(req)
        try:
            return str(req.future.result(timeout))
        except TimeoutError:
            raise SavepointError(f"the savepoint did not complete within {timeout} s") from None

    def _submit(self, req: Request) -> None:
        with self._lock:
            if self.closed_reason is not None:
                raise SavepointError(f"the job is not running: {self.closed_reason}")
            self._queue.append(req)
        try:
            self._w.send(b"x")
        except BlockingIOError:
            pass  # the loop is already woken

    # --- the driver loop -----------------------------------------------------------------
    def fileno(self) -> int:
        return self._r.fileno()

    def take(self) -> list[Request]:
        try:
            while self._r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
        return out

    def close(self, reason: str) -> None:
        """The job ended: fail what is queued and refuse new requests."""
        with self._lock:
            if self.closed_reason is not None:
                return
            self.closed_reason = reason
            pending = list(self._queue)
            self._queue.clear()
        for req in pending:
            req.future.set_exception(SavepointError(f"the job is not running: {reason}"))
        self._r.close()
        self._w.close()
