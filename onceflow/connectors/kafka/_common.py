"""Shared helpers of the Kafka connectors: (de)serializers, admin calls, error messages."""

from __future__ import annotations

import functools
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
        return functools.partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)
    raise ConfigurationError(
        f"KafkaSink: {what}={spec!r}; use 'bytes', 'str', 'json' or a function value -> bytes")


def broker_config(bootstrap: str, name: str, timeout: float = 10.0) -> str | None:
    """One broker config value (of the first broker in the metadata)."""
    ck = import_kafka()
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
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
    import_kafka()
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout)
    return [(str(b.host), int(b.port)) for b in md.brokers.values()]
