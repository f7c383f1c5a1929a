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


def _conformance() -> None:  # pragma: no cover - checked by mypy, never called
    """Both backends and both stores satisfy the protocols operators rely on (mypy checks
    these assignments; see ``state/backend.py``)."""
    from onceflow.state import backend, memory, rocksdb

    def check(mb: MemoryBackend, rb: RocksDBBackend, ms: memory.KeyedStore,
              rs: rocksdb.RocksDBStore) -> None:
        backends: list[backend.StateBackend] = [mb, rb]
        stores: list[backend.KeyedStore] = [ms, rs]
        del backends, stores

    del check
