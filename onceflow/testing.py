"""Test helpers that ship with onceflow.

Unit-testing a flow in milliseconds: :class:`ScriptedSource` feeds known records (and can
raise or stall at a chosen point), :class:`CollectingSink` collects what the flow commits
(exactly once, like any transactional sink), and :func:`run_inline` runs the flow on the
inline executor (threads of this process: breakpoints work)::

    >>> import onceflow as of
    >>> from onceflow.testing import CollectingSink, ScriptedSource, run_inline
    >>> flow = of.Flow("doubling", parallelism=2)
    >>> out = CollectingSink()
    >>> (flow.source(ScriptedSource([1, 2, 3, 4]), name="numbers")
    ...      .map(lambda x: 2 * x, name="double")
    ...      .sink(out, name="out"))  # doctest: +ELLIPSIS
    <...>
    >>> result = run_inline(flow)
    >>> sorted(out.records()), result.restarts
    ([2, 4, 6, 8], 0)

A source that fails once after two records: the job restarts from its last checkpoint (none
here: from the start) and still commits every record exactly once::

    >>> flow = of.Flow("flaky", restart_strategy=of.restart.fixed_delay(attempts=1, delay=0))
    >>> out = CollectingSink()
    >>> flow.source(ScriptedSource(["a", "b", "c"], fail_at=2), name="in").sink(out, name="out")
    ... # doctest: +ELLIPSIS
    <...>
    >>> result = run_inline(flow)
    >>> out.records(), result.restarts
    (['a', 'b', 'c'], 1)

:func:`check_sink_exactly_once` is a conformance check any sink can run: it writes a known
stream through the sink while a worker process is killed with SIGKILL at each hook of the
two-phase-commit protocol in turn (and at points of the snapshot), then compares what the
sink committed with what was sent. Example with the built-in ``FileSink``::

    >>> import tempfile, onceflow as of
    >>> from onceflow.testing import check_sink_exactly_once
    >>> root = tempfile.mkdtemp()
    >>> report = check_sink_exactly_once(
    ...     lambda case: of.sinks.FileSink(f"{root}/{case}"),
    ...     lambda case: of.sinks.read_committed(f"{root}/{case}"),
    ...     workdir=root, records=4000, points=["sink.before_commit@checkpoint=2"])
    >>> report.ok, report.cases[0].restarts
    (True, 1)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from onceflow import _faults
from onceflow.api.config import fixed_delay
from onceflow.api.flow import Flow
from onceflow.api.result import JobResult
from onceflow.connectors.sinks import SinkContext
from onceflow.connectors.sources import Range, Source, SplitReader
from onceflow.connectors.two_phase import TwoPhaseCommitSink
from onceflow.errors import ConfigurationError

__all__ = ["CaseResult", "CollectingSink", "ConformanceReport", "DEFAULT_POINTS",  # noqa: RUF022
           "ScriptedSource", "check_sink_exactly_once", "run_inline", "throttle"]

#: The worker-side crash points of the protocol, in the order a checkpoint meets them.
DEFAULT_POINTS = (
    "source.after_batch@subtask=0,records=1024",
    "snapshot.sync@checkpoint=2,subtask=0",
    "sink.after_pre_commit@checkpoint=2,subtask=1",
    "snapshot.async@checkpoint=2,subtask=0",
    "sink.before_commit@checkpoint=2,subtask=0",
    "sink.mid_commit@subtask=1",
)


@dataclass
class CaseResult:
    point: str
    fired: bool
    restarts: int
    missing: int
    duplicated: int

    @property
    def ok(self) -> bool:
        """The fault fired, and the output is exact. A fault that never fired tested
        nothing, so it does not pass."""
        return self.fired and self.missing == 0 and self.duplicated == 0


@dataclass
class ConformanceReport:
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    def __str__(self) -> str:
        return "\n".join(
            f"{'ok  ' if c.ok else 'FAIL'} {c.point:<45} fired={c.fired} restarts={c.restarts} "
            f"missing={c.missing} duplicated={c.duplicated}" for c in self.cases)


def check_sink_exactly_once(
    make_sink: Callable[[str], Any],
    read_back: Callable[[str], list[Any]],
    *,
    workdir: str | None = None,
    records: int = 20_000,
    parallelism: int = 2,
    points: Sequence[str] = DEFAULT_POINTS,
    to_record: Callable[[dict[str, Any]], Any] | None = None,
    key: Callable[[Any], Any] | None = None,
    duration: float = 1.5,
) -> ConformanceReport:
    """Run one job per crash point and compare the committed output with the input.

    ``make_sink(case)`` returns a fresh sink for the case named ``case`` (a short slug, use
    it to pick an output table/directory); ``read_back(case)`` returns everything the sink
    committed. Records are dicts ``{"id", "key", "value"}`` unless ``to_record`` maps them;
    ``key`` maps a committed record back to something comparable (default: the record's
    ``id``, or the record itself). Each job is slowed to last about ``duration`` seconds so
    that several checkpoints happen while it runs."""
    base = workdir or tempfile.mkdtemp(prefix="onceflow-conformance-")
    expect = [to_record(_record(i)) if to_record else _record(i) for i in range(records)]
    ident = key or (lambda r: r["id"] if isinstance(r, dict) and "id" in r else _freeze(r))
    want = Counter(ident(r) for r in expect)
    report = ConformanceReport()
    saved = (os.environ.get("ONCEFLOW_FAULT"), os.environ.get("ONCEFLOW_FAULT_TOKEN"))
    try:
        for n, point in enumerate(points):
            case = f"case{n}"
            token = os.path.join(base, f"{case}.fired")
            ckpt = os.path.join(base, f"{case}-ckpt")
            # a workdir used before: this case starts over (its checkpoints and fault token)
            shutil.rmtree(ckpt, ignore_errors=True)
            if os.path.exists(token):
                os.unlink(token)
            os.environ["ONCEFLOW_FAULT"] = point
            os.environ["ONCEFLOW_FAULT_TOKEN"] = token
            _faults.reload()
            flow = Flow(f"conformance-{case}", parallelism=parallelism, batch_size=256,
                        restart_strategy=fixed_delay(attempts=3, delay=0.05))
            flow.enable_checkpointing(0.1, ckpt, retained=2)
            pause = 256 * duration * parallelism / max(1, records)

            def shape(i: int, _m: Any = to_record, _p: float = pause) -> Any:
                if i % 256 == 0:
                    time.sleep(_p)
                return _m(_record(i)) if _m else _record(i)

            (flow.source(Range(0, records), name="records")
                 .map(shape, name="shape")
                 .sink(make_sink(case), name="sink-under-test"))
            result = flow.run()
            got = Counter(ident(r) for r in read_back(case))
            report.cases.append(CaseResult(
                point, os.path.exists(token), result.restarts,
                missing=sum((want - got).values()), duplicated=sum((got - want).values())))
    finally:
        for name, value in zip(("ONCEFLOW_FAULT", "ONCEFLOW_FAULT_TOKEN"), saved, strict=True):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _faults.reload()
    return report


def throttle(rate: float, every: int = 256) -> Callable[[Any], Any]:
    """An identity function for ``.map(...)`` that holds each subtask to about ``rate``
    records/s, so that a test job runs long enough for crashes to land mid-run.

    >>> slow = throttle(1_000_000, every=2)
    >>> [slow(x) for x in "abc"]
    ['a', 'b', 'c']
    """
    pause = every / rate
    count = [0]

    def fn(x: Any) -> Any:
        count[0] += 1
        if count[0] % every == 0:
            time.sleep(pause)
        return x

    return fn


# --- unit-testing flows ---------------------------------------------------------------------
def run_inline(flow: Flow, restore: str | os.PathLike[str] | None = None) -> JobResult:
    """Run ``flow`` to its end on the inline executor (every subtask a thread of this
    process), as ``flow.run(restore, executor="inline")``."""
    return flow.run(restore, executor="inline")


class ScriptedSource(Source):
    """Emits ``records`` in order from one subtask (other subtasks of the source get
    nothing), and optionally, at record index ``fail_at``, raises ``error`` once (the next
    attempt goes past it), or from record index ``stall_at`` on emits nothing more without
    ending (the job then runs until stopped, e.g. with a savepoint). Positions are record
    indexes, so restores resume exactly."""

    def __init__(self, records: Sequence[Any], *, fail_at: int | None = None,
                 error: Exception | None = None, stall_at: int | None = None) -> None:
        self.records = list(records)
        self.fail_at, self.stall_at = fail_at, stall_at
        self.error = error if error is not None else RuntimeError(
            f"ScriptedSource: scripted failure at record {fail_at}")
        # "failed once" must survive the attempt (and, on the default executor, the
        # process) that failed: a file, shared by every copy of this source
        self._fired = os.path.join(tempfile.gettempdir(),
                                   f"onceflow-scripted-{uuid.uuid4().hex}.fired")

    def splits(self, parallelism: int) -> list[Any]:
        return ["script"]

    def initial_position(self, split: Any) -> int:
        return 0

    def reader(self, split: Any, position: Any) -> SplitReader:
        return _ScriptReader(self, position)


class _ScriptReader(SplitReader):
    def __init__(self, src: ScriptedSource, pos: int) -> None:
        self.src, self.pos = src, pos

    def read_batch(self, max_records: int) -> list[Any] | None:
        src, end = self.src, len(self.src.records)
        if src.stall_at is not None and self.pos >= src.stall_at:
            return []
        if src.fail_at is not None and self.pos == src.fail_at:
            try:
                os.close(os.open(src._fired, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                pass  # failed once already
            else:
                raise src.error
        if self.pos >= end:
            return None
        stop = min(end, self.pos + max_records)
        for mark in (src.fail_at, src.stall_at):
            if mark is not None and self.pos < mark < stop:
                stop = mark  # end the batch where the script acts
        out = src.records[self.pos:stop]
        self.pos = stop
        return out

    def position(self) -> int:
        return self.pos


class _Collected:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.staged: dict[str, list[Any]] = {}
        self.committed: list[Any] = []


_COLLECTED: dict[str, _Collected] = {}


class CollectingSink(TwoPhaseCommitSink[str]):
    """Collects what a flow commits, in commit order: :meth:`records`. A two-phase-commit
    sink like any other (records become visible when their checkpoint completes, and
    restarts do not duplicate them), kept in this process's memory, so it needs the inline
    executor (:func:`run_inline`)."""

    def __init__(self) -> None:
        self.key = uuid.uuid4().hex
        self._pid = os.getpid()
        self._ctx: SinkContext | None = None
        _COLLECTED[self.key] = _Collected()

    def records(self) -> list[Any]:
        store = _COLLECTED[self.key]
        with store.lock:
            return list(store.committed)

    def open(self, ctx: SinkContext) -> None:
        if os.getpid() != self._pid:
            raise ConfigurationError(
                f"CollectingSink (operator {ctx.uid!r}) keeps records in the memory of the "
                "process that made it: run the flow with executor='inline' "
                "(onceflow.testing.run_inline)")
        self._ctx = ctx

    def begin_transaction(self) -> str:
        ctx = self._ctx
        assert ctx is not None
        txn = f"{ctx.subtask}:{ctx.attempt}:{uuid.uuid4().hex[:8]}"
        store = _COLLECTED[self.key]
        with store.lock:
            store.staged[txn] = []
        return txn

    def write(self, txn: str, records: list[Any]) -> None:
        store = _COLLECTED[self.key]
        with store.lock:
            store.staged[txn].extend(records)

    def pre_commit(self, txn: str) -> None:
        pass  # already as durable as this sink gets

    def commit(self, txn: str) -> None:
        store = _COLLECTED[self.key]
        with store.lock:
            staged = store.staged.pop(txn, None)
            if staged is not None:  # None: committed before
                store.committed.extend(staged)

    def abort(self, txn: str) -> None:
        store = _COLLECTED[self.key]
        with store.lock:
            store.staged.pop(txn, None)

    def abort_lingering(self, ctx: SinkContext, keep: list[str]) -> None:
        store = _COLLECTED[self.key]
        with store.lock:
            for txn in list(store.staged):
                sub, attempt, _ = txn.split(":")
                if int(attempt) < ctx.attempt and int(sub) % ctx.parallelism == ctx.subtask \
                        and txn not in keep:
                    del store.staged[txn]


def _record(i: int) -> dict[str, Any]:
    return {"id": i, "key": f"k{i % 37}", "value": i % 101}


def _freeze(r: Any) -> Any:
    if isinstance(r, list | tuple):
        return tuple(_freeze(x) for x in r)
    if isinstance(r, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in r.items()))
    return r
