"""Restart strategies: what the driver does after a failure."""

from onceflow.api.config import RestartStrategy, exponential_backoff, fixed_delay, no_restart

__all__ = ["RestartStrategy", "exponential_backoff", "fixed_delay", "no_restart"]
