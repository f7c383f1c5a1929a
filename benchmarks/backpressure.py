"""Checkpoints under backpressure: W6 (see /work/shared/bench/WORKLOADS.md), and what
unaligned checkpoints cost without backpressure (W1).

    python benchmarks/backpressure.py                  # W6 for 60 s per mode + W1, 3 runs
    python benchmarks/backpressure.py --seconds 20 --runs 1   # a quick look

W6: W1's records as fast as possible, key by key, keyed running sum, then an operator that
sleeps 0.5 ms per record (about 2,000 records/s per subtask, far slower than the source),
FileSink; parallelism 2, checkpoints every 1 s, timeout 60 s; the input is sized so that
the slow operator needs about ``--seconds`` seconds. Modes, in the same run, interleaved:
aligned, unaligned (buffers sized by time, its default buffer_time of 0.1 s), unaligned with
fixed buffers (buffer_time=0), aligned with an alignment timeout of 0.2 s. Figures: completed and
timed-out checkpoints, median and max end-to-end checkpoint duration, in-flight bytes per
checkpoint. Every run checks the committed output exactly (the running sums).

W1 overhead: W1 (2,000,000 records, parallelism 1 and 2, exactly-once checkpoints every
1 s) aligned against unaligned (no backpressure: the target is at most 5 % slower).

Every run is a fresh subprocess; results go to benchmarks/results/backpressure.json and
backpressure.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from w1 import run_child  # noqa: E402

RESULTS = HERE / "results"
SLEEP = 0.0005  # W6: seconds per record in the slow operator
MODES: dict[str, dict[str, Any]] = {
    "aligned": {},
    "unaligned": {"unaligned": True},
    "unaligned-fixed-buffers": {"unaligned": True, "buffer_time": 0},
    "aligned-timeout-0.2": {"aligned_timeout": 0.2},
}


def _slow(kv: Any) -> Any:
    time.sleep(SLEEP)
    return kv


def run_w6(mode: str, seconds: float) -> dict[str, Any]:
    import onceflow as of

    n = int(seconds * 2 * (1 / SLEEP) * 0.9)  # two slow subtasks at ~1/SLEEP records/s
    tmp = tempfile.mkdtemp(prefix="w6-")
    try:
        flow = of.Flow("w6", parallelism=2)
        flow.enable_checkpointing(1.0, os.path.join(tmp, "ck"), timeout=60.0,
                                  tolerable_failures=1_000_000, **MODES[mode])
        (flow.source(of.sources.Range(0, n), name="source")
             .map(lambda i: (i * 7919 % 10000, i % 100 * 2), name="records")
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum")
             .map(_slow, name="slow")
             .sink(of.sinks.FileSink(os.path.join(tmp, "out")), name="files"))
        result = flow.run()
        got = Counter(tuple(r) for r in of.sinks.read_committed(os.path.join(tmp, "out")))
        want: Counter[tuple[int, int]] = Counter()
        sums: dict[int, int] = {}
        for i in range(n):
            k, v = i * 7919 % 10000, i % 100 * 2
            sums[k] = sums.get(k, 0) + v
            want[(k, sums[k])] += 1
        periodic = [c for c in result.checkpoints if not c.final and c.kind == "checkpoint"]
        done = [c for c in periodic if c.status.name == "COMPLETED"]
        timed_out = [c for c in periodic if c.status.name != "COMPLETED"
                     and "timeout" in (c.failure or "").lower()]
        durs = [c.duration * 1e3 for c in done if c.duration is not None]
        inflight = [sum(getattr(s, "inflight_bytes", 0) for s in c.subtasks) for c in done]
        return {
            "workload": "W6", "configuration": mode, "records": n,
            "seconds": result.processing_seconds,
            "records_per_s": n / result.processing_seconds,
            "checkpoints_completed": len(done), "checkpoints_timed_out": len(timed_out),
            "checkpoints_failed": len(periodic) - len(done),
            "checkpoint_median_ms": statistics.median(durs) if durs else None,
            "checkpoint_max_ms": max(durs) if durs else None,
            "inflight_bytes_median": statistics.median(inflight) if inflight else 0,
            "inflight_bytes_max": max(inflight, default=0),
            "valid": got == want,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_w1(mode: str, parallelism: int, records: int) -> dict[str, Any]:
    import w1

    out = w1.run_one_onceflow(records, parallelism, True, 1.0,
                              ckpt_options=MODES[mode])
    out.update({"workload": "W1", "configuration": f"p{parallelism}-{mode}"})
    return out


def _child(args: argparse.Namespace) -> None:
    if args.workload == "W6":
        res = run_w6(args.mode, args.seconds)
    else:
        res = run_w1(args.mode, args.parallelism, args.records)
    print(json.dumps(res), flush=True)


def _spawn(cmd: list[str]) -> dict[str, Any]:
    run = run_child([sys.executable, str(Path(__file__).resolve()), "--child", *cmd],
                    timeout=1800)
    if run.returncode != 0 or run.rec is None:
        return {"error": run.err[-2000:], "valid": False, "cmd": cmd}
    return run.rec


def _med(rows: list[dict[str, Any]], key: str) -> Any:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0, help="W6 run length")
    ap.add_argument("--records", type=int, default=2_000_000, help="W1 records")
    ap.add_argument("--skip-w1", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="W6", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="aligned", help=argparse.SUPPRESS)
    ap.add_argument("--parallelism", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return 0
    configs: list[list[str]] = [["--workload", "W6", "--mode", m, "--seconds", str(args.seconds)]
                                for m in MODES]
    if not args.skip_w1:
        configs += [["--workload", "W1", "--mode", m, "--parallelism", str(p),
                     "--records", str(args.records)]
                    for p in (1, 2) for m in ("aligned", "unaligned")]
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.runs):
        for cfg in configs:
            res = _spawn(cfg)
            key = f"{cfg[1]} {res.get('configuration', cfg[3])}"
            runs.setdefault(key, []).append(res)
            print(f"run {r + 1} {key}: "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in res.items() if k not in ("problems", "error")),
                  flush=True)
            if not res.get("valid"):
                print(f"  INVALID: {res.get('error') or res.get('problems')}", flush=True)
    summary = {}
    for key, rows in runs.items():
        summary[key] = {k: _med(rows, k) for k in rows[0]
                        if isinstance(rows[0].get(k), int | float)
                        and not isinstance(rows[0].get(k), bool)}
        summary[key]["valid"] = all(r.get("valid") for r in rows)
        summary[key]["runs"] = len(rows)
    machine = {"cores": os.cpu_count(), "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backpressure.json").write_text(json.dumps(
        {"machine": machine, "summary": summary, "runs": runs}, indent=1))
    lines = [f"# Checkpoints under backpressure ({machine['date']}, {machine['cores']} cores, "
             f"Python {machine['python']}, medians of {args.runs} interleaved runs)", "",
             "| W6 mode | completed | timed out | median ms | max ms | in-flight bytes "
             "(median) | records/s |", "|---|---|---|---|---|---|---|"]
    for m in MODES:
        s = summary.get(f"W6 {m}")
        if s:
            lines.append(f"| {m} | {s.get('checkpoints_completed')} | "
                         f"{s.get('checkpoints_timed_out')} | "
                         f"{(s.get('checkpoint_median_ms') or 0):.0f} | "
                         f"{(s.get('checkpoint_max_ms') or 0):.0f} | "
                         f"{(s.get('inflight_bytes_median') or 0):.0f} | "
                         f"{(s.get('records_per_s') or 0):.0f} |")
    a, u = summary.get("W6 aligned"), summary.get("W6 unaligned")
    if a and u and a.get("checkpoint_median_ms") and u.get("checkpoint_median_ms"):
        lines += ["", f"Unaligned median ÷ aligned median: "
                      f"{u['checkpoint_median_ms'] / a['checkpoint_median_ms']:.3f} "
                      "(target ≤ 0.1)"]
    if not args.skip_w1:
        lines += ["", "| W1 | aligned records/s | unaligned records/s | unaligned ÷ aligned |",
                  "|---|---|---|---|"]
        for p in (1, 2):
            al = summary.get(f"W1 p{p}-aligned", {}).get("records_per_s")
            un = summary.get(f"W1 p{p}-unaligned", {}).get("records_per_s")
            if al and un:
                lines.append(f"| p{p} | {al:,.0f} | {un:,.0f} | {un / al:.3f} |")
    (RESULTS / "backpressure.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(s["valid"] for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
