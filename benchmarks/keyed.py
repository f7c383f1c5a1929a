"""The keyed path in-process: W2's shape with no Kafka (see benchmarks/README.md).

    python benchmarks/keyed.py                       # all configurations, 3 interleaved runs
    python benchmarks/keyed.py --records 200000 --runs 1
    python benchmarks/keyed.py --one --parallelism 2 --mode exactly_once   # one JSON line

W2 (``make bench-w2``) measures consume, parse, sum per user and produce through a Kafka
broker, whose client and transactions take much of each record's CPU; this benchmark runs
the same flow shape on records held in memory, so what it measures is onceflow's own
per-record cost on a keyed flow: the JSON values of W2's input topic (``{"id", "user":
"u<i % 5000>", "amount", "pad"}``, about 100 bytes) from a replayable in-memory source,
parsed with orjson, reshaped to ``{"user", "total", "id"}``, keyed by user (the key edge: a
local queue at parallelism 1; records cross worker processes at 2), a running total per
user (``reduce``), into a counting sink whose figures are checkpointed. Checkpoints every
1 s: exactly-once (aligned barriers), at-least-once, or off.

The figure is records per CPU-second of the workers (user + system, from their whole
lives), steadier than records/s on a shared machine; records/s over the processing time is
reported too. A run is valid when the sink counted every record once and the last total of
every user equals the sum of its amounts. Results: benchmarks/results/keyed.json and
keyed.md.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from w1 import machine_info, run_child, save_results  # noqa: E402

USERS = 5000
CONFIGS = [(p, m) for m in ("exactly_once", "at_least_once", "off") for p in (1, 2)]


def values(n: int) -> list[bytes]:
    """W2's input values, as its topic holds them (JSON, about 100 bytes each)."""
    import orjson

    pad = "x" * 40
    return [orjson.dumps({"id": i, "user": f"u{i % USERS}", "amount": i % 1000, "pad": pad})
            for i in range(n)]


def expected_totals(n: int) -> int:
    """The sum over users of each user's last total: every amount once."""
    full, rest = divmod(n, 1000)
    return full * 499_500 + rest * (rest - 1) // 2


def _sink(out_dir: str) -> Any:
    import onceflow as of

    class CountingSink(of.sinks.Sink):
        """Counts records and keeps each user's last total (both checkpointed); ``finish``
        writes them to ``<out_dir>/sink-<subtask>.json``."""

        def __init__(self) -> None:
            self.n = 0
            self.last: dict[str, int] = {}
            self.subtask = 0

        def open(self, ctx: Any) -> None:
            self.subtask = ctx.subtask

        def write(self, records: list[Any]) -> None:
            self.n += len(records)
            last = self.last
            for r in records:
                last[r["user"]] = r["total"]

        def snapshot_state(self, checkpoint_id: int) -> Any:
            return (self.n, self.last)

        def restore_state(self, states: list[Any]) -> None:
            self.n, self.last = 0, {}
            for st in states:
                if st:
                    self.n += st[0]
                    self.last.update(st[1])

        def finish(self) -> None:
            path = os.path.join(out_dir, f"sink-{self.subtask}.json")
            with open(path + ".tmp", "w") as f:
                json.dump({"n": self.n, "totals": sum(self.last.values()),
                           "users": len(self.last)}, f)
            os.replace(path + ".tmp", path)

    return CountingSink()


def build_flow(data: list[bytes], parallelism: int, mode: str, tmp: str, sink_dir: str) -> Any:
    import orjson

    import onceflow as of

    flow = of.Flow("keyed", parallelism=parallelism)
    if mode != "off":
        flow.enable_checkpointing(1.0, os.path.join(tmp, "ckpt"), mode=mode)
    (flow.source(of.sources.Collection(data), name="values")
         .map(orjson.loads, name="deserialize")
         .map(lambda r: {"user": r["user"], "total": r["amount"], "id": r["id"]}, name="parse")
         .key_by(lambda r: r["user"])
         .reduce(lambda acc, r: {"user": r["user"], "total": acc["total"] + r["total"],
                                 "id": r["id"]}, name="total")
         .sink(_sink(sink_dir), name="sink"))
    return flow


def run_one(n: int, parallelism: int, mode: str) -> dict[str, Any]:
    data = values(n)
    tmp = tempfile.mkdtemp(prefix="keyed-")
    try:
        sink_dir = os.path.join(tmp, "sink")
        os.makedirs(sink_dir)
        result = build_flow(data, parallelism, mode, tmp, sink_dir).run()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, summed
        cpu = ru.ru_utime + ru.ru_stime
        files = sorted(Path(sink_dir).glob("sink-*.json"))
        got = [json.loads(f.read_text()) for f in files]
        counted = sum(d["n"] for d in got)
        totals = sum(d["totals"] for d in got)
        users = sum(d["users"] for d in got)
        problems = []
        if counted != n:
            problems.append(f"sink counted {counted} != {n}")
        if totals != expected_totals(n):
            problems.append(f"last totals sum to {totals} != {expected_totals(n)}")
        if users != min(n, USERS):
            problems.append(f"{users} users, expected {min(n, USERS)}")
        periodic = [c for c in result.completed_checkpoints if not c.final]
        return {
            "workload": "keyed", "parallelism": parallelism, "mode": mode, "records": n,
            "processing_s": result.processing_seconds,
            "records_per_s": n / result.processing_seconds,
            "cpu_workers_s": cpu, "records_per_cpu_s": n / max(cpu, 1e-9),
            "worker_us_per_record": cpu / n * 1e6,
            "checkpoints_periodic": len(periodic), "restarts": result.restarts,
            "valid": not problems, "problems": problems,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def key_of(p: int, mode: str) -> str:
    return f"p{p}-{ {'exactly_once': 'eo', 'at_least_once': 'alo', 'off': 'off'}[mode] }"


def main_parent(args: argparse.Namespace) -> int:
    configs = [(p, m) for p, m in CONFIGS
               if not args.only or key_of(p, m) in args.only.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {key_of(p, m): [] for p, m in configs}
    for r in range(args.runs):
        for p, m in configs:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--parallelism",
                   str(p), "--mode", m, "--records", str(args.records)]
            child = run_child(cmd)
            rec = child.rec if child.returncode == 0 and child.rec is not None else {
                "valid": False, "problems": [child.err[-2000:]]}
            rec.update(parallelism=p, mode=m, round=r + 1)
            runs[key_of(p, m)].append(rec)
            print(f"round {r + 1} {key_of(p, m):7s} " + (
                f"{rec['records_per_cpu_s']:>10,.0f} rec/CPU-s {rec['records_per_s']:>10,.0f} "
                f"rec/s" if rec.get("valid") else f"INVALID {rec.get('problems')}"), flush=True)
    summaries: dict[str, Any] = {}
    lines = ["| configuration | records per CPU-s (median) | runs | worker µs per record | "
             "records/s (median) | valid |", "|---|---:|---|---:|---:|---|"]
    for k, rs in runs.items():
        ok = [x for x in rs if x.get("valid")]
        cpu = [x["records_per_cpu_s"] for x in ok]
        rps = [x["records_per_s"] for x in ok]
        med = statistics.median(cpu) if cpu else None
        summaries[k] = {"configuration": k, "records": args.records, "runs": rs,
                        "records_per_cpu_s": med,
                        "records_per_s": statistics.median(rps) if rps else None,
                        "total_runs": len(rs), "valid_runs": len(ok),
                        "valid": len(ok) == len(rs)}
        lines.append(f"| {k} | {med or 0:,.0f} | {', '.join(f'{c:,.0f}' for c in cpu)} | "
                     f"{1e6 / med if med else 0:.2f} | "
                     f"{statistics.median(rps) if rps else 0:,.0f} | {len(ok)}/{len(rs)} |")
    info = machine_info()
    md = (f"# Keyed path in-process (W2's shape, no Kafka)\n\n{args.records:,} records, "
          f"{args.runs} interleaved round(s), median. Command: `python benchmarks/keyed.py "
          f"--records {args.records} --runs {args.runs}`. Machine: {info['cores']} cores, "
          f"{info['cpu']}, Python {info['python']}, load average at start "
          f"{', '.join(f'{x:.1f}' for x in info['loadavg_at_start'])}, git "
          f"{info['git_head']}, {info['date']}.\n\n"
          + "\n".join(lines) + "\n")
    print(md)
    return save_results(args.stem, summaries, md, save=not args.no_save)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated: p1-eo,p2-eo,p1-alo,...")
    ap.add_argument("--stem", default="keyed", help="results file name under results/")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", action="store_true", help="one run in this process (JSON line)")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--mode", choices=["exactly_once", "at_least_once", "off"],
                    default="exactly_once")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.records, args.parallelism, args.mode)), flush=True)
        return 0
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
