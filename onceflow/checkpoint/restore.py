"""The restore plan: what every subtask of a new attempt starts from.

``RestorePlan.build(graph, checkpoint)`` turns a job graph and the chosen checkpoint or
savepoint (its metadata; None for a fresh start) into

1. the **compatibility verdict**: the checkpoint's ``max_parallelism`` must be the flow's;
   every operator that held state must still exist (by uid) with the same kind; an operator
   that is gone and held no state is dropped with a note. A refusal raises
   :class:`~onceflow.errors.IncompatibleStateError` naming the operator and what to do;
2. the **initial splits** of every source the checkpoint knows nothing about (all of them
   on a fresh start; a source added since, on a restore), dealt out round-robin;
3. for each new subtask of every operator, **the state files it restores** and its
   key-group range. The rule, written only here (:func:`inherits`): a keyed operator's
   subtask reads every old subtask whose key-group range overlaps its own (and filters keys
   unless the ranges are equal); any other operator's subtask ``i`` of parallelism ``p``
   reads the old subtasks ``j`` with ``j % p == i`` (so every old subtask's state — source
   positions, pending sink transactions — goes to exactly one new subtask). Operator
   counters are inherited by the same ``j % p == i`` rule, so totals survive a rescale.

Workers only execute the plan: read the listed files, hand each operator its part
(``TaskRunner.open``). Nothing here starts a process or reads a state file, so it is
unit-tested directly (``tests/test_restore_plan.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from onceflow.checkpoint.metadata import CheckpointMetadata, OperatorEntry, StateFile, SubtaskFile
from onceflow.errors import IncompatibleStateError
from onceflow.graph.jobgraph import JobGraph, Task
from onceflow.graph.keygroups import key_group_range
from onceflow.graph.logical import Kind, Node, Partitioning

log = logging.getLogger("onceflow.checkpoint")

Split = tuple[Any, Any, bool]  # (split, position, finished)


def is_keyed(node: Node) -> bool:
    """Whether the operator's state is keyed (restored by key group): keyed kinds, and a
    two-input operator with a keyed input (connected keyed streams, joins, keyed
    broadcast)."""
    return node.kind.keyed or (node.kind is Kind.TWO_INPUT and any(
        e.partitioning is Partitioning.KEY for e in node.inputs))


def is_replicated(node: Node) -> bool:
    """Whether every subtask holds the same state (broadcast state): a new subtask then
    restores old subtask 0's, whatever the parallelisms."""
    return any(e.partitioning is Partitioning.BROADCAST for e in node.inputs)


def inherits(keyed: bool, old: int, old_parallelism: int, new: int, new_parallelism: int,
             max_parallelism: int, replicated: bool = False) -> bool:
    """Whether new subtask ``new`` restores the state old subtask ``old`` wrote."""
    if replicated and not keyed:
        return old == 0
    if keyed:
        olo, ohi = key_group_range(old, old_parallelism, max_parallelism)
        lo, hi = key_group_range(new, new_parallelism, max_parallelism)
        return olo < hi and lo < ohi
    return old % new_parallelism == new


@dataclass(frozen=True)
class OperatorRestore:
    """What one operator subtask restores: the state in ``files`` (one per old subtask),
    keeping only its key groups when ``filter_keys``; counters from ``metrics_files``."""

    uid: str
    keyed: bool
    key_groups: tuple[int, int]
    files: tuple[str, ...] = ()
    filter_keys: bool = False
    metrics_files: tuple[str, ...] = ()
    old_subtasks: tuple[int, ...] = ()  # the old subtask of each of ``files``
    old_parallelism: int = 0


@dataclass(frozen=True)
class SubtaskRestore:
    """What subtask ``subtask`` of task ``task`` starts from."""

    task: str
    subtask: int
    operators: dict[str, OperatorRestore] = field(default_factory=dict)
    initial_splits: list[Split] | None = None  # a source that starts fresh

    @property
    def files(self) -> list[str]:
        """Every state file the subtask reads."""
        return sorted({f for op in self.operators.values()
                       for f in (*op.files, *op.metrics_files)})

    def inherited(self) -> list[tuple[str, int, int]]:
        """(file, old subtask, old parallelism) of every file an operator restores state
        from (what in-flight data of an unaligned checkpoint is replayed from)."""
        return sorted({(f, j, op.old_parallelism) for op in self.operators.values()
                       for f, j in zip(op.files, op.old_subtasks, strict=True)})


@dataclass(frozen=True)
class RestorePlan:
    checkpoint_id: int | None
    subtasks: dict[tuple[str, int], SubtaskRestore]
    notes: tuple[str, ...] = ()  # what the verdict let pass (e.g. dropped stateless ops)

    def subtask(self, task: str, index: int) -> SubtaskRestore:
        return self.subtasks[(task, index)]

    @staticmethod
    def build(graph: JobGraph, meta: CheckpointMetadata | None, where: str = "",
              splits: dict[str, list[Any]] | None = None) -> RestorePlan:
        """The plan for ``graph`` restoring ``meta`` (the checkpoint at ``where``; None: a
        fresh start). ``splits``: each source task's splits (default: asked of the source,
        ``source.splits(parallelism)``)."""
        notes = check_compatible(graph, meta, where) if meta is not None else []
        known = meta.operators if meta is not None else {}
        mp = graph.max_parallelism
        subtasks: dict[tuple[str, int], SubtaskRestore] = {}
        for t in graph.tasks.values():
            p = t.parallelism
            fresh: list[list[Split]] | None = None
            if t.is_source and t.head.uid not in known:
                src = t.head.fn
                all_splits = (splits or {}).get(t.uid)
                if all_splits is None:
                    all_splits = list(src.splits(p))
                fresh = [[] for _ in range(p)]
                for k, s in enumerate(all_splits):
                    fresh[k % p].append((s, src.initial_position(s), False))
            for i in range(p):
                ops: dict[str, OperatorRestore] = {}
                kg = key_group_range(i, p, mp)
                for n in t.nodes:
                    keyed = is_keyed(n)
                    replicated = is_replicated(n)
                    entry = known.get(n.uid)
                    if entry is None:
                        ops[n.uid] = OperatorRestore(n.uid, keyed, kg)
                        continue
                    pj = entry.parallelism
                    mine = [f for f in sorted(entry.files, key=lambda f: f.subtask)
                            if inherits(keyed, f.subtask, pj, i, p, mp, replicated)]
                    files = tuple(f.file for f in mine)
                    # exactly its own key groups: nothing to filter
                    exact = all(key_group_range(f.subtask, pj, mp) == kg for f in mine)
                    metrics = tuple(f.file for f in entry.files if f.subtask % p == i)
                    ops[n.uid] = OperatorRestore(n.uid, keyed, kg, files,
                                                 keyed and not exact, metrics,
                                                 tuple(f.subtask for f in mine), pj)
                subtasks[(t.uid, i)] = SubtaskRestore(t.uid, i, ops,
                                                      fresh[i] if fresh is not None else None)
        return RestorePlan(meta.checkpoint_id if meta is not None else None, subtasks,
                           tuple(notes))


def plan_for_states(task: Task, subtask: int, max_parallelism: int,
                    restored: list[tuple[int, int, dict[str, Any]]],
                    initial_splits: list[Split] | None = None
                    ) -> tuple[SubtaskRestore, dict[str, dict[str, Any]]]:
    """For tests that drive one ``TaskRunner`` by hand: the plan of subtask ``subtask`` of
    ``task`` restoring in-memory states ``restored`` — ``(old subtask, old parallelism,
    state)`` of old subtasks of this task — and the states by file name, as
    ``TaskRunner.open`` takes them. The plan comes from :meth:`RestorePlan.build`, so the
    one overlap rule applies."""
    now = 0.0
    states = {f"old-{j}.state": st for j, _, st in restored}
    ops = {}
    for n in task.nodes:
        held = [(j, pj) for j, pj, st in restored if n.uid in st["ops"]]
        if held:
            ops[n.uid] = OperatorEntry(n.uid, task.uid, held[0][1], None, True,
                                       tuple(SubtaskFile(j, f"old-{j}.state") for j, _ in held))
    files = {f: StateFile(0, 0) for f in states}
    meta = CheckpointMetadata("", 0, "checkpoint", False, now, now, max_parallelism, ops, files)
    graph = JobGraph({task.uid: task}, [task.uid], [], task.parallelism, max_parallelism)
    plan = RestorePlan.build(graph, meta, "(in memory)", splits={task.uid: []})
    sub = plan.subtask(task.uid, subtask)
    return SubtaskRestore(sub.task, sub.subtask, sub.operators, initial_splits), states


def check_compatible(graph: JobGraph, meta: CheckpointMetadata, where: str) -> list[str]:
    """Raise IncompatibleStateError when ``meta`` cannot be restored into ``graph``; else
    the notes of what was let pass."""
    mp = meta.max_parallelism
    if mp != graph.max_parallelism:
        raise IncompatibleStateError(
            f"checkpoint {where} was taken with max_parallelism={mp}, this flow has "
            f"max_parallelism={graph.max_parallelism}; max_parallelism cannot change once "
            f"a flow has state: set Flow(..., max_parallelism={mp})"
        )
    nodes = graph.node_by_uid()
    notes: list[str] = []
    for uid, entry in meta.operators.items():
        node = nodes.get(uid)
        if node is None and not entry.stateful:
            notes.append(f"checkpoint {where}: operator uid {uid!r} is no longer in the flow; "
                         "it held no state, so nothing is lost")
            continue
        if node is None:
            raise IncompatibleStateError(
                f"checkpoint {where} holds state of operator uid {uid!r}, which this "
                "flow does not have; keep the operator's name (or pass uid=...) so the "
                "state finds it again, or start without restore"
            )
        if entry.kind is not None and entry.kind != node.kind.value:
            raise IncompatibleStateError(
                f"checkpoint {where}: operator uid {uid!r} was a {entry.kind} operator and "
                f"is now a {node.kind.value}; give the new operator another uid"
            )
    if meta.inflight_bytes:
        _check_inflight_has_a_place(graph, meta, where)
    return notes


def _check_inflight_has_a_place(graph: JobGraph, meta: CheckpointMetadata, where: str) -> None:
    """An unaligned checkpoint's in-flight data belongs to the inputs of tasks (their first
    operator) and names the upstream tasks it came from: it can only be replayed into the
    same chains. Chaining follows parallelism (operators of equal parallelism chain), so a
    rescale can move an operator into another task; its in-flight data would then have no
    input to go to, and be lost. Refuse that restore, saying how to rescale instead."""
    task_now = {n.uid: t.uid for t in graph.tasks.values() for n in t.nodes}
    task_then = {uid: entry.task for uid, entry in meta.operators.items()}
    if task_now == task_then:
        return
    moved = sorted(uid for uid, t in task_then.items() if task_now.get(uid, t) != t)
    what = (f"operator {moved[0]!r} was in task {task_then[moved[0]]!r} and would now be "
            f"in task {task_now[moved[0]]!r}" if moved
            else "operators were added or removed")
    raise IncompatibleStateError(
        f"checkpoint {where} is an unaligned checkpoint holding {meta.inflight_bytes:,} "
        f"bytes of in-flight records, and this flow chains its operators into tasks "
        f"differently ({what}; operators of equal parallelism chain, so a change of "
        "parallelism can change the chains): those records would have nowhere to go. "
        "Restore it with the parallelism it was taken with, take a savepoint (savepoints "
        "are always aligned) and restore that with the new parallelism")
