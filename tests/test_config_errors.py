"""Bad configuration fails early, with an error that names what to change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import onceflow as of


def simple_flow(name: str = "cfg", **flow_kwargs: Any) -> of.Flow:
    flow = of.Flow(name, **flow_kwargs)
    flow.source(of.sources.Collection([1, 2, 3]), name="src").map(lambda x: x, name="id") \
        .sink(of.sinks.Discard(), name="out")
    return flow


def fails_at_run(flow: of.Flow, error: type[Exception], *needles: str,
                 restore: str | Path | None = None) -> str:
    with pytest.raises(error) as exc:
        flow.run(restore=restore)
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# --- checkpointing ------------------------------------------------------------------------
@pytest.mark.parametrize("interval", [0, -1.5, "5", None])
def test_checkpoint_interval_must_be_positive(interval: Any, tmp_path: Path) -> None:
    flow = simple_flow().enable_checkpointing(interval, tmp_path)
    fails_at_run(flow, of.ConfigurationError, "interval")


def test_unknown_checkpoint_mode(tmp_path: Path) -> None:
    flow = simple_flow().enable_checkpointing(1.0, tmp_path, mode="exactly-once")
    fails_at_run(flow, of.ConfigurationError, "mode", "'exactly-once'", "exactly_once")


@pytest.mark.parametrize(("setting", "value"), [
    ("timeout", 0), ("timeout", -1.0), ("timeout", "10"), ("min_pause", -0.1),
    ("max_concurrent", 0), ("retained", 0), ("tolerable_failures", -1),
    ("max_concurrent", 1.5),
])
def test_other_checkpoint_settings(setting: str, value: Any, tmp_path: Path) -> None:
    flow = simple_flow().enable_checkpointing(1.0, tmp_path, **{setting: value})
    fails_at_run(flow, of.ConfigurationError, setting)


def test_checkpoint_storage_below_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    flow = simple_flow().enable_checkpointing(1.0, blocker / "chk")
    fails_at_run(flow, of.ConfigurationError, "storage", str(blocker / "chk"))


def test_checkpoint_storage_must_be_given() -> None:
    flow = simple_flow().enable_checkpointing(1.0, "")
    fails_at_run(flow, of.ConfigurationError, "storage")


# --- parallelism and batching -------------------------------------------------------------
def test_flow_parallelism_above_max_parallelism() -> None:
    fails_at_run(simple_flow(parallelism=5, max_parallelism=4), of.ConfigurationError,
                 "parallelism 5", "max_parallelism 4")


def test_operator_parallelism_above_max_parallelism() -> None:
    flow = of.Flow("cfg", parallelism=1, max_parallelism=4)
    flow.source(of.sources.Collection([1]), name="src") \
        .map(lambda x: x, name="wide", parallelism=5).sink(of.sinks.Discard(), name="out")
    fails_at_run(flow, of.ConfigurationError, "'wide'", "parallelism 5", "max_parallelism 4")


@pytest.mark.parametrize("parallelism", [0, -1])
def test_operator_parallelism_below_one(parallelism: int) -> None:
    flow = of.Flow("cfg", parallelism=1)
    flow.source(of.sources.Collection([1]), name="src") \
        .map(lambda x: x, name="none", parallelism=parallelism) \
        .sink(of.sinks.Discard(), name="out")
    fails_at_run(flow, of.ConfigurationError, "'none'", "parallelism")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"parallelism": 0}, "parallelism"),
    ({"max_parallelism": 0}, "max_parallelism"),
    ({"max_parallelism": 40000}, "max_parallelism"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -3}, "batch_size"),
    ({"channel_capacity": 0}, "channel_capacity"),
])
def test_flow_settings(kwargs: dict[str, int], needle: str) -> None:
    fails_at_run(simple_flow(**kwargs), of.ConfigurationError, needle)


def test_empty_flow_name() -> None:
    fails_at_run(simple_flow(name=" "), of.ConfigurationError, "name")


# --- graph shape --------------------------------------------------------------------------
def test_stream_without_sink() -> None:
    flow = of.Flow("cfg")
    src = flow.source(of.sources.Collection([1]), name="src")
    src.sink(of.sinks.Discard(), name="out")
    src.map(lambda x: x, name="dangling")
    fails_at_run(flow, of.ConfigurationError, "'dangling'", ".sink(")


def test_flow_without_source() -> None:
    fails_at_run(of.Flow("cfg"), of.ConfigurationError, "source")


def test_duplicate_explicit_uids() -> None:
    flow = of.Flow("cfg")
    flow.source(of.sources.Collection([1]), name="src").map(lambda x: x, uid="same") \
        .sink(of.sinks.Discard(), uid="same")
    fails_at_run(flow, of.ConfigurationError, "'same'")


# --- connectors ---------------------------------------------------------------------------
def test_range_with_step_zero() -> None:
    flow = of.Flow("cfg")
    flow.source(of.sources.Range(0, 10, 0), name="src").sink(of.sinks.Discard(), name="out")
    fails_at_run(flow, of.ConfigurationError, "step")


def test_file_sink_directory_below_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    flow = of.Flow("cfg")
    flow.source(of.sources.Collection([1]), name="src") \
        .sink(of.sinks.FileSink(blocker / "out"), name="out")
    fails_at_run(flow, of.ConfigurationError, "FileSink", str(blocker / "out"))


def test_file_sink_prefix_is_checked_when_built() -> None:
    with pytest.raises(of.ConfigurationError, match="prefix"):
        of.sinks.FileSink("/tmp/x", prefix=".hidden")


# --- restore ------------------------------------------------------------------------------
def test_restore_path_without_checkpoint(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = fails_at_run(simple_flow(), of.NoCheckpointError, str(empty), restore=empty)
    assert "no complete checkpoint" in msg


def test_restore_path_that_does_not_exist(tmp_path: Path) -> None:
    fails_at_run(simple_flow(), of.NoCheckpointError, str(tmp_path / "nope"),
                 restore=tmp_path / "nope")


def test_restore_latest_needs_checkpointing() -> None:
    fails_at_run(simple_flow(), of.ConfigurationError, "restore='latest'",
                 "enable_checkpointing", restore="latest")


def test_restore_latest_without_any_checkpoint_starts_fresh(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flow = simple_flow().enable_checkpointing(10.0, tmp_path / "chk")
    result = flow.run(restore="latest")
    assert result.restored_from is None
    assert result.records_in("out") == 3
    assert any("no complete checkpoint" in r.getMessage() for r in caplog.records)


# --- errors when the flow is built --------------------------------------------------------
NOT_CALLABLE = 42


@pytest.mark.parametrize("build", [
    lambda s: s.map(NOT_CALLABLE),
    lambda s: s.filter("x"),
    lambda s: s.flat_map(None),
    lambda s: s.key_by([1]),
    lambda s: s.key_by(lambda x: x).reduce(3),
    lambda s: s.key_by(lambda x: x).process(object()),
    lambda s: s.rebalance().map(1.5),
], ids=["map", "filter", "flat_map", "key_by", "reduce", "process", "rebalance-map"])
def test_non_callables_are_rejected_naming_the_call_and_type(
        build: Callable[[of.DataStream], Any]) -> None:
    flow = of.Flow("cfg")
    stream = flow.source(of.sources.Collection([1]), name="src")
    with pytest.raises(of.ConfigurationError, match=r"\(\) takes .*got"):
        build(stream)


def test_sink_rejects_a_non_sink() -> None:
    stream = of.Flow("cfg").source(of.sources.Collection([1]), name="src")
    with pytest.raises(of.ConfigurationError, match=r"sink.*list"):
        stream.sink([])  # type: ignore[arg-type]
    with pytest.raises(of.ConfigurationError, match=r"sink.*function"):
        stream.sink(print)  # type: ignore[arg-type]


def test_source_rejects_a_non_source() -> None:
    with pytest.raises(of.ConfigurationError, match=r"Source.*list"):
        of.Flow("cfg").source([1, 2, 3])  # type: ignore[arg-type]


def test_union_rejects_streams_of_another_flow() -> None:
    a = of.Flow("a").source(of.sources.Collection([1]), name="src")
    b = of.Flow("b").source(of.sources.Collection([1]), name="src")
    with pytest.raises(of.ConfigurationError, match="same Flow"):
        a.union(b)


def test_configuration_errors_are_value_errors() -> None:
    # Code that validates with ``except ValueError`` keeps working.
    with pytest.raises(ValueError):
        of.Flow("cfg").source(of.sources.Collection([1])).map(1)  # type: ignore[arg-type]


# --- keys without a stable hash -----------------------------------------------------------
@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize(("key_fn", "type_name"), [
    (lambda x: [x], "list"),
    (lambda x: {x: 1}, "dict"),
    (lambda x: frozenset({x}), "frozenset"),
], ids=["list", "dict", "frozenset"])
def test_key_without_stable_hash_fails_the_job_naming_the_key_type(
        key_fn: Callable[[int], Any], type_name: str, parallelism: int) -> None:
    flow = of.Flow("hashing", parallelism=parallelism, restart_strategy=of.restart.no_restart())
    (flow.source(of.sources.Collection(list(range(10))), name="src")
         .key_by(key_fn)
         .reduce(lambda a, b: a + b, name="sum")
         .sink(of.sinks.Discard(), name="out"))
    with pytest.raises(of.JobFailedError) as exc:
        flow.run()
    msg = str(exc.value)
    assert type_name in msg, msg
    assert "key" in msg, f"the error must say the problem is the key: {msg}"
