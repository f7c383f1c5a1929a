"""Kafka helpers shared by test modules that need the real broker (``scripts/kafka``):
:func:`start_broker` (behind the ``bootstrap`` fixture of tests/conftest.py) and
:func:`new_topic`."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent


def start_broker() -> str:
    """The broker's bootstrap address, starting it if needed; a broker that cannot start
    fails the test, never skips it."""
    proc = subprocess.run([str(ROOT / "scripts" / "kafka"), "start"], capture_output=True,
                          text=True, timeout=180)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"scripts/kafka start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def new_topic(bootstrap: str, partitions: int, prefix: str = "t") -> str:
    """A fresh topic ``<prefix>-<random>`` with ``partitions`` partitions, once the broker
    reports all of them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return create_topic(admin, f"{prefix}-{uuid.uuid4().hex[:8]}", partitions)


def create_topic(admin: AdminClient, name: str, partitions: int) -> str:
    """Create topic ``name``; return it once the broker reports all its partitions."""
    admin.create_topics([NewTopic(name, num_partitions=partitions,
                                  replication_factor=1)])[name].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        t = admin.list_topics(topic=name, timeout=30).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return name
        assert time.monotonic() < deadline, f"topic {name} not ready"
        time.sleep(0.1)
