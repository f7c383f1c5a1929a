"""``FileSink``: exactly-once files through two-phase commit, as JSON lines, CSV or Parquet.

* begin: choose the names ``.{prefix}-{subtask}-{seq}-{token}.{ext}.inprogress`` (hidden) and
  ``{prefix}-{subtask}-{seq}-{token}.{ext}`` (final); the file is created on the first write.
* write: encode the whole batch at once and append it (JSON lines, CSV), or buffer it and
  write a row group once enough records are buffered (Parquet).
* pre-commit: flush, fsync, close. The hidden file now survives a crash.
* commit: atomic ``rename`` to the final name and fsync of the directory; if the hidden file
  is gone and the final one exists, it was committed before: success.
* abort / abort_lingering: delete hidden files no completed checkpoint covers.

Readers that skip names starting with ``.`` never see a partial or uncommitted file.

Speed: the sink is on the hot path of every exactly-once file job, so each batch is encoded
with as little per-record Python as the format allows. For JSON lines that is one
``orjson.dumps`` per record appended to one ``bytearray``: orjson's results are freed at
once that way, which measured about 20 times faster than collecting them in a list and
joining it (keeping a batch of small ``bytes`` results alive is what costs).
"""

from __future__ import annotations

import csv
import io
import operator
import os
import re
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from onceflow import _faults
from onceflow._fsutil import fsync_dir
from onceflow._optional import require
from onceflow.connectors.jsonvalues import dumps as json_dumps
from onceflow.connectors.jsonvalues import has_non_finite, loads
from onceflow.connectors.sinks import SinkContext
from onceflow.connectors.two_phase import TwoPhaseCommitSink
from onceflow.errors import ConfigurationError, _short_repr

FORMATS = ("jsonl", "csv", "parquet")
_BUFFER = 1 << 20  # bytes of write buffer per open file
PARQUET_ROW_GROUP = 65_536  # records buffered before a Parquet row group is written
_PARQUET_SHAPE = b"onceflow.records"  # schema metadata: how records map to columns
_INT_LIST_BYTES = b"0123456789-,[]"  # all a JSON list of lists of integers is made of


@dataclass(frozen=True)
class FileTxn:
    """A pending file transaction: the hidden temporary path and the final path."""

    tmp: str
    final: str


class FileSink(TwoPhaseCommitSink[FileTxn]):
    """Write records into ``directory``, exactly once: one file per sink subtask per
    checkpoint that saw records.

    ``format``: ``"jsonl"`` (the default; one JSON value per line, or with ``serializer``, a
    function returning ``str`` or ``bytes`` for one record, newline added), ``"csv"``
    (tuples and lists are rows; dicts are rows under a header of the first record's keys;
    other values are one-column rows) or ``"parquet"`` (needs ``pyarrow``: dicts give one
    column per key, tuples and lists columns ``f0, f1, ...``, other values a column
    ``value``)."""

    def __init__(self, directory: str | os.PathLike[str], *, prefix: str = "part",
                 format: str = "jsonl",
                 serializer: Callable[[Any], str | bytes] | None = None) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", prefix):
            raise ConfigurationError(
                f"FileSink: prefix {prefix!r} must be letters, digits, '_', '-', '.' and not "
                "start with '.'"
            )
        if format not in FORMATS:
            raise ConfigurationError(
                f"FileSink: format {format!r} is not one of {', '.join(map(repr, FORMATS))}")
        if serializer is not None and format != "jsonl":
            raise ConfigurationError(
                f"FileSink: serializer= only applies to format='jsonl' (got format={format!r}); "
                "for CSV and Parquet, map records to tuples or dicts before the sink")
        if serializer is not None and not callable(serializer):
            raise ConfigurationError(
                f"FileSink: serializer must be a function of one record, got {serializer!r}")
        if format == "parquet":
            require("pyarrow.parquet", "FileSink(format='parquet')", "parquet", "pyarrow")
        self.prefix = prefix
        self.format = format
        self.serializer = serializer
        self._ctx: SinkContext | None = None
        self._seq = 0
        self._files: dict[str, _Writer] = {}
        self._schema_hint: Any = None  # Parquet: the schema of the previous file
        self._label = f"FileSink({self.directory})"  # names the sink in error messages

    def validate(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise ConfigurationError(
                f"FileSink: cannot create output directory {self.directory}: {e.strerror}"
            ) from e
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigurationError(f"FileSink: output directory {self.directory} is not writable")

    # --- lifecycle -----------------------------------------------------------------------
    def open(self, ctx: SinkContext) -> None:
        self._ctx = ctx
        os.makedirs(self.directory, exist_ok=True)

    def begin_transaction(self) -> FileTxn:
        assert self._ctx is not None
        name = (f"{self.prefix}-{self._ctx.subtask:03d}-{self._seq:06d}-"
                f"{uuid.uuid4().hex[:8]}.{self.format}")
        self._seq += 1
        return FileTxn(
            tmp=os.path.join(self.directory, f".{name}.inprogress"),
            final=os.path.join(self.directory, name),
        )

    def write(self, txn: FileTxn, records: list[Any]) -> None:
        if not records:
            return
        w = self._files.get(txn.tmp)
        if w is None:
            w = self._files[txn.tmp] = self._writer(txn.tmp)
        w.write(records)

    def _writer(self, path: str) -> _Writer:
        if self.format == "csv":
            return _CsvWriter(path, self._label)
        if self.format == "parquet":
            return _ParquetWriter(path, self._label, self._schema_hint)
        return _JsonLinesWriter(path, self._label, self.serializer)

    def pre_commit(self, txn: FileTxn) -> None:
        w = self._files.pop(txn.tmp, None)
        if w is None:
            return  # nothing written: nothing to make durable, commit will be a no-op
        w.finish()
        if isinstance(w, _ParquetWriter) and w.schema is not None:
            self._schema_hint = w.schema

    def commit(self, txn: FileTxn) -> None:
        try:
            os.rename(txn.tmp, txn.final)
        except FileNotFoundError:
            return  # committed before (or empty): idempotent
        ctx = self._ctx
        _faults.point("sink.mid_commit", subtask=ctx.subtask if ctx else -1)
        fsync_dir(self.directory)

    def abort(self, txn: FileTxn) -> None:
        w = self._files.pop(txn.tmp, None)
        if w is not None:
            w.discard()
        try:
            os.unlink(txn.tmp)
        except FileNotFoundError:
            pass

    def abort_lingering(self, ctx: SinkContext, keep: list[FileTxn]) -> None:
        keep_names = {os.path.basename(t.tmp) for t in keep}
        pattern = re.compile(rf"^\.{re.escape(self.prefix)}-(\d+)-.*\.inprogress$")
        for name in os.listdir(self.directory):
            m = pattern.match(name)
            if m and int(m.group(1)) % ctx.parallelism == ctx.subtask and name not in keep_names:
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass

    def snapshot_state(self, checkpoint_id: int) -> Any:
        return self._seq

    def restore_state(self, states: list[Any]) -> None:
        self._seq = max((s for s in states if s is not None), default=0)

    def close(self) -> None:
        for w in self._files.values():
            w.discard()
        self._files.clear()


class _RecordError(TypeError):
    """A record the file format cannot hold (the message names the record)."""


# --- one open transaction file per format ------------------------------------------------
class _Writer:
    """One transaction's hidden file: ``write`` batches, ``finish`` makes it durable and
    closes it (pre-commit), ``discard`` closes it without caring for its contents."""

    def __init__(self, path: str, sink: str) -> None:
        self.path, self.sink = path, sink
        self.f: BinaryIO | None = None

    def _file(self) -> BinaryIO:
        if self.f is None:
            self.f = open(self.path, "ab", buffering=_BUFFER)
        return self.f

    def write(self, records: list[Any]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        f = self._file()
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self.f = None

    def discard(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def fail(self, record: Any, problem: str) -> _RecordError:
        """The error for a record this format cannot write; the sink operator wraps it in a
        UserFunctionError that names the operator."""
        return _RecordError(f"{self.sink} cannot write the record {_short_repr(record)}: "
                            f"{problem}")


def json_lines_of_batch(records: list[Any]) -> bytes | None:
    """The JSON lines of ``records`` from one ``orjson.dumps`` of the whole list, when that
    can be cut into lines safely; None otherwise (the caller encodes record by record).

    Safe means every record is a plain tuple/list (or every one a plain dict) and the list's
    JSON holds exactly one ``[`` (``{``) per record besides the outer one: then no record
    nests another array (object) and no string contains the bracket, so every ``],[``
    (``},{``) is the border between two records. The result equals the per-record encoding
    byte for byte."""
    n = len(records)
    types = set(map(type, records))
    if types <= {tuple, list}:
        opener, border, line_border = b"[", b"],[", b"]\n["
        expect = n + 1
    elif types == {dict}:
        opener, border, line_border = b"{", b"},{", b"}\n{"
        expect = n
    else:
        return None
    try:
        data = orjson.dumps(records, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError, ValueError):
        return None  # the per-record path finds and names the record
    if data.count(opener) != expect:
        return None
    if b"null" in data and any(map(has_non_finite, records)):
        return None  # written record by record, without turning NaN/inf into null
    return data[1:-1].replace(border, line_border) + b"\n"


class _JsonLinesWriter(_Writer):
    def __init__(self, path: str, sink: str,
                 serializer: Callable[[Any], str | bytes] | None) -> None:
        super().__init__(path, sink)
        self.serializer = serializer

    def write(self, records: list[Any]) -> None:
        ser = self.serializer
        if ser is None:
            fast = json_lines_of_batch(records)
            if fast is not None:
                self._file().write(fast)
                return
        buf = bytearray()
        r: Any = None
        try:
            if ser is None:
                for r in records:  # NaN, infinities and big ints as jsonvalues keeps them
                    buf += json_dumps(r, True)  # newline=True, positional: ~40 ns less
            else:
                for r in records:
                    v = ser(r)
                    buf += v.encode() if isinstance(v, str) else v
                    buf += b"\n"
        except (TypeError, orjson.JSONEncodeError, ValueError) as e:
            raise self.fail(r, f"cannot encode record as a line ({e}); pass serializer=... "
                               "to FileSink") from e
        self._file().write(buf)


def _kind(types: Iterable[type]) -> str | None:
    """``dict``, ``row`` or ``value`` if every type in ``types`` is of that kind, else None."""
    kinds = {"dict" if issubclass(t, dict) else "row" if issubclass(t, tuple | list)
             else "value" for t in types}
    return kinds.pop() if len(kinds) == 1 else None


def _check_kind(w: _CsvWriter | _ParquetWriter, records: list[Any], fmt: str) -> str:
    """The kind of a batch's records; the file's first batch sets the file's kind, and all
    its records must be of that kind."""
    kind = _kind(set(map(type, records)))
    if w.kind is None:
        w.kind = _kind([type(records[0])])
    if kind is None or kind != w.kind:
        bad = next(r for r in records if _kind([type(r)]) != w.kind)
        names = {"dict": "dicts", "row": "tuples/lists", "value": "single values"}
        raise w.fail(bad, f"a {fmt} file holds records of one kind (dicts, tuples/lists, or "
                          f"single values); this file's records are {names[w.kind or 'value']}")
    return kind


def csv_rows_of_int_batch(records: list[Any]) -> bytes | None:
    """CSV rows of tuples/lists that hold only integers, from one ``orjson.dumps`` of the
    batch; None when the batch holds anything else (the ``csv`` module writes it then).

    The batch's JSON made of nothing but digits, ``-``, ``,``, ``[`` and ``]`` (no strings,
    objects, ``true``/``false``/``null``, fractions or exponents), with one ``[`` per
    record, is flat lists of integers, whose JSON and CSV spellings agree: ``[[1,2],[3,4]]``
    becomes ``1,2\r\n3,4\r\n``, byte for byte what ``csv.writer`` writes.

    The counts also prove that every record is a flat list: a record without a ``[`` of its
    own (a scalar) would have to be made up for by one with a nested list, and nested lists
    bring ``],[`` borders or ``[[`` that the counts do not allow; other characters, and
    objects orjson cannot encode, fail the other checks."""
    try:
        data = orjson.dumps(records)
    except (TypeError, orjson.JSONEncodeError, ValueError):
        return None
    n = len(records)
    if data.translate(None, _INT_LIST_BYTES) or data.count(b"[") != n + 1 \
            or data.count(b"],[") != n - 1:
        return None
    return data[2:-2].replace(b"],[", b"\r\n") + b"\r\n"


class _CsvWriter(_Writer):
    """CSV rows (Python's ``csv`` module, excel dialect, ``\\r\\n`` line ends). The first
    batch decides the file's kind: dict records (a header line of the first record's keys,
    then every record must have exactly those keys), tuples and lists, or scalar values."""

    def __init__(self, path: str, sink: str) -> None:
        super().__init__(path, sink)
        self.kind: str | None = None
        self.header: list[Any] = []
        self.text = io.StringIO()
        self.out = csv.writer(self.text)

    def write(self, records: list[Any]) -> None:
        kind = _check_kind(self, records, "CSV")
        if kind == "dict" and not self.header:
            self.header = list(records[0].keys())
            self.out.writerow(self.header)
        if kind == "row":
            fast = csv_rows_of_int_batch(records)
            if fast is not None:
                self._file().write(fast)
                return
        try:
            if kind == "row":
                self.out.writerows(records)
            elif kind == "value":
                self.out.writerows(zip(records, strict=True))
            else:
                self._write_dicts(records)
        except csv.Error as e:
            raise self.fail(records[0], f"cannot write CSV ({e})") from e
        data = self.text.getvalue().encode()
        self.text.seek(0)
        self.text.truncate()
        self._file().write(data)

    def _write_dicts(self, records: list[dict[Any, Any]]) -> None:
        n = len(self.header)
        if n == 0 and set(map(len, records)) == {0}:
            self.out.writerows([()] * len(records))
            return
        if n and set(map(len, records)) == {n}:  # equal sizes + every header key found: same keys
            get = operator.itemgetter(*self.header)
            try:
                rows = list(map(get, records)) if n > 1 else [(get(r),) for r in records]
            except KeyError:
                pass
            else:
                self.out.writerows(rows)
                return
        want = set(self.header)
        bad = next(r for r in records if set(r) != want)
        raise self.fail(bad, f"the record's keys {sorted(map(str, bad))} differ from this CSV "
                             f"file's header {self.header}; every dict record of a CSV file "
                             "must have the same keys")


class _ParquetWriter(_Writer):
    """One Parquet file per transaction, written in row groups of about
    :data:`PARQUET_ROW_GROUP` records.

    Each batch is converted to Arrow columns as it arrives (so a record that does not fit
    fails the batch that holds it). Until the first row group is written the batches' types
    are inferred by pyarrow and unified (a column that was all None in one batch takes the
    type of the next); from then on the file's schema is fixed and batches convert straight
    to it. The schema of the sink's previous file is tried first, which skips inference.

    Converting Python objects needs the interpreter, but encoding, compressing and writing a
    row group does not: pyarrow does that without the GIL, on a helper thread, while the
    task goes on with the next batches (one row group in flight at most).

    Rows of integers (a file whose columns are all int64, the common keyed-aggregate output)
    go faster still: each batch becomes CSV text with one ``orjson.dumps``
    (:func:`csv_rows_of_int_batch`), and the helper thread parses the row group with
    pyarrow's CSV reader into the file's schema. A batch holding anything else, and a row
    group the reader rejects (an integer beyond int64), is converted the exact way."""

    def __init__(self, path: str, sink: str, hint: Any = None) -> None:
        super().__init__(path, sink)
        self.pa = require("pyarrow", "FileSink(format='parquet')", "parquet", "pyarrow")
        self.pq = require("pyarrow.parquet", "FileSink(format='parquet')", "parquet", "pyarrow")
        self.kind: str | None = None
        # the row group being gathered: (records, CSV text of int rows or None, table or None)
        self.parts: list[tuple[list[Any], bytes | None, Any]] = []
        self.rows = 0
        self.hint: Any = hint  # a schema to try first (the previous file's)
        self.schema: Any = None  # the file's schema, once its first row group is written
        self.int_rows = False  # every column int64: batches may go as CSV text
        self.sink_file: Any = None  # a native pyarrow file: written without the GIL
        self.writer: Any = None
        self.pool: ThreadPoolExecutor | None = None
        self.inflight: Future[list[list[Any]] | None] | None = None

    def write(self, records: list[Any]) -> None:
        text = csv_rows_of_int_batch(records) if self.int_rows else None  # implies the kind
        if text is None:
            _check_kind(self, records, "Parquet")
        self.parts.append((records, text, None if text is not None else self._convert(records)))
        self.rows += len(records)
        if self.rows >= PARQUET_ROW_GROUP:
            self._flush()

    def _convert(self, records: list[Any]) -> Any:
        schema = self.schema if self.schema is not None else self.hint
        try:
            if schema is not None and schema.metadata.get(_PARQUET_SHAPE) == \
                    (self.kind or "").encode():
                try:
                    return self._typed(records, schema)
                except (self.pa.ArrowException, TypeError, ValueError, KeyError, OverflowError):
                    if self.schema is not None:
                        raise  # the file's schema is fixed
            return self._inferred(records)
        except _RecordError:
            raise
        except (self.pa.ArrowException, TypeError, ValueError, KeyError, OverflowError) as e:
            cols = f"the file's columns {self.schema}" if self.schema is not None \
                else "columns"
            raise _RecordError(
                f"{self.sink} cannot convert the batch of {len(records)} records from "
                f"{_short_repr(records[0])} on to Parquet {cols}: {e}; the records of one file "
                "need the same fields, with values of one type per field") from e

    def _typed(self, records: list[Any], schema: Any) -> Any:
        pa = self.pa
        if self.kind == "dict":
            extra = set().union(*records).difference(schema.names)
            if extra:
                bad = next(r for r in records if not extra.isdisjoint(r))
                raise self.fail(bad, f"fields {sorted(map(str, extra))} are not among the "
                                     f"Parquet file's columns {schema.names}")
            return pa.Table.from_pylist(records, schema=schema)
        if self.kind == "row":
            arr = pa.array(records, type=pa.struct(list(schema)))  # tuples -> structs in C
            return pa.Table.from_struct_array(arr).replace_schema_metadata(schema.metadata)
        return pa.Table.from_arrays([pa.array(records, type=schema.field(0).type)],
                                    schema=schema)

    def _inferred(self, records: list[Any]) -> Any:
        pa = self.pa
        if self.kind == "dict":
            t = pa.Table.from_pylist(records)
        elif self.kind == "row":
            width = len(records[0])
            bad = next((r for r in records if len(r) != width), None)
            if bad is not None:
                raise self.fail(bad, f"rows of a Parquet file must have the same length; this "
                                     f"one has {len(bad)} fields, the file's {width}")
            cols = list(zip(*records, strict=True))
            t = pa.Table.from_arrays([pa.array(c) for c in cols],
                                     names=[f"f{i}" for i in range(width)])
        else:
            t = pa.table({"value": pa.array(records)})
        return t.replace_schema_metadata({_PARQUET_SHAPE: (self.kind or "value").encode()})

    def _flush(self) -> None:
        parts, self.parts = self.parts, []
        rows, self.rows = self.rows, 0
        if not parts:
            return
        self._wait()
        if self.int_rows and all(text is not None for _, text, _ in parts):
            assert self.pool is not None
            self.inflight = self.pool.submit(
                self._parse_and_write, b"".join(text for _, text, _ in parts if text),
                [recs for recs, _, _ in parts], rows)
            return
        table = self._concat([t if t is not None else self._convert(recs)
                              for recs, _, t in parts])
        if self.writer is None:
            self.schema = table.schema
            self.sink_file = self.pa.OSFile(self.path, "wb")
            self.writer = self.pq.ParquetWriter(self.sink_file, self.schema)
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="onceflow-parquet")
            self.int_rows = self.kind == "row" and len(self.schema) > 0 and all(
                self.pa.types.is_int64(f.type) for f in self.schema)
        assert self.pool is not None
        self.inflight = self.pool.submit(self._write_table, table)

    def _concat(self, tables: list[Any]) -> Any:
        pa = self.pa
        try:
            if self.schema is None:
                table = pa.concat_tables(tables, promote_options="default")
                return table.replace_schema_metadata(tables[0].schema.metadata)
            return pa.concat_tables(tables)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise _RecordError(f"{self.sink}: the batches of one Parquet file do not share "
                               f"their columns' types ({e}); use one type per field") from e

    def _write_table(self, table: Any) -> None:
        self.writer.write_table(table)

    def _parse_and_write(self, text: bytes, batches: list[list[Any]],
                         rows: int) -> list[list[Any]] | None:
        """On the helper thread: parse a row group of integer rows (CSV text) into the
        file's schema and write it. Returns the batches, writing nothing, if the reader's
        result is not exactly that (the exact path converts them then)."""
        import pyarrow.csv as pacsv

        pa, plain = self.pa, self.schema.remove_metadata()
        try:
            t = pacsv.read_csv(
                pa.BufferReader(text),
                read_options=pacsv.ReadOptions(column_names=plain.names, use_threads=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={f.name: f.type for f in plain}, null_values=[]))
        except pa.ArrowException:
            return batches
        if t.num_rows != rows or not t.schema.equals(plain):
            return batches
        self.writer.write_table(t.replace_schema_metadata(self.schema.metadata))
        return None

    def _wait(self) -> None:
        f, self.inflight = self.inflight, None
        if f is None:
            return
        try:
            rejected = f.result()
        except Exception as e:
            raise OSError(f"{self.sink}: writing a Parquet row group to {self.path} "
                          f"failed: {e}") from e
        if rejected:  # the CSV reader declined: convert the exact way, write it here
            self.writer.write_table(self._concat([self._convert(b) for b in rejected]))

    def finish(self) -> None:
        self._flush()
        self._wait()
        if self.writer is not None:
            self.writer.close()  # writes the footer
            self.sink_file.close()
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._release()

    def discard(self) -> None:
        self.parts, self.rows = [], 0
        try:
            self._wait()
        except OSError:
            pass  # the file is being thrown away
        for closable in (self.writer, self.sink_file):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # the file is being thrown away
                    pass
        self._release()

    def _release(self) -> None:
        self.writer = self.sink_file = None
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


# --- reading committed output ------------------------------------------------------------
def read_committed(directory: str | os.PathLike[str], prefix: str = "part", *,
                   header: bool | None = None) -> list[Any]:
    """Every record a ``FileSink`` committed in ``directory``, file by file in name order
    (hidden files, i.e. uncommitted transactions, skipped). For tests and verification.

    The format follows each file's extension: ``.csv`` and ``.parquet``, anything else is
    read as JSON lines. JSON lines give back what Python's ``json`` decodes (tuples become
    lists); Parquet gives dicts, lists (for tuple/list records) or values, as written. CSV fields
    are strings: pass ``header=True`` when the sink wrote dict records (each file's first
    line names the columns; records come back as dicts) or ``header=False`` for tuples,
    lists and single values (records come back as lists of strings)."""
    out: list[Any] = []
    d = os.fspath(directory)
    for name in sorted(os.listdir(d)):
        if name.startswith(".") or not name.startswith(prefix + "-"):
            continue
        path = os.path.join(d, name)
        if name.endswith(".csv"):
            if header is None:
                raise ConfigurationError(
                    f"read_committed: {path} is CSV; pass header=True if the sink wrote dict "
                    "records (first line = column names) or header=False otherwise")
            out.extend(_read_csv(path, header))
        elif name.endswith(".parquet"):
            out.extend(_read_parquet(path))
        else:
            with open(path, "rb") as f:
                out.extend(loads(line) for line in f if line.strip())  # NaN, big ints too
    return out


def _read_csv(path: str, header: bool) -> list[Any]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f)) if header else list(csv.reader(f))


def _read_parquet(path: str) -> list[Any]:
    pq = require("pyarrow.parquet", "read_committed of Parquet files", "parquet", "pyarrow")
    table = pq.read_table(path)
    kind = (table.schema.metadata or {}).get(_PARQUET_SHAPE, b"dict")
    if kind == b"row":
        return [list(r) for r in zip(*(c.to_pylist() for c in table.columns), strict=True)]
    if kind == b"value":
        return table.column(0).to_pylist()
    return table.to_pylist()
