"""Checkpoint storage: complete checkpoints round-trip, damaged ones are detected and skipped."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

import onceflow as of
from onceflow.checkpoint.metadata import CheckpointMetadata, StateFile
from onceflow.checkpoint.storage import (
    METADATA,
    STATE_MAGIC,
    CheckpointStorage,
    encode_state,
    load_checkpoint,
    resolve_restore_path,
)

FLOW = "storage test/flow"


def make_checkpoint(storage: CheckpointStorage, cid: int, states: dict[str, Any]) -> str:
    """Write state files the way workers do and complete the checkpoint with metadata."""
    d = storage.path(cid)
    os.makedirs(d, exist_ok=True)
    files = {}
    for name, obj in states.items():
        data = encode_state(pickle.dumps(obj, protocol=5), {})
        Path(d, name).write_bytes(data)
        files[name] = StateFile(len(data), zlib.crc32(data))
    # times with short decimal forms: a flipped last digit of a 17-digit float may parse
    # to the same double, which no checksum over the parsed body can (or needs to) see
    return storage.write_metadata(CheckpointMetadata(
        flow=FLOW, checkpoint_id=cid, kind="checkpoint", final=False, trigger_time=1.0e9,
        completion_time=1.0e9 + 0.5, max_parallelism=128, operators={}, files=files))


def flip_byte(path: str | Path, pos: int, mask: int = 0x01) -> None:
    data = bytearray(Path(path).read_bytes())
    data[pos] ^= mask
    Path(path).write_bytes(bytes(data))


@pytest.fixture
def storage(tmp_path: Path) -> CheckpointStorage:
    st = CheckpointStorage(str(tmp_path / "chk"), FLOW)
    st.prepare()
    return st


STATES = {"map-0.state": {"ops": {"m": [1, 2, 3]}}, "sink-0.state": {"ops": {"s": "x" * 50}}}


def test_metadata_and_state_round_trip(storage: CheckpointStorage) -> None:
    path = make_checkpoint(storage, 4, STATES)
    assert path == storage.path(4)
    ckpt = load_checkpoint(path)
    assert ckpt.id == 4
    assert ckpt.path == path
    assert ckpt.meta.flow == FLOW
    assert ckpt.meta.max_parallelism == 128
    for name, obj in STATES.items():
        assert ckpt.read_state(name) == {**obj, "inflight": {}}  # no in-flight data
    assert not os.path.exists(os.path.join(path, METADATA + ".tmp"))


def test_flow_name_becomes_one_directory_under_the_root(storage: CheckpointStorage) -> None:
    assert os.path.dirname(storage.dir) == storage.root
    assert os.path.isdir(storage.dir)


def test_every_flipped_byte_in_a_state_file_is_detected(storage: CheckpointStorage) -> None:
    path = make_checkpoint(storage, 1, STATES)
    state = os.path.join(path, "map-0.state")
    size = os.path.getsize(state)
    for pos in range(size):
        flip_byte(state, pos)
        with pytest.raises(of.CorruptCheckpointError) as exc:
            load_checkpoint(path)
        assert path in str(exc.value)
        assert "map-0.state" in str(exc.value)
        assert exc.value.path == path
        flip_byte(state, pos)  # restore
    assert load_checkpoint(path).read_state("map-0.state") == \
        {**STATES["map-0.state"], "inflight": {}}


def test_every_flipped_byte_in_metadata_is_detected(storage: CheckpointStorage) -> None:
    path = make_checkpoint(storage, 1, STATES)
    meta = os.path.join(path, METADATA)
    for pos in range(os.path.getsize(meta)):
        flip_byte(meta, pos)
        with pytest.raises(of.CorruptCheckpointError) as exc:
            load_checkpoint(path)
        assert path in str(exc.value), f"byte {pos}"
        flip_byte(meta, pos)
    assert load_checkpoint(path).id == 1


@pytest.mark.parametrize("damage", ["truncate-state", "delete-state", "delete-metadata",
                                    "empty-metadata", "extra-bytes"])
def test_damaged_checkpoints_are_corrupt(storage: CheckpointStorage, damage: str) -> None:
    path = make_checkpoint(storage, 1, STATES)
    state = Path(path, "sink-0.state")
    meta = Path(path, METADATA)
    if damage == "truncate-state":
        state.write_bytes(state.read_bytes()[:-1])
    elif damage == "delete-state":
        state.unlink()
    elif damage == "delete-metadata":
        meta.unlink()
    elif damage == "empty-metadata":
        meta.write_bytes(b"")
    else:
        state.write_bytes(state.read_bytes() + b"\x00")
    with pytest.raises(of.CorruptCheckpointError, match=path):
        load_checkpoint(path)


def test_latest_valid_is_the_newest_complete_checkpoint(storage: CheckpointStorage) -> None:
    for cid in (1, 2, 3):
        make_checkpoint(storage, cid, STATES)
    os.makedirs(storage.path(4))  # in progress: no metadata yet
    latest = storage.latest_valid()
    assert latest is not None and latest.id == 3


def test_latest_valid_falls_back_to_the_previous_checkpoint_and_warns(
        storage: CheckpointStorage, caplog: pytest.LogCaptureFixture) -> None:
    for cid in (1, 2, 3):
        make_checkpoint(storage, cid, STATES)
    flip_byte(os.path.join(storage.path(3), "map-0.state"), 20)
    with caplog.at_level(logging.WARNING, logger="onceflow.checkpoint"):
        latest = storage.latest_valid()
    assert latest is not None and latest.id == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert storage.path(3) in warnings[0].getMessage()
    assert "falling back" in warnings[0].getMessage()


def test_latest_valid_is_none_when_every_checkpoint_is_corrupt(
        storage: CheckpointStorage, caplog: pytest.LogCaptureFixture) -> None:
    assert storage.latest_valid() is None
    for cid in (1, 2):
        make_checkpoint(storage, cid, STATES)
        flip_byte(os.path.join(storage.path(cid), METADATA), 30)
    with caplog.at_level(logging.WARNING, logger="onceflow.checkpoint"):
        assert storage.latest_valid() is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_discard_incomplete_removes_only_directories_without_metadata(
        storage: CheckpointStorage) -> None:
    make_checkpoint(storage, 1, STATES)
    make_checkpoint(storage, 3, STATES)
    os.makedirs(storage.path(2))
    Path(storage.path(2), "map-0.state").write_bytes(STATE_MAGIC + b"partial")
    os.makedirs(storage.path(5))
    Path(storage.path(3), METADATA + ".tmp").write_bytes(b"{}")  # leftover of a later write
    os.makedirs(os.path.join(storage.dir, "savepoint-x"))
    storage.discard_incomplete()
    assert storage.ids() == [1, 3]
    assert storage.complete_ids() == [1, 3]
    assert os.path.isdir(os.path.join(storage.dir, "savepoint-x"))
    assert load_checkpoint(storage.path(3)).id == 3


def test_next_id_continues_after_existing_ids(storage: CheckpointStorage) -> None:
    assert storage.next_id() == 1
    make_checkpoint(storage, 1, STATES)
    assert storage.next_id() == 2
    make_checkpoint(storage, 9, STATES)
    assert storage.next_id() == 10
    os.makedirs(storage.path(12))  # an incomplete one still uses its id
    assert storage.next_id() == 13
    assert CheckpointStorage(storage.root, FLOW).next_id() == 13  # a new process sees the same


def test_prepare_fails_for_a_path_below_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(of.ConfigurationError, match="storage"):
        CheckpointStorage(str(blocker / "chk"), FLOW).prepare()


def test_restore_path_may_name_checkpoint_flow_directory_or_root(
        storage: CheckpointStorage) -> None:
    make_checkpoint(storage, 1, STATES)
    make_checkpoint(storage, 2, STATES)
    for where in (storage.path(1), storage.dir, storage.root):
        expected = 1 if where == storage.path(1) else 2
        assert resolve_restore_path(where, FLOW).id == expected


def test_restore_path_without_any_valid_checkpoint(storage: CheckpointStorage,
                                                   tmp_path: Path) -> None:
    with pytest.raises(of.NoCheckpointError, match="no complete checkpoint"):
        resolve_restore_path(storage.root, FLOW)
    with pytest.raises(of.NoCheckpointError, match="does not exist"):
        resolve_restore_path(str(tmp_path / "missing"), FLOW)
    make_checkpoint(storage, 1, STATES)
    flip_byte(os.path.join(storage.path(1), "map-0.state"), 3)
    with pytest.raises(of.NoCheckpointError, match="corrupt"):
        resolve_restore_path(storage.dir, FLOW)


# --- end to end ---------------------------------------------------------------------------
N = 60


def slow_flow(chk: Path, out: Path) -> of.Flow:
    flow = of.Flow("corrupt-latest", parallelism=1, batch_size=1,
                   restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.05, chk, retained=3)

    def slow_square(x: int) -> int:
        time.sleep(0.01)
        return x * x

    (flow.source(of.sources.Range(N), name="numbers")
         .map(slow_square, name="square")
         .sink(of.sinks.FileSink(out), name="out"))
    return flow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """One checkpointed run; tests restore from copies of its checkpoint storage."""
    base = tmp_path_factory.mktemp("finished")
    result = slow_flow(base / "chk", base / "out").run()
    assert sorted(of.sinks.read_committed(base / "out")) == [x * x for x in range(N)]
    kept = CheckpointStorage(str(base / "chk"), "corrupt-latest").complete_ids()
    assert len(kept) == 3, f"retained=3, got {kept}"
    assert kept[-1] == result.completed_checkpoints[-1].id
    assert result.completed_checkpoints[-1].final
    return base / "chk", kept


def corrupt_state_file(checkpoint_dir: str) -> None:
    state = os.path.join(checkpoint_dir,
                         min(n for n in os.listdir(checkpoint_dir) if n.endswith(".state")))
    flip_byte(state, os.path.getsize(state) // 2)


def records_covered(checkpoint_dir: str) -> int:
    """How many records the sink had received when this checkpoint was taken."""
    meta = load_checkpoint(checkpoint_dir).meta
    return sum(m["out"][0] for m in meta.metrics.values() if "out" in m)


@pytest.mark.parametrize("corrupted", [1, 2], ids=["newest", "two-newest"])
def test_restore_latest_skips_corrupt_checkpoints(
        finished_run: tuple[Path, list[int]], corrupted: int, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    original, kept = finished_run
    chk = tmp_path / "chk"
    shutil.copytree(original, chk)
    storage = CheckpointStorage(str(chk), "corrupt-latest")
    bad = [storage.path(cid) for cid in kept[-corrupted:]]
    for d in bad:
        corrupt_state_file(d)
    expected_restore = storage.path(kept[-corrupted - 1])
    covered = records_covered(expected_restore)  # read now: retention may delete it later

    with caplog.at_level(logging.WARNING, logger="onceflow.checkpoint"):
        result = slow_flow(chk, tmp_path / "out").run(restore="latest")

    assert result.restored_from == expected_restore
    for d in bad:
        assert any(d in r.getMessage() and "falling back" in r.getMessage()
                   for r in caplog.records), f"no warning about skipping {d}"
    # The run continues exactly after the restored checkpoint ...
    got = sorted(of.sinks.read_committed(tmp_path / "out"))
    assert got == [x * x for x in range(covered, N)]
    # ... and its counts include what that checkpoint had counted: exactly N in total.
    assert result.records_in("out") == N
    assert result.records_out("numbers") == N
