"""Import optional dependencies with an actionable message when they are missing."""

from __future__ import annotations

import importlib
from typing import Any

from onceflow.errors import ConfigurationError


def require(module: str, needed_by: str, extra: str, pip_name: str) -> Any:
    """Import ``module`` or raise ConfigurationError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            f"{needed_by} need{'s' if not needed_by.endswith('s') else ''} {pip_name}: "
            f"pip install 'onceflow[{extra}]' (or pip install '{pip_name}')"
        ) from e
