"""onceflow.testing's flow helpers: the scripted source, the collecting sink and the
inline harness, including failure and stall scripts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import onceflow as of
from onceflow.testing import CollectingSink, ScriptedSource, run_inline


def test_a_scripted_failure_mid_run_restarts_from_a_checkpoint_exactly(tmp_path: Path) -> None:
    flow = of.Flow("scripted", parallelism=2,
                   restart_strategy=of.restart.fixed_delay(attempts=1, delay=0.0))
    flow.enable_checkpointing(0.01, tmp_path / "ck")
    out = CollectingSink()

    def slow(x: int) -> int:
        time.sleep(0.0005)
        return x

    (flow.source(ScriptedSource(range(3000), fail_at=2000, error=ValueError("scripted")),
                 name="in")
         .map(slow, name="slow")
         .key_by(lambda x: x % 3)
         .reduce(lambda a, b: a + b, name="sum")
         .sink(out, name="out"))
    result = run_inline(flow)
    assert result.restarts == 1 and "ValueError: scripted" in result.failures[0]
    assert result.restored_from is None and len(result.completed_checkpoints) >= 2
    got = out.records()
    # one source subtask emits in order, so each key's running sums are deterministic
    want = []
    totals = [0, 0, 0]
    for x in range(3000):
        totals[x % 3] += x
        want.append(totals[x % 3])
    assert sorted(got) == sorted(want)


def test_a_stalled_source_runs_until_stopped_with_a_savepoint(tmp_path: Path) -> None:
    flow = of.Flow("stalled")
    flow.enable_checkpointing(0.05, tmp_path / "ck")
    out = CollectingSink()
    flow.source(ScriptedSource(list(range(100)), stall_at=40), name="in").sink(out, name="out")
    client = flow.start(executor="inline")
    deadline = time.monotonic() + 30
    while len(out.records()) < 40:
        assert time.monotonic() < deadline and not client.done(), out.records()
        time.sleep(0.01)
    time.sleep(0.2)
    assert not client.done()  # stalled, not finished
    path = client.stop_with_savepoint(str(tmp_path / "sp"))
    client.result(timeout=30)
    assert out.records() == list(range(40)) and Path(path, "_metadata").exists()


def test_the_collecting_sink_refuses_the_forking_executor() -> None:
    flow = of.Flow("forked", restart_strategy=of.restart.no_restart())
    flow.source(ScriptedSource([1]), name="in").sink(CollectingSink(), name="collect")
    with pytest.raises(of.JobFailedError, match=r"'collect'.*executor='inline'"):
        flow.run()
