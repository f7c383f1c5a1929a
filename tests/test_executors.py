"""Executors: the crash-test job shapes give the same committed output on the inline
executor (threads of this process) as on the default one (forked workers); the inline one
recovers from failures like the other; bad executor arguments are named."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import crashjobs
import pytest

import onceflow as of
from onceflow.testing import throttle

SHAPES = ["keyed_count", "union_flatmap", "two_keyed", "text_wordcount", "mixed_parallelism"]
RECORDS = 6000


def _run(tmp: Path, shape: str, executor: Any) -> tuple[Any, of.JobResult]:
    name = type(executor).__name__ if not isinstance(executor, str) else executor
    out = tmp / f"out-{name}"
    flow = of.Flow(f"exec-{shape}", parallelism=2, batch_size=64,
                   state_backend=of.state.MemoryBackend(full_every=3),
                   restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.05, tmp / f"ck-{name}", retained=2, incremental=True)
    crashjobs.build(shape, flow, RECORDS, 1e9, str(out), str(tmp / "corpus"))
    result = flow.run(executor=executor)
    return crashjobs.committed(str(out)), result


@pytest.mark.parametrize("shape", SHAPES)
def test_inline_commits_what_local_commits(tmp_path: Path, shape: str) -> None:
    local, r_local = _run(tmp_path, shape, of.executors.Local())
    inline, r_inline = _run(tmp_path, shape, "inline")
    want = crashjobs.expected(shape, RECORDS, str(tmp_path / "corpus"))
    assert local == want, crashjobs.diff(local, want)
    assert inline == local, crashjobs.diff(inline, local)
    assert r_inline.records_in("files") == r_local.records_in("files") == sum(want.values())
    assert r_inline.restarts == r_local.restarts == 0


def test_inline_workers_are_threads_of_this_process(tmp_path: Path) -> None:
    seen: set[str] = set()

    def where(x: int) -> int:
        seen.add(threading.current_thread().name)
        return x

    flow = of.Flow("threads", parallelism=2)
    (flow.source(of.sources.Range(0, 1000), name="n").map(where, name="where")
         .sink(of.sinks.Discard(), name="out"))
    assert flow.run(executor=of.executors.Inline()).records_in("out") == 1000
    assert seen == {"onceflow-worker-0", "onceflow-worker-1"}


class FailOnce:
    """Raises at record ``at`` the first time only (remembered in a file: each attempt
    and each subtask gets its own copy of this object)."""

    def __init__(self, marker: Path, at: int) -> None:
        self.marker, self.at = marker, at

    def __call__(self, x: int) -> int:
        if x == self.at and not self.marker.exists():
            self.marker.write_text("fired")
            raise ValueError(f"boom at {x}")
        return x


def test_inline_restarts_from_the_last_checkpoint_exactly(tmp_path: Path) -> None:
    flow = of.Flow("inline-restart", parallelism=2,
                   restart_strategy=of.restart.fixed_delay(attempts=2, delay=0.0))
    flow.enable_checkpointing(0.02, tmp_path / "ck")
    (flow.source(of.sources.Range(0, 20_000), name="n")
         .map(throttle(20_000), name="slow")
         .map(FailOnce(tmp_path / "marker", 15_000), name="fail-once")
         .map(lambda i: (i % 5, 1), name="pairs")
         .key_by(lambda kv: kv[0])
         .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
         .sink(of.sinks.FileSink(tmp_path / "out"), name="out"))
    result = flow.run(executor="inline")
    assert result.restarts == 1 and "boom at 15000" in result.failures[0]
    got = sorted(tuple(r) for r in of.sinks.read_committed(tmp_path / "out"))
    assert got == [(k, c) for k in range(5) for c in range(1, 4001)]


def test_an_unknown_executor_is_named() -> None:
    flow = of.Flow("bad-exec")
    flow.source(of.sources.Range(0, 1), name="n").sink(of.sinks.Discard(), name="out")
    with pytest.raises(of.ConfigurationError, match="executor='cluster'"):
        flow.run(executor="cluster")


class LockedSink(of.sinks.Sink):
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def write(self, records: list[Any]) -> None:
        pass


def test_inline_names_the_operator_whose_object_cannot_be_copied() -> None:
    flow = of.Flow("uncopyable")
    flow.source(of.sources.Range(0, 1), name="n").sink(LockedSink(), name="locked-sink")
    with pytest.raises(of.ConfigurationError, match="locked-sink"):
        flow.run(executor="inline")


class _TwoSlotsAfterAFailure(of.executors.Local):
    """Local, except that after the first attempt it holds only two workers and says so
    the way the Ray executor does when a node is lost (FewerSlots)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.first: Any = None

    def start(self, specs: Any) -> Any:
        from onceflow.executors.base import FewerSlots

        self.starts.append(len(specs))
        if len(self.starts) > 1 and len(specs) > 2:
            raise FewerSlots(2, "two slots are left")
        workers = super().start(specs)
        if self.first is None:
            self.first = workers
        return workers


def test_fewer_slots_lower_the_parallelism_from_the_checkpoint(tmp_path: Path) -> None:
    """The driver's side of allow_lower_parallelism: a worker is SIGKILLed after a
    checkpoint; the next start can hold two workers, not three: the job goes on at
    parallelism 2 from the checkpoint (a rescale by key group), exactly once, and says
    so in JobResult.rescales."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    flow = of.Flow("exec-fewer", parallelism=3, batch_size=64,
                   state_backend=of.state.MemoryBackend(full_every=3),
                   restart_strategy=of.restart.fixed_delay(attempts=2, delay=0.0))
    flow.enable_checkpointing(0.05, tmp_path / "ck", retained=2, incremental=True)
    crashjobs.build("keyed_count", flow, RECORDS, 1500, str(out), "")
    executor = _TwoSlotsAfterAFailure()

    def kill_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                executor.first is not None and list((tmp_path / "ck").glob("*/chk-*/_metadata"))):
            time.sleep(0.02)
        os.kill(executor.first.ids[1], signal.SIGKILL)

    killer = threading.Thread(target=kill_after_a_checkpoint)
    killer.start()
    r = flow.run(executor=executor)
    killer.join()
    want = crashjobs.expected("keyed_count", RECORDS)
    got = crashjobs.committed(str(out))
    assert got == want, crashjobs.diff(got, want)
    assert executor.starts == [3, 3, 2]
    assert r.restarts == 1 and r.rescales == ["parallelism 3 -> 2: two slots are left"]
    assert r.operators["count"].parallelism == 2
