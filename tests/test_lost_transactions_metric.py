"""The count of a sink's lost transactions (KafkaSink ``on_lost_transaction="continue"``)
reaches the user: from the sink in the worker process, through the driver, into
``JobResult``, the live status and the Prometheus metric
``onceflow_operator_lost_transactions_total``. The Kafka case itself (a transaction the
broker aborted) is test_transaction_aborted_by_the_broker_is_never_silent in
tests/test_kafka_faults.py, which asserts the JobResult count; here a sink of the test's
own reports losses, so that the path is checked in a few seconds without a broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import onceflow as of
from onceflow.web.metrics import StatusCollector


class LosingSink(of.sinks.Discard):
    """Counts records like Discard; says it lost one transaction at each completed
    checkpoint whose number is even (kept in its state, like KafkaTransactionalSink)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost_transactions = 0

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        if checkpoint_id % 2 == 0:
            self.lost_transactions += 1

    def snapshot_state(self, checkpoint_id: int) -> Any:
        return (self.count, self.lost_transactions)

    def restore_state(self, states: list[Any]) -> None:
        self.count = sum(s[0] for s in states if s)
        self.lost_transactions = max((s[1] for s in states if s), default=0)


def test_lost_transactions_reach_the_result_status_and_prometheus(tmp_path: Path) -> None:
    flow = of.Flow("lost-metric", parallelism=2, batch_size=64)
    flow.enable_checkpointing(0.2, str(tmp_path / "ck"))
    sink = LosingSink()
    (flow.source(of.sources.DataGen(lambda i: i, rate=4000.0, count=6000), name="gen")
         .key_by(lambda i: i % 5)
         .sink(sink, name="out"))
    client = flow.start()
    result = client.result(timeout=120)
    assert result.restarts == 0
    # every sink subtask counts the even-numbered checkpoints that completed, the final
    # one included (notify_checkpoint_complete runs on every subtask for each)
    ids = [c.id for c in result.completed_checkpoints]
    per_subtask = sum(1 for i in ids if i % 2 == 0)
    assert per_subtask >= 1, ids
    assert result.operators["out"].lost_transactions == 2 * per_subtask
    assert result.lost_transactions == 2 * per_subtask
    assert result.operators["gen"].lost_transactions == 0
    assert "transaction(s) LOST" in result.summary()
    snap = {o["name"]: o for o in client.status.snapshot()["operators"]}
    assert snap["out"]["lost_transactions"] == 2 * per_subtask
    reg = CollectorRegistry()
    reg.register(StatusCollector(client.status))
    samples = {(s.name, s.labels.get("operator_name"), s.labels.get("subtask")): s.value
               for fam in text_string_to_metric_families(generate_latest(reg).decode())
               for s in fam.samples}
    for sub in ("0", "1"):
        assert samples[("onceflow_operator_lost_transactions_total", "out", sub)] \
            == per_subtask
        assert samples[("onceflow_operator_lost_transactions_total", "gen", sub)] == 0
