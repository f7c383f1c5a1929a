"""W1 keyed-sum into FileSink: Discard against FileSink as JSON lines, CSV and Parquet.

W1 as in /work/shared/bench/WORKLOADS.md (record i = (i * 7919 % 10000, i % 100), map to
(key, value * 2), running sum per key, every update emitted: N records), parallelism 1,
exactly-once checkpoints every 1 s, and the reduce's output into

* ``discard``: ``of.sinks.Discard()`` (counts records: what the engine does without output)
* ``jsonl`` / ``csv`` / ``parquet``: ``of.sinks.FileSink(dir, format=...)``, two-phase commit
  (hidden file, fsync on pre-commit, rename on commit), one file per checkpoint.

    python benchmarks/filesink.py                    # 3 interleaved runs each, N = 2,000,000
    python benchmarks/filesink.py --records 500000 --runs 1 --no-save
    python benchmarks/filesink.py --one --sink parquet  # one run, one JSON line

Every run is a fresh subprocess; runs are interleaved (run 1 of every sink, then run 2, ...).
A run is invalid unless the sink took N records and (FileSink) the committed files, read
back with ``read_committed``, hold N records whose last sum per key add up to W1's check
value. Targets: FileSink (JSON lines) >= 60 % of Discard's records/s, Parquet >= JSON lines.
Writes benchmarks/results/filesink.json and filesink.md; exits non-zero on an invalid run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from w1 import (  # noqa: E402
    DASH,
    _fmt,
    _fmt_int,
    _maxrss_mb,
    expected_last_sum_total,
    machine_info,
    sample_tree_rss,
    save_results,
    summarize,
)

SINKS = {
    "discard": "Discard (no output)",
    "jsonl": "FileSink, JSON lines",
    "csv": "FileSink, CSV",
    "parquet": "FileSink, Parquet",
}
TARGET_JSONL_VS_DISCARD = 0.60


# --- one run, in the child process ---------------------------------------------------------
def run_one(n: int, sink: str, interval: float) -> dict[str, Any]:
    import onceflow as of

    tmp = tempfile.mkdtemp(prefix="filesink-bench-")
    out = os.path.join(tmp, "out")
    try:
        flow = of.Flow("w1-filesink", parallelism=1)
        flow.enable_checkpointing(interval=interval, storage=os.path.join(tmp, "ckpt"))
        target = of.sinks.Discard() if sink == "discard" else \
            of.sinks.FileSink(out, format=sink)
        (flow.source(of.sources.Range(0, n), name="source")
             .map(lambda i: (i * 7919 % 10000, i % 100), name="records")  # W1's record i
             .map(lambda kv: (kv[0], kv[1] * 2), name="double")  # W1's map step
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum")
             .sink(target, name="sink"))
        result = flow.run()
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        driver_mb = _maxrss_mb(resource.RUSAGE_SELF)
        worker_mb = _maxrss_mb(resource.RUSAGE_CHILDREN)
        problems = []
        if result.records_in("sink") != n:
            problems.append(f"records_in('sink') {result.records_in('sink')} != {n}")
        files = out_bytes = 0
        if sink != "discard":
            names = [f for f in os.listdir(out) if not f.startswith(".")]
            files = len(names)
            out_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in names)
            hidden = [f for f in os.listdir(out) if f.startswith(".")]
            if hidden:
                problems.append(f"uncommitted files left: {hidden[:3]}")
            rows = of.sinks.read_committed(out, header=False)
            last: dict[int, int] = {}
            for k, s in rows:  # sums only grow: a key's largest sum is its last one
                k, s = int(k), int(s)
                if s > last.get(k, -1):
                    last[k] = s
            if len(rows) != n:
                problems.append(f"{len(rows)} records committed != {n}")
            if sum(last.values()) != expected_last_sum_total(n):
                problems.append(f"last-sum total {sum(last.values())} != "
                                f"{expected_last_sum_total(n)}")
        done = result.completed_checkpoints
        return {
            "sink": sink,
            "records": n,
            "processing_s": result.processing_seconds,
            "startup_s": result.processing_started_at - result.started_at,
            "records_per_s": n / result.processing_seconds,
            "peak_rss_mb": driver_mb + worker_mb,
            "cpu_driver_s": ru_self.ru_utime + ru_self.ru_stime,
            "cpu_workers_s": ru_kids.ru_utime + ru_kids.ru_stime,
            "records_per_cpu_s": n / max(1e-9, ru_kids.ru_utime + ru_kids.ru_stime),
            "checkpoints_completed": len(done),
            "files": files,
            "output_bytes": out_bytes,
            "restarts": result.restarts,
            "valid": not problems,
            "problems": problems,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_subprocess(sink: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--sink", sink,
           "--records", str(args.records), "--interval", str(args.interval)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    sampled: list[float] = []
    th = threading.Thread(target=sample_tree_rss, args=(proc.pid, stop, sampled), daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        return {"valid": False, "wall_s": wall,
                "problems": [f"exit code {proc.returncode}: {err.strip()[-2000:]}"]}
    rec = json.loads(lines[-1])
    rec["wall_s"] = wall
    rec["sampled_tree_rss_mb"] = sampled[0] if sampled else None
    return rec


# --- the parent ----------------------------------------------------------------------------
def render(summaries: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    base = summaries.get("discard", {}).get("records_per_s")
    rows = [f"| sink | records/s median (min{DASH}max) | % of Discard | CPU s (workers) "
            "| records per worker CPU-s (% of Discard) | files | output MB | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|"]
    base_cpu = _med_of([r for r in summaries.get("discard", {}).get("runs", [])
                        if r.get("valid")], "records_per_cpu_s")
    for key, s in summaries.items():
        rps = s["records_per_s"]
        pct = "-" if key == "discard" or not base or not rps else f"{100 * rps / base:.1f} %"
        runs = [r for r in s["runs"] if r.get("valid")]
        files = _med_of(runs, "files")
        mb = _med_of(runs, "output_bytes")
        cpu = _med_of(runs, "cpu_workers_s")
        per_cpu = _med_of(runs, "records_per_cpu_s")
        cpu_pct = "" if key == "discard" or not base_cpu or not per_cpu else \
            f" ({100 * per_cpu / base_cpu:.0f} %)"
        rows.append(f"| {s['configuration']} | {_fmt_int(rps)} ({_fmt_int(s['records_per_s_min'])}"
                    f"{DASH}{_fmt_int(s['records_per_s_max'])}) | {pct} | {_fmt(cpu, 2)} | "
                    f"{_fmt_int(per_cpu)}{cpu_pct} | "
                    f"{'-' if key == 'discard' else _fmt(files, 0)} | "
                    f"{'-' if key == 'discard' else _fmt(None if mb is None else mb / 1e6)} | "
                    f"{_fmt(s['peak_rss_mb'], 0)} |")
    verdicts = []
    jsonl = summaries.get("jsonl", {}).get("records_per_s")
    parquet = summaries.get("parquet", {}).get("records_per_s")
    if base and jsonl:
        r = jsonl / base
        verdicts.append(f"FileSink (JSON lines) / Discard = {100 * r:.1f} % (target >= "
                        f"{100 * TARGET_JSONL_VS_DISCARD:.0f} %): "
                        f"{'met' if r >= TARGET_JSONL_VS_DISCARD else 'MISSED'}")
    if jsonl and parquet:
        r = parquet / jsonl
        verdicts.append(f"Parquet / JSON lines = {r:.2f} (target >= 1.00): "
                        f"{'met' if r >= 1.0 else 'MISSED'}")
    return "\n".join(rows), verdicts


def _med_of(runs: list[dict[str, Any]], field: str) -> float | None:
    vals = sorted(r[field] for r in runs if r.get(field) is not None)
    return vals[len(vals) // 2] if vals else None


def main_parent(args: argparse.Namespace) -> int:
    machine = machine_info()
    keys = [k for k in SINKS if not args.only or k in args.only.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    print(f"W1 into FileSink: N={args.records:,}, parallelism 1, checkpoints every "
          f"{args.interval:g} s, {args.runs} interleaved run(s) per sink, {machine['cores']} "
          f"cores, Python {machine['python']}", flush=True)
    for r in range(args.runs):
        for k in keys:
            rec = run_subprocess(k, args)
            rec["run"] = r + 1
            runs[k].append(rec)
            status = "ok" if rec.get("valid") else f"INVALID: {rec.get('problems')}"
            print(f"  run {r + 1} {SINKS[k]:<22} {_fmt_int(rec.get('records_per_s'))} rec/s, "
                  f"wall {_fmt(rec.get('wall_s'), 2)} s [{status}]", flush=True)
    summaries = {}
    for k in keys:
        s = summarize({"name": SINKS[k], "key": k}, runs[k], args.records, machine)
        s["workload"] = "W1 keyed-sum into a sink (P1, exactly-once checkpoints)"
        summaries[k] = s
    table, verdicts = render(summaries)
    head = "\n".join([
        "# W1 into FileSink",
        "",
        f"W1 keyed-sum, N = {args.records:,} records, parallelism 1, exactly-once checkpoints "
        f"every {args.interval:g} s; the reduce's N updates go to the sink. {args.runs} "
        f"interleaved run(s) per sink, each in a fresh subprocess; medians (min{DASH}max). "
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['implementation']} "
        f"{machine['python']}; {machine['date']}; load average at start "
        f"{machine['loadavg_at_start']}. Shared, noisy machine. Engine: git "
        f"{machine.get('git_head')}.",
        "",
        "records/s = N / processing seconds (final checkpoint and its commit included). "
        "CPU s and records per CPU-second count the worker process (all its threads; the "
        "Parquet sink encodes on a helper thread), less sensitive to a busy machine than "
        "records/s.",
        "",
    ])
    md = f"{head}\n{table}\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"
    print()
    print(table)
    print()
    for v in verdicts:
        print(v)
    return save_results("filesink", summaries, md, save=not args.no_save)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0, help="checkpoint interval, s")
    ap.add_argument("--only", default="", help="comma-separated sinks: " + ",".join(SINKS))
    ap.add_argument("--no-save", action="store_true", help="do not write results files")
    ap.add_argument("--one", action="store_true", help="run one configuration, print JSON")
    ap.add_argument("--sink", choices=list(SINKS), default="jsonl")
    args = ap.parse_args()
    if args.one:
        rec = run_one(args.records, args.sink, args.interval)
        print(json.dumps(rec), flush=True)
        return 0 if rec["valid"] else 1
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
