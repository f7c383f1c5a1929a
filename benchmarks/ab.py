"""Interleaved A/B of two onceflow engines on the same benchmark commands.

    git archive <commit> | tar -x -C /tmp/base        # the "before" engine, once
    python benchmarks/ab.py --base /tmp/base --rounds 3 keyed-p1 keyed-p2 q5-p2

"before" runs each command with ``PYTHONPATH=<base>`` (its ``onceflow`` package shadows
the installed one), "after" with this checkout's. Each round runs every workload before
and after, in alternating order, each a fresh process, so that a change in machine load
hits both. The figure is the command's own per-CPU-second figure (``records_per_cpu_s``
or ``events_per_cpu_s`` of its ``--one`` JSON line); prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def workloads() -> dict[str, list[str]]:
    py, b = sys.executable, str(HERE)
    w1 = [py, f"{b}/w1.py", "--one", "--checkpoints", "on", "--records", "2000000"]
    nx = [py, f"{b}/nexmark/run.py", "--one", "--events", "1000000"]
    out = {
        "keyed-p1": [py, f"{b}/keyed.py", "--one", "--parallelism", "1", "--records", "300000"],
        "keyed-p2": [py, f"{b}/keyed.py", "--one", "--parallelism", "2", "--records", "300000"],
        "w1-p1": [*w1, "--parallelism", "1"],
        "w1-p2": [*w1, "--parallelism", "2"],
    }
    for q in ("q0", "q5", "q7", "q8", "q11"):
        for p in (1, 2):
            out[f"{q}-p{p}"] = [*nx, "--query", q, "--parallelism", str(p)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="directory holding the 'before' onceflow/")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("workload", nargs="+", choices=sorted(workloads()))
    a = ap.parse_args()
    cmds = workloads()
    res: dict[tuple[str, str], list[float]] = {(w, v): [] for w in a.workload
                                               for v in ("before", "after")}
    for r in range(a.rounds):
        for w in a.workload:
            for v in (("before", "after") if r % 2 == 0 else ("after", "before")):
                env = dict(os.environ)
                env.pop("PYTHONPATH", None)
                if v == "before":
                    env["PYTHONPATH"] = a.base
                out = subprocess.run(cmds[w], capture_output=True, text=True, env=env,
                                     cwd="/tmp", check=False)
                try:
                    d = json.loads(out.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    print(f"round {r + 1} {w} {v}: FAILED\n{out.stderr[-1000:]}", flush=True)
                    continue
                fig = d.get("records_per_cpu_s") or d.get("events_per_cpu_s")
                res[(w, v)].append(fig)
                print(f"round {r + 1} {w:9s} {v:6s} {fig:>12,.0f} per CPU-s "
                      f"valid={d.get('valid')}", flush=True)
    print("\n| workload | before (median) | after (median) | after/before | before runs | "
          "after runs |\n|---|---:|---:|---:|---|---|")
    for w in a.workload:
        b, n = res[(w, "before")], res[(w, "after")]
        if b and n:
            mb, mn = statistics.median(b), statistics.median(n)
            print(f"| {w} | {mb:,.0f} | {mn:,.0f} | {mn / mb:.3f} | "
                  f"{', '.join(f'{x:,.0f}' for x in b)} | {', '.join(f'{x:,.0f}' for x in n)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
