"""librdkafka's log lines, sent to Python logging instead of straight to stderr.

Every Kafka client the connectors make gets its configuration through
:func:`client_config`, which adds confluent-kafka's ``logger`` setting: a
:class:`ClientLog` that hands each line to the logger ``onceflow.kafka.<component>``
(``source``, ``sink``, ``admin``) at librdkafka's own level (syslog levels as Python
levels), so the program's logging set-up decides where they go (see
docs/operations.md#logs). A ``logger`` in the user's ``consumer_config`` /
``producer_config`` is kept instead.

What the lines go through:

* **Levels.** librdkafka's connection failures (facility ``FAIL``, syslog ERR) become
  WARNING: the client reconnects by itself, and when onceflow gives up it raises an error
  that names the broker. Every other line keeps its level.
* **Repeats.** A broker that refuses connections makes librdkafka log the same line
  about twenty times a second; a line that differs from one said less than ``interval``
  seconds ago only in its numbers (and its closing parenthesis) is counted instead, and
  the next one said carries ``(N more like this in the last S s)``.
* **Secrets.** librdkafka writes ``[redacted]`` for its sensitive settings when it lists
  the configuration; as a second guard, the value of every secret setting of the client's
  configuration (:data:`SECRET_KEY`: passwords, secrets, private keys) is replaced by
  ``[redacted]`` in every line. :func:`redacted` does the same for a configuration that
  would be shown.

confluent-kafka queues the lines and calls the logger only while the client is polled
(``poll``, ``consume``, ``flush``) in the polling thread: the connectors poll their
consumers and producers all the time, and :func:`serve_logs` polls a client that is not
(the shared admin client, a short-lived client before it is closed).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from onceflow.errors import ConfigurationError

#: configuration keys whose values are secrets (never in a log line onceflow emits)
SECRET_KEY = re.compile(r"password|secret|passphrase|\.pem$|^ssl_key$|oauthbearer\.config$",
                        re.I)
REDACTED = "[redacted]"
#: configuration keys whose values are files the client reads
FILE_KEY = re.compile(r"\.location$|\.keytab$|\.file$")
_WHO = {"source": "KafkaSource", "sink": "KafkaSink", "admin": "Kafka admin client"}
#: seconds within which a repeated line is counted instead of said again
REPEAT_INTERVAL_S = 10.0
_MAX_REMEMBERED = 256
_TRAILER = re.compile(r"\s*\((?:[^()]|\([^()]*\))*\)\s*$")  # "(... error(s) ...)" too


def secrets_of(conf: dict[str, Any]) -> tuple[str, ...]:
    """The secret values of a client configuration, longest first (and, for settings of
    ``key=value`` words like ``sasl.oauthbearer.config``, each value too)."""
    found: set[str] = set()
    for key, value in conf.items():
        if not isinstance(key, str) or not SECRET_KEY.search(key) or not isinstance(value, str):
            continue
        if value:
            found.add(value)
        for word in value.split():
            _, eq, v = word.partition("=")
            if eq and len(v) >= 4:
                found.add(v)
    return tuple(sorted(found, key=len, reverse=True))


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """A copy of a client configuration with the secret settings' values hidden."""
    return {k: (REDACTED if isinstance(k, str) and SECRET_KEY.search(k) else v)
            for k, v in conf.items()}


def client_config(conf: dict[str, Any], component: str) -> dict[str, Any]:
    """``conf`` with a ``logger`` sending librdkafka's lines to ``onceflow.kafka.<component>``
    (unless ``conf`` has a ``logger`` of its own). A file setting (``ssl.key.location``, ...)
    naming no file is refused here: librdkafka would say which file only in a log line of
    the client it then fails to make, which nobody can poll."""
    for key, value in conf.items():
        if isinstance(key, str) and FILE_KEY.search(key) and isinstance(value, str) and \
                value != "probe" and not os.path.exists(value):
            raise ConfigurationError(
                f"{_WHO.get(component, 'Kafka client')}: {key}={value!r}: no such file (read "
                f"where the client runs, in the {'driver' if component == 'admin' else 'worker'})")
    if "logger" in conf:
        return conf
    return {**conf, "logger": ClientLog(component, secrets_of(conf))}


def serve_logs(client: Any) -> None:
    """Hand a client's queued log lines to its logger now (a client nobody polls). Never
    raises: a client that cannot be polled any more has nothing to say."""
    try:
        client.poll(0)
    except Exception:
        pass


class ClientLog:
    """The ``logger`` of one Kafka client: confluent-kafka calls ``log(level, "%s [%s] %s",
    facility, client name, text)`` for each librdkafka line."""

    def __init__(self, component: str, secrets: Iterable[str], *,
                 interval: float = REPEAT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logging.getLogger(f"onceflow.kafka.{component}")
        self._secrets = tuple(secrets)
        self._interval, self._clock = interval, clock
        self._said: dict[tuple[int, str, str], list[float]] = {}  # -> [when said, repeats]
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args: Any) -> None:
        try:
            self._log(level, msg, args)
        except Exception:  # a log line must never fail the client's poll
            pass

    def _log(self, level: int, msg: str, args: tuple[Any, ...]) -> None:
        if len(args) == 3:
            facility, client, text = (str(a) for a in args)
        else:
            facility, client, text = "", "", msg % args if args else msg
        if facility == "FAIL" and level > logging.WARNING:
            level = logging.WARNING  # a connection failure: the client retries by itself
        if not self.logger.isEnabledFor(level):
            return
        for s in self._secrets:
            text = text.replace(s, REDACTED)
        suffix = self._repeats(level, facility, text)
        if suffix is None:
            return
        self.logger.log(level, "librdkafka %s [%s]: %s%s", facility, client, text, suffix,
                        extra={"facility": facility, "client": client})

    def _repeats(self, level: int, facility: str, text: str) -> str | None:
        """None to count the line as a repeat; else what to add to it."""
        # alike: the same words but for numbers and a closing "(after 0ms in state
        # CONNECT, 3 identical error(s) suppressed)"
        key = (level, facility, re.sub(r"\d+", "#", _TRAILER.sub("", text)))
        now = self._clock()
        with self._lock:
            seen = self._said.get(key)
            if seen is not None and now - seen[0] < self._interval:
                seen[1] += 1
                return None
            if len(self._said) >= _MAX_REMEMBERED:
                for k in [k for k, v in self._said.items() if now - v[0] >= self._interval]:
                    del self._said[k]
                if len(self._said) >= _MAX_REMEMBERED:
                    self._said.clear()  # that many kinds of line at once: say them again
            self._said[key] = [now, 0]
        if seen is None or not seen[1]:
            return ""
        return f" ({int(seen[1])} more like this in the last {now - seen[0]:.0f} s)"
