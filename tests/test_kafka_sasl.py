"""Kafka clusters that need authentication: a broker of this module's own whose only client
listener is SASL_PLAINTEXT (SASL/PLAIN, tests/brokers.py ``SaslBroker``). The security
settings are given once per connector (``consumer_config`` / ``producer_config``), and every
client onceflow makes for it must use them: the shared admin client (metadata, offsets, the
broker's transaction limit), the consumer of committed group offsets, the readers, the
transactional producers and the wire-protocol client of the commit protocol."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka as ck  # a missing dependency fails the suite, never skips it
import kafkajobs
import pytest
from brokers import SaslBroker
from jobproc import JobProcess
from kafka_util import new_topic, topic_name

import onceflow as of
from onceflow.connectors.kafka import _common
from onceflow.connectors.kafka import protocol as kp
from onceflow.connectors.kafka._common import connection_config, shared_admin
from onceflow.errors import ConfigurationError, KafkaProtocolError
from onceflow.kafka import KafkaSink, KafkaSource

N = 120
PARTITIONS = 2


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    b = SaslBroker(tmp_path_factory.mktemp("kafka-sasl") / "broker")
    b.start()
    try:
        yield b
    finally:
        b.remove()


def _conf(broker: SaslBroker, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": broker.bootstrap, **broker.client_config, **extra}


def _topic(broker: SaslBroker, prefix: str, partitions: int = PARTITIONS) -> str:
    return new_topic(_conf(broker), partitions, prefix)


def _fill(broker: SaslBroker, topic: str, n: int) -> None:
    p = ck.Producer(_conf(broker, **{"linger.ms": 5}))
    for i in range(n):
        p.produce(topic, json.dumps({"id": i}).encode(), partition=i % PARTITIONS)
    assert p.flush(30) == 0


def _read_committed(broker: SaslBroker, topic: str, partitions: int = PARTITIONS
                    ) -> list[Any]:
    """Every value a read_committed consumer sees in ``topic``, up to its end."""
    return [v for _, _, v in _committed_records(broker, topic, partitions)]


def _committed_records(broker: SaslBroker, topic: str, partitions: int
                       ) -> list[tuple[int, int, Any]]:
    """(partition, offset, value) of every record a read_committed consumer sees in
    ``topic``, up to the end of every partition (asserted within 30 s)."""
    c = ck.Consumer(_conf(broker, **{"group.id": f"check-{uuid.uuid4().hex[:6]}",
                                     "isolation.level": "read_committed",
                                     "enable.partition.eof": True,
                                     "auto.offset.reset": "earliest"}))
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in range(partitions)])
    out: list[tuple[int, int, Any]] = []
    eof: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(eof) < partitions:
            assert time.monotonic() < deadline, f"{topic}: no end after 30 s ({len(out)} read)"
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().code() == ck.KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise ck.KafkaException(m.error())
            eof.discard(m.partition())
            out.append((m.partition(), m.offset(), json.loads(m.value())))
    finally:
        c.close()
    return out


def _job(tmp: Path, src: KafkaSource, out: str, name: str, bootstrap: str,
         conf: dict[str, Any]) -> Any:
    flow = of.Flow(name, parallelism=2)
    flow.enable_checkpointing(0.2, tmp / "ckpt")
    (flow.source(src, name="in")
         .map(lambda r: {"id": r["id"], "twice": 2 * r["id"]})
         .sink(KafkaSink(bootstrap, out, serializer="json", producer_config=conf),
               name="out"))
    return flow.run()


@pytest.mark.parametrize("tls", [False, True], ids=["SASL_PLAINTEXT", "SASL_SSL"])
def test_exactly_once_job_on_a_sasl_cluster(broker: SaslBroker, tmp_path: Path,
                                            tls: bool) -> None:
    bootstrap, conf = ((broker.tls_bootstrap, broker.tls_client_config) if tls
                       else (broker.bootstrap, broker.client_config))
    src_topic, out = _topic(broker, "in"), _topic(broker, "out")
    _fill(broker, src_topic, N)
    src = KafkaSource(bootstrap, [src_topic], stop_at="end", deserializer="json",
                      value_only=True, consumer_config=conf)
    flow = f"sasl-{uuid.uuid4().hex[:6]}"
    result = _job(tmp_path, src, out, flow, bootstrap, conf)
    assert result.records_in("out") == N
    got = _read_committed(broker, out)
    assert sorted(r["id"] for r in got) == list(range(N))
    assert all(r["twice"] == 2 * r["id"] for r in got)
    # the sink's transactions, through the wire-protocol client over SASL too: committed
    with kp.TxnClient(bootstrap, config=conf) as tc:
        found = [t for t in tc.list_transactions() if t[0].startswith(f"onceflow-{flow}-")]
    assert found, "no transactional id of the job's sink listed"
    assert all(state in ("Empty", "CompleteCommit") for _tid, _pid, state in found), found


def test_committed_start_on_a_sasl_cluster(broker: SaslBroker, tmp_path: Path) -> None:
    src_topic, out = _topic(broker, "in"), _topic(broker, "out")
    _fill(broker, src_topic, N)
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = ck.Consumer(_conf(broker, **{"group.id": group}))
    c.commit(offsets=[ck.TopicPartition(src_topic, 0, 20), ck.TopicPartition(src_topic, 1, 35)],
             asynchronous=False)
    c.close()
    src = KafkaSource(broker.bootstrap, [src_topic], group_id=group, start="committed",
                      stop_at="end", deserializer="json", value_only=True,
                      consumer_config=broker.client_config)
    _job(tmp_path, src, out, f"sasl-{uuid.uuid4().hex[:6]}", broker.bootstrap,
         broker.client_config)
    want = sorted(i for i in range(N) if (i % 2 == 0 and i // 2 >= 20)
                  or (i % 2 == 1 and i // 2 >= 35))
    assert sorted(r["id"] for r in _read_committed(broker, out)) == want


def test_wrong_password_is_a_clear_error_without_the_password(
        broker: SaslBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="onceflow")
    wrong = "Wr0ng-pa55word-of-the-test"
    bad = {**broker.client_config, "sasl.password": wrong}
    src_topic, out = _topic(broker, "in"), _topic(broker, "out")
    t0 = time.monotonic()
    src = KafkaSource(broker.bootstrap, [src_topic], stop_at="end", consumer_config=bad)
    flow = of.Flow("sasl-bad", parallelism=1)
    flow.enable_checkpointing(0.2, tmp_path / "ckpt")
    flow.source(src, name="in").sink(KafkaSink(broker.bootstrap, out, producer_config=bad))
    with pytest.raises(ConfigurationError) as ei:
        flow.run()
    took = time.monotonic() - t0
    msg = str(ei.value)
    assert broker.bootstrap in msg and "authentication failed" in msg.lower(), msg
    assert broker.USER in msg, msg  # which user, never the password
    assert took < 15, f"the error came after {took:.1f} s"
    # the sink alone (its own admin client: the broker's transaction limit)
    with pytest.raises(ConfigurationError) as ei2:
        KafkaSink(broker.bootstrap, out, producer_config=bad).validate()
    assert "authentication failed" in str(ei2.value).lower(), str(ei2.value)
    # the wire-protocol client of the commit protocol
    with pytest.raises(KafkaProtocolError) as ei3:
        with kp.TxnClient(broker.bootstrap, config=bad) as tc:
            tc.list_transactions()
    assert "authentication failed" in str(ei3.value).lower() and \
        broker.bootstrap in str(ei3.value), str(ei3.value)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "uthentication" in logged  # librdkafka's own line, through onceflow's logger
    outerr = capfd.readouterr()
    assert "|FAIL|" not in outerr.err  # librdkafka's own stderr lines: none, all logged
    for text in (msg, str(ei2.value), str(ei3.value), logged, outerr.out, outerr.err):
        assert wrong not in text and broker.PASSWORD not in text


def test_a_certificate_not_trusted_is_a_clear_error(broker: SaslBroker) -> None:
    """SASL_SSL without the test CA: the broker's certificate is not trusted. The shared
    admin client and the commit protocol's client both say so at once, naming the broker."""
    conf = {k: v for k, v in broker.tls_client_config.items() if k != "ssl.ca.location"}
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError, match="authentication failed") as ei:
        KafkaSink(broker.tls_bootstrap, "t", producer_config=conf).validate()
    assert broker.tls_bootstrap in str(ei.value) and "certificate" in str(ei.value).lower()
    with pytest.raises(KafkaProtocolError, match=r"authentication failed.*TLS") as ei2:
        with kp.TxnClient(broker.tls_bootstrap, config=conf) as tc:
            tc.list_transactions()
    assert broker.tls_bootstrap in str(ei2.value) and "certificate" in str(ei2.value).lower()
    assert time.monotonic() - t0 < 15
    for text in (str(ei.value), str(ei2.value)):
        assert broker.PASSWORD not in text


def test_no_credentials_fails_clearly(broker: SaslBroker) -> None:
    """A client without the security settings talks PLAINTEXT to a SASL listener: the
    broker hangs up. Not authentication, but it must not hang for the timeout either."""
    src = KafkaSource(broker.bootstrap, ["x"], timeout=5.0)
    with pytest.raises(ConfigurationError) as ei:
        src.validate()
    assert broker.bootstrap in str(ei.value)


def test_shared_admin_is_per_connection_settings(broker: SaslBroker,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # sharing, not expiry (test_kafka_clients_gc.py): on a loaded machine the calls below
    # can take longer than the 10 s a shared client serves new calls
    monkeypatch.setattr(_common, "SHARED_ADMIN_TTL_S", 600.0)
    good = broker.client_config
    a = shared_admin(broker.bootstrap, good)
    assert shared_admin(broker.bootstrap, {**good, "linger.ms": 3}) is a  # not a connection one
    other = shared_admin(broker.bootstrap, {**good, "client.id": "another"})
    assert other is not a
    assert shared_admin(broker.bootstrap) is not a
    # credentials the broker refuses: never the shared client of the right ones, and not
    # kept either (the next call tries again, and fails again)
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="authentication failed"):
            shared_admin(broker.bootstrap, {**good, "sasl.password": "other"})
    assert shared_admin(broker.bootstrap, good) is a
    del a, other


def test_only_connection_settings_reach_the_admin_client(
        broker: SaslBroker, caplog: pytest.LogCaptureFixture) -> None:
    conf = {**broker.client_config, "client.id": "mine", "socket.keepalive.enable": True,
            "fetch.min.bytes": 10, "isolation.level": "read_committed",
            "linger.ms": 7, "acks": "all", "client.dns.lookup": "use_all_dns_ips"}
    conn = connection_config(conf)
    assert conn == {**broker.client_config, "client.id": "mine",
                    "socket.keepalive.enable": True, "client.dns.lookup": "use_all_dns_ips"}
    caplog.set_level(logging.INFO, logger="onceflow.kafka")
    admin = shared_admin(broker.bootstrap, conf)
    admin.list_topics(timeout=10)
    time.sleep(0.2)
    admin.poll(0)
    warned = [r.getMessage() for r in caplog.records if "CONFWARN" in r.getMessage()]
    assert not warned, warned
    del admin


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_logins_of_the_commit_protocols_client(broker: SaslBroker,
                                                     mechanism: str) -> None:
    user = f"scram-{mechanism[-3:]}-{uuid.uuid4().hex[:4]}"
    conf = broker.add_scram_user(mechanism, user, "scram,pa=ss-" + mechanism)
    deadline = time.monotonic() + 20
    while True:  # the credential reaches the broker's cache through the metadata log
        try:
            with kp.TxnClient(broker.bootstrap, config=conf) as tc:
                assert isinstance(tc.list_transactions(), list)
            break
        except KafkaProtocolError as e:
            assert time.monotonic() < deadline, str(e)
            time.sleep(0.2)
    # and the librdkafka clients with the same settings (the shared admin client)
    assert shared_admin(broker.bootstrap, conf).list_topics(timeout=10).brokers
    with pytest.raises(KafkaProtocolError, match="authentication failed") as ei:
        with kp.TxnClient(broker.bootstrap, config={**conf, "sasl.password": "nope"}) as tc:
            tc.list_transactions()
    assert user in str(ei.value) and "nope" not in str(ei.value)


def test_unsupported_mechanism_is_refused_when_the_sink_is_made(broker: SaslBroker) -> None:
    with pytest.raises(ConfigurationError, match=r"sasl\.mechanism=GSSAPI"):
        KafkaSink(broker.bootstrap, "t", producer_config={"security.protocol": "sasl_ssl"})
    # at-least-once needs no commit protocol: librdkafka alone decides
    KafkaSink(broker.bootstrap, "t", guarantee="at_least_once",
              producer_config={"security.protocol": "sasl_ssl"})


def test_nexmark_prefill_on_a_sasl_cluster(broker: SaslBroker) -> None:
    from onceflow.nexmark import NexmarkConfig, prefill_kafka

    topic = topic_name(_conf(broker), "nexmark")  # prefill_kafka creates it
    assert prefill_kafka(broker.bootstrap, topic, NexmarkConfig(events=40), partitions=2,
                         client_config=broker.client_config) == 40
    assert len(_read_committed(broker, topic)) == 40


_CHILD = """
import json, sys
import confluent_kafka as ck
conf, tid, topic = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
p = ck.Producer({**conf, "transactional.id": tid})
p.init_transactions(30)
p.begin_transaction()
p.produce(topic, json.dumps({"id": "pending"}).encode())
assert p.flush(30) == 0
print(json.dumps({"open": tid}), flush=True)
sys.stdin.read()
"""


def test_abort_lingering_cli_with_a_command_config(broker: SaslBroker, tmp_path: Path) -> None:
    topic, prefix = _topic(broker, "al", 1), f"al-{uuid.uuid4().hex[:6]}"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(_conf(broker)), f"{prefix}-0-0", topic],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        json.loads(child.stdout.readline())
    finally:
        child.kill()  # SIGKILL: its transaction stays open
        child.wait()
    props = tmp_path / "client.properties"
    props.write_text("# the cluster's client settings\n" + "".join(
        f"{k}={v}\n" for k, v in broker.client_config.items()))

    def cli(action: str) -> subprocess.CompletedProcess[str]:
        exe = str(Path(sys.executable).with_name("onceflow"))  # the console script
        return subprocess.run([exe, "kafka", action,
                               "--bootstrap", broker.bootstrap, "--prefix", prefix,
                               "--command-config", str(props)],
                              capture_output=True, text=True, timeout=120)

    listed = cli("list")
    assert listed.returncode == 0 and f"{prefix}-0-0" in listed.stdout and \
        "Ongoing" in listed.stdout, listed.stdout + listed.stderr
    aborted = cli("abort-lingering")
    assert aborted.returncode == 0 and f"{prefix}-0-0" in aborted.stdout, aborted.stderr
    assert "Ongoing" not in cli("list").stdout
    assert _read_committed(broker, topic, 1) == []
    props.write_text("security.protocol\n")
    bad = cli("list")
    assert bad.returncode == 2 and f"{props}, line 1" in bad.stderr, bad.stderr


def test_security_settings_of_the_commit_protocols_client() -> None:
    sec = kp.Security.from_config({"security.protocol": "sasl_ssl", "sasl.mechanisms": "plain",
                                   "sasl.username": "u", "sasl.password": "pw-secret-1",
                                   "ssl.key.password": "pw-secret-2"})
    assert (sec.protocol, sec.mechanism, sec.sasl, sec.tls) == ("SASL_SSL", "PLAIN", True, True)
    assert "pw-secret" not in repr(sec)
    assert not kp.Security.from_config(None).sasl
    with pytest.raises(ConfigurationError, match="OAUTHBEARER is not supported"):
        kp.Security.from_config({"security.protocol": "sasl_plaintext",
                                 "sasl.mechanism": "OAUTHBEARER"})
    with pytest.raises(ConfigurationError, match=r"needs sasl\.username"):
        kp.Security.from_config({"security.protocol": "sasl_plaintext",
                                 "sasl.mechanism": "SCRAM-SHA-256"})
    with pytest.raises(ConfigurationError, match=r"ssl\.keystore\.location is not supported"):
        kp.Security.from_config({"security.protocol": "ssl", "ssl.keystore.location": "k.p12"})
    with pytest.raises(ConfigurationError, match=r"security\.protocol=tls"):
        kp.Security.from_config({"security.protocol": "tls"})
    off = kp.Security.from_config({"security.protocol": "ssl",
                                   "enable.ssl.certificate.verification": False})
    assert not off.ssl_context().check_hostname


def test_recovery_commit_of_a_dead_producers_transaction_over_sasl(broker: SaslBroker) -> None:
    """The sink's recovery commit (EndTxn with the recorded producer id and epoch, through
    its own protocol client) on the secured cluster: a SIGKILLed producer's flushed
    transaction becomes visible, once."""
    from onceflow.kafka import KafkaTxn

    topic, prefix = _topic(broker, "rc", 1), f"rc-{uuid.uuid4().hex[:6]}"
    tid = f"{prefix}-0-0"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(_conf(broker)), tid, topic],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
    with kp.TxnClient(broker.bootstrap, config=broker.client_config) as tc:
        d = tc.describe(tid)
    assert d.state == "Ongoing"
    assert _read_committed(broker, topic, 1) == []
    sink = KafkaSink(broker.bootstrap, topic, transactional_id_prefix=prefix,
                     producer_config=broker.client_config)
    sink._prefix = prefix
    sink.commit_recovered(KafkaTxn(tid, 0, d.producer_id, d.producer_epoch, 1,
                                   start_ms=d.start_ms, checkpoint=1))
    deadline = time.monotonic() + 10
    while not (got := _read_committed(broker, topic, 1)) and time.monotonic() < deadline:
        time.sleep(0.1)  # (the commit markers are written after EndTxn answers)
    assert got == [{"id": "pending"}]


class _SaslJob(JobProcess):
    """tests/kafkajobs.py (Kafka -> keyed running total -> Kafka, exactly once) on the
    SASL listener, the client settings given once (``--client-config``)."""

    def __init__(self, tmp: Path, broker: SaslBroker, records: int) -> None:
        super().__init__(tmp)
        self.broker, self.records = broker, records
        self.input, self.output = _topic(broker, "kin", 4), _topic(broker, "kout", 4)
        p = ck.Producer(_conf(broker, **{"linger.ms": 5}))
        for i in range(records):
            p.produce(self.input, json.dumps(kafkajobs.make_input(i)).encode(),
                      partition=i % 4)
        assert p.flush(30) == 0

    def command(self) -> list[str]:
        return [str(Path(__file__).with_name("kafkajobs.py")), "--bootstrap",
                self.broker.bootstrap, "--input", self.input, "--output", self.output,
                "--ckpt", str(self.tmp / "ckpt"), "--interval", "0.3", "--rate", "1500",
                "--client-config", json.dumps(self.broker.client_config)]

    def committed(self) -> list[tuple[int, int, Any]]:
        return _committed_records(self.broker, self.output, 4)


@pytest.mark.parametrize("point", ["sink.before_commit@checkpoint=3,subtask=1",
                                   "sink.after_pre_commit@checkpoint=3,subtask=0"])
def test_worker_killed_in_the_commit_protocol_on_a_sasl_cluster(
        broker: SaslBroker, tmp_path: Path, point: str) -> None:
    """A worker SIGKILLed between a checkpoint and its commit (or just after its
    pre-commit): the restart's recovery commit / lingering abort go through the sink's
    clients with the SASL settings, and a read_committed consumer sees each input's
    effect exactly once."""
    token = tmp_path / "fault-fired"
    job = _SaslJob(tmp_path, broker, 3000)
    job.start(env={"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)})
    code, result = job.wait(timeout=180)
    assert token.exists(), f"fault {point} never fired\n{job.tail()}"
    assert code == 0, job.tail()
    assert result is not None and result["restarts"] == 1, result
    problems = kafkajobs.check_output(job.committed(), job.records)
    assert not problems, "\n".join(problems[:20])
    assert broker.PASSWORD not in job.tail(100_000)  # the job's whole log


def test_a_secured_cluster_that_cannot_be_reached_costs_no_extra_wait() -> None:
    """The first call of a new secured admin client (the credentials check) gives up soon
    on a refused connection (it waits at most a second for an authentication error that
    may follow "all brokers down"): the error is the call's own, as without security."""
    from brokers import free_port

    from onceflow.connectors.kafka._common import brokers

    closed = f"127.0.0.1:{free_port()}"
    conf = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": "u", "sasl.password": "not-logged-1234"}
    t0 = time.monotonic()
    with pytest.raises(ck.KafkaException):
        brokers(closed, timeout=1.0, config=conf)
    assert time.monotonic() - t0 < 5.0
