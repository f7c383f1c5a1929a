"""Two-input operators: connect / CoProcessFunction, broadcast state, and what a two-input
task does with its inputs (which input a batch came from, the watermark as the minimum of
both inputs, a checkpoint barrier aligned over both).

The hand-fed tests drive a real TaskRunner through its channels, as the worker does; the
others run flows end to end."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, ClassVar

import pytest

import onceflow as of
from onceflow.checkpoint.restore import SubtaskRestore
from onceflow.errors import ConfigurationError
from onceflow.graph import jobgraph
from onceflow.runtime.channels import InputChannel
from onceflow.runtime.events import END_OF_INPUT, Barrier, TsBatch, Watermark
from onceflow.runtime.operators import OperatorEnv
from onceflow.runtime.task import TaskRunner

INF = math.inf


class Witness(of.CoProcessFunction):
    """Records which side each record reached, with the operator's watermark, and sets an
    event-time timer at each record's timestamp."""

    log: ClassVar[list[tuple[Any, ...]]] = []

    def open(self, ctx: of.RuntimeContext) -> None:
        self.seen = ctx.list_state("seen")

    def _on(self, side: int, value: Any, ctx: of.ProcessContext) -> list[Any]:
        self.seen.add((side, value))
        Witness.log.append(("record", side, value, ctx.timer_service.current_watermark()))
        if ctx.timestamp is not None:
            ctx.timer_service.register_event_time_timer(ctx.timestamp)
        return [(side, value)]

    def process_element1(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        return self._on(1, value, ctx)

    def process_element2(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        return self._on(2, value, ctx)

    def on_timer(self, timestamp: float, ctx: of.ProcessContext) -> list[Any]:
        Witness.log.append(("timer", ctx.current_key, timestamp,
                            ctx.timer_service.current_watermark(), sorted(self.seen.get())))
        return []


def _two_input_runner() -> tuple[TaskRunner, InputChannel, InputChannel, list[Any]]:
    flow = of.Flow("hand2", parallelism=1)
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(lambda r: r[1])
    a = flow.source(of.sources.Collection([]), name="a", watermarks=ws)
    b = flow.source(of.sources.Collection([]), name="b", watermarks=ws)
    (a.key_by(lambda r: r[0]).connect(b.key_by(lambda r: r[0]))
      .process(Witness(), name="co").sink(of.sinks.Discard()))
    g = jobgraph.build(flow._plan, 1, 8)
    spec = next(t for t in g.tasks.values() if t.head.name == "co")
    snaps: list[Any] = []
    env = OperatorEnv("hand2", 0, 1, 8, (0, 8), 0)
    runner = TaskRunner(spec, 0, env, True, 64,
                        lambda r, b, blob, asyncs, s, a, *inflight: snaps.append(b.checkpoint_id),
                        lambda r: None)
    first, second = InputChannel(0, None, ("a", 0, 1, 0)), InputChannel(1, None, ("b", 0, 1, 1))
    runner.inputs = [first, second]
    runner.connect()
    runner.open(SubtaskRestore(runner.uid, runner.subtask), {})
    return runner, first, second, snaps


def _drain(runner: TaskRunner) -> None:
    while runner.step():
        pass


def test_each_batch_reaches_the_side_of_its_input_with_shared_keyed_state() -> None:
    Witness.log = []
    runner, first, second, _ = _two_input_runner()
    first.queue.append(TsBatch([("k", 1.0)], [1.0]))
    second.queue.append(TsBatch([("k", 2.0)], [2.0]))
    first.queue.append([("j", 3.0)])  # a batch without timestamps goes to side 1 too
    _drain(runner)
    sides = [(e[1], e[2]) for e in Witness.log if e[0] == "record"]
    assert sorted(sides) == [(1, ("j", 3.0)), (1, ("k", 1.0)), (2, ("k", 2.0))]
    first.queue.append(END_OF_INPUT)
    second.queue.append(END_OF_INPUT)
    _drain(runner)
    timers = {e[1]: e[4] for e in Witness.log if e[0] == "timer"}
    # both sides' records of key "k" are in the one keyed state of key "k"
    assert timers["k"] == [(1, ("k", 1.0)), (2, ("k", 2.0))]


def test_the_watermark_is_the_minimum_of_both_inputs() -> None:
    Witness.log = []
    runner, first, second, _ = _two_input_runner()
    first.queue.append(TsBatch([("k", 5.0)], [5.0]))
    first.queue.append(Watermark(10.0))
    _drain(runner)
    op = runner.ops[0]
    assert op.watermark == -INF, "one input's watermark alone must not advance the operator"
    assert not [e for e in Witness.log if e[0] == "timer"]
    second.queue.append(Watermark(4.0))
    _drain(runner)
    assert op.watermark == 4.0
    assert not [e for e in Witness.log if e[0] == "timer"], "timer at 5 fired at W=4"
    second.queue.append(Watermark(7.0))
    _drain(runner)
    assert op.watermark == 7.0
    assert [(e[2], e[3]) for e in Witness.log if e[0] == "timer"] == [(5.0, 7.0)]


def test_a_barrier_is_aligned_over_both_inputs() -> None:
    Witness.log = []
    runner, first, second, snaps = _two_input_runner()
    first.queue.extend([TsBatch([("k", 1.0)], [1.0]), Barrier(1, 0.0),
                        TsBatch([("k", 2.0)], [2.0])])
    second.queue.append(TsBatch([("k", 1.5)], [1.5]))
    _drain(runner)
    # the first input is blocked behind its barrier: its next record waits; the other
    # input's record before its barrier is processed; no snapshot yet
    values = [e[2] for e in Witness.log if e[0] == "record"]
    assert ("k", 2.0) not in values and ("k", 1.5) in values
    assert snaps == [] and first.blocked
    second.queue.extend([Barrier(1, 0.0), TsBatch([("k", 3.0)], [3.0])])
    _drain(runner)
    assert snaps == [1]
    values = [e[2] for e in Witness.log if e[0] == "record"]
    assert ("k", 2.0) in values and ("k", 3.0) in values
    assert values.index(("k", 2.0)) > values.index(("k", 1.5))


def test_keyed_connect_in_a_flow_shares_state_across_sides(tmp_path: Path) -> None:
    class Enrich(of.CoProcessFunction):
        def open(self, ctx: of.RuntimeContext) -> None:
            self.name = ctx.value_state("name")
            self.waiting = ctx.list_state("waiting")

        def process_element1(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
            self.name.update(value[1])
            out = [(value[1], o) for o in self.waiting.get()]
            self.waiting.clear()
            return out

        def process_element2(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
            n = self.name.value()
            if n is None:
                self.waiting.add(value[1])
                return []
            return [(n, value[1])]

    flow = of.Flow("enrich", parallelism=2)
    people = flow.source(of.sources.Collection([(i, f"p{i}") for i in range(50)]))
    orders = flow.source(of.sources.Collection([(i % 50, i) for i in range(500)]))
    (people.connect(orders).key_by(lambda p: p[0], lambda o: o[0])
           .process(Enrich()).sink(of.sinks.FileSink(tmp_path / "o")))
    flow.run()
    got = sorted(tuple(r) for r in of.sinks.read_committed(tmp_path / "o"))
    assert got == sorted((f"p{i % 50}", i) for i in range(500))


def test_unkeyed_connect_sees_both_inputs_and_refuses_keyed_state(tmp_path: Path) -> None:
    class Tag(of.CoProcessFunction):
        def process_element1(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
            return [("a", value)]

        def process_element2(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
            return [("b", value)]

    flow = of.Flow("tag", parallelism=2)
    a = flow.source(of.sources.Range(0, 100))
    b = flow.source(of.sources.Range(0, 30))
    a.connect(b).process(Tag()).sink(of.sinks.FileSink(tmp_path / "o"))
    flow.run()
    got = sorted(tuple(r) for r in of.sinks.read_committed(tmp_path / "o"))
    assert got == sorted([("a", i) for i in range(100)] + [("b", i) for i in range(30)])

    class Stateful(Tag):
        def open(self, ctx: of.RuntimeContext) -> None:
            ctx.value_state("x")

    flow = of.Flow("tag2", parallelism=1, restart_strategy=of.restart.no_restart())
    a = flow.source(of.sources.Range(0, 10))
    a.connect(flow.source(of.sources.Range(0, 10))).process(Stateful(), name="st") \
        .sink(of.sinks.Discard())
    with pytest.raises(of.JobFailedError, match="keyed state needs keyed streams"):
        flow.run()


class _Where(of.CoProcessFunction):
    """Tags each record of the first input with the subtask that got it."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.sub = ctx.subtask_index

    def process_element1(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        return [(value, self.sub)]

    def process_element2(self, value: Any, ctx: of.ProcessContext) -> None:
        return None


class _WhereB(of.BroadcastProcessFunction):
    def open(self, ctx: of.RuntimeContext) -> None:
        self.sub = ctx.subtask_index

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        return [(value, self.sub)]

    def process_broadcast_element(self, value: Any, ctx: of.ProcessContext) -> None:
        return None


@pytest.mark.parametrize("shape", ["connect", "broadcast", "union-connect", "union-map",
                                   "keyed-union"])
def test_the_partitioning_chosen_before_connect_or_union_is_kept(shape: str,
                                                                 tmp_path: Path) -> None:
    """rebalance() (or key_by()) in front of connect(), union() or the data side of a
    broadcast connect spreads the records as it does in front of a one-input operator.
    The source emits every record from its subtask 0, so a forward edge would leave all
    of them on subtask 0 (as it did: the partitioning was dropped silently)."""
    from onceflow.testing import ScriptedSource

    flow = of.Flow(f"spread-{shape}", parallelism=2, batch_size=10)
    a = flow.source(ScriptedSource(list(range(200))))
    b = flow.source(of.sources.Collection([]))
    d = of.MapStateDescriptor("d")
    if shape == "connect":
        out = a.rebalance().connect(b).process(_Where())
    elif shape == "broadcast":
        out = a.rebalance().connect(b.broadcast(d)).process(_WhereB())
    elif shape == "union-connect":
        out = a.rebalance().union(b).connect(b).process(_Where())
    elif shape == "union-map":
        out = a.rebalance().union(b).map(lambda v: v, name="same").connect(b).process(
            _Where())
    else:  # a keyed stream in a union: the union's input is partitioned by that key
        out = a.key_by(lambda v: v % 7).union(b).connect(b).process(_Where())
    out.sink(of.sinks.FileSink(tmp_path / "o"))
    flow.run()
    got = [tuple(r) for r in of.sinks.read_committed(tmp_path / "o")]
    assert sorted(v for v, _ in got) == list(range(200))
    per_subtask = {s: sum(1 for _, t in got if t == s) for s in (0, 1)}
    assert min(per_subtask.values()) >= 40, per_subtask
    if shape == "keyed-union":  # every record of a key on one subtask
        where = {v % 7: {t for w, t in got if w % 7 == v % 7} for v, _ in got}
        assert all(len(ts) == 1 for ts in where.values()), where


class _CountBoth(of.CoProcessFunction):
    """A count per key, the same state for both sides."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.n = ctx.value_state("n", default=0)

    def _on(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        self.n.update(self.n.value() + 1)
        return [(ctx.current_key, self.n.value())]

    process_element1 = process_element2 = _on


def _counting_connect(tmp_path: Path, phase: int, pages_key: Any) -> of.Flow:
    """Side 1 keyed by int user ids, side 2 by ``pages_key`` of page names. Phase 1 stops
    after the users (both sources then wait); phase 2 brings the pages."""
    from onceflow.testing import ScriptedSource

    flow = of.Flow("key-types", parallelism=1, restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.2, tmp_path / "ckpt")
    users = flow.source(ScriptedSource([1, 2, 3], stall_at=3 if phase == 1 else None),
                        name="users")
    pages = flow.source(ScriptedSource(["home", "cart"], stall_at=0 if phase == 1 else None),
                        name="pages")
    (users.connect(pages).key_by(lambda u: u, pages_key)
          .process(_CountBoth(), name="count", uid="count")
          .sink(of.sinks.FileSink(tmp_path / "out"), uid="sink"))
    return flow


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_a_keyed_connect_with_two_key_types_restores_whichever_side_comes_first(
        backend: str, tmp_path: Path) -> None:
    """The restored state holds only side 1's int keys, and the first batch after the
    restore is side 2's str keys: an unchanged flow, which restores (it was refused as
    "a changed key type" when the first batch came from the side whose keys the state did
    not hold yet). A flow whose keys changed type on every side is still refused."""
    import time

    client = _counting_connect(tmp_path, 1, lambda p: p).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
            (tmp_path / "out").exists() and len(of.sinks.read_committed(tmp_path / "out")) == 3):
        time.sleep(0.1)
    savepoint = client.stop_with_savepoint(str(tmp_path / "sp"))
    client.result(timeout=60)
    assert sorted(map(tuple, of.sinks.read_committed(tmp_path / "out"))) == \
        [(1, 1), (2, 1), (3, 1)]
    again = _counting_connect(tmp_path, 2, lambda p: p)
    if backend == "rocksdb":
        again.state_backend = of.state.RocksDBBackend(local_dir=str(tmp_path / "rocks"))
    again.run(restore=savepoint)
    got = sorted(map(tuple, of.sinks.read_committed(tmp_path / "out")), key=repr)
    assert got == sorted([(1, 1), (2, 1), (3, 1), ("home", 1), ("cart", 1)], key=repr)

    # both sides' keys now of types the state was not written with: refused
    from onceflow.testing import ScriptedSource

    bad = of.Flow("key-types", parallelism=1, restart_strategy=of.restart.no_restart())
    bad.enable_checkpointing(0.2, tmp_path / "ckpt2")
    users = bad.source(ScriptedSource([1, 2, 3, 4, 5]), name="users")  # resumes at 4
    pages = bad.source(ScriptedSource(["home"]), name="pages")
    (users.connect(pages).key_by(lambda u: str(u), lambda p: p.encode())
          .process(_CountBoth(), name="count", uid="count")
          .sink(of.sinks.FileSink(tmp_path / "out2"), uid="sink"))
    with pytest.raises(of.JobFailedError, match=r"operator 'count'.*keyed by int.*"
                                                r"returns bytes, str"):
        bad.run(restore=savepoint)


@pytest.mark.parametrize("shape", ["connect", "union"])
def test_a_window_behind_an_input_without_timestamps_names_that_source(shape: str) -> None:
    """One input of a connect (or union) has watermarks, the other none: the flow builds
    (some path gives timestamps), and the window's error at run time names the source
    whose records come without them."""
    class Tag(of.CoProcessFunction):
        def process_element1(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
            return [("a", value)]

        def process_element2(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
            return [("b", value)]

    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(float)
    flow = of.Flow(f"untimed-{shape}", parallelism=1, restart_strategy=of.restart.no_restart())
    timed = flow.source(of.sources.Range(0, 50), watermarks=ws, name="timed")
    bare = flow.source(of.sources.Range(0, 50), name="bare")
    both = (timed.connect(bare).process(Tag()) if shape == "connect"
            else timed.map(lambda v: ("a", v)).union(bare.map(lambda v: ("b", v))))
    (both.key_by(lambda r: r[0]).window(of.windows.tumbling(10.0))
         .aggregate(of.agg.count(), name="per-10").sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError, match=r"window operator 'per-10' is an event-time "
                       r"window but its input records have no timestamps: add watermarks= "
                       r"to source 'bare' \(records of it reach the window through a union "
                       r"or connect"):
        flow.run()


def test_connect_errors_name_the_problem() -> None:
    flow = of.Flow("bad", parallelism=1)
    a = flow.source(of.sources.Range(0, 10))
    with pytest.raises(ConfigurationError, match="both streams are keyed"):
        a.key_by(lambda x: x).connect(flow.source(of.sources.Range(0, 1)))
    with pytest.raises(ConfigurationError, match="CoProcessFunction"):
        a.connect(a).process(lambda v, c: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="takes a BroadcastProcessFunction"):
        a.connect(a.broadcast(of.MapStateDescriptor("rules"))).process(ApplyRules())
    with pytest.raises(ConfigurationError, match="MapStateDescriptor"):
        a.broadcast()
    other = of.Flow("other").source(of.sources.Range(0, 1))
    with pytest.raises(ConfigurationError, match="belongs to Flow 'other', not 'bad'"):
        a.connect(other)


# --- broadcast state -----------------------------------------------------------------------
RULES = of.MapStateDescriptor("rules")


class ApplyRules(of.KeyedBroadcastProcessFunction):
    """Rules ``(name, factor)`` are broadcast; each event ``(key, value)`` is emitted with
    the rules every subtask holds."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process_element(self, value: Any, ctx: of.BroadcastContext) -> list[Any]:
        rules = ctx.get_broadcast_state(RULES)
        self.count.update(self.count.value() + 1)
        return [(value[0], value[1], sorted(rules.items()), ctx.subtask_index)]

    def process_broadcast_element(self, value: Any, ctx: of.BroadcastContext) -> None:
        ctx.get_broadcast_state(RULES).put(value[0], value[1])


class UnkeyedApplyRules(of.BroadcastProcessFunction):
    def process_element(self, value: Any, ctx: of.BroadcastContext) -> list[Any]:
        rules = ctx.get_broadcast_state(RULES)
        return [(value[0], value[1], sorted(rules.items()), ctx.subtask_index)]

    def process_broadcast_element(self, value: Any, ctx: of.BroadcastContext) -> None:
        ctx.get_broadcast_state(RULES).put(value[0], value[1])


def _broadcast_flow(p: int, ckpt: Path, out: Path, rules: list[Any], run: int,
                    n_events: int, keyed: bool = True) -> of.Flow:
    """Run ``run`` reads its own new events source; those of earlier runs are finished in
    the checkpoint (they stay in the flow, so their state has a home)."""
    flow = of.Flow("bcast", parallelism=p, restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.05, ckpt, retained=2)
    r = flow.source(of.sources.Collection(rules), name="rules", parallelism=1)
    olds = [flow.source(of.sources.Collection([]), name=f"events-{i}") for i in range(1, run)]
    e = flow.source(of.sources.Collection([(k % 30, k) for k in range(n_events)]),
                    name=f"events-{run}")
    if olds:
        e = e.union(*olds, name="all-events")
    if keyed:
        connected = e.key_by(lambda ev: ev[0]).connect(r.broadcast(RULES))
        fn: Any = ApplyRules()
    else:
        connected = e.rebalance().map(lambda ev: ev, name="spread").connect(
            r.broadcast(RULES))
        fn = UnkeyedApplyRules()
    (connected.process(fn, name="apply", uid="apply")
              .sink(of.sinks.FileSink(out), name="out"))
    return flow


@pytest.mark.parametrize("keyed", [True, False])
def test_broadcast_state_reaches_every_subtask_and_survives_rescaling_2_3_1(
        tmp_path: Path, keyed: bool) -> None:
    rules = [("double", 2), ("triple", 3)]
    ckpt = tmp_path / "ck"
    # run 1 at parallelism 2: only the rules arrive; the broadcast state is checkpointed
    _broadcast_flow(2, ckpt, tmp_path / "o1", rules, 1, 0, keyed).run()
    want_rules = [["double", 2], ["triple", 3]]
    for p, run in ((3, 2), (1, 3)):
        out = tmp_path / f"o{run}"
        result = _broadcast_flow(p, ckpt, out, rules, run, 300, keyed).run(
            restore="latest")
        assert result.restored_from is not None
        got = of.sinks.read_committed(out)
        assert len(got) == 300
        # the rules source finished in run 1: every subtask has the rules only from the
        # restored broadcast state, at the new parallelism
        assert all(r[2] == want_rules for r in got), got[:3]
        assert {r[3] for r in got} == set(range(p))
    # the keyed state of the same operator moved with its keys
    got3 = of.sinks.read_committed(tmp_path / "o3")
    assert len(got3) == 300


def test_broadcast_state_is_read_only_in_process_element(tmp_path: Path) -> None:
    class Writes(ApplyRules):
        def process_element(self, value: Any, ctx: of.BroadcastContext) -> list[Any]:
            ctx.get_broadcast_state(RULES).put("x", 1)
            return []

    flow = of.Flow("ro", parallelism=1, restart_strategy=of.restart.no_restart())
    r = flow.source(of.sources.Collection([("a", 1)]), name="rules")
    e = flow.source(of.sources.Collection([(1, 1)]), name="events")
    (e.key_by(lambda ev: ev[0]).connect(r.broadcast(RULES)).process(Writes(), name="w")
      .sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError,
                       match=r"operator 'w': broadcast state .* is read-only in process_element"):
        flow.run()


class _KeyedStateOnBroadcast(ApplyRules):
    def __init__(self, use: str) -> None:
        self.use = use

    def open(self, ctx: of.RuntimeContext) -> None:
        self.n = ctx.value_state("n", 0)

    def process_broadcast_element(self, value: Any, ctx: of.BroadcastContext) -> None:
        assert ctx.current_key is None
        if self.use == "state":
            self.n.update(self.n.value() + 1)
        else:
            ctx.timer_service.register_event_time_timer(5.0)


@pytest.mark.parametrize(("use", "backend"), [("state", "memory"), ("timer", "memory"),
                                              ("state", "rocksdb"), ("timer", "rocksdb")])
def test_keyed_state_and_timers_in_process_broadcast_element_are_refused(
        tmp_path: Path, use: str, backend: str) -> None:
    """No current key there: before, the state of key None was written on every subtask."""
    be = (of.state.RocksDBBackend(local_dir=str(tmp_path / "rocks")) if backend == "rocksdb"
          else of.state.MemoryBackend())
    flow = of.Flow("bk", parallelism=2, state_backend=be,
                   restart_strategy=of.restart.no_restart())
    r = flow.source(of.sources.Collection([("a", 1)]), name="rules")
    e = flow.source(of.sources.Collection([(1, 1)]), name="events")
    (e.key_by(lambda ev: ev[0]).connect(r.broadcast(RULES))
      .process(_KeyedStateOnBroadcast(use), name="b").sink(of.sinks.Discard()))
    with pytest.raises(of.JobFailedError, match="process_broadcast_element has no current key"):
        flow.run()


# --- broadcast state, unaligned checkpoints, rescale ----------------------------------------
_NB = 300  # broadcast records


class _CountsRules(of.KeyedBroadcastProcessFunction):
    """Counts the broadcast records it applies (``n``) and which (``seen``); slower on
    higher subtasks, so that the subtasks' broadcast states differ at a checkpoint and
    records of the broadcast input are in flight. The last one emits (subtask, n,
    distinct). The job fails once, in the broadcast input of subtask 0, after record 200."""

    def __init__(self, mark: str) -> None:
        self.mark = mark

    def open(self, ctx: of.RuntimeContext) -> None:
        self.sub = ctx.subtask_index

    def process_element(self, value: Any, ctx: of.BroadcastContext) -> None:
        import time

        time.sleep(0.0005)

    def process_broadcast_element(self, value: Any, ctx: of.BroadcastContext) -> Any:
        import os
        import time

        time.sleep(0.003 + 0.004 * self.sub)
        if value == 200 and self.sub == 0 and not os.path.exists(self.mark):
            open(self.mark, "w").close()
            raise RuntimeError("injected failure")
        st = ctx.get_broadcast_state(RULES)
        st.put("n", st.get("n", 0) + 1)
        st.put(("seen", value), True)
        if value == _NB - 1:
            return [(self.sub, st.get("n"), len(st) - 1)]
        return None


def _inflight_broadcast(chk: Path) -> int:
    """Records of input 1 (the broadcast input) in flight in checkpoint ``chk``."""
    from onceflow.checkpoint.storage import STATE_MAGIC

    n = 0
    for f in chk.glob("*.state"):
        outer = pickle.loads(f.read_bytes()[len(STATE_MAGIC):])
        infl = pickle.loads(outer["inflight"]) if outer.get("inflight") is not None else {}
        for origin, items in infl.items():
            if isinstance(origin, tuple) and origin[3] == 1:
                for b in items:
                    it = pickle.loads(b)
                    n += len(it) if type(it) is list else len(getattr(it, "records", ()))
    return n


@pytest.mark.parametrize("new_parallelism", [3, 1])
def test_broadcast_state_from_an_unaligned_checkpoint_is_exact_at_another_parallelism(
        tmp_path: Path, new_parallelism: int) -> None:
    """Each old subtask's broadcast state is complete only together with its own
    in-flight broadcast records. A new subtask must replay the records of the old subtask
    whose state it took, and only those: before, records went to subtask ``j % P``, so
    some subtasks applied broadcast records twice and others never."""
    from onceflow.testing import CollectingSink

    mark = str(tmp_path / "failed")

    def build(p: int, out: Any) -> of.Flow:
        flow = of.Flow("bcast-unaligned", parallelism=p, batch_size=16, channel_capacity=16,
                       restart_strategy=of.restart.no_restart())
        flow.enable_checkpointing(0.25, tmp_path / "ckpt", unaligned=True, retained=5)
        keyed = flow.source(of.sources.Collection([(i % 23, i) for i in range(4000)]),
                            name="keyed", parallelism=1)
        rules = flow.source(of.sources.Collection(list(range(_NB))), name="rules",
                            parallelism=1)
        (keyed.key_by(lambda r: r[0]).connect(rules.broadcast(RULES))
              .process(_CountsRules(mark), name="bp").sink(out, name="out"))
        return flow

    out = CollectingSink()
    with pytest.raises(of.JobFailedError, match="injected failure"):
        build(2, out).run(executor="inline")
    chks = sorted((tmp_path / "ckpt" / "bcast-unaligned").glob("chk-*"),
                  key=lambda c: int(c.name.split("-")[1]))
    assert chks, "no checkpoint before the failure"
    assert _inflight_broadcast(chks[-1]) > 0, "the test needs broadcast records in flight"
    build(new_parallelism, out).run(restore="latest", executor="inline")
    assert sorted(out.records()) == [(s, _NB, _NB) for s in range(new_parallelism)]
