"""Job settings: checkpointing and restart strategies. Light values, validated at ``run()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from onceflow.errors import ConfigurationError

if TYPE_CHECKING:
    from onceflow.checkpoint.s3 import S3Storage

MODES = ("exactly_once", "at_least_once")
UNALIGNED_BUFFER_TIME = 0.1  # seconds: buffer_time's default with unaligned checkpoints


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN


def _url_scheme(storage: object) -> str | None:
    """``"s4"`` for ``"s4://b/p"``: a string that looks like a URL (else it would silently
    become a local directory named ``s4:``)."""
    if not isinstance(storage, str):
        return None
    head, sep, _ = storage.partition("://")
    ok = sep and head[:1].isalpha() and all(c.isalnum() or c in "+.-" for c in head)
    return head.lower() if ok else None


@dataclass(frozen=True)
class CheckpointConfig:
    interval: float
    storage: str | S3Storage | None
    mode: str = "exactly_once"
    timeout: float = 600.0
    min_pause: float = 0.0
    max_concurrent: int = 1
    retained: int = 1
    tolerable_failures: int = 0
    incremental: bool = False
    unaligned: bool = False
    aligned_timeout: float | None = None
    buffer_time: float | None = None

    @property
    def effective_buffer_time(self) -> float | None:
        """Buffers sized by time: as given; unaligned checkpoints default to 0.1 s (a barrier
        must not wait for a whole large batch to be processed); 0 turns it off."""
        if self.buffer_time is not None:
            return self.buffer_time or None
        return UNALIGNED_BUFFER_TIME if (self.unaligned or self.aligned_timeout is not None) \
            else None

    def validate(self) -> None:
        def bad(what: str) -> ConfigurationError:
            return ConfigurationError(f"enable_checkpointing: {what}")

        if not isinstance(self.incremental, bool):
            raise bad(f"incremental must be True or False, got {self.incremental!r}")

        if not _number(self.interval) or self.interval <= 0 or self.interval == float("inf"):
            raise bad(f"interval must be a number of seconds > 0, got {self.interval!r} "
                      "(to turn checkpoints off, do not call enable_checkpointing)")
        if self.mode not in MODES:
            raise bad(f"mode must be one of {', '.join(repr(m) for m in MODES)}, "
                      f"got {self.mode!r}")
        if not _number(self.timeout) or self.timeout <= 0:
            raise bad(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        if not _number(self.min_pause) or self.min_pause < 0:
            raise bad(f"min_pause must be a number of seconds >= 0, got {self.min_pause!r}")
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 1:
            raise bad(f"max_concurrent must be an integer >= 1, got {self.max_concurrent!r}")
        if not isinstance(self.retained, int) or self.retained < 1:
            raise bad(f"retained must be an integer >= 1, got {self.retained!r}")
        if not isinstance(self.tolerable_failures, int) or self.tolerable_failures < 0:
            raise bad(f"tolerable_failures must be an integer >= 0, "
                      f"got {self.tolerable_failures!r}")
        if not isinstance(self.unaligned, bool):
            raise bad(f"unaligned must be True or False, got {self.unaligned!r}")
        if self.aligned_timeout is not None and (
                not _number(self.aligned_timeout) or self.aligned_timeout < 0):
            raise bad(f"aligned_timeout must be a number of seconds >= 0 (or None), got "
                      f"{self.aligned_timeout!r}")
        if self.buffer_time is not None and (
                not _number(self.buffer_time) or self.buffer_time < 0):
            raise bad(f"buffer_time must be a number of seconds >= 0 (0 or None: fixed "
                      f"buffers), got {self.buffer_time!r}")
        if (self.unaligned or self.aligned_timeout is not None) \
                and self.mode != "exactly_once":
            raise bad("unaligned checkpoints (unaligned=True or aligned_timeout=...) are an "
                      "exactly-once mode; with mode='at_least_once' barriers never wait anyway")
        if self.storage is None or not str(self.storage):
            raise bad("storage must be a directory path for checkpoint files")
        scheme = _url_scheme(self.storage)
        if scheme is not None and scheme != "s3":
            raise bad(f"storage {self.storage!r}: unknown scheme {scheme + '://'!r}; give a "
                      "directory path (without file://) or an s3://bucket/prefix URL")
        if isinstance(self.storage, str) and self.storage.startswith("s3://"):
            from onceflow.checkpoint.s3 import S3Storage

            S3Storage(self.storage)  # a malformed URL is named here


@dataclass(frozen=True)
class RestartStrategy:
    """When to restart a failed job. Build one with the functions below."""

    kind: str
    attempts: int | None = None  # None: unlimited
    delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    reset_after: float = 120.0  # exponential: a run this long without failure resets the delay
    max_failures_per_interval: int | None = None
    failure_rate_interval: float = 600.0
    # the same failure (error, operator, record) this many attempts in a row, with no
    # checkpoint completing in between, stops the job (None: retry as the strategy allows)
    max_repeated_failures: int | None = 3

    def validate(self) -> None:
        if self.kind not in ("fixed_delay", "exponential_backoff", "none"):
            raise ConfigurationError(f"unknown restart strategy {self.kind!r}")
        if not _number(self.delay) or not _number(self.max_delay) or self.delay < 0 \
                or self.max_delay < 0:
            raise ConfigurationError("restart strategy: delays must be numbers >= 0")
        if self.attempts is not None and self.attempts < 0:
            raise ConfigurationError("restart strategy: attempts must be >= 0")
        m = self.max_repeated_failures
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 2):
            raise ConfigurationError(
                f"restart strategy: max_repeated_failures must be an integer >= 2 or None "
                f"(no limit), got {m!r}")

    def next_delay(self, failure_times: list[float], now: float) -> float | None:
        """The delay before the next attempt, or None to give up. ``failure_times`` holds
        the monotonic times of every failure so far, the newest last."""
        n = len(failure_times)
        if self.kind == "none":
            return None
        if self.attempts is not None and n > self.attempts:
            return None
        if self.max_failures_per_interval is not None:
            recent = [t for t in failure_times if now - t <= self.failure_rate_interval]
            if len(recent) > self.max_failures_per_interval:
                return None
        if self.kind == "fixed_delay":
            return self.delay
        streak = 1  # failures in a row, each within reset_after of the one before
        for i in range(n - 1, 0, -1):
            if failure_times[i] - failure_times[i - 1] > self.reset_after:
                break
            streak += 1
        return min(self.max_delay, self.delay * self.multiplier ** (streak - 1))


def fixed_delay(attempts: int | None = 3, delay: float = 1.0, *,
                max_repeated_failures: int | None = 3) -> RestartStrategy:
    """Restart up to ``attempts`` times (None: without limit), waiting ``delay`` seconds
    each time. A failure that repeats at the same record (same error, same operator, no
    checkpoint completed in between) stops the job once it happened
    ``max_repeated_failures`` times in a row; None retries it as ``attempts`` allows."""
    return RestartStrategy("fixed_delay", attempts=attempts, delay=delay,
                           max_repeated_failures=max_repeated_failures)


def exponential_backoff(initial: float = 1.0, max_delay: float = 60.0, multiplier: float = 2.0,
                        max_failures_per_interval: int | None = 10,
                        failure_rate_interval: float = 600.0,
                        attempts: int | None = None, *,
                        max_repeated_failures: int | None = 3) -> RestartStrategy:
    """Restart with delays ``initial``, ``initial*multiplier``, ... up to ``max_delay``; give
    up after more than ``max_failures_per_interval`` failures within
    ``failure_rate_interval`` seconds (the default strategy), or when the same failure
    repeated at the same record ``max_repeated_failures`` times in a row (see
    :func:`fixed_delay`; None: no such limit)."""
    return RestartStrategy("exponential_backoff", attempts=attempts, delay=initial,
                           max_delay=max_delay, multiplier=multiplier,
                           max_failures_per_interval=max_failures_per_interval,
                           failure_rate_interval=failure_rate_interval,
                           max_repeated_failures=max_repeated_failures)


def no_restart() -> RestartStrategy:
    """Fail the job at the first failure."""
    return RestartStrategy("none")
