"""Job graph: the logical plan cut into tasks (chains) and channels.

Chaining rule (Flink's): node B joins A's chain when B's only input is a forward edge from A,
A has no other consumer, and both have the same parallelism. A side output's edge (records
an operator sent to an ``OutputTag``) is never chained: its consumer starts a task.
Everything else is a task boundary. A forward edge between different parallelisms becomes a
rebalance edge.

Placement: subtask ``i`` of every task runs in worker ``i`` (slot sharing), so forward edges
stay inside one process and only key/rebalance edges between different indexes cross
processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from onceflow.errors import ConfigurationError
from onceflow.graph.logical import Kind, LogicalPlan, Node, Partitioning


@dataclass
class TaskInput:
    """One logical input edge of a task: from ``upstream`` task, partitioned as given."""

    upstream: str  # task uid
    partitioning: Partitioning
    key_fn: Any
    target_node: int  # the node in this task the edge feeds (always the head)


@dataclass
class Task:
    uid: str
    name: str
    parallelism: int
    nodes: list[Node]
    inputs: list[TaskInput] = field(default_factory=list)
    # (downstream task uid, partitioning, key function, downstream input number)
    outputs: list[tuple[str, Partitioning, Any, int]] = field(default_factory=list)
    # per entry of ``outputs``: the side output tag it carries (None: the main output)
    output_tags: list[str | None] = field(default_factory=list)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def is_source(self) -> bool:
        return self.head.kind is Kind.SOURCE


@dataclass
class ChannelSpec:
    id: int
    upstream: str
    up_index: int
    downstream: str
    down_index: int
    input_no: int  # which of the downstream task's inputs


@dataclass
class JobGraph:
    tasks: dict[str, Task]
    order: list[str]  # topological
    channels: list[ChannelSpec]
    workers: int
    max_parallelism: int

    def node_by_uid(self) -> dict[str, Node]:
        return {n.uid: n for t in self.tasks.values() for n in t.nodes}


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "op"


def assign_uids(plan: LogicalPlan) -> None:
    """Give every node a stable, unique uid: the user's uid, else derived from its name."""
    seen: set[str] = set()
    for node in plan.nodes:
        explicit = bool(node.uid)
        uid = node.uid or _sanitize(node.name)
        if uid in seen:
            if explicit:
                raise ConfigurationError(
                    f"uid {uid!r} is used by two operators; uids must be unique")
            k = 2
            while f"{uid}-{k}" in seen:
                k += 1
            uid = f"{uid}-{k}"
        seen.add(uid)
        node.uid = uid


def build(plan: LogicalPlan, default_parallelism: int, max_parallelism: int,
          cap: int | None = None) -> JobGraph:
    """``cap``: no task runs with more subtasks than this (an executor that can hold
    only ``cap`` workers, e.g. a Ray cluster that lost a node)."""
    assign_uids(plan)
    par = {n.id: default_parallelism if n.parallelism is None else n.parallelism
           for n in plan.nodes}
    if cap is not None:
        par = {k: min(v, cap) if isinstance(v, int) else v for k, v in par.items()}
    for n in plan.nodes:
        p = par[n.id]
        if not isinstance(p, int) or p < 1:
            raise ConfigurationError(f"operator {n.name!r}: parallelism must be >= 1, got {p}")
        if p > max_parallelism:
            raise ConfigurationError(
                f"operator {n.name!r}: parallelism {p} exceeds max_parallelism {max_parallelism}; "
                "lower the parallelism or raise max_parallelism (fixed once a flow has state)"
            )
        if n.kind is not Kind.SINK and not plan.consumers(n.id):
            raise ConfigurationError(
                f"operator {n.name!r} has no consumer; end every stream with .sink(...)"
            )
    if not any(n.kind is Kind.SOURCE for n in plan.nodes):
        raise ConfigurationError("the flow has no source; add one with flow.source(...)")

    consumers = {n.id: plan.consumers(n.id) for n in plan.nodes}

    def chainable(n: Node) -> bool:
        if len(n.inputs) != 1 or n.kind is Kind.SOURCE:
            return False
        e = n.inputs[0]
        up = plan.nodes[e.source]
        return (
            e.partitioning is Partitioning.FORWARD
            and e.tag is None
            and par[up.id] == par[n.id]
            and len(consumers[up.id]) == 1
        )

    task_of: dict[int, str] = {}
    tasks: dict[str, Task] = {}
    order: list[str] = []
    for n in plan.nodes:  # nodes are created in topological order
        if chainable(n):
            t = tasks[task_of[n.inputs[0].source]]
            t.nodes.append(n)
            task_of[n.id] = t.uid
            continue
        t = Task(uid=n.uid, name=n.name, parallelism=par[n.id], nodes=[n])
        tasks[t.uid] = t
        order.append(t.uid)
        task_of[n.id] = t.uid
        for e in n.inputs:
            up_task = task_of[e.source]
            part = e.partitioning
            if part is Partitioning.FORWARD and tasks[up_task].parallelism != t.parallelism:
                part = Partitioning.REBALANCE
            t.inputs.append(TaskInput(up_task, part, e.key_fn, n.id))
            tasks[up_task].outputs.append((t.uid, part, e.key_fn, len(t.inputs) - 1))
            tasks[up_task].output_tags.append(e.tag)
    for t in tasks.values():
        t.name = " -> ".join(n.name for n in t.nodes)

    channels: list[ChannelSpec] = []
    for tuid in order:
        t = tasks[tuid]
        for input_no, inp in enumerate(t.inputs):
            up = tasks[inp.upstream]
            for j in range(t.parallelism):
                if inp.partitioning is Partitioning.FORWARD:
                    senders = [j]
                else:
                    senders = list(range(up.parallelism))
                for i in senders:
                    channels.append(ChannelSpec(len(channels), up.uid, i, t.uid, j, input_no))
    workers = max(t.parallelism for t in tasks.values())
    return JobGraph(tasks, order, channels, workers, max_parallelism)
