"""Two jobs and one Kafka transactional_id_prefix: never a silent loss.

Two running jobs whose sinks use the same transactional ids fence each other: each
``init_transactions`` of one aborts the other's open transaction, pre-committed ones
included. By default every job gets its own prefix (derived from its checkpoint location
and kept in its checkpoints); with the same explicit prefix the jobs must fail, naming the
id and saying another producer uses it, or report the lost output — never finish with
output missing and say nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import kafkajobs
from jobproc import JobProcess
from kafka_util import new_topic
from test_kafka import _fill, read_committed

JOB = str(Path(__file__).with_name("kafkajobs.py"))
N = 2000
PARTITIONS = 4
TAKEN_OVER = "another producer initialised transactional id"


class Job(JobProcess):
    def __init__(self, tmp: Path, bootstrap: str, inp: str, out: str, tag: str,
                 *extra: str) -> None:
        tmp.mkdir()
        super().__init__(tmp)
        self.bootstrap, self.inp, self.out, self.tag = bootstrap, inp, out, tag
        self.extra = list(extra)

    def command(self) -> list[str]:
        # 2 subtasks x 250 records/s: each job runs for about 4 s, the two at once
        return [JOB, "--bootstrap", self.bootstrap, "--input", self.inp, "--output",
                self.out, "--ckpt", str(self.tmp / "ckpt"), "--tag", self.tag,
                "--rate", "250", "--interval", "0.3", *self.extra]


def _run_both(tmp: Path, bootstrap: str, *extra: str
              ) -> tuple[str, list[tuple[Job, int, Any]], dict[str, list[Any]]]:
    inp = new_topic(bootstrap, PARTITIONS, "spin")
    out = new_topic(bootstrap, PARTITIONS, "spout")
    _fill(bootstrap, inp, N)
    jobs = [Job(tmp / tag, bootstrap, inp, out, tag, *extra) for tag in ("a", "b")]
    for j in jobs:
        j.start()
    results = [(j, *j.wait(timeout=240)) for j in jobs]
    by_job: dict[str, list[Any]] = {"a": [], "b": []}
    for rec in read_committed(bootstrap, out):
        by_job[rec[2]["job"]].append(rec)
    return out, results, by_job


def test_two_jobs_with_the_default_prefix_both_write_exactly_once(bootstrap: str,
                                                                  tmp_path: Path) -> None:
    """Two copies of one flow (same name, same sink uid), each with its own checkpoint
    directory, reading the same input and writing the same topic at the same time."""
    _out, results, by_job = _run_both(tmp_path, bootstrap)
    for job, code, res in results:
        assert code == 0, job.tail()
        assert res is not None and res["lost_transactions"] == 0, res
        problems = kafkajobs.check_output(by_job[job.tag], N)
        assert not problems, f"job {job.tag}: " + "\n".join(problems[:10]) + job.tail()
        assert TAKEN_OVER not in job.log.read_text(), job.tail()


def test_two_jobs_sharing_a_prefix_fail_loudly_or_report_the_loss(bootstrap: str,
                                                                  tmp_path: Path) -> None:
    prefix = f"shared-{uuid.uuid4().hex[:8]}"
    _out, results, by_job = _run_both(tmp_path, bootstrap, "--prefix", prefix,
                                      "--attempts", "2", "--delay", "0.2")
    told = 0
    for job, code, res in results:
        log_text = job.log.read_text()
        says = TAKEN_OVER in log_text and f"{prefix}-" in log_text
        told += says
        if code != 0:
            # failed: because of the other job, and saying so
            assert says, job.tail()
            continue
        # finished: then its output is exact, or what is missing is reported as lost
        problems = kafkajobs.check_output(by_job[job.tag], N)
        if problems:
            assert res is not None and res["lost_transactions"] > 0, (
                f"job {job.tag} lost output silently: " + "\n".join(problems[:10])
                + job.tail())
            assert "is LOST" in log_text and says, job.tail()
    # they did run at the same time: at least one of them noticed the other
    assert told >= 1, "\n".join(j.tail() for j, _, _ in results)


def _pre_committed(bootstrap: str, topic: str, prefix: str, tmp: Path) -> tuple[Any, Any]:
    """A sink subtask that pre-committed a transaction for checkpoint 1 and died before
    committing it: (its checkpointed state, the pending handle)."""
    from onceflow.connectors.sinks import SinkContext
    from onceflow.kafka import KafkaSink

    sink = KafkaSink(bootstrap, topic, transactional_id_prefix=prefix, serializer="json")
    sink.open(SinkContext(flow="sp", uid="out", subtask=0, parallelism=1, attempt=0,
                          flow_dir=str(tmp)))
    txn = sink.begin_transaction()
    sink.write(txn, [{"i": i} for i in range(5)])
    sink.pre_commit(txn)
    state = sink.snapshot_state(1)
    sink.close()  # (a crash: the transaction stays open for the recovery commit)
    return state, txn


def _restored(bootstrap: str, topic: str, prefix: str, tmp: Path, state: Any) -> Any:
    from onceflow.connectors.sinks import SinkContext
    from onceflow.kafka import KafkaSink

    sink = KafkaSink(bootstrap, topic, transactional_id_prefix=prefix, serializer="json")
    sink.open(SinkContext(flow="sp", uid="out", subtask=0, parallelism=1, attempt=1,
                          flow_dir=str(tmp)))
    sink.restore_state([state])
    return sink


def _init_elsewhere(bootstrap: str, tid: str) -> None:
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    p.init_transactions(30)
    p.close()


def test_recovery_commit_tells_another_producers_takeover(bootstrap: str,
                                                          tmp_path: Path) -> None:
    """The sink never initialises an id that a checkpoint to restore lists, so a fenced
    recovery commit means another producer: reported, never taken for "committed"."""
    import pytest

    from onceflow.errors import ConnectorError, KafkaTransactionLostError

    topic = new_topic(bootstrap, 1, "sprc")
    prefix = f"sprc-{uuid.uuid4().hex[:8]}"
    # restored twice with nobody else around: committed, then "already committed"
    state, txn = _pre_committed(bootstrap, topic, prefix, tmp_path)
    for _ in range(2):
        sink = _restored(bootstrap, topic, prefix, tmp_path, state)
        sink.commit(txn)
        sink.close()
    assert len(read_committed(bootstrap, topic, settle=0.3)) == 5
    # committed, then another producer took the id over: nothing lost, but it fails
    _init_elsewhere(bootstrap, txn.transactional_id)
    sink = _restored(bootstrap, topic, prefix, tmp_path, state)
    with pytest.raises(ConnectorError, match=TAKEN_OVER + ".*nothing of it is lost"):
        sink.commit(txn)
    sink.close()
    # another producer's start aborted a pre-committed one: reported as lost
    state, txn = _pre_committed(bootstrap, topic, prefix, tmp_path)
    _init_elsewhere(bootstrap, txn.transactional_id)
    sink = _restored(bootstrap, topic, prefix, tmp_path, state)
    with pytest.raises(KafkaTransactionLostError, match=TAKEN_OVER + ".*is LOST"):
        sink.commit(txn)
    assert sink.lost_transactions == 1
    sink.close()
    assert len(read_committed(bootstrap, topic, settle=0.3)) == 5  # the first five only
