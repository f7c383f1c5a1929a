"""A minimal Kafka wire-protocol client: just what transaction recovery needs.

librdkafka cannot finish a transaction that a dead producer left pre-committed, and
re-initialising its ``transactional.id`` would *abort* it. Recovery therefore talks to the
transaction coordinator directly, with these requests (blocking sockets; TLS and SASL
PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 from the sink's client settings, see
:class:`Security`):

==================  ===  =========  ===============================================
request             key  versions   used for
==================  ===  =========  ===============================================
ApiVersions          18  0          which versions the broker accepts
FindCoordinator      10  1..3       the transaction coordinator of a transactional id
EndTxn               26  0..4       commit a pre-committed transaction of a dead producer
DescribeTransactions 65  0          (producer id, epoch, state) of a transactional id
ListTransactions     66  0          the transactional ids of a sink (by prefix)
SaslHandshake        17  1          the SASL mechanism (before any other request but
                                    ApiVersions)
SaslAuthenticate     36  0..2       the SASL exchange itself
==================  ===  =========  ===============================================

Version choice: the highest version both sides know (``_pick``). EndTxn is capped at 4:
version 5 means "transaction protocol v2" (KIP-890) to the coordinator, which librdkafka's
transactions are not. Flexible versions (compact strings, tagged fields) are handled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from onceflow.errors import ConfigurationError, KafkaProtocolError

_T = TypeVar("_T")

API_VERSIONS, FIND_COORDINATOR, END_TXN, DESCRIBE_TXNS, LIST_TXNS = 18, 10, 26, 65, 66
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36

# Our supported version ranges per API (and the first flexible version of each).
_OURS = {API_VERSIONS: (0, 0), FIND_COORDINATOR: (1, 3), END_TXN: (0, 4),
         DESCRIBE_TXNS: (0, 0), LIST_TXNS: (0, 0), SASL_HANDSHAKE: (1, 1),
         SASL_AUTHENTICATE: (0, 2)}
_FLEX_FROM = {API_VERSIONS: 3, FIND_COORDINATOR: 3, END_TXN: 3, DESCRIBE_TXNS: 0,
              LIST_TXNS: 0, SASL_HANDSHAKE: 99, SASL_AUTHENTICATE: 2}

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
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58

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
    UNSUPPORTED_SASL_MECHANISM: "UNSUPPORTED_SASL_MECHANISM",
    ILLEGAL_SASL_STATE: "ILLEGAL_SASL_STATE",
    SASL_AUTHENTICATION_FAILED: "SASL_AUTHENTICATION_FAILED",
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

    def bytes_(self, raw: bytes) -> None:
        if self.flex:
            self.uvarint(len(raw) + 1)
        else:
            self.i32(len(raw))
        self.b.write(raw)

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

    def bytes_(self) -> bytes:
        n = self.uvarint() - 1 if self.flex else self.i32()
        return b"" if n < 0 else self._take(n)

    def tags(self) -> None:
        if self.flex:
            for _ in range(self.uvarint()):
                self.uvarint()
                self._take(self.uvarint())


# --- security ----------------------------------------------------------------------------
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: TLS settings of librdkafka this client follows (others are refused, not ignored)
_SSL_KEYS = {"ssl.ca.location", "ssl.ca.pem", "ssl.certificate.location", "ssl.key.location",
             "ssl.key.password", "ssl.endpoint.identification.algorithm",
             "enable.ssl.certificate.verification", "ssl.cipher.suites"}


@dataclass(frozen=True)
class Security:
    """How :class:`Connection` reaches a broker, from a librdkafka client configuration
    (:meth:`from_config`): ``security.protocol`` PLAINTEXT, SSL, SASL_PLAINTEXT or
    SASL_SSL; SASL mechanisms PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; TLS with the settings
    of :data:`_SSL_KEYS`. The password is never in its ``repr``."""

    protocol: str = "PLAINTEXT"
    mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_settings: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_config(cls, conf: dict[str, Any] | None, who: str = "KafkaSink") -> Security:
        """The security of ``conf``; a :class:`ConfigurationError` naming the setting for
        what this client cannot do."""
        conf = conf or {}
        proto = str(conf.get("security.protocol", "plaintext")).upper()
        if proto not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigurationError(f"{who}: security.protocol={proto.lower()}: use plaintext, "
                                     "ssl, sasl_plaintext or sasl_ssl")
        mech = user = password = ""
        if proto.startswith("SASL_"):
            mech = str(conf.get("sasl.mechanism", conf.get("sasl.mechanisms", "GSSAPI"))).upper()
            if mech not in SASL_MECHANISMS:
                raise ConfigurationError(
                    f"{who}(guarantee='exactly_once'): sasl.mechanism={mech} is not supported "
                    f"yet: the commit protocol's own Kafka client speaks SASL "
                    f"{', '.join(SASL_MECHANISMS)} only")
            user = str(conf.get("sasl.username", ""))
            password = str(conf.get("sasl.password", ""))
            if not user:
                raise ConfigurationError(f"{who}: sasl.mechanism={mech} needs sasl.username "
                                         "and sasl.password")
        tls: list[tuple[str, str]] = []
        if proto in ("SSL", "SASL_SSL"):
            for k in conf:
                if isinstance(k, str) and k.startswith("ssl.") and k not in _SSL_KEYS:
                    raise ConfigurationError(
                        f"{who}(guarantee='exactly_once'): {k} is not supported yet by the "
                        f"commit protocol's own Kafka client (it follows "
                        f"{', '.join(sorted(_SSL_KEYS))})")
            tls = sorted((k, str(v)) for k, v in conf.items() if k in _SSL_KEYS)
        return cls(proto, mech, user, password, tuple(tls))

    def ssl_context(self) -> ssl.SSLContext:
        st = dict(self.ssl_settings)
        ca = st.get("ssl.ca.location")
        if ca == "probe":  # librdkafka: the system's usual CA locations
            ca = None
        ctx = ssl.create_default_context(
            cafile=ca if ca and not os.path.isdir(ca) else None,
            capath=ca if ca and os.path.isdir(ca) else None, cadata=st.get("ssl.ca.pem"))
        if "ssl.certificate.location" in st:
            ctx.load_cert_chain(st["ssl.certificate.location"], st.get("ssl.key.location"),
                                st.get("ssl.key.password"))
        if "ssl.cipher.suites" in st:
            ctx.set_ciphers(st["ssl.cipher.suites"])
        verify = st.get("enable.ssl.certificate.verification", "true").lower() not in (
            "false", "0")
        ctx.check_hostname = verify and st.get(
            "ssl.endpoint.identification.algorithm", "https").lower() == "https"
        if not verify:
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _saslname(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


def _scram_fields(msg: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in msg.decode().split(","):
        k, eq, v = part.partition("=")
        if eq:
            out[k] = v
    return out


# --- connection --------------------------------------------------------------------------
class Connection:
    """One blocking connection to one broker; requests are sent one at a time."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0,
                 client_id: str = "onceflow-txn", security: Security | None = None) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.security = security or Security()
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._corr = 0
        self._lock = threading.Lock()
        self.versions: dict[int, tuple[int, int]] = {}
        try:
            if self.security.tls:
                try:
                    self.sock = self.security.ssl_context().wrap_socket(
                        self.sock, server_hostname=host)
                except ssl.SSLError as e:
                    raise KafkaProtocolError(
                        f"broker {host}:{port}: authentication failed (TLS handshake, "
                        f"security.protocol={self.security.protocol}): {e}") from e
            self.versions = self._api_versions()
            if self.security.sasl:
                self._authenticate()
        except BaseException:
            self.close()
            raise

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

    # --- SASL ----------------------------------------------------------------------------
    def _auth_failed(self, why: str) -> KafkaProtocolError:
        sec = self.security
        return KafkaProtocolError(
            f"broker {self.host}:{self.port}: authentication failed (security.protocol="
            f"{sec.protocol}, sasl.mechanism={sec.mechanism}, sasl.username={sec.username}): "
            f"{why}", SASL_AUTHENTICATION_FAILED)

    def _authenticate(self) -> None:
        sec = self.security
        r = self.request(SASL_HANDSHAKE, self._handshake_body(sec.mechanism),
                         self._pick(SASL_HANDSHAKE))
        err = r.i16()
        offered = [r.string() or "" for _ in range(r.array_len())]
        if err:
            raise self._auth_failed(f"SaslHandshake: {error_name(err)} (the broker offers "
                                    f"{', '.join(offered) or 'no mechanism'})")
        if sec.mechanism == "PLAIN":
            self._sasl_step(b"\0" + sec.username.encode() + b"\0" + sec.password.encode())
            return
        self._scram()

    @staticmethod
    def _handshake_body(mechanism: str) -> bytes:
        w = _W(False)
        w.string(mechanism)
        return w.b.getvalue()

    def _sasl_step(self, data: bytes) -> bytes:
        v = self._pick(SASL_AUTHENTICATE)
        w = _W(v >= 2)
        w.bytes_(data)
        w.tags()
        r = self.request(SASL_AUTHENTICATE, w.b.getvalue(), v)
        err = r.i16()
        message = r.string()
        out = r.bytes_()
        if err:
            raise self._auth_failed(message or error_name(err))
        return out

    def _scram(self) -> None:
        sec = self.security
        algo = "sha256" if sec.mechanism == "SCRAM-SHA-256" else "sha512"
        nonce = secrets.token_urlsafe(24)
        bare = f"n={_saslname(sec.username)},r={nonce}"
        server_first = self._sasl_step(f"n,,{bare}".encode())
        first = _scram_fields(server_first)
        if not first.get("r", "").startswith(nonce) or "s" not in first or "i" not in first:
            raise self._auth_failed("the broker's SCRAM challenge is not valid")
        salted = hashlib.pbkdf2_hmac(algo, sec.password.encode(), base64.b64decode(first["s"]),
                                     int(first["i"]))
        client_key = hmac.new(salted, b"Client Key", algo).digest()
        without_proof = f"c=biws,r={first['r']}"
        auth = f"{bare},{server_first.decode()},{without_proof}".encode()
        sig = hmac.new(hashlib.new(algo, client_key).digest(), auth, algo).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig,
                                                             strict=True))).decode()
        final = _scram_fields(self._sasl_step(f"{without_proof},p={proof}".encode()))
        server_key = hmac.new(salted, b"Server Key", algo).digest()
        want = base64.b64encode(hmac.new(server_key, auth, algo).digest()).decode()
        if "e" in final:
            raise self._auth_failed(final["e"])
        if not hmac.compare_digest(final.get("v", ""), want):
            raise self._auth_failed("the broker's SCRAM signature does not match (not the "
                                    "broker it claims to be?)")

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

    def __init__(self, bootstrap: str, *, timeout: float = 10.0,
                 config: dict[str, Any] | None = None) -> None:
        """``config``: the client settings of the sink (``producer_config``): its
        ``security.protocol``, ``sasl.*``, ``ssl.*`` and ``client.id`` are used."""
        self.bootstrap = _split_bootstrap(bootstrap)
        self.timeout = timeout
        self.security = Security.from_config(config)
        self.client_id = str((config or {}).get("client.id", "onceflow-txn"))
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
            c = self._conns[(host, port)] = Connection(
                host, port, timeout=self.timeout, client_id=self.client_id,
                security=self.security)
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
        """The coordinator's view of ``tid``. A retriable answer (the coordinator still
        loading its log after a restart, moved, busy, or a broken connection) is asked
        again, the coordinator found anew, until ``timeout``; then the last answer is
        returned, its ``error`` set (or the last connection error raised). So a caller
        that judges a transaction by its state never judges it by the empty description
        of a coordinator that was not ready."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                d = self._call(tid, lambda c: c.describe_transaction(tid))
            except KafkaProtocolError as e:
                if e.code not in RETRIABLE or time.monotonic() > deadline:
                    raise
            else:
                if d.error not in RETRIABLE or time.monotonic() > deadline:
                    return d
            time.sleep(0.1)

    def list_transactions(self, brokers: list[tuple[str, int]] | None = None
                          ) -> list[tuple[str, int, str]]:
        """All transactions of the cluster (ask every broker in ``brokers``, default the
        bootstrap servers; pass the metadata's broker list for a multi-broker cluster)."""
        seen: dict[str, tuple[str, int, str]] = {}
        for host, port in brokers or self.bootstrap:
            for t in self._conn(host, port).list_transactions():
                seen[t[0]] = t
        return list(seen.values())
