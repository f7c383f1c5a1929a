"""A failure in user code points at the user's line and keeps its type (issue 12 #2), and a
failure that repeats at the same record stops the job early (issue 12 #3)."""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
import onceflow.logging as oflog
from onceflow._usertrace import FailureReport, format_user_traceback, report
from onceflow.checkpoint.coordinator import CheckpointStats, CheckpointStatus
from onceflow.errors import UserFunctionError
from onceflow.runtime.failures import FailureTracker

HERE = os.path.abspath(__file__)


class BadRecord(Exception):
    """A user's own exception type, importable by the driver."""


class NeedsTwoArgs(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code


def parse(s: str) -> int:
    return int(s)  # the user's line


def check(s: str) -> str:
    if s == "poison":
        raise BadRecord(f"cannot use {s!r}")
    return s


def _line_of(fn: Any, text: str) -> int:
    src, first = inspect.getsourcelines(fn)
    return first + next(i for i, ln in enumerate(src) if text in ln)


def _failing_flow(fn: Any, strategy: of.RestartStrategy | None = None) -> of.Flow:
    flow = of.Flow("user-errors", restart_strategy=strategy or of.restart.no_restart())
    flow.source(of.sources.Collection(["1", "2", "poison" if fn is check else "x", "3"]),
                name="src").map(fn, name="parse").sink(of.sinks.Discard(), name="out")
    return flow


# --- the user's frames --------------------------------------------------------------------
def test_job_failed_error_names_the_users_file_and_line_and_keeps_the_type() -> None:
    with pytest.raises(of.JobFailedError) as exc:
        _failing_flow(parse).run()
    err = exc.value
    where = f'File "{HERE}", line {_line_of(parse, "the user")}, in parse'
    for text in (str(err), err.reason, err.user_traceback):
        assert text is not None and where in text, text
        assert "return int(s)  # the user's line" in text
    assert "onceflow" + os.sep + "runtime" not in str(err), "no onceflow frames"
    assert isinstance(err.cause, ValueError)
    assert "invalid literal" in str(err.cause)
    assert any(where in note for note in err.cause.__notes__)
    with pytest.raises(ValueError):  # `except ValueError` works on the cause
        raise err.cause


def key_of(r: str) -> int:
    return int(r)  # the user's key


def test_a_failing_key_function_is_named_once_with_its_line() -> None:
    """key_by's router finds the record whose key failed; the user's traceback is shown
    once (not again as the context of a second, identical failure)."""
    flow = of.Flow("bad-key", parallelism=2, restart_strategy=of.restart.no_restart())
    (flow.source(of.sources.Collection(["1", "2", "x", "3"]), name="src")
         .key_by(key_of).map(str, name="m").sink(of.sinks.Discard(), name="out"))
    with pytest.raises(of.JobFailedError) as exc:
        flow.run()
    err = exc.value
    where = f'File "{HERE}", line {_line_of(key_of, "the user")}, in key_of'
    assert err.user_traceback is not None
    assert err.user_traceback.count(where) == 1, err.user_traceback
    assert "During handling" not in err.user_traceback
    assert "'x'" in str(err) and isinstance(err.cause, ValueError)


def test_a_users_own_exception_type_comes_back() -> None:
    with pytest.raises(of.JobFailedError) as exc:
        _failing_flow(check).run()
    assert type(exc.value.cause) is BadRecord
    assert str(exc.value.cause) == "cannot use 'poison'"
    assert f"line {_line_of(check, 'raise BadRecord')}, in check" in str(exc.value)


def test_an_exception_that_does_not_pickle_falls_back_to_a_runtime_error() -> None:
    def strict(s: str) -> str:
        raise NeedsTwoArgs(7, s)

    with pytest.raises(of.JobFailedError) as exc:
        _failing_flow(strict).run()
    cause = exc.value.cause
    assert isinstance(cause, RuntimeError) and "NeedsTwoArgs" in str(cause) and "7: 1" in \
        str(cause)
    assert "raise NeedsTwoArgs(7, s)" in str(exc.value)


def test_a_killed_worker_has_no_cause(tmp_path: Path) -> None:
    flow = of.Flow("suicide", restart_strategy=of.restart.no_restart())
    flow.source(of.sources.Collection([1])).map(
        lambda x: os.kill(os.getpid(), 9)).sink(of.sinks.Discard())
    with pytest.raises(of.JobFailedError, match="SIGKILL") as exc:
        flow.run()
    assert exc.value.cause is None and exc.value.user_traceback is None


def test_format_keeps_chained_exceptions_and_drops_onceflow_frames() -> None:
    def inner() -> None:
        raise KeyError("k")

    try:
        try:
            inner()
        except KeyError as e:
            raise ValueError("wrapped") from e
    except ValueError as e:
        text = format_user_traceback(e)
    assert "in inner" in text and "KeyError: 'k'" in text
    assert "direct cause" in text and text.endswith("ValueError: wrapped\n")
    err = UserFunctionError("op", 42, ZeroDivisionError("zero"))
    rep = report(err)
    assert rep.fingerprint == ("op", "42", "builtins.ZeroDivisionError", "zero")
    assert rep.user_traceback is None and rep.text == str(err)  # no frames: just the message


def test_the_cli_shows_the_users_frames_and_no_onceflow_traceback(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import onceflow as of\n"
                   "def parse(s):\n"
                   "    return int(s)\n"
                   "flow = of.Flow('cli-fails', restart_strategy=of.restart.no_restart())\n"
                   "flow.source(of.sources.Collection(['1', 'x'])).map(parse, name='parse')"
                   ".sink(of.sinks.Discard())\n")
    exe = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    assert exe
    r = subprocess.run([exe, "run", str(job), "--no-progress"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert f'File "{job}", line 3, in parse' in r.stderr and "return int(s)" in r.stderr
    assert "ValueError: invalid literal" in r.stderr
    frames = [ln for ln in r.stderr.splitlines() if ln.strip().startswith("File ")]
    assert frames and all(str(job) in ln for ln in frames), r.stderr


def test_json_log_and_dashboard_status_carry_the_users_frames() -> None:
    stream = io.StringIO()
    handler = oflog.configure(json=True, stream=stream, level=logging.WARNING)
    try:
        client = _failing_flow(parse, of.restart.fixed_delay(attempts=1, delay=0.0)).start()
        with pytest.raises(of.JobFailedError):
            client.result(timeout=120)
    finally:
        logging.getLogger("onceflow").removeHandler(handler)
    where = f"line {_line_of(parse, 'the user')}, in parse"
    restarts = [d for d in map(json.loads, stream.getvalue().splitlines())
                if d.get("event") == "restart"]
    assert restarts and where in restarts[0]["cause"]
    snap = client.status.snapshot()
    assert where in snap["restarts"][0]["cause"] and where in snap["failure"]


# --- a failure that repeats at the same record ---------------------------------------------
def _report(record: str = "7", message: str = "boom", op: str = "op") -> FailureReport:
    return FailureReport(f"operator {op!r} raised ValueError: {message}", None,
                         (op, record, "builtins.ValueError", message), "builtins.ValueError",
                         operator=op)


def _done(n: int) -> list[CheckpointStats]:
    return [CheckpointStats(i, CheckpointStatus.COMPLETED, 0.0) for i in range(n)]


def _feed(tracker: FailureTracker, reports: list[tuple[FailureReport | None, int]]
          ) -> list[str | None]:
    out = []
    for rep, completed in reports:
        tracker.new_attempt()
        tracker.received(0, "x", rep)
        out.append(tracker.on_failure(_done(completed)))
    return out


def test_the_third_identical_failure_stops_and_the_second_warns(
        caplog: pytest.LogCaptureFixture) -> None:
    tracker = FailureTracker("f", of.restart.exponential_backoff())
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        got = _feed(tracker, [(_report(), 0), (_report(), 0)])
        warned = [r.getMessage() for r in caplog.records]
        got += _feed(tracker, [(_report(), 0)])
    assert got[:2] == [None, None]
    assert got[2] is not None and "max_repeated_failures=3" in got[2]
    assert len(warned) == 1 and "this failure repeats at the same record: it looks " \
        "deterministic" in warned[0]


def test_a_completed_checkpoint_or_another_record_starts_the_count_again() -> None:
    tracker = FailureTracker("f", of.restart.fixed_delay(attempts=None))
    assert _feed(tracker, [(_report(), 0), (_report(), 0), (_report(), 1), (_report(), 1),
                           (_report("8"), 1), (_report("8"), 1), (_report("8", "other"), 1),
                           (None, 1), (_report("8", "other"), 1)]) == [None] * 9
    assert tracker.repeats == 1


def test_a_source_or_sink_failing_the_same_way_is_left_to_the_strategy() -> None:
    tracker = FailureTracker("f", of.restart.fixed_delay(attempts=None), connectors=["pg"])
    assert _feed(tracker, [(_report(op="pg"), 0)] * 5) == [None] * 5  # a database outage
    bad = FailureReport("cannot decode", None, ("onceflow.errors.RecordFormatError", "x"),
                        "onceflow.errors.RecordFormatError", bad_input=True)
    assert _feed(tracker, [(bad, 0)] * 3)[2] is not None  # bad input stays bad


def test_the_limit_is_configurable_and_none_means_unlimited() -> None:
    two = FailureTracker("f", of.restart.fixed_delay(attempts=None, max_repeated_failures=2))
    assert _feed(two, [(_report(), 0), (_report(), 0)])[1] is not None
    unlimited = FailureTracker("f", of.restart.fixed_delay(attempts=None,
                                                           max_repeated_failures=None))
    assert _feed(unlimited, [(_report(), 0)] * 20) == [None] * 20
    for bad in (0, 1, "3", True):
        with pytest.raises(of.ConfigurationError, match="max_repeated_failures"):
            of.restart.fixed_delay(max_repeated_failures=bad).validate()  # type: ignore[arg-type]


def test_the_default_strategy_gives_up_on_a_record_that_always_fails(tmp_path: Path) -> None:
    marker = tmp_path / "attempts"
    marker.mkdir()

    def fails_on_one(i: int) -> int:
        if i == 4242:
            (marker / str(os.getpid())).touch()
            raise ValueError(f"cannot handle {i}")
        return i

    flow = of.Flow("deterministic")  # the default restart strategy
    flow.enable_checkpointing(30.0, tmp_path / "ck")  # no checkpoint completes in between
    flow.source(of.sources.Range(0, 10_000), name="src").map(fails_on_one, name="check") \
        .sink(of.sinks.FileSink(tmp_path / "out"), name="out")
    t0 = time.monotonic()
    with pytest.raises(of.JobFailedError, match="it looks deterministic") as exc:
        flow.run()
    assert len(exc.value.failures) == 3 and len(list(marker.iterdir())) == 3
    assert "max_repeated_failures=3" in str(exc.value) and "4242" in str(exc.value)
    assert isinstance(exc.value.cause, ValueError)
    assert time.monotonic() - t0 < 60, "1 s + 2 s of backoff, not minutes"


def test_cli_json_log_ends_with_a_job_failed_line_with_the_users_frames(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import onceflow as of\n"
                   "def parse(s):\n"
                   "    return int(s)\n"
                   "flow = of.Flow('json-fails', restart_strategy=of.restart.no_restart())\n"
                   "flow.source(of.sources.Collection(['x'])).map(parse).sink(of.sinks.Discard())\n")
    exe = shutil.which("onceflow", path=os.path.dirname(sys.executable))
    assert exe
    r = subprocess.run([exe, "run", str(job), "--no-progress", "--log-json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = [json.loads(ln) for ln in r.stderr.splitlines()]  # every line is JSON
    failed = [d for d in lines if d.get("event") == "job_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR"
    assert f'File "{job}", line 3, in parse' in failed[0]["user_traceback"]
    assert f'File "{job}", line 3, in parse' in failed[0]["cause"]


class _ReturnsInt(of.KeyedProcessFunction):
    def process_element(self, value: Any, ctx: of.ProcessContext) -> Any:
        ctx.timer_service.register_processing_time_timer(0.0)
        return 42 if value == "p" else None

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> Any:
        return 7


class _CoReturnsInt(of.CoProcessFunction):
    def process_element1(self, value: Any, ctx: of.ProcessContext) -> Any:
        return 5

    def process_element2(self, value: Any, ctx: of.ProcessContext) -> Any:
        return None


@pytest.mark.parametrize(("shape", "function"), [
    ("process", "_ReturnsInt.process_element"), ("timer", "_ReturnsInt.on_timer"),
    ("co_process", "_CoReturnsInt.process_element1")])
def test_a_function_that_returns_no_iterable_is_named_with_its_file_and_line(
        shape: str, function: str) -> None:
    flow = of.Flow("no-iter", restart_strategy=of.restart.no_restart())
    src = flow.source(of.sources.Collection(["p"] if shape == "process" else ["t"]))
    if shape == "co_process":
        out = src.connect(flow.source(of.sources.Collection(["u"]))).process(_CoReturnsInt())
        fn: Any = _CoReturnsInt.process_element1
    else:
        out = src.key_by(lambda r: r).process(_ReturnsInt())
        fn = getattr(_ReturnsInt, function.split(".")[1])
    out.sink(of.sinks.Discard())
    with pytest.raises(of.JobFailedError) as exc:
        flow.run()
    line = inspect.getsourcelines(fn)[1]
    assert f"{function} ({HERE}, line {line}) returned int" in str(exc.value), str(exc.value)
    assert "not an iterable of records" in str(exc.value)
