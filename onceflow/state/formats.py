"""The keyed-state snapshot formats, and how each becomes the backend-neutral one.

Every keyed snapshot is a dict with a ``"format"`` key (see ``state/backend.py``). A store
restores any format by asking :func:`to_neutral`, which looks the format up here. Backends
register their formats where they are defined (``register``); a format whose module has
not been imported yet is found by the module path listed in ``_LAZY``, so the memory
backend can restore a RocksDB snapshot without importing the RocksDB module itself (no
import circle between the backends).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from onceflow.errors import IncompatibleStateError

ToNeutral = Callable[[dict[str, Any], str], dict[str, Any]]

_REGISTRY: dict[str, ToNeutral] = {}
#: format -> the module that registers it when imported
_LAZY = {
    "memory-keyed-1": "onceflow.state.memory",
    "memory-changelog-1": "onceflow.state.memory",
    "rocksdb-1": "onceflow.state.rocksdb",
    "rocksdb-2": "onceflow.state.rocksdb",
}


def register(fmt: str, to_neutral: ToNeutral) -> None:
    """``to_neutral(snapshot, operator)`` turns a snapshot of format ``fmt`` into the
    backend-neutral format (reading the files its manifest lists)."""
    _REGISTRY[fmt] = to_neutral


def to_neutral(snap: dict[str, Any], operator: str) -> dict[str, Any]:
    """Any known keyed snapshot format as the backend-neutral one."""
    fmt = snap.get("format")
    fn = _REGISTRY.get(fmt) if isinstance(fmt, str) else None
    if fn is None and isinstance(fmt, str) and fmt in _LAZY:
        importlib.import_module(_LAZY[fmt])
        fn = _REGISTRY.get(fmt)
    if fn is None:
        raise IncompatibleStateError(
            f"operator {operator!r}: the checkpoint holds keyed state in format {fmt!r}, "
            "which this version of onceflow cannot read")
    return fn(snap, operator)
