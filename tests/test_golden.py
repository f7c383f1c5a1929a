"""Golden checkpoints and savepoints, written by an earlier onceflow (see
``tests/golden/make_golden.py``), must keep restoring: each is copied back to where it was
written, restored, run to the end, and the committed output must be exactly the output of a
run that never stopped. The checkpoint cases also hold a pre-committed FileSink transaction
(restore commits it) and in-progress files of a later one (restore aborts them)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import make_golden

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("case", sorted(make_golden.CASES))
def test_golden_restores_and_continues_exactly(case: str) -> None:
    src = GOLDEN / case
    info = json.loads((src / "golden.json").read_text())
    work = Path(make_golden.WORK) / case
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    out = str(work / "out")
    before = make_golden.committed(out)
    want = make_golden.expected()
    assert sum(before.values()) == info["committed_before"]
    assert before and not before - want and before != want  # a true mid-run state
    restore = str(work / info["restore"])
    result = make_golden.build(case).run(restore=restore)
    assert result.restored_from == restore
    got = make_golden.committed(out)
    assert got == want, f"{sum((got - want).values())} extra, {sum((want - got).values())} lost"
    assert not [n for n in os.listdir(out) if n.endswith(".inprogress")]
    shutil.rmtree(work, ignore_errors=True)
