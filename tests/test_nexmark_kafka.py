"""Nexmark and the real Kafka broker (``scripts/kafka``): prefill_kafka writes exactly the
generator's events as JSON (event ``n`` in partition ``n % partitions``, in order); queries
read them from Kafka and write their results to Kafka exactly-once; and q5, q7 and q8 into
Kafka stay exact while their workers and their driver are SIGKILLed, at random moments and
at named points of the checkpoint and commit protocol (tests/nexmarkkafkajob.py; the
driver is then restarted with ``restore="latest"``): a read_committed reader sees exactly
DuckDB's rows over the same events, each once. More rounds: ``-m soak``."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import confluent_kafka as ck  # a missing client must fail the suite, not skip it
import joinjobs
import orjson
import pytest
from confluent_kafka.admin import AdminClient
from jobproc import JobProcess, assert_no_orphans, kill_randomly
from kafka_util import create_topic, new_topic, topic_name

import onceflow as of
from onceflow.errors import ConnectorError
from onceflow.kafka import list_lingering
from onceflow.nexmark import Generator, NexmarkConfig, prefill_kafka

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261201"))


def test_prefill_writes_the_generators_events_per_partition_in_order(bootstrap: str) -> None:
    topic = topic_name(bootstrap, "nexmark")  # prefill_kafka creates it
    config = NexmarkConfig(events=5000, seed=9, out_of_orderness=1.0, late_fraction=0.02)
    assert prefill_kafka(bootstrap, topic, config, partitions=4) == 5000
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got: dict[int, list[dict[str, object]]] = {p: [] for p in range(4)}
    deadline = time.monotonic() + 60
    while sum(map(len, got.values())) < 5000 and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=1.0):
            assert m.error() is None, m.error()
            got[m.partition()].append(orjson.loads(m.value()))
    time.sleep(0.5)
    extra = c.consume(100, timeout=0.5)
    c.close()
    assert not extra, "more events than the generator made"
    gen = Generator(config)
    for p in range(4):
        assert got[p] == gen.events(p, 5000, 4), f"partition {p} differs"


def test_prefill_that_the_broker_refuses_raises_instead_of_returning_the_count(
        bootstrap: str) -> None:
    """flush() returns 0 whether the messages were delivered or refused: a topic whose
    size limit refuses every batch must raise, not report 20,000 events written."""
    topic = create_topic(bootstrap, topic_name(bootstrap, "nexmark-small"), 2,
                         {"max.message.bytes": "2000"})
    with pytest.raises(ConnectorError, match=r"of 20,000 events did not reach.*refused by "
                                             r"the broker.*delete it and prefill again"):
        prefill_kafka(bootstrap, topic, NexmarkConfig(events=20_000, seed=1), partitions=2,
                      create=False)


def test_prefill_with_a_bad_configuration_creates_no_topic(bootstrap: str) -> None:
    topic = topic_name(bootstrap, "nexmark-bad")
    with pytest.raises(of.ConfigurationError, match="rate"):
        prefill_kafka(bootstrap, topic, NexmarkConfig(events=10, rate=-1))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert topic not in admin.list_topics(timeout=10).topics


def _read_committed(bootstrap: str, topic: str, settle: float = 1.0) -> list[object]:
    """Every value a read_committed consumer sees in ``topic`` (until quiet at the end)."""
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                     "isolation.level": "read_committed", "enable.auto.commit": False,
                     "enable.partition.eof": True})
    md = c.list_topics(topic, timeout=30).topics[topic]
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in md.partitions])
    out: list[object] = []
    eof: set[int] = set()
    deadline, quiet = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            if len(eof) == len(md.partitions):
                quiet = quiet or time.monotonic() + settle
                if time.monotonic() > quiet:
                    break
            continue
        if m.error():
            if m.error().code() == ck.KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                continue
            raise ck.KafkaException(m.error())
        eof.discard(m.partition())
        quiet = None
        out.append(orjson.loads(m.value()))
    c.close()
    return out


@pytest.mark.parametrize("query", ["q2", "q3"])
def test_a_query_from_kafka_into_kafka_exactly_once_equals_duckdb(
        bootstrap: str, tmp_path: Path, query: str) -> None:
    import sys
    from collections import Counter

    import onceflow as of
    from onceflow.kafka import KafkaSink

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks" / "nexmark"))
    import queries
    from test_nexmark_queries import reference

    run = uuid.uuid4().hex[:8]
    config = NexmarkConfig(events=30_000, seed=21, out_of_orderness=1.0)
    events = topic_name(bootstrap, "nexmark-in")  # prefill_kafka creates it
    prefill_kafka(bootstrap, events, config, partitions=8)
    results = new_topic(bootstrap, 2, f"nexmark-{query}")
    flow = of.Flow(f"nexmark-kafka-{query}-{run}", parallelism=2)
    flow.enable_checkpointing(0.3, tmp_path / "ck")
    sink = KafkaSink(bootstrap, results, serializer="json")
    queries.build(flow, query, config, sink, kafka=(bootstrap, events))
    result = flow.run()
    got = Counter(tuple(r) for r in _read_committed(bootstrap, results))  # type: ignore[arg-type]
    want = reference(query, config)
    assert sum(want.values()) > 20
    assert got == want
    assert result.records_in("results") == sum(want.values())


# --- q5, q7, q8 into Kafka under SIGKILL ------------------------------------------------------
RECORDS = 20_000  # 20 s of event time (joinjobs.nexmark_query_config): q7/q8 2 windows


class NexmarkKafkaJob(JobProcess):
    """tests/nexmarkkafkajob.py: one query into a fresh topic, the driver a subprocess."""

    def __init__(self, tmp: Path, bootstrap: str, query: str, *extra: str,
                 kafka_input: bool = False) -> None:
        super().__init__(tmp)
        self.bootstrap, self.query = bootstrap, query
        self.output = new_topic(bootstrap, 2, f"nx-{query}")
        self.prefix = f"nx-{uuid.uuid4().hex[:8]}"
        self.extra = list(extra)
        if kafka_input:
            self.input = new_topic(bootstrap, 8, "nx-in")
            prefill_kafka(bootstrap, self.input, joinjobs.nexmark_query_config(RECORDS),
                          partitions=8, create=False)
            self.extra += ["--input", self.input]

    def command(self) -> list[str]:
        return [str(ROOT / "tests" / "nexmarkkafkajob.py"), self.query, "--bootstrap",
                self.bootstrap, "--output", self.output, "--prefix", self.prefix, "--ckpt",
                str(self.tmp / "ckpt"), "--records", str(RECORDS), "--rate", "6000",
                *self.extra]

    def kill_driver(self) -> None:
        """SIGKILL the driver; its workers must exit by themselves."""
        assert self.proc is not None
        workers = [w.pid for w in self.workers()]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert_no_orphans(workers, within=10)

    def check(self) -> None:
        got = Counter(tuple(r) for r in _read_committed(self.bootstrap, self.output))  # type: ignore[arg-type]
        want = joinjobs.expected(f"nexmark-{self.query}", RECORDS)
        assert sum(want.values()) >= 2
        extra, missing = list((got - want).items())[:3], list((want - got).items())[:3]
        assert got == want, (f"{sum(got.values())} committed vs {sum(want.values())}: "
                             f"{extra=} {missing=}\n{self.tail(3000)}")
        open_txns = [t for t in list_lingering(self.bootstrap, self.prefix)
                     if t[2] not in ("Empty", "CompleteCommit", "CompleteAbort")]
        assert not open_txns, f"transactions of the sink left open: {open_txns}"


def _await(path: Path, job: NexmarkKafkaJob, timeout: float = 90) -> None:
    assert job.proc is not None
    deadline = time.monotonic() + timeout
    while not path.exists() and job.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"fault never fired\n{job.tail(3000)}"


def _finish(job: NexmarkKafkaJob, rng: random.Random, worker_kills: int = 1
            ) -> dict[str, Any]:
    """Restart the killed job from its latest checkpoint, kill a worker of the restored run
    at random moments, and wait for it to finish."""
    time.sleep(0.3)
    job.start("--restore", "latest")
    kill_randomly(job, rng, kills=worker_kills, pause=(0.5, 1.5))
    code, result = job.wait(timeout=240)
    assert code == 0, job.tail(3000)
    assert result is not None
    return result


# (query, backend, events from Kafka, the named fault, which process it kills)
CRASHES = [
    ("q5", "memory", False, "sink.mid_commit@min_checkpoint=2", "worker"),
    ("q7", "rocksdb", True, "coordinator.after_metadata_rename@checkpoint=3", "driver"),
    ("q8", "memory", False, "sink.before_commit@min_checkpoint=2", "worker"),
]


def _crash_round(tmp: Path, bootstrap: str, query: str, backend: str, kafka_input: bool,
                 fault: str, rng: random.Random) -> None:
    """A named fault kills a worker (the job restarts itself) or the driver; then the
    driver is SIGKILLed at a random moment (if the fault did not already kill it), the job
    is restarted from its latest checkpoint and a worker of that run is killed at random."""
    token = tmp / "fault-fired"
    job = NexmarkKafkaJob(tmp, bootstrap, query, "--backend", backend,
                          kafka_input=kafka_input)
    job.start(env={"ONCEFLOW_FAULT": fault, "ONCEFLOW_FAULT_TOKEN": str(token)})
    _await(token, job)
    assert job.proc is not None
    if job.proc.poll() is None:  # a worker died: the driver restarts it; now kill the driver
        time.sleep(rng.uniform(0.3, 1.2))
        if job.proc.poll() is None:
            job.kill_driver()
    else:
        assert job.proc.returncode == -signal.SIGKILL, job.tail(3000)
    result = _finish(job, rng)
    assert result["restored_from"] or result["checkpoints"] >= 1
    job.check()


@pytest.mark.parametrize(("query", "backend", "kafka_input", "fault", "kills"), CRASHES)
def test_query_into_kafka_stays_exact_when_workers_and_driver_are_killed(
        tmp_path: Path, bootstrap: str, query: str, backend: str, kafka_input: bool,
        fault: str, kills: str) -> None:
    _crash_round(tmp_path, bootstrap, query, backend, kafka_input, fault,
                 random.Random(f"{SEED}-{query}"))


SOAK_POINTS = ["sink.after_pre_commit@min_checkpoint=2", "sink.mid_commit@min_checkpoint=3",
               "sink.before_commit@min_checkpoint=4", "snapshot.sync@min_checkpoint=2",
               "coordinator.before_metadata_rename@checkpoint=3",
               "coordinator.after_metadata_rename@checkpoint=4"]


@pytest.mark.soak
@pytest.mark.parametrize("query", ["q5", "q7", "q8"])
@pytest.mark.parametrize("point", SOAK_POINTS)
def test_soak_query_into_kafka_at_every_named_point(tmp_path: Path, bootstrap: str,
                                                    query: str, point: str) -> None:
    rng = random.Random(f"{SEED}-{query}-{point}")
    _crash_round(tmp_path, bootstrap, query, rng.choice(["memory", "rocksdb"]),
                 rng.random() < 0.5, point, rng)
