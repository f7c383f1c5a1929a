"""Kafka connector settings that would break exactly-once, or lose an input without a
word, are refused with an error naming them; errors name the topic and, for a key that does
not decode, the key deserializer. A real broker (tests/conftest.py)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import confluent_kafka as ck
import pytest
from kafka_util import create_topic, new_topic, topic_name

import onceflow as of
from onceflow.kafka import KafkaSink, KafkaSource


@pytest.mark.parametrize(("setting", "match"), [
    ({"isolation.level": "read_uncommitted"}, r"isolation\.level='read_uncommitted' would "
                                              r"break exactly-once"),
    ({"enable.auto.commit": True}, r"enable\.auto\.commit=True would break"),
    ({"enable.auto.commit": "true"}, r"enable\.auto\.commit='true' would break"),
    ({"bootstrap.servers": "x:1"}, r"set bootstrap\.servers through the KafkaSource"),
    ({"group.id": "g"}, r"set group\.id through the KafkaSource arguments")])
def test_consumer_settings_that_break_exactly_once_are_refused(setting: dict[str, object],
                                                               match: str) -> None:
    """consumer_config came last and won: isolation.level=read_uncommitted passed records
    of aborted transactions on to the output."""
    with pytest.raises(of.ConfigurationError, match=match):
        KafkaSource("127.0.0.1:1", ["t"], consumer_config=setting)
    # the same values as the source's own are fine
    KafkaSource("127.0.0.1:1", ["t"], consumer_config={"isolation.level": "read_committed",
                                                       "enable.auto.commit": False})


def test_a_transaction_timeout_in_producer_config_is_refused() -> None:
    """It was silently replaced by transaction_timeout_ms (the default 15 min)."""
    with pytest.raises(of.ConfigurationError, match=r"transaction\.timeout\.ms through the "
                                                    r"KafkaSink argument transaction_timeout_ms"):
        KafkaSink("127.0.0.1:1", "t", producer_config={"transaction.timeout.ms": 5000})


def test_a_named_topic_that_does_not_exist_is_refused_when_others_do(bootstrap: str) -> None:
    """With one of two names misspelt the job ran and read only the other topic."""
    real = new_topic(bootstrap, 1, "cfg-real")
    typo = f"cfg-typo-{uuid.uuid4().hex[:8]}"
    with pytest.raises(of.ConfigurationError, match=rf"the topic\(s\) \['{typo}'\] \(of "
                                                    rf"\['{real}', '{typo}'\]\) do not exist"):
        KafkaSource(bootstrap, [real, typo], stop_at="end").validate()
    with pytest.raises(of.ConfigurationError, match=r"none of the topics"):
        KafkaSource(bootstrap, [typo], stop_at="end").validate()
    KafkaSource(bootstrap, [real, real], stop_at="end").validate()


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    p = ck.Producer({"bootstrap.servers": bootstrap})
    for k, v in records:
        p.produce(topic, v, k, partition=0)
    assert p.flush(30) == 0


def _run_to_failure(flow: of.Flow) -> str:
    with pytest.raises(of.JobFailedError) as err:
        flow.run()
    return str(err.value)


def test_a_key_that_does_not_decode_names_the_key_deserializer(bootstrap: str,
                                                               tmp_path: Path) -> None:
    """It named the value deserializer, which had decoded the value fine."""
    topic = new_topic(bootstrap, 1, "cfg-key")
    _produce(bootstrap, topic, [(b"ok", b'"a"'), (b"\xff\xfe", b'"b"')])
    flow = of.Flow("badkey", restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(5.0, tmp_path / "ck")
    (flow.source(KafkaSource(bootstrap, [topic], stop_at="end", deserializer="json",
                             key_deserializer="str"), name="src")
         .sink(of.sinks.Discard()))
    msg = _run_to_failure(flow)
    assert re.search(rf"cannot decode the key of topic '{topic}' partition 0 offset 1 with "
                     r"key_deserializer 'str': UnicodeDecodeError", msg), msg


def test_a_delivery_error_names_the_topic_and_what_to_change(bootstrap: str,
                                                             tmp_path: Path) -> None:
    out = create_topic(bootstrap, topic_name(bootstrap, "cfg-small"), 1,
                       {"max.message.bytes": "50000"})
    flow = of.Flow("toolarge", restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(5.0, tmp_path / "ck")
    (flow.source(of.sources.Collection([b"x" * 60_000]), name="src")
         .sink(KafkaSink(bootstrap, out), name="k"))
    msg = _run_to_failure(flow)
    assert f"Kafka producer of topic '{out}'" in msg, msg
    assert "larger than the topic's max.message.bytes" in msg, msg


def test_a_record_the_serializer_refuses_is_named_also_when_it_waited_for_the_producer(
        bootstrap: str, tmp_path: Path) -> None:
    """Records that wait for the transaction's producer (it starts in the background) are
    serialized later, at pre-commit here: the error named '<pre-commit of checkpoint 1>',
    not the record."""
    out = new_topic(bootstrap, 1, "cfg-ser")
    flow = of.Flow("unserializable", restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(5.0, tmp_path / "ck")
    records = [{"i": i} for i in range(50)] + [{"i": b"\x00bad"}]
    (flow.source(of.sources.Collection(records), name="src")
         .sink(KafkaSink(bootstrap, out, serializer="json"), name="k"))
    msg = _run_to_failure(flow)
    assert re.search(r"operator \"KafkaSink\('cfg-ser-\w+'\)\" raised TypeError: .*while "
                     r"processing record \{'i': b'\\x00bad'\}", msg), msg
