"""Shared helpers of the Kafka connectors: (de)serializers, admin calls, error messages."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from onceflow._optional import require
from onceflow.connectors.jsonvalues import dumps as json_dumps
from onceflow.connectors.jsonvalues import loads as json_loads
from onceflow.connectors.kafka._logs import client_config, secrets_of, serve_logs
from onceflow.errors import ConfigurationError, ServiceUnreachableError


@functools.cache
def import_kafka() -> Any:
    """confluent_kafka (imported once: the sinks ask for it on every batch)."""
    return require("confluent_kafka", "the Kafka connectors", "kafka", "confluent-kafka")


def deserializer(spec: str | Callable[[bytes], Any] | None, what: str) -> Callable[[Any], Any]:
    if callable(spec):
        return spec
    if spec in (None, "bytes"):
        return lambda b: b
    if spec == "str":
        return lambda b: None if b is None else b.decode("utf-8")
    if spec == "json":
        return lambda b: None if b is None else json_loads(b)
    raise ConfigurationError(
        f"KafkaSource: {what}={spec!r}; use 'bytes', 'str', 'json' or a function bytes -> value")


def serializer(spec: str | Callable[[Any], Any] | None, what: str) -> Callable[[Any], Any]:
    def enc(v: Any) -> bytes | None:
        if v is None or isinstance(v, bytes):
            return v
        if isinstance(v, str):
            return v.encode("utf-8")
        raise TypeError(f"{what}: cannot send a {type(v).__name__} as bytes; pass "
                        f"{what}='json', 'str' or a function")

    if callable(spec):
        return lambda v: enc(spec(v))
    if spec in (None, "bytes"):
        return enc
    if spec == "str":
        return lambda v: None if v is None else str(v).encode("utf-8")
    if spec == "json":
        return json_dumps  # NaN and infinities kept (orjson alone writes null)
    raise ConfigurationError(
        f"KafkaSink: {what}={spec!r}; use 'bytes', 'str', 'json' or a function value -> bytes")


#: settings of a Kafka client that say how to reach and authenticate to the brokers
#: (librdkafka's properties for every kind of client): every client a connector makes gets
#: them from the user's ``consumer_config`` / ``producer_config``, not only the main one
CONNECTION_KEY = re.compile(
    r"^(?:security\.protocol|sasl\..+|ssl\..+|enable\.ssl\.certificate\.verification|"
    r"enable\.sasl\.oauthbearer\.unsecure\.jwt|oauth_cb|https\..+|client\.id|client\.rack|"
    r"client\.dns\.lookup|broker\.address\.(?:family|ttl)|socket\..+|"
    r"connections\.max\.idle\.ms|reconnect\.backoff(?:\.max)?\.ms|api\.version\..+|"
    r"broker\.version\.fallback|resolve_cb|plugin\.library\.paths|debug)$")


def connection_config(conf: dict[str, Any] | None) -> dict[str, Any]:
    """The connection settings of a client configuration (:data:`CONNECTION_KEY`:
    ``security.protocol``, ``sasl.*``, ``ssl.*``, ``client.id``, DNS and socket settings):
    what a connector's other clients (the admin client, a short-lived consumer) need of
    the user's ``consumer_config`` / ``producer_config``. Consumer-only and producer-only
    settings are left out (librdkafka warns about them in another kind of client)."""
    return {k: v for k, v in (conf or {}).items()
            if isinstance(k, str) and CONNECTION_KEY.match(k)}


def _settings_key(conn: dict[str, Any]) -> str:
    # a digest: the cache's keys never hold a password in plain text
    return hashlib.sha256(repr(sorted((k, repr(v)) for k, v in conn.items())).encode()
                          ).hexdigest()


def _secured(conn: dict[str, Any]) -> bool:
    return str(conn.get("security.protocol", "plaintext")).lower() != "plaintext"


def auth_failure(bootstrap: str, conn: dict[str, Any], err: Any) -> ConfigurationError:
    """The error for a client that the brokers at ``bootstrap`` refused (wrong password,
    unknown user, a TLS handshake that failed): names the broker, the protocol, the
    mechanism and the user, never a secret."""
    who = ", ".join(f"{k}={conn[k]}" for k in ("security.protocol", "sasl.mechanism",
                                                 "sasl.mechanisms", "sasl.username")
                    if k in conn)
    text = err.str() if hasattr(err, "str") else str(err)
    for secret in secrets_of(conn):
        text = text.replace(secret, "[redacted]")
    return ConfigurationError(f"Kafka at {bootstrap}: authentication failed ({who}): {text}")


#: seconds a shared admin client serves new calls (it serves one job's start-up calls)
SHARED_ADMIN_TTL_S = 10.0
#: seconds between two looks at expired admin clients that are still in use
_SWEEP_RETRY_S = 1.0


class _Admin:
    """A shared AdminClient, the process that made it and when."""

    __slots__ = ("client", "made", "pid")

    def __init__(self, client: Any) -> None:
        self.client, self.pid, self.made = client, os.getpid(), time.monotonic()


#: a transport error's text that says the TLS handshake failed (librdkafka reports some as
#: _TRANSPORT rather than _SSL)
_TLS_FAILURE = re.compile(r"SSL handshake failed|certificate verify failed", re.IGNORECASE)


class _AuthErrors:
    """The ``error_cb`` of a shared admin client: keeps the last authentication (or TLS)
    error librdkafka reports (served by the client's ``poll``), and whether a broker could
    not be reached at all (``down``: nothing to say about the credentials then)."""

    def __init__(self) -> None:
        self.last: Any = None
        self.down = False

    def __call__(self, err: Any) -> None:
        try:
            ck = import_kafka()
            if err.code() in (ck.KafkaError._AUTHENTICATION, ck.KafkaError._SSL):
                self.last = err
            elif err.code() == ck.KafkaError._TRANSPORT and _TLS_FAILURE.search(err.str()):
                self.last = err  # a TLS handshake the broker's certificate failed
            elif err.code() in (ck.KafkaError._TRANSPORT, ck.KafkaError._ALL_BROKERS_DOWN):
                self.down = True
        except Exception:  # an error callback must never fail the client's poll
            pass


_shared: dict[tuple[int, str, str], _Admin] = {}
#: expired admin clients not released yet (someone may still hold them)
_retired: list[_Admin] = []
_shared_lock = threading.Lock()
_sweeper: threading.Timer | None = None


def _after_fork_in_child() -> None:
    # A forked child must never destroy its copy of the parent's clients (their threads do
    # not exist here: librdkafka's destroy would wait for them forever): they stay in
    # ``_shared``/``_retired`` under the parent's pid, which nothing here releases. The
    # lock may have been held by a parent thread at the fork: a new one.
    global _shared_lock, _sweeper
    _shared_lock = threading.Lock()
    _sweeper = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_admin(bootstrap: str, config: dict[str, Any] | None = None) -> Any:
    """An AdminClient for ``bootstrap`` shared by the connectors' start-up calls in this
    process (validation, splits, start offsets, broker lists): one client and one
    connection instead of one per call. It has the connection settings of ``config``
    (:func:`connection_config`: security, ``client.id``, ...), and is shared only by calls
    with the same ones (never across credentials). A new one on a secured connection
    makes a first call (DescribeCluster) at once, so that credentials the brokers refuse
    fail here with a :class:`ConfigurationError` saying so (:func:`auth_failure`), instead
    of every call hanging in retries for its timeout. New calls get a new client once it is
    :data:`SHARED_ADMIN_TTL_S` old, so no idle client outlives the start-up.

    A client is never destroyed by the cyclic garbage collector nor while anyone uses
    it: this module keeps the last reference to every client it made, and lets go of an
    expired one (in its sweeper thread, or in :func:`release_shared_admins`) only once
    nothing else refers to it — no call on it in progress, no caller's frame or object
    holding it. Callers must not keep it in long-lived objects: ask again instead.
    Per process: a forked child makes its own, and never releases its copies of the
    parent's (see ``_after_fork_in_child``)."""
    import_kafka()
    from confluent_kafka.admin import AdminClient

    conn = connection_config(config)
    key = (os.getpid(), bootstrap, _settings_key(conn))
    errors: _AuthErrors | None = None
    with _shared_lock:
        entry = _shared.get(key)
        if entry is not None and time.monotonic() - entry.made >= SHARED_ADMIN_TTL_S:
            _retired.append(_shared.pop(key))
            entry = None
        if entry is None:
            errors = _AuthErrors()
            # (a metadata request for a missing topic must not create it)
            entry = _shared[key] = _Admin(AdminClient(client_config(
                {**conn, "bootstrap.servers": bootstrap, "allow.auto.create.topics": False,
                 "error_cb": errors}, "admin")))
            _arm_sweeper(SHARED_ADMIN_TTL_S)
        client = entry.client
    if errors is not None and _secured(conn):
        try:
            _check_auth(client, errors, bootstrap, conn)
        except BaseException:
            with _shared_lock:  # not shared: the next call tries again
                if _shared.get(key) is entry:
                    _retired.append(_shared.pop(key))
            raise
    serve_logs(client)  # the log lines of the calls before (nothing else polls it)
    return client


#: seconds the first call of a new secured admin client waits for the brokers
_AUTH_CHECK_S = 10.0
#: seconds it still waits for an authentication error once every broker is down
_DOWN_GRACE_S = 1.0


def _check_auth(admin: Any, errors: _AuthErrors, bootstrap: str,
                conn: dict[str, Any]) -> None:
    """One DescribeCluster on a new client, polling it meanwhile: an authentication error
    librdkafka reports fails at once. A cluster that cannot be reached or does not answer
    is left to the calls that follow (they say so, with their own timeouts), once every
    broker has been down for :data:`_DOWN_GRACE_S` without an authentication error."""
    fut = admin.describe_cluster(request_timeout=_AUTH_CHECK_S)
    deadline = time.monotonic() + _AUTH_CHECK_S
    down_since: float | None = None
    while not fut.done() and time.monotonic() < deadline:
        admin.poll(0.05)  # serves error_cb (and the log lines)
        if errors.last is not None:
            raise auth_failure(bootstrap, conn, errors.last)
        if errors.down:
            # "all brokers down" can come before the TLS or SASL error that caused it
            # (on a loaded machine, in separate polls): wait a little for that one
            now = time.monotonic()
            if down_since is None:
                down_since = now
            elif now - down_since >= _DOWN_GRACE_S:
                return
    admin.poll(0)
    if errors.last is not None:
        raise auth_failure(bootstrap, conn, errors.last)


def _arm_sweeper(delay: float) -> None:
    global _sweeper
    if _sweeper is not None and _sweeper.is_alive():
        return
    _sweeper = threading.Timer(delay, _sweep)
    _sweeper.daemon = True
    _sweeper.name = "onceflow-kafka-admin-sweeper"
    _sweeper.start()


def _unused(entry: _Admin) -> bool:
    # references: ``entry.client`` and getrefcount's argument; any other is a user
    return sys.getrefcount(entry.client) <= 2


def _sweep(expire_all: bool = False) -> None:
    """Retire this process's expired clients and release the retired ones nobody uses;
    look again later while some are still in use."""
    global _sweeper
    release: list[Any] = []
    with _shared_lock:
        _sweeper = None
        pid, now = os.getpid(), time.monotonic()
        for key in [k for k, e in _shared.items()
                    if e.pid == pid and (expire_all or now - e.made >= SHARED_ADMIN_TTL_S)]:
            _retired.append(_shared.pop(key))
        for entry in [e for e in _retired if e.pid == pid and _unused(e)]:
            _retired.remove(entry)
            release.append(entry.client)
            entry.client = None
        waiting = any(e.pid == pid for e in _retired) or any(
            e.pid == pid for e in _shared.values())
        if waiting:
            _arm_sweeper(_SWEEP_RETRY_S if _retired else SHARED_ADMIN_TTL_S)
    # destroyed here, outside the lock, by the last reference going: a known point in a
    # plain Python thread, never in a librdkafka thread nor in the middle of a call on it
    while release:
        serve_logs(release[-1])  # its last log lines
        release.pop()


def release_shared_admins() -> int:
    """Release now every shared admin client of this process that nothing else refers
    to (the rest go as soon as they are unused); returns how many are still held."""
    _sweep(expire_all=True)
    with _shared_lock:
        return sum(1 for e in _retired if e.pid == os.getpid())


def broker_config(bootstrap: str, name: str, timeout: float = 10.0,
                  config: dict[str, Any] | None = None) -> str | None:
    """One broker config value (of the first broker in the metadata); ``config``: the
    client settings to connect with (only the connection settings are used)."""
    ck = import_kafka()
    from confluent_kafka.admin import ConfigResource

    admin = shared_admin(bootstrap, config)
    try:
        ids = [n.id for n in _cluster(admin, timeout).nodes]
    except ck.KafkaException as e:
        raise ServiceUnreachableError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    if not ids:
        raise ServiceUnreachableError(f"Kafka at {bootstrap} reports no broker")
    res = ConfigResource(ConfigResource.Type.BROKER, str(min(ids)))
    configs = admin.describe_configs([res])[res].result(timeout=timeout)
    entry = configs.get(name)
    return None if entry is None else entry.value


def brokers(bootstrap: str, timeout: float = 10.0,
            config: dict[str, Any] | None = None) -> list[tuple[str, int]]:
    """(host, port) of every broker in the cluster (``config``: as for :func:`broker_config`)."""
    return [(str(n.host), int(n.port)) for n in _cluster(shared_admin(bootstrap, config),
                                                          timeout).nodes]


def _cluster(admin: Any, timeout: float) -> Any:
    # DescribeCluster: the brokers only, not the metadata of every topic in the cluster
    # (which a metadata request without topics returns: slow on a cluster of many topics)
    ck = import_kafka()
    try:
        return admin.describe_cluster(request_timeout=timeout).result(timeout=timeout)
    except TimeoutError as e:  # (as a metadata request times out: a KafkaException)
        raise ck.KafkaException(ck.KafkaError(
            ck.KafkaError._TIMED_OUT, f"DescribeCluster: no answer within {timeout:g} s"
        )) from e
    finally:
        serve_logs(admin)  # what went wrong, logged before the error is
