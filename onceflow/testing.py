"""Test helpers that ship with onceflow.

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
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from onceflow import _faults
from onceflow.api.config import fixed_delay
from onceflow.api.flow import Flow
from onceflow.connectors.sources import Range

__all__ = ["CaseResult", "ConformanceReport", "DEFAULT_POINTS",  # noqa: RUF022
           "check_sink_exactly_once", "throttle"]

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


def _record(i: int) -> dict[str, Any]:
    return {"id": i, "key": f"k{i % 37}", "value": i % 101}


def _freeze(r: Any) -> Any:
    if isinstance(r, list | tuple):
        return tuple(_freeze(x) for x in r)
    if isinstance(r, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in r.items()))
    return r
