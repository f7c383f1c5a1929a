"""``onceflow verify``: does this flow's committed output survive crashes unchanged?

The flow runs three times in this process (the driver): twice undisturbed, then while a
random worker is SIGKILLed ``kills`` times. Each kill waits until the attempt before it is running
again, so the killed run restarts exactly ``kills`` times (checked). Between kills the
delay is random, scaled to the clean run's duration, so kills land at different points of
the input (before, between and after checkpoints); all of them within the job's measured
processing time (start-up excluded), so a short job gets every kill.

**What is compared.** The records every :class:`~onceflow.sinks.FileSink` committed: its
files without the hidden (uncommitted) ones, line by line, as a multiset. Order is not
compared, because file boundaries follow checkpoints, which differ between runs. Each run
writes into its own temporary directories (the sinks' directories and the checkpoint
storage are redirected; the flow's own are not touched). ``Discard`` sinks are ignored.
Any other sink is refused: verify cannot read back what it committed.

**The flow must be deterministic**: the same input must give the same lines. A keyed
running aggregate fed by several upstream subtasks is not (records of different channels
interleave differently in every run), nor is output with timestamps or random numbers.
The two clean runs catch most of this: when they differ, verify says so and judges
nothing (exit 2).

For the runs the restart strategy is replaced by a fixed 0.1 s delay, so the kills do not
add minutes of back-off.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

from onceflow.api.config import fixed_delay
from onceflow.api.flow import Flow
from onceflow.connectors.files import FileSink
from onceflow.connectors.sinks import Discard
from onceflow.errors import ConfigurationError
from onceflow.graph.logical import Kind, Node
from onceflow.runtime.status import JobState, JobStatus

# exit codes
IDENTICAL, DIFFERENT, UNUSABLE = 0, 1, 2


@dataclass
class RunOutcome:
    outputs: dict[str, Counter[bytes]]  # sink name -> committed lines
    seconds: float
    restarts: int
    kills: int
    processing: float = 0.0  # from every worker running to the end (start-up excluded)


def kill_spacing(processing: float, kills: int) -> float:
    """The longest wait before each kill, counted from when the attempt runs: ``kills``
    such waits fit in ``processing``, the job's measured length (without its start-up, which
    on a short job can be longer than the processing), so a short job still gets them all."""
    return max(0.01, processing / (kills + 1))


def comparable_sinks(flow: Flow) -> list[Node]:
    """The flow's FileSink nodes; raises ConfigurationError naming any sink verify cannot
    read back."""
    sinks = [n for n in flow._plan.nodes if n.kind is Kind.SINK]
    files = [n for n in sinks if isinstance(n.fn, FileSink)]
    csv = [n.name for n in files if n.fn.format == "csv"]
    if csv:
        raise ConfigurationError(
            f"verify cannot compare the CSV output of {', '.join(map(repr, csv))}: a CSV file "
            "does not say whether its first line is a header; give those sinks "
            "format='jsonl' (or 'parquet') for the verification")
    other = [n for n in sinks if not isinstance(n.fn, FileSink | Discard)]
    if other:
        names = ", ".join(f"{n.name!r} ({type(n.fn).__name__})" for n in other)
        raise ConfigurationError(
            f"verify compares what FileSink sinks committed and cannot read back the output "
            f"of {names}; for a check of another sink, use "
            "onceflow.testing.check_sink_exactly_once, or write the flow's output to a "
            "FileSink for the verification")
    if not files:
        raise ConfigurationError("verify needs at least one FileSink in the flow: it compares "
                                 "what the FileSinks committed in the two runs")
    return files


def read_lines(sink: FileSink) -> Counter[bytes]:
    """Every committed line of ``sink`` (files named ``<prefix>-*``, hidden ones skipped);
    for Parquet, every committed record as one canonical JSON line."""
    out: Counter[bytes] = Counter()
    d = sink.directory
    if not os.path.isdir(d):
        return out
    if sink.format == "parquet":
        import orjson

        from onceflow.connectors.files import read_committed

        out.update(orjson.dumps(r, option=orjson.OPT_SORT_KEYS)
                   for r in read_committed(d, sink.prefix))
        return out
    for name in sorted(os.listdir(d)):
        if name.startswith(".") or not name.startswith(sink.prefix + "-"):
            continue
        with open(os.path.join(d, name), "rb") as f:
            out.update(line.rstrip(b"\n") for line in f)
    return out


def _kill_workers(status: JobStatus, kills: int, spacing: float, rng: random.Random,
                  done: threading.Event, ended: Callable[[], bool]) -> int:
    """SIGKILL one random worker of attempt 0, 1, ..., kills-1, each a random time after
    that attempt is running. Returns the kills delivered."""
    delivered = 0
    while delivered < kills and not done.is_set():
        st, att = status.state, status.attempt
        if st in (JobState.FINISHED, JobState.FAILED) or ended():
            break
        if st is not JobState.RUNNING or att != delivered:
            done.wait(0.005)
            continue
        if done.wait(rng.uniform(0.3, 1.0) * spacing):
            break
        pids = status.worker_pids()
        if status.state is not JobState.RUNNING or status.attempt != delivered or not pids:
            continue
        victim = rng.choice(sorted(pids.values()))
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            continue
        delivered += 1
    return delivered


def _run_once(flow: Flow, sinks: list[Node], workdir: str, kills: int, spacing: float,
              rng: random.Random) -> RunOutcome:
    for k, node in enumerate(sinks):
        node.fn.directory = os.path.join(workdir, f"sink-{k}")
    if flow.checkpoint_config is not None:
        flow.checkpoint_config = replace(flow.checkpoint_config,
                                         storage=os.path.join(workdir, "checkpoints"))
    flow.restart_strategy = fixed_delay(attempts=kills + 10, delay=0.1)
    t0 = time.monotonic()
    client = flow.start()
    done = threading.Event()
    delivered = 0
    try:
        if kills:
            delivered = _kill_workers(client.status, kills, spacing, rng,
                                      done, client.done)
        result = client.result()
    finally:
        done.set()
    return RunOutcome({n.name: read_lines(n.fn) for n in sinks}, time.monotonic() - t0,
                      result.restarts, delivered, result.processing_seconds)


def _examples(c: Counter[bytes], n: int = 3) -> str:
    shown = [line.decode(errors="replace")[:80] for line in list(c)[:n]]
    return "; ".join(shown) + (" ..." if len(c) > n else "")


def verify(flow: Flow, kills: int, out: TextIO, seed: int | None = None) -> int:
    if kills < 1:
        raise ConfigurationError(f"--kills must be at least 1, got {kills}")
    sinks = comparable_sinks(flow)
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    originals = [n.fn.directory for n in sinks]
    saved = (flow.checkpoint_config, flow.restart_strategy)
    root = tempfile.mkdtemp(prefix="onceflow-verify-")
    names = ", ".join(repr(n.name) for n in sinks)
    print(f"verify: flow {flow.name!r}, comparing FileSink output of {names}; "
          f"{kills} kill(s), seed {seed}", file=out, flush=True)
    try:
        clean = _run_once(flow, sinks, os.path.join(root, "clean"), 0, 0.0, rng)
        n_clean = sum(sum(c.values()) for c in clean.outputs.values())
        print(f"clean run:  {n_clean:,} lines committed in {clean.seconds:.1f} s, "
              f"{clean.restarts} restart(s)", file=out, flush=True)
        again = _run_once(flow, sinks, os.path.join(root, "clean-2"), 0, 0.0, rng)
        if again.outputs != clean.outputs:
            print("verify: not verified: two runs without any kill committed different "
                  "output, so the flow is not deterministic (see `onceflow verify --help`)",
                  file=out)
            _report(clean.outputs, again.outputs, out)
            return UNUSABLE
        print(f"clean run again: the same output in {again.seconds:.1f} s", file=out,
              flush=True)
        spacing = kill_spacing(min(clean.processing, again.processing), kills)
        killed = _run_once(flow, sinks, os.path.join(root, "killed"), kills, spacing, rng)
        n_killed = sum(sum(c.values()) for c in killed.outputs.values())
        print(f"killed run: {n_killed:,} lines committed in {killed.seconds:.1f} s, "
              f"{killed.kills} kill(s), {killed.restarts} restart(s)", file=out, flush=True)
    finally:
        for n, d in zip(sinks, originals, strict=True):
            n.fn.directory = d
        flow.checkpoint_config, flow.restart_strategy = saved
        shutil.rmtree(root, ignore_errors=True)
    if killed.kills < kills or killed.restarts < kills:
        print(f"verify: not verified: the job ended after {killed.kills} of {kills} kill(s) "
              f"({killed.restarts} restart(s)); give it more input or ask for fewer kills",
              file=out)
        return UNUSABLE
    same = _report(clean.outputs, killed.outputs, out)
    print(f"result: {'identical' if same else 'DIFFERENT'} after {kills} kill(s)", file=out)
    return IDENTICAL if same else DIFFERENT


def _report(want_all: dict[str, Counter[bytes]], got_all: dict[str, Counter[bytes]],
            out: TextIO) -> bool:
    same = True
    for name, want in want_all.items():
        got = got_all[name]
        if got == want:
            print(f"sink {name!r}: identical ({sum(want.values()):,} lines)", file=out)
            continue
        same = False
        missing, extra = want - got, got - want
        print(f"sink {name!r}: DIFFERENT: {sum(missing.values()):,} line(s) missing, "
              f"{sum(extra.values()):,} extra (duplicated or changed) of "
              f"{sum(want.values()):,}", file=out)
        if missing:
            print(f"  missing, e.g.: {_examples(missing)}", file=out)
        if extra:
            print(f"  extra, e.g.:   {_examples(extra)}", file=out)
    return same
