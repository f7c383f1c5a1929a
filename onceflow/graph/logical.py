"""The logical plan: what the user's ``Flow`` describes, before any process exists.

Nodes are operators (a source, a function, a keyed operator, a sink); edges say how records
move from one node to the next (forward, by key, rebalance). Everything here is plain data so
that the plan can be inspected, validated and turned into a :mod:`job graph
<onceflow.graph.jobgraph>`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


class Partitioning(enum.Enum):
    FORWARD = "forward"
    KEY = "key"
    REBALANCE = "rebalance"
    BROADCAST = "broadcast"  # every record to every subtask (broadcast state)


class Kind(enum.Enum):
    SOURCE = "source"
    MAP = "map"
    FILTER = "filter"
    FLAT_MAP = "flat_map"
    UNION = "union"
    ASSIGN = "assign_timestamps"  # assign_timestamps_and_watermarks
    SIDE_OUTPUT = "side_output"  # the records an operator sent to one OutputTag
    REDUCE = "reduce"
    PROCESS = "process"
    WINDOW = "window"  # keyed window (fn: the window operator's spec)
    WINDOW_ALL = "window_all"  # window over the whole stream (parallelism 1)
    TWO_INPUT = "two_input"  # connect / joins (fn: a TwoInputSpec that builds the operator)
    SINK = "sink"

    @property
    def keyed(self) -> bool:
        return self in (Kind.REDUCE, Kind.PROCESS, Kind.WINDOW, Kind.WINDOW_ALL)


@dataclass
class Edge:
    source: int  # node id
    partitioning: Partitioning
    key_fn: Callable[[Any], Any] | None = None
    tag: str | None = None  # a side output's tag: the edge carries those records only


@dataclass
class Node:
    id: int
    kind: Kind
    name: str
    uid: str
    parallelism: int | None  # None: the flow's default
    fn: Any  # the user function, Source or Sink object
    inputs: list[Edge] = field(default_factory=list)
    watermarks: Any = None  # a source's WatermarkStrategy (per-split watermarks)

    def __repr__(self) -> str:
        return f"Node({self.id}, {self.kind.value}, {self.name!r})"


@dataclass
class LogicalPlan:
    nodes: list[Node] = field(default_factory=list)

    def add(self, kind: Kind, name: str | None, uid: str | None, parallelism: int | None,
            fn: Any, inputs: list[Edge]) -> Node:
        nid = len(self.nodes)
        base = name or f"{kind.value}-{nid}"
        node = Node(nid, kind, base, uid or "", parallelism, fn, inputs)
        self.nodes.append(node)
        return node

    def consumers(self, node_id: int) -> list[Node]:
        return [n for n in self.nodes if any(e.source == node_id for e in n.inputs)]

    @contextmanager
    def all_or_nothing(self) -> Iterator[None]:
        """Nodes added in the block are taken out again if it raises: an operator built
        of several nodes (a window join) leaves none behind when a later step refuses
        (nodes are only ever appended, so cutting the list restores the plan)."""
        n = len(self.nodes)
        try:
            yield
        except BaseException:
            del self.nodes[n:]
            raise
