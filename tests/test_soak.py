"""Long chaos run (``make soak``; deselected from ``make test``): random shapes, random
parallelism, random numbers of worker and driver kills at random moments, for
``ONCEFLOW_SOAK_MINUTES`` (default 10). Every job's committed output must be exact."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from test_exactly_once import Job, _assert_no_orphans, _kill_randomly

MINUTES = float(os.environ.get("ONCEFLOW_SOAK_MINUTES", "10"))
SHAPES = ["keyed_count", "union_flatmap", "two_keyed", "text_wordcount", "mixed_parallelism"]


@pytest.mark.soak
@pytest.mark.timeout(MINUTES * 60 + 600)  # the run itself, plus the last job
def test_chaos_soak(tmp_path: Path) -> None:
    minutes = MINUTES
    seed = int(os.environ.get("ONCEFLOW_TEST_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    deadline = time.monotonic() + minutes * 60
    runs = 0
    while time.monotonic() < deadline:
        runs += 1
        shape = rng.choice(SHAPES)
        par = rng.choice([1, 2, 3])
        interval = rng.choice(["0.1", "0.3", "0.5"])
        backend = rng.choice(["memory", "rocksdb"])
        state = ["--backend", backend] + (["--incremental"] if rng.random() < 0.6 else [])
        job = Job(tmp_path / f"run{runs}", shape, "--parallelism", str(par), "--rate",
                  str(rng.choice([4000, 8000, 20000])), "--interval", interval, *state,
                  records=rng.choice([20_000, 60_000]))
        (tmp_path / f"run{runs}").mkdir()
        note = f"seed={seed} run={runs} shape={shape} p={par} interval={interval} {state}"
        for _ in range(rng.randrange(3)):  # driver kills, each followed by restore
            if rng.random() < 0.5:  # restore at another parallelism (rescaling)
                par = rng.choice([1, 2, 3])
            proc = job.start("--restore", "latest", "--parallelism", str(par))
            time.sleep(rng.uniform(0.2, 2.0))
            pids = [w.pid for w in job.workers()]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _assert_no_orphans(pids)
        job.start("--restore", "latest", "--parallelism", str(rng.choice([1, 2, 3])))
        _kill_randomly(job, rng, kills=rng.randrange(5))
        code, _ = job.wait(timeout=300)
        assert code == 0, f"{note}: {job.log.read_text()[-3000:]}"
        try:
            job.check_exact()
        except AssertionError as e:
            raise AssertionError(f"{note}: {e}") from None
    assert runs > 0
