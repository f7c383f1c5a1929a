"""Checkpoint metadata: one versioned format, read through one decoder, with a migration
from format 1 (what onceflow 0.1 wrote: tests/golden/) and a clear refusal of newer ones."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import onceflow as of
from onceflow.checkpoint import metadata as md
from onceflow.checkpoint.storage import METADATA, read_metadata

GOLDEN = Path(__file__).parent / "golden"


def _meta() -> md.CheckpointMetadata:
    now = time.time()
    return md.CheckpointMetadata(
        flow="f", checkpoint_id=7, kind=md.KIND_SAVEPOINT, final=True, trigger_time=now - 1,
        completion_time=now, max_parallelism=32,
        operators={"count": md.OperatorEntry("count", "count", 2, "reduce", True,
                                             (md.SubtaskFile(0, "count-0.state"),
                                              md.SubtaskFile(1, "count-1.state")))},
        files={"count-0.state": md.StateFile(10, 1), "count-1.state": md.StateFile(12, 2)},
        extra_files={"../shared/count-0/a.sst": {"size": 5}},
        shared=("shared/count-0/a.sst",), size=27, incremental_size=9,
        metrics={"count#0": {"count": [3, 3]}})


def test_round_trip_is_exact() -> None:
    meta = _meta()
    assert md.decode(md.encode(meta), "here") == meta


def test_every_field_is_required_in_the_current_format() -> None:
    body = md.to_body(_meta())
    for name in body:
        if name == "format":
            continue
        broken = {k: v for k, v in body.items() if k != name}
        with pytest.raises(of.CorruptCheckpointError, match=name):
            md.from_body(broken, "here")


def test_format_1_is_migrated_with_what_missing_fields_meant() -> None:
    v1 = {"format": 1, "flow": "f", "checkpoint_id": 3, "max_parallelism": 8,
          "trigger_time": 1.0, "completion_time": 2.0,
          "operators": {"m": {"task": "m", "parallelism": 1,
                              "files": [{"subtask": 0, "file": "m-0.state"}]}},
          "files": {"m-0.state": {"size": 4, "crc32": 9}}}
    meta = md.from_body(v1, "old")
    assert meta.format == md.FORMAT
    assert meta.kind == md.KIND_CHECKPOINT and not meta.final
    assert meta.operators["m"].stateful and meta.operators["m"].kind is None
    assert meta.size == 4 and meta.incremental_size == 4
    assert meta.shared == () and meta.extra_files == {} and meta.metrics == {}


def test_a_newer_format_is_refused_naming_its_version() -> None:
    body = {**md.to_body(_meta()), "format": md.FORMAT + 1}
    with pytest.raises(of.IncompatibleStateError, match=f"format {md.FORMAT + 1}"):
        md.from_body(body, "chk-9")


def test_an_unknown_old_format_is_corrupt() -> None:
    with pytest.raises(of.CorruptCheckpointError, match="unknown metadata format 0"):
        md.from_body({**md.to_body(_meta()), "format": 0}, "chk-9")


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
def test_golden_metadata_is_format_1_and_decodes(case: str) -> None:
    info = json.loads((GOLDEN / case / "golden.json").read_text())
    path = GOLDEN / case / info["restore"]
    assert json.loads((path / METADATA).read_text())["body"]["format"] == 1
    meta = read_metadata(str(path))
    assert meta.format == md.FORMAT
    assert meta.kind == ("savepoint" if "savepoint" in case else "checkpoint")
    assert {"count", "tally", "numbers"} <= set(meta.operators)
    assert all(f.file in meta.files for e in meta.operators.values() for f in e.files)
