"""Restart strategies: the delay before each restart, and when to give up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import onceflow as of
from onceflow.restart import RestartStrategy, exponential_backoff, fixed_delay, no_restart


def delays(strategy: RestartStrategy, gaps: list[float], start: float = 1000.0) -> list[
        float | None]:
    """Feed failures separated by ``gaps`` seconds; the delay chosen after each one."""
    times: list[float] = []
    out: list[float | None] = []
    now = start
    for gap in gaps:
        now += gap
        times.append(now)
        out.append(strategy.next_delay(list(times), now))
    return out


# --- fixed delay --------------------------------------------------------------------------
@pytest.mark.parametrize("attempts", [0, 1, 3])
def test_fixed_delay_gives_up_after_attempts(attempts: int) -> None:
    got = delays(fixed_delay(attempts=attempts, delay=2.5), [1.0] * (attempts + 2))
    assert got == [2.5] * attempts + [None, None]


def test_fixed_delay_does_not_forget_old_failures() -> None:
    # attempts counts every failure of the job, however far apart.
    assert delays(fixed_delay(attempts=2, delay=0.0), [1e6, 1e6, 1e6]) == [0.0, 0.0, None]


# --- exponential backoff ------------------------------------------------------------------
def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    s = exponential_backoff(initial=1.0, max_delay=10.0, multiplier=2.0,
                            max_failures_per_interval=None)
    assert delays(s, [1.0] * 7) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_exponential_backoff_with_other_multiplier() -> None:
    s = exponential_backoff(initial=0.5, max_delay=100.0, multiplier=3.0,
                            max_failures_per_interval=None)
    assert delays(s, [1.0] * 4) == [0.5, 1.5, 4.5, 13.5]


def test_exponential_backoff_resets_after_a_long_healthy_run() -> None:
    s = exponential_backoff(initial=1.0, max_delay=60.0, max_failures_per_interval=None)
    long_gap = s.reset_after + 1.0
    assert delays(s, [1.0, 1.0, 1.0, long_gap, 1.0]) == [1.0, 2.0, 4.0, 1.0, 2.0]


def test_exponential_backoff_with_attempts_gives_up() -> None:
    s = exponential_backoff(initial=1.0, attempts=2, max_failures_per_interval=None)
    assert delays(s, [1.0] * 3) == [1.0, 2.0, None]


# --- failure rate -------------------------------------------------------------------------
def test_failure_rate_gives_up_after_too_many_failures_in_the_interval() -> None:
    s = exponential_backoff(initial=0.0, max_failures_per_interval=3, failure_rate_interval=60.0)
    assert delays(s, [1.0] * 4) == [0.0, 0.0, 0.0, None]


def test_failure_rate_forgets_failures_older_than_the_interval() -> None:
    s = exponential_backoff(initial=0.0, max_failures_per_interval=2, failure_rate_interval=60.0)
    # Two failures, then a long pause, then two more: never more than 2 within 60 s.
    assert delays(s, [1.0, 1.0, 100.0, 1.0]) == [0.0, 0.0, 0.0, 0.0]
    assert delays(s, [1.0, 1.0, 100.0, 1.0, 1.0])[-1] is None


def test_default_strategy_is_exponential_backoff_with_a_failure_rate_cap() -> None:
    flow = of.Flow("default-restart")
    s = flow.restart_strategy
    assert s.kind == "exponential_backoff"
    got = delays(s, [0.1] * 20)
    assert got[0] == 1.0
    assert None in got, "the default must give up on a job that keeps failing"
    first_none = got.index(None)
    assert all(d is None for d in got[first_none:])


# --- no restart ---------------------------------------------------------------------------
def test_no_restart_gives_up_at_the_first_failure() -> None:
    assert delays(no_restart(), [1.0, 1.0]) == [None, None]


# --- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", [
    RestartStrategy("sometimes"),
    fixed_delay(attempts=-1),
    fixed_delay(delay=-1.0),
    exponential_backoff(max_delay=-5.0),
], ids=["unknown-kind", "negative-attempts", "negative-delay", "negative-max-delay"])
def test_invalid_strategies_fail_at_run(strategy: RestartStrategy, tmp_path: Path) -> None:
    flow = of.Flow("bad-restart", restart_strategy=strategy)
    flow.source(of.sources.Collection([1]), name="src").sink(of.sinks.Discard(), name="out")
    with pytest.raises(of.ConfigurationError, match="restart strategy"):
        flow.run()


# --- end to end ---------------------------------------------------------------------------
def always_failing_flow(strategy: RestartStrategy, marker_dir: Path) -> of.Flow:
    flow = of.Flow("always-fails", restart_strategy=strategy)

    def explode(x: int) -> int:
        # Every attempt forks a new worker: one file per worker pid counts the attempts.
        (marker_dir / f"worker-{os.getpid()}").touch()
        raise RuntimeError(f"cannot handle {x}")

    (flow.source(of.sources.Collection([41]), name="src")
         .map(explode, name="explode")
         .sink(of.sinks.Discard(), name="out"))
    return flow


@pytest.mark.parametrize("attempts", [0, 2])
def test_job_runs_once_plus_attempts_then_fails(attempts: int, tmp_path: Path) -> None:
    flow = always_failing_flow(fixed_delay(attempts=attempts, delay=0.0), tmp_path)
    with pytest.raises(of.JobFailedError) as exc:
        flow.run()
    err = exc.value
    assert len(err.failures) == attempts + 1
    assert "fixed_delay" in str(err)
    assert "'explode'" in err.reason and "41" in err.reason
    assert len(list(tmp_path.iterdir())) == attempts + 1, "attempts actually run"


def test_no_restart_fails_the_job_at_once(tmp_path: Path) -> None:
    with pytest.raises(of.JobFailedError) as exc:
        always_failing_flow(no_restart(), tmp_path).run()
    assert len(exc.value.failures) == 1
    assert len(list(tmp_path.iterdir())) == 1
