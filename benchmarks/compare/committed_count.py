"""A read_committed reader that only counts: when has a topic's committed output reached n
records? (W2's timed reader, benchmarks/w2.py.)

Why not a confluent-kafka consumer: on this 2-core machine the results reader shares the
cores with the job and the broker, and a consumer costs about 1-2 us of CPU per record
(librdkafka's parsing, a ``Message`` object each, the Python loop), a quarter to half of
what the job itself spends on a record. An exactly-once job makes a checkpoint interval's
results visible at once, so such a reader reads them in bursts that take a core from the
job (and then reads the last transaction's ~200,000 results after the job is done): the
figure measured the reader as much as the job. This reader sends Kafka ``Fetch`` requests
(version 4, ``isolation_level`` = READ_COMMITTED, so the broker returns only records below
the last stable offset, as to any read_committed consumer) and counts the records of each
record batch from its header, skipping control batches (commit/abort markers) and the
batches of aborted transactions (the response's ``aborted_transactions``, the rule of
Kafka's own consumer). It never looks inside a record.

What it cannot tell is *which* records it counted: ``w2.py`` reads the topic once more
after the job has exited with a normal read_committed consumer and checks every id
(:class:`run.OutputWatcher`), so duplicates and losses are still found.

Scope: the dev broker (one broker, the leader of every partition; PLAINTEXT); record
batches of message format v2 (every Kafka since 0.11). A broker error in a response is
raised with its code, never skipped.
"""

from __future__ import annotations

import heapq
import socket
import struct
import threading
import time

FETCH, FETCH_VERSION = 1, 4
READ_COMMITTED = 1
#: record batch header (message format v2): baseOffset i64, batchLength i32,
#: partitionLeaderEpoch i32, magic i8, crc u32, attributes i16, lastOffsetDelta i32,
#: baseTimestamp i64, maxTimestamp i64, producerId i64, producerEpoch i16,
#: baseSequence i32, recordsCount i32
_BATCH = struct.Struct(">qiibIhiqqqhii")
_TRANSACTIONAL, _CONTROL = 0x10, 0x20
#: errors of a topic that is still being created (retried for ``settle_s``, then raised):
#: UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
#: UNKNOWN_TOPIC_ID
_SETTLING = {3: "UNKNOWN_TOPIC_OR_PARTITION", 5: "LEADER_NOT_AVAILABLE",
             6: "NOT_LEADER_OR_FOLLOWER", 100: "UNKNOWN_TOPIC_ID"}


class Settling(ConnectionError):
    """A partition is not readable yet (its topic is still being created)."""


class PartitionCount:
    """One partition's read position and committed-record count, with the aborted
    transactions of the responses still ahead of the position."""

    def __init__(self) -> None:
        self.offset = 0
        self.count = 0
        self.aborted: list[tuple[int, int]] = []  # heap of (first offset, producer id)
        self.aborting: set[int] = set()  # producer ids inside an aborted transaction

    def add_aborted(self, txns: list[tuple[int, int]]) -> None:
        known = set(self.aborted)
        for first, pid in txns:
            if (first, pid) not in known and first >= self.offset:
                heapq.heappush(self.aborted, (first, pid))

    def take(self, records: memoryview) -> None:
        """Count the complete batches of one fetch response's records and move the
        position past them (a batch cut off by the size limit is fetched again)."""
        pos, end = 0, len(records)
        while end - pos >= _BATCH.size:
            (base, length, _epoch, magic, _crc, attrs, last_delta, _t0, _t1, pid, _pe, _seq,
             n) = _BATCH.unpack_from(records, pos)
            if pos + 12 + length > end:
                break  # truncated by max bytes: the next fetch starts at this batch
            if magic != 2:
                raise ValueError(f"record batch at offset {base}: message format v{magic}, "
                                 "this reader reads v2 only")
            last = base + last_delta
            if last < self.offset:  # counted before (a fetch that began inside a batch)
                pos += 12 + length
                continue
            while self.aborted and self.aborted[0][0] <= last:
                self.aborting.add(heapq.heappop(self.aborted)[1])
            if attrs & _CONTROL:
                # the first marker of an aborting producer ends its aborted transaction
                self.aborting.discard(pid)
            elif not (attrs & _TRANSACTIONAL and pid in self.aborting):
                self.count += n
            self.offset = last + 1
            pos += 12 + length


class CommittedCounter:
    """Counts the committed records of ``topic`` (partitions ``0..partitions-1``) in a
    thread, like :class:`run.OutputWatcher`'s timing half: ``t_done`` is the time it had
    counted ``n``, ``done`` is set then (or when it stops), ``stop_process`` asks the
    harness to stop the job once done."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, n: int, timeout: float,
                 max_wait_ms: int = 20, partition_max_bytes: int = 16 << 20,
                 settle_s: float = 10.0) -> None:
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        self.addr = (host, int(port))
        self.topic, self.n, self.timeout, self.max_wait_ms = topic, n, timeout, max_wait_ms
        self.partition_max_bytes, self.settle_s = partition_max_bytes, settle_s
        self.parts = [PartitionCount() for _ in range(partitions)]
        self.done = threading.Event()
        self.stop_process = True
        self.t_done: float | None = None
        self.error: BaseException | None = None
        self.progress: list[tuple[float, int]] = []  # (time, count) after each fetch that grew it
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    # --- the wire --------------------------------------------------------------------------
    def _request(self, sock: socket.socket, corr: int) -> None:
        topic = self.topic.encode()
        body = [struct.pack(">iiiib", -1, self.max_wait_ms, 1, 64 << 20, READ_COMMITTED),
                struct.pack(">ih", 1, len(topic)), topic, struct.pack(">i", len(self.parts))]
        body += [struct.pack(">iqi", i, p.offset, self.partition_max_bytes) for i, p in enumerate(self.parts)]
        client = b"w2-counter"
        head = struct.pack(">hhih", FETCH, FETCH_VERSION, corr, len(client)) + client
        payload = head + b"".join(body)
        sock.sendall(struct.pack(">i", len(payload)) + payload)

    @staticmethod
    def _recv_exactly(sock: socket.socket, buf: memoryview) -> None:
        got = 0
        while got < len(buf):
            k = sock.recv_into(buf[got:])
            if not k:
                raise ConnectionError("the broker closed the connection")
            got += k

    def _response(self, sock: socket.socket, corr: int) -> None:
        size_b = bytearray(4)
        self._recv_exactly(sock, memoryview(size_b))
        data = bytearray(struct.unpack(">i", size_b)[0])
        mv = memoryview(data)
        self._recv_exactly(sock, mv)
        got_corr, _throttle, ntopics = struct.unpack_from(">iii", data, 0)
        if got_corr != corr:
            raise ConnectionError(f"correlation id {got_corr}, expected {corr}")
        pos = 12
        for _ in range(ntopics):
            (tlen,) = struct.unpack_from(">h", data, pos)
            pos += 2 + tlen
            (nparts,) = struct.unpack_from(">i", data, pos)
            pos += 4
            for _ in range(nparts):
                part, err, _hw, _lso, naborted = struct.unpack_from(">ihqqi", data, pos)
                pos += 26
                aborted = []
                for _ in range(max(naborted, 0)):
                    pid, first = struct.unpack_from(">qq", data, pos)
                    aborted.append((first, pid))
                    pos += 16
                (rlen,) = struct.unpack_from(">i", data, pos)
                pos += 4
                if err:
                    what = f"Fetch of {self.topic}[{part}]: broker error {err}"
                    if err in _SETTLING:
                        raise Settling(f"{what} ({_SETTLING[err]})")
                    raise ConnectionError(what)
                p = self.parts[part]
                p.add_aborted(aborted)
                if rlen > 0:
                    p.take(mv[pos:pos + rlen])
                    pos += rlen

    def _run(self) -> None:
        end = time.time() + self.timeout
        corr = 0
        try:
            with socket.create_connection(self.addr, timeout=30) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                settled_by = time.time() + self.settle_s
                while time.time() < end and not self._stop.is_set():
                    corr += 1
                    before = self.count
                    self._request(sock, corr)
                    try:
                        self._response(sock, corr)
                    except Settling:
                        if time.time() > settled_by:
                            raise
                        time.sleep(0.05)
                        continue
                    now, have = time.time(), self.count
                    if have != before:
                        self.progress.append((now, have))
                    if self.t_done is None and have >= self.n:
                        self.t_done = now
                        self.done.set()
                        return
        except BaseException as e:  # reported by the harness (problems), never swallowed
            self.error = e
        finally:
            self.done.set()
