"""``PostgresSink``: exactly-once into PostgreSQL through real two-phase commit.

PostgreSQL's ``PREPARE TRANSACTION`` / ``COMMIT PREPARED`` is a true pre-commit / commit
pair, so each sink subtask maps the 2PC contract (see
:mod:`onceflow.connectors.two_phase`) onto it, one database transaction per subtask per
checkpoint:

* begin: name the transaction (its *global transaction id*, ``gid``, below); nothing is sent
  yet - the database transaction opens with the first batch written to it.
* write: records become rows (``row(record)``, or the record itself) and are buffered;
  every ``batch_rows`` rows go to the server in one statement: ``COPY`` (insert mode) or one
  ``INSERT ... SELECT FROM unnest(...) ON CONFLICT (keys) DO UPDATE`` (upsert mode; rows of
  one key within a buffer are merged, the last wins).
* pre-commit (barrier ``n``): send the rest, then ``PREPARE TRANSACTION 'gid'``. The rows are
  durable on the server and still invisible. A transaction that wrote nothing prepares
  nothing and its commit is a no-op.
* commit (checkpoint complete): ``COMMIT PREPARED 'gid'`` on a second, autocommit
  connection. SQLSTATE 42704 (the gid does not exist) means an earlier attempt committed it
  already: success.
* abort: ``ROLLBACK`` (open) or ``ROLLBACK PREPARED`` (prepared).
* recovery (``abort_lingering``, after the restored transactions were committed): end the
  server sessions crashed attempts of this subtask left behind, then ``ROLLBACK PREPARED``
  every prepared transaction of this sink whose subtask ``j`` has ``j % parallelism ==
  subtask`` and that the restored checkpoint does not list - so no row lock outlives a crash.

Global transaction ids::

    onceflow:<flow>:<sink uid>:<subtask>:<after checkpoint>:<token>

``<after checkpoint>`` is the id of the checkpoint after whose barrier the transaction began
(0 at a fresh start); it is prepared at the next barrier the subtask sees. ``<token>`` is
random. Flow and uid are kept when they are made of ``[A-Za-z0-9_.-]`` and at most 64
characters; otherwise they are shortened/cleaned and get a ``~<hash>`` suffix
(:func:`gid_prefix` computes the prefix).

Upsert mode takes row locks that a prepared transaction holds until it commits, so records
of one key must reach one sink subtask (``key_by`` before the sink, same parallelism). A
subtask also never sends an upsert while one of its own prepared transactions waits for its
commit (it keeps buffering), so it cannot wait on its own locks; ``lock_timeout`` turns any
other lock wait (another writer, a stray prepared transaction) into a task failure.

:class:`PostgresAutocommitSink` writes the same statements, each committed at once: an
at-least-once sink (with upserts, effectively once for the final table), for comparison.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onceflow import _faults
from onceflow._optional import require
from onceflow.connectors.sinks import Sink, SinkContext
from onceflow.connectors.two_phase import TwoPhaseCommitSink
from onceflow.errors import (
    ConfigurationError,
    ConnectorError,
    ServiceUnreachableError,
    UserFunctionError,
    foreign_errors,
)

log = logging.getLogger("onceflow.sink.postgres")

GID_MAX = 199  # PostgreSQL's GIDSIZE is 200 bytes including the terminating NUL
_NAME_MAX = 64
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")
_MODES = ("insert", "upsert")


def _psycopg() -> Any:
    return require("psycopg", "PostgresSink", "postgres", "psycopg[binary]")


# --- names -------------------------------------------------------------------------------
def _name_part(name: str) -> str:
    """``name`` as it appears in gids: unchanged if safe and short, else cleaned + hash."""
    if _SAFE.fullmatch(name) and len(name) <= _NAME_MAX:
        return name
    h = hashlib.sha1(name.encode()).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[: _NAME_MAX - 9]
    return f"{clean}~{h}"


def gid_prefix(flow: str, uid: str | None = None) -> str:
    """The prefix of every global transaction id of ``flow`` (and of its sink ``uid``), as
    listed in ``pg_prepared_xacts.gid``: ``onceflow:<flow>:`` or ``onceflow:<flow>:<uid>:``."""
    p = f"onceflow:{_name_part(flow)}:"
    return p if uid is None else f"{p}{_name_part(uid)}:"


def _session_prefix(flow: str, uid: str) -> str:
    """``application_name`` prefix of a sink's sessions: short (the server truncates
    application names to 63 bytes), and the same for every attempt."""
    return "onceflow:" + hashlib.sha1(f"{flow}\0{uid}".encode()).hexdigest()[:10] + ":"


def check_max_prepared_transactions(value: int | str, where: str = "the server") -> None:
    """Raise :class:`ConfigurationError` unless two-phase commit is enabled (``value`` is the
    server's ``max_prepared_transactions``)."""
    if int(value) <= 0:
        raise ConfigurationError(
            f"PostgresSink: {where} has max_prepared_transactions = {int(value)}, so "
            "PREPARE TRANSACTION (two-phase commit) is disabled and exactly-once writes are "
            "impossible. Set max_prepared_transactions in postgresql.conf (or ALTER SYSTEM "
            "SET max_prepared_transactions = 64) to at least 2 per PostgresSink subtask, and "
            "restart PostgreSQL (the setting needs a restart)."
        )


def _safe_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, without the password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        d = conninfo_to_dict(dsn)
    except Exception:
        return "<dsn>"
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


def _one_line(e: BaseException) -> str:
    """libpq's message of ``e`` on one line (it spreads hints over several)."""
    return " ".join(str(e).split())


def _connect(dsn: str, app: str, timeout: float, retry_for: float = 0.0) -> Any:
    """An autocommit connection; retries for ``retry_for`` seconds while the server cannot
    be reached (it may be restarting)."""
    psycopg = _psycopg()
    deadline = time.monotonic() + retry_for
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, application_name=app,
                                   connect_timeout=max(2, int(timeout)))
        except psycopg.OperationalError as e:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"PostgresSink: cannot connect to PostgreSQL at {_safe_dsn(dsn)}: "
                    f"{_one_line(e)}") from e
            time.sleep(0.5)


#: what a server says when it is there but cannot take a session for a while (in libpq's
#: English messages): starting up, shutting down, in crash recovery, out of connection slots;
#: and libpq's own "timeout expired" (a server that accepted the TCP connection and said
#: nothing, e.g. stopped or overloaded)
_NOT_NOW = re.compile(r"the database system is (starting up|shutting down|in recovery mode|"
                      r"not yet accepting connections)|too many clients already|"
                      r"remaining connection slots are reserved|timeout expired")

#: where libpq looks for a server's Unix socket when the dsn names no host
_SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp")


def _listening(dsn: str, timeout: float) -> bool:
    """Whether something accepts connections where ``dsn`` points: a TCP connection to one
    of its hosts (``hostaddr`` when given) and ports, or to the Unix socket of a host that
    is a directory (libpq's socket directories when it names none). Tells a server that is
    down, or an address where none listens, from one that answered and refused (a
    password, a role, a database): libpq's errors say neither apart by code."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(dsn)
    except Exception:
        return True  # a dsn libpq cannot parse is a configuration error, not a server down
    hosts = str(d.get("hostaddr") or d.get("host") or os.environ.get("PGHOSTADDR")
                or os.environ.get("PGHOST") or "").split(",")
    ports = str(d.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    for i, host in enumerate(hosts):
        port = (ports[i] if i < len(ports) else ports[-1]).strip() or "5432"
        host = host.strip()
        places = [host] if host else list(_SOCKET_DIRS)
        for place in places:
            try:
                if place.startswith("/"):
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.settimeout(timeout)
                        s.connect(os.path.join(place, f".s.PGSQL.{port}"))
                else:
                    socket.create_connection((place, int(port)), timeout=timeout).close()
                return True
            except (OSError, ValueError):
                continue
    return False


# --- configuration and the table ---------------------------------------------------------
@dataclass(frozen=True)
class _TableInfo:
    name: str  # as resolved by the server, e.g. public.totals
    columns: dict[str, tuple[str, bool, bool, bool]]  # name -> type, not null, default, generated
    unique: list[frozenset[str]]  # column sets of unique, non-partial indexes


class _Spec:
    """What a PostgreSQL sink writes where; validated on construction, checked against the
    server by :meth:`check`. Light and picklable."""

    def __init__(self, kind: str, dsn: str, table: str, columns: Sequence[str], mode: str,
                 key_columns: Sequence[str] | None, row: Callable[[Any], Any] | None,
                 batch_rows: int, lock_timeout: float | None, connect_timeout: float) -> None:
        def bad(msg: str) -> ConfigurationError:
            return ConfigurationError(f"{kind}({table!r}): {msg}")

        if not isinstance(dsn, str) or not dsn:
            raise bad("dsn must be a libpq connection string or URI, e.g. "
                      "'postgresql://user@host:5432/db'")
        if not isinstance(table, str) or not table or len(table.split(".")) > 2 or \
                not all(table.split(".")):
            raise bad("table must be 'name' or 'schema.name'")
        if isinstance(columns, str) or not columns or \
                not all(isinstance(c, str) and c for c in columns):
            raise bad("columns must be a non-empty list of column names")
        if len(set(columns)) != len(columns):
            raise bad(f"columns {list(columns)} name a column twice")
        if mode not in _MODES:
            raise bad(f"mode must be 'insert' or 'upsert', got {mode!r}")
        keys = list(key_columns or [])
        if mode == "upsert":
            if not keys or isinstance(key_columns, str):
                raise bad("mode='upsert' needs key_columns=[...], the columns of the table's "
                          "primary key or unique index that ON CONFLICT matches")
            missing = [k for k in keys if k not in columns]
            if missing:
                raise bad(f"key_columns {missing} are not in columns {list(columns)}")
        elif keys:
            raise bad("key_columns is only used with mode='upsert'")
        if row is not None and not callable(row):
            raise bad(f"row must be a function record -> tuple, got {type(row).__name__}")
        if not isinstance(batch_rows, int) or batch_rows < 1:
            raise bad(f"batch_rows must be an integer >= 1, got {batch_rows!r}")
        if lock_timeout is not None and lock_timeout <= 0:
            raise bad("lock_timeout must be > 0 seconds, or None to wait without limit")
        if connect_timeout <= 0:
            raise bad("connect_timeout must be > 0 seconds")
        self.kind, self.dsn, self.table = kind, dsn, table
        self.columns = list(columns)
        self.mode = mode
        self.key_columns = keys
        self.key_index = [self.columns.index(k) for k in keys]
        self.row = row
        self.batch_rows = batch_rows
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout

    def where(self) -> str:
        return f"{self.kind}({self.table!r})"

    def ident(self) -> Any:
        from psycopg import sql

        return sql.Identifier(*self.table.split("."))

    def inspect(self, conn: Any) -> _TableInfo:
        """Read the table's columns and unique indexes; ConfigurationError if it is missing."""
        qualified = self.ident().as_string(conn)
        oid = conn.execute("SELECT to_regclass(%s)::oid", (qualified,)).fetchone()[0]
        if oid is None:
            path = conn.execute("SHOW search_path").fetchone()[0]
            raise ConfigurationError(
                f"{self.where()}: table {self.table!r} does not exist in database "
                f"{_safe_dsn(self.dsn)} (search_path: {path}); create it first - the sink "
                "does not create tables")
        name = conn.execute("SELECT %s::regclass::text", (oid,)).fetchone()[0]
        cols: dict[str, tuple[str, bool, bool, bool]] = {}
        for cname, ctype, notnull, hasdef, generated in conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef, "
                "attgenerated <> '' OR attidentity = 'a' FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (oid,)):
            cols[cname] = (ctype, notnull, hasdef, generated)
        unique = [frozenset(r[0]) for r in conn.execute(
            "SELECT array_agg(a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL "
            "AND 0 <> ALL(i.indkey) GROUP BY i.indexrelid", (oid,))]
        return _TableInfo(name, cols, unique)

    def check(self, info: _TableInfo) -> None:
        """The columns fit the table; ConfigurationError naming what to change otherwise."""
        have = info.columns
        listing = ", ".join(have) or "(none)"
        missing = [c for c in self.columns if c not in have]
        if missing:
            raise ConfigurationError(
                f"{self.where()}: table {info.name} has no column "
                f"{', '.join(repr(c) for c in missing)}; its columns are {listing}. Fix "
                "columns=[...] (names are case-sensitive) or ALTER TABLE")
        generated = [c for c in self.columns if have[c][3]]
        if generated:
            raise ConfigurationError(
                f"{self.where()}: column(s) {', '.join(generated)} of {info.name} are generated "
                "(or GENERATED ALWAYS AS IDENTITY) and cannot be written; drop them from "
                "columns=[...]")
        required = [c for c, (_, notnull, hasdef, gen) in have.items()
                    if notnull and not hasdef and not gen and c not in self.columns]
        if required:
            raise ConfigurationError(
                f"{self.where()}: column(s) {', '.join(required)} of {info.name} are NOT NULL "
                "without a default but not in columns=[...]; every row would fail. Add them "
                "to columns (and to the rows) or give them a default")
        if self.mode == "upsert" and frozenset(self.key_columns) not in info.unique:
            raise ConfigurationError(
                f"{self.where()}: mode='upsert' with key_columns={self.key_columns} needs a "
                f"primary key or unique index on exactly ({', '.join(self.key_columns)}) of "
                f"{info.name} for ON CONFLICT; none exists. CREATE UNIQUE INDEX ON {info.name} "
                f"({', '.join(self.key_columns)}) or change key_columns")

    def validate(self, two_phase: bool) -> None:
        """At ``run()``, in the driver: connect once and check the server and the table."""
        try:
            conn = _connect(self.dsn, "onceflow-validate", min(self.connect_timeout, 10.0))
        except ConnectionError as e:
            text = _one_line(e.__cause__ or e)
            msg = f"{self.where()}: cannot connect to PostgreSQL at {_safe_dsn(self.dsn)}: {text}"
            # down, restarting or not there yet: run() asks again as the restart strategy
            # allows (as it would a failure of the running job); refused: at once
            if _NOT_NOW.search(text) or not _listening(self.dsn, 2.0):
                if "is the server running" not in text.lower():
                    msg += "; is the server running and the dsn right?"
                raise ServiceUnreachableError(msg) from e
            raise ConfigurationError(f"{msg}; the server answered and refused the session: "
                                     "check the dsn's user, password and database") from e
        with conn:
            if two_phase:
                mpt = conn.execute("SHOW max_prepared_transactions").fetchone()[0]
                check_max_prepared_transactions(mpt, f"the server at {_safe_dsn(self.dsn)}")
            self.check(self.inspect(conn))


class _Writer:
    """Turns records into rows, buffers them and sends them in batches over a connection."""

    def __init__(self, spec: _Spec, info: _TableInfo) -> None:
        from psycopg import sql

        self.spec = spec
        self.upsert = spec.mode == "upsert"
        self.buffer: dict[Any, tuple[Any, ...]] | list[tuple[Any, ...]] = \
            {} if self.upsert else []
        self.rows_written = 0
        ncols = len(spec.columns)
        self._convert = self._make_converter(ncols)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in spec.columns)
        table = spec.ident()
        if not self.upsert:
            self.copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols)
            return
        types = [info.columns[c][0] for c in spec.columns]
        # unnest() flattens array values: array-typed columns use a VALUES list instead
        self.unnest = not any(t.endswith("]") for t in types)
        keys = sql.SQL(", ").join(sql.Identifier(c) for c in spec.key_columns)
        rest = [c for c in spec.columns if c not in spec.key_columns]
        action: sql.Composable
        if rest:
            action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in rest))
        else:
            action = sql.SQL("DO NOTHING")
        self.conflict = sql.SQL("ON CONFLICT ({}) {}").format(keys, action)
        self.head = sql.SQL("INSERT INTO {} ({}) ").format(table, cols)
        self.unnest_sql = self.head + sql.SQL("SELECT * FROM unnest({}) ").format(
            sql.SQL(", ").join(sql.SQL("%s::") + sql.SQL(t + "[]") for t in types)
        ) + self.conflict

    def _make_converter(self, ncols: int) -> Callable[[Any], tuple[Any, ...]]:
        spec = self.spec
        fn, columns = spec.row, spec.columns

        def convert(record: Any) -> tuple[Any, ...]:
            r = fn(record) if fn is not None else record
            if isinstance(r, dict):
                try:
                    return tuple(r[c] for c in columns)
                except KeyError as e:
                    raise ValueError(f"the row has no value for column {e.args[0]!r}") from None
            if isinstance(r, tuple | list):
                if len(r) != ncols:
                    raise ValueError(f"a row needs {ncols} value(s) for columns {columns}, "
                                     f"got {len(r)}")
                return tuple(r)
            if ncols == 1:
                return (r,)
            raise TypeError(f"cannot make a row for columns {columns} from a "
                            f"{type(r).__name__}; pass row=lambda record: (...)")

        return convert

    def add(self, records: list[Any]) -> None:
        convert = self._convert
        try:
            rows = [convert(r) for r in records]
        except Exception as e:
            bad = next((r for r in records if not _converts(convert, r)), records[0])
            raise UserFunctionError(f"{self.spec.where()} row", bad, e) from e
        if self.upsert:
            buf = self.buffer
            assert isinstance(buf, dict)
            idx = self.spec.key_index
            if len(idx) == 1:
                i = idx[0]
                for row in rows:
                    buf.pop(row[i], None)  # keep the newest last (insertion order)
                    buf[row[i]] = row
            else:
                for row in rows:
                    k = tuple(row[i] for i in idx)
                    buf.pop(k, None)
                    buf[k] = row
        else:
            assert isinstance(self.buffer, list)
            self.buffer.extend(rows)

    def __len__(self) -> int:
        return len(self.buffer)

    def clear(self) -> None:
        self.buffer = {} if self.upsert else []

    def flush(self, conn: Any) -> int:
        """Send the buffer in one statement (within whatever transaction ``conn`` has)."""
        if not self.buffer:
            return 0
        if self.upsert:
            assert isinstance(self.buffer, dict)
            rows = list(self.buffer.values())
            self.buffer = {}
            if self.unnest:
                psycopg = _psycopg()
                try:
                    conn.execute(self.unnest_sql, [list(c) for c in zip(*rows, strict=True)],
                                 prepare=True)
                except (psycopg.DataError, psycopg.ProgrammingError) as e:
                    if e.sqlstate is not None:
                        raise  # the server refused: the transaction is aborted
                    # psycopg could not make an array of a column (mixed Python types):
                    # nothing was sent; use VALUES lists, adapted value by value, from now on
                    self.unnest = False
                    self._flush_values(conn, rows)
            else:
                self._flush_values(conn, rows)
        else:
            assert isinstance(self.buffer, list)
            rows = self.buffer
            self.buffer = []
            with conn.cursor() as cur, cur.copy(self.copy_sql) as cp:
                write = cp.write_row
                for row in rows:
                    write(row)
        self.rows_written += len(rows)
        return len(rows)

    def _flush_values(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        from psycopg import sql

        ncols = len(self.spec.columns)
        one = sql.SQL("({})").format(sql.SQL(", ").join([sql.Placeholder()] * ncols))
        step = max(1, 30_000 // ncols)  # stay well below 65535 parameters
        for s in range(0, len(rows), step):
            chunk = rows[s:s + step]
            q = self.head + sql.SQL("VALUES ") + sql.SQL(", ").join([one] * len(chunk)) + \
                sql.SQL(" ") + self.conflict
            conn.execute(q, [v for r in chunk for v in r])


def _converts(convert: Callable[[Any], Any], record: Any) -> bool:
    try:
        convert(record)
        return True
    except Exception:
        return False


# --- the exactly-once sink ---------------------------------------------------------------
@dataclass(frozen=True)
class PostgresTxn:
    """A PostgreSQL sink transaction: its global transaction id (``PREPARE TRANSACTION``)."""

    gid: str


class PostgresSink(TwoPhaseCommitSink[PostgresTxn]):
    """Write records into the PostgreSQL table ``table`` exactly once, with two-phase commit:
    one prepared transaction per sink subtask per checkpoint, committed when the checkpoint
    completes.

    * ``columns``: the table columns a row fills, in order.
    * ``row``: a function ``record -> tuple`` (in ``columns`` order) or ``dict``; without it a
      record must itself be a tuple/list (or a dict by column name, or a single value when
      there is one column).
    * ``mode="insert"`` appends rows (``COPY``); ``mode="upsert"`` inserts or updates by
      ``key_columns`` (``INSERT ... ON CONFLICT (key_columns) DO UPDATE``), which needs a
      primary key or unique index on exactly those columns. Upsert mode expects all records
      of one key to reach one sink subtask: ``key_by`` before the sink, same parallelism.
    * ``batch_rows`` rows are sent per statement; ``lock_timeout`` seconds of waiting for a
      row lock fail the task (``None``: wait forever); connections are retried for
      ``connect_timeout`` seconds when a restarted task opens them.

    The server needs ``max_prepared_transactions > 0``; ``run()`` checks it, the table and
    the columns before any worker starts. The checkpoint interval must be well below any
    ``idle_in_transaction_session_timeout`` of the server.
    """

    def __init__(self, dsn: str, table: str, *, columns: Sequence[str], mode: str = "insert",
                 key_columns: Sequence[str] | None = None,
                 row: Callable[[Any], Any] | None = None, batch_rows: int = 5000,
                 lock_timeout: float | None = 30.0, connect_timeout: float = 30.0) -> None:
        self.spec = _Spec("PostgresSink", dsn, table, columns, mode, key_columns, row,
                          batch_rows, lock_timeout, connect_timeout)
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._ctx: SinkContext | None = None
        self._conn: Any = None  # writes: BEGIN ... PREPARE TRANSACTION
        self._admin: Any = None  # autocommit: COMMIT/ROLLBACK PREPARED, pg_prepared_xacts
        self._writer: _Writer | None = None
        self._open_gid: str | None = None  # gid whose database transaction is open on _conn
        self._current: str | None = None  # gid of the transaction records go to
        self._after = 0  # the last checkpoint id seen: encoded in the next gid
        self._empty: set[str] = set()  # pre-committed without rows: commit is a no-op
        self._prepared: set[str] = set()  # prepared here, not yet committed or aborted

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec = state["spec"]
        self._reset_runtime()

    def __repr__(self) -> str:
        return f"PostgresSink({self.spec.table!r}, mode={self.spec.mode!r})"

    def validate(self) -> None:
        """Called by ``run()`` before workers start: server reachable, two-phase commit
        enabled, table and columns as configured."""
        self.spec.validate(two_phase=True)

    # --- connections -------------------------------------------------------------------
    def _app(self, ctx: SinkContext, role: str) -> str:
        """``application_name`` of a session: ``onceflow:<hash>:<subtask>:<role>:<flow>:<uid>``
        (``role`` w = writes, c = commits), cut to the server's 63 bytes."""
        p = _session_prefix(ctx.flow, ctx.uid)
        return f"{p}{ctx.subtask}:{role}:{_name_part(ctx.flow)}:{_name_part(ctx.uid)}"[:63]

    def _admin_conn(self) -> Any:
        a = self._admin
        if a is None or a.closed or a.broken:
            if a is not None:
                a.close()
            assert self._ctx is not None
            self._admin = _connect(self.spec.dsn, self._app(self._ctx, "c"),
                                   self.spec.connect_timeout)
        return self._admin

    # --- lifecycle -----------------------------------------------------------------------
    def open(self, ctx: SinkContext) -> None:
        self._ctx = ctx
        spec = self.spec
        self._conn = _connect(spec.dsn, self._app(ctx, "w"), spec.connect_timeout,
                              retry_for=spec.connect_timeout)
        if spec.lock_timeout is not None:
            self._conn.execute("SELECT set_config('lock_timeout', %s, false)",
                               (f"{int(spec.lock_timeout * 1000)}ms",))
        self._admin = _connect(spec.dsn, self._app(ctx, "c"), spec.connect_timeout,
                               retry_for=spec.connect_timeout)
        info = spec.inspect(self._admin)
        spec.check(info)
        self._writer = _Writer(spec, info)

    def begin_transaction(self) -> PostgresTxn:
        ctx = self._ctx
        assert ctx is not None
        gid = (f"{gid_prefix(ctx.flow, ctx.uid)}{ctx.subtask}:{self._after}:"
               f"{uuid.uuid4().hex[:8]}")
        assert len(gid) <= GID_MAX, gid
        self._current = gid
        return PostgresTxn(gid)

    def write(self, txn: PostgresTxn, records: list[Any]) -> None:
        w = self._writer
        assert w is not None and txn.gid == self._current
        w.add(records)
        # Upserts wait while one of this subtask's prepared transactions is uncommitted:
        # they could touch its locked rows and would wait for a commit this (single-threaded)
        # worker can only perform after the write returns.
        if len(w) >= self.spec.batch_rows and not (w.upsert and self._prepared):
            self._flush(txn.gid)

    def _flush(self, gid: str) -> None:
        w = self._writer
        assert w is not None
        if not len(w):
            return
        if self._open_gid is None:
            self._conn.execute("BEGIN")
            self._open_gid = gid
        psycopg = _psycopg()
        try:
            w.flush(self._conn)
        except psycopg.errors.LockNotAvailable as e:
            raise ConnectorError(
                f"{self.spec.where()}: waited longer than lock_timeout="
                f"{self.spec.lock_timeout}s for a row lock. In upsert mode records of one key "
                "must reach one sink subtask (key_by before the sink, same parallelism); or "
                "another session or a prepared transaction of another job holds the rows - "
                f"see pg_locks and pg_prepared_xacts ({e})") from e
        except psycopg.Error as e:
            raise ConnectorError(f"{self.spec.where()}: writing rows failed: "
                                 f"{type(e).__name__}: {e}") from e

    def pre_commit(self, txn: PostgresTxn) -> None:
        w = self._writer
        if w is not None and w.upsert and self._prepared and len(w):
            ctx = self._ctx
            log.warning("sink %s[%d]: pre-commit while %s is still uncommitted; its row locks "
                        "may hold up these upserts until lock_timeout", ctx.uid if ctx else "?",
                        ctx.subtask if ctx else -1, sorted(self._prepared))
        self._flush(txn.gid)
        if self._open_gid != txn.gid:
            self._empty.add(txn.gid)  # nothing written: nothing to prepare
            return
        from psycopg import sql

        _faults.point("sink.pre_commit", subtask=self._ctx.subtask if self._ctx else -1)
        with foreign_errors(f"{self.spec.where()}: PREPARE TRANSACTION {txn.gid}",
                            _psycopg().Error):
            self._conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(txn.gid)))
        self._open_gid = None
        self._prepared.add(txn.gid)

    def commit(self, txn: PostgresTxn) -> None:
        if txn.gid in self._empty:
            self._empty.discard(txn.gid)
            return
        from psycopg import sql

        ctx = self._ctx
        assert ctx is not None
        restored = txn.gid not in self._prepared  # listed by a restored checkpoint
        psycopg = _psycopg()
        try:
            admin = self._admin_conn()
            _faults.point("sink.commit", subtask=ctx.subtask)
            admin.execute(
                sql.SQL("COMMIT PREPARED {}").format(sql.Literal(txn.gid)))
        except psycopg.errors.UndefinedObject:
            # committed before (by an earlier attempt): idempotent
            if restored:
                log.info("sink %s[%d]: %s was already committed", ctx.uid, ctx.subtask, txn.gid)
        except psycopg.Error as e:
            raise ConnectorError(f"{self.spec.where()}: COMMIT PREPARED {txn.gid} failed: "
                                 f"{type(e).__name__}: {e}") from e
        else:
            if restored:
                log.info("sink %s[%d]: committed %s, left prepared by an earlier attempt",
                         ctx.uid, ctx.subtask, txn.gid)
            _faults.point("sink.mid_commit", subtask=ctx.subtask)
        self._prepared.discard(txn.gid)

    def abort(self, txn: PostgresTxn) -> None:
        from psycopg import sql

        self._empty.discard(txn.gid)
        if txn.gid == self._current and self._writer is not None:
            self._writer.clear()
        if self._open_gid == txn.gid:
            self._open_gid = None
            conn = self._conn
            if conn is not None and not conn.closed and not conn.broken:
                conn.execute("ROLLBACK")
            return
        if txn.gid in self._prepared:
            try:
                self._admin_conn().execute(
                    sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(txn.gid)))
            except _psycopg().errors.UndefinedObject:
                pass
            self._prepared.discard(txn.gid)

    def abort_lingering(self, ctx: SinkContext, keep: list[PostgresTxn]) -> None:
        from psycopg import sql

        admin = self._admin_conn()
        self._end_stale_sessions(ctx, admin)
        prefix = gid_prefix(ctx.flow, ctx.uid)
        kept = {t.gid for t in keep}
        rows = admin.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
            "AND starts_with(gid, %s)", (prefix,)).fetchall()
        n = 0
        for (gid,) in rows:
            sub = gid[len(prefix):].split(":", 1)[0]
            if gid in kept or not sub.isdigit() or int(sub) % ctx.parallelism != ctx.subtask:
                continue
            try:
                admin.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
                n += 1
            except _psycopg().errors.UndefinedObject:
                pass  # another session ended it meanwhile
        if n:
            log.info("sink %s[%d]: rolled back %d prepared transaction(s) earlier attempts left",
                     ctx.uid, ctx.subtask, n)

    def _end_stale_sessions(self, ctx: SinkContext, admin: Any) -> None:
        """Terminate server sessions of crashed attempts of the subtasks this one succeeds:
        a session still running a PREPARE TRANSACTION could otherwise prepare after the
        clean-up looked, and its open transaction holds row locks until the server notices
        the client is gone."""
        prefix = _session_prefix(ctx.flow, ctx.uid)
        mine = [self._conn.info.backend_pid, admin.info.backend_pid]
        rows = admin.execute(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE starts_with(application_name, %s) AND pid <> ALL(%s)",
            (prefix, mine)).fetchall()
        stale = []
        for pid, app in rows:
            sub = app[len(prefix):].split(":", 1)[0]
            if sub.isdigit() and int(sub) % ctx.parallelism == ctx.subtask:
                stale.append(pid)
        if not stale:
            return
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                          (stale,))
        except _psycopg().Error as e:
            log.warning("sink %s[%d]: cannot end stale sessions %s (%s); their locks last "
                        "until the server notices their clients are gone", ctx.uid,
                        ctx.subtask, stale, e)
            return
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            left = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                 (stale,)).fetchone()[0]
            if not left:
                break
            time.sleep(0.05)
        log.info("sink %s[%d]: ended %d stale session(s) of earlier attempts", ctx.uid,
                 ctx.subtask, len(stale))

    def snapshot_state(self, checkpoint_id: int) -> Any:
        self._after = checkpoint_id
        return checkpoint_id

    def restore_state(self, states: list[Any]) -> None:
        self._after = max((s for s in states if isinstance(s, int)), default=0)

    def close(self) -> None:
        for c in (self._conn, self._admin):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self._conn = self._admin = None


# --- the at-least-once variant -----------------------------------------------------------
class PostgresAutocommitSink(Sink):
    """The same writes as :class:`PostgresSink`, each batch committed at once (autocommit):
    at-least-once. After a restart rows since the last checkpoint are written again -
    duplicates in insert mode; in upsert mode the final table is still right. Buffered rows
    are sent when ``batch_rows`` are waiting, at every checkpoint and at the end of input.
    Needs no ``max_prepared_transactions``."""

    def __init__(self, dsn: str, table: str, *, columns: Sequence[str], mode: str = "insert",
                 key_columns: Sequence[str] | None = None,
                 row: Callable[[Any], Any] | None = None, batch_rows: int = 5000,
                 lock_timeout: float | None = 30.0, connect_timeout: float = 30.0) -> None:
        self.spec = _Spec("PostgresAutocommitSink", dsn, table, columns, mode, key_columns,
                          row, batch_rows, lock_timeout, connect_timeout)
        self._conn: Any = None
        self._writer: _Writer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_conn": None, "_writer": None}

    def validate(self) -> None:
        self.spec.validate(two_phase=False)

    def open(self, ctx: SinkContext) -> None:
        spec = self.spec
        self._conn = _connect(spec.dsn, f"onceflow-autocommit:{ctx.subtask}",
                              spec.connect_timeout, retry_for=spec.connect_timeout)
        if spec.lock_timeout is not None:
            self._conn.execute("SELECT set_config('lock_timeout', %s, false)",
                               (f"{int(spec.lock_timeout * 1000)}ms",))
        info = spec.inspect(self._conn)
        spec.check(info)
        self._writer = _Writer(spec, info)

    def write(self, records: list[Any]) -> None:
        w = self._writer
        assert w is not None
        w.add(records)
        if len(w) >= self.spec.batch_rows:
            w.flush(self._conn)

    def snapshot_state(self, checkpoint_id: int) -> Any:
        if self._writer is not None:
            self._writer.flush(self._conn)
        return None

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.flush(self._conn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
