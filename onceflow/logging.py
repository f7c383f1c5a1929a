"""Logging set-up for programs that run flows: plain text or one JSON object per line.

onceflow leaves logging to the program (see docs/operations.md#logs). Only while the
program has configured no logging at all does a fallback print onceflow's WARNING and
ERROR lines to stderr, with their level (``WARNING onceflow: ...``), so that restarts are
never silent. Call :func:`configure` once, before ``flow.run()``; workers are forked and
inherit it::

    import onceflow.logging
    onceflow.logging.configure(json=True)   # or set ONCEFLOW_LOG_JSON=1 and omit json=

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``pid``
and the fields the line carries: checkpoint lines have ``event``
(``checkpoint_completed``, ``checkpoint_aborted``), ``checkpoint_id``, ``duration_ms``,
``size``, ``incremental_size``, ``max_sync_ms``, ``max_async_ms``, ``max_alignment_ms``;
restart lines have ``event`` (``restart``), ``cause``, ``restart``, ``delay_s`` and
``checkpoint_id``.

    >>> import logging
    >>> rec = logging.LogRecord("onceflow", logging.INFO, __file__, 1, "checkpoint %d", (7,),
    ...                         None)
    >>> rec.checkpoint_id = 7
    >>> line = JsonFormatter().format(rec)
    >>> import json; doc = json.loads(line); (doc["message"], doc["checkpoint_id"])
    ('checkpoint 7', 7)
"""

from __future__ import annotations

import datetime as _dt
import logging as _logging
import os
import sys
from typing import Any, TextIO

import orjson

__all__ = ["ENV_JSON", "JsonFormatter", "configure", "json_active", "json_requested"]

ENV_JSON = "ONCEFLOW_LOG_JSON"  # "1" / "true": configure() writes JSON lines by default

_STANDARD = set(vars(_logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(_logging.Formatter):
    """One JSON object per record, with the record's ``extra`` fields at the top level."""

    def format(self, record: _logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=repr).decode()


def json_requested() -> bool:
    return os.environ.get(ENV_JSON, "").strip().lower() in ("1", "true", "yes", "on")


def configure(*, json: bool | None = None, level: int | str = _logging.INFO,
              stream: TextIO | None = None) -> _logging.Handler:
    """Send onceflow's log lines (logger ``onceflow`` and below) to ``stream`` (default
    stderr), as JSON lines when ``json`` (default: the ``ONCEFLOW_LOG_JSON`` variable),
    else as ``time logger level message``. Replaces a handler an earlier call installed;
    returns the handler."""
    if json is None:
        json = json_requested()
    handler = _logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else _logging.Formatter(
        "%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler._onceflow = True  # type: ignore[attr-defined]
    logger = _logging.getLogger("onceflow")
    for h in list(logger.handlers):
        if getattr(h, "_onceflow", False):
            logger.removeHandler(h)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


class _Fallback(_logging.Handler):
    """Prints WARNING and above as ``LEVEL logger: message`` to stderr, but only while no
    other handler would get the record: none on the ``onceflow`` logger, and none on the
    root logger (or no propagation to it)."""

    def __init__(self) -> None:
        super().__init__(_logging.WARNING)
        self.setFormatter(_logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: _logging.LogRecord) -> None:
        logger = _logging.getLogger("onceflow")
        if any(not isinstance(h, _Fallback) for h in logger.handlers) or \
                (logger.propagate and _logging.getLogger().handlers):
            return  # the program configured logging: its handlers decide
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # stderr is closed: nothing to tell


def install_fallback() -> None:
    """Called when onceflow is imported (once)."""
    logger = _logging.getLogger("onceflow")
    if not any(isinstance(h, _Fallback) for h in logger.handlers):
        logger.addHandler(_Fallback())


def json_active() -> bool:
    """Whether onceflow's log lines go out as JSON (then progress lines do too)."""
    return any(isinstance(h.formatter, JsonFormatter)
               for h in _logging.getLogger("onceflow").handlers)
