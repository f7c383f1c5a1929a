"""Joins exactly-once under crashes: the join flows of ``joinjobs.py`` run as their own
driver process, workers are SIGKILLed at random moments (seeded) and at a named point of
the checkpoint protocol, and the committed FileSink output is compared with the output
computed without onceflow: every pair once, none lost, none duplicated."""

from __future__ import annotations

import os
import random
from pathlib import Path

import joinjobs
import pytest
from jobproc import JobProcess, kill_randomly

JOB = str(Path(__file__).with_name("joinjobs.py"))
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261201"))
RECORDS = 12_000


class JoinJob(JobProcess):
    def __init__(self, tmp: Path, shape: str, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(tmp, env)
        self.shape = shape
        self.out, self.ckpt = tmp / "out", tmp / "ckpt"
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [JOB, self.shape, "--out", str(self.out), "--ckpt", str(self.ckpt),
                "--records", str(RECORDS), *self.extra]

    def check(self) -> None:
        got = joinjobs.committed(str(self.out))
        if self.shape == "regular_ttl":
            must, may = joinjobs.expected_ttl(RECORDS)
            missing = [k for k in must if got[k] != 1]
            assert not missing, f"{len(missing)} near pairs not committed exactly once: " \
                                f"{missing[:5]} {[got[k] for k in missing[:5]]}"
            wrong = [(k, n) for k, n in got.items() if n != 1 or (k not in must and k not in may)]
            assert not wrong, f"duplicated or impossible pairs: {wrong[:5]}"
        else:
            want = joinjobs.expected(self.shape, RECORDS)
            dup, lost = got - want, want - got
            assert got == want, (f"{sum(got.values())} committed vs {sum(want.values())}: "
                                 f"{sum(dup.values())} extra e.g. {list(dup)[:5]}, "
                                 f"{sum(lost.values())} lost e.g. {list(lost)[:5]}\n"
                                 f"{self.tail(3000)}")
        hidden = [p.name for p in self.out.iterdir() if p.name.startswith(".")]
        assert not hidden, f"uncommitted transaction files left behind: {hidden}"


@pytest.mark.parametrize(("shape", "backend"), [("interval", "memory"), ("interval", "rocksdb"),
                                                ("regular", "memory"),
                                                ("regular_ttl", "rocksdb"),
                                                ("broadcast", "memory"),
                                                ("nexmark-q3", "rocksdb")])
def test_random_worker_kills_leave_join_output_exact(tmp_path: Path, shape: str,
                                                     backend: str) -> None:
    rng = random.Random(f"{SEED}-{shape}-{backend}")
    job = JoinJob(tmp_path, shape, "--backend", backend, "--rate", "3000")
    job.start()
    delivered = kill_randomly(job, rng, kills=2)
    code, result = job.wait(timeout=180)
    assert code == 0, job.tail(3000)
    assert result is not None
    assert delivered >= 1, "the job ended before any kill landed; make it longer"
    assert result["restarts"] >= 1
    job.check()


@pytest.mark.parametrize("shape", ["interval", "broadcast"])
def test_unaligned_checkpoints_of_two_input_operators_stay_exact_under_kills(
        tmp_path: Path, shape: str) -> None:
    """Barriers overtake queued records on both inputs; the in-flight data goes back into
    the channel of its own input on restore."""
    rng = random.Random(f"{SEED}-unaligned-{shape}")
    job = JoinJob(tmp_path, shape, "--unaligned", "--rate", "3000", "--interval", "0.2")
    job.start()
    delivered = kill_randomly(job, rng, kills=2)
    code, result = job.wait(timeout=180)
    assert code == 0, job.tail(3000)
    assert result is not None and delivered >= 1 and result["restarts"] >= 1
    job.check()


def test_worker_killed_while_snapshotting_join_state(tmp_path: Path) -> None:
    token = tmp_path / "fault-fired"
    point = "snapshot.sync@checkpoint=3,subtask=1"
    job = JoinJob(tmp_path, "interval", "--rate", "4000",
                  env={"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)})
    job.start()
    code, result = job.wait(timeout=180)
    assert token.exists(), f"fault {point} never fired"
    assert code == 0, job.tail(3000)
    assert result is not None and result["restarts"] == 1
    job.check()
