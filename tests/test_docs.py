"""Every ```python block in README.md and docs/*.md runs, as a user would paste it.

The blocks of one page run in order in one fresh interpreter (a later block may use what an
earlier one defined), in a temporary working directory. A block that is not meant to run
(a fragment, or one that needs a server at an address of the user's) is preceded by a line
``<!-- not run: <reason> -->``; the reason is required, so skipping is a visible decision.
The blocks run in the interpreter's real ``__main__`` (classes they define pickle as they
do in a user's script), and a block whose first line is ``# name.py`` is also saved as
that file in the working directory, so a later block can import it as the page says.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)
SKIP = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->\s*$")


def blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        if before and SKIP.search(before[-1]):
            continue
        line = text.count("\n", 0, m.start()) + 2
        out.append((line, m.group(1)))
    return out


RUNNABLE = [p for p in PAGES if blocks(p)]


def test_every_skip_marker_gives_a_reason() -> None:
    for page in PAGES:
        for ln in page.read_text().splitlines():
            if "not run" in ln and ln.strip().startswith("<!--"):
                assert SKIP.search(ln), f"{page.name}: a skip marker needs a reason: {ln!r}"


@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_page_code_blocks_run(page: Path, tmp_path: Path) -> None:
    parts = []
    for line, code in blocks(page):
        code = textwrap.dedent(code)
        first = code.splitlines()[0] if code else ""
        if re.fullmatch(r"# [\w.]+\.py", first):
            (tmp_path / first[2:]).write_text(code)
        parts.append(f"# --- {page.name} line {line}\n"
                     f"exec(compile({code!r}, "
                     f"{f'{page.name}:{line}'!r}, 'exec'), ns)\n")
    script = "ns = globals()\n" + "".join(parts)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{page.name}:\n{proc.stderr[-4000:]}"


def test_index_links_every_page() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if p.name != "index.md" and f"]({p.name}" not in index]
    assert not missing, f"docs/index.md does not link {missing}"
