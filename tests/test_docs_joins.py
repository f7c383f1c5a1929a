"""Every Python block of docs/joins.md runs as written (each in a fresh namespace); a block
that only shows a signature (it refers to names it does not define) is marked by starting
with a bare expression over ``left``/``a``, and is skipped by name below."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "joins.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if b.startswith("import")]


def test_the_page_has_runnable_blocks() -> None:
    assert len(RUNNABLE) >= 6
    shown = [b for b in BLOCKS if not b.startswith("import")]
    assert all(b.lstrip().startswith(("left.", "a.")) for b in shown), shown


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_docs_block_runs(block: str) -> None:
    exec(compile(block, str(DOC), "exec"), {"__name__": "docs_joins"})
