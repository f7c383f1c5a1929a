"""The public surface of onceflow, listed explicitly: growing it is a decision.

When this test fails because a name was added on purpose, add it here too; when a name
disappeared, that is a breaking change for users.
"""

from __future__ import annotations

import importlib

import pytest

import onceflow as of

PUBLIC = {
    "onceflow": [
        "AggregateFunction",
        "BroadcastContext",
        "BroadcastProcessFunction",
        "BroadcastState",
        "CheckpointConfig",
        "CheckpointError",
        "CheckpointStats",
        "CheckpointStatus",
        "CheckpointStorageError",
        "CoProcessFunction",
        "ConfigurationError",
        "ConnectorError",
        "CorruptCheckpointError",
        "DataStream",
        "ExistingCheckpointError",
        "Flow",
        "IncompatibleStateError",
        "JobClient",
        "JobFailedError",
        "JobResult",
        "JoinContext",
        "KeyedBroadcastProcessFunction",
        "KeyedProcessFunction",
        "KeyedStream",
        "MapStateDescriptor",
        "NoCheckpointError",
        "OnceflowError",
        "OperatorMetrics",
        "OutputLostError",
        "OutputTag",
        "ProcessContext",
        "ProcessJoinFunction",
        "RecordFormatError",
        "RestartStrategy",
        "RuntimeContext",
        "S3Storage",
        "SavepointError",
        "ServiceUnreachableError",
        "StateTtl",
        "TimeDomain",
        "TimerService",
        "UserFunctionError",
        "WatermarkGenerator",
        "WatermarkStrategy",
        "__version__",
        "agg",
        "executors",
        "restart",
        "sinks",
        "sources",
        "state",
        "windows",
    ],
    "onceflow.agg": ["AggregateFunction", "count", "count_distinct", "max", "mean", "min",
                     "sum"],
    "onceflow.windows": [
        "ContinuousEventTimeTrigger",
        "ContinuousProcessingTimeTrigger",
        "CountTrigger",
        "EventTimeTrigger",
        "ProcessingTimeTrigger",
        "PurgingTrigger",
        "Trigger",
        "Window",
        "WindowAssigner",
        "count",
        "global_",
        "session",
        "sliding",
        "tumbling",
    ],
    "onceflow.sources": ["Collection", "DataGen", "Range", "Source", "SplitReader", "TextFiles"],
    "onceflow.sinks": [
        "Discard",
        "FileSink",
        "FileTxn",
        "Print",
        "Sink",
        "SinkContext",
        "TwoPhaseCommitSink",
        "WriteAheadSink",
        "read_committed",
    ],
    "onceflow.executors": ["Executor", "Inline", "Local", "Ray", "Workers", "resolve"],
    "onceflow.restart": ["RestartStrategy", "exponential_backoff", "fixed_delay", "no_restart"],
    "onceflow.logging": ["ENV_JSON", "JsonFormatter", "configure", "json_active",
                         "json_requested"],
    "onceflow.state": ["ListState", "MapState", "MemoryBackend", "RocksDBBackend", "ValueState"],
    "onceflow.postgres": ["PostgresSink", "PostgresTxn", "gid_prefix"],
    "onceflow.kafka": [
        "DEFAULT_TRANSACTION_TIMEOUT_MS",
        "KafkaPlainSink",
        "KafkaRecord",
        "KafkaSink",
        "KafkaSource",
        "KafkaSplit",
        "KafkaTransactionLostError",
        "KafkaTransactionalSink",
        "KafkaTxn",
        "abort_lingering",
        "check_transaction_timeout",
        "list_lingering",
    ],
    "onceflow.testing": ["CaseResult", "CollectingSink", "ConformanceReport",
                         "DEFAULT_POINTS", "ScriptedSource", "check_sink_exactly_once",
                         "run_inline", "throttle"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_lists_exactly_the_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == PUBLIC[module]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_sorted_and_without_duplicates(module: str) -> None:
    names = importlib.import_module(module).__all__
    assert list(names) == sorted(set(names))


@pytest.mark.parametrize(("module", "name"),
                         [(m, n) for m, names in sorted(PUBLIC.items()) for n in names])
def test_every_public_name_resolves(module: str, name: str) -> None:
    mod = importlib.import_module(module)
    assert getattr(mod, name) is not None
    # ``from module import *`` must work too (it fails on a name listed but missing).
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert name in namespace


def test_submodules_are_the_same_objects_as_the_attributes() -> None:
    for sub in ("agg", "restart", "sinks", "sources", "state", "windows"):
        assert getattr(of, sub) is importlib.import_module(f"onceflow.{sub}")


def test_restart_strategy_is_one_class_under_both_names() -> None:
    assert of.RestartStrategy is of.restart.RestartStrategy


def test_every_exception_derives_from_the_root() -> None:
    errors = [getattr(of, n) for n in PUBLIC["onceflow"]
              if isinstance(getattr(of, n), type) and issubclass(getattr(of, n), BaseException)]
    assert of.OnceflowError in errors
    for err in errors:
        assert issubclass(err, of.OnceflowError), err
        assert err.__doc__, f"{err.__name__} has no docstring"
    for sub in (of.NoCheckpointError, of.CorruptCheckpointError, of.IncompatibleStateError):
        assert issubclass(sub, of.CheckpointError)
    # every class of onceflow.errors, exported or not: tests/test_errors.py


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert of.__version__ == version("onceflow")
