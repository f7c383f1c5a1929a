"""librdkafka's own log lines go to the ``onceflow.kafka.<component>`` loggers (never
straight to stderr), at their levels, one line per kind of trouble per interval instead of
twenty a second, and without a secret of the client's configuration in them.

Real clients of the real connectors, pointed at a closed port (nothing listens there, so
librdkafka logs its connection failures), and at the real broker where a client must
work as before."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from brokers import free_port
from confluent_kafka import KafkaException
from kafka_util import new_topic

import onceflow as of
from onceflow.connectors.kafka._common import brokers
from onceflow.connectors.kafka._logs import ClientLog, client_config, redacted
from onceflow.connectors.kafka.source import KafkaSplit
from onceflow.connectors.sinks import SinkContext
from onceflow.kafka import KafkaSink, KafkaSource

SECRET = "hunter2-not-for-logs"
SASL = {"security.protocol": "sasl_plaintext", "sasl.mechanism": "PLAIN",
        "sasl.username": "onceflow", "sasl.password": SECRET}


def _closed() -> str:
    return f"127.0.0.1:{free_port()}"


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def _no_librdkafka_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    err = capfd.readouterr().err
    # librdkafka's own stderr format: "%3|1700000000.123|FAIL|rdkafka#consumer-1| ..."
    assert "|FAIL|" not in err and "rdkafka#" not in err, err[-2000:]


def test_a_source_consumer_at_a_closed_port_logs_to_onceflow_kafka_source(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    addr = _closed()
    src = KafkaSource(addr, ["t"], timeout=1.0, consumer_config=dict(SASL))
    caplog.set_level(logging.DEBUG, logger="onceflow.kafka")
    with pytest.raises(KafkaException, match="Failed to get metadata"):
        src.reader(KafkaSplit(0, 1), {})
    lines = _lines(caplog, "onceflow.kafka.source")
    fails = [r for r in lines if "Connection refused" in r.getMessage()]
    assert fails, [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.WARNING for r in fails)  # the client retries by itself
    assert addr in fails[0].getMessage() and "rdkafka#consumer" in fails[0].getMessage()
    assert fails[0].facility == "FAIL"  # type: ignore[attr-defined]
    # 1 s of a refused connection: librdkafka logs ~20 of these; one, said once
    assert len(fails) == 1, [r.getMessage() for r in fails]
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    _no_librdkafka_on_stderr(capfd)


def test_the_shared_admin_client_logs_what_went_wrong_before_the_error(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    addr = _closed()
    caplog.set_level(logging.INFO, logger="onceflow.kafka")
    with pytest.raises(KafkaException, match=r"Timed out|DescribeCluster"):
        brokers(addr, timeout=1.0)
    fails = [r for r in _lines(caplog, "onceflow.kafka.admin")
             if "Connection refused" in r.getMessage()]
    assert fails and addr in fails[0].getMessage()
    _no_librdkafka_on_stderr(capfd)


def test_an_at_least_once_sink_producer_logs_to_onceflow_kafka_sink(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    sink = KafkaSink(_closed(), "t", guarantee="at_least_once", operation_timeout=1.0,
                     producer_config={**SASL, "debug": "conf"})
    caplog.set_level(logging.DEBUG, logger="onceflow.kafka")
    sink.open(SinkContext("f", "s", 0, 1, 0))
    sink.write([b"x"])
    with pytest.raises(of.ConnectorError, match="not delivered"):
        sink.finish()
    sink.close()
    lines = [r.getMessage() for r in _lines(caplog, "onceflow.kafka.sink")]
    assert any("Connection refused" in m for m in lines), lines
    # debug=conf: librdkafka lists the configuration at DEBUG, the password among it
    assert any("sasl.password" in m for m in lines), lines
    assert not any(SECRET in m for m in lines)
    _no_librdkafka_on_stderr(capfd)


def test_clients_still_work_with_the_logger(bootstrap: str, tmp_path: Path) -> None:
    topic = new_topic(bootstrap, 1, "logs")
    sink = KafkaSink(bootstrap, topic, guarantee="at_least_once", serializer="str")
    sink.open(SinkContext("f", "s", 0, 1, 0))
    sink.write([f"r{i}" for i in range(5)])
    sink.finish()
    sink.close()
    flow = of.Flow("logs")
    (flow.source(KafkaSource(bootstrap, [topic], stop_at="end", deserializer="str",
                             value_only=True))
         .sink(of.sinks.FileSink(str(tmp_path / "out"))))
    flow.run()
    assert sorted(of.sinks.read_committed(str(tmp_path / "out"))) == [f"r{i}" for i in range(5)]


def test_a_logger_of_the_users_config_is_kept() -> None:
    mine = logging.getLogger("my.kafka")
    conf = client_config({"bootstrap.servers": "x:1", "logger": mine}, "source")
    assert conf["logger"] is mine
    ours = client_config({"bootstrap.servers": "x:1"}, "source")["logger"]
    assert isinstance(ours, ClientLog) and ours.logger.name == "onceflow.kafka.source"


def test_secrets_of_the_config_never_reach_a_line(caplog: pytest.LogCaptureFixture) -> None:
    conf = {**SASL, "ssl.key.password": "k3y-pass", "sasl.oauthbearer.client.secret": "oh-s3"}
    log = client_config(conf, "sink")["logger"]
    caplog.set_level(logging.DEBUG, logger="onceflow.kafka.sink")
    log.log(40, "%s [%s] %s", "SASL", "rdkafka#producer-1",
            f"auth with {SECRET} / k3y-pass / oh-s3 failed")
    (msg,) = [r.getMessage() for r in caplog.records]
    assert SECRET not in msg and "k3y-pass" not in msg and "oh-s3" not in msg
    assert msg.count("[redacted]") == 3 and "rdkafka#producer-1" in msg
    # the helper for any config onceflow would show: secret values hidden, the rest kept
    shown = redacted(conf)
    assert shown["sasl.password"] == "[redacted]" and shown["ssl.key.password"] == "[redacted]"
    assert shown["sasl.username"] == "onceflow" and conf["sasl.password"] == SECRET


def test_repeats_are_said_once_per_interval_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = ClientLog("source", (), interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="onceflow.kafka.source")

    def say(text: str, level: int = 40, fac: str = "FAIL") -> None:
        log.log(level, "%s [%s] %s", fac, "rdkafka#consumer-1", text)

    for ms in range(29):  # the same failure, differing only in its numbers
        say(f"Connect to ipv4#127.0.0.1:9 failed (after {ms}ms in state CONNECT)")
        now[0] += 0.05
    say("Connect to ipv4#127.0.0.1:9 failed (after 0ms in state CONNECT, 4 identical "
        "error(s) suppressed)")  # librdkafka's own count
    say("a different line", fac="ERROR")
    now[0] = 111.0
    say("Connect to ipv4#127.0.0.1:9 failed (after 3ms in state CONNECT)")
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(msgs) == 3, msgs
    assert msgs[0][0] == "WARNING" and msgs[1] == (
        "ERROR", "librdkafka ERROR [rdkafka#consumer-1]: a different line")
    assert "(29 more like this in the last 11 s)" in msgs[2][1]


def test_levels_follow_librdkafkas() -> None:
    got: list[int] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.levelno)

    log = ClientLog("admin", (), clock=time.monotonic)
    log.logger.addHandler(h := Grab())
    old = log.logger.level
    log.logger.setLevel(logging.DEBUG)
    try:
        for i, level in enumerate((50, 40, 30, 20, 10)):
            log.log(level, "%s [%s] %s", "X", "rdkafka#producer-1", f"line {i}")
    finally:
        log.logger.removeHandler(h)
        log.logger.setLevel(old)
    assert got == [50, 40, 30, 20, 10]


def test_a_missing_key_file_is_named_not_lost_with_the_clients_log(tmp_path: Path) -> None:
    # librdkafka would say which file it could not open only in a log line of a client
    # that is never made (so never polled): onceflow names the setting and the file
    missing = str(tmp_path / "client.key")
    sink = KafkaSink(_closed(), "t", guarantee="at_least_once",
                     producer_config={"security.protocol": "ssl", "ssl.key.location": missing,
                                      "ssl.key.password": SECRET})
    with pytest.raises(of.ConfigurationError, match=r"ssl\.key\.location") as e:
        sink.open(SinkContext("f", "s", 0, 1, 0))
    assert missing in str(e.value) and "no such file" in str(e.value)
    assert SECRET not in str(e.value)
    src = KafkaSource(_closed(), ["t"], timeout=2.0,
                      consumer_config={"ssl.ca.location": str(tmp_path / "ca.pem")})
    with pytest.raises(of.ConfigurationError, match=r"KafkaSource: ssl\.ca\.location="):
        src.reader(KafkaSplit(0, 1), {})
