"""scripts/kafka prune and stop against a throwaway broker of this module (its own data
dir and ports, tests/brokers.py; the shared broker is never touched): prune deletes, through
the broker, exactly the topics whose newest segment is older than --older-than, says how
many and how big, and refuses bad arguments; stop shuts the broker down cleanly."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import confluent_kafka as ck  # a missing client must fail the suite, not skip it
import pytest
from brokers import KAFKA, OwnBroker
from confluent_kafka.admin import AdminClient
from kafka_util import new_topic


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    b = OwnBroker(tmp_path_factory.mktemp("kafka-script") / "broker")
    b.start()
    try:
        yield b
    finally:
        b.remove()


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics)


def test_prune_deletes_the_topics_without_a_recent_write(broker: OwnBroker) -> None:
    broker.start()  # (a no-op unless the stop test ran first)
    old_full, old_empty, fresh = (new_topic(broker.bootstrap, 2, p)
                                  for p in ("old-full", "old.empty", "fresh"))
    p = ck.Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce(old_full, b"x" * 100, partition=i % 2)
        p.produce(fresh, b"y", partition=i % 2)
    assert p.flush(30) == 0
    # the old topics' segments (and the metadata log: internal, never pruned) 72 h old
    data, past = broker.dir / "data", time.time() - 72 * 3600
    for d in data.iterdir():
        if d.name.startswith(("old-full-", "old.empty-", "__cluster_metadata-")):
            for f in d.iterdir():
                os.utime(f, (past, past))

    out = broker._run("prune", "--older-than", "48").stderr
    assert "deleted 2 topic(s) without a write for more than 48 h" in out, out
    assert old_full in out and old_empty in out and fresh not in out, out
    deadline = time.monotonic() + 30
    while {old_full, old_empty} & _topics(broker.bootstrap):
        assert time.monotonic() < deadline, _topics(broker.bootstrap)
        time.sleep(0.2)
    assert fresh in _topics(broker.bootstrap)

    again = broker._run("prune").stderr  # the default: 48 h
    assert "no topic without a write for more than 48 h" in again, again


def test_prune_refuses_a_bad_argument(broker: OwnBroker) -> None:
    broker.start()
    with pytest.raises(AssertionError, match="wants a number of hours, not 'soon'"):
        broker._run("prune", "--older-than", "soon")
    with pytest.raises(AssertionError, match="unknown argument '--young'"):
        broker._run("prune", "--young")


def test_stop_is_a_clean_shutdown(broker: OwnBroker) -> None:
    new_topic(broker.bootstrap, 1, "kept")
    out = broker._run("stop").stderr
    assert "stopped" in out and "SIGKILL" not in out, out
    assert "[BrokerServer id=1] shut down completed" in "".join(
        f.read_text(errors="replace") for f in (broker.dir / "logs").glob("server.log*"))
    status = subprocess.run([KAFKA, "status"], capture_output=True, text=True, env=broker.env)
    assert status.returncode == 1 and status.stdout.strip() == "not running", status
