"""Kafka end-to-end exactly-once: :class:`KafkaSource`, :func:`KafkaSink`,
:func:`abort_lingering`. Needs ``confluent-kafka`` (``pip install 'onceflow[kafka]'``).
See docs/kafka.md."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from onceflow.connectors.kafka import brokers as _brokers
from onceflow.connectors.kafka import connection_config as _connection_config
from onceflow.connectors.kafka import import_kafka as _import_kafka
from onceflow.connectors.kafka import protocol as _kp
from onceflow.connectors.kafka.sink import (
    DEFAULT_TRANSACTION_TIMEOUT_MS,
    GUARANTEES,
    KafkaPlainSink,
    KafkaTransactionalSink,
    KafkaTransactionLostError,
    KafkaTxn,
    check_transaction_timeout,
)
from onceflow.connectors.kafka.source import KafkaRecord, KafkaSource, KafkaSplit
from onceflow.errors import ConfigurationError

__all__ = [
    "DEFAULT_TRANSACTION_TIMEOUT_MS",
    "KafkaPlainSink",
    "KafkaRecord",
    "KafkaSink",
    "KafkaSource",
    "KafkaSplit",
    "KafkaTransactionLostError",
    "KafkaTransactionalSink",
    "KafkaTxn",
    "abort_lingering",
    "check_transaction_timeout",
    "list_lingering",
]


def KafkaSink(bootstrap_servers: str, topic: str, *,
              guarantee: str = "exactly_once", transactional_id_prefix: str | None = None,
              key: Callable[[Any], Any] | None = None,
              partition: Callable[[Any], int | None] | None = None,
              serializer: str | Callable[[Any], Any] = "bytes",
              key_serializer: str | Callable[[Any], Any] = "bytes",
              headers: Callable[[Any], Any] | None = None,
              transaction_timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS,
              producer_config: dict[str, Any] | None = None,
              operation_timeout: float = 60.0,
              on_lost_transaction: str = "fail") -> KafkaTransactionalSink | KafkaPlainSink:
    """A sink writing each record to ``topic``.

    ``guarantee``: ``"exactly_once"`` (Kafka transactions committed on checkpoint
    completion: read_committed consumers see each record once), ``"at_least_once"``
    (flushed on every checkpoint: nothing lost, duplicates after a failure) or ``"none"``.
    ``serializer``/``key_serializer``: ``"bytes"``, ``"str"``, ``"json"`` or a function
    returning ``bytes``/``str``; ``key``: a function giving the record's key (the default
    partitioner hashes it); ``partition``: a function giving an explicit partition;
    ``headers``: a function giving a list of ``(name, bytes)``.
    ``transactional_id_prefix``: default ``onceflow-{flow name}-{sink uid}-{hash of the
    checkpoint location}``, kept in the checkpoints (a restore goes on with it); ids are
    ``{prefix}-{subtask}-{slot}``. One you give must be unique per running job and stable
    across restarts: a producer fenced by another job's fails the job naming the id.
    ``transaction_timeout_ms`` must be at most the brokers' ``transaction.max.timeout.ms``
    (checked at start) and well above checkpoint interval + checkpoint timeout + restart
    time.
    ``producer_config``: librdkafka settings of the producers; its connection settings
    (``security.protocol``, ``sasl.*``, ``ssl.*``, ``client.id``, ...) also go to every other
    client of the sink (docs/kafka.md#secured-clusters).
    ``on_lost_transaction``: what happens when a transaction that a completed checkpoint
    covers turns out aborted by the broker (it outlived ``transaction_timeout_ms``, e.g.
    during a long outage) so that its output is lost: ``"fail"`` (default) fails the job
    with :class:`KafkaTransactionLostError`; ``"continue"`` logs the same error (event
    ``kafka_transaction_lost``), counts it and carries on."""
    if guarantee not in GUARANTEES:
        raise ConfigurationError(f"KafkaSink: guarantee={guarantee!r}; use one of {GUARANTEES}")
    if guarantee == "exactly_once":
        return KafkaTransactionalSink(
            bootstrap_servers, topic, transactional_id_prefix=transactional_id_prefix, key=key,
            partition=partition, serializer=serializer, key_serializer=key_serializer,
            headers=headers, transaction_timeout_ms=transaction_timeout_ms,
            producer_config=producer_config, operation_timeout=operation_timeout,
            on_lost_transaction=on_lost_transaction)
    return KafkaPlainSink(bootstrap_servers, topic, guarantee=guarantee, key=key,
                          partition=partition, serializer=serializer,
                          key_serializer=key_serializer, headers=headers,
                          producer_config=producer_config, operation_timeout=operation_timeout)


def list_lingering(bootstrap_servers: str, prefix: str, *,
                   config: dict[str, Any] | None = None) -> list[tuple[str, int, str]]:
    """(transactional id, producer id, state) of every transactional id
    ``{prefix}-{subtask}-{slot}`` the cluster knows. ``config``: client settings to connect
    with (the sink's ``producer_config``: ``security.protocol``, ``sasl.*``, ``ssl.*``)."""
    pat = re.compile(rf"^{re.escape(prefix)}-\d+-\d+$")
    with _kp.TxnClient(bootstrap_servers, config=config) as c:
        found = c.list_transactions(_brokers(bootstrap_servers, config=config))
    return sorted(t for t in found if pat.match(t[0]))


def abort_lingering(bootstrap_servers: str, prefix: str, *, timeout: float = 60.0,
                    config: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """For a job that will not be restarted: abort every open transaction of the sink with
    transactional id prefix ``prefix`` (so read_committed consumers are not held back until
    the transaction timeout) and fence its producers. Returns ``[(id, state before)]``.

    Warning: a transaction pre-committed for a completed checkpoint whose commit was cut off
    by a crash is aborted too; restart the job (``restore="latest"``) instead to commit it.
    ``config``: as for :func:`list_lingering` (the producers get its connection settings)."""
    ck = _import_kafka()
    found = list_lingering(bootstrap_servers, prefix, config=config)
    conn = _connection_config(config)
    errors: list[BaseException] = []

    def init(tid: str) -> None:
        try:
            from onceflow.connectors.kafka import client_config, serve_logs

            p = ck.Producer(client_config({**conn, "bootstrap.servers": bootstrap_servers,
                                           "transactional.id": tid}, "sink"))
            try:
                p.init_transactions(timeout)
            finally:
                serve_logs(p)
                p.close()  # here, never by the garbage collector freeing a traceback
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=init, args=(t[0],), daemon=True) for t in found]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return [(tid, state) for tid, _pid, state in found]
