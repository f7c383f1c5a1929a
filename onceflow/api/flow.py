"""The dataflow API: ``Flow``, ``DataStream`` and ``KeyedStream``.

These classes only *describe* a graph (a :class:`~onceflow.graph.logical.LogicalPlan`);
``Flow.run()`` hands it to the runtime. Nothing here knows about processes or barriers.

Example (runs as a doctest)::

    >>> import onceflow as of
    >>> flow = of.Flow("doc-example", parallelism=1)
    >>> sink = of.sinks.Discard()
    >>> (flow.source(of.sources.Collection(["a b", "b"]), name="lines")
    ...      .flat_map(str.split, name="words")
    ...      .key_by(lambda w: w)
    ...      .reduce(lambda a, b: a + b, name="concat")
    ...      .sink(sink, name="out"))
    <onceflow.api.flow.SinkHandle 'out'>
    >>> result = flow.run()
    >>> result.records_in("out")
    3
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from onceflow.api.config import CheckpointConfig, RestartStrategy, exponential_backoff
from onceflow.api.functions import KeyedProcessFunction, OutputTag
from onceflow.api.result import JobResult
from onceflow.api.watermarks import WatermarkStrategy
from onceflow.checkpoint.s3 import S3Storage
from onceflow.connectors.sinks import Sink
from onceflow.connectors.sources import Source
from onceflow.connectors.two_phase import TwoPhaseCommitSink, WriteAheadSink
from onceflow.errors import ConfigurationError
from onceflow.graph.logical import Edge, Kind, LogicalPlan, Node, Partitioning
from onceflow.state.memory import MemoryBackend

if TYPE_CHECKING:
    from onceflow.api.client import JobClient
    from onceflow.api.windowing import WindowedStream
    from onceflow.executors import Executor
    from onceflow.runtime.driver import JobDriver
    from onceflow.state.rocksdb import RocksDBBackend

    StateBackend = MemoryBackend | RocksDBBackend


class Flow:
    """A streaming job: sources, operators and sinks, and how it checkpoints.

    ``parallelism`` is the default for every operator; ``max_parallelism`` is the number of
    key groups (fixed once the flow has state). ``batch_size`` records travel together
    between operators; ``channel_capacity`` batches may wait in a channel before its
    producer is held back."""

    def __init__(self, name: str, *, parallelism: int = 1, max_parallelism: int = 128,
                 batch_size: int = 1024, channel_capacity: int = 4,
                 restart_strategy: RestartStrategy | None = None,
                 state_backend: StateBackend | None = None) -> None:
        self.name = name
        self.parallelism = parallelism
        self.max_parallelism = max_parallelism
        self.batch_size = batch_size
        self.channel_capacity = channel_capacity
        self.restart_strategy = restart_strategy or exponential_backoff()
        self.state_backend: StateBackend = state_backend or MemoryBackend()
        self.checkpoint_config: CheckpointConfig | None = None
        self._plan = LogicalPlan()

    # --- configuration -------------------------------------------------------------------
    def enable_checkpointing(self, interval: float,
                             storage: str | os.PathLike[str] | S3Storage, *,
                             mode: str = "exactly_once", timeout: float = 600.0,
                             min_pause: float = 0.0, max_concurrent: int = 1,
                             retained: int = 1, tolerable_failures: int = 0,
                             incremental: bool = False, unaligned: bool = False,
                             aligned_timeout: float | None = None,
                             buffer_time: float | None = None) -> Flow:
        """Checkpoint every ``interval`` seconds into directory ``storage`` (or into an
        S3-compatible object store: ``"s3://bucket/prefix"`` or an :class:`onceflow.S3Storage`;
        see docs/storage.md).

        ``mode`` is ``"exactly_once"`` (aligned barriers) or ``"at_least_once"`` (no
        alignment: lower latency, replays may duplicate state updates). A checkpoint not
        complete within ``timeout`` seconds is aborted; ``min_pause`` seconds separate the
        end of one from the start of the next; ``max_concurrent`` may be in flight; the
        newest ``retained`` complete checkpoints are kept; more than ``tolerable_failures``
        failed checkpoints in a row fail the job. ``incremental``: each checkpoint writes only
        what changed since the previous one (RocksDB: new SST files; memory: a changelog of
        changed keys) and references the rest.

        ``unaligned=True``: exactly-once checkpoints whose barriers overtake the records
        queued before them (Flink's unaligned checkpoints): a checkpoint takes about as long
        under backpressure as without, and the overtaken records are stored with it and
        replayed on restore. ``aligned_timeout=s``: start every checkpoint aligned and switch
        a channel to unaligned when its barrier has not arrived within ``s`` seconds (quiet
        jobs keep small checkpoints). Savepoints and the final checkpoint are always aligned.
        ``buffer_time=s``: size every channel's buffer to hold about ``s`` seconds of its
        consumer's throughput (at least one batch, at most ``channel_capacity``; a batch that
        takes longer is taken in parts), so barriers and in-flight data stay small under
        backpressure (Flink's buffer debloating). Unaligned checkpoints default to 0.1 s;
        ``buffer_time=0`` turns it off.
        Settings are checked by ``run()``."""
        self.checkpoint_config = CheckpointConfig(
            interval=interval,
            storage=storage if storage is None or isinstance(storage, S3Storage | str)
            else os.fspath(storage),
            mode=mode, timeout=timeout, min_pause=min_pause, max_concurrent=max_concurrent,
            retained=retained, tolerable_failures=tolerable_failures, incremental=incremental,
            unaligned=unaligned, aligned_timeout=aligned_timeout, buffer_time=buffer_time)
        return self

    def set_restart_strategy(self, strategy: RestartStrategy) -> Flow:
        """How to react to failures: ``of.restart.fixed_delay(...)``,
        ``of.restart.exponential_backoff(...)`` (default) or ``of.restart.no_restart()``."""
        self.restart_strategy = strategy
        return self

    # --- building ------------------------------------------------------------------------
    def source(self, source: Source, *, name: str | None = None, parallelism: int | None = None,
               uid: str | None = None,
               watermarks: WatermarkStrategy | None = None) -> DataStream:
        """A stream read from ``source``. ``watermarks``: a
        :class:`~onceflow.WatermarkStrategy` gives the records event timestamps and makes
        the source generate watermarks per split (per file, per Kafka partition), emitting
        the minimum over its splits."""
        if not isinstance(source, Source):
            raise ConfigurationError(
                f"flow.source() takes an onceflow Source (e.g. of.sources.Range), got "
                f"{type(source).__name__}")
        node = self._plan.add(Kind.SOURCE, name, uid, parallelism, source, [])
        if watermarks is not None:
            if not isinstance(watermarks, WatermarkStrategy):
                raise ConfigurationError(
                    f"flow.source({node.name!r}): watermarks= takes an of.WatermarkStrategy, "
                    f"got {type(watermarks).__name__}")
            watermarks.validate(f"source {node.name!r}")
            node.watermarks = watermarks
        return DataStream(self, node)

    # --- running -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every setting; raises ConfigurationError naming what to change."""
        def bad(msg: str) -> ConfigurationError:
            return ConfigurationError(f"Flow({self.name!r}): {msg}")

        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("name must be a non-empty string")
        if not isinstance(self.max_parallelism, int) or not 1 <= self.max_parallelism <= 32768:
            raise bad(f"max_parallelism must be an integer in 1..32768, "
                      f"got {self.max_parallelism!r}")
        if not isinstance(self.parallelism, int) or self.parallelism < 1:
            raise bad(f"parallelism must be an integer >= 1, got {self.parallelism!r}")
        if self.parallelism > self.max_parallelism:
            raise bad(f"parallelism {self.parallelism} exceeds max_parallelism "
                      f"{self.max_parallelism}; lower parallelism or raise max_parallelism")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.channel_capacity, int) or self.channel_capacity < 1:
            raise bad(f"channel_capacity must be an integer >= 1, got {self.channel_capacity!r}")
        if self.checkpoint_config is not None:
            self.checkpoint_config.validate()
        self.restart_strategy.validate()
        validate = getattr(self.state_backend, "validate", None)
        if not callable(validate) or not callable(getattr(self.state_backend, "create", None)):
            raise bad(f"state_backend must be of.state.MemoryBackend() or "
                      f"of.state.RocksDBBackend(), got {type(self.state_backend).__name__}")
        validate()

    def run(self, restore: str | os.PathLike[str] | None = None, *, fresh: bool = False,
            dashboard: str | int | None = None, dashboard_token: str | None = None,
            metrics_port: int | None = None, progress: bool | float = False,
            executor: str | Executor | None = None) -> JobResult:
        """Run the flow; block until its bounded input is processed and committed.

        ``restore``: ``"latest"`` resumes from the newest complete checkpoint in this flow's
        checkpoint storage (or starts from the beginning, saying so, when there is none); a
        path resumes from that checkpoint directory. Without ``restore`` the flow starts
        from the beginning, and ``run()`` refuses (``ExistingCheckpointError``, naming the
        newest checkpoint, when it completed and whether the job had finished) if the
        checkpoint storage already holds completed checkpoints of this flow: their output
        is committed, so starting over would write it again. ``fresh=True`` starts over
        anyway, knowing the whole output is written a second time. Continuing a job that
        had finished (``restore="latest"``) writes nothing again.

        Ctrl-C (SIGINT) or SIGTERM while ``run()`` blocks in the main thread stops the job
        with a savepoint (``JobResult.savepoint``; resume with ``restore="latest"``); a
        second one stops at once and raises ``KeyboardInterrupt``.

        While it runs (see docs/operations.md): ``dashboard="[HOST:]PORT"`` serves a web
        dashboard (127.0.0.1 unless a host is given; any other host needs
        ``dashboard_token``); ``metrics_port`` serves Prometheus metrics on
        127.0.0.1:PORT/metrics; ``progress`` prints live progress to stderr (``True``, or
        a period in seconds). Port 0 picks a free port (logged on ``onceflow.web``).

        ``executor``: where the subtasks run: ``"local"`` / ``of.executors.Local()`` (the
        default: forked worker processes) or ``"inline"`` / ``of.executors.Inline()``
        (threads of this process, for debugging and fast tests) or
        ``of.executors.Ray(address)`` (Ray actors on a cluster, ``docs/ray.md``)."""
        driver = self._driver(dashboard=dashboard, dashboard_token=dashboard_token,
                              metrics_port=metrics_port, progress=progress,
                              fresh=_fresh(restore, fresh), executor=executor)
        return driver.run(os.fspath(restore) if restore is not None else None)

    def start(self, restore: str | os.PathLike[str] | None = None, *, fresh: bool = False,
              dashboard: str | int | None = None, dashboard_token: str | None = None,
              metrics_port: int | None = None, progress: bool | float = False,
              executor: str | Executor | None = None) -> JobClient:
        """Start the flow in a background thread of this process and return a
        :class:`~onceflow.JobClient` to take savepoints, stop with a savepoint, or wait for
        the result. Same arguments as :meth:`run`."""
        from onceflow.api.client import JobClient
        from onceflow.runtime.rerun import check_before_start

        driver = self._driver(dashboard=dashboard, dashboard_token=dashboard_token,
                              metrics_port=metrics_port, progress=progress,
                              fresh=_fresh(restore, fresh), executor=executor)
        check_before_start(self.name, self.checkpoint_config, restore, fresh)
        return JobClient(driver, os.fspath(restore) if restore is not None else None)

    def _driver(self, **observe: Any) -> JobDriver:
        from onceflow.executors import resolve
        from onceflow.runtime.driver import JobConfig, JobDriver

        self.validate()
        executor = resolve(observe.pop("executor"))
        dashboard = observe.pop("dashboard")
        cfg = JobConfig(self.name, self.parallelism, self.max_parallelism, self.batch_size,
                        self.channel_capacity, self.checkpoint_config, self.restart_strategy,
                        dashboard=None if dashboard is None else str(dashboard),
                        state_backend=self.state_backend, executor=executor, **observe)
        return JobDriver(self._plan, cfg)


class DataStream:
    """A stream of records produced by one operator."""

    def __init__(self, flow: Flow, node: Node) -> None:
        self._flow = flow
        self._node = node

    def _add(self, kind: Kind, fn: Any, name: str | None, parallelism: int | None,
             uid: str | None, edges: list[Edge] | None = None) -> Node:
        if kind not in (Kind.SINK, Kind.UNION, Kind.ASSIGN) and not callable(fn):
            raise ConfigurationError(f"{kind.value}() takes a function, got {type(fn).__name__}")
        return self._flow._plan.add(kind, name, uid, parallelism, fn, edges or self._edge())

    def _edge(self) -> list[Edge]:
        """The edge an operator taking this stream as its input gets: forward here, round
        robin after ``rebalance()``, by key after ``key_by()``. Every way of consuming a
        stream (an operator, ``union``, ``connect``, ``broadcast``'s other side) asks
        this, so none drops the partitioning the user chose."""
        return [Edge(self._node.id, Partitioning.FORWARD)]

    def map(self, fn: Callable[[Any], Any], *, name: str | None = None,
            parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """One output record per input record: ``fn(record)``."""
        return DataStream(self._flow, self._add(Kind.MAP, fn, name, parallelism, uid))

    def filter(self, fn: Callable[[Any], Any], *, name: str | None = None,
               parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """Keep the records for which ``fn(record)`` is true."""
        return DataStream(self._flow, self._add(Kind.FILTER, fn, name, parallelism, uid))

    def flat_map(self, fn: Callable[[Any], Iterable[Any] | None], *, name: str | None = None,
                 parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """Zero or more output records per input record: the items of ``fn(record)``."""
        return DataStream(self._flow, self._add(Kind.FLAT_MAP, fn, name, parallelism, uid))

    def union(self, *others: DataStream, name: str | None = None,
              parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """Merge this stream with ``others`` (records of all, no order between streams)."""
        for o in others:
            if not isinstance(o, DataStream) or o._flow is not self._flow:
                raise ConfigurationError("union() takes DataStreams of the same Flow")
        edges = [e for s in (self, *others) for e in s._edge()]
        return DataStream(self._flow, self._add(Kind.UNION, None, name, parallelism, uid, edges))

    def assign_timestamps_and_watermarks(self, strategy: WatermarkStrategy, *,
                                         name: str | None = None,
                                         uid: str | None = None) -> DataStream:
        """Give the records new event timestamps and watermarks from ``strategy`` (one
        generator per subtask; watermarks from upstream stop here). Prefer
        ``flow.source(..., watermarks=...)``: per-split watermarks there keep one slow
        split from making another's records late."""
        if not isinstance(strategy, WatermarkStrategy):
            raise ConfigurationError(
                "assign_timestamps_and_watermarks() takes an of.WatermarkStrategy, got "
                f"{type(strategy).__name__}")
        strategy.validate("assign_timestamps_and_watermarks")
        # the input's parallelism, so the assigner chains to it and sees each input
        # subtask's records in their order (with the flow's default parallelism behind a
        # source of another parallelism it would mix several subtasks' records, and the
        # out-of-orderness bound would no longer hold)
        return DataStream(self._flow, self._add(Kind.ASSIGN, strategy, name,
                                                self._node.parallelism, uid))

    def side_output(self, tag: OutputTag) -> DataStream:
        """The stream of values this operator sent to ``tag`` (``ctx.output(tag, v)``, or
        the late records of a window with ``side_output_late_data(tag)``)."""
        if not isinstance(tag, OutputTag):
            raise ConfigurationError(
                f"side_output() takes an of.OutputTag, got {type(tag).__name__}")
        if self._node.kind is Kind.SOURCE or self._node.kind is Kind.SINK:
            raise ConfigurationError(
                f"side_output({tag.name!r}): operator {self._node.name!r} has no side outputs")
        edge = Edge(self._node.id, Partitioning.FORWARD, None, tag.name)
        node = self._flow._plan.add(Kind.SIDE_OUTPUT, f"{self._node.name}.{tag.name}", None,
                                    self._node.parallelism, None, [edge])
        return DataStream(self._flow, node)

    def window_all(self, assigner: Any) -> WindowedStream:
        """Windows over the whole stream (one subtask): results are
        ``(None, window_start, window_end, value)``."""
        from onceflow.api.windowing import WindowedStream

        return WindowedStream(self._flow, self._node, None, assigner)

    def connect(self, other: Any) -> Any:
        """Connect with ``other`` for a two-input operator: a DataStream gives
        :class:`~onceflow.api.two_input.ConnectedStreams` (``.process(CoProcessFunction)``),
        a broadcast stream (``rules.broadcast(descriptor)``) connects this keyed stream to
        it (``.process(KeyedBroadcastProcessFunction)``). See onceflow/api/two_input.py."""
        from onceflow.api.two_input import connect

        return connect(self, other)

    def broadcast(self, *descriptors: Any) -> Any:
        """This stream as a broadcast stream: each record goes to every subtask of the
        operator it is connected to, which keeps it in the broadcast state the
        ``of.MapStateDescriptor`` objects name."""
        from onceflow.api.two_input import broadcast

        return broadcast(self, descriptors)

    def join(self, other: DataStream) -> Any:
        """An inner join with ``other``: ``.where(key).equal_to(other_key)`` then
        ``.apply(fn)`` (a regular join: every match as it arrives, optionally
        ``.with_ttl(seconds)``) or ``.window(assigner).apply(fn)``. See
        onceflow/api/joins.py."""
        from onceflow.api.joins import JoinedStreams

        return JoinedStreams(self, other)

    def co_group(self, other: DataStream) -> Any:
        """Both streams' records of each key and window together:
        ``.where(ka).equal_to(kb).window(assigner).apply(fn(lefts, rights))`` (outer joins
        are written with it). See onceflow/api/joins.py."""
        from onceflow.api.joins import JoinedStreams

        return JoinedStreams(self, other, cogroup=True)

    def rebalance(self) -> _Rebalanced:
        """Spread the records round-robin over the next operator's subtasks."""
        return _Rebalanced(self._flow, self._node)

    def key_by(self, key: Callable[[Any], Any]) -> KeyedStream:
        """Partition by ``key(record)``: records with equal keys meet in one subtask, where
        keyed state is scoped to the key. Keys must be str, int, bytes, float, bool, None,
        or tuples of those (they need a hash that is stable across processes), and ``key``
        must be deterministic: the record is routed by one call and its state found by
        another."""
        if not callable(key):
            raise ConfigurationError(f"key_by() takes a function, got {type(key).__name__}")
        return KeyedStream(self._flow, self._node, key)

    def sink(self, sink: Sink | TwoPhaseCommitSink[Any] | WriteAheadSink, *,
             name: str | None = None, parallelism: int | None = None,
             uid: str | None = None) -> SinkHandle:
        """Write the stream to ``sink``."""
        if not isinstance(sink, Sink | TwoPhaseCommitSink | WriteAheadSink):
            raise ConfigurationError(
                f"sink() takes an onceflow sink (Sink, TwoPhaseCommitSink or WriteAheadSink), "
                f"got {type(sink).__name__}")
        return SinkHandle(self._add(Kind.SINK, sink, name, parallelism, uid))


class _Rebalanced(DataStream):
    def _edge(self) -> list[Edge]:
        return [Edge(self._node.id, Partitioning.REBALANCE)]


class KeyedStream(DataStream):
    """A stream partitioned by key; its operators keep state per key. It is a stream too:
    ``map``, ``filter``, ``flat_map`` and ``sink`` run after the exchange by key."""

    def __init__(self, flow: Flow, node: Node, key: Callable[[Any], Any]) -> None:
        super().__init__(flow, node)
        self._key = key

    def _edge(self) -> list[Edge]:
        return [Edge(self._node.id, Partitioning.KEY, self._key)]

    def side_output(self, tag: OutputTag) -> DataStream:
        raise ConfigurationError(
            "side_output() is taken from the operator that emits it (e.g. the result of "
            "process() or of a window), not from key_by()")

    def window(self, assigner: Any) -> WindowedStream:
        """Windows per key: ``.window(of.windows.tumbling(60.0))`` then ``.aggregate(...)``,
        ``.reduce(...)`` or ``.process(...)``. Results are
        ``(key, window_start, window_end, value)``."""
        from onceflow.api.windowing import WindowedStream

        return WindowedStream(self._flow, self._node, self._key, assigner)

    def interval_join(self, other: KeyedStream) -> Any:
        """Join with keyed stream ``other`` on the key and an event-time interval:
        ``.between(lower, upper).process(fn)`` joins ``left`` with every ``right`` of the
        same key with ``left.ts + lower <= right.ts <= left.ts + upper``. See
        onceflow/api/joins.py."""
        from onceflow.api.joins import IntervalJoin

        return IntervalJoin(self, other)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None,
               parallelism: int | None = None, uid: str | None = None) -> DataStream:
        """Rolling reduce per key: emits ``fn(previous, record)`` (the first record of a key
        as is) for every record."""
        if not callable(fn):
            raise ConfigurationError(f"reduce() takes a function, got {type(fn).__name__}")
        node = self._flow._plan.add(Kind.REDUCE, name, uid, parallelism, fn, self._edge())
        return DataStream(self._flow, node)

    def process(self, fn: KeyedProcessFunction | Callable[[Any, Any], Iterable[Any] | None], *,
                name: str | None = None, parallelism: int | None = None,
                uid: str | None = None) -> DataStream:
        """Run a :class:`KeyedProcessFunction` (or a function ``fn(record, ctx)``) with keyed
        state and processing-time timers."""
        if not isinstance(fn, KeyedProcessFunction) and not callable(fn):
            raise ConfigurationError(
                f"process() takes a KeyedProcessFunction or a function, got {type(fn).__name__}")
        node = self._flow._plan.add(Kind.PROCESS, name, uid, parallelism, fn, self._edge())
        return DataStream(self._flow, node)


class SinkHandle:
    """The end of a stream (returned by ``sink``)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def name(self) -> str:
        return self._node.name

    def __repr__(self) -> str:
        return f"<onceflow.api.flow.SinkHandle {self._node.name!r}>"


def _fresh(restore: object, fresh: object) -> bool:
    if not isinstance(fresh, bool):
        raise ConfigurationError(f"fresh must be True or False, got {fresh!r}")
    if fresh and restore is not None:
        raise ConfigurationError(
            f"run(restore={restore!r}, fresh=True): choose one: restore continues from a "
            "checkpoint, fresh=True starts over from the beginning")
    return fresh
