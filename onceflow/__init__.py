"""onceflow: end-to-end exactly-once stream processing for Python.

This module assembles the public API. ``onceflow.api`` describes flows;
``onceflow.runtime`` (private: processes, channels, barriers) and ``onceflow.checkpoint``
run them. Users import only what is listed in ``__all__`` plus the submodules
``onceflow.sources``, ``onceflow.sinks``, ``onceflow.restart``, ``onceflow.state``,
``onceflow.windows`` (window assigners and triggers) and ``onceflow.agg`` (aggregates).
"""

from onceflow import agg, restart, sinks, sources, state, windows
from onceflow.agg import AggregateFunction
from onceflow.api.client import JobClient
from onceflow.api.config import CheckpointConfig, RestartStrategy
from onceflow.api.flow import DataStream, Flow, KeyedStream
from onceflow.api.functions import (
    KeyedProcessFunction,
    OutputTag,
    ProcessContext,
    RuntimeContext,
    TimeDomain,
    TimerService,
)
from onceflow.api.result import JobResult, OperatorMetrics
from onceflow.api.watermarks import WatermarkGenerator, WatermarkStrategy
from onceflow.checkpoint.coordinator import CheckpointStats, CheckpointStatus
from onceflow.errors import (
    CheckpointError,
    ConfigurationError,
    CorruptCheckpointError,
    IncompatibleStateError,
    JobFailedError,
    NoCheckpointError,
    OnceflowError,
    RecordFormatError,
    UserFunctionError,
)
from onceflow.runtime.control import SavepointError

__version__ = "0.1.0"

__all__ = [
    "AggregateFunction",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointStats",
    "CheckpointStatus",
    "ConfigurationError",
    "CorruptCheckpointError",
    "DataStream",
    "Flow",
    "IncompatibleStateError",
    "JobClient",
    "JobFailedError",
    "JobResult",
    "KeyedProcessFunction",
    "KeyedStream",
    "NoCheckpointError",
    "OnceflowError",
    "OperatorMetrics",
    "OutputTag",
    "ProcessContext",
    "RecordFormatError",
    "RestartStrategy",
    "RuntimeContext",
    "SavepointError",
    "TimeDomain",
    "TimerService",
    "UserFunctionError",
    "WatermarkGenerator",
    "WatermarkStrategy",
    "__version__",
    "agg",
    "restart",
    "sinks",
    "sources",
    "state",
    "windows",
]
