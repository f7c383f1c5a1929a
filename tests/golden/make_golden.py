"""Write the golden checkpoints and savepoints under ``tests/golden/`` (run once, commit the
result; never rerun to "fix" a failing tests/test_golden.py — the point of a golden is that it
was written by an older onceflow and the current one must still restore it).

    .venv/bin/python tests/golden/make_golden.py [CASE ...]

Each case runs :func:`build` (also what ``tests/test_golden.py`` restores into) under
``/tmp/onceflow-golden/<case>/`` — a fixed absolute path, because a pending file transaction
records the absolute paths of its files — and stops it mid-run:

- ``*-checkpoint`` cases: the driver is SIGKILLed right after checkpoint 3's metadata is
  renamed into place, before any sink heard of it, so the checkpoint holds a pre-committed
  FileSink transaction that restore must commit (and in-progress files restore must abort);
- ``*-savepoint`` cases: ``stop_with_savepoint`` after some output was committed.

The case directory (checkpoint storage ``ck/``, sink output ``out/``, savepoints ``sp/``) is
then copied to ``tests/golden/<case>/`` with ``golden.json`` naming what to restore from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import onceflow as of

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = "/tmp/onceflow-golden"
RECORDS = 4000
KEYS = 13

# case -> (backend, incremental, how it stops)
CASES: dict[str, tuple[str, bool, str]] = {
    "memory-full-checkpoint": ("memory", False, "kill"),
    "memory-changelog-checkpoint": ("memory", True, "kill"),
    "rocksdb-incremental-checkpoint": ("rocksdb", True, "kill"),
    "memory-savepoint": ("memory", False, "savepoint"),
    "rocksdb-savepoint": ("rocksdb", True, "savepoint"),
}


class Tally(of.KeyedProcessFunction):
    """Value, list and map state per key; emits running counts."""

    def open(self, ctx: of.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.recent = ctx.list_state("recent")
        self.hist = ctx.map_state("hist")

    def process_element(self, value: Any, ctx: of.ProcessContext) -> list[Any]:
        c = self.count.value() + 1
        self.count.update(c)
        self.recent.update([*self.recent.get(), value[1]][-3:])
        self.hist.put(value[1] % 4, (self.hist.get(value[1] % 4) or 0) + 1)
        if sum(self.hist.values()) != c:
            raise AssertionError("map state lost updates")
        return [("tally", ctx.current_key, c)]


def _slow(i: int) -> int:
    if i % 50 == 0:
        time.sleep(0.02)
    return i


def build(case: str, root: str = WORK) -> of.Flow:
    """The golden flow of ``case``, with its storage and output under ``root/case``."""
    backend_name, incremental, _ = CASES[case]
    backend: Any = (of.state.RocksDBBackend(layer_entries=200) if backend_name == "rocksdb"
                    else of.state.MemoryBackend(full_every=3))
    d = os.path.join(root, case)
    flow = of.Flow("golden", parallelism=2, max_parallelism=64, batch_size=50,
                   state_backend=backend, restart_strategy=of.restart.no_restart())
    flow.enable_checkpointing(0.1, os.path.join(d, "ck"), retained=1, incremental=incremental)
    pairs = (flow.source(of.sources.Range(0, RECORDS), name="numbers")
             .map(_slow, name="slow")
             .map(lambda i: (i % KEYS, i), name="pairs"))
    (pairs.map(lambda kv: (kv[0], 1), name="ones")
          .key_by(lambda kv: kv[0])
          .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
          .map(lambda t: ("count", t[0], t[1]), name="shape")
          .sink(of.sinks.FileSink(os.path.join(d, "out"), prefix="count"), name="count-out"))
    (pairs.key_by(lambda kv: kv[0])
          .process(Tally(), name="tally")
          .sink(of.sinks.FileSink(os.path.join(d, "out"), prefix="tally"), name="tally-out"))
    return flow


def expected() -> Counter[tuple[Any, ...]]:
    per = Counter(i % KEYS for i in range(RECORDS))
    out: Counter[tuple[Any, ...]] = Counter()
    for k, n in per.items():
        for c in range(1, n + 1):
            out[("count", k, c)] += 1
            out[("tally", k, c)] += 1
    return out


def committed(out: str) -> Counter[tuple[Any, ...]]:
    rows = of.sinks.read_committed(out, prefix="count") + \
        of.sinks.read_committed(out, prefix="tally")
    return Counter(tuple(r) for r in rows)


def _make(case: str) -> dict[str, Any]:
    d = os.path.join(WORK, case)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    _, _, how = CASES[case]
    if how == "kill":
        env = {**os.environ, "ONCEFLOW_FAULT": "coordinator.after_metadata_rename@checkpoint=3",
               "ONCEFLOW_FAULT_TOKEN": os.path.join(d, "fired")}
        r = subprocess.run([sys.executable, __file__, "--child", case], env=env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != -9:
            raise SystemExit(f"{case}: the job was not killed ({r.returncode}):\n{r.stderr}")
        os.unlink(os.path.join(d, "fired"))
        restore = "ck/golden/chk-3"
    else:
        client = build(case).start()
        out = os.path.join(d, "out")
        while not (os.path.isdir(out) and any(n.startswith("tally") for n in os.listdir(out))):
            time.sleep(0.02)
        time.sleep(0.3)
        sp = client.stop_with_savepoint(os.path.join(d, "sp"))
        client.result()
        restore = os.path.relpath(sp, d)
    got = committed(os.path.join(d, "out"))
    want = expected()
    if not got or got == want or got - want:
        raise SystemExit(f"{case}: not a mid-run state ({sum(got.values())} records)")
    return {"restore": restore, "committed_before": sum(got.values()),
            "onceflow": of.__version__, "written": time.strftime("%Y-%m-%d")}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        build(sys.argv[2]).run()
        raise SystemExit("the fault did not fire")
    for case in sys.argv[1:] or list(CASES):
        info = _make(case)
        dest = os.path.join(HERE, case)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(os.path.join(WORK, case), dest)
        with open(os.path.join(dest, "golden.json"), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        print(case, info)


if __name__ == "__main__":
    main()
