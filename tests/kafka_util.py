"""Kafka helpers shared by test modules that need the real broker (``scripts/kafka``):
:func:`start_broker` (behind the ``bootstrap`` fixture of tests/conftest.py), and the
topic helpers :func:`topic_name`, :func:`new_topic` and :func:`create_topic`.

Every topic a test makes goes through :data:`TOPICS`, which records its name, and
tests/conftest.py deletes the recorded topics at the end of the pytest session (each
xdist worker its own, so a session never deletes a concurrent session's topics). A topic
that something else creates (a producer's auto-create, ``prefill_kafka``, a sink creating
its output) is recorded by taking its name from :func:`topic_name`."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent

Client = str | dict[str, Any]
"""A broker to talk to: its bootstrap address, or a whole client config (e.g. SASL)."""


def start_broker() -> str:
    """The broker's bootstrap address, starting it if needed; a broker that cannot start
    fails the test, never skips it."""
    proc = subprocess.run([str(ROOT / "scripts" / "kafka"), "start"], capture_output=True,
                          text=True, timeout=180)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"scripts/kafka start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _conf(client: Client) -> dict[str, Any]:
    return {"bootstrap.servers": client} if isinstance(client, str) else dict(client)


class TopicRegistry:
    """The topics this process (one pytest session, or one xdist worker of it) made, per
    broker, so that :meth:`delete_all` removes exactly those and nobody else's."""

    def __init__(self) -> None:
        self._topics: dict[str, tuple[dict[str, Any], set[str]]] = {}

    def record(self, client: Client, name: str) -> str:
        conf = _conf(client)
        entry = self._topics.setdefault(conf["bootstrap.servers"], (conf, set()))
        entry[1].add(name)
        return name

    def recorded(self) -> dict[str, set[str]]:
        """{bootstrap: names} of what is still to delete."""
        return {b: set(names) for b, (_, names) in self._topics.items() if names}

    def forget(self, bootstrap: str) -> None:
        """Drop a broker's topics from the registry: the broker went away with them (a
        throwaway broker of tests/brokers.py, removed with its data dir)."""
        self._topics.pop(bootstrap, None)

    def delete_all(self, timeout: float = 60.0) -> list[str]:
        """Delete every recorded topic; returns ``"bootstrap/topic: why"`` for each that
        could not be deleted (a name handed out but never created is not an error)."""
        left: list[str] = []
        for bootstrap, (conf, names) in list(self._topics.items()):
            if not names:
                continue
            try:
                admin = AdminClient({**conf, "socket.timeout.ms": 10_000})
                futures = admin.delete_topics(sorted(names), operation_timeout=timeout,
                                              request_timeout=timeout)
            except Exception as e:  # reported by name, never raised
                left += [f"{bootstrap}/{n}: {e}" for n in sorted(names)]
                continue
            for name, fut in futures.items():
                try:
                    fut.result(timeout=timeout + 10)
                except KafkaException as e:
                    if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        left.append(f"{bootstrap}/{name}: {e.args[0].str()}")
                        continue
                except Exception as e:  # a timeout: reported by name
                    left.append(f"{bootstrap}/{name}: {e!r}")
                    continue
                names.discard(name)
        return left


TOPICS = TopicRegistry()
"""This process's topics (deleted at the session's end by tests/conftest.py)."""


def topic_name(client: Client, prefix: str = "t") -> str:
    """A fresh, recorded topic name ``<prefix>-<random>`` on ``client``'s broker, for a
    topic that something other than :func:`create_topic` creates."""
    return TOPICS.record(client, f"{prefix}-{uuid.uuid4().hex[:8]}")


def new_topic(client: Client, partitions: int, prefix: str = "t") -> str:
    """A fresh topic ``<prefix>-<random>`` with ``partitions`` partitions, once the broker
    reports all of them."""
    return create_topic(client, topic_name(client, prefix), partitions)


def create_topic(client: Client, name: str, partitions: int,
                 config: dict[str, str] | None = None) -> str:
    """Create (and record) topic ``name``; return it once the broker reports all its
    partitions."""
    TOPICS.record(client, name)
    admin = AdminClient(_conf(client))
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                  config=config or {})])[name].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        t = admin.list_topics(topic=name, timeout=30).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return name
        assert time.monotonic() < deadline, f"topic {name} not ready"
        time.sleep(0.1)
