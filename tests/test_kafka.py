"""Kafka end-to-end exactly-once against a real broker (``scripts/kafka``).

A Kafka → keyed running total → Kafka job (tests/kafkajobs.py: 4 input partitions,
parallelism 2, checkpoint every 0.5 s) runs as its own driver process; the tests SIGKILL
its workers at seeded random moments and at the named points of the commit protocol, or
the driver (then ``--restore latest``), and a read_committed consumer must see each input
id's effect exactly once (kafkajobs.check_output), nothing from aborted transactions, and
no transaction of the sink left open.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka as ck  # a missing dependency fails the suite, never skips it
import kafkajobs
import pytest
from confluent_kafka.admin import AdminClient
from jobproc import JobProcess, kill_randomly
from kafka_util import create_topic

from onceflow.connectors.kafka import protocol as kp
from onceflow.connectors.kafka._common import broker_config
from onceflow.errors import ConfigurationError
from onceflow.kafka import (
    KafkaSink,
    KafkaSource,
    KafkaTxn,
    abort_lingering,
    check_transaction_timeout,
    list_lingering,
)

ROOT = Path(__file__).resolve().parent.parent
JOB = str(Path(__file__).with_name("kafkajobs.py"))
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261127"))
N = 3000
PARTITIONS = 4


def _topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> str:
    return create_topic(bootstrap, name, partitions)  # (the bootstrap fixture: conftest.py)


def _fill(bootstrap: str, topic: str, n: int) -> None:
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        rec = kafkajobs.make_input(i)
        p.produce(topic, json.dumps(rec).encode(), key=str(i).encode(),
                  partition=i % PARTITIONS)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def read_committed(bootstrap: str, topic: str, *, settle: float = 1.0, timeout: float = 60.0,
                   decode: Any = json.loads, isolation: str = "read_committed"
                   ) -> list[tuple[int, int, Any]]:
    """Everything a read_committed consumer sees in ``topic``: [(partition, offset, value)].
    Waits until every partition's position reached its last stable offset."""
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                     "isolation.level": isolation, "enable.auto.commit": False,
                     "enable.partition.eof": True})
    md = c.list_topics(topic, timeout=30).topics[topic]
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in md.partitions])
    out: list[tuple[int, int, Any]] = []
    eof: set[int] = set()
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            if len(eof) == len(md.partitions):
                quiet_until = quiet_until or time.monotonic() + settle
                if time.monotonic() > quiet_until:
                    break
            continue
        if m.error():
            if m.error().code() == ck.KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                continue
            raise ck.KafkaException(m.error())
        eof.discard(m.partition())
        quiet_until = None
        out.append((m.partition(), m.offset(), decode(m.value())))
    c.close()
    return out


class KJob(JobProcess):
    def __init__(self, tmp: Path, bootstrap: str, *extra: str, records: int = N) -> None:
        super().__init__(tmp)
        self.bootstrap, self.records = bootstrap, records
        run = uuid.uuid4().hex[:8]
        self.input = _topic(bootstrap, f"in-{run}")
        self.output = _topic(bootstrap, f"out-{run}")
        self.prefix = f"kt-{run}"
        _fill(bootstrap, self.input, records)
        self.ckpt = tmp / "ckpt"
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [JOB, "--bootstrap", self.bootstrap, "--input", self.input,
                "--output", self.output, "--ckpt", str(self.ckpt), "--prefix", self.prefix,
                *self.extra]

    def logtail(self) -> str:
        return self.tail()

    def check_exact(self) -> None:
        got = read_committed(self.bootstrap, self.output)
        problems = kafkajobs.check_output(got, self.records)
        assert not problems, "\n".join(problems[:20]) + "\nlog: " + self.logtail()
        open_txns = [t for t in list_lingering(self.bootstrap, self.prefix)
                     if t[2] not in ("Empty", "CompleteCommit", "CompleteAbort")]
        assert not open_txns, f"transactions of the sink left open: {open_txns}"


# --- the recovery-commit protocol ------------------------------------------------------
_CHILD = r"""
import json, sys, time
from confluent_kafka import Producer
from onceflow.connectors.kafka.protocol import TxnClient
bootstrap, tid, topic = sys.argv[1:4]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid,
              "transaction.timeout.ms": 120000})
p.init_transactions(30)
p.begin_transaction()
for i in range(10):
    p.produce(topic, f"pending-{i}".encode(), partition=i % 2)
assert p.flush(30) == 0
d = TxnClient(bootstrap).describe(tid)
print(json.dumps({"pid": d.producer_id, "epoch": d.producer_epoch, "state": d.state}), flush=True)
time.sleep(600)  # killed here, transaction open and flushed
"""


def test_recovery_commit_of_a_dead_producers_transaction(bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    topic = _topic(bootstrap, f"rc-{run}", 2)
    tid = f"rc-{run}-0-0"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, bootstrap, tid, topic],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    rec = json.loads(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert rec["state"] == "Ongoing"
    assert read_committed(bootstrap, topic, settle=0.3, decode=bytes.decode) == []

    sink = KafkaSink(bootstrap, topic, transactional_id_prefix=f"rc-{run}")
    sink._prefix = f"rc-{run}"
    txn = KafkaTxn(tid, 0, rec["pid"], rec["epoch"], 10)
    with kp.TxnClient(bootstrap) as c:
        assert c.end_txn(tid, rec["pid"], rec["epoch"], True) == kp.NONE
        # the same commit again: "already committed" (NONE at the same epoch)
        deadline = time.monotonic() + 10
        while (err := c.end_txn(tid, rec["pid"], rec["epoch"], True)) == \
                kp.CONCURRENT_TRANSACTIONS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert err == kp.NONE, kp.error_name(err)
        # an abort of the committed transaction is refused
        assert c.end_txn(tid, rec["pid"], rec["epoch"], False) == kp.INVALID_TXN_STATE
    sink.commit_recovered(txn)  # idempotent through the sink too
    got = read_committed(bootstrap, topic, settle=0.3, decode=bytes.decode)
    assert sorted(v for _, _, v in got) == sorted(f"pending-{i}" for i in range(10))

    # only now may the id be initialised: it fences the old producer (newer epoch) ...
    p = ck.Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    p.init_transactions(30)
    with kp.TxnClient(bootstrap) as c:
        d = c.describe(tid)
        assert d.producer_epoch > rec["epoch"]
        assert c.end_txn(tid, rec["pid"], rec["epoch"], True) in (kp.PRODUCER_FENCED,
                                                                  kp.INVALID_PRODUCER_EPOCH)
    # ... and a recovery commit of the old transaction now counts as already committed
    sink.commit_recovered(txn)
    p.close()


def test_recovery_commit_of_an_aborted_transaction_fails_loudly(bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    topic = _topic(bootstrap, f"ra-{run}", 1)
    tid = f"ra-{run}-0-0"
    p = ck.Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, b"x")
    p.flush(30)
    with kp.TxnClient(bootstrap) as c:
        d = c.describe(tid)
    p.abort_transaction(30)
    sink = KafkaSink(bootstrap, topic, transactional_id_prefix=f"ra-{run}")
    from onceflow.kafka import KafkaTransactionLostError
    with pytest.raises(KafkaTransactionLostError, match="aborted"):
        sink.commit_recovered(KafkaTxn(tid, 0, d.producer_id, d.producer_epoch, 1))
    p.close()


def test_abort_lingering_helper_and_cli(bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    topic = _topic(bootstrap, f"al-{run}", 2)
    prefix = f"al-{run}"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, bootstrap, f"{prefix}-3-1", topic],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    json.loads(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert [t[2] for t in list_lingering(bootstrap, prefix)] == ["Ongoing"]
    out = subprocess.run([sys.executable, "-m", "onceflow.kafka_cli", "abort-lingering",
                          "--bootstrap", bootstrap, "--prefix", prefix],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{prefix}-3-1" in out.stdout
    assert [t[2] for t in list_lingering(bootstrap, prefix)] != ["Ongoing"]
    assert read_committed(bootstrap, topic, settle=0.3, decode=bytes.decode) == []
    assert abort_lingering(bootstrap, f"none-{run}") == []


# --- configuration checks --------------------------------------------------------------
def test_transaction_timeout_checks(bootstrap: str) -> None:
    with pytest.raises(ConfigurationError, match=r"exceeds the broker's "
                       r"transaction.max.timeout.ms=900000"):
        KafkaSink(bootstrap, "t", transaction_timeout_ms=1_000_000).validate()
    KafkaSink(bootstrap, "t", transaction_timeout_ms=900_000).validate()
    with pytest.raises(ConfigurationError, match=r"shorter than checkpoint interval"):
        check_transaction_timeout(60_000, 900_000, checkpoint_interval=30,
                                  checkpoint_timeout=600)
    check_transaction_timeout(900_000, 900_000, checkpoint_interval=30, checkpoint_timeout=600)
    with pytest.raises(ConfigurationError, match="guarantee"):
        KafkaSink(bootstrap, "t", guarantee="twice")
    with pytest.raises(ConfigurationError, match="cannot reach Kafka"):
        broker_config("127.0.0.1:1", "transaction.max.timeout.ms", timeout=2)
    with pytest.raises(ConfigurationError, match=r"KafkaSource \(topics \['t'\]\): cannot "
                       r"reach Kafka at 127.0.0.1:1 .*check that the broker is running"):
        KafkaSource("127.0.0.1:1", ["t"], timeout=2).validate()
    with pytest.raises(ConfigurationError, match="start="):
        KafkaSource(bootstrap, ["t"], start="yesterday")


def test_job_refuses_a_timeout_above_the_brokers_maximum(bootstrap: str, tmp_path: Path) -> None:
    import onceflow as of
    flow = of.Flow("kafka-bad-timeout")
    flow.enable_checkpointing(1.0, tmp_path / "ckpt")
    (flow.source(of.sources.Range(0, 10))
         .sink(KafkaSink(bootstrap, "whatever", transaction_timeout_ms=3_600_000)))
    with pytest.raises(ConfigurationError, match=r"transaction\.max\.timeout\.ms"):
        flow.run()


def test_job_refuses_checkpoint_settings_the_transactions_cannot_outlive(
        bootstrap: str, tmp_path: Path) -> None:
    import onceflow as of
    flow = of.Flow("kafka-short-timeout")
    flow.enable_checkpointing(1.0, tmp_path / "ckpt", timeout=600)
    (flow.source(of.sources.Range(0, 10))
         .sink(KafkaSink(bootstrap, "whatever", transaction_timeout_ms=300_000)))
    with pytest.raises(ConfigurationError, match="checkpoint timeout"):
        flow.run()
    no_ckpt = of.Flow("kafka-no-checkpoints")
    (no_ckpt.source(of.sources.Range(0, 10)).sink(KafkaSink(bootstrap, "whatever")))
    with pytest.raises(ConfigurationError, match="enable_checkpointing"):
        no_ckpt.run()


# --- the source on its own -------------------------------------------------------------
def test_source_reads_keys_timestamps_headers_and_new_partitions(bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = _topic(bootstrap, f"src-{run}", 2)
    p = ck.Producer({"bootstrap.servers": bootstrap})
    for i in range(6):
        p.produce(topic, json.dumps({"i": i}).encode(), key=f"k{i}".encode(), partition=i % 2,
                  headers=[("h", b"v")], timestamp=1_700_000_000_000 + i)
    p.flush(30)
    src = KafkaSource(bootstrap, [topic], deserializer="json", key_deserializer="str",
                      discovery_interval=0.2)
    splits = src.splits(2)
    readers = [src.reader(s, src.initial_position(s)) for s in splits]

    def drain(want: int, timeout: float = 20) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            for r in readers:
                got.extend(r.read_batch(100) or [])
        return got

    got = drain(6)
    assert sorted(r.value["i"] for r in got) == list(range(6))
    r0 = next(r for r in got if r.value["i"] == 0)
    assert (r0.key, r0.timestamp, r0.headers) == ("k0", 1_700_000_000_000, [("h", b"v")])
    # positions: next offsets per partition, split over the two readers
    pos = {}
    for r in readers:
        pos.update(r.position())
    assert pos == {(topic, 0): 3, (topic, 1): 3}
    # a partition added while running is picked up
    from confluent_kafka.admin import NewPartitions
    admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
    p2 = ck.Producer({"bootstrap.servers": bootstrap})
    p2.produce(topic, json.dumps({"i": 99}).encode(), partition=2)
    p2.flush(30)
    got = drain(1)
    assert [r.value["i"] for r in got] == [99] and got[0].partition == 2
    # readers restored from their positions continue after them: nothing is read again
    restored = [src.reader(s, r.position()) for s, r in zip(splits, readers, strict=True)]
    for r in readers:
        r.close()
    readers[:] = restored
    assert drain(1, timeout=2) == []
    for r in readers:
        r.close()


def test_bounded_source_stops_at_the_end_inside_a_fetched_run(bootstrap: str) -> None:
    """stop_at="end": records appended after the job started are in the same fetch as the
    last ones before it; the reader must stop exactly at the end offset (transaction
    markers in between), report the partition of each value, and finish."""
    run = uuid.uuid4().hex[:8]
    topic = _topic(bootstrap, f"end-{run}", 2)
    tp = ck.Producer({"bootstrap.servers": bootstrap, "transactional.id": f"end-{run}"})
    tp.init_transactions(30)
    for part, n in ((0, 5), (1, 3)):
        for i in range(n):
            tp.begin_transaction()
            tp.produce(topic, json.dumps({"p": part, "i": i}).encode(), partition=part)
            tp.commit_transaction(30)  # each record followed by a commit marker
    src = KafkaSource(bootstrap, [topic], deserializer="json", value_only=True, stop_at="end")
    (split,) = src.splits(1)
    ends = dict(((t, p), o) for t, p, o in split.end or ())
    assert ends == {(topic, 0): 10, (topic, 1): 6}  # records and markers
    p = ck.Producer({"bootstrap.servers": bootstrap})
    for i in range(5, 50):  # after the end: never read
        p.produce(topic, json.dumps({"p": i % 2, "i": i}).encode(), partition=i % 2)
    assert p.flush(30) == 0
    rd = src.reader(split, src.initial_position(split))
    got: list[Any] = []
    parts: list[Any] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = rd.read_batch(1000)
        if batch is None:
            break
        got.extend(batch)
        parts.extend(rd.batch_partitions() or [])
    rd.close()
    assert batch is None, f"the bounded reader did not finish; read {got}"
    assert sorted((r["p"], r["i"]) for r in got) == [(0, i) for i in range(5)] + [
        (1, i) for i in range(3)]
    assert parts == [(topic, r["p"]) for r in got]
    assert rd.position() == {(topic, 0): 10, (topic, 1): 6}


# --- end to end under crashes ----------------------------------------------------------
def _kill_randomly(job: KJob, rng: random.Random, kills: int) -> int:
    return kill_randomly(job, rng, kills, pause=(2.0, 3.5))  # Kafka jobs start slower


def test_no_failure(tmp_path: Path, bootstrap: str) -> None:
    job = KJob(tmp_path, bootstrap)
    job.start()
    code, result = job.wait()
    assert code == 0, job.logtail()
    assert result is not None and result["restarts"] == 0
    job.check_exact()
    # the bounded source ends on a transactional topic (commit markers after the last
    # record) and reads exactly the committed records
    src = KafkaSource(bootstrap, [job.output], deserializer="json", stop_at="end")
    got: list[Any] = []
    for split in src.splits(3):
        rd = src.reader(split, src.initial_position(split))
        deadline = time.monotonic() + 30
        while (batch := rd.read_batch(500)) is not None:
            got.extend(batch)
            assert time.monotonic() < deadline, "bounded reader did not finish"
        assert all(rd.position()[tp] == end for tp, end in
                   {(t, p): e for t, p, e in split.end or ()}.items())
        rd.close()
    assert sorted(r.value["id"] for r in got) == list(range(N))


def test_random_worker_kills(tmp_path: Path, bootstrap: str) -> None:
    rng = random.Random(f"{SEED}-kafka")
    job = KJob(tmp_path, bootstrap, "--rate", "300")
    job.start()
    delivered = _kill_randomly(job, rng, kills=3)
    code, result = job.wait(timeout=180)
    assert code == 0, job.logtail()
    assert delivered >= 1 and result is not None and result["restarts"] >= 1
    job.check_exact()
    # the kills did leave aborted transactions behind, which read_committed hides
    uncommitted = read_committed(bootstrap, job.output, settle=0.3,
                                 isolation="read_uncommitted")
    assert len(uncommitted) > N


POINTS = [
    "sink.after_pre_commit@checkpoint=3,subtask=0",
    "sink.before_commit@checkpoint=3,subtask=1",
    "sink.mid_commit@subtask=0",
    "snapshot.async@checkpoint=2,subtask=1",
]


@pytest.mark.parametrize("point", POINTS)
def test_worker_killed_at_named_point(tmp_path: Path, bootstrap: str, point: str) -> None:
    token = tmp_path / "fault-fired"
    job = KJob(tmp_path, bootstrap, "--rate", "800")
    job.start(env={"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)})
    code, result = job.wait(timeout=180)
    assert token.exists(), f"fault {point} never fired\n{job.logtail()}"
    assert code == 0, job.logtail()
    assert result is not None and result["restarts"] == 1
    job.check_exact()


def test_driver_killed_after_checkpoint_complete_then_restored(tmp_path: Path,
                                                              bootstrap: str) -> None:
    token = tmp_path / "fault-fired"
    job = KJob(tmp_path, bootstrap, "--rate", "800")
    proc = job.start(env={"ONCEFLOW_FAULT": "coordinator.after_metadata_rename@checkpoint=3",
                          "ONCEFLOW_FAULT_TOKEN": str(token)})
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, job.logtail()
    time.sleep(0.5)
    job.start("--restore", "latest")
    code, result = job.wait(timeout=180)
    assert code == 0, job.logtail()
    assert result is not None and str(result["restored_from"]).endswith("chk-3")
    job.check_exact()


def test_driver_killed_then_restored_with_lower_parallelism(tmp_path: Path,
                                                           bootstrap: str) -> None:
    """Pending transactions and lingering ids of a subtask that no longer exists (3 → 2)."""
    token = tmp_path / "fault-fired"
    job = KJob(tmp_path, bootstrap, "--rate", "600")
    proc = job.start("--parallelism", "3",
                     env={"ONCEFLOW_FAULT": "sink.before_commit@checkpoint=3,subtask=2",
                          "ONCEFLOW_FAULT_TOKEN": str(token)})
    # the worker dies; kill the driver as well once it noticed, so that nothing else runs
    deadline = time.monotonic() + 60
    while not token.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert token.exists(), job.logtail()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    job.start("--restore", "latest", "--parallelism", "2")
    code, result = job.wait(timeout=180)
    assert code == 0, job.logtail()
    assert result is not None and result["restored_from"]
    assert any(t[0].startswith(f"{job.prefix}-2-") for t in list_lingering(bootstrap, job.prefix))
    job.check_exact()


def test_group_offsets_are_written_when_checkpoints_complete(bootstrap: str,
                                                            tmp_path: Path) -> None:
    import onceflow as of
    run = uuid.uuid4().hex[:8]
    topic = _topic(bootstrap, f"grp-{run}", 2)
    p = ck.Producer({"bootstrap.servers": bootstrap})
    for i in range(50):
        p.produce(topic, json.dumps({"i": i}).encode(), partition=i % 2)
    p.flush()
    flow = of.Flow(f"grp-{run}", parallelism=2)
    flow.enable_checkpointing(0.2, tmp_path / "ckpt")
    (flow.source(KafkaSource(bootstrap, [topic], group_id=f"g-{run}", stop_at="end",
                             deserializer="json", value_only=True), name="in")
         .sink(of.sinks.Discard(), name="out"))
    assert flow.run().records_in("out") == 50
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{run}"})
    committed = c.committed([ck.TopicPartition(topic, 0), ck.TopicPartition(topic, 1)],
                            timeout=10)
    c.close()
    assert sorted(tp.offset for tp in committed) == [25, 25]


def test_start_positions_and_at_least_once_sink(bootstrap: str) -> None:
    from onceflow.connectors.sinks import SinkContext
    from onceflow.kafka import KafkaPlainSink

    run = uuid.uuid4().hex[:8]
    topic = _topic(bootstrap, f"alo-{run}", 1)
    sink = KafkaSink(bootstrap, topic, guarantee="at_least_once", serializer="json",
                     key=lambda r: r["k"], key_serializer="str")
    assert isinstance(sink, KafkaPlainSink)
    sink.open(SinkContext("f", "s", 0, 1, 0))
    sink.write([{"k": "a", "v": i} for i in range(3)])
    sink.snapshot_state(1)  # flushes: durable at the checkpoint
    first_ts = int(time.time() * 1000)
    time.sleep(0.05)
    sink.write([{"k": "b", "v": 3}])
    sink.close()
    assert [v["v"] for _, _, v in read_committed(bootstrap, topic, settle=0.3)] == [0, 1, 2, 3]

    def pos(start: Any) -> int:
        src = KafkaSource(bootstrap, [topic], start=start, group_id=f"g-{run}")
        (split,) = src.splits(1)
        return src.initial_position(split)[(topic, 0)]

    assert pos("earliest") == 0  # the log start offset, resolved when the job starts fresh
    assert pos("latest") == 4
    assert pos(("timestamp", first_ts)) == 3
    assert pos(("timestamp", int(time.time() * 1000) + 60_000)) == 4
    assert pos("committed") == -2  # nothing committed: earliest
