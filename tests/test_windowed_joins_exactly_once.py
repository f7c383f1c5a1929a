"""Windowed Nexmark queries (q5 sliding windows, q7 tumbling windows in two steps, q8 a
window join) from the generator into FileSink under random worker SIGKILLs: the committed
output equals DuckDB's over the same events, every row once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from jobproc import kill_randomly
from test_joins_exactly_once import SEED, JoinJob


@pytest.mark.parametrize(("shape", "backend"), [("nexmark-q5", "memory"),
                                                ("nexmark-q7", "rocksdb"),
                                                ("nexmark-q8", "memory")])
def test_random_worker_kills_leave_windowed_query_output_exact(tmp_path: Path, shape: str,
                                                               backend: str) -> None:
    rng = random.Random(f"{SEED}-{shape}-{backend}")
    job = JoinJob(tmp_path, shape, "--backend", backend, "--rate", "3000")
    job.start()
    delivered = kill_randomly(job, rng, kills=2)
    code, result = job.wait(timeout=180)
    assert code == 0, job.tail(3000)
    assert result is not None and delivered >= 1 and result["restarts"] >= 1
    job.check()
