"""TransactionLifecycle with a fake sink, no processes: the order of the 2PC hooks, commit
order, idempotent recommit on restore, abort of lingering transactions, commit retries."""

from __future__ import annotations

from typing import Any

import pytest

from onceflow.connectors.sinks import SinkContext
from onceflow.connectors.two_phase import TransactionLifecycle, TwoPhaseCommitSink, TxnStatus


class FakeSink(TwoPhaseCommitSink[str]):
    """Records every hook call; ``commit`` fails ``fail_commits`` times first."""

    def __init__(self, fail_commits: int = 0) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.committed: list[str] = []
        self.data: dict[str, list[Any]] = {}
        self.fail_commits = fail_commits
        self.n = 0

    def open(self, ctx: SinkContext) -> None:
        self.calls.append(("open", ctx.subtask))

    def begin_transaction(self) -> str:
        self.n += 1
        txn = f"t{self.n}"
        self.data[txn] = []
        self.calls.append(("begin", txn))
        return txn

    def write(self, txn: str, records: list[Any]) -> None:
        self.data[txn].extend(records)

    def pre_commit(self, txn: str) -> None:
        self.calls.append(("pre_commit", txn))

    def commit(self, txn: str) -> None:
        self.calls.append(("commit", txn))
        if self.fail_commits:
            self.fail_commits -= 1
            raise ConnectionError("broker away")
        if txn not in self.committed:  # idempotent
            self.committed.append(txn)

    def abort(self, txn: str) -> None:
        self.calls.append(("abort", txn))

    def abort_lingering(self, ctx: SinkContext, keep: list[str]) -> None:
        self.calls.append(("abort_lingering", tuple(keep)))

    def snapshot_state(self, checkpoint_id: int) -> Any:
        return {"n": self.n}

    def restore_state(self, states: list[Any]) -> None:
        self.calls.append(("restore_state", tuple(s["n"] for s in states if s)))


CTX = SinkContext("flow", "sink", 0, 1, 0)


def lifecycle(sink: FakeSink) -> TransactionLifecycle:
    lc = TransactionLifecycle(sink, CTX)
    lc.COMMIT_RETRIES = (0.0, 0.0, 0.0)  # no sleeping in unit tests
    return lc


def test_a_checkpoint_pre_commits_and_its_completion_commits_in_order() -> None:
    sink = FakeSink()
    lc = lifecycle(sink)
    lc.start([])
    lc.write([1, 2])
    s1 = lc.snapshot(1)
    lc.write([3])
    s2 = lc.snapshot(2)
    assert s1["pending"] == [(1, "t1")] and s2["pending"] == [(1, "t1"), (2, "t2")]
    assert sink.committed == []  # nothing visible before a checkpoint completes
    lc.checkpoint_complete(2)  # completes 1 too (its notification was lost or merged)
    assert sink.committed == ["t1", "t2"]
    assert sink.data["t1"] == [1, 2] and sink.data["t2"] == [3]
    assert [c for c in sink.calls if c[0] != "restore_state"] == [
        ("open", 0), ("abort_lingering", ()), ("begin", "t1"), ("pre_commit", "t1"),
        ("begin", "t2"), ("pre_commit", "t2"), ("begin", "t3"), ("commit", "t1"),
        ("commit", "t2")]
    assert lc.pending == []


def test_completion_commits_only_transactions_up_to_that_checkpoint() -> None:
    sink = FakeSink()
    lc = lifecycle(sink)
    lc.start([])
    lc.snapshot(1)
    lc.snapshot(2)
    lc.checkpoint_complete(1)
    assert sink.committed == ["t1"]
    assert [(t.checkpoint_id, t.status) for t in lc.pending] == [(2, TxnStatus.PRE_COMMITTED)]


def test_restore_recommits_what_the_checkpoint_lists_and_aborts_the_rest() -> None:
    first = FakeSink()
    lc = lifecycle(first)
    lc.start([])
    lc.snapshot(1)
    lc.checkpoint_complete(1)  # t1 committed
    state = lc.snapshot(2)  # t2 pre-committed; the process dies before complete(2)
    # checkpoint 2 completed after all; a new attempt restores it
    second = FakeSink()
    second.committed = ["t1"]  # the external system already has t1
    second.n = 10
    lc2 = lifecycle(second)
    lc2.start([state])
    assert second.committed == ["t1", "t2"]  # t2 committed once, t1 not twice
    assert ("abort_lingering", ("t2",)) in second.calls
    assert ("restore_state", (2,)) in second.calls
    # an already committed transaction is committed again without harm (idempotent)
    lc3 = lifecycle(second)
    lc3.start([state])
    assert second.committed == ["t1", "t2"]


def test_a_failing_commit_is_retried() -> None:
    sink = FakeSink(fail_commits=2)
    lc = lifecycle(sink)
    lc.start([])
    lc.snapshot(1)
    lc.checkpoint_complete(1)
    assert sink.committed == ["t1"]
    assert [c for c in sink.calls if c[0] == "commit"] == [("commit", "t1")] * 3


def test_a_commit_that_keeps_failing_fails_the_task_and_stays_pending() -> None:
    sink = FakeSink(fail_commits=10)
    lc = lifecycle(sink)
    lc.start([])
    lc.snapshot(1)
    with pytest.raises(ConnectionError):
        lc.checkpoint_complete(1)
    assert [c for c in sink.calls if c[0] == "commit"] == [("commit", "t1")] * 4
    assert sink.committed == []


def test_close_aborts_the_open_transaction_and_nothing_else() -> None:
    sink = FakeSink()
    lc = lifecycle(sink)
    lc.start([])
    lc.snapshot(1)
    lc.checkpoint_complete(1)
    lc.close()
    assert sink.calls[-1] == ("abort", "t2")
    assert sink.committed == ["t1"]
