"""``KafkaSource``: a replayable source over Kafka topics with checkpointed offsets.

* **splits**: one per source subtask, ``KafkaSplit(index, count)``; the split owns every
  partition ``p`` of topic ``t`` with ``(stable_hash(t) + p) % count == index``. Ownership
  is a pure function, so partitions created while the job runs are picked up by whichever
  reader owns them (metadata is polled every ``discovery_interval`` seconds), and after a
  parallelism change the restored splits still cover every partition exactly once.
* **position**: ``{(topic, partition): next offset}``; a partition missing from it starts
  at the start position computed on the fresh start (or at the beginning for a partition
  discovered later). Offsets live only in checkpoints; the consumer group is never used
  for assignment (``assign()``, no rebalancing).
* **isolation**: ``read_committed`` (transactions of other jobs: only committed records).
* **bounded mode** (``stop_at="end"``): the end offsets (last stable offsets) seen on the
  fresh start are stored in the splits; a reader finishes when it reached all of them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, NamedTuple

from onceflow.connectors.jsonvalues import DecodeError, decode
from onceflow.connectors.jsonvalues import loads as json_loads
from onceflow.connectors.kafka._common import deserializer, import_kafka, shared_admin
from onceflow.connectors.kafka._logs import client_config, serve_logs
from onceflow.connectors.sources import Source, SplitReader
from onceflow.errors import (
    ConfigurationError,
    OnceflowError,
    RecordFormatError,
    ServiceUnreachableError,
)
from onceflow.graph.keygroups import stable_hash

OFFSET_BEGINNING = -2
#: seconds the driver's start-up calls share one admin client and partition list
_PREP_TTL_S = 10.0


class KafkaRecord(NamedTuple):
    """One Kafka record as KafkaSource emits it (unless ``value_only=True``)."""

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    timestamp: int | None  # milliseconds since the epoch (create or log-append time)
    headers: list[tuple[str, bytes]] | None


@dataclass(frozen=True)
class KafkaSplit:
    index: int
    count: int
    #: bounded mode: ((topic, partition, end offset), ...) seen on the fresh start
    end: tuple[tuple[str, int, int], ...] | None = None

    def owns(self, topic: str, partition: int) -> bool:
        return (stable_hash(topic) + partition) % self.count == self.index


def _owner_filter(split: KafkaSplit, tps: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [tp for tp in tps if split.owns(*tp)]


#: consumer settings exactly-once reading fixes: overriding one in consumer_config would
#: read aborted transactions' records, or commit group offsets the checkpoints do not hold
_FIXED_READER_SETTINGS: dict[str, Any] = {"isolation.level": "read_committed",
                                          "enable.auto.commit": False}


class KafkaSource(Source):
    """Records of Kafka ``topics`` (a list of names, or a regex ``re.Pattern`` / a string
    starting with ``^``), exactly once with checkpoints.

    ``start``: ``"earliest"``, ``"latest"``, ``"committed"`` (the group's committed offsets,
    earliest where none) or ``("timestamp", ms)``; used on a fresh start only — a restored
    job continues at the checkpointed offsets. ``deserializer`` / ``key_deserializer``:
    ``"bytes"``, ``"str"``, ``"json"`` or a function of the raw bytes. Records are
    :class:`KafkaRecord`\\ s, or only the deserialized values with ``value_only=True``.
    ``stop_at="end"`` makes the source bounded: it ends at the offsets the topics had when
    the job started fresh. ``consumer_config``: librdkafka settings of the consumers; its
    connection settings (``security.protocol``, ``sasl.*``, ``ssl.*``, ``client.id``, ...)
    also go to the admin client of the start-up calls (docs/kafka.md#secured-clusters)."""

    def __init__(self, bootstrap_servers: str, topics: Sequence[str] | str | re.Pattern[str], *,
                 group_id: str | None = None, start: str | tuple[str, int] = "earliest",
                 deserializer: str | Callable[[bytes], Any] = "bytes",
                 key_deserializer: str | Callable[[bytes], Any] = "bytes",
                 value_only: bool = False, stop_at: str | None = None,
                 discovery_interval: float = 5.0,
                 consumer_config: dict[str, Any] | None = None,
                 timeout: float = 30.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        if isinstance(topics, str) and not topics.startswith("^"):
            topics = [topics]
        self.topics = topics
        self.group_id = group_id
        self.start = start
        self.deserializer, self.key_deserializer = deserializer, key_deserializer
        self.value_only = value_only
        self.stop_at = stop_at
        self.discovery_interval = discovery_interval
        self.consumer_config = dict(consumer_config or {})
        self.timeout = timeout
        self._check()

    def _check(self) -> None:
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers:
            raise ConfigurationError("KafkaSource: bootstrap_servers must be 'host:port[,...]'")
        if not isinstance(self.topics, str | re.Pattern) and (
                not self.topics or not all(isinstance(t, str) and t for t in self.topics)):
            raise ConfigurationError("KafkaSource: topics must be a non-empty list of names "
                                     "or a regex pattern")
        ok_start = self.start in ("earliest", "latest", "committed") or (
            isinstance(self.start, tuple) and len(self.start) == 2
            and self.start[0] == "timestamp" and isinstance(self.start[1], int))
        if not ok_start:
            raise ConfigurationError(
                f"KafkaSource: start={self.start!r}; use 'earliest', 'latest', 'committed' "
                "or ('timestamp', milliseconds)")
        if self.start == "committed" and not self.group_id:
            raise ConfigurationError("KafkaSource: start='committed' needs group_id=...")
        if self.stop_at not in (None, "end"):
            raise ConfigurationError(f"KafkaSource: stop_at={self.stop_at!r}; use None or 'end'")
        deserializer(self.deserializer, "deserializer")
        deserializer(self.key_deserializer, "key_deserializer")
        self._check_consumer_config()

    def _check_consumer_config(self) -> None:
        cc = self.consumer_config
        for k in ("bootstrap.servers", "group.id"):
            if k in cc:
                raise ConfigurationError(
                    f"KafkaSource: set {k} through the KafkaSource arguments "
                    "(bootstrap_servers, group_id), not consumer_config")
        for k, fixed in _FIXED_READER_SETTINGS.items():
            if k in cc and str(cc[k]).lower() != str(fixed).lower():
                raise ConfigurationError(
                    f"KafkaSource: consumer_config {k}={cc[k]!r} would break exactly-once "
                    f"reading (the source reads with {k}={fixed!r}: records of aborted "
                    "transactions skipped, group offsets committed only with completed "
                    "checkpoints); remove it from consumer_config")

    # --- metadata ------------------------------------------------------------------------
    def _pattern(self) -> re.Pattern[str] | None:
        if isinstance(self.topics, re.Pattern):
            return self.topics
        if isinstance(self.topics, str):
            return re.compile(self.topics)
        return None

    def partitions(self, client: Any) -> list[tuple[str, int]]:
        """(topic, partition) of every partition of the subscribed topics, sorted."""
        pat = self._pattern()
        if not isinstance(self.topics, str | re.Pattern):
            # named topics: a metadata request for each, not for every topic of the
            # cluster (the clients never create a missing topic by asking)
            topics: dict[str, Any] = {}
            for name in self.topics:
                topics.update(client.list_topics(topic=name, timeout=self.timeout).topics)
        else:
            topics = client.list_topics(timeout=self.timeout).topics
        out: list[tuple[str, int]] = []
        for name, t in topics.items():
            if pat is not None:
                if name.startswith("__") or not pat.fullmatch(name):
                    continue
            elif isinstance(self.topics, str | re.Pattern) or name not in self.topics:
                continue
            if t.error is not None:
                continue
            out.extend((name, p) for p in t.partitions)
        return sorted(out)

    def _admin(self) -> Any:
        # with the connection settings (security, client.id, ...) of consumer_config
        return shared_admin(self.bootstrap_servers, self.consumer_config)

    def _prepared(self) -> tuple[Any, list[tuple[str, int]]]:
        """An admin client and the partition list for the driver's start-up calls on a
        fresh start (``splits``, then ``initial_position`` of each split, in a row): the
        partition list is fetched once and kept for a few seconds, instead of one metadata
        request per call; the last split's ``initial_position`` lets go of it. The client
        is the process's shared one (:func:`shared_admin`), asked for on every call and
        never kept here: a source is often part of a reference cycle (the flow graph), and
        a client reachable only through one would be destroyed by the garbage collector at
        any moment. Never shared across a fork (a librdkafka client does not survive one)."""
        prep = self.__dict__.get("_prep")
        admin = self._admin()
        if prep is not None and prep[0] == os.getpid() and \
                time.monotonic() - prep[1] < _PREP_TTL_S:
            return admin, prep[2]
        tps = self.partitions(admin)
        self._prep = (os.getpid(), time.monotonic(), tps)
        return admin, tps

    def _forget_prepared(self) -> None:
        self.__dict__.pop("_prep", None)

    def __getstate__(self) -> dict[str, Any]:
        st = self.__dict__.copy()
        st.pop("_prep", None)  # this process's start-up cache
        return st

    def _offsets(self, admin: Any, tps: list[tuple[str, int]], spec: Any) -> dict[tuple[str, int],
                                                                                   int]:
        ck = import_kafka()
        if not tps:
            return {}
        req = {ck.TopicPartition(t, p): spec for t, p in tps}
        # A broker that just restarted answers for a while with retriable errors (e.g.
        # UNKNOWN_LEADER_EPOCH while partition leadership is re-established): retry those
        # for up to a minute instead of failing the job.
        deadline = time.monotonic() + 60.0
        while True:
            futs = admin.list_offsets(req, isolation_level=ck.IsolationLevel.READ_COMMITTED,
                                      request_timeout=self.timeout)
            try:
                return {(tp.topic, tp.partition): f.result().offset for tp, f in futs.items()}
            except ck.KafkaException as e:
                err = e.args[0] if e.args else None
                transient = err is not None and (err.retriable() or err.code() in (
                    ck.KafkaError.UNKNOWN_LEADER_EPOCH, ck.KafkaError.LEADER_NOT_AVAILABLE,
                    ck.KafkaError.NOT_LEADER_FOR_PARTITION, ck.KafkaError._TRANSPORT,
                    ck.KafkaError._TIMED_OUT, ck.KafkaError._ALL_BROKERS_DOWN))
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def validate(self) -> None:
        ck = import_kafka()
        try:
            tps = self.partitions(self._admin())
        except ck.KafkaException as e:
            raise ServiceUnreachableError(
                f"KafkaSource (topics {self.topics!r}): cannot reach Kafka at "
                f"{self.bootstrap_servers} ({e}); check that the broker is running and "
                "reachable there, and the source's bootstrap_servers") from e
        if not isinstance(self.topics, str | re.Pattern):
            names = list(dict.fromkeys(self.topics))
            found = {t for t, _ in tps}
            missing = [t for t in names if t not in found]
            if missing:  # a typo in one of several names would leave that input unread
                which = (f"none of the topics {names} exists" if len(missing) == len(names)
                         else f"the topic(s) {missing} (of {names}) do not exist")
                raise ConfigurationError(
                    f"KafkaSource: {which} at {self.bootstrap_servers}; create them first, "
                    "or subscribe with a pattern (topics='^orders-.*') to read topics that "
                    "appear later")

    # --- Source --------------------------------------------------------------------------
    def splits(self, parallelism: int) -> list[Any]:
        end: tuple[tuple[str, int, int], ...] | None = None
        if self.stop_at == "end":
            from confluent_kafka.admin import OffsetSpec

            admin, tps = self._prepared()
            offs = self._offsets(admin, tps, OffsetSpec.latest())
            end = tuple(sorted((t, p, o) for (t, p), o in offs.items()))
        out = []
        for i in range(parallelism):
            s = KafkaSplit(i, parallelism, None)
            if end is not None:
                s = KafkaSplit(i, parallelism, tuple(e for e in end if s.owns(e[0], e[1])))
            out.append(s)
        return out

    def initial_position(self, split: KafkaSplit) -> dict[tuple[str, int], int]:
        from confluent_kafka.admin import OffsetSpec

        ck = import_kafka()
        admin, all_tps = self._prepared()
        if split.index == split.count - 1:
            self._forget_prepared()  # the driver asks for the splits in order: the last one
        tps = _owner_filter(split, all_tps)
        if self.start == "earliest":
            # The log start offsets now, not the logical OFFSET_BEGINNING: a consumer
            # assigned a logical offset resolves it itself, which costs librdkafka about
            # 0.5 s before the first fetch. (Records deleted by retention before they are
            # read: auto.offset.reset=earliest moves on to the new log start.)
            return self._offsets(admin, tps, OffsetSpec.earliest())
        if self.start == "latest":
            return self._offsets(admin, tps, OffsetSpec.latest())
        if isinstance(self.start, tuple):
            offs = self._offsets(admin, tps, OffsetSpec.for_timestamp(self.start[1]))
            latest = self._offsets(admin, tps, OffsetSpec.latest())
            return {tp: (o if o >= 0 else latest[tp]) for tp, o in offs.items()}
        # committed
        c = ck.Consumer(client_config({**self.consumer_config,
                                       "bootstrap.servers": self.bootstrap_servers,
                                       "group.id": self.group_id, "enable.auto.commit": False},
                                      "source"))
        try:
            got = c.committed([ck.TopicPartition(t, p) for t, p in tps], timeout=self.timeout)
        finally:
            serve_logs(c)  # (nothing assigned: no record to lose)
            c.close()
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                for tp in got}

    def reader(self, split: KafkaSplit, position: dict[tuple[str, int], int]) -> SplitReader:
        return KafkaSplitReader(self, split, dict(position or {}))


# the reading consumer's fetch.queue.backoff.ms unless the user's consumer_config sets it
FETCH_QUEUE_BACKOFF_MS = 10

#: how much the reading consumer prefetches per partition unless the user's consumer_config
#: says otherwise. librdkafka's own default keeps up to 100,000 messages or 64 MiB per
#: partition queued; records read that long after their fetch have left the CPU caches, and
#: a job reading many partitions holds that much memory per partition. 4 MiB per partition
#: still covers more than 100 ms of a partition's records at 30 MB/s.
PREFETCH_DEFAULTS: dict[str, Any] = {"queued.max.messages.kbytes": 4096}


def reader_config(src: KafkaSource) -> dict[str, Any]:
    """The librdkafka settings of a split reader's consumer: the ones exactly-once reading
    needs, this source's fetch defaults, then the user's ``consumer_config`` (which wins)."""
    return {"bootstrap.servers": src.bootstrap_servers,
            "group.id": src.group_id or "onceflow-unused",
            "isolation.level": "read_committed", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # librdkafka stops fetching a partition whose local queue holds
            # queued.min.messages and looks again only after this backoff (default
            # 1,000 ms); a job that drains the queue faster than that would sit idle for
            # the rest of the second, so look again soon
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            **PREFETCH_DEFAULTS, **src.consumer_config}


class KafkaSplitReader(SplitReader):
    def __init__(self, src: KafkaSource, split: KafkaSplit,
                 position: dict[tuple[str, int], int]) -> None:
        ck = import_kafka()
        self.ck = ck
        self.src, self.split = src, split
        self.pos = position
        self.value = deserializer(src.deserializer, "deserializer")
        # the common case, JSON values: jsonvalues.decode inline, no wrapper call per record
        self._json = src.deserializer == "json"
        self.key = deserializer(src.key_deserializer, "key_deserializer")
        self.consumer = ck.Consumer(client_config(reader_config(src), "source"))
        self.end: dict[tuple[str, int], int] | None = None
        if split.end is not None:
            self.end = {(t, p): o for t, p, o in split.end}
        self.assigned: set[tuple[str, int]] = set()
        self.done: set[tuple[str, int]] = set()
        self._runs: list[tuple[tuple[str, int], int]] = []  # of the last batch
        self._saturated = False  # the last consume returned as many messages as asked
        self._last_discovery = 0.0
        try:
            self._discover()
        except BaseException:
            # closed here, not left to whoever frees the traceback (often the garbage
            # collector: a client must never be destroyed by it)
            self.close()
            raise

    def _discover(self) -> None:
        self._last_discovery = time.monotonic()
        if self.end is not None:
            tps = sorted(self.end)
        else:
            tps = _owner_filter(self.split, self.src.partitions(self.consumer))
        new = [tp for tp in tps if tp not in self.assigned]
        if not new:
            return
        add = []
        for tp in new:
            off = self.pos.setdefault(tp, OFFSET_BEGINNING)
            if self.end is not None and off >= 0 and off >= self.end[tp]:
                self.done.add(tp)
                continue
            if self.end is not None and self.end[tp] == 0:
                self.done.add(tp)
                continue
            add.append(self.ck.TopicPartition(tp[0], tp[1], off))
        self.assigned.update(new)
        if add:
            self.consumer.incremental_assign(add)

    def _finished(self, tp: tuple[str, int]) -> None:
        self.done.add(tp)
        try:
            self.consumer.incremental_unassign([self.ck.TopicPartition(tp[0], tp[1])])
        except self.ck.KafkaException:
            pass

    def read_batch(self, max_records: int) -> list[Any] | None:
        if self.end is not None and self.done.issuperset(self.end):
            return None
        if self.end is None and time.monotonic() - self._last_discovery > \
                self.src.discovery_interval:
            self._discover()
        msgs = self.consumer.consume(num_messages=max_records, timeout=0.02)
        self._saturated = len(msgs) >= max_records
        try:
            if self.src.value_only:
                return self._values(msgs)
            return self._records(msgs)
        except (OnceflowError, self.ck.KafkaException):
            raise
        except Exception as e:  # a deserializer refused a record: say which one
            raise self._undecodable(msgs, e) from e

    def _undecodable(self, msgs: list[Any], err: Exception) -> RecordFormatError:
        """The error for the first message of ``msgs`` whose key or value does not
        decode (``err`` came from decoding one of them): topic, partition and offset."""
        value_of = json_loads if self._json else self.value
        what = f"with deserializer {self.src.deserializer!r}"
        for m in msgs:
            if m.error() is not None:
                continue
            where = f"topic {m.topic()!r} partition {m.partition()} offset {m.offset()}"
            try:
                if m.value() is not None:
                    value_of(m.value())
            except Exception as e:
                err = e
                break
            if not self.src.value_only:
                try:
                    self.key(m.key())
                except Exception as e:
                    err = e
                    where = f"the key of {where}"
                    what = f"with key_deserializer {self.src.key_deserializer!r}"
                    break
        else:
            where = "a record of this batch"
        return RecordFormatError(
            f"KafkaSource: cannot decode {where} {what}: {type(err).__name__}: {err}")

    def _on_error(self, m: Any, err: Any) -> None:
        etp = (m.topic(), m.partition())
        if err.code() == self.ck.KafkaError._PARTITION_EOF:
            if etp in self.done:  # a bounded partition finished: its position is its end
                return  # (the EOF's offset lies past it when records came after the end)
            # the fetch position skipped control records (transaction markers)
            pos = self.pos
            if m.offset() is not None and m.offset() > pos.get(etp, -1):
                pos[etp] = m.offset()
            end = self.end
            if end is not None and etp in end and etp not in self.done \
                    and pos[etp] >= end[etp]:
                self._finished(etp)
            return
        raise self.ck.KafkaException(err)

    def _values(self, msgs: list[Any]) -> list[Any]:
        """``value_only``: the values. A batch without error messages (the common case)
        takes :meth:`_values_fast`; one with errors (end of partition, ...) the loop
        below, which deals with them in order."""
        if not msgs:
            self._runs = []
            return []
        # any(): truth values only (a KafkaError compared with None leaves a TypeError set
        # in confluent-kafka 2.16: never ``==``, ``in`` or ``list.count`` on errors)
        if any(map(self.ck.Message.error, msgs)):
            return self._values_loop(msgs)
        return self._values_fast(msgs)

    def _values_fast(self, msgs: list[Any]) -> list[Any]:
        """The values of a batch without error messages, without a Python loop over its
        messages: partitions, (topics) and values are read with ``map`` over the Message
        methods, the runs of one partition found with ``groupby``, the JSON decoded with
        ``map(jsonvalues.decode)``; per run only its last offset is read, and the position,
        the end of a bounded partition dealt with (as :meth:`_end_run` does). A value
        that is null or does not decode as strict JSON falls back to decoding value
        by value; a batch with messages of a finished partition takes the loop. So the
        values decoded, the results and the errors are those of :meth:`_values_loop`."""
        Message = self.ck.Message
        n = len(msgs)
        parts = list(map(Message.partition, msgs))
        one_topic = not isinstance(self.src.topics, str | re.Pattern) and \
            len(self.src.topics) == 1
        # the runs of one partition: (topic, partition), index of the first, number
        spans: list[tuple[tuple[str, int], int, int]] = []
        if one_topic:
            t = msgs[0].topic()
            if parts[0] == parts[-1] and parts.count(parts[0]) == n:
                spans.append(((t, parts[0]), 0, n))
            else:
                i = 0
                for p, g in groupby(parts):
                    k = sum(1 for _ in g)
                    spans.append(((t, p), i, k))
                    i += k
        else:
            i = 0
            for tp, g in groupby(zip(map(Message.topic, msgs), parts, strict=True)):
                k = sum(1 for _ in g)
                spans.append((tp, i, k))
                i += k
        done, end, pos = self.done, self.end, self.pos
        if any(tp in done for tp, _, _ in spans):
            return self._values_loop(msgs)  # rare: left-overs of a finished partition
        raw = list(map(Message.value, msgs))
        if self._json:
            try:
                out = list(map(decode, raw))
            except (DecodeError, TypeError, RecursionError):  # a null value (TypeError),
                # NaN/Infinity (jsonvalues), nesting deeper than the stack, or bad
                out = [None if v is None else json_loads(v) for v in raw]
        else:
            out = list(map(self.value, raw))
        runs: list[tuple[tuple[str, int], int]] = []
        self._runs = runs
        cut = False  # some values are dropped (past the end of a bounded partition)
        keep: list[tuple[int, int]] = []  # (first index, number) of the values kept
        for tp, first, k in spans:
            off = msgs[first + k - 1].offset()
            lim = None if end is None else end[tp]
            if lim is not None and off + 1 >= lim:
                if off >= lim:  # rare: cut the run at the end offset
                    j = first
                    while msgs[j].offset() < lim:
                        j += 1
                    cut = True
                    k = j - first
                if k:
                    runs.append((tp, k))
                    keep.append((first, k))
                pos[tp] = lim
                self._finished(tp)
                continue
            pos[tp] = off + 1
            runs.append((tp, k))
            keep.append((first, k))
        if cut:
            kept: list[Any] = []
            for first, k in keep:
                kept.extend(out[first:first + k])
            return kept
        return out

    def _values_loop(self, msgs: list[Any]) -> list[Any]:
        """``value_only``, a batch with error messages: the values. Messages come in runs
        of one partition; per message only its error, partition and value are read, and
        the position, the partition list and the end of a bounded partition are dealt with
        once per run (:meth:`_end_run`)."""
        out: list[Any] = []
        append = out.append
        runs: list[tuple[tuple[str, int], int]] = []  # (partition, records) of the batch
        self._runs = runs
        value_of = None if self._json else self.value
        loads = decode
        one_topic = not isinstance(self.src.topics, str | re.Pattern) and \
            len(self.src.topics) == 1
        cur_t: str | None = None
        cur_p = -1
        first = 0  # index in ``msgs`` of the current run's first message
        start = 0  # index in ``out`` of its first value
        skip = True
        last: Any = None
        for i, m in enumerate(msgs):
            if m.error() is None and m.partition() == cur_p and (one_topic
                                                                  or m.topic() == cur_t):
                if skip:
                    continue
            else:
                if not skip:
                    self._end_run(cur_t, cur_p, last, msgs, first, start, out, runs)
                    skip = True
                err = m.error()
                if err is not None:
                    cur_t = None  # the next message starts a new run
                    cur_p = -1
                    self._on_error(m, err)
                    continue
                cur_t, cur_p = m.topic(), m.partition()
                skip = (cur_t, cur_p) in self.done
                if skip:
                    continue
                first, start = i, len(out)
            last = m
            v = m.value()
            if value_of is None:
                if v is None:
                    append(None)
                else:
                    try:
                        append(loads(v))
                    except (DecodeError, RecursionError):  # NaN/Infinity (jsonvalues), bad
                        append(json_loads(v))
            else:
                append(value_of(v))
        if not skip:
            self._end_run(cur_t, cur_p, last, msgs, first, start, out, runs)
        return out

    def _end_run(self, t: Any, p: int, last: Any, msgs: list[Any], first: int, start: int,
                 out: list[Any], runs: list[tuple[tuple[str, int], int]]) -> None:
        """The run of partition (t, p) ended with message ``last``: move its position on;
        in bounded mode drop what lies at or past the partition's end and finish it."""
        tp = (t, p)
        off = last.offset()
        lim = None if self.end is None else self.end[tp]
        if lim is not None and off + 1 >= lim:
            if off >= lim:  # rare: cut the run at the end offset
                k = first
                while msgs[k].offset() < lim:
                    k += 1
                del out[start + k - first:]
            if len(out) > start:
                runs.append((tp, len(out) - start))
            self.pos[tp] = lim
            self._finished(tp)
            return
        self.pos[tp] = off + 1
        runs.append((tp, len(out) - start))

    def _records(self, msgs: list[Any]) -> list[Any]:
        """:class:`KafkaRecord`\\ s (key, timestamp and headers too)."""
        out: list[Any] = []
        append = out.append
        runs: list[tuple[tuple[str, int], int]] = []
        self._runs = runs
        end = self.end
        pos, done = self.pos, self.done
        value_of, key_of = self.value, self.key
        cur_t: str | None = None
        cur_p = -1
        tp: tuple[str, int] = ("", -1)
        skip = False
        lim: int | None = None  # bounded mode: the end offset of ``tp``
        for m in msgs:
            err = m.error()
            if err is not None:
                cur_t = None  # the next message starts a new run
                self._on_error(m, err)
                continue
            t, p = m.topic(), m.partition()
            if p != cur_p or t != cur_t:
                cur_t, cur_p = t, p
                tp = (t, p)
                skip = tp in done
                lim = None if end is None else end[tp]
            if skip:
                continue
            off = m.offset()
            if lim is not None and off >= lim:
                pos[tp] = lim
                self._finished(tp)
                skip = True
                continue
            pos[tp] = off + 1
            if runs and runs[-1][0] == tp:
                runs[-1] = (tp, runs[-1][1] + 1)
            else:
                runs.append((tp, 1))
            ts_type, ts = m.timestamp()
            append(KafkaRecord(t, p, off, key_of(m.key()), value_of(m.value()),
                               ts if ts_type else None, m.headers()))
            if lim is not None and off + 1 >= lim:
                self._finished(tp)
                skip = True
        return out

    def position(self) -> dict[tuple[str, int], int]:
        return dict(self.pos)

    def has_backlog(self, partition: Any) -> bool:
        """The consumer's queue was full at the last read (records of other partitions may
        be ahead of this one's) and the broker's end offset of ``partition``, as of the
        last fetch, lies more than one offset past our position (one: a transaction's
        commit marker, never delivered). Then it has records on their way, not none."""
        if not self._saturated or partition in self.done:
            return False
        pos = self.pos.get(partition)
        if pos is None:
            return False
        try:
            low, high = self.consumer.get_watermark_offsets(
                self.ck.TopicPartition(partition[0], partition[1]), cached=True)
        except Exception:  # not known (yet): no claim
            return False
        if pos == OFFSET_BEGINNING:  # nothing of it read yet: from its first offset
            pos = low
        return bool(pos >= 0 and high >= 0 and high - pos > 1)

    def partitions(self) -> list[Any] | None:
        return [tp for tp in self.assigned if tp not in self.done]

    def batch_partitions(self) -> list[Any] | None:
        parts: list[Any] = []
        for tp, n in self._runs:
            parts.extend([tp] * n)
        return parts

    def batch_runs(self) -> list[tuple[Any, int]] | None:
        return list(self._runs)

    def notify_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:
        """Write the offsets a completed checkpoint covers to the consumer group, for
        monitoring (lag). onceflow itself restores offsets from its checkpoints only."""
        if not self.src.group_id:
            return
        offsets = [self.ck.TopicPartition(t, p, o) for (t, p), o in (position or {}).items()
                   if o >= 0]
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=False)

    def close(self) -> None:
        serve_logs(self.consumer)  # its last log lines (a record it returns is not needed)
        try:
            self.consumer.close()
        except Exception:
            pass
