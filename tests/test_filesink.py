"""FileSink in every format: what is written and read back, the transaction protocol on
real files, errors that name the record, the conformance check at every crash point, and
SIGKILLed workers with exact comparison of the committed output."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import datagenjob
import orjson
import pyarrow.parquet as pq
import pytest
from jobproc import JobProcess, kill_randomly

import onceflow as of
from onceflow.connectors.files import PARQUET_ROW_GROUP
from onceflow.connectors.sinks import SinkContext
from onceflow.testing import check_sink_exactly_once

FORMATS = ["jsonl", "csv", "parquet"]
JOB = str(Path(__file__).with_name("datagenjob.py"))
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261127"))


def run_into(tmp: Path, records: list[Any], fmt: str, parallelism: int = 1,
             **sink_args: Any) -> Path:
    out = tmp / f"out-{fmt}"
    flow = of.Flow(f"filesink-{fmt}", parallelism=parallelism, batch_size=64,
                   restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.1, str(tmp / f"ckpt-{fmt}"))
    (flow.source(of.sources.Collection(records), name="in")
         .sink(of.sinks.FileSink(out, format=fmt, **sink_args), name="files"))
    flow.run()
    return out


def final_files(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out) if not n.startswith("."))


# --- what is written -------------------------------------------------------------------
def test_jsonl_default_is_unchanged(tmp_path: Path) -> None:
    """The default format writes the same bytes as before: one orjson value per line."""
    records = [(i, f"w{i}") for i in range(500)] + [{"a": 1, 2: [None, 1.5]}]
    out = tmp_path / "out"
    flow = of.Flow("jsonl-default")
    flow.source(of.sources.Collection(records)).sink(of.sinks.FileSink(out))
    flow.run()
    names = final_files(out)
    assert names and all(n.startswith("part-000-") and n.endswith(".jsonl") for n in names)
    data = b"".join((out / n).read_bytes() for n in names)
    assert data == b"".join(
        orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
        for r in records)
    assert of.sinks.read_committed(out) == [list(records[i]) for i in range(500)] + \
        [{"a": 1, "2": [None, 1.5]}]


def test_jsonl_integers_past_64_bits_are_written_exactly(tmp_path: Path) -> None:
    """orjson refuses an int past 64 bits; a JSON source reads one back exactly, so the
    sink writes it as Python's json does, in the whole-batch path and record by record
    (a batch of mixed kinds), and read_committed gives it back unchanged."""
    records = [(i, 10**30 + i) for i in range(5)] + [{"big": -(2**70)}, 7, (1, 2)]
    out = tmp_path / "out"
    flow = of.Flow("jsonl-big")
    flow.source(of.sources.Collection(records)).sink(of.sinks.FileSink(out))
    flow.run()
    text = b"".join((out / n).read_bytes() for n in final_files(out))
    assert b"[0,1000000000000000000000000000000]\n" in text, text
    assert b'{"big":-1180591620717411303424}\n' in text, text
    assert of.sinks.read_committed(out) == [list(r) if isinstance(r, tuple) else r
                                            for r in records]


def test_jsonl_serializer(tmp_path: Path) -> None:
    out = run_into(tmp_path, list(range(300)), "jsonl", serializer=lambda i: f"n={i}")
    text = b"".join((out / n).read_bytes() for n in final_files(out))
    assert text == b"".join(f"n={i}\n".encode() for i in range(300))


def test_csv_rows_without_header(tmp_path: Path) -> None:
    records = [(i, f"a,b \"{i}\"\nline", None, 1.5) for i in range(300)] + [[7, "x", True, 0]]
    out = run_into(tmp_path, records, "csv")
    assert all(n.endswith(".csv") for n in final_files(out))
    with open(out / final_files(out)[0], newline="") as f:
        first = next(csv.reader(f))
    assert first == ["0", 'a,b "0"\nline', "", "1.5"]  # no header; quoted, None empty
    got = of.sinks.read_committed(out, header=False)
    assert got == [[str(i), f"a,b \"{i}\"\nline", "", "1.5"] for i in range(300)] + \
        [["7", "x", "True", "0"]]


def test_csv_dicts_have_a_header(tmp_path: Path) -> None:
    records = [{"id": i, "name": f"n{i}"} for i in range(1000)]
    out = run_into(tmp_path, records, "csv", parallelism=2)
    names = final_files(out)
    assert len(names) >= 2
    for n in names:
        assert (out / n).read_bytes().startswith(b"id,name\r\n")
    got = of.sinks.read_committed(out, header=True)
    assert sorted(got, key=lambda r: int(r["id"])) == \
        [{"id": str(i), "name": f"n{i}"} for i in range(1000)]


def test_csv_single_values_are_one_column_rows(tmp_path: Path) -> None:
    out = run_into(tmp_path, ["a", "b,c", 3], "csv")
    assert of.sinks.read_committed(out, header=False) == [["a"], ["b,c"], ["3"]]


def test_read_committed_asks_how_to_read_csv(tmp_path: Path) -> None:
    out = run_into(tmp_path, [(1, 2)], "csv")
    with pytest.raises(of.ConfigurationError, match="header=True"):
        of.sinks.read_committed(out)


def test_parquet_dicts_rows_and_values(tmp_path: Path) -> None:
    dicts = [{"id": i, "name": f"n{i}", "tags": [i, i + 1], "x": None if i % 3 else 0.5}
             for i in range(2000)]
    out = run_into(tmp_path / "d", dicts, "parquet")
    names = final_files(out)
    assert names and all(n.endswith(".parquet") for n in names)
    table = pq.read_table(out / names[0])  # a real Parquet file, with typed columns
    assert table.column_names == ["id", "name", "tags", "x"]
    assert str(table.schema.field("id").type) == "int64"
    assert of.sinks.read_committed(out) == dicts
    rows = [(i, f"s{i}", i / 2) for i in range(1500)]
    out = run_into(tmp_path / "r", rows, "parquet")
    assert pq.read_table(out / final_files(out)[0]).column_names == ["f0", "f1", "f2"]
    assert of.sinks.read_committed(out) == [list(r) for r in rows]
    out = run_into(tmp_path / "v", list(range(100)), "parquet")
    assert of.sinks.read_committed(out) == list(range(100))


def test_parquet_row_groups_of_a_large_transaction(tmp_path: Path) -> None:
    """More records than a row group in one transaction: several row groups, one file."""
    n = 150_000
    out = tmp_path / "out"
    flow = of.Flow("pq-large")
    flow.source(of.sources.Range(n)).map(lambda i: (i, i % 7)) \
        .sink(of.sinks.FileSink(out, format="parquet"))
    flow.run()
    names = final_files(out)
    assert len(names) == 1
    assert pq.ParquetFile(out / names[0]).num_row_groups >= 2
    assert of.sinks.read_committed(out) == [[i, i % 7] for i in range(n)]


def test_parquet_unifies_types_within_the_first_row_group(tmp_path: Path) -> None:
    """A field that is None in the first batches takes the type of later ones."""
    records = [{"id": i, "maybe": None} for i in range(200)] + \
        [{"id": i, "maybe": i * 2} for i in range(200, 400)]
    out = tmp_path / "out"
    flow = of.Flow("pq-unify", batch_size=64)  # checkpointing off: one file, one row group
    flow.source(of.sources.Collection(records)) \
        .sink(of.sinks.FileSink(out, format="parquet"), name="files")
    flow.run()
    assert len(final_files(out)) == 1
    table = pq.read_table(out / final_files(out)[0])
    assert str(table.schema.field("maybe").type) == "int64"
    assert sorted(of.sinks.read_committed(out), key=lambda r: r["id"]) == records


def test_parquet_new_field_after_the_schema_is_fixed_is_named(tmp_path: Path) -> None:
    """Once a file's first row group is written, a record with a field the file has no
    column for fails (instead of losing the field)."""
    records: list[Any] = [{"id": i} for i in range(PARQUET_ROW_GROUP + 10)]
    records.append({"id": -1, "extra": 5})
    flow = of.Flow("pq-extra", restart_strategy=of.restart.no_restart())  # one file
    flow.source(of.sources.Collection(records)) \
        .sink(of.sinks.FileSink(tmp_path / "out", format="parquet"), name="files")
    with pytest.raises(of.JobFailedError) as info:
        flow.run()
    msg = str(info.value)
    assert "'extra'" in msg and "not among" in msg and "operator 'files'" in msg, msg


def _random_value(rng: random.Random, depth: int) -> Any:
    atoms = [0, 1, -5, 2**40, 1.5, -0.0, float("nan"), True, False, None, "", "a", "],[",
             "},{", "[", "]", "{", "}", '"', "\\", "\n", "\u00e9", ",", "x],[y"]
    r = rng.random()
    if depth > 2 or r < 0.6:
        return rng.choice(atoms)
    if r < 0.8:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if r < 0.9:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3)))
    return {rng.choice(["k", "],[", "{", "z"]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 2))}


def test_json_lines_of_a_whole_batch_equal_the_per_record_encoding() -> None:
    """The batch fast path (one orjson.dumps per batch, cut into lines) either declines or
    gives exactly the bytes of encoding record by record, whatever brackets, quotes and
    nesting the records hold."""
    from onceflow.connectors.files import json_lines_of_batch

    rng = random.Random(SEED)
    opts = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    used = 0
    for _ in range(5000):
        kind = rng.random()
        recs: list[Any] = []
        for _ in range(rng.randint(1, 8)):
            if kind < 0.4:
                recs.append(tuple(_random_value(rng, 1) for _ in range(rng.randint(0, 4))))
            elif kind < 0.8:
                recs.append({rng.choice(["a", "b", "},{", "c"]): _random_value(rng, 1)
                             for _ in range(rng.randint(0, 3))})
            else:
                recs.append(_random_value(rng, 0))
        got = json_lines_of_batch(recs)
        if got is not None:
            used += 1
            assert got == b"".join(orjson.dumps(r, option=opts) for r in recs), recs
    assert used > 500  # the fast path is taken for plenty of the batches
    plain = [(i, i * 2) for i in range(100)]
    assert json_lines_of_batch(plain) == b"".join(orjson.dumps(r, option=opts) for r in plain)


def test_parquet_integer_rows_after_the_first_row_group(tmp_path: Path) -> None:
    """Rows of integers past the first row group take the CSV-text path; batches with a
    None (a null) or an integer beyond int64 do not, and the file still holds exactly the
    records: the null as null, the too-large integer as a failure naming the batch."""
    n = PARQUET_ROW_GROUP * 2 + 100
    records: list[Any] = [(i, -i, i % 3) for i in range(n)]
    records[PARQUET_ROW_GROUP + 5] = (7, None, 7)  # declined by the CSV-text path
    out = tmp_path / "out"
    flow = of.Flow("pq-ints")  # checkpointing off: one file
    flow.source(of.sources.Collection(records)) \
        .sink(of.sinks.FileSink(out, format="parquet"), name="files")
    flow.run()
    names = final_files(out)
    assert len(names) == 1 and pq.ParquetFile(out / names[0]).num_row_groups >= 3
    assert of.sinks.read_committed(out) == [list(r) for r in records]
    records[-1] = (2**63, 0, 0)  # fits no int64 column
    msg = failure(tmp_path / "big", records, "parquet")
    assert "operator 'files'" in msg and "Parquet" in msg and "too large" in msg, msg


# --- the transaction protocol on real files -------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_hidden_until_commit_idempotent_commit_abort_deletes(tmp_path: Path, fmt: str) -> None:
    sink = of.sinks.FileSink(tmp_path, format=fmt)
    sink.validate()
    sink.open(SinkContext("f", "files", 0, 1, 0, 1.0, 60.0))
    txn = sink.begin_transaction()
    assert os.path.basename(txn.tmp).startswith(".") and txn.final.endswith(f".{fmt}")
    sink.write(txn, [{"id": i} for i in range(10)])
    sink.write(txn, [{"id": i} for i in range(10, 20)])
    sink.pre_commit(txn)
    assert os.path.exists(txn.tmp) and not os.path.exists(txn.final)
    assert of.sinks.read_committed(tmp_path, header=True) == []
    sink.commit(txn)
    sink.commit(txn)  # again, as recovery does: success, nothing changes
    assert not os.path.exists(txn.tmp)
    got = of.sinks.read_committed(tmp_path, header=True)
    assert [int(r["id"]) for r in got] == list(range(20))
    doomed = sink.begin_transaction()
    sink.write(doomed, [{"id": 99}])
    sink.pre_commit(doomed)
    sink.abort(doomed)
    assert not os.path.exists(doomed.tmp) and not os.path.exists(doomed.final)
    empty = sink.begin_transaction()  # nothing written: pre-commit and commit are no-ops
    sink.pre_commit(empty)
    sink.commit(empty)
    assert final_files(tmp_path) == [os.path.basename(txn.final)]
    sink.close()


# --- errors ----------------------------------------------------------------------------
def test_bad_settings_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(of.ConfigurationError, match="format 'xml' is not one of"):
        of.sinks.FileSink(tmp_path, format="xml")
    with pytest.raises(of.ConfigurationError, match="serializer= only applies to format='jsonl'"):
        of.sinks.FileSink(tmp_path, format="csv", serializer=str)
    with pytest.raises(of.ConfigurationError, match="serializer must be a function"):
        of.sinks.FileSink(tmp_path, serializer="json")  # type: ignore[arg-type]


def failure(tmp: Path, records: list[Any], fmt: str) -> str:
    with pytest.raises(of.JobFailedError) as info:
        run_into(tmp, records, fmt)
    return str(info.value)


def test_unencodable_json_record_is_named(tmp_path: Path) -> None:
    msg = failure(tmp_path, [1, 2, {3}, 4], "jsonl")
    assert "operator 'files'" in msg and "{3}" in msg and "serializer=" in msg, msg


def test_csv_dicts_with_other_keys_are_named(tmp_path: Path) -> None:
    msg = failure(tmp_path, [{"a": 1, "b": 2}, {"a": 3, "c": 4}], "csv")
    assert "{'a': 3, 'c': 4}" in msg and "header ['a', 'b']" in msg, msg


def test_csv_mixed_kinds_are_named(tmp_path: Path) -> None:
    msg = failure(tmp_path, [(1, 2), {"a": 1}], "csv")
    assert "{'a': 1}" in msg and "one kind" in msg, msg


def test_parquet_type_change_is_named(tmp_path: Path) -> None:
    msg = failure(tmp_path, [(1, "a"), ("not a number", "b")], "parquet")
    assert "Parquet" in msg and "operator 'files'" in msg and "'not a number'" in msg, msg


def test_parquet_without_pyarrow_says_how_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
            "import onceflow as of\n"
            "try:\n"
            f"    of.sinks.FileSink({str(tmp_path)!r}, format='parquet')\n"
            "except of.ConfigurationError as e:\n"
            "    print('ERROR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ERROR" in r.stdout, r.stdout + r.stderr
    assert "pip install 'onceflow[parquet]'" in r.stdout, r.stdout


# --- exactly-once ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_conformance_at_every_crash_point(tmp_path: Path, fmt: str) -> None:
    report = check_sink_exactly_once(
        lambda case: of.sinks.FileSink(tmp_path / case, format=fmt),
        lambda case: of.sinks.read_committed(tmp_path / case, header=True),
        workdir=str(tmp_path), records=12_000, key=lambda r: int(r["id"]))
    assert len(report.cases) >= 6
    assert all(c.fired for c in report.cases), str(report)
    assert all(c.restarts >= 1 for c in report.cases), str(report)
    assert report.ok, str(report)


class GenJob(JobProcess):
    def __init__(self, tmp: Path, *extra: str) -> None:
        super().__init__(tmp)
        self.out, self.ckpt = tmp / "out", tmp / "ckpt"
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [JOB, "--out", str(self.out), "--ckpt", str(self.ckpt), *self.extra]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_worker_kills_leave_output_exact(tmp_path: Path, fmt: str) -> None:
    count = 30_000
    job = GenJob(tmp_path, "--format", fmt, "--count", str(count), "--rate", "6000")
    job.start()
    delivered = kill_randomly(job, random.Random(f"{SEED}-filesink-{fmt}"), kills=2,
                              pause=(0.6, 1.2))
    code, result = job.wait()
    assert code == 0, job.tail()
    assert result is not None and delivered >= 1 and result["restarts"] >= 1, result
    got = of.sinks.read_committed(job.out, header=True)
    if fmt == "csv":
        got = [{"i": int(r["i"]), "sq": int(r["sq"]), "tag": r["tag"]} for r in got]
    assert sorted(got, key=lambda r: r["i"]) == [datagenjob.record(i) for i in range(count)]
    hidden = [p.name for p in job.out.iterdir() if p.name.startswith(".")]
    assert not hidden, f"uncommitted transaction files left behind: {hidden}"


def test_csv_rows_of_integers_from_one_dumps_equal_the_csv_module() -> None:
    """The CSV fast path for integer rows declines or writes exactly what csv.writer
    writes, whatever else the rows hold."""
    import io

    from onceflow.connectors.files import csv_rows_of_int_batch

    rng = random.Random(SEED)
    odd = [0, -7, 2**40, 2**70, True, False, None, 1.5, 1e16, "a", "x,y", "1", float("nan"),
           [1], (2, 3), {"a": 1}]
    used = 0
    for _ in range(5000):
        recs: list[Any] = []
        for _ in range(rng.randint(1, 6)):
            row = [rng.choice(odd) if rng.random() < 0.3 else rng.randint(-10**6, 10**6)
                   for _ in range(rng.randint(0, 4))]
            recs.append(tuple(row) if rng.random() < 0.5 else row)
        got = csv_rows_of_int_batch(recs)
        if got is not None:
            used += 1
            want = io.StringIO()
            csv.writer(want).writerows(recs)
            assert got == want.getvalue().encode(), recs
    assert used > 500
