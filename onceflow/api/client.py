"""A handle on a job started with ``Flow.start()`` (Flink's ``JobClient``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from onceflow.api.result import JobResult

if TYPE_CHECKING:
    from onceflow.runtime.driver import JobDriver
    from onceflow.runtime.status import JobStatus


class JobClient:
    """The job runs in a background thread of this process (its workers are processes).

    ``savepoint()`` and ``stop_with_savepoint()`` block until the savepoint is written and
    return its directory; ``result()`` waits for the job and returns its
    :class:`~onceflow.JobResult` or raises its error."""

    def __init__(self, driver: JobDriver, restore: str | None) -> None:
        self._driver = driver
        self._result: JobResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(restore,),
                                        name=f"onceflow-job-{driver.cfg.flow}", daemon=True)
        self._thread.start()

    def _run(self, restore: str | None) -> None:
        try:
            self._result = self._driver.run(restore)
        except BaseException as e:  # handed to the caller of result()
            self._error = e

    @property
    def status(self) -> JobStatus:
        """The live :class:`~onceflow.runtime.status.JobStatus` (what the dashboard shows)."""
        return self._driver.status

    def savepoint(self, directory: str | None = None, *, timeout: float | None = None) -> str:
        """Take a savepoint (the job keeps running); returns its directory."""
        return self._driver.control.savepoint(directory, stop=False, timeout=timeout)

    def stop_with_savepoint(self, directory: str | None = None, *,
                            timeout: float | None = None) -> str:
        """Take a savepoint and stop: sources stop, sinks commit, the job finishes.
        Returns the savepoint's directory; ``result()`` then returns promptly."""
        return self._driver.control.savepoint(directory, stop=True, timeout=timeout)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> JobResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"job {self._driver.cfg.flow!r} still runs after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
