"""The transaction coordinator client's retries, with a fake coordinator connection: a
coordinator that is still loading its log (right after a broker restart) answers
DescribeTransactions with COORDINATOR_LOAD_IN_PROGRESS and an empty state. Nothing may
judge a transaction committed, lost or not Ongoing on such an answer. The real broker's
side of the same protocol is in test_kafka.py and test_kafka_faults.py."""

from __future__ import annotations

from typing import Any

import pytest

from onceflow.connectors.kafka import protocol as kp
from onceflow.connectors.kafka.sink import KafkaTxn
from onceflow.errors import ConnectorError
from onceflow.kafka import KafkaSink

TID = "job-0-0"


def _answer(error: int, state: str = "", epoch: int = 3) -> kp.TxnDescription:
    return kp.TxnDescription(TID, error, state, 7, epoch, 60_000, [], 1_000)


class _Coordinator:
    """Answers DescribeTransactions with ``describes`` in turn (the last one for ever)
    and EndTxn with ``end``."""

    host, port = "127.0.0.1", 1

    def __init__(self, describes: list[kp.TxnDescription | Exception],
                 end: int = kp.NONE) -> None:
        self.describes, self.end, self.asked = describes, end, 0

    def describe_transaction(self, tid: str) -> kp.TxnDescription:
        a = self.describes[min(self.asked, len(self.describes) - 1)]
        self.asked += 1
        if isinstance(a, Exception):
            raise a
        return a

    def end_txn(self, tid: str, pid: int, epoch: int, commit: bool) -> int:
        return self.end

    def close(self) -> None:
        pass


def _client(coordinator: _Coordinator, timeout: float) -> kp.TxnClient:
    c = kp.TxnClient("127.0.0.1:1", timeout=timeout)
    c.coordinator = lambda tid: coordinator  # type: ignore[assignment,method-assign,return-value]
    return c


def test_describe_asks_again_while_the_coordinator_is_loading() -> None:
    loading = _answer(kp.COORDINATOR_LOAD_IN_PROGRESS)
    moved = kp.KafkaProtocolError("connection reset", kp.REQUEST_TIMED_OUT)
    fake = _Coordinator([loading, moved, _answer(kp.NOT_COORDINATOR), _answer(kp.NONE,
                                                                             "Ongoing")])
    d = _client(fake, timeout=10).describe(TID)
    assert (d.error, d.state, fake.asked) == (kp.NONE, "Ongoing", 4)


def test_describe_gives_the_error_back_once_the_timeout_passed() -> None:
    fake = _Coordinator([_answer(kp.COORDINATOR_LOAD_IN_PROGRESS)])
    d = _client(fake, timeout=0.3).describe(TID)
    assert d.error == kp.COORDINATOR_LOAD_IN_PROGRESS and fake.asked >= 2
    # an error that asking again cannot mend is given back at once
    fake = _Coordinator([_answer(kp.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)])
    d = _client(fake, timeout=10).describe(TID)
    assert d.error == kp.TRANSACTIONAL_ID_AUTHORIZATION_FAILED and fake.asked == 1


@pytest.mark.parametrize("end", [kp.PRODUCER_FENCED, kp.INVALID_TXN_STATE])
def test_a_recovery_commit_is_not_judged_on_a_coordinator_that_is_not_ready(
        end: int, caplog: pytest.LogCaptureFixture) -> None:
    """EndTxn says a newer epoch (or an aborted state): the sink asks the coordinator
    what became of the transaction. While it cannot say, the sink must neither call the
    transaction committed (a loss, if the broker had aborted it) nor lost: it fails, and
    the restore commits again."""
    sink: Any = KafkaSink("127.0.0.1:1", "out", transactional_id_prefix="job")
    fake = _Coordinator([_answer(kp.COORDINATOR_LOAD_IN_PROGRESS)], end=end)
    sink._client = _client(fake, timeout=0.3)
    txn = KafkaTxn(TID, 0, producer_id=7, epoch=2, records=5, start_ms=1_000, checkpoint=4)
    with pytest.raises(ConnectorError, match="COORDINATOR_LOAD_IN_PROGRESS") as err:
        sink.commit_recovered(txn)
    assert "not judging it committed or lost" in str(err.value)
    assert "already committed" not in caplog.text
