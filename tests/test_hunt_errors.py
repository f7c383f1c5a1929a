"""Bad input and bad settings the other error tests do not try: each must fail fast with a
message naming what and where, and never drop or duplicate (the "hunt" session)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("storage", ["s4://bucket/prefix", "http://store/ckpt",
                                     "file:///tmp/ckpt", "gs://bucket/x"])
def test_a_storage_url_of_an_unknown_scheme_is_refused_not_made_a_local_directory(
        storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug (fixed): any string not starting with s3:// was taken as a directory path, so
    "s4://bucket/prefix" or "http://store/ckpt" silently wrote checkpoints to a local
    directory named "s4:" (or "http:") under the working directory."""
    monkeypatch.chdir(tmp_path)
    flow = of.Flow("scheme")
    flow.source(of.sources.Range(0, 10)).sink(of.sinks.Discard())
    with pytest.raises(of.ConfigurationError, match="unknown scheme") as exc:
        flow.enable_checkpointing(1.0, storage)
        flow.run(executor="inline")
    assert storage in str(exc.value) and "s3://bucket/prefix" in str(exc.value)
    assert not list(tmp_path.iterdir()), "nothing may be written"


@pytest.mark.parametrize("setting", ["interval", "timeout", "min_pause"])
def test_nan_checkpoint_settings_are_refused(setting: str, tmp_path: Path) -> None:
    """Bug (fixed): NaN passed every "number of seconds" check (NaN <= 0 is False): an
    interval of NaN ran the job with no periodic checkpoint at all. An infinite interval
    is refused too (to turn checkpoints off, do not enable them)."""
    kwargs = {"interval": 1.0, setting: float("nan")}
    flow = of.Flow("nan")
    flow.source(of.sources.Range(0, 10)).sink(of.sinks.Discard())
    with pytest.raises(of.ConfigurationError, match=setting):
        flow.enable_checkpointing(storage=str(tmp_path / "ck"), **kwargs)
        flow.run(executor="inline")
    with pytest.raises(of.ConfigurationError, match="interval"):
        flow.enable_checkpointing(float("inf"), str(tmp_path / "ck"))
        flow.run(executor="inline")


def test_a_malformed_kafka_record_names_topic_partition_and_offset(bootstrap: str) -> None:
    from confluent_kafka import Producer
    from kafka_util import new_topic

    from onceflow.kafka import KafkaSource

    topic = new_topic(bootstrap, 2, prefix="hunt-bad")
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(20):  # record 13 (partition 1, offset 6) is cut short
        producer.produce(topic, b'{"i": %d}' % i if i != 13 else b'{"i": 13,', partition=i % 2)
    producer.flush(30)
    flow = of.Flow("bad-kafka", restart_strategy=of.restart.no_restart())
    (flow.source(KafkaSource(bootstrap, topic, deserializer="json", value_only=True,
                             stop_at="end"), name="kin")
         .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError) as exc:
        flow.run(executor="inline")
    msg = str(exc.value)
    assert "'kin'" in msg and topic in msg, msg
    assert "partition 1" in msg and "offset 6" in msg, msg
    assert isinstance(exc.value.cause, of.RecordFormatError), repr(exc.value.cause)


class _NanTimer(of.KeyedProcessFunction):
    def __init__(self, domain: str) -> None:
        self.domain = domain

    def process_element(self, value: int, ctx: of.ProcessContext) -> None:
        if self.domain == "event":
            ctx.timer_service.register_event_time_timer(float("nan"))
        else:
            ctx.timer_service.register_processing_time_timer(float("nan"))


@pytest.mark.parametrize("domain", ["event", "processing"])
def test_a_timer_at_nan_fails_naming_the_call(domain: str) -> None:
    """Bug (fixed): a timer registered at NaN was accepted and silently never fired (and a
    processing-time timer's time was not checked at all)."""
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(float)
    flow = of.Flow("nan-timer", restart_strategy=of.restart.no_restart())
    (flow.source(of.sources.Range(0, 10), watermarks=ws)
         .key_by(lambda x: x)
         .process(_NanTimer(domain), name="timers")
         .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError, match=f"register_{domain}_time_timer: the time is "
                                                "NaN") as exc:
        flow.run(executor="inline")
    assert "'timers'" in str(exc.value)
