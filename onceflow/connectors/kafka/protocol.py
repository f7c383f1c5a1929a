"""A minimal Kafka wire-protocol client: just what transaction recovery needs.

librdkafka cannot finish a transaction that a dead producer left pre-committed, and
re-initialising its ``transactional.id`` would *abort* it. Recovery therefore talks to the
transaction coordinator directly, with these requests (blocking sockets, no SASL/TLS):

==================  ===  =========  ===============================================
request             key  versions   used for
==================  ===  =========  ===============================================
ApiVersions          18  0          which versions the broker accepts
FindCoordinator      10  1..3       the transaction coordinator of a transactional id
EndTxn               26  0..4       commit a pre-committed transaction of a dead producer
DescribeTransactions 65  0          (producer id, epoch, state) of a transactional id
ListTransactions     66  0          the transactional ids of a sink (by prefix)
==================  ===  =========  ===============================================

Version choice: the highest version both sides know (``_pick``). EndTxn is capped at 4:
version 5 means "transaction protocol v2" (KIP-890) to the coordinator, which librdkafka's
transactions are not. Flexible versions (compact strings, tagged fields) are handled.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from onceflow.errors import KafkaProtocolError

_T = TypeVar("_T")

API_VERSIONS, FIND_COORDINATOR, END_TXN, DESCRIBE_TXNS, LIST_TXNS = 18, 10, 26, 65, 66

# Our supported version ranges per API (and the first flexible version of each).
_OURS = {API_VERSIONS: (0, 0), FIND_COORDINATOR: (1, 3), END_TXN: (0, 4),
         DESCRIBE_TXNS: (0, 0), LIST_TXNS: (0, 0)}
_FLEX_FROM = {API_VERSIONS: 3, FIND_COORDINATOR: 3, END_TXN: 3, DESCRIBE_TXNS: 0,
              LIST_TXNS: 0}

# Error codes that matter here (org.apache.kafka.common.protocol.Errors).
NONE = 0
REQUEST_TIMED_OUT = 7
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
CONCURRENT_TRANSACTIONS = 51
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
TRANSACTIONAL_ID_NOT_FOUND = 105
PRODUCER_FENCED = 90

ERROR_NAMES = {
    NONE: "NONE", REQUEST_TIMED_OUT: "REQUEST_TIMED_OUT",
    COORDINATOR_LOAD_IN_PROGRESS: "COORDINATOR_LOAD_IN_PROGRESS",
    COORDINATOR_NOT_AVAILABLE: "COORDINATOR_NOT_AVAILABLE",
    NOT_COORDINATOR: "NOT_COORDINATOR", INVALID_PRODUCER_EPOCH: "INVALID_PRODUCER_EPOCH",
    INVALID_TXN_STATE: "INVALID_TXN_STATE",
    INVALID_PRODUCER_ID_MAPPING: "INVALID_PRODUCER_ID_MAPPING",
    CONCURRENT_TRANSACTIONS: "CONCURRENT_TRANSACTIONS",
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    TRANSACTIONAL_ID_NOT_FOUND: "TRANSACTIONAL_ID_NOT_FOUND",
    PRODUCER_FENCED: "PRODUCER_FENCED",
}
#: Errors after which asking again (after finding the coordinator again) can succeed.
RETRIABLE = {REQUEST_TIMED_OUT, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE,
             NOT_COORDINATOR, CONCURRENT_TRANSACTIONS}


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"error {code}")


# --- encoding ----------------------------------------------------------------------------
class _W:
    def __init__(self, flexible: bool) -> None:
        self.b = io.BytesIO()
        self.flex = flexible

    def i8(self, v: int) -> None:
        self.b.write(struct.pack(">b", v))

    def i16(self, v: int) -> None:
        self.b.write(struct.pack(">h", v))

    def i32(self, v: int) -> None:
        self.b.write(struct.pack(">i", v))

    def i64(self, v: int) -> None:
        self.b.write(struct.pack(">q", v))

    def uvarint(self, v: int) -> None:
        while v >= 0x80:
            self.b.write(bytes([(v & 0x7F) | 0x80]))
            v >>= 7
        self.b.write(bytes([v]))

    def string(self, s: str | None) -> None:
        if s is None:
            if self.flex:
                self.uvarint(0)
            else:
                self.i16(-1)
            return
        raw = s.encode()
        if self.flex:
            self.uvarint(len(raw) + 1)
        else:
            self.i16(len(raw))
        self.b.write(raw)

    def array_len(self, n: int) -> None:
        if self.flex:
            self.uvarint(n + 1)
        else:
            self.i32(n)

    def tags(self) -> None:
        if self.flex:
            self.uvarint(0)


class _R:
    def __init__(self, data: bytes, flexible: bool) -> None:
        self.d, self.p, self.flex = data, 0, flexible

    def _take(self, n: int) -> bytes:
        if self.p + n > len(self.d):
            raise KafkaProtocolError("truncated response")
        out = self.d[self.p:self.p + n]
        self.p += n
        return out

    def i8(self) -> int:
        return int(struct.unpack(">b", self._take(1))[0])

    def i16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def i32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def i64(self) -> int:
        return int(struct.unpack(">q", self._take(8))[0])

    def uvarint(self) -> int:
        shift = v = 0
        while True:
            b = self._take(1)[0]
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def string(self) -> str | None:
        n = self.uvarint() - 1 if self.flex else self.i16()
        return None if n < 0 else self._take(n).decode()

    def array_len(self) -> int:
        return self.uvarint() - 1 if self.flex else self.i32()

    def tags(self) -> None:
        if self.flex:
            for _ in range(self.uvarint()):
                self.uvarint()
                self._take(self.uvarint())


# --- connection --------------------------------------------------------------------------
class Connection:
    """One blocking connection to one broker; requests are sent one at a time."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0,
                 client_id: str = "onceflow-txn") -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._corr = 0
        self._lock = threading.Lock()
        self.versions: dict[int, tuple[int, int]] = {}
        self.versions = self._api_versions()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pick(self, api: int) -> int:
        lo, hi = _OURS[api]
        if api == API_VERSIONS:
            return 0
        theirs = self.versions.get(api)
        if theirs is None:
            raise KafkaProtocolError(f"broker {self.host}:{self.port} does not support API {api}")
        v = min(hi, theirs[1])
        if v < max(lo, theirs[0]):
            raise KafkaProtocolError(
                f"broker {self.host}:{self.port} accepts API {api} versions "
                f"{theirs[0]}..{theirs[1]}, this client speaks {lo}..{hi}")
        return v

    def request(self, api: int, body: bytes, version: int) -> _R:
        """Send one request; return a reader positioned at the response body."""
        flex = version >= _FLEX_FROM[api]
        with self._lock:
            self._corr += 1
            corr = self._corr
            h = _W(False)
            h.i16(api)
            h.i16(version)
            h.i32(corr)
            h.string(self.client_id)
            if flex:
                h.uvarint(0)  # request header v2: tagged fields
            payload = h.b.getvalue() + body
            try:
                self.sock.sendall(struct.pack(">i", len(payload)) + payload)
                size = struct.unpack(">i", self._recv(4))[0]
                data = self._recv(size)
            except OSError as e:
                raise KafkaProtocolError(f"connection to {self.host}:{self.port} failed: {e}",
                                         REQUEST_TIMED_OUT) from e
        r = _R(data, flex)
        if r.i32() != corr:
            raise KafkaProtocolError("correlation id mismatch")
        if flex and api != API_VERSIONS:  # ApiVersions always answers with header v0
            r.tags()
        return r

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("connection closed by broker")
            buf += chunk
        return bytes(buf)

    # --- APIs ----------------------------------------------------------------------------
    def _api_versions(self) -> dict[int, tuple[int, int]]:
        r = self.request(API_VERSIONS, b"", 0)
        err = r.i16()
        out: dict[int, tuple[int, int]] = {}
        for _ in range(r.i32()):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            out[key] = (lo, hi)
        if err:
            raise KafkaProtocolError(f"ApiVersions: {error_name(err)}", err)
        return out

    def find_coordinator(self, key: str, key_type: int = 1) -> tuple[int, str, int, int]:
        """(error, host, port, node) of the coordinator (key_type 1: transaction)."""
        v = self._pick(FIND_COORDINATOR)
        w = _W(v >= 3)
        w.string(key)
        w.i8(key_type)
        w.tags()
        r = self.request(FIND_COORDINATOR, w.b.getvalue(), v)
        r.i32()  # throttle
        err = r.i16()
        r.string()  # error message
        node, host, port = r.i32(), r.string() or "", r.i32()
        return err, host, port, node

    def end_txn(self, transactional_id: str, producer_id: int, epoch: int,
                commit: bool) -> int:
        """EndTxn; returns the error code (0 = done)."""
        v = self._pick(END_TXN)
        w = _W(v >= 3)
        w.string(transactional_id)
        w.i64(producer_id)
        w.i16(epoch)
        w.i8(1 if commit else 0)
        w.tags()
        r = self.request(END_TXN, w.b.getvalue(), v)
        r.i32()
        return r.i16()

    def describe_transaction(self, transactional_id: str) -> TxnDescription:
        v = self._pick(DESCRIBE_TXNS)
        w = _W(True)
        w.array_len(1)
        w.string(transactional_id)
        w.tags()
        r = self.request(DESCRIBE_TXNS, w.b.getvalue(), v)
        r.i32()
        out: list[TxnDescription] = []
        for _ in range(r.array_len()):
            err = r.i16()
            tid = r.string() or ""
            state = r.string() or ""
            timeout_ms = r.i32()
            start_ms = r.i64()
            pid, epoch = r.i64(), r.i16()
            parts: list[tuple[str, int]] = []
            for _ in range(r.array_len()):
                topic = r.string() or ""
                parts.extend((topic, r.i32()) for _ in range(r.array_len()))
                r.tags()
            r.tags()
            out.append(TxnDescription(tid, err, state, pid, epoch, timeout_ms, parts, start_ms))
        return out[0]

    def list_transactions(self) -> list[tuple[str, int, str]]:
        """(transactional id, producer id, state) of the transactions this broker
        coordinates."""
        v = self._pick(LIST_TXNS)
        w = _W(True)
        w.array_len(0)  # state filters
        w.array_len(0)  # producer id filters
        w.tags()
        r = self.request(LIST_TXNS, w.b.getvalue(), v)
        r.i32()
        err = r.i16()
        for _ in range(r.array_len()):
            r.string()
        out = []
        for _ in range(r.array_len()):
            tid = r.string() or ""
            pid = r.i64()
            state = r.string() or ""
            r.tags()
            out.append((tid, pid, state))
        if err:
            raise KafkaProtocolError(f"ListTransactions: {error_name(err)}", err)
        return out


@dataclass
class TxnDescription:
    transactional_id: str
    error: int
    state: str  # Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit, CompleteAbort…
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    partitions: list[tuple[str, int]] = field(default_factory=list)
    #: the coordinator's start time of the current/last transaction (ms since the epoch;
    #: -1 when none); kept when the coordinator aborts it for outliving its timeout
    start_ms: int = -1


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for part in bootstrap.split(","):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        host, _, port = part.rpartition(":")
        out.append((host.strip("[]") or "localhost", int(port or 9092)))
    return out


class TxnClient:
    """Talks to transaction coordinators of a cluster, found through ``bootstrap``."""

    def __init__(self, bootstrap: str, *, timeout: float = 10.0) -> None:
        self.bootstrap = _split_bootstrap(bootstrap)
        self.timeout = timeout
        self._conns: dict[tuple[str, int], Connection] = {}

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def __enter__(self) -> TxnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self, host: str, port: int) -> Connection:
        c = self._conns.get((host, port))
        if c is None:
            c = self._conns[(host, port)] = Connection(host, port, timeout=self.timeout)
        return c

    def _drop(self, c: Connection) -> None:
        c.close()
        self._conns.pop((c.host, c.port), None)

    def _any(self) -> Connection:
        last: Exception | None = None
        for host, port in self.bootstrap:
            try:
                return self._conn(host, port)
            except OSError as e:
                last = e
        raise KafkaProtocolError(f"cannot reach any bootstrap server {self.bootstrap}: {last}",
                                 REQUEST_TIMED_OUT)

    def coordinator(self, transactional_id: str) -> Connection:
        deadline = time.monotonic() + self.timeout
        while True:
            c = self._any()
            try:
                err, host, port, _ = c.find_coordinator(transactional_id)
            except KafkaProtocolError:
                self._drop(c)
                err, host, port = REQUEST_TIMED_OUT, "", 0
            if err == NONE:
                return self._conn(host, port)
            if err not in RETRIABLE or time.monotonic() > deadline:
                raise KafkaProtocolError(
                    f"FindCoordinator({transactional_id!r}): {error_name(err)}", err)
            time.sleep(0.1)

    def _call(self, tid: str, fn: Callable[[Connection], _T]) -> _T:
        c = self.coordinator(tid)
        try:
            return fn(c)
        except KafkaProtocolError:
            self._drop(c)
            raise

    def end_txn(self, tid: str, producer_id: int, epoch: int, commit: bool) -> int:
        """One EndTxn at the coordinator; the raw error code."""
        return self._call(tid, lambda c: c.end_txn(tid, producer_id, epoch, commit))

    def describe(self, tid: str) -> TxnDescription:
        return self._call(tid, lambda c: c.describe_transaction(tid))

    def list_transactions(self, brokers: list[tuple[str, int]] | None = None
                          ) -> list[tuple[str, int, str]]:
        """All transactions of the cluster (ask every broker in ``brokers``, default the
        bootstrap servers; pass the metadata's broker list for a multi-broker cluster)."""
        seen: dict[str, tuple[str, int, str]] = {}
        for host, port in brokers or self.bootstrap:
            for t in self._conn(host, port).list_transactions():
                seen[t[0]] = t
        return list(seen.values())
