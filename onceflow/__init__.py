"""onceflow: end-to-end exactly-once stream processing for Python.

This module assembles the public API. ``onceflow.api`` describes flows;
``onceflow.runtime`` (private: processes, channels, barriers) and ``onceflow.checkpoint``
run them. Users import only what is listed in ``__all__`` plus the submodules
``onceflow.sources``, ``onceflow.sinks``, ``onceflow.restart``, ``onceflow.state``,
``onceflow.executors``, ``onceflow.windows`` (window assigners and triggers) and
``onceflow.agg`` (aggregates).
"""

from onceflow import agg, executors, restart, sinks, sources, state, windows
from onceflow import logging as _logging
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
from onceflow.api.joins import JoinContext, ProcessJoinFunction
from onceflow.api.result import JobResult, OperatorMetrics
from onceflow.api.two_input import (
    BroadcastContext,
    BroadcastProcessFunction,
    BroadcastState,
    CoProcessFunction,
    KeyedBroadcastProcessFunction,
    MapStateDescriptor,
)
from onceflow.api.watermarks import WatermarkGenerator, WatermarkStrategy
from onceflow.checkpoint.s3 import S3Storage
from onceflow.checkpoint.stats import CheckpointStats, CheckpointStatus
from onceflow.errors import (
    CheckpointError,
    CheckpointStorageError,
    ConfigurationError,
    ConnectorError,
    CorruptCheckpointError,
    ExistingCheckpointError,
    IncompatibleStateError,
    JobFailedError,
    NoCheckpointError,
    OnceflowError,
    OutputLostError,
    RecordFormatError,
    SavepointError,
    ServiceUnreachableError,
    UserFunctionError,
)
from onceflow.state.ttl import StateTtl

__version__ = "0.1.0"

_logging.install_fallback()  # warnings reach stderr, with their level, until logging is set up

__all__ = [
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
]
