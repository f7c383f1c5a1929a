"""Keyed and operator state: handles users call, and the memory backend behind them."""

from onceflow.state.handles import ListState, MapState, ValueState
from onceflow.state.memory import MemoryBackend

__all__ = ["ListState", "MapState", "MemoryBackend", "ValueState"]
