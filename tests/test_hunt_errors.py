"""Bad input and bad settings the other error tests do not try: each must fail fast with a
message naming what and where, and never drop or duplicate (the "hunt" session)."""

from __future__ import annotations

import subprocess
import sys
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


_NAN_JOB = """
import onceflow as of
ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(
    lambda x: float({bad!r}) if x == 7 else float(x))
flow = of.Flow("bad-ts", restart_strategy=of.restart.no_restart(), batch_size=4)
(flow.source(of.sources.Range(0, 20), watermarks=ws, name="nums")
     .key_by(lambda x: x % 2)
     .window(of.windows.tumbling(5.0))
     .aggregate(of.agg.count())
     .sink(of.sinks.Discard()))
try:
    flow.run(executor="inline")
except of.JobFailedError as e:
    print("FAILED:", e)
else:
    print("RAN")
"""


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_a_timestamp_that_is_not_finite_fails_naming_the_operator_and_record(bad: str) -> None:
    """Bug (fixed): a timestamp function returning NaN as a float was let through (only
    non-float values were checked), and the job then spun for ever at full CPU; an
    infinite one was accepted too. Now both fail at the record, naming the source."""
    proc = subprocess.run([sys.executable, "-c", _NAN_JOB.format(bad=bad)],
                          capture_output=True, text=True, timeout=90)
    out = proc.stdout
    assert "FAILED:" in out, out + proc.stderr[-2000:]
    assert "'nums (timestamps)'" in out and "record 7" in out, out
    assert "finite number of seconds" in out, out
