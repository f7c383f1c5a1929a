"""DataGen: values and order, the split of indices over subtasks, count, rate, errors, and
replay by index after a real SIGKILL of a worker."""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import datagenjob
import orjson
import pytest
from jobproc import JobProcess, kill_randomly

import onceflow as of
from onceflow.connectors.datagen import _GenSplit

JOB = str(Path(__file__).with_name("datagenjob.py"))
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261127"))


def by_subtask(out: Path) -> dict[int, list[Any]]:
    """Committed records per sink subtask, in file order (files are named
    part-<subtask>-<seq>-...), so the order within a subtask is visible."""
    got: dict[int, list[Any]] = {}
    for name in sorted(os.listdir(out)):
        if name.startswith("."):
            continue
        m = re.match(r"part-(\d+)-", name)
        assert m, name
        with open(out / name, "rb") as f:
            got.setdefault(int(m.group(1)), []).extend(orjson.loads(ln) for ln in f)
    return got


def run_gen(tmp: Path, source: of.sources.DataGen, parallelism: int = 1,
            checkpoints: bool = True) -> tuple[Path, of.JobResult]:
    out = tmp / "out"
    flow = of.Flow("datagen", parallelism=parallelism)
    if checkpoints:
        flow.enable_checkpointing(0.2, str(tmp / "ckpt"))
    flow.source(source, name="gen").sink(of.sinks.FileSink(out), name="files")
    return out, flow.run()


def test_values_in_index_order(tmp_path: Path) -> None:
    out, result = run_gen(tmp_path, of.sources.DataGen(lambda i: [i, i * 3], count=5000))
    assert of.sinks.read_committed(out) == [[i, i * 3] for i in range(5000)]
    assert result.records_in("files") == 5000


@pytest.mark.parametrize("parallelism", [2, 3])
def test_subtask_j_of_p_gets_the_indices_congruent_to_j(tmp_path: Path,
                                                         parallelism: int) -> None:
    out, _ = run_gen(tmp_path, of.sources.DataGen(lambda i: i, count=3001),
                     parallelism=parallelism)
    got = by_subtask(out)
    assert sorted(got) == list(range(parallelism))
    for j, values in got.items():
        assert values == list(range(j, 3001, parallelism)), f"subtask {j}"


@pytest.mark.parametrize(("count", "parallelism"), [(0, 1), (1, 3), (10, 4), (7, 2)])
def test_count_bounds_the_output(tmp_path: Path, count: int, parallelism: int) -> None:
    out, result = run_gen(tmp_path, of.sources.DataGen(lambda i: i, count=count),
                          parallelism=parallelism)
    assert sorted(of.sinks.read_committed(out)) == list(range(count))
    assert result.records_in("files") == count


def test_rate_is_roughly_respected_and_reads_never_block() -> None:
    """The reader alone, polled like the worker polls an idle source: a 2-second run at
    1000 records/s produces about 2000 (loosely: 1000..3000), and no call waits."""
    src = of.sources.DataGen(lambda i: i, rate=1000)
    split = src.splits(1)[0]
    rd = src.reader(split, src.initial_position(split))
    got: list[int] = []
    slowest = 0.0
    empty = 0
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        batch = rd.read_batch(1024)
        slowest = max(slowest, time.monotonic() - t0)
        assert batch is not None, "an unbounded DataGen never finishes"
        empty += not batch
        got.extend(batch)
        time.sleep(0.01)
    assert 1000 <= len(got) <= 3000, len(got)
    assert got == list(range(len(got)))
    assert rd.position() == len(got)
    assert slowest < 0.5, f"read_batch blocked for {slowest:.3f}s"


def test_rate_is_divided_over_subtasks_in_a_real_job(tmp_path: Path) -> None:
    """2000 records at 1000/s over two subtasks take about 2 s; loosely >= 1 s."""
    t0 = time.monotonic()
    out, result = run_gen(tmp_path, of.sources.DataGen(lambda i: i, rate=1000, count=2000),
                          parallelism=2)
    assert result.processing_seconds >= 1.0, result.processing_seconds
    assert time.monotonic() - t0 < 60
    assert sorted(of.sinks.read_committed(out)) == list(range(2000))


def test_a_reader_resumes_at_its_position() -> None:
    src = of.sources.DataGen(lambda i: i * 10, count=100)
    split = src.splits(4)[1]
    rd = src.reader(split, src.initial_position(split))
    assert rd.read_batch(3) == [10, 50, 90]
    again = src.reader(split, rd.position())  # what a restored job does
    assert again.read_batch(1000) == [i * 10 for i in range(13, 100, 4)]
    assert again.read_batch(1000) is None


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"fn": "not callable"}, "fn must be a function"),
    ({"rate": 0}, "rate must be a positive number"),
    ({"rate": -5.0}, "rate must be a positive number"),
    ({"rate": math.nan}, "rate must be a positive number"),
    ({"rate": math.inf}, "rate must be a positive number"),
    ({"rate": True}, "rate must be a positive number"),
    ({"rate": "100"}, "rate must be a positive number"),
    ({"count": -1}, "count must be an integer >= 0"),
    ({"count": 2.5}, "count must be an integer >= 0"),
    ({"count": False}, "count must be an integer >= 0"),
])
def test_bad_arguments_are_configuration_errors(kwargs: dict[str, Any], says: str) -> None:
    args: dict[str, Any] = {"fn": lambda i: i, **kwargs}
    with pytest.raises(of.ConfigurationError, match=says):
        of.sources.DataGen(args.pop("fn"), **args)


def test_an_exception_in_fn_names_the_operator_and_the_index() -> None:
    flow = of.Flow("datagen-bad", restart_strategy=of.restart.no_restart())
    (flow.source(of.sources.DataGen(lambda i: 1 // (i - 1234), count=5000), name="events")
         .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError) as info:
        flow.run()
    msg = str(info.value)
    assert "operator 'events'" in msg, msg
    assert "ZeroDivisionError" in msg, msg
    assert "DataGen index 1234" in msg, msg


def test_splits_survive_a_checkpoint_round_trip() -> None:
    import pickle

    s = _GenSplit(2, 5)
    s.failed_at = 7  # never part of the checkpointed split
    back = pickle.loads(pickle.dumps(s))
    assert back == _GenSplit(2, 5) and back.failed_at is None
    assert repr(back) == "DataGen split 2 of 5"


class GenJob(JobProcess):
    def __init__(self, tmp: Path, *extra: str) -> None:
        super().__init__(tmp)
        self.out, self.ckpt = tmp / "out", tmp / "ckpt"
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [JOB, "--out", str(self.out), "--ckpt", str(self.ckpt), *self.extra]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_replays_by_index_after_a_worker_is_killed(tmp_path: Path, parallelism: int) -> None:
    """SIGKILL a worker (several times) while DataGen runs at 8000 records/s: the
    committed output is exactly fn(0) .. fn(N-1), once each, and every sink subtask saw its
    indices in order (a replay restarts at the first index no checkpoint covers)."""
    count = 40_000
    job = GenJob(tmp_path, "--parallelism", str(parallelism), "--count", str(count),
                 "--rate", "8000")
    job.start()
    delivered = kill_randomly(job, random.Random(f"{SEED}-datagen-{parallelism}"), kills=3,
                              pause=(0.5, 1.2))
    code, result = job.wait()
    assert code == 0, job.tail()
    assert result is not None
    assert delivered >= 1, "the job ended before any kill landed; make it longer"
    assert result["restarts"] >= 1, result
    got = by_subtask(job.out)
    every = sorted((r for rs in got.values() for r in rs), key=lambda r: r["i"])
    want = [datagenjob.record(i) for i in range(count)]
    assert len(every) == count, f"{len(every)} committed, {count} expected"
    assert every == want
    for j, records in got.items():
        assert [r["i"] for r in records] == list(range(j, count, parallelism)), f"subtask {j}"
    hidden = [p.name for p in job.out.iterdir() if p.name.startswith(".")]
    assert not hidden, f"uncommitted transaction files left behind: {hidden}"
    assert result["sink_in"] == count


def docs_block(marker: str) -> str:
    """The ```python block of docs/api.md that contains ``marker``."""
    text = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} blocks in docs/api.md contain {marker!r}"
    return found[0]


def run_docs_block(marker: str, tmp: Path) -> str:
    code = docs_block(marker)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_docs_timer_example_fires_timers(tmp_path: Path) -> None:
    """The DataGen example of docs/api.md runs as printed, and its timers fire."""
    out = run_docs_block('of.Flow("timer-demo")', tmp_path)
    fired = re.findall(r"timer fired: \('sensor-(\d)', (\d+)\)", out)
    assert len(fired) >= 3, out  # every sensor reported at least once
    assert {s for s, _ in fired} == {"0", "1", "2"}, out
    assert all(1 <= int(n) <= 14 for _, n in fired), out  # running counts of <= 40 / 3


def test_docs_filesink_examples_run(tmp_path: Path) -> None:
    assert run_docs_block('of.Flow("to-files"', tmp_path).split()[-1] == "10000"
    assert run_docs_block('of.Flow("to-parquet")', tmp_path).split()[-1] == "10000"
