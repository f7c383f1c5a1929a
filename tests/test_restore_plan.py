"""The restore plan, without processes: which state files and key groups each new subtask
restores after a rescale (2 -> 3 -> 1), sources added since the checkpoint, operators
removed, and the refused cases."""

from __future__ import annotations

import time
from collections import Counter

import pytest

import onceflow as of
from onceflow.checkpoint.metadata import CheckpointMetadata, OperatorEntry, StateFile, SubtaskFile
from onceflow.checkpoint.restore import RestorePlan, inherits
from onceflow.graph.jobgraph import JobGraph, build
from onceflow.graph.keygroups import key_group, key_group_range

MP = 128


def graph(p: int, *, extra_source: bool = False, noop: bool = False,
          stateful_noop: bool = False) -> JobGraph:
    flow = of.Flow("plan", parallelism=p, max_parallelism=MP)
    s = flow.source(of.sources.Range(0, 100), name="src")
    if extra_source:
        s = s.union(flow.source(of.sources.Range(0, 10), name="new-src"), name="u")
    if noop:
        s = s.map(lambda x: x, name="noop")
    s = s.key_by(lambda x: x % 7)
    if stateful_noop:
        s = s.reduce(lambda a, b: b, name="noop")
    else:
        s = s.reduce(lambda a, b: a + b, name="total")
    s.sink(of.sinks.Discard(), name="out")
    return build(flow._plan, p, MP)


def checkpoint_of(g: JobGraph, stateless: tuple[str, ...] = ()) -> CheckpointMetadata:
    """The metadata a checkpoint of ``g`` would have (one state file per task subtask)."""
    ops, files = {}, {}
    for t in g.tasks.values():
        for n in t.nodes:
            names = [f"{t.uid}-{j}.state" for j in range(t.parallelism)]
            ops[n.uid] = OperatorEntry(n.uid, t.uid, t.parallelism, n.kind.value,
                                       n.uid not in stateless,
                                       tuple(SubtaskFile(j, f) for j, f in enumerate(names)))
            files.update({f: StateFile(1, 0) for f in names})
    now = time.time()
    return CheckpointMetadata("plan", 5, "checkpoint", False, now, now, MP, ops, files)


def files_per_subtask(plan: RestorePlan, uid: str, p: int) -> list[tuple[str, ...]]:
    task = next(t for (t, _), s in plan.subtasks.items() if uid in s.operators)
    return [plan.subtask(task, i).operators[uid].files for i in range(p)]


@pytest.mark.parametrize(("old", "new"), [(2, 3), (3, 1), (2, 2), (1, 4)])
def test_rescaling_gives_every_key_group_its_old_file_and_every_old_file_one_owner(
        old: int, new: int) -> None:
    before = checkpoint_of(graph(old))
    plan = RestorePlan.build(graph(new), before, "chk-5")
    # keyed: the new owner of each key group reads the old owner's file
    keyed = files_per_subtask(plan, "total", new)
    for kg in range(MP):
        old_owner = next(j for j in range(old) if key_group_range(j, old, MP)[0] <= kg
                         < key_group_range(j, old, MP)[1])
        new_owner = next(i for i in range(new) if key_group_range(i, new, MP)[0] <= kg
                         < key_group_range(i, new, MP)[1])
        assert f"total-{old_owner}.state" in keyed[new_owner]
    for i in range(new):
        r = plan.subtask("total", i).operators["total"]
        assert r.key_groups == key_group_range(i, new, MP)
        assert r.filter_keys == (old != new)  # same ranges: nothing to filter
        assert len(r.files) == sum(inherits(True, j, old, i, new, MP) for j in range(old))
    # not keyed: every old source subtask's positions go to exactly one new subtask
    src = files_per_subtask(plan, "src", new)
    assert Counter(f for fs in src for f in fs) == Counter(f"src-{j}.state" for j in range(old))
    for i in range(new):
        assert all(int(f.split("-")[1].split(".")[0]) % new == i for f in src[i])
        assert plan.subtask("src", i).initial_splits is None  # positions come from state
    # counters: each old subtask's counts are inherited exactly once
    metrics = Counter(f for i in range(new)
                      for f in plan.subtask("total", i).operators["total"].metrics_files)
    assert metrics == Counter(f"total-{j}.state" for j in range(old))


def test_two_to_three_to_one_keeps_every_key_reachable() -> None:
    """Restore a plan's output as the next checkpoint: a key's state survives both steps."""
    g2, g3, g1 = graph(2), graph(3), graph(1)
    plan3 = RestorePlan.build(g3, checkpoint_of(g2), "a")
    plan1 = RestorePlan.build(g1, checkpoint_of(g3), "b")
    for key in range(50):
        kg = key_group(key, MP)
        old = next(j for j in range(2) if key_group_range(j, 2, MP)[0] <= kg
                   < key_group_range(j, 2, MP)[1])
        mid = next(i for i in range(3) if key_group_range(i, 3, MP)[0] <= kg
                   < key_group_range(i, 3, MP)[1])
        assert f"total-{old}.state" in plan3.subtask("total", mid).operators["total"].files
        assert f"total-{mid}.state" in plan1.subtask("total", 0).operators["total"].files
    assert plan1.subtask("total", 0).operators["total"].files == tuple(
        f"total-{j}.state" for j in range(3))


def test_a_fresh_start_deals_out_every_split() -> None:
    g = graph(3)
    src = g.tasks["src"].head.fn
    splits = list(src.splits(3)) * 3  # 9 splits (the same three thrice)
    plan = RestorePlan.build(g, None, splits={"src": splits})
    for i in range(3):
        assert plan.subtask("src", i).initial_splits == [
            (s, src.initial_position(s), False) for s in splits[i::3]]
    assert all(not sub.files for sub in plan.subtasks.values())
    assert plan.checkpoint_id is None


def test_a_source_added_since_the_checkpoint_starts_fresh() -> None:
    plan = RestorePlan.build(graph(2, extra_source=True), checkpoint_of(graph(2)), "chk-5")
    assert plan.subtask("src", 0).initial_splits is None
    fresh = [plan.subtask("new-src", i).initial_splits for i in range(2)]
    assert all(f is not None for f in fresh) and sum(len(f or []) for f in fresh) >= 1
    assert not plan.subtask("new-src", 0).files


def test_a_removed_stateless_operator_is_noted_not_refused() -> None:
    before = checkpoint_of(graph(2, noop=True), stateless=("noop",))
    plan = RestorePlan.build(graph(2), before, "chk-5")
    assert any("'noop'" in n and "held no state" in n for n in plan.notes)


def test_a_removed_stateful_operator_is_refused_with_its_uid() -> None:
    before = checkpoint_of(graph(2, stateful_noop=True))
    with pytest.raises(of.IncompatibleStateError, match=r"operator uid 'noop'.*does not have"):
        RestorePlan.build(graph(2), before, "chk-5")


def test_an_operator_whose_kind_changed_is_refused() -> None:
    before = checkpoint_of(graph(2, stateful_noop=True))  # 'noop' was a reduce
    with pytest.raises(of.IncompatibleStateError, match=r"'noop' was a reduce .* now a map"):
        RestorePlan.build(graph(2, noop=True, stateful_noop=False), before, "chk-5")


def test_another_max_parallelism_is_refused_naming_the_old_one() -> None:
    before = checkpoint_of(graph(2))
    g = graph(2)
    g.max_parallelism = 64
    with pytest.raises(of.IncompatibleStateError, match=r"max_parallelism=128"):
        RestorePlan.build(g, before, "chk-5")


def test_two_input_keyed_state_moves_by_key_group_and_broadcast_state_is_replicated() -> None:
    from onceflow.checkpoint.restore import inherits, is_keyed, is_replicated
    from onceflow.graph.logical import Edge, Kind, Node, Partitioning

    keyed = Node(0, Kind.TWO_INPUT, "join", "join", 2, None,
                 [Edge(1, Partitioning.KEY, len), Edge(2, Partitioning.KEY, len)])
    bcast = Node(0, Kind.TWO_INPUT, "rules", "rules", 2, None,
                 [Edge(1, Partitioning.REBALANCE), Edge(2, Partitioning.BROADCAST)])
    assert is_keyed(keyed) and not is_replicated(keyed)
    assert not is_keyed(bcast) and is_replicated(bcast)
    # 2 -> 3: every new subtask of a broadcast operator restores old subtask 0 only
    assert [[j for j in range(2) if inherits(False, j, 2, i, 3, 128, True)]
            for i in range(3)] == [[0], [0], [0]]


def _source_at_one(p: int) -> JobGraph:
    """A source fixed at parallelism 1 feeding a map at the flow's: chained at p = 1, two
    tasks at p = 3."""
    flow = of.Flow("plan", parallelism=p, max_parallelism=MP)
    (flow.source(of.sources.Range(0, 100), name="src", parallelism=1)
         .map(lambda x: x, name="mk").key_by(lambda x: x % 7)
         .reduce(lambda a, b: a + b, name="total").sink(of.sinks.Discard(), name="out"))
    return build(flow._plan, p, MP)


def test_in_flight_data_that_a_change_of_chaining_would_drop_is_refused() -> None:
    """An unaligned checkpoint's in-flight records belong to task inputs. At p = 3, "mk" is
    a task of its own, with in-flight records at its input; at p = 1 it is chained into
    the source's task, which has no input: the restore must say so, not drop them."""
    import dataclasses

    from onceflow.errors import IncompatibleStateError

    before = checkpoint_of(_source_at_one(3))
    assert {t for t in _source_at_one(3).tasks} != {t for t in _source_at_one(1).tasks}
    unaligned = dataclasses.replace(before, unaligned_subtasks=2, inflight_bytes=4096)
    with pytest.raises(IncompatibleStateError, match=r"operator 'mk' was in task 'mk' and "
                       r"would now be in task 'src'.*take a savepoint"):
        RestorePlan.build(_source_at_one(1), unaligned, "chk-5")
    RestorePlan.build(_source_at_one(3), unaligned, "chk-5")  # same chains: fine
    RestorePlan.build(_source_at_one(1), before, "chk-5")  # nothing in flight: fine
