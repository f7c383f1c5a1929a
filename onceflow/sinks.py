"""Built-in sinks and the base classes for your own.

* :class:`FileSink` - exactly-once files, JSON lines, CSV or Parquet (two-phase commit)
* :class:`Print`, :class:`Discard` - development and benchmarks (no guarantee / counting)
* :class:`Sink` - plain (at-least-once) sinks; :class:`TwoPhaseCommitSink` - transactional,
  exactly-once; :class:`WriteAheadSink` - exactly-once with idempotent writes
"""

from onceflow.connectors.files import FileSink, FileTxn, read_committed
from onceflow.connectors.sinks import Discard, Print, Sink, SinkContext
from onceflow.connectors.two_phase import TwoPhaseCommitSink, WriteAheadSink

__all__ = [
    "Discard",
    "FileSink",
    "FileTxn",
    "Print",
    "Sink",
    "SinkContext",
    "TwoPhaseCommitSink",
    "WriteAheadSink",
    "read_committed",
]
