"""Bad input and bad settings the other error tests do not try: each must fail fast with a
message naming what and where, and never drop or duplicate (the "hunt" session)."""

from __future__ import annotations

import time

import pytest

import onceflow as of


def test_a_configuration_error_found_at_run_time_stops_the_default_strategy_quickly() -> None:
    """Bug (fixed): a ConfigurationError raised in a worker (here a key without a stable
    hash) was not counted as a repeating failure, so the default restart strategy (backoff
    1 s → 60 s, unlimited) retried it for many minutes. It is the same on every attempt:
    now the third identical failure stops the job, as for a failing user function."""
    flow = of.Flow("unhashable-key")  # the default restart strategy
    (flow.source(of.sources.Collection(list(range(10))), name="src")
         .key_by(lambda x: [x])
         .reduce(lambda a, b: a + b, name="sum")
         .sink(of.sinks.Discard(), name="out"))
    t0 = time.monotonic()
    with pytest.raises(of.JobFailedError, match="looks deterministic") as exc:
        flow.run(executor="inline")
    assert "'sum'" in str(exc.value) and "list" in str(exc.value), str(exc.value)
    assert len(exc.value.failures) == 3
    assert time.monotonic() - t0 < 45, "1 s + 2 s of backoff, not minutes"
