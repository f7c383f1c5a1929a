"""Sources: splits cover the input exactly once; readers resume exactly at a position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.connectors import sources as sources_mod
from onceflow.sources import Collection, Range, Source, TextFiles


def read_all(source: Source, split: Any, position: Any = None, max_records: int = 3) -> list[Any]:
    if position is None:
        position = source.initial_position(split)
    reader = source.reader(split, position)
    out: list[Any] = []
    try:
        while (batch := reader.read_batch(max_records)) is not None:
            out.extend(batch)
    finally:
        reader.close()
    return out


def read_with_resume(source: Source, split: Any, first: int, max_records: int = 2) -> list[Any]:
    """Read ``first`` batches, take the position, continue with a new reader there."""
    reader = source.reader(split, source.initial_position(split))
    out: list[Any] = []
    for _ in range(first):
        batch = reader.read_batch(max_records)
        if batch is None:
            break
        out.extend(batch)
    pos = reader.position()
    reader.close()
    return out + read_all(source, split, pos, max_records)


def everything(source: Source, parallelism: int) -> list[Any]:
    return [r for s in source.splits(parallelism) for r in read_all(source, s)]


# --- Range and Collection -----------------------------------------------------------------
RANGES = [Range(10), Range(0), Range(3, 17), Range(5, 20, 3), Range(10, 0, -2), Range(-4, 4),
          Range(7, 3)]


@pytest.mark.parametrize("p", range(1, 6))
@pytest.mark.parametrize("source", RANGES, ids=lambda r: f"Range({r.start},{r.stop},{r.step})")
def test_range_splits_cover_the_range_exactly_once(source: Range, p: int) -> None:
    source.validate()
    splits = source.splits(p)
    assert len(splits) == p
    assert everything(source, p) == list(range(source.start, source.stop, source.step))


@pytest.mark.parametrize("p", range(1, 6))
@pytest.mark.parametrize("items", [[], ["a"], list("abcdefg"), [{"k": i} for i in range(11)]],
                         ids=["empty", "one", "seven", "dicts"])
def test_collection_splits_cover_the_items_exactly_once(items: list[Any], p: int) -> None:
    source = Collection(items)
    assert everything(source, p) == items


@pytest.mark.parametrize("first", range(0, 8))
@pytest.mark.parametrize("source", [Range(3, 17), Range(5, 40, 3), Collection(list("abcdefghij"))],
                         ids=["range", "stepped", "collection"])
def test_readers_resume_exactly_at_their_position(source: Source, first: int) -> None:
    for p in (1, 2, 3):
        for split in source.splits(p):
            assert read_with_resume(source, split, first) == read_all(source, split)


def test_range_position_is_picklable_and_plain() -> None:
    import pickle

    source = Range(100)
    split = source.splits(2)[1]
    reader = source.reader(split, source.initial_position(split))
    reader.read_batch(5)
    pos = reader.position()
    assert pickle.loads(pickle.dumps(pos)) == pos
    assert pickle.loads(pickle.dumps(split)) == split


def test_range_rejects_bad_arguments() -> None:
    with pytest.raises(of.ConfigurationError, match="step"):
        Range(0, 10, 0).validate()
    with pytest.raises(of.ConfigurationError, match="integers"):
        Range(0, 2.5).validate()  # type: ignore[arg-type]


# --- TextFiles ----------------------------------------------------------------------------
def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture(params=[1, 3, 1 << 20], ids=["chunk1", "chunk3", "chunk1M"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run TextFiles tests with tiny read chunks too, so lines straddle chunk boundaries."""
    monkeypatch.setattr(sources_mod._TextReader, "_CHUNK", request.param)
    return int(request.param)


@pytest.mark.parametrize(("data", "lines"), [
    (b"a\nbb\nccc\n", ["a", "bb", "ccc"]),
    (b"a\nbb\nccc", ["a", "bb", "ccc"]),
    (b"a\r\nbb\r\nccc\r\n", ["a", "bb", "ccc"]),
    (b"a\r\nbb\r\nccc", ["a", "bb", "ccc"]),
    (b"\n\nx\n\n", ["", "", "x", ""]),
    (b"", []),
    (b"\n", [""]),
    ("grüße\n☃\n".encode(), ["grüße", "☃"]),
], ids=["lf", "no-final-newline", "crlf", "crlf-no-final", "empty-lines", "empty-file",
        "one-newline", "utf8"])
def test_text_lines_without_endings(tmp_path: Path, chunk: int, data: bytes,
                                    lines: list[str]) -> None:
    src = TextFiles(write(tmp_path / "f.txt", data))
    for max_records in (1, 2, 100):
        assert [r for s in src.splits(1) for r in read_all(src, s, max_records=max_records)] \
            == lines


@pytest.mark.parametrize("data", [b"one\ntwo\r\nthree\n\nfive\nsix", b"l1\nl2\nl3\nl4\n"],
                         ids=["mixed-no-final", "lf"])
def test_text_reader_resumes_exactly_after_any_batch(tmp_path: Path, chunk: int,
                                                     data: bytes) -> None:
    src = TextFiles(write(tmp_path / "f.txt", data))
    (split,) = src.splits(1)
    full = read_all(src, split)
    for first in range(0, len(full) + 2):
        for max_records in (1, 2, 3):
            assert read_with_resume(src, split, first, max_records) == full


def test_text_position_after_the_last_line_is_the_end_of_the_file(tmp_path: Path,
                                                                    chunk: int) -> None:
    for data in (b"a\nb", b"a\nb\n", b"a\r\nb\r\n"):
        src = TextFiles(write(tmp_path / "f.txt", data))
        (split,) = src.splits(1)
        reader = src.reader(split, 0)
        while reader.read_batch(10) is not None:
            pass
        assert reader.position() == len(data)
        reader.close()


def test_text_resume_from_a_byte_offset_gives_the_remaining_lines(tmp_path: Path,
                                                                  chunk: int) -> None:
    data = b"alpha\r\nbeta\ngamma\ndelta"
    src = TextFiles(write(tmp_path / "f.txt", data))
    (split,) = src.splits(1)
    for line, offset in (("beta", data.index(b"beta")), ("gamma", data.index(b"gamma")),
                         ("delta", data.index(b"delta"))):
        all_lines = ["alpha", "beta", "gamma", "delta"]
        assert read_all(src, split, offset) == all_lines[all_lines.index(line):]
    assert read_all(src, split, len(data)) == []


@pytest.mark.parametrize(("data", "bad_offset"), [
    (b"\xff\xfe\n", 0),
    (b"ok\n\xffbad\nnext\n", 3),
    (b"ok\r\nfine\n\xc3\x28\n", 9),
    (b"aaa\nbbb\nccc\nd\xe2\x82", 12),
], ids=["first-line", "second-line", "after-crlf", "truncated-last-line"])
def test_invalid_utf8_names_file_and_byte_offset(tmp_path: Path, chunk: int, data: bytes,
                                                 bad_offset: int) -> None:
    path = write(tmp_path / "bad.txt", data)
    src = TextFiles(path)
    (split,) = src.splits(1)
    for max_records in (1, 100):
        with pytest.raises(of.RecordFormatError) as exc:
            read_all(src, split, max_records=max_records)
        msg = str(exc.value)
        assert path in msg
        assert f"byte offset {bad_offset}" in msg


def test_invalid_utf8_offset_is_absolute_after_resume(tmp_path: Path) -> None:
    data = b"first\nsecond\n\xff\n"
    path = write(tmp_path / "bad.txt", data)
    src = TextFiles(path)
    (split,) = src.splits(1)
    bad = data.index(b"\xff")
    with pytest.raises(of.RecordFormatError, match=f"byte offset {bad}"):
        read_all(src, split, data.index(b"second"))


def test_other_encodings_are_honoured(tmp_path: Path) -> None:
    src = TextFiles(write(tmp_path / "latin1.txt", "grüße\nçà\n".encode("latin-1")),
                    encoding="latin-1")
    assert read_all(src, src.splits(1)[0]) == ["grüße", "çà"]


def test_globs_and_lists_expand_to_sorted_files(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.log"):
        write(tmp_path / name, name.encode() + b"\n")
    src = TextFiles(str(tmp_path / "*.txt"))
    src.validate()
    assert src.splits(3) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    both = TextFiles([tmp_path / "c.log", str(tmp_path / "a*.txt")])
    assert both.splits(1) == [str(tmp_path / "c.log"), str(tmp_path / "a.txt")]


def _text_flow(name: str, source: Source, out: Path, parallelism: int = 1) -> of.Flow:
    flow = of.Flow(name, parallelism=parallelism, restart_strategy=of.restart.no_restart())
    flow.source(source, name="lines").sink(of.sinks.FileSink(out), name="out")
    return flow


def test_missing_file_fails_at_run_with_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    flow = _text_flow("missing-file", TextFiles(missing), tmp_path / "out")
    with pytest.raises(of.ConfigurationError, match=str(missing)):
        flow.run()


def test_empty_glob_fails_at_run_with_configuration_error(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.csv")
    flow = _text_flow("empty-glob", TextFiles(pattern), tmp_path / "out")
    with pytest.raises(of.ConfigurationError, match="no file matches"):
        flow.run()


def test_directory_instead_of_file_fails_at_run(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    flow = _text_flow("dir-source", TextFiles(tmp_path / "d"), tmp_path / "out")
    with pytest.raises(of.ConfigurationError, match="not a file"):
        flow.run()


# --- end to end ---------------------------------------------------------------------------
def test_text_files_flow_reads_every_line_of_every_file_once(tmp_path: Path) -> None:
    expected = []
    for f in range(3):
        lines = [f"file{f}-line{i}" for i in range(7 + f)]
        expected += lines
        write(tmp_path / f"in-{f}.txt", ("\n".join(lines)).encode())  # no final newline
    flow = _text_flow("text-e2e", TextFiles(str(tmp_path / "in-*.txt")), tmp_path / "out",
                      parallelism=2)
    result = flow.run()
    got = of.sinks.read_committed(tmp_path / "out")
    assert sorted(got) == sorted(expected)
    assert result.records_out("lines") == len(expected)


def test_bad_input_fails_the_job_naming_file_and_offset(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.txt", b"ok\n\xff\n")
    flow = _text_flow("text-bad", TextFiles(path), tmp_path / "out")
    with pytest.raises(of.JobFailedError) as exc:
        flow.run()
    assert path in str(exc.value)
    assert "byte offset 3" in str(exc.value)
    assert of.sinks.read_committed(tmp_path / "out") == [], "nothing may be committed"
