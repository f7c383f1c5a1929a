"""The tests' topic registry (tests/kafka_util.py TOPICS, emptied by tests/conftest.py at
the session's end) against the real broker: it deletes exactly the topics it recorded
(also those something else created under a name it handed out), leaves every other
topic alone, and names what it could not delete."""

from __future__ import annotations

import socket
import time

import confluent_kafka as ck  # a missing client must fail the suite, not skip it
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_util import TOPICS, TopicRegistry, new_topic, topic_name


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics)


def _create(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=30)


def test_the_helpers_record_what_they_hand_out(bootstrap: str) -> None:
    made = new_topic(bootstrap, 1, "reg")
    named = topic_name(bootstrap, "reg-named")
    assert {made, named} <= TOPICS.recorded()[bootstrap]
    assert made in _topics(bootstrap) and named not in _topics(bootstrap)


def test_delete_all_removes_exactly_the_recorded_topics(bootstrap: str) -> None:
    reg = TopicRegistry()
    created = reg.record(bootstrap, topic_name(bootstrap, "reg-made"))
    _create(bootstrap, created)
    # a name handed out, the topic made by a producer's auto-create
    auto = reg.record(bootstrap, topic_name(bootstrap, "reg-auto"))
    p = ck.Producer({"bootstrap.servers": bootstrap})
    p.produce(auto, b"x")
    assert p.flush(30) == 0
    never = reg.record(bootstrap, topic_name(bootstrap, "reg-never"))  # never created
    other = topic_name(bootstrap, "reg-other")  # another session's: not in reg
    _create(bootstrap, other)
    assert {created, auto, other} <= _topics(bootstrap)

    assert reg.delete_all() == []
    assert reg.recorded() == {}
    deadline = time.monotonic() + 30
    while {created, auto} & _topics(bootstrap):
        assert time.monotonic() < deadline, f"still there: {({created, auto} & _topics(bootstrap))}"
        time.sleep(0.2)
    assert other in _topics(bootstrap) and never not in _topics(bootstrap)


def test_what_cannot_be_deleted_is_named(bootstrap: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    reg = TopicRegistry()
    conf = {"bootstrap.servers": closed, "log_level": 0}  # (no connect-refused lines)
    reg.record(conf, "gone-1")
    reg.record(conf, "gone-2")
    left = reg.delete_all(timeout=3)
    assert len(left) == 2 and all(x.startswith(f"{closed}/gone-") for x in left), left
    assert reg.recorded() == {closed: {"gone-1", "gone-2"}}
    reg.forget(closed)
    assert reg.recorded() == {} and reg.delete_all() == []
