"""The window operator (being written)."""

from __future__ import annotations

from typing import Any


def make_window_operator(node: Any, key_fn: Any) -> Any:
    raise NotImplementedError("windows are not implemented yet")
