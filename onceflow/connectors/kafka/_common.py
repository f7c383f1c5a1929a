"""Shared helpers of the Kafka connectors: (de)serializers, admin calls, error messages."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import orjson

from onceflow._optional import require
from onceflow.errors import ConfigurationError


def import_kafka() -> Any:
    return require("confluent_kafka", "the Kafka connectors", "kafka", "confluent-kafka")


def deserializer(spec: str | Callable[[bytes], Any] | None, what: str) -> Callable[[Any], Any]:
    if callable(spec):
        return spec
    if spec in (None, "bytes"):
        return lambda b: b
    if spec == "str":
        return lambda b: None if b is None else b.decode("utf-8")
    if spec == "json":
        return lambda b: None if b is None else orjson.loads(b)
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
        # positional arguments: half the cost of a functools.partial with a keyword
        dumps, opt = orjson.dumps, orjson.OPT_NON_STR_KEYS
        return lambda v: dumps(v, None, opt)
    raise ConfigurationError(
        f"KafkaSink: {what}={spec!r}; use 'bytes', 'str', 'json' or a function value -> bytes")


#: seconds a shared admin client lives (it serves one job's start-up calls)
SHARED_ADMIN_TTL_S = 10.0
_shared: dict[tuple[int, str], Any] = {}
_shared_lock = threading.Lock()


def shared_admin(bootstrap: str) -> Any:
    """An AdminClient for ``bootstrap`` shared by the connectors' start-up calls in this
    process (validation, splits, start offsets, broker lists): one client and one
    connection instead of one per call. Dropped :data:`SHARED_ADMIN_TTL_S` after it was
    made, so no idle client outlives the start-up. Per process: a forked child makes its
    own (and never touches its copy of the parent's, which has no threads)."""
    import_kafka()
    from confluent_kafka.admin import AdminClient

    key = (os.getpid(), bootstrap)
    with _shared_lock:
        admin = _shared.get(key)
        if admin is None:
            admin = _shared[key] = AdminClient({"bootstrap.servers": bootstrap})
            t = threading.Timer(SHARED_ADMIN_TTL_S, _drop_shared, args=(key, admin))
            t.daemon = True
            t.start()
    return admin


def _drop_shared(key: tuple[int, str], admin: Any) -> None:
    with _shared_lock:
        if _shared.get(key) is admin:
            del _shared[key]


def broker_config(bootstrap: str, name: str, timeout: float = 10.0) -> str | None:
    """One broker config value (of the first broker in the metadata)."""
    ck = import_kafka()
    from confluent_kafka.admin import ConfigResource

    admin = shared_admin(bootstrap)
    try:
        md = admin.list_topics(timeout=timeout)
    except ck.KafkaException as e:
        raise ConfigurationError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    if not md.brokers:
        raise ConfigurationError(f"Kafka at {bootstrap} reports no broker")
    res = ConfigResource(ConfigResource.Type.BROKER, str(min(md.brokers)))
    configs = admin.describe_configs([res])[res].result(timeout=timeout)
    entry = configs.get(name)
    return None if entry is None else entry.value


def brokers(bootstrap: str, timeout: float = 10.0) -> list[tuple[str, int]]:
    """(host, port) of every broker in the cluster metadata."""
    md = shared_admin(bootstrap).list_topics(timeout=timeout)
    return [(str(b.host), int(b.port)) for b in md.brokers.values()]
