"""Exactly-once sinks: the two-phase-commit contract and its lifecycle, and write-ahead sinks.

Two-phase commit (after Flink's ``TwoPhaseCommitSinkFunction``), per sink subtask::

    begin_transaction ─► write* ─► (barrier n) pre_commit ─► [pending for n]
                                                               │ checkpoint n complete
                                                               ▼
                                                            commit      (or abort on recovery
                                                                         of an unknown one)

* On barrier ``n`` the current transaction is pre-committed (flushed, durable, still
  invisible), recorded in checkpoint ``n`` as pending, and a new transaction begins.
* When checkpoint ``n`` completes, every pending transaction with id <= n is committed, in
  order. ``commit`` must be idempotent: a transaction already committed counts as success.
* On recovery from checkpoint ``n``, every pending transaction recorded in it is committed
  again (it belongs to a completed checkpoint), then ``abort_lingering`` removes whatever
  earlier attempts left behind that no completed checkpoint covers.

:class:`TransactionLifecycle` owns these steps; nothing else calls the hooks.
"""

from __future__ import annotations

import enum
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from onceflow import _faults
from onceflow.connectors.sinks import SinkContext
from onceflow.errors import OutputLostError

log = logging.getLogger("onceflow.sink")
Txn = TypeVar("Txn")


class TwoPhaseCommitSink(ABC, Generic[Txn]):
    """Base class of transactional sinks. Transactions (``Txn``) must be picklable: pending
    ones are stored in checkpoints and committed by a later process after a crash."""

    def open(self, ctx: SinkContext) -> None:
        """Called once in the worker before any transaction."""

    @abstractmethod
    def begin_transaction(self) -> Txn:
        """Start a transaction. Called on start and after every barrier."""

    @abstractmethod
    def write(self, txn: Txn, records: list[Any]) -> None:
        """Write records into the transaction (invisible to readers)."""

    @abstractmethod
    def pre_commit(self, txn: Txn) -> None:
        """Flush and make the transaction durable, still invisible. An exception fails the
        task: the job restarts from the last completed checkpoint."""

    @abstractmethod
    def commit(self, txn: Txn) -> None:
        """Make the transaction visible. Must be idempotent: may be called again for a
        transaction already committed (after a crash), which must succeed silently."""

    @abstractmethod
    def abort(self, txn: Txn) -> None:
        """Discard the transaction."""

    def abort_lingering(self, ctx: SinkContext, keep: list[Txn]) -> None:
        """After recovery: discard transactions that crashed attempts of this sink left
        behind, except ``keep`` (already committed). Subtask ``i`` cleans up after every old
        subtask ``j`` with ``j % parallelism == i``."""

    def snapshot_state(self, checkpoint_id: int) -> Any:
        """Extra operator state of the sink (picklable)."""
        return None

    def restore_state(self, states: list[Any]) -> None:
        """Receive extra operator state inherited from old subtasks."""

    def close(self) -> None:
        """Release resources."""


class TxnStatus(enum.Enum):
    OPEN = "open"
    PRE_COMMITTED = "pre_committed"
    COMMITTED = "committed"
    ABORTED = "aborted"


_LEGAL = {
    TxnStatus.OPEN: {TxnStatus.PRE_COMMITTED, TxnStatus.ABORTED},
    TxnStatus.PRE_COMMITTED: {TxnStatus.COMMITTED, TxnStatus.ABORTED},
    TxnStatus.COMMITTED: set(),
    TxnStatus.ABORTED: set(),
}


@dataclass
class _Tracked(Generic[Txn]):
    handle: Txn
    status: TxnStatus
    checkpoint_id: int | None = None

    def move(self, to: TxnStatus) -> None:
        if to not in _LEGAL[self.status]:
            raise RuntimeError(f"illegal transaction transition {self.status.value} -> {to.value}")
        self.status = to


class TransactionLifecycle:
    """Drives one subtask of a :class:`TwoPhaseCommitSink` through the protocol above."""

    COMMIT_RETRIES = (0.1, 0.5, 2.0)

    def __init__(self, sink: TwoPhaseCommitSink[Any], ctx: SinkContext) -> None:
        self.sink, self.ctx = sink, ctx
        self.pending: list[_Tracked[Any]] = []
        self.current: _Tracked[Any] | None = None

    def start(self, states: list[Any]) -> None:
        """Open the sink, recommit what restored checkpoints list, abort the rest."""
        self.sink.open(self.ctx)
        recovered: list[Any] = []
        user_states: list[Any] = []
        for st in states:
            recovered.extend(h for _, h in st["pending"])
            user_states.append(st["user"])
        self.sink.restore_state(user_states)
        for handle in recovered:
            self._commit_with_retry(_Tracked(handle, TxnStatus.PRE_COMMITTED))
        if recovered:
            log.info("sink %s[%d]: ensured %d transaction(s) listed by the restored checkpoint "
                     "are committed", self.ctx.uid, self.ctx.subtask, len(recovered))
        self.sink.abort_lingering(self.ctx, recovered)
        self._begin()

    def _begin(self) -> None:
        self.current = _Tracked(self.sink.begin_transaction(), TxnStatus.OPEN)

    def write(self, records: list[Any]) -> None:
        assert self.current is not None
        self.sink.write(self.current.handle, records)

    def snapshot(self, checkpoint_id: int) -> dict[str, Any]:
        """Barrier ``checkpoint_id``: pre-commit the current transaction, begin the next."""
        cur = self.current
        assert cur is not None
        self.sink.pre_commit(cur.handle)
        cur.move(TxnStatus.PRE_COMMITTED)
        cur.checkpoint_id = checkpoint_id
        self.pending.append(cur)
        _faults.point("sink.after_pre_commit", checkpoint=checkpoint_id, subtask=self.ctx.subtask)
        state = {
            "pending": [(t.checkpoint_id, t.handle) for t in self.pending],
            "user": self.sink.snapshot_state(checkpoint_id),
        }
        self._begin()
        return state

    def checkpoint_complete(self, checkpoint_id: int) -> None:
        _faults.point("sink.before_commit", checkpoint=checkpoint_id, subtask=self.ctx.subtask)
        done = [t for t in self.pending if t.checkpoint_id is not None
                and t.checkpoint_id <= checkpoint_id]
        for t in done:
            self._commit_with_retry(t)
            # committed, but the sink has not recorded it (and may have more to commit)
            _faults.point("sink.mid_commit", checkpoint=checkpoint_id, subtask=self.ctx.subtask)
        self.pending = [t for t in self.pending if t.status is TxnStatus.PRE_COMMITTED]

    def _commit_with_retry(self, t: _Tracked[Any]) -> None:
        for delay in (*self.COMMIT_RETRIES, None):
            try:
                self.sink.commit(t.handle)
                t.move(TxnStatus.COMMITTED)
                return
            except OutputLostError:
                raise  # lost for good: retrying cannot help (and must not count it twice)
            except Exception as e:
                if delay is None:
                    raise
                log.warning("sink %s[%d]: commit failed (%s); retrying in %.1fs",
                            self.ctx.uid, self.ctx.subtask, e, delay)
                time.sleep(delay)

    def close(self) -> None:
        """Normal end (after the final checkpoint committed): abort the empty open one."""
        if self.current is not None and self.current.status is TxnStatus.OPEN:
            self.sink.abort(self.current.handle)
            self.current.move(TxnStatus.ABORTED)
        self.sink.close()


class WriteAheadSink(ABC):
    """A sink for systems without transactions: records wait in checkpointed state and are
    sent only once the checkpoint that covers them completes.

    Exactly-once **only if** :meth:`send` is idempotent for a given ``(checkpoint_id,
    subtask)`` batch: a crash in the middle of sending makes recovery send the whole batch
    again. Records between two checkpoints are held in memory."""

    def open(self, ctx: SinkContext) -> None:  # noqa: B027 - optional hook
        """Called once in the worker."""

    @abstractmethod
    def send(self, records: list[Any], checkpoint_id: int, ctx: SinkContext) -> None:
        """Write the records a completed checkpoint covers. Must be idempotent: the batch of
        ``(checkpoint_id, ctx.subtask)`` may be sent again after a crash (also by another
        subtask after a change of parallelism, with ``ctx.subtask`` still the original)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class WriteAheadLifecycle:
    """Drives one subtask of a :class:`WriteAheadSink`."""

    def __init__(self, sink: WriteAheadSink, ctx: SinkContext) -> None:
        self.sink, self.ctx = sink, ctx
        self.buffer: list[Any] = []
        self.pending: dict[int, list[Any]] = {}

    def start(self, states: list[Any]) -> None:
        """Send what restored checkpoints hold, each batch under the subtask index that
        buffered it, so ``(checkpoint_id, ctx.subtask)`` identifies a batch even after a
        change of parallelism."""
        self.sink.open(self.ctx)
        recovered: list[tuple[int, int, list[Any]]] = []
        for st in states:
            origin = st.get("subtask", self.ctx.subtask)
            recovered.extend((cid, origin, recs) for cid, recs in st["pending"])
        for cid, origin, recs in sorted(recovered, key=lambda x: (x[0], x[1])):
            self.sink.send(recs, cid, replace(self.ctx, subtask=origin))

    def write(self, records: list[Any]) -> None:
        self.buffer.extend(records)

    def snapshot(self, checkpoint_id: int) -> dict[str, Any]:
        self.pending[checkpoint_id] = self.buffer
        self.buffer = []
        return {"subtask": self.ctx.subtask, "pending": sorted(self.pending.items())}

    def checkpoint_complete(self, checkpoint_id: int) -> None:
        _faults.point("sink.before_commit", checkpoint=checkpoint_id, subtask=self.ctx.subtask)
        for cid in sorted(c for c in self.pending if c <= checkpoint_id):
            self.sink.send(self.pending.pop(cid), cid, self.ctx)

    def close(self) -> None:
        self.sink.close()
