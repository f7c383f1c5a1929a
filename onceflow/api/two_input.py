"""Two-input streams: ``a.connect(b)``, and broadcast state.

``a.connect(b)`` gives :class:`ConnectedStreams`; ``.process(fn)`` runs a
:class:`CoProcessFunction` whose ``process_element1`` sees the records of ``a`` and
``process_element2`` those of ``b``. When both sides are keyed (``a.key_by(f).connect(
b.key_by(g))``, or ``a.connect(b).key_by(f, g)``), records with equal keys meet in one
subtask, and the function has keyed state and timers (both time domains) shared by the two
sides. The operator's watermark is the minimum of its two inputs' watermarks, and a
checkpoint barrier is aligned over both inputs.

Broadcast state: ``rules.broadcast(descriptor)`` sends every record of ``rules`` to every
subtask of the operator it is connected to. ``events.key_by(f).connect(broadcast).process(
fn)`` runs a :class:`KeyedBroadcastProcessFunction` (``events.connect(broadcast)`` without
keys a :class:`BroadcastProcessFunction`): ``process_broadcast_element`` may
change the broadcast state (``ctx.get_broadcast_state(descriptor)``, a dictionary),
``process_element`` may only read it. Every subtask holds the same broadcast state (so the
broadcast function must change it the same way on every subtask: depend only on the
broadcast element and the state); it is checkpointed as operator state and restored on
every subtask at any new parallelism.

Example (runs as a doctest)::

    >>> import tempfile, onceflow as of
    >>> class Tag(of.CoProcessFunction):
    ...     def open(self, ctx):
    ...         self.name = ctx.value_state("name")
    ...         self.waiting = ctx.list_state("waiting")
    ...     def process_element1(self, value, ctx):      # (user id, name)
    ...         self.name.update(value[1])
    ...         out = [(value[1], page) for page in self.waiting.get()]
    ...         self.waiting.clear()
    ...         return out
    ...     def process_element2(self, value, ctx):      # (user id, page)
    ...         if self.name.value() is None:
    ...             self.waiting.add(value[1])
    ...             return None
    ...         return [(self.name.value(), value[1])]
    >>> flow = of.Flow("connect-doc", parallelism=2)
    >>> names = flow.source(of.sources.Collection([(1, "ann"), (2, "bob")]))
    >>> pages = flow.source(of.sources.Collection([(1, "home"), (2, "cart"), (1, "faq")]))
    >>> out = tempfile.mkdtemp()
    >>> _ = (names.key_by(lambda r: r[0]).connect(pages.key_by(lambda r: r[0]))
    ...          .process(Tag()).sink(of.sinks.FileSink(out)))
    >>> _ = flow.run()
    >>> sorted(map(tuple, of.sinks.read_committed(out)))
    [('ann', 'faq'), ('ann', 'home'), ('bob', 'cart')]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onceflow.api.functions import ProcessContext, RuntimeContext
from onceflow.errors import ConfigurationError
from onceflow.graph.logical import Edge, Kind, Node, Partitioning

if TYPE_CHECKING:
    from onceflow.api.flow import DataStream, Flow


class CoProcessFunction(ABC):
    """A function over two connected streams. ``process_element1`` gets the records of the
    first stream, ``process_element2`` those of the second; both return an iterable of
    output records (or None). With keyed inputs: keyed state (``ctx.value_state`` ...) and
    timers, shared by both sides, and ``on_timer``."""

    def open(self, ctx: RuntimeContext) -> None:  # noqa: B027 - optional hook
        """Called once per subtask before any record; create state handles here."""

    @abstractmethod
    def process_element1(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None: ...

    @abstractmethod
    def process_element2(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None: ...

    def on_timer(self, timestamp: float, ctx: ProcessContext) -> Iterable[Any] | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the subtask ends normally."""


@dataclass(frozen=True)
class MapStateDescriptor:
    """Names one broadcast state (a dictionary): ``stream.broadcast(descriptor)`` and
    ``ctx.get_broadcast_state(descriptor)``."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(
                f"MapStateDescriptor(name) takes a non-empty string, got {self.name!r}")


class BroadcastState:
    """The broadcast state of one descriptor: a dictionary, the same on every subtask.
    Read-only in ``process_element``; writable in ``process_broadcast_element``."""

    __slots__ = ("_data", "_name", "_op", "_writable")

    def __init__(self, name: str, data: dict[Any, Any], writable: bool,
                 operator: str | None = None) -> None:
        self._name, self._data, self._writable, self._op = name, data, writable, operator

    def _check(self) -> None:
        if not self._writable:
            where = f"operator {self._op!r}: " if self._op is not None else ""
            raise ConfigurationError(
                f"{where}broadcast state {self._name!r} is read-only in process_element; "
                "change it in process_broadcast_element, so every subtask changes it the "
                "same way")

    def get(self, key: Any, default: Any = None) -> Any:
        return self._data.get(key, default)

    def contains(self, key: Any) -> bool:
        return key in self._data

    def __contains__(self, key: Any) -> bool:
        return key in self._data

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[Any]:
        return list(self._data)

    def values(self) -> list[Any]:
        return list(self._data.values())

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._data.items())

    def put(self, key: Any, value: Any) -> None:
        self._check()
        self._data[key] = value

    def remove(self, key: Any) -> None:
        self._check()
        self._data.pop(key, None)

    def clear(self) -> None:
        self._check()
        self._data.clear()


class BroadcastContext(ProcessContext):
    """What a :class:`KeyedBroadcastProcessFunction` gets: a process context plus
    ``get_broadcast_state``."""

    @abstractmethod
    def get_broadcast_state(self, descriptor: MapStateDescriptor) -> BroadcastState: ...


class KeyedBroadcastProcessFunction(ABC):
    """A keyed stream connected to a broadcast stream. ``process_element`` gets the keyed
    records (keyed state, timers, read-only broadcast state); ``process_broadcast_element``
    gets every broadcast record on every subtask and may change the broadcast state (not
    keyed state: there is no current key)."""

    def open(self, ctx: RuntimeContext) -> None:  # noqa: B027 - optional hook
        """Called once per subtask before any record; create state handles here."""

    @abstractmethod
    def process_element(self, value: Any, ctx: BroadcastContext) -> Iterable[Any] | None: ...

    @abstractmethod
    def process_broadcast_element(self, value: Any, ctx: BroadcastContext
                                  ) -> Iterable[Any] | None: ...

    def on_timer(self, timestamp: float, ctx: BroadcastContext) -> Iterable[Any] | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the subtask ends normally."""


class BroadcastProcessFunction(ABC):
    """A (non-keyed) stream connected to a broadcast stream: ``process_element`` gets the
    stream's records (read-only broadcast state, no keyed state or timers);
    ``process_broadcast_element`` gets every broadcast record on every subtask and may
    change the broadcast state."""

    def open(self, ctx: RuntimeContext) -> None:  # noqa: B027 - optional hook
        """Called once per subtask before any record."""

    @abstractmethod
    def process_element(self, value: Any, ctx: BroadcastContext) -> Iterable[Any] | None: ...

    @abstractmethod
    def process_broadcast_element(self, value: Any, ctx: BroadcastContext
                                  ) -> Iterable[Any] | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the subtask ends normally."""


class TwoInputSpec:
    """What a two-input node of the plan holds: it builds the operator in the worker."""

    what = "two-input operator"

    def build(self, node: Node) -> Any:
        raise NotImplementedError


@dataclass
class CoProcessSpec(TwoInputSpec):
    function: CoProcessFunction

    def build(self, node: Node) -> Any:
        from onceflow.runtime.two_input import CoProcessOp, UnkeyedCoProcessOp

        if node.inputs[0].partitioning is Partitioning.KEY:
            return CoProcessOp(node, self.function)
        return UnkeyedCoProcessOp(node, self.function)


@dataclass
class BroadcastSpec(TwoInputSpec):
    function: KeyedBroadcastProcessFunction | BroadcastProcessFunction
    descriptors: tuple[MapStateDescriptor, ...]

    def build(self, node: Node) -> Any:
        from onceflow.runtime.two_input import BroadcastProcessOp, UnkeyedBroadcastProcessOp

        if isinstance(self.function, KeyedBroadcastProcessFunction):
            return BroadcastProcessOp(node, self.function, self.descriptors)
        return UnkeyedBroadcastProcessOp(node, self.function, self.descriptors)


def two_input_node(flow: Flow, spec: TwoInputSpec, edges: list[Edge], name: str | None,
                   parallelism: int | None, uid: str | None) -> Node:
    return flow._plan.add(Kind.TWO_INPUT, name, uid, parallelism, spec, edges)


class BroadcastStream:
    """A stream whose every record goes to every subtask of the operator it is connected
    to (``stream.broadcast(descriptor)``); connect a keyed stream to it."""

    def __init__(self, stream: DataStream, descriptors: tuple[MapStateDescriptor, ...]) -> None:
        self._stream = stream
        self._descriptors = descriptors


def _key_fn_of(stream: DataStream) -> Callable[[Any], Any] | None:
    return getattr(stream, "_key", None)


class ConnectedStreams:
    """Two streams connected for one two-input operator (``a.connect(b)``)."""

    def __init__(self, first: DataStream, second: DataStream,
                 keys: tuple[Callable[[Any], Any], Callable[[Any], Any]] | None = None) -> None:
        self._first, self._second = first, second
        k1, k2 = _key_fn_of(first), _key_fn_of(second)
        if keys is None and (k1 is None) != (k2 is None):
            raise ConfigurationError(
                "connect(): either both streams are keyed (key_by) or neither; key the other "
                "one too, or use connect(...).key_by(key1, key2)")
        self._keys = keys if keys is not None else (
            (k1, k2) if k1 is not None and k2 is not None else None)

    def key_by(self, key1: Callable[[Any], Any], key2: Callable[[Any], Any]
               ) -> ConnectedStreams:
        """Key both sides: records of the first stream by ``key1``, of the second by
        ``key2``; equal keys meet in one subtask and share keyed state and timers."""
        for k in (key1, key2):
            if not callable(k):
                raise ConfigurationError(
                    f"ConnectedStreams.key_by() takes two functions, got {type(k).__name__}")
        return ConnectedStreams(self._first, self._second, (key1, key2))

    def _edges(self) -> list[Edge]:
        if self._keys is None:
            return [*self._first._edge(), *self._second._edge()]
        return [Edge(self._first._node.id, Partitioning.KEY, self._keys[0]),
                Edge(self._second._node.id, Partitioning.KEY, self._keys[1])]

    def process(self, fn: CoProcessFunction, *, name: str | None = None,
                parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """Run a :class:`CoProcessFunction` over both streams."""
        from onceflow.api.flow import DataStream

        if not isinstance(fn, CoProcessFunction):
            raise ConfigurationError(
                f"ConnectedStreams.process() takes a CoProcessFunction, got {type(fn).__name__}")
        node = two_input_node(self._first._flow, CoProcessSpec(fn), self._edges(),
                              name or "co_process", parallelism, uid)
        return DataStream(self._first._flow, node)


class BroadcastConnectedStream:
    """A stream (keyed or not) connected to a broadcast stream."""

    def __init__(self, keyed: DataStream, broadcast: BroadcastStream) -> None:
        self._keyed, self._broadcast = keyed, broadcast

    def process(self, fn: KeyedBroadcastProcessFunction | BroadcastProcessFunction, *,
                name: str | None = None, parallelism: int | None = None,
                uid: str | None = None) -> DataStream:
        """Run a :class:`KeyedBroadcastProcessFunction` (keyed stream) or a
        :class:`BroadcastProcessFunction` (non-keyed stream)."""
        from onceflow.api.flow import DataStream

        key = _key_fn_of(self._keyed)
        want = KeyedBroadcastProcessFunction if key is not None else BroadcastProcessFunction
        if not isinstance(fn, want):
            raise ConfigurationError(
                f"process() on a {'keyed ' if key is not None else ''}stream connected to a "
                f"broadcast stream takes a {want.__name__}, got {type(fn).__name__}")
        first = (Edge(self._keyed._node.id, Partitioning.KEY, key) if key is not None
                 else self._keyed._edge()[0])
        edges = [first, Edge(self._broadcast._stream._node.id, Partitioning.BROADCAST)]
        spec = BroadcastSpec(fn, self._broadcast._descriptors)
        node = two_input_node(self._keyed._flow, spec, edges, name or "broadcast_process",
                              parallelism, uid)
        return DataStream(self._keyed._flow, node)


def connect(first: DataStream, other: Any) -> ConnectedStreams | BroadcastConnectedStream:
    from onceflow.api.flow import DataStream

    if isinstance(other, BroadcastStream):
        if other._stream._flow is not first._flow:
            raise ConfigurationError("connect() takes a stream of the same Flow")
        return BroadcastConnectedStream(first, other)
    if not isinstance(other, DataStream):
        raise ConfigurationError(
            f"connect() takes a DataStream or BroadcastStream of the same Flow, got "
            f"{type(other).__name__}")
    if other._flow is not first._flow:
        raise ConfigurationError(
            f"connect() takes a stream of the same Flow: this one belongs to Flow "
            f"{other._flow.name!r}, not {first._flow.name!r}")
    return ConnectedStreams(first, other)


def broadcast(stream: DataStream, descriptors: tuple[MapStateDescriptor, ...]) -> BroadcastStream:
    if not descriptors:
        raise ConfigurationError(
            "broadcast() takes one or more of.MapStateDescriptor naming the broadcast state")
    for d in descriptors:
        if not isinstance(d, MapStateDescriptor):
            raise ConfigurationError(
                f"broadcast() takes of.MapStateDescriptor objects, got {type(d).__name__}")
    return BroadcastStream(stream, descriptors)
