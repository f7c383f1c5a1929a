"""Kafka sinks: exactly-once through Kafka transactions, or at-least-once / no guarantee.

Exactly-once (DESIGN §5), per sink subtask:

* **ids**: a small pool of ``transactional.id``\\ s ``{prefix}-{subtask}-{slot}`` (default
  prefix: flow, sink uid and a hash of the checkpoint location; a restore keeps the stored
  one). A new transaction takes the lowest slot that no pending (pre-committed, not yet
  committed) transaction uses and that is not *held*: a committed slot is held until a
  checkpoint taken after its commit completes (until then a restore may list it), so
  this sink never initialises an id that a checkpoint to restore lists as pending.
  Every transaction gets a **fresh producer** (``init_transactions``), so
  every transaction has its own (producer id, epoch): a recorded pair names exactly one
  transaction, never a later one on the same id.
* **begin**: choose the slot; the producer is created on the first record (a checkpoint
  interval without records costs nothing and commits nothing). While records flow, the
  next transaction's producer is made in the background as soon as its slot is free
  again (its previous transaction committed), so it is ready at the next barrier.
* **pre-commit** (barrier): ``flush``; then ``DescribeTransactions`` records the
  transaction's producer id and epoch in the handle, which the checkpoint stores.
* **commit** (checkpoint complete): ``commit_transaction`` on the live producer; then the
  producer is closed and the slot is free again.
* **recovery commit** (a pending handle from a restored checkpoint, its producer gone):
  ``EndTxn(commit)`` with the recorded id/producer id/epoch straight to the transaction
  coordinator (:mod:`.protocol`) — *before* anything initialises that id. See
  :meth:`KafkaTransactionalSink.commit_recovered` for the error mapping.
* **abort lingering**: ``init_transactions`` on a short-lived producer for every id of this
  sink (found with ``ListTransactions`` and from the state) of old subtasks ``j`` with
  ``j % parallelism == subtask``: aborts whatever crashed attempts left open, fences zombies.
  The restored transactions' ids are left alone (committed just before; held).
* **fenced by another producer** (another job with the same prefix): at begin, produce or
  pre-commit a :class:`ConnectorError` naming the id; at commit the transaction of a
  completed checkpoint was aborted by it: lost (:meth:`KafkaTransactionalSink._lost`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

import orjson

from onceflow import _faults, _trace
from onceflow.connectors.jsonvalues import dumps as json_dumps
from onceflow.connectors.jsonvalues import dumps_non_finite, has_non_finite
from onceflow.connectors.kafka import protocol as kp
from onceflow.connectors.kafka._common import broker_config, brokers, import_kafka, serializer
from onceflow.connectors.kafka._logs import client_config, serve_logs
from onceflow.connectors.kafka._lost import lost_input
from onceflow.connectors.sinks import Sink, SinkContext
from onceflow.connectors.two_phase import TwoPhaseCommitSink
from onceflow.errors import (
    ConfigurationError,
    ConnectorError,
    KafkaTransactionLostError,
    UserFunctionError,
    foreign_errors,
)

log = logging.getLogger("onceflow.kafka")

DEFAULT_TRANSACTION_TIMEOUT_MS = 900_000  # = Kafka's default transaction.max.timeout.ms
#: Seconds allowed for noticing a failure and restarting, on top of interval + timeout.
RESTART_ALLOWANCE_S = 60.0
GUARANTEES = ("none", "at_least_once", "exactly_once")
#: What a sink does when a transaction a completed checkpoint covers was aborted by the
#: broker (its output is lost): fail the job (default), or log, count and carry on.
ON_LOST = ("fail", "continue")
#: Producer settings onceflow chooses; ``producer_config`` overrides each of them.
#: ``delivery.report.only.error``: librdkafka reports only failed deliveries, so a
#: successful record costs no Python callback (failures are still collected, and
#: ``flush`` still waits for every record).
PRODUCER_DEFAULTS: dict[str, Any] = {"linger.ms": 5, "delivery.report.only.error": True}
#: On top of PRODUCER_DEFAULTS for the transactional producers of ``"exactly_once"``. A
#: transaction's records are invisible to read_committed consumers until its commit, and
#: the pre-commit flush sends whatever still lingers, so waiting up to 50 ms to fill a
#: batch delays no visible result; fewer, larger produce requests cost the client and the
#: broker less CPU (W2 at parallelism 2 here: 3.3-4.2 s instead of 4.1-4.9 s per run).
TXN_PRODUCER_DEFAULTS: dict[str, Any] = {"linger.ms": 50}
#: records a transaction keeps while its producer is being made (then the task waits)
HOLD_BACK_MAX = 50_000


@dataclass
class KafkaTxn:
    """A Kafka transaction of the sink; pending ones are stored in checkpoints.

    ``producer_id``/``epoch`` are -1 while nothing was sent (an empty transaction: commit
    and abort are no-ops)."""

    transactional_id: str
    slot: int
    producer_id: int = -1
    epoch: int = -1
    records: int = 0
    #: the coordinator's start time of the transaction (ms), recorded at pre-commit: tells
    #: a transaction the broker aborted for outliving its timeout from a committed one
    start_ms: int = -1
    #: the checkpoint whose barrier pre-committed it (-1: not pre-committed yet)
    checkpoint: int = -1


def default_prefix(flow: str, uid: str, flow_dir: str | None = None) -> str:
    """``onceflow-{flow}-{uid}-{10 hex digits of the checkpoint location}``: two jobs (two
    copies of one flow, too) share it only if they share their checkpoint directory. A
    fresh start computes it; the sink stores it in its checkpointed state and a restore
    reuses the stored one (see :meth:`KafkaTransactionalSink.restore_state`)."""
    raw = f"onceflow-{flow}-{uid}"
    if flow_dir:
        raw += "-" + hashlib.sha256(os.path.abspath(flow_dir).encode()).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


#: librdkafka's and the broker's ways of saying another producer took over the id
_FENCED_CODES = (-144, 90, 47)  # _FENCED, PRODUCER_FENCED, INVALID_PRODUCER_EPOCH


_FATAL = -150  # librdkafka's _FATAL: the producer met a fatal error earlier


def _has_code(e: BaseException | None, *codes: int) -> bool:
    """Whether ``e`` or what caused it carries a KafkaError with one of ``codes``."""
    for _ in range(8):
        if e is None:
            return False
        err = e.args[0] if e.args else None
        code = getattr(err, "code", None)
        if callable(code) and code() in codes:
            return True
        e = e.__cause__ or e.__context__
    return False


def _fenced(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it: confluent-kafka turns a fatal error met inside a
    callback into a SystemError caused by it) says the producer was fenced."""
    return _has_code(e, *_FENCED_CODES)


def check_transaction_timeout(timeout_ms: int, broker_max_ms: int | None, *,
                              checkpoint_interval: float | None = None,
                              checkpoint_timeout: float | None = None,
                              restart_allowance: float = RESTART_ALLOWANCE_S) -> None:
    """Raise ConfigurationError when ``transaction.timeout.ms`` cannot work: above the
    broker's ``transaction.max.timeout.ms`` (the broker refuses the producer), or below
    checkpoint interval + checkpoint timeout + restart allowance (the broker could abort a
    pre-committed transaction before its checkpoint completes and is committed: lost
    output)."""
    if broker_max_ms is not None and timeout_ms > broker_max_ms:
        raise ConfigurationError(
            f"KafkaSink: transaction_timeout_ms={timeout_ms} exceeds the broker's "
            f"transaction.max.timeout.ms={broker_max_ms}; the broker would refuse the "
            f"transactional producer. Set KafkaSink(..., transaction_timeout_ms=<= "
            f"{broker_max_ms}) or raise transaction.max.timeout.ms on the brokers.")
    if checkpoint_interval is not None:
        need_s = checkpoint_interval + (checkpoint_timeout or 0.0) + restart_allowance
        if timeout_ms < need_s * 1000:
            raise ConfigurationError(
                f"KafkaSink: transaction_timeout_ms={timeout_ms} is shorter than checkpoint "
                f"interval ({checkpoint_interval:g} s) + checkpoint timeout "
                f"({checkpoint_timeout or 0:g} s) + restart allowance ({restart_allowance:g} s)"
                f" = {int(need_s * 1000)} ms: Kafka could abort a pre-committed transaction "
                f"before its checkpoint completes and output would be lost. Raise "
                f"transaction_timeout_ms (and the brokers' transaction.max.timeout.ms) or "
                f"lower the checkpoint interval/timeout.")


#: seconds an unkeyed sink keeps sending its batches to one partition (librdkafka's
#: default ``sticky.partitioning.linger.ms``; the producer setting, when given, wins)
STICKY_S = 0.010
#: seconds an unkeyed sink's partition count is kept before it is asked again
PARTITIONS_TTL_S = 30.0
#: seconds that metadata request may take (the sink's task waits meanwhile)
PARTITIONS_TIMEOUT_S = 2.0

#: orjson.dumps with the options of the JSON serializer, for ``map``
_dumps_json = functools.partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)


def _delivery_hint(err: str) -> str:
    """What to do about a delivery error (librdkafka's text of it), where that is clear."""
    if "MSG_SIZE_TOO_LARGE" in err:
        return ("; a record, or a batch of them, is larger than the topic's max.message.bytes "
                "(or the broker's message.max.bytes): raise that limit, or lower batch.size "
                "in producer_config when the records themselves fit")
    if "_UNKNOWN_PARTITION" in err:
        return "; the partition function chose a partition the topic does not have"
    if "AUTHORIZATION_FAILED" in err:
        return "; the broker refused this client: check its ACLs for the topic"
    return ""


class _Producing:
    """Produce records with a confluent-kafka Producer; collects delivery errors."""

    def __init__(self, topic: str, value: Callable[[Any], Any], key: Callable[[Any], Any] | None,
                 key_ser: Callable[[Any], Any], partition: Callable[[Any], Any] | None,
                 headers: Callable[[Any], Any] | None) -> None:
        self.topic, self.value, self.key, self.key_ser = topic, value, key, key_ser
        self.partition, self.headers = partition, headers
        self.key_str = False  # key_serializer="str": produce encodes keys inline
        self.value_json = False  # serializer="json": produce calls orjson inline
        self.errors: list[str] = []
        self.fenced = False  # a delivery failed because another producer took the id over
        #: records without a key or partition function (and no ``partitioner`` in the
        #: producer settings): each :meth:`produce` call sends its whole batch to one
        #: partition, and the batches of the next ``sticky_s`` seconds go there too, then
        #: the next partition's turn comes, as librdkafka's sticky partitioner does for
        #: records without a key (``sticky.partitioning.linger.ms``), but chosen once per
        #: batch instead of by its partitioner per record (0.1-0.2 CPU-us per record less)
        self.sticky = key is None and partition is None
        self.sticky_s = STICKY_S
        self._parts = 0  # partitions of ``topic`` (0: unknown; librdkafka chooses then)
        self._parts_at = -PARTITIONS_TTL_S  # time.monotonic() when last asked
        self._next = random.randrange(1 << 16)  # subtasks start at different partitions
        self._cur = -1  # the partition of the current sticky period
        self._cur_at = 0.0  # time.monotonic() when it began

    def batch_partition(self, producer: Any) -> int:
        """The partition of the next unkeyed batch (-1: librdkafka's partitioner, while the
        topic's partition count is not known). The count is asked again every
        ``PARTITIONS_TTL_S`` seconds, so partitions added to the topic get records too."""
        now = time.monotonic()
        if now - self._parts_at >= PARTITIONS_TTL_S:
            self._parts_at = now
            try:
                t = producer.list_topics(self.topic, timeout=PARTITIONS_TIMEOUT_S).topics.get(
                    self.topic)
                if t is not None and t.error is None and t.partitions:
                    self._parts = len(t.partitions)
            except Exception:  # unreachable now: keep what was known, ask again later
                pass
        n = self._parts
        if n <= 0:
            return -1
        if self._cur < 0 or self._cur >= n or now - self._cur_at >= self.sticky_s:
            self._next = (self._next + 1) % n
            self._cur, self._cur_at = self._next, now
        return self._cur

    def _unknown_partition(self, e: Exception) -> bool:
        """``produce`` refused an explicit partition the topic does not have (fewer than
        last seen: re-created?): forget the count (librdkafka chooses until it is asked
        again) and say so, so the record is produced again without a partition."""
        if not _has_code(e, -190):  # _UNKNOWN_PARTITION
            return False
        self._parts, self._parts_at, self._cur = 0, time.monotonic(), -1
        return True

    def unserializable(self, records: list[Any]) -> UserFunctionError | None:
        """The error naming the first of ``records`` the key function or the serializers
        refuse, or None if each one alone serializes (the error came from elsewhere).
        Only on the error path: a batch held back while the producer started is
        serialized at a later write or at pre-commit, where the error would otherwise
        name no record."""
        for r in records:
            try:
                self.value(r)
                if self.key is not None:
                    self.key_ser(self.key(r))
            except Exception as e:
                return UserFunctionError(f"KafkaSink({self.topic!r})", r, e)
        return None

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            if err.code() in _FENCED_CODES:
                self.fenced = True
            self.errors.append(str(err))

    def produce(self, producer: Any, records: list[Any]) -> None:
        """One loop for every configuration, positional arguments in the common case.
        ``serializer="json"`` and ``key_serializer="str"`` are done inline (no serializer
        call per record)."""
        produce, topic, value, cb = producer.produce, self.topic, self.value, self._on_delivery
        key, key_ser, key_str = self.key, self.key_ser, self.key_str
        part, hdrs = self.partition, self.headers
        if self.value_json and part is None and hdrs is None:
            if key is None:
                self._produce_json_values(producer, records)
            else:
                self._produce_json_keyed(producer, records)
            return
        dumps, opt, js = orjson.dumps, orjson.OPT_NON_STR_KEYS, self.value_json
        p = self.batch_partition(producer) if self.sticky and records else -1
        for r in records:
            if js:
                v = dumps(r, None, opt)
                if b"null" in v and has_non_finite(r):  # orjson writes NaN/inf as null
                    v = dumps_non_finite(r)
            else:
                v = value(r)
            if key is None:
                k = None
            elif key_str:
                k = key(r)
                if k.__class__ is str:
                    k = k.encode()
                elif k is not None:
                    k = str(k).encode("utf-8")
            else:
                k = key_ser(key(r))
            if part is not None:
                p = part(r)
                p = -1 if p is None else int(p)
            while True:
                try:
                    if hdrs is None:
                        produce(topic, v, k, p, cb)
                    else:
                        produce(topic, v, k, p, cb, headers=hdrs(r))
                    break
                except BufferError:
                    producer.poll(0.05)
                except Exception as e:
                    if part is not None or not self._unknown_partition(e):
                        raise
                    p = -1
        producer.poll(0)

    def _produce_json_values(self, producer: Any, records: list[Any]) -> None:
        """The common case of :meth:`produce`, ``serializer="json"`` without key, partition
        or headers: the values encoded by ``map`` over the batch (no Python loop), the
        loop below only hands them to the producer (about 1/4 less CPU per record than
        the general loop). NaN and infinities as the general loop writes them."""
        vals = self._json_values(records)
        produce, topic, cb = producer.produce, self.topic, self._on_delivery
        p = self.batch_partition(producer) if self.sticky and vals else -1
        for v in vals:
            try:
                produce(topic, v, None, p, cb)
            except BufferError:
                self._produce_when_full(producer, v, None, p)
            except Exception as e:
                if not self._unknown_partition(e):
                    raise
                p = -1
                self._produce_when_full(producer, v, None, p)
        producer.poll(0)

    def _json_values(self, records: list[Any]) -> list[bytes]:
        """``serializer="json"``'s bytes of ``records``, encoded by ``map`` (NaN and
        infinities as the general loop writes them)."""
        try:
            vals = list(map(_dumps_json, records))
        except orjson.JSONEncodeError:  # an int past 64 bits (written exactly), or bad
            return list(map(json_dumps, records))
        if b"null" in b"\n".join(vals):  # one search for the batch (every value is in it)
            for i, v in enumerate(vals):
                if b"null" in v and has_non_finite(records[i]):  # orjson wrote NaN/inf as null
                    vals[i] = dumps_non_finite(records[i])
        return vals

    def _produce_json_keyed(self, producer: Any, records: list[Any]) -> None:
        """``serializer="json"`` with a key function (no partition function or headers):
        values and keys computed by ``map`` over the batch, the loop below only hands them
        to the producer; keys as the general loop encodes them."""
        assert self.key is not None
        vals = self._json_values(records)
        keys = list(map(self.key, records))
        if self.key_str:
            if len(set(map(type, keys))) == 1 and keys and keys[0].__class__ is str:
                keys = list(map(str.encode, keys))  # the common case: every key a str
            else:
                keys = [k.encode() if k.__class__ is str else
                        (None if k is None else str(k).encode("utf-8")) for k in keys]
        else:
            keys = list(map(self.key_ser, keys))
        produce, topic, cb = producer.produce, self.topic, self._on_delivery
        for v, k in zip(vals, keys, strict=True):
            try:
                produce(topic, v, k, -1, cb)
            except BufferError:
                self._produce_when_full(producer, v, k, -1)
        producer.poll(0)

    def _produce_when_full(self, producer: Any, v: Any, k: Any, p: int) -> None:
        """Produce one record, letting the producer deliver while its queue is full (the
        batch loops call this only after ``produce`` raised ``BufferError``, or to produce
        again without an explicit partition)."""
        while True:
            try:
                producer.produce(self.topic, v, k, p, self._on_delivery)
                return
            except BufferError:
                producer.poll(0.05)

    def flush(self, producer: Any, timeout: float) -> None:
        left = producer.flush(timeout)
        if left:
            raise ConnectorError(f"Kafka producer of topic {self.topic!r}: {left} record(s) "
                                 f"not delivered within {timeout:g} s")
        if self.errors:
            errs, self.errors = self.errors, []
            raise ConnectorError(f"Kafka producer of topic {self.topic!r}: {len(errs)} "
                                 f"delivery error(s), e.g. {errs[0]}{_delivery_hint(errs[0])}")


class KafkaTransactionalSink(TwoPhaseCommitSink[KafkaTxn]):
    """Exactly-once Kafka sink; create it with :func:`onceflow.kafka.KafkaSink`."""

    def __init__(self, bootstrap_servers: str, topic: str, *,
                 transactional_id_prefix: str | None = None,
                 key: Callable[[Any], Any] | None = None,
                 partition: Callable[[Any], int | None] | None = None,
                 serializer: str | Callable[[Any], Any] = "bytes",
                 key_serializer: str | Callable[[Any], Any] = "bytes",
                 headers: Callable[[Any], Any] | None = None,
                 transaction_timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS,
                 producer_config: dict[str, Any] | None = None,
                 operation_timeout: float = 60.0,
                 on_lost_transaction: str = "fail") -> None:
        if on_lost_transaction not in ON_LOST:
            raise ConfigurationError(
                f"KafkaSink: on_lost_transaction={on_lost_transaction!r}; use one of {ON_LOST}")
        self.on_lost_transaction = on_lost_transaction
        if transactional_id_prefix is not None and not re.fullmatch(
                r"[A-Za-z0-9._-]+", transactional_id_prefix):
            raise ConfigurationError(
                f"KafkaSink: transactional_id_prefix {transactional_id_prefix!r} must be "
                "letters, digits, '.', '_' and '-'")
        self.bootstrap_servers, self.topic = bootstrap_servers, topic
        self.transactional_id_prefix = transactional_id_prefix
        self.key, self.partition, self.headers = key, partition, headers
        self.serializer, self.key_serializer = serializer, key_serializer
        self.transaction_timeout_ms = int(transaction_timeout_ms)
        self.producer_config = dict(producer_config or {})
        self.operation_timeout = operation_timeout
        self._check_args()
        self._reset()

    def _check_args(self) -> None:
        _check_common(self.bootstrap_servers, self.topic)
        if self.transaction_timeout_ms < 1000:
            raise ConfigurationError("KafkaSink: transaction_timeout_ms must be >= 1000")
        # the commit protocol's own client connects as the producers do (or says why not)
        kp.Security.from_config(self.producer_config)
        for k, arg in (("transactional.id", "transactional_id_prefix"),
                       ("bootstrap.servers", "bootstrap_servers"),
                       ("transaction.timeout.ms", "transaction_timeout_ms")):
            if k in self.producer_config:
                raise ConfigurationError(f"KafkaSink: set {k} through the KafkaSink argument "
                                         f"{arg}=, not producer_config")

    def _reset(self) -> None:
        self._ctx: SinkContext | None = None
        self._prefix = ""
        self._live: dict[str, tuple[Any, KafkaTxn]] = {}  # transactional id -> producer, txn
        self._busy: set[int] = set()
        #: slots whose last transaction is committed but may still be listed as pending
        #: by a checkpoint one could restore: slot -> the latest checkpoint that may list
        #: it. Not initialised again (not used) until a later checkpoint completes, so a
        #: recovery commit that finds its id fenced knows another producer did it.
        self._held: dict[int, int] = {}
        self._last_snapshot = -1
        self._first_snapshot = -1  # of this attempt: restored handles are older
        #: the restored state was written by a sink that holds slots (see ``_held``)
        self._strict_recovery = False
        self._slots_seen = 0
        self._parallelism_seen = 0
        self._old_prefixes: set[str] = set()  # prefixes in restored state (if it changed)
        self._client: kp.TxnClient | None = None
        self._out: _Producing | None = None
        self._warm: dict[str, Future[Any]] = {}  # transactional id -> producer being made
        #: records of the current transaction waiting for its producer (see write)
        self._held_back: list[Any] = []
        #: the commit running in the background: (thread, its transaction, its errors)
        #: (errors: the exception, then the producer it leaves)
        self._committing: tuple[threading.Thread, KafkaTxn, list[Any]] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._last_had_records = True
        self._pre_committed: KafkaTxn | None = None
        #: abort_lingering running in the background: (thread, its errors)
        self._lingering: tuple[threading.Thread, list[BaseException]] | None = None
        #: transactions of completed checkpoints found aborted by the broker, since the job
        #: first started (kept in the sink's state across restarts)
        self.lost_transactions = 0

    def __getstate__(self) -> dict[str, Any]:
        st = self.__dict__.copy()
        for k in ("_live", "_client", "_out", "_warm", "_pool", "_lingering", "_held_back",
                  "_committing"):
            st.pop(k, None)
        return st

    def __setstate__(self, st: dict[str, Any]) -> None:
        self.__dict__.update(st)
        self._live, self._client, self._out, self._warm, self._pool = {}, None, None, {}, None
        self._lingering = None
        self._held_back = []
        self._committing = None

    # --- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        """Driver side, before the job starts: the broker must accept the timeout."""
        raw = broker_config(self.bootstrap_servers, "transaction.max.timeout.ms",
                            config=self.producer_config)
        check_transaction_timeout(self.transaction_timeout_ms,
                                  int(raw) if raw is not None else None)

    def validate_checkpointing(self, interval: float | None, timeout: float) -> None:
        """Driver side: a transaction lives from one checkpoint until the next completes and
        is committed, so the flow's checkpoint settings bound the transaction timeout."""
        if interval is None:
            raise ConfigurationError(
                "KafkaSink(guarantee='exactly_once') commits on checkpoints: call "
                "flow.enable_checkpointing(interval=..., storage=...), or use "
                "guarantee='at_least_once'")
        check_transaction_timeout(self.transaction_timeout_ms, None,
                                  checkpoint_interval=interval, checkpoint_timeout=timeout)

    # --- lifecycle -----------------------------------------------------------------------
    def open(self, ctx: SinkContext) -> None:
        import_kafka()
        self._ctx = ctx
        self._prefix = self.transactional_id_prefix or default_prefix(ctx.flow, ctx.uid,
                                                                      ctx.flow_dir)
        self._parallelism_seen = max(self._parallelism_seen, ctx.parallelism)
        self._out = _Producing(self.topic, serializer(self.serializer, "serializer"), self.key,
                               serializer(self.key_serializer, "key_serializer"),
                               self.partition, self.headers)
        self._out.key_str = self.key_serializer == "str"
        self._out.value_json = self.serializer == "json"
        self._out.sticky &= "partitioner" not in self.producer_config
        if "sticky.partitioning.linger.ms" in self.producer_config:
            self._out.sticky_s = float(self.producer_config["sticky.partitioning.linger.ms"]) / 1000

    def _txn_client(self) -> kp.TxnClient:
        if self._client is None:
            self._client = kp.TxnClient(self.bootstrap_servers, timeout=10.0,
                                        config=self.producer_config)
        return self._client

    def _tid(self, subtask: int, slot: int) -> str:
        return f"{self._prefix}-{subtask}-{slot}"

    def _taken_over(self, tid: str) -> str:
        """What being fenced on ``tid`` means, for the errors that report it."""
        given = ("the transactional_id_prefix given" if self.transactional_id_prefix
                 else "the default transactional_id_prefix (a restore keeps the one of its "
                      "checkpoint)")
        return (f"another producer initialised transactional id {tid} and fenced this one "
                f"(ProducerFenced): another job, or a second copy of this flow, uses "
                f"{given} {self._prefix!r} — or this attempt of the job was replaced by a "
                f"newer one. Two running jobs must never share a prefix: give each "
                f"KafkaSink its own transactional_id_prefix, or leave it unset and give each "
                f"job its own checkpoint storage")

    def _fenced_error(self, tid: str, doing: str) -> ConnectorError:
        return ConnectorError(f"KafkaSink({self.topic}): {doing} {tid}: "
                              f"{self._taken_over(tid)}. (Nothing of a completed checkpoint "
                              f"is lost: this transaction was not pre-committed yet.)")

    def _producer(self, tid: str) -> Any:
        ck = import_kafka()
        conf = {**PRODUCER_DEFAULTS, **TXN_PRODUCER_DEFAULTS, **self.producer_config,
                "bootstrap.servers": self.bootstrap_servers, "transactional.id": tid,
                "transaction.timeout.ms": self.transaction_timeout_ms}
        with foreign_errors(f"KafkaSink({self.topic}): starting the transactional producer "
                            f"{tid}", ck.KafkaException):
            p = ck.Producer(client_config(conf, "sink"))
            try:
                p.init_transactions(self.operation_timeout)
            except BaseException:
                serve_logs(p)  # librdkafka's lines on what went wrong
                _close_producer(p)  # never left to the traceback (and the garbage collector)
                raise
        return p

    def _free_slot(self) -> int:
        slot = 0
        while slot in self._busy or slot in self._held:
            slot += 1
        return slot

    def _unhold(self, completed: int) -> None:
        """Checkpoint ``completed`` is complete: slots held for older ones are free."""
        for slot in [s for s, upto in self._held.items() if upto < completed]:
            del self._held[slot]

    def begin_transaction(self) -> KafkaTxn:
        assert self._ctx is not None
        slot = self._free_slot()
        self._busy.add(slot)
        self._slots_seen = max(self._slots_seen, slot + 1)
        txn = KafkaTxn(self._tid(self._ctx.subtask, slot), slot)
        if self._last_had_records:
            self._warm_up(slot)
        return txn

    def _warm_up(self, slot: int) -> None:
        """Make the producer for ``slot``'s next transaction in the background:
        init_transactions costs round trips (about 0.2 s here), which would otherwise delay
        the first record after a barrier. Only for a free slot, i.e. one whose previous
        transaction was committed (or never sent anything): initialising its id then
        cannot abort anything that a checkpoint covers. A warm producer stays with its
        slot until a transaction on that slot takes it."""
        assert self._ctx is not None
        tid = self._tid(self._ctx.subtask, slot)
        if tid in self._live or tid in self._warm:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="onceflow-kafka")
        self._warm[tid] = self._pool.submit(self._started_producer, tid)

    def _started_producer(self, tid: str) -> Any:
        producer = self._producer(tid)  # fresh epoch for this transaction
        try:
            producer.begin_transaction()
        except BaseException as e:
            _close_producer(producer)
            if _fenced(e):
                raise self._fenced_error(tid, "beginning a transaction on") from e
            raise
        return producer

    def _take_warm(self, txn: KafkaTxn) -> Any:
        fut = self._warm.pop(txn.transactional_id, None)
        return None if fut is None else fut.result()

    def _ready(self, txn: KafkaTxn, wait: bool) -> tuple[Any, KafkaTxn] | None:
        """The live producer of ``txn``, made (or taken from its warm-up) if need be; None
        when ``wait`` is false and it is not ready yet (still being made, or lingering
        transactions still being aborted): the caller keeps the records meanwhile."""
        tid = txn.transactional_id
        live = self._live.get(tid)
        if live is not None:
            return live
        if not wait:
            busy = self._lingering is not None and self._lingering[0].is_alive()
            fut = self._warm.get(tid)
            if fut is None:
                self._warm_up_own(txn)
                return None
            if not fut.done() and self._take_ready_slot(txn, block=False):
                tid = txn.transactional_id
                fut = self._warm[tid]
            if busy or not fut.done():
                return None
        elif self._take_ready_slot(txn, block=True):
            tid = txn.transactional_id
        if _trace.ON:
            _trace.event("sink_producer_wait", tid=tid, wait=wait, held=len(self._held_back))
        self._lingering_done()
        producer = self._take_warm(txn) or self._started_producer(tid)
        if _trace.ON:
            _trace.event("sink_producer_ready", tid=tid)
        live = self._live[tid] = (producer, txn)
        if self._held_back:
            records, self._held_back = self._held_back, []
            self._produce(live, records)
        return live

    def _take_ready_slot(self, txn: KafkaTxn, block: bool) -> bool:
        """Move ``txn``, which has sent nothing yet, to another free slot whose warm
        producer is ready while its own is still being made (``block``: wait for the first
        of them to be ready); True if it moved. librdkafka's ``init_transactions`` now and
        then waits out a 500 ms coordinator-query timer (about one in four here, at a
        job's start when two are made at once), and the first transaction's records would
        wait for it. Safe: a free slot's producer was made while no pending transaction
        used the slot (:meth:`_warm_up`), and a transaction's id is only recorded at its
        pre-commit. The own slot's producer stays warm for a later transaction."""
        assert self._ctx is not None
        own = self._warm.get(txn.transactional_id)
        if own is None or own.done() or txn.producer_id != -1:
            return False
        others = {}
        for slot in range(self._slots_seen + 2):
            if slot == txn.slot or slot in self._busy or slot in self._held:
                continue
            fut = self._warm.get(self._tid(self._ctx.subtask, slot))
            if fut is not None:
                others[fut] = slot
        if not others:
            return False
        if block:
            wait_futures([own, *others], return_when=FIRST_COMPLETED)
        for fut, slot in sorted(others.items(), key=lambda fs: fs[1]):
            if own.done():
                return False
            if fut.done() and fut.exception() is None:
                self._busy.discard(txn.slot)
                self._busy.add(slot)
                self._slots_seen = max(self._slots_seen, slot + 1)  # a restore's lingering
                if _trace.ON:
                    _trace.event("sink_slot_moved", tid=txn.transactional_id,
                                 to=self._tid(self._ctx.subtask, slot))
                txn.slot, txn.transactional_id = slot, self._tid(self._ctx.subtask, slot)
                return True
        return False

    def _warm_up_own(self, txn: KafkaTxn) -> None:
        """Start making ``txn``'s producer in the background (its slot is ``txn``'s own,
        chosen free: initialising it cannot abort anything a checkpoint covers)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="onceflow-kafka")
        self._warm[txn.transactional_id] = self._pool.submit(self._started_producer,
                                                             txn.transactional_id)

    def write(self, txn: KafkaTxn, records: list[Any]) -> None:
        assert self._out is not None
        # Until the transaction's producer is ready (init_transactions takes round trips,
        # and at start-up lingering transactions are aborted first), its records wait
        # here instead of holding up the task: at most HOLD_BACK_MAX of them.
        live = self._ready(txn, wait=len(self._held_back) + len(records) > HOLD_BACK_MAX)
        if live is None:
            self._held_back.extend(records)
        else:
            self._produce(live, records)
        txn.records += len(records)

    def _produce(self, live: tuple[Any, KafkaTxn], records: list[Any]) -> None:
        assert self._out is not None
        tid = live[1].transactional_id
        ck = import_kafka()
        try:
            with foreign_errors(f"KafkaSink({self.topic}): producing to {tid}",
                                ck.KafkaException):
                self._out.produce(live[0], records)
        except (TypeError, ValueError, OverflowError) as e:  # a record the format cannot hold
            bad = self._out.unserializable(records)
            if bad is None:
                raise
            raise bad from e
        except (ConnectorError, SystemError) as e:
            if _has_code(e, _FATAL) and not self._out.fenced:
                # a produce after the producer turned fatal says only "Fatal error"; the
                # next poll raises the fatal error itself (e.g. _FENCED)
                try:
                    live[0].poll(0)
                except Exception as fatal:
                    if _fenced(fatal):
                        self._out.fenced = True
            if _fenced(e) or self._out.fenced:
                raise self._fenced_error(tid, "producing to") from e
            raise

    def pre_commit(self, txn: KafkaTxn) -> None:
        if _trace.ON:
            _trace.event("sink_pre_commit", tid=txn.transactional_id, records=txn.records)
        self._lingering_done()
        self._commit_done()
        if _trace.ON:
            _trace.event("sink_pre_commit_joined", tid=txn.transactional_id)
        self._last_had_records = txn.records > 0
        live = self._ready(txn, wait=True) if txn.records else None
        if live is None or txn.records == 0:
            self._discard_empty(txn)
            self._pre_committed = txn  # (for its checkpoint id: see commit)
            return
        assert self._out is not None
        _faults.point("sink.pre_commit", subtask=self._ctx.subtask if self._ctx else -1)
        ck = import_kafka()
        try:
            self._out.flush(live[0], self.operation_timeout)
        except (ck.KafkaException, ConnectorError, SystemError) as e:
            if _fenced(e) or self._out.fenced:
                raise self._fenced_error(txn.transactional_id, "pre-committing") from e
            raise
        d = self._txn_client().describe(txn.transactional_id)
        if d.error or d.state != "Ongoing":
            why = ""
            if d.state in ("PrepareAbort", "CompleteAbort", "Empty"):
                other = self._taken_over(txn.transactional_id)
                why = (f": the broker aborted it (it outlived transaction.timeout.ms, "
                       f"{self.transaction_timeout_ms} ms?), or {other}. Nothing of a "
                       f"completed checkpoint is lost: this transaction was not "
                       f"pre-committed yet")
            raise ConnectorError(
                f"KafkaSink: transaction {txn.transactional_id} is {d.state or '?'} "
                f"({kp.error_name(d.error)}) at pre-commit, expected Ongoing{why}")
        txn.producer_id, txn.epoch, txn.start_ms = d.producer_id, d.producer_epoch, d.start_ms
        self._pre_committed = txn
        if _trace.ON:
            _trace.event("sink_pre_committed", tid=txn.transactional_id)

    def commit(self, txn: KafkaTxn) -> None:
        if _trace.ON:
            _trace.event("sink_commit", tid=txn.transactional_id, checkpoint=txn.checkpoint,
                         records=txn.records)
        if txn.producer_id < 0:  # empty: nothing to make visible
            if 0 <= self._first_snapshot <= txn.checkpoint:  # this attempt's own
                self._unhold(txn.checkpoint)
            self._release(txn)
            return
        self._commit_done()
        live = self._live.get(txn.transactional_id)
        if live is not None and live[1] is txn:
            if _faults.enabled():  # crash tests: the commit in the task, as it happens
                try:
                    self._commit_live(live[0], txn)
                except import_kafka().KafkaException as e:
                    if not _fenced(e):
                        raise  # the producer stays live: the lifecycle retries
                    del self._live[txn.transactional_id]
                    self._release(txn)
                    self._commit_failed(txn, e)
                    return
                del self._live[txn.transactional_id]
                _close_producer(live[0])
            else:
                del self._live[txn.transactional_id]
                # In the background: the task goes on with the next transaction (another
                # producer) meanwhile. Joined before the next pre-commit, commit and at
                # close, so no later checkpoint can complete unless this commit succeeded
                # (a failure then fails that checkpoint: a restore commits it again).
                th = threading.Thread(target=self._commit_in_background,
                                      args=(live[0], txn), daemon=True,
                                      name="onceflow-kafka-commit")
                self._committing = (th, txn, [])
                th.start()
            self._release(txn)
            self._unhold(txn.checkpoint)
            # checkpoints up to the last one taken may still list it as pending
            self._held[txn.slot] = max(self._last_snapshot, txn.checkpoint)
            # Steady state: the next barrier begins a transaction on the lowest free slot;
            # start its producer now (that slot's last transaction is committed and no
            # checkpoint to restore lists it), so that it is ready by then.
            self._warm_up(self._free_slot())
            return
        self.commit_recovered(txn)
        self._release(txn)
        if self._ctx is not None and txn.transactional_id == self._tid(self._ctx.subtask,
                                                                       txn.slot):
            # the restored checkpoint lists it: held until this attempt's first commit
            self._held[txn.slot] = max(self._held.get(txn.slot, -1), txn.checkpoint)
            self._slots_seen = max(self._slots_seen, txn.slot + 1)

    def _commit_in_background(self, producer: Any, txn: KafkaTxn) -> None:
        assert self._committing is not None
        errors = self._committing[2]
        for delay in (0.1, 0.5, 2.0, None):  # as TransactionLifecycle retries a commit
            try:
                producer.commit_transaction(self.operation_timeout)
                if _trace.ON:
                    _trace.event("sink_committed", tid=txn.transactional_id,
                                 checkpoint=txn.checkpoint)
                _close_producer(producer)
                return
            except BaseException as e:
                if delay is None or _fenced(e):
                    # not closed: Producer.close() would abort the transaction, which
                    # the checkpoint lists for a recovery commit; dereferenced by the
                    # task at the join
                    errors.append(e)
                    errors.append(producer)
                    # (nor kept by this frame, which ``e``'s traceback holds)
                    del producer
                    return
                log.warning("kafka sink: commit of %s failed (%s); retrying in %.1fs",
                            txn.transactional_id, e, delay)
                time.sleep(delay)

    def _commit_done(self) -> None:
        """Wait for the commit running in the background; raise what it met."""
        if self._committing is None:
            return
        th, txn, errors = self._committing
        th.join()
        self._committing = None
        if errors:
            err = errors[0]
            errors.clear()  # the failed producer goes here, in the task
            self._commit_failed(txn, err)

    def _commit_failed(self, txn: KafkaTxn, e: BaseException) -> None:
        if _fenced(e):
            # The coordinator refused our EndTxn: another producer's InitProducerId on
            # the id aborted this pre-committed transaction of a completed checkpoint.
            # Its output is lost: never silent.
            self._lost(txn, self._taken_over(txn.transactional_id) +
                       "; that aborted this transaction after it was pre-committed",
                       remedy="Give every running job its own prefix")
            return
        raise ConnectorError(
            f"KafkaSink({self.topic}): committing {txn.transactional_id} (checkpoint "
            f"{txn.checkpoint}) failed: {type(e).__name__}: {e}. The checkpoint still lists "
            f"it: a restore commits it") from e

    def _release(self, txn: KafkaTxn) -> None:
        self._discard_empty(txn)
        self._busy.discard(txn.slot)

    def _discard_empty(self, txn: KafkaTxn) -> None:
        """Close a producer made for ``txn`` that never sent a record (its transaction is
        empty, aborting it is a no-op)."""
        if txn.records:
            return
        try:
            producer = self._take_warm(txn)
        except Exception:
            producer = None
        if producer is not None:
            _close_producer(producer)

    def _commit_live(self, producer: Any, txn: KafkaTxn) -> None:
        sub = self._ctx.subtask if self._ctx else -1
        if not _faults.enabled():
            producer.commit_transaction(self.operation_timeout)
            return
        # Crash tests: die after the coordinator received EndTxn, before the reply is used.
        err: list[BaseException] = []

        def run() -> None:
            try:
                producer.commit_transaction(self.operation_timeout)
            except BaseException as e:
                err.append(e)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        deadline = time.monotonic() + 5
        while th.is_alive() and time.monotonic() < deadline:
            d = self._txn_client().describe(txn.transactional_id)
            if d.state in ("PrepareCommit", "CompleteCommit"):
                break
            time.sleep(0.002)
        _faults.point("sink.mid_commit", subtask=sub, transactional_id=txn.transactional_id)
        th.join()
        if err:
            raise err[0]

    def commit_recovered(self, txn: KafkaTxn) -> None:
        """Commit a pending transaction whose producer is gone: ``EndTxn(commit)`` with the
        recorded (transactional id, producer id, epoch).

        Error mapping (what the coordinator answers, and what it means here):

        * ``NONE``: committed now — or it was already committed with this epoch (the
          coordinator answers a repeated commit of a ``CompleteCommit`` transaction with
          NONE).
        * ``CONCURRENT_TRANSACTIONS``, ``COORDINATOR_LOAD_IN_PROGRESS``,
          ``COORDINATOR_NOT_AVAILABLE``, ``NOT_COORDINATOR``, ``REQUEST_TIMED_OUT``, broken
          connection: retry (finding the coordinator again) until ``operation_timeout``.
        * ``PRODUCER_FENCED`` / ``INVALID_PRODUCER_EPOCH``: a newer epoch. Either the id was
          initialised again since — the sink initialises an id only after the transaction
          on it was committed, so *already committed* — or the broker aborted this very
          transaction for outliving ``transaction.timeout.ms`` (it bumps the epoch by one
          and keeps the transaction's start time, which the handle recorded at
          pre-commit): *lost*, see :meth:`_lost`.
        * ``INVALID_TXN_STATE`` (same epoch, but Empty/PrepareAbort/CompleteAbort): the
          transaction was aborted — lost: :class:`KafkaTransactionLostError`.
        * ``INVALID_PRODUCER_ID_MAPPING``: the coordinator does not know the id (expired
          after ``transactional.id.expiration.ms``): lost, fatal.
        * anything else: fatal, with the code's name.
        """
        client = self._txn_client()
        tid, pid, epoch = txn.transactional_id, txn.producer_id, txn.epoch
        deadline = time.monotonic() + self.operation_timeout
        delay = 0.05
        while True:
            try:
                err = client.end_txn(tid, pid, epoch, True)
            except kp.KafkaProtocolError as e:
                if e.code not in kp.RETRIABLE:
                    raise
                err = e.code
            if err == kp.NONE:
                log.info("kafka sink: recovery commit of %s (pid %d, epoch %d): committed",
                         tid, pid, epoch)
                return
            if err in kp.RETRIABLE and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if err in (kp.PRODUCER_FENCED, kp.INVALID_PRODUCER_EPOCH):
                d = self._described(client, tid, "a newer epoch fenced the recovery commit")
                if _aborted_on_timeout(txn, d):
                    self._lost(txn, f"the broker aborted it (now {d.state} at epoch "
                               f"{d.producer_epoch}, same transaction start) because it "
                               f"outlived transaction.timeout.ms "
                               f"({self.transaction_timeout_ms} ms)")
                    return
                if self._strict_recovery:
                    # this job never initialises the id of a transaction that a checkpoint
                    # to restore lists (``_held``): another producer did
                    self._taken_over_at_recovery(txn, d)
                    return
                log.info("kafka sink: recovery commit of %s (pid %d, epoch %d): id since "
                         "re-initialised (now %s, epoch %d): already committed", tid, pid,
                         epoch, d.state, d.producer_epoch)
                return
            if err == kp.INVALID_TXN_STATE:
                d = self._described(client, tid, "the recovery commit met INVALID_TXN_STATE")
                self._lost(txn, f"the broker says it is {d.state}: it was aborted, most "
                           f"likely because transaction.timeout.ms "
                           f"({self.transaction_timeout_ms} ms) passed before recovery")
                return
            if err == kp.INVALID_PRODUCER_ID_MAPPING:
                self._lost(txn, "the coordinator does not know the id "
                           "(INVALID_PRODUCER_ID_MAPPING: transactional id expired?)")
                return
            raise ConnectorError(f"KafkaSink: EndTxn(commit) for {tid} failed: "
                               f"{kp.error_name(err)}")

    def _described(self, client: kp.TxnClient, tid: str, why: str) -> kp.TxnDescription:
        """``tid``'s description, to judge a recovery commit's outcome by; an error in it
        (a coordinator not ready for longer than the timeout) fails the commit, to be
        retried by the restore, rather than judging committed or lost on an empty state."""
        d = client.describe(tid)
        if d.error:
            raise ConnectorError(
                f"KafkaSink: recovery commit of {tid}: {why}, and the coordinator could "
                f"not describe the transaction ({kp.error_name(d.error)}); not judging it "
                f"committed or lost: the job fails and its restore tries the commit again")
        return d

    def _taken_over_at_recovery(self, txn: KafkaTxn, d: kp.TxnDescription) -> None:
        """The recovery commit of ``txn`` found its id initialised by another producer.
        One InitProducerId after the commit bumps the epoch by one; one that met the
        transaction still open aborts it first (two bumps at least)."""
        tid = txn.transactional_id
        now = f"now {d.state} at producer id {d.producer_id}, epoch {d.producer_epoch}"
        if d.producer_id == txn.producer_id and d.producer_epoch == txn.epoch + 1 and \
                d.state not in ("PrepareAbort", "CompleteAbort"):
            raise ConnectorError(
                f"KafkaSink({self.topic}): recovery commit of {tid} (checkpoint "
                f"{txn.checkpoint}): {self._taken_over(tid)}. The transaction was committed "
                f"before that ({now}): nothing of it is lost.")
        self._lost(txn, f"{self._taken_over(tid)}; it was at epoch {txn.epoch} when "
                   f"pre-committed, {now}: the other producer's start aborted it if it was "
                   f"not committed yet, and the coordinator cannot tell any more",
                   remedy="Give every running job its own prefix")

    def _lost(self, txn: KafkaTxn, why: str, remedy: str | None = None) -> None:
        """A transaction of a completed checkpoint cannot be committed any more: its output
        is lost. Never silent: raise :class:`KafkaTransactionLostError`, or (with
        ``on_lost_transaction="continue"``) log it as an error, count it and carry on."""
        self.lost_transactions += 1
        sub = self._ctx.subtask if self._ctx else -1
        uid = self._ctx.uid if self._ctx else "?"
        ckpt = txn.checkpoint if txn.checkpoint >= 0 else "?"
        inputs = lost_input(self._ctx.flow_dir if self._ctx else None, txn.checkpoint)
        msg = (f"KafkaSink {uid!r} subtask {sub}: the transaction of checkpoint {ckpt} "
               f"(transactional id {txn.transactional_id}, producer id {txn.producer_id}, "
               f"epoch {txn.epoch}, {txn.records} record(s) to topic {self.topic!r}) cannot "
               f"be committed: {why}. Its output is LOST: what this sink subtask received "
               f"from these input offsets never reaches {self.topic!r}: {inputs}. "
               f"{remedy or _TIMEOUT_REMEDY}; "
               f"lost transactions so far: {self.lost_transactions}.")
        log.error("%s", msg, extra={"event": "kafka_transaction_lost", "uid": uid,
                                    "subtask": sub, "checkpoint": txn.checkpoint,
                                    "transactional_id": txn.transactional_id,
                                    "records": txn.records,
                                    "lost_transactions": self.lost_transactions})
        if self.on_lost_transaction == "fail":
            raise KafkaTransactionLostError(msg)

    def abort(self, txn: KafkaTxn) -> None:
        self._lingering_done()
        self._held_back = []
        if txn.transactional_id not in self._live:
            try:
                producer = self._take_warm(txn)  # made for it, nothing produced on it
            except Exception:
                producer = None
            if producer is not None:
                _close_producer(producer)
        self._discard_empty(txn)
        live = self._live.pop(txn.transactional_id, None)
        if live is not None and live[1] is txn:
            try:
                live[0].abort_transaction(self.operation_timeout)
            finally:
                _close_producer(live[0])
        elif live is not None:
            self._live[txn.transactional_id] = live
        self._release(txn)

    def lingering_ids(self, ctx: SinkContext) -> list[str]:
        """Transactional ids of this sink that subtask ``ctx.subtask`` must clean up."""
        prefixes = sorted({self._prefix, *self._old_prefixes})
        pat = re.compile(rf"^(?:{'|'.join(map(re.escape, prefixes))})-(\d+)-(\d+)$")
        ids: set[str] = set()
        try:
            found = self._txn_client().list_transactions(
                brokers(self.bootstrap_servers, config=self.producer_config))
        except kp.KafkaProtocolError as e:
            log.warning("kafka sink: ListTransactions failed (%s); using the state only", e)
            found = []
        for tid, _pid, _state in found:
            m = pat.match(tid)
            if m and int(m.group(1)) % ctx.parallelism == ctx.subtask:
                ids.add(tid)
        for j in range(max(self._parallelism_seen, ctx.parallelism)):
            if j % ctx.parallelism == ctx.subtask:
                ids.update(self._tid(j, s) for s in range(self._slots_seen))
        return sorted(ids)

    def abort_lingering(self, ctx: SinkContext, keep: list[KafkaTxn]) -> None:
        """Abort what crashed attempts left open, in the background: the source starts
        reading meanwhile. Joined (its errors raised) before this sink produces its first
        record, at the first pre-commit and at an abort (:meth:`_lingering_done`); the ids
        it initialises are never used by this attempt before then (the first two free
        slots are started by themselves, the other slots only after the first commit)."""
        # The first transaction's id (slot 0): initialising it aborts what lingers on it
        # too, so its producer is started now, in parallel, rather than after the others
        # are looked up (ListTransactions) and aborted: the first records find it ready.
        # Safe here: the restored transactions are committed (ids in ``keep``).
        slot = self._free_slot()
        first = self._tid(ctx.subtask, slot)
        self._warm_up(slot)
        # The second transaction's slot (the next free one: the first is busy until its
        # commit) likewise: it begins at the first barrier, before any commit could warm
        # it, and its records would otherwise wait for its init_transactions there (0.3 s
        # at W2's first checkpoint, the task blocked once HOLD_BACK_MAX records waited).
        second = slot + 1
        while second in self._busy or second in self._held:
            second += 1
        self._warm_up(second)
        errors: list[BaseException] = []
        # The restored transactions' ids are not initialised by this attempt (until a
        # checkpoint of its own completes): committed just now, nothing lingers on them.
        skip = {first, self._tid(ctx.subtask, second), *(t.transactional_id for t in keep)}

        def run() -> None:
            try:
                self._abort_lingering(ctx, skip)
            except BaseException as e:
                errors.append(e)

        th = threading.Thread(target=run, daemon=True, name="onceflow-kafka-lingering")
        th.start()
        self._lingering = (th, errors)

    def _lingering_done(self) -> None:
        if self._lingering is None:
            return
        th, errors = self._lingering
        th.join()
        self._lingering = None
        if errors:
            raise errors[0]

    def _abort_lingering(self, ctx: SinkContext, skip: set[str]) -> None:
        ids = [tid for tid in self.lingering_ids(ctx) if tid not in skip]
        errors: list[BaseException] = []

        def init(tid: str) -> None:
            try:
                _close_producer(self._producer(tid))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=init, args=(t,), daemon=True) for t in ids]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        if ids:
            log.info("kafka sink %s[%d]: initialised %d transactional id(s): lingering "
                     "transactions aborted", ctx.uid, ctx.subtask, len(ids))

    def snapshot_state(self, checkpoint_id: int) -> Any:
        # called right after the barrier's pre_commit, before the handles are stored
        if self._pre_committed is not None:
            self._pre_committed.checkpoint = checkpoint_id
            self._pre_committed = None
        self._last_snapshot = checkpoint_id
        if self._first_snapshot < 0:
            self._first_snapshot = checkpoint_id
        # "held": written by a sink that holds committed slots (``_held``)
        return {"prefix": self._prefix, "parallelism": self._parallelism_seen,
                "slots": self._slots_seen, "lost": self.lost_transactions, "held": True}

    def restore_state(self, states: list[Any]) -> None:
        stored = sorted({st["prefix"] for st in states if st and st.get("prefix")})
        self._strict_recovery = bool(states) and all(st and st.get("held") for st in states)
        if self.transactional_id_prefix is None and stored:
            # a restore keeps the prefix its job started with (the default depends on the
            # checkpoint location, which a restore may name differently)
            self._prefix = stored[0]
        for st in states:
            if st:
                if st.get("prefix"):
                    self._old_prefixes.add(st["prefix"])
                self._parallelism_seen = max(self._parallelism_seen, st.get("parallelism", 0))
                self._slots_seen = max(self._slots_seen, st.get("slots", 0))
                self.lost_transactions = max(self.lost_transactions, st.get("lost", 0))

    def close(self) -> None:
        # Pending (pre-committed) transactions must survive for a recovery commit.
        # Producer.close() would ABORT an open transaction; dropping the last reference
        # does not (librdkafka's destroy without close leaves it to the coordinator), so
        # the producers of pending transactions are only dereferenced.
        if _trace.ON:
            _trace.event("sink_close")
        try:
            self._commit_done()  # the last checkpoint's commit: finished, or its error raised
        finally:
            self._close_clients()
        if _trace.ON:
            _trace.event("sink_closed")

    def _close_clients(self) -> None:
        self._live.clear()
        self._held_back = []
        for fut in self._warm.values():
            # one being made now is closed (its transaction is empty) by the pool thread
            # as soon as it is ready, not dropped with the future later by whoever frees it
            if not fut.cancel():
                fut.add_done_callback(_close_made)
        self._warm.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None


_TIMEOUT_REMEDY = ("Raise transaction_timeout_ms (and the brokers' transaction.max.timeout.ms) "
                   "above the longest outage to expect")


def _aborted_on_timeout(txn: KafkaTxn, now: kp.TxnDescription) -> bool:
    """Whether the coordinator's view ``now`` of ``txn``'s id shows ``txn`` itself aborted
    for outliving its timeout: the coordinator then bumps the epoch by one and keeps the
    transaction's start time. After a commit, the id is only ever initialised again (a
    newer epoch and, once it sends, a different start time), which is not this."""
    return (txn.start_ms >= 0 and now.producer_id == txn.producer_id
            and now.producer_epoch == txn.epoch + 1 and now.start_ms == txn.start_ms
            and now.state in ("PrepareAbort", "CompleteAbort"))


def _close_made(fut: Future[Any]) -> None:
    """Close the producer a warm-up future made (nothing was sent on it)."""
    if not fut.cancelled() and fut.exception() is None:
        _close_producer(fut.result())


def _close_producer(p: Any) -> None:
    close = getattr(p, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass


def _check_common(bootstrap: str, topic: str) -> None:
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise ConfigurationError("Kafka: bootstrap_servers must be 'host:port[,host:port]'")
    if not isinstance(topic, str) or not topic:
        raise ConfigurationError("KafkaSink: topic must be a non-empty string")


class KafkaPlainSink(Sink):
    """At-least-once (flush on every checkpoint, idempotent producer) or no guarantee."""

    def __init__(self, bootstrap_servers: str, topic: str, *, guarantee: str = "at_least_once",
                 key: Callable[[Any], Any] | None = None,
                 partition: Callable[[Any], int | None] | None = None,
                 serializer: str | Callable[[Any], Any] = "bytes",
                 key_serializer: str | Callable[[Any], Any] = "bytes",
                 headers: Callable[[Any], Any] | None = None,
                 producer_config: dict[str, Any] | None = None,
                 operation_timeout: float = 60.0) -> None:
        _check_common(bootstrap_servers, topic)
        self.bootstrap_servers, self.topic, self.guarantee = bootstrap_servers, topic, guarantee
        self.key, self.partition, self.headers = key, partition, headers
        self.serializer, self.key_serializer = serializer, key_serializer
        self.producer_config = dict(producer_config or {})
        self.operation_timeout = operation_timeout
        self._producer: Any = None
        self._out: _Producing | None = None

    def __getstate__(self) -> dict[str, Any]:
        st = self.__dict__.copy()
        st["_producer"] = st["_out"] = None
        return st

    def open(self, ctx: SinkContext) -> None:
        ck = import_kafka()
        conf = {**PRODUCER_DEFAULTS, "enable.idempotence": self.guarantee == "at_least_once",
                **self.producer_config, "bootstrap.servers": self.bootstrap_servers}
        self._producer = ck.Producer(client_config(conf, "sink"))
        self._out = _Producing(self.topic, serializer(self.serializer, "serializer"), self.key,
                               serializer(self.key_serializer, "key_serializer"),
                               self.partition, self.headers)
        self._out.key_str = self.key_serializer == "str"
        self._out.value_json = self.serializer == "json"
        self._out.sticky &= "partitioner" not in self.producer_config
        if "sticky.partitioning.linger.ms" in self.producer_config:
            self._out.sticky_s = float(self.producer_config["sticky.partitioning.linger.ms"]) / 1000

    def write(self, records: list[Any]) -> None:
        assert self._out is not None
        self._out.produce(self._producer, records)

    def snapshot_state(self, checkpoint_id: int) -> Any:
        if self.guarantee == "at_least_once" and self._out is not None:
            self._out.flush(self._producer, self.operation_timeout)
        return None

    def finish(self) -> None:
        if _trace.ON:
            _trace.event("sink_finish")
        if self._out is not None:
            self._out.flush(self._producer, self.operation_timeout)
        if _trace.ON:
            _trace.event("sink_finished")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.operation_timeout)
            self._producer = None
