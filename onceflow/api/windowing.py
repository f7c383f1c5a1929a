"""Windowed streams (being written: see the window operator)."""

from __future__ import annotations

from typing import Any


class WindowedStream:
    def __init__(self, flow: Any, node: Any, key: Any, assigner: Any) -> None:
        raise NotImplementedError("windows are not implemented yet")
