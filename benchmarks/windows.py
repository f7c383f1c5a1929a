"""Window benchmarks against W1's running sum, in the same invocation.

    python benchmarks/windows.py                   # all configurations, 3 interleaved runs
    python benchmarks/windows.py --runs 1 --records 500000 --no-save
    python benchmarks/windows.py --one --kind tumbling        # one run, one JSON line

Configurations (parallelism 1, exactly-once checkpoints every 1 s):

* ``w1``: W1 keyed-sum (``benchmarks/w1.py --one --parallelism 1 --checkpoints on``).
* ``tumbling``: W1's records and map, event time = record index (monotonous timestamps),
  key by key, ``tumbling(SIZE)`` window ``aggregate(of.agg.count())`` (memory backend).
  Target: >= 60 % of ``w1``'s records/s.
* ``sliding``: the same with ``sliding(SIZE, SIZE / 10)`` (each record in 10 windows).
  Target: >= 40 % of ``w1``.
* ``session``: 1.2 M records, key = i % 1,000,000 (1 M keys; 200,000 of them seen twice,
  so their sessions merge), event time = i, ``session(gap = 1.5 M)`` so every session
  stays open until the end of input (1 M open windows and timers in state),
  ``aggregate(of.agg.count())``, RocksDB backend with incremental checkpoints. Reports
  throughput, checkpoint sizes and peak memory.

Every run is a fresh subprocess (w1.py's harness: start-up measured, memory sampled);
results go to ``benchmarks/results/windows.json`` and ``windows.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import w1  # the W1 harness: subprocess runs, memory sampling, machine info

SIZE = 100_000.0  # seconds of event time = records: 10 records per key and window
SESSION_KEYS = 1_000_000


def _sink_class() -> type:
    import onceflow as of

    class CountingSink(of.sinks.Sink):
        """Counts results and sums their values (checkpointed, so exact across restarts);
        ``finish`` writes the figures for the parent."""

        def __init__(self, out_dir: str) -> None:
            self.out_dir, self.n, self.total, self.subtask = out_dir, 0, 0, 0

        def open(self, ctx: Any) -> None:
            self.subtask = ctx.subtask

        def write(self, records: list[Any]) -> None:
            self.n += len(records)
            self.total += sum(r[3] for r in records)

        def snapshot_state(self, checkpoint_id: int) -> Any:
            return (self.n, self.total)

        def restore_state(self, states: list[Any]) -> None:
            self.n = sum(s[0] for s in states if s)
            self.total = sum(s[1] for s in states if s)

        def finish(self) -> None:
            path = os.path.join(self.out_dir, f"sink-{self.subtask}.json")
            with open(path, "w") as f:
                json.dump({"n": self.n, "total": self.total}, f)

    return CountingSink


def build(kind: str, n: int, ckpt: str, sink_dir: str, interval: float) -> Any:
    import onceflow as of

    backend = of.state.RocksDBBackend() if kind == "session" else of.state.MemoryBackend()
    flow = of.Flow(f"windows-{kind}", parallelism=1, state_backend=backend)
    flow.enable_checkpointing(interval=interval, storage=ckpt, incremental=kind == "session")
    ws = of.WatermarkStrategy.monotonous_timestamps().with_timestamps(float)
    src = flow.source(of.sources.Range(0, n), name="source", watermarks=ws)
    if kind == "session":
        keyed = src.key_by(lambda i: i % SESSION_KEYS)
        assigner = of.windows.session(1.5 * SESSION_KEYS)
    else:
        keyed = (src.map(lambda i: (i * 7919 % 10000, i % 100), name="records")
                    .map(lambda kv: (kv[0], kv[1] * 2), name="double")
                    .key_by(lambda kv: kv[0]))
        assigner = of.windows.tumbling(SIZE) if kind == "tumbling" else \
            of.windows.sliding(SIZE, SIZE / 10)
    (keyed.window(assigner).aggregate(of.agg.count(), name="window")
          .sink(_sink_class()(sink_dir), name="sink"))
    return flow


def expected_total(kind: str, n: int) -> int:
    return n * 10 if kind == "sliding" else n


def run_one(kind: str, n: int, interval: float) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix=f"wbench-{kind}-")
    try:
        ckpt, sink_dir = os.path.join(tmp, "ck"), os.path.join(tmp, "sink")
        os.makedirs(sink_dir)
        result = build(kind, n, ckpt, sink_dir, interval).run()
        ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures = [json.loads(p.read_text()) for p in Path(sink_dir).glob("sink-*.json")]
        total = sum(f["total"] for f in figures)
        problems = []
        if total != expected_total(kind, n):
            problems.append(f"counted {total} records in windows, expected "
                            f"{expected_total(kind, n)}")
        done = result.completed_checkpoints
        periodic = [c for c in done if not c.final]
        return {
            "kind": kind, "records": n, "processing_s": result.processing_seconds,
            "records_per_s": n / result.processing_seconds,
            "results": sum(f["n"] for f in figures),
            "peak_rss_mb": w1._maxrss_mb(resource.RUSAGE_SELF)
            + w1._maxrss_mb(resource.RUSAGE_CHILDREN),
            "cpu_workers_s": ru_kids.ru_utime + ru_kids.ru_stime,
            "checkpoints_periodic": len(periodic),
            "checkpoint_sizes_bytes": [c.size for c in periodic],
            "checkpoint_max_bytes": max((c.size or 0 for c in periodic), default=None),
            "checkpoint_median_ms": statistics.median(
                [c.duration * 1e3 for c in periodic if c.duration is not None] or [0.0]),
            "checkpoint_max_sync_ms": max((c.max_sync_ms for c in periodic), default=None),
            "valid": not problems, "problems": problems,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CONFIGS = [
    {"key": "w1", "name": "W1 running sum, P1, checkpoints 1 s"},
    {"key": "tumbling", "name": f"tumbling({SIZE:.0f}) count"},
    {"key": "sliding", "name": f"sliding({SIZE:.0f}, {SIZE / 10:.0f}) count"},
    {"key": "session", "name": "session, 1 M keys, RocksDB"},
]
TARGETS = {"tumbling": 0.60, "sliding": 0.40}


def run_child(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if cfg["key"] == "w1":
        ns = argparse.Namespace(records=args.records, interval=args.interval)
        return w1.run_subprocess({"args": ["--parallelism", "1", "--checkpoints", "on"]}, ns)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--kind", cfg["key"],
           "--records", str(args.session_records if cfg["key"] == "session" else args.records),
           "--interval", str(args.interval)]
    run = w1.run_child(cmd)
    rec = run.rec
    if rec is None:
        return {"valid": False, "problems": [f"exit {run.returncode}: {run.err[-2000:]}"]}
    if run.returncode != 0:
        rec["valid"] = False
        rec.setdefault("problems", []).append(f"exit code {run.returncode}")
    rec["wall_s"] = run.wall_s
    rec["sampled_tree_rss_mb"] = run.sampled_tree_rss_mb
    return rec


def main_parent(args: argparse.Namespace) -> int:
    machine = w1.machine_info()
    selected = [c for c in CONFIGS if not args.only or c["key"] in args.only.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {c["key"]: [] for c in selected}
    for r in range(args.runs):
        for cfg in selected:
            rec = run_child(cfg, args)
            runs[cfg["key"]].append(rec)
            print(f"  run {r + 1} {cfg['name']:<40} {w1._fmt_int(rec.get('records_per_s'))} "
                  f"rec/s [{'ok' if rec.get('valid') else rec.get('problems')}]", flush=True)
    summaries: dict[str, Any] = {}
    for cfg in selected:
        ok = [x for x in runs[cfg["key"]] if x.get("valid")]
        rps = [x["records_per_s"] for x in ok]
        summaries[cfg["key"]] = {
            "workload": "windows", "configuration": cfg["name"], "key": cfg["key"],
            "records": ok[0]["records"] if ok and "records" in ok[0] else args.records,
            "seconds": statistics.median([x["processing_s"] for x in ok]) if ok else None,
            "records_per_s": statistics.median(rps) if rps else None,
            "records_per_s_min": min(rps) if rps else None,
            "records_per_s_max": max(rps) if rps else None,
            "peak_rss_mb": statistics.median([x["peak_rss_mb"] for x in ok]) if ok else None,
            "sampled_tree_rss_mb": max((x.get("sampled_tree_rss_mb") or 0 for x in ok),
                                       default=None),
            "checkpoint_max_bytes": max((x.get("checkpoint_max_bytes") or 0 for x in ok),
                                        default=None),
            "valid_runs": len(ok), "total_runs": len(runs[cfg["key"]]),
            "runs": runs[cfg["key"]], "machine": machine,
        }
    base = summaries.get("w1", {}).get("records_per_s")
    base_runs = [x.get("records_per_s") if x.get("valid") else None
                 for x in runs.get("w1", [])]
    rows = [f"| configuration | records/s median (min{w1.DASH}max) | vs W1 | per run vs W1 "
            "| target | met | peak RSS MB (sampled tree) | largest checkpoint "
            "| max checkpoint sync ms |", "|---|---|---|---|---|---|---|---|---|"]
    for key, s in summaries.items():
        rps = s["records_per_s"]
        ratio = rps / base if rps and base else None
        tgt = TARGETS.get(key)
        s["ratio_vs_w1"] = ratio
        met = "-" if tgt is None or ratio is None else ("yes" if ratio >= tgt else "NO")
        # run i against W1's run i of the same round (interleaved: the same load)
        pair = [f"{100 * x['records_per_s'] / b:.0f} %"
                for x, b in zip(runs[key], base_runs, strict=False)
                if key != "w1" and b and x.get("valid")]
        s["ratios_per_run"] = pair
        ck = s["checkpoint_max_bytes"]
        syncs = [x.get("checkpoint_max_sync_ms") for x in runs[key] if x.get("valid")]
        sync = max((v for v in syncs if v is not None), default=None)
        rows.append(
            f"| {s['configuration']} | {w1._fmt_int(rps)} ({w1._fmt_int(s['records_per_s_min'])}"
            f"{w1.DASH}{w1._fmt_int(s['records_per_s_max'])}) | "
            f"{'-' if ratio is None or key == 'w1' else f'{100 * ratio:.0f} %'} | "
            f"{', '.join(pair) or '-'} | "
            f"{'-' if tgt is None else f'>= {100 * tgt:.0f} %'} | {met} | "
            f"{w1._fmt(s['sampled_tree_rss_mb'], 0)} | "
            f"{'-' if not ck else f'{ck / 1e6:.1f} MB'} | "
            f"{'-' if sync is None else f'{sync:,.0f}'} |")
    ses = summaries.get("session")
    if ses and ses["runs"] and ses["runs"][0].get("checkpoint_sizes_bytes"):
        sizes = [x for x in ses["runs"][0]["checkpoint_sizes_bytes"] if x] or [0]
        rows.append(f"\nSession job, run 1: {len(sizes)} periodic checkpoints (incremental), "
                    f"sizes {min(sizes) / 1e6:.1f}{w1.DASH}{max(sizes) / 1e6:.1f} MB "
                    f"(median {statistics.median(sizes) / 1e6:.1f} MB).")
    table = "\n".join(rows)
    md = (f"# Window benchmarks\n\nN = {args.records:,} (session: {args.session_records:,}), "
          f"{args.runs} interleaved run(s), parallelism 1, exactly-once checkpoints every "
          f"{args.interval} s. Machine: {machine['cores']} cores ({machine['cpu']}), Python "
          f"{machine['python']}, {machine['date']}, load {machine['loadavg_at_start']}; "
          f"git {machine.get('git_head')}. Shared, noisy machine.\n\n{table}\n")
    print()
    print(table)
    return w1.save_results("windows", summaries, md, save=not args.no_save)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--session-records", type=int, default=SESSION_KEYS + SESSION_KEYS // 5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--only", default="", help="comma-separated: w1,tumbling,sliding,session")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", action="store_true")
    ap.add_argument("--kind", choices=["tumbling", "sliding", "session"], default="tumbling")
    args = ap.parse_args()
    if args.one:
        rec = run_one(args.kind, args.records, args.interval)
        print(json.dumps(rec), flush=True)
        return 0 if rec["valid"] else 1
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
