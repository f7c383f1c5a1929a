"""onceflow: end-to-end exactly-once stream processing for Python.

This module assembles the public API. ``onceflow.api`` describes flows;
``onceflow.runtime`` (private: processes, channels, barriers) and ``onceflow.checkpoint``
run them. Users import only what is listed in ``__all__`` plus the submodules
``onceflow.sources``, ``onceflow.sinks``, ``onceflow.restart`` and ``onceflow.state``.
"""

from onceflow import logging as _logging
from onceflow import restart, sinks, sources, state
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
    ExistingCheckpointError,
    IncompatibleStateError,
    JobFailedError,
    NoCheckpointError,
    OnceflowError,
    OutputLostError,
    RecordFormatError,
    UserFunctionError,
)
from onceflow.runtime.control import SavepointError

__version__ = "0.1.0"

_logging.install_fallback()  # warnings reach stderr, with their level, until logging is set up

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointStats",
    "CheckpointStatus",
    "ConfigurationError",
    "CorruptCheckpointError",
    "DataStream",
    "ExistingCheckpointError",
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
    "OutputLostError",
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
    "restart",
    "sinks",
    "sources",
    "state",
]
