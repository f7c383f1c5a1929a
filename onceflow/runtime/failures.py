"""The driver's view of the failures of a job: what the last one was, whether it repeats.

A bug that fails on one record fails every attempt at that record: restarting cannot help,
and the default restart strategy would keep trying for minutes. :class:`FailureTracker`
notices it: consecutive attempts that fail with the same error (exception type and
message) at the same operator and record, with no checkpoint completing in between, are
one *repeating* failure. Only failures of user functions (``map``, ``process``, ...),
input a source cannot decode and a ``ConfigurationError`` found at run time count: a
source or sink that fails the same way every time is more often an outage of the system
behind it, which the restart strategy waits out. After the second one it logs that the
failure looks deterministic; when it has happened
``RestartStrategy.max_repeated_failures`` times the job stops (``None``: no limit, the
restart strategy alone decides).

It also turns the last failure into the :class:`~onceflow.JobFailedError` that ``run()``
raises, with the user's exception rebuilt as ``.cause`` where that is possible.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable

from onceflow._usertrace import FailureReport
from onceflow.api.config import RestartStrategy
from onceflow.checkpoint.coordinator import CheckpointStats, CheckpointStatus
from onceflow.errors import ConfigurationError, JobFailedError, OutputLostError

log = logging.getLogger("onceflow")


def _is_output_lost(type_name: str) -> bool:
    return _is_a(type_name, OutputLostError)


def _is_a(type_name: str, base: type) -> bool:
    module, _, name = type_name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:
        return False
    return isinstance(cls, type) and issubclass(cls, base)


class FailureTracker:
    """Fed by the driver: :meth:`received` for a worker's report of an exception (or
    :meth:`new_attempt` before every attempt, so a failure without one, like a killed
    worker, counts as different), then :meth:`on_failure` once per failed attempt."""

    def __init__(self, flow: str, strategy: RestartStrategy,
                 connectors: Iterable[str] = ()) -> None:
        self.flow = flow
        self.strategy = strategy
        self.connectors = set(connectors)  # names of the source and sink operators
        self.last: FailureReport | None = None  # the exception of the current failure
        self.repeats = 0  # failed attempts in a row that are the same failure
        self._previous: tuple[str, ...] | None = None
        self._completed_at_previous = -1

    def new_attempt(self) -> None:
        self.last = None

    def received(self, index: int, message: str, report: FailureReport | None) -> str:
        """A worker reported an exception: remember it; return the failure's description
        (``worker 0: <message>`` and the user's frames)."""
        self.last = report
        return f"worker {index}: {report.text if report is not None else message}"

    def on_failure(self, history: Iterable[CheckpointStats]) -> str | None:
        """An attempt failed (after :meth:`received`, if the failure was an exception).
        Returns why the job must stop now, or None to leave it to the restart strategy."""
        completed = sum(1 for c in history if c.status is CheckpointStatus.COMPLETED)
        last = self.last
        if last is not None and _is_output_lost(last.type_name):
            return "a sink's output of a completed checkpoint is lost; restarting cannot " \
                   "bring it back"
        # a ConfigurationError found at run time (a key without a stable hash, ...) is
        # the same on every attempt, wherever it is raised: it counts too
        counts = last is not None and (last.bad_input or (
            last.operator is not None and last.operator not in self.connectors)
            or _is_a(last.type_name, ConfigurationError))
        key = last.fingerprint if last is not None and counts else None
        if key is not None and key == self._previous and completed == self._completed_at_previous:
            self.repeats += 1
        else:
            self.repeats = 1 if key is not None else 0
        self._previous, self._completed_at_previous = key, completed
        limit = self.strategy.max_repeated_failures
        if self.repeats >= 2:
            stop = limit is not None and self.repeats >= limit
            log.warning("job %r: this failure repeats at the same record: it looks "
                        "deterministic (%d attempts in a row, no checkpoint completed in "
                        "between); %s", self.flow, self.repeats,
                        "giving up" if stop else
                        f"giving up after {limit}" if limit is not None else
                        "retrying without limit (max_repeated_failures=None)",
                        extra={"event": "repeated_failure", "flow": self.flow,
                               "repeats": self.repeats})
            if stop:
                return (f"the same failure repeated {self.repeats} times at the same record "
                        f"with no checkpoint in between (max_repeated_failures={limit}): it "
                        "looks deterministic, fix the code or the input")
        return None

    @staticmethod
    def one_line(outcome: str) -> tuple[str, str]:
        """A failure's first line, and the rest (the user's frames) to end a log line with."""
        head, _, rest = outcome.partition("\n")
        return head, "\n" + rest if rest else ""

    def job_failed(self, failures: list[str], stop_reason: str | None) -> JobFailedError:
        """The error ``run()`` raises when the job stops after ``failures``."""
        outcome = failures[-1]
        if stop_reason is not None:
            message = f"job {self.flow!r} failed: {stop_reason}; last failure: {outcome}"
        else:
            message = (f"job {self.flow!r} failed and the restart strategy "
                       f"({self.strategy.kind}) allows no further attempt after "
                       f"{len(failures)} failure(s); last failure: {outcome}")
        return JobFailedError(
            message, outcome, failures,
            cause=self.last.rebuild() if self.last is not None else None,
            user_traceback=self.last.user_traceback if self.last is not None else None)
