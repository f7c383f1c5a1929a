"""Where the user's code failed, as the user would want to read it, and across processes.

A user function that raises in a worker fails the attempt; the driver (another process)
reports it. What the worker sends is a :class:`FailureReport`: the one-line description,
the user's own frames formatted like a Python traceback (``File "job.py", line 12, in
parse`` and the source line) with onceflow's frames left out, what identifies the failure
(operator, record, exception type and message: the same failure repeating is how a
deterministic bug shows), and the original exception pickled when that round-trips, so
the driver can hand the user an exception of the original type.

    >>> def parse(s):
    ...     return int(s)
    >>> try:
    ...     parse("x")
    ... except ValueError as e:
    ...     text = format_user_traceback(e)
    >>> "in parse" in text and text.endswith("ValueError: invalid literal for int() with "
    ...                                      "base 10: 'x'\\n")
    True
"""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import traceback
from dataclasses import dataclass

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_HEADER = "Traceback (most recent call last; onceflow's own frames left out):\n"


def is_internal(filename: str) -> bool:
    """A frame of onceflow itself (not of the user's code, nor of a library it calls), or of
    the interpreter's frozen machinery that loaded the job file (``<frozen runpy>``)."""
    return filename.startswith("<frozen ") or os.path.abspath(filename).startswith(_PACKAGE_DIR)


def user_frames(exc: BaseException) -> traceback.StackSummary:
    """The frames of ``exc``'s traceback that are not onceflow's, outermost first."""
    frames = traceback.extract_tb(exc.__traceback__)
    return traceback.StackSummary.from_list([f for f in frames if not is_internal(f.filename)])


def format_user_traceback(exc: BaseException, _depth: int = 0) -> str:
    """``exc`` formatted like Python's traceback, without onceflow's frames (and with the
    exceptions it was raised from, like Python shows them)."""
    out = ""
    chained = exc.__cause__ if exc.__cause__ is not None else (
        None if exc.__suppress_context__ else exc.__context__)
    if chained is not None and _depth < 5:
        out = format_user_traceback(chained, _depth + 1) + (
            "\nThe above exception was the direct cause of the following exception:\n\n"
            if exc.__cause__ is not None else
            "\nDuring handling of the above exception, another exception occurred:\n\n")
    frames = user_frames(exc)
    if frames:
        out += _HEADER + "".join(frames.format())
    return out + "".join(traceback.format_exception_only(type(exc), exc))


@dataclass(frozen=True)
class FailureReport:
    """What a worker reports about an exception that failed its attempt (picklable)."""

    message: str  # one line: "operator 'parse' raised ValueError: ... while processing ..."
    user_traceback: str | None  # the user's frames, formatted; None when there are none
    fingerprint: tuple[str, ...]  # equal for the same error at the same operator and record
    type_name: str  # "builtins.ValueError", "myjob.BadRecord"
    exception: bytes | None = None  # the original exception, pickled, when that round-trips
    frames: str | None = None  # just the user's frames of the exception itself, formatted
    operator: str | None = None  # the operator whose user code raised (UserFunctionError)
    bad_input: bool = False  # a source could not decode its input (RecordFormatError)

    @property
    def text(self) -> str:
        """The message, then the user's frames (what logs, the dashboard and errors show)."""
        if not self.user_traceback:
            return self.message
        return f"{self.message}\n{self.user_traceback.rstrip()}"

    def rebuild(self) -> BaseException:
        """The original exception if it unpickles; else one of its type made from its
        message; else a RuntimeError naming the type. Carries the user's frames as a note."""
        exc: BaseException | None = None
        if self.exception is not None:
            try:
                exc = pickle.loads(self.exception)
            except Exception:
                exc = None
        if not isinstance(exc, BaseException):
            exc = _by_type_name(self.type_name, self.fingerprint[-1])
        if self.frames and isinstance(exc, Exception):
            exc.add_note(_HEADER + self.frames.rstrip())
        return exc


def _by_type_name(type_name: str, message: str) -> BaseException:
    module, _, name = type_name.rpartition(".")
    try:
        cls = getattr(builtins if module == "builtins" else importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:
        pass  # not importable here, or its constructor wants other arguments
    return RuntimeError(f"{type_name}: {message}")


def report(exc: BaseException) -> FailureReport:
    """The report of ``exc`` raised in a worker. A :class:`~onceflow.UserFunctionError`
    reports its cause (the user's exception) with the operator and record."""
    from onceflow.errors import OnceflowError, RecordFormatError, UserFunctionError

    if isinstance(exc, UserFunctionError):
        cause: BaseException = exc.cause
        message = str(exc)
        key: tuple[str, ...] = (exc.operator, exc.record)
    else:
        cause = exc.__cause__ if isinstance(exc, OnceflowError) and exc.__cause__ else exc
        message = str(exc) if isinstance(exc, OnceflowError) else f"{type(exc).__name__}: {exc}"
        key = ()
    frames = user_frames(cause)
    trace = format_user_traceback(cause) if frames else None
    cls = type(cause)
    type_name = f"{cls.__module__}.{cls.__qualname__}"
    return FailureReport(message, trace, (*key, type_name, str(cause)), type_name,
                         _pickled(cause), "".join(frames.format()) if frames else None,
                         exc.operator if isinstance(exc, UserFunctionError) else None,
                         isinstance(exc, RecordFormatError))


def safe_report(exc: BaseException) -> FailureReport | None:
    """:func:`report`, or None if even that fails (a user's ``__str__`` that raises, ...):
    the failure itself must still reach the driver."""
    try:
        return report(exc)
    except Exception:
        return None


def _pickled(exc: BaseException) -> bytes | None:
    try:
        data = pickle.dumps(exc)
        back = pickle.loads(data)
    except Exception:
        return None
    return data if type(back) is type(exc) else None
