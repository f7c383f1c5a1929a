"""Keyed and operator state: handles users call, and the backends behind them.

``MemoryBackend()`` (the default) keeps keyed state in Python dictionaries;
``RocksDBBackend()`` keeps it in an embedded RocksDB per operator subtask, for state larger
than memory (needs ``pip install 'onceflow[rocksdb]'``). Select one with
``Flow(..., state_backend=...)``.
"""

from onceflow.state.handles import ListState, MapState, ValueState
from onceflow.state.memory import MemoryBackend
from onceflow.state.rocksdb import RocksDBBackend

__all__ = ["ListState", "MapState", "MemoryBackend", "RocksDBBackend", "ValueState"]
