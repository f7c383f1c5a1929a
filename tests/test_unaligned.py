"""Unaligned checkpoints without processes: a real task fed by hand.

Random interleavings of records and barriers over several input channels, read the way a
worker reads them (with random stretches of full outputs, so barriers must overtake), with
unaligned checkpoints and with an alignment timeout. At every checkpoint, per channel, the
records processed before the snapshot followed by the persisted in-flight records must be
exactly the records that were before the barrier on that channel, in order; and a task
restored from the snapshot must replay exactly the in-flight records first.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest

import onceflow as of
from onceflow.checkpoint.restore import plan_for_states
from onceflow.graph import jobgraph
from onceflow.runtime.barriers import UnalignedBarrierHandler
from onceflow.runtime.channels import InputChannel
from onceflow.runtime.events import END_OF_INPUT, Barrier, TsBatch, Watermark
from onceflow.runtime.operators import OperatorEnv
from onceflow.runtime.task import TaskRunner

LOG: list[tuple[Any, ...]] = []


class Log(of.KeyedProcessFunction):
    def process_element(self, value: Any, ctx: of.ProcessContext) -> None:
        LOG.append(("rec", value))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _runner(n: int, *, timeout: float | None, clock: Clock,
            restored: list[Any] | None = None) -> tuple[TaskRunner, list[Any]]:
    flow = of.Flow("hand", parallelism=1)
    (flow.source(of.sources.Collection([]))
         .key_by(lambda r: r[0]).process(Log(), name="log").sink(of.sinks.Discard()))
    g = jobgraph.build(flow._plan, 1, 8)
    spec = next(t for t in g.tasks.values() if not t.is_source)
    writes: list[Any] = []
    runner = TaskRunner(
        spec, 0, OperatorEnv("hand", 0, 1, 8, (0, 8), 0), True, 64,
        lambda r, b, blob, asyncs, s, a, inflight: writes.append((b, blob, inflight)),
        lambda r: None, lambda: LOG.append(("snap",)),
        unaligned=timeout is None, aligned_timeout=timeout)
    runner.inputs = [InputChannel(i, None, ("up", i, n, 0)) for i in range(n)]
    runner.connect()
    assert isinstance(runner.handler, UnalignedBarrierHandler)
    runner.handler.wall = clock
    runner.open(*plan_for_states(spec, 0, 8, restored or []))
    return runner, writes


def _feed(rng: random.Random, n: int, checkpoints: int) -> list[list[Any]]:
    seqs: list[list[Any]] = [[] for _ in range(n)]
    rid = 0
    for cid in range(1, checkpoints + 1):
        for c in range(n):
            for _ in range(rng.randint(0, 6)):
                rid += 1
                if rng.random() < 0.3:
                    seqs[c].append(TsBatch([(rid % 3, c, rid)], [float(rid)]))
                else:
                    seqs[c].append([(rid % 3, c, rid)])
                if rng.random() < 0.1:
                    seqs[c].append(Watermark(float(rid)))
            seqs[c].append(Barrier(cid, float(cid)))
    for c in range(n):
        for _ in range(rng.randint(0, 3)):
            rid += 1
            seqs[c].append([(rid % 3, c, rid)])
    return seqs


def _records(items: list[Any]) -> list[int]:
    out = []
    for it in items:
        if type(it) is list:
            out.extend(r[2] for r in it)
        elif type(it) is TsBatch:
            out.extend(r[2] for r in it.records)
    return out


@pytest.mark.parametrize("timeout", [None, 2.5])
@pytest.mark.parametrize("seed", range(30))
def test_in_flight_data_is_exactly_what_the_snapshot_missed(seed: int,
                                                            timeout: float | None) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 4)
    LOG.clear()
    clock = Clock()
    runner, writes = _runner(n, timeout=timeout, clock=clock)
    seqs = _feed(rng, n, checkpoints=3)
    pending = [list(s) for s in seqs]
    room = [True]
    runner.outputs_have_room = lambda: room[0]  # type: ignore[method-assign]
    for step in range(20000):
        clock.now = step * 0.01
        # deliver a little to a random channel (in order), as a peer socket would
        c = rng.randrange(n)
        # the coordinator triggers checkpoint n+1 only once n completed (max_concurrent=1)
        nxt = pending[c][0] if pending[c] else None
        if nxt is not None and not (type(nxt) is Barrier and nxt.checkpoint_id > len(writes) + 1):
            item = pending[c].pop(0)
            runner.inputs[c].queue.append(item)
            if type(item) is Barrier:
                runner.inputs[c].barriers += 1
        room[0] = rng.random() < 0.6  # backpressure comes and goes
        runner.step()
        if all(not p for p in pending) and all(not ch.queue for ch in runner.inputs):
            room[0] = True
            while runner.step():
                pass
            break
    # every checkpoint completed, in order
    assert [b.checkpoint_id for b, _, _ in writes] == [1, 2, 3]
    snaps = [i for i, e in enumerate(LOG) if e[0] == "snap"]
    for (barrier, _, inflight), at in zip(writes, snaps, strict=True):
        cid = barrier.checkpoint_id
        before = [e[1] for e in LOG[:at] if e[0] == "rec"]
        got = pickle.loads(inflight) if inflight else {}
        for c in range(n):
            k = next(i for i, it in enumerate(seqs[c])
                     if type(it) is Barrier and it.checkpoint_id == cid)
            pre = _records(seqs[c][:k])
            done = [r[2] for r in before if r[1] == c]
            flying = _records([pickle.loads(b) for b in got.get(("up", c, n, 0), [])])
            assert done + flying == pre, f"checkpoint {cid}, channel {c}"
    processed = [e[1][2] for e in LOG if e[0] == "rec"]
    assert sorted(processed) == sorted(_records([it for s in seqs for it in s]))
    assert len(processed) == len(set(processed)), "no record is processed twice"


def test_a_restored_task_replays_its_in_flight_data_first() -> None:
    LOG.clear()
    clock = Clock()
    runner, writes = _runner(2, timeout=None, clock=clock)
    a, b = runner.inputs
    a.queue.extend([[(0, 0, 1)], [(1, 0, 2)], Barrier(1, 0.0)])
    a.barriers = 1
    b.queue.extend([[(0, 1, 3)], Barrier(1, 0.0), [(2, 1, 4)]])
    b.barriers = 1
    runner.outputs_have_room = lambda: False  # type: ignore[method-assign]
    while runner.step():
        pass
    assert [e[0] for e in LOG] == ["snap"], "the snapshot comes before any record"
    runner.outputs_have_room = lambda: True  # type: ignore[method-assign]
    while runner.step():
        pass
    (_, blob, inflight), = writes
    state = pickle.loads(blob)
    state["inflight"] = pickle.loads(inflight)
    assert {k: _records([pickle.loads(x) for x in v]) for k, v in state["inflight"].items()} \
        == {("up", 0, 2, 0): [1, 2], ("up", 1, 2, 0): [3]}
    restored, _ = _runner(2, timeout=None, clock=clock, restored=[(0, 1, state)])
    assert [_records(list(c.queue)) for c in restored.inputs] == [[1, 2], [3]]


def test_savepoints_and_the_final_checkpoint_stay_aligned() -> None:
    LOG.clear()
    clock = Clock()
    runner, writes = _runner(2, timeout=None, clock=clock)
    a, b = runner.inputs
    sp = Barrier(1, 0.0, savepoint="/tmp/sp")
    a.queue.extend([[(0, 0, 1)], sp])
    b.queue.extend([[(0, 1, 2)], sp, END_OF_INPUT])
    a.barriers = b.barriers = 1
    runner.outputs_have_room = lambda: False  # type: ignore[method-assign]
    assert not runner.step(), "a savepoint barrier does not overtake records"
    runner.outputs_have_room = lambda: True  # type: ignore[method-assign]
    while runner.step():
        pass
    (_, _, inflight), = writes
    assert inflight is None
    assert [e[0] for e in LOG] == ["rec", "rec", "snap"]
