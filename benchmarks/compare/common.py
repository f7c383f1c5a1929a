"""Helpers shared by the per-peer programs (stdlib only: every peer's venv imports it)."""

from __future__ import annotations

import json
import resource
import sys


def expected_last_sum_total(n: int) -> int:
    """2 * sum(i % 100 for i < n), without looping over n (W1's check)."""
    full, rest = divmod(n, 100)
    return 2 * (full * 4950 + rest * (rest - 1) // 2)


def w1_record(i: int) -> tuple[int, int]:
    """W1's record i = (key, value)."""
    return (i * 7919 % 10000, i % 100)


def w1_problems(n: int, emitted: int, last_sum: int) -> list[str]:
    problems = []
    if emitted != n:
        problems.append(f"emitted {emitted} != {n}")
    if last_sum != expected_last_sum_total(n):
        problems.append(f"last-sum total {last_sum} != {expected_last_sum_total(n)}")
    return problems


def maxrss_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict) -> None:
    """The one JSON line a peer program prints for run.py (last line of stdout)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def python_mode(conf, mode: str) -> None:
    """Set PyFlink's python.execution-mode on a pyflink Configuration. In "thread" mode
    the Python functions run in an interpreter embedded in the JVM (pemja); that
    interpreter starts from the base Python installation, not from the venv this program
    runs in (it finds neither pemja nor pyflink and fails with "No module named
    'pemja'"), so the venv's site-packages go on its path via python.pythonpath."""
    conf.set_string("python.execution-mode", mode)
    if mode == "thread":
        import site
        conf.set_string("python.pythonpath", ":".join(site.getsitepackages()))
