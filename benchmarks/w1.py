"""W1 keyed-sum benchmark (see /work/shared/bench/WORKLOADS.md and benchmarks/README.md).

    python benchmarks/w1.py                      # all configurations, 3 interleaved runs each
    python benchmarks/w1.py --records 200000 --runs 1
    python benchmarks/w1.py --one --parallelism 1 --checkpoints on   # one run, one JSON line
    python benchmarks/w1.py --one --plain                             # the plain-Python loop

Every run is a fresh subprocess (start-up is measured, runs share no memory). Runs are
interleaved: run 1 of every configuration, then run 2 of every configuration, and so on.
Results go to benchmarks/results/w1.json and benchmarks/results/w1.md; the script exits
non-zero when any run fails its validity check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DASH = "\u2013"  # en dash, for "min-max" ranges in tables
EXPECTED_LAST_SUM_TOTAL = 198_000_000  # for N = 2,000,000; computed for other N below


def expected_last_sum_total(n: int) -> int:
    """2 * sum(i % 100 for i < n), without looping over n."""
    full, rest = divmod(n, 100)
    return 2 * (full * 4950 + rest * (rest - 1) // 2)


assert expected_last_sum_total(2_000_000) == EXPECTED_LAST_SUM_TOTAL


# --- the counting sink ---------------------------------------------------------------------
def _make_sink_class() -> type:
    import onceflow as of

    class CountingSink(of.sinks.Sink):
        """Counts records and keeps each key's last emitted sum; both are checkpointed, so
        the figures are exact across restarts. ``finish`` (end of input, in the worker)
        writes them to ``<out_dir>/sink-<subtask>.json`` for the parent to check."""

        def __init__(self, out_dir: str) -> None:
            self.out_dir = out_dir
            self.n = 0
            self.last: dict[Any, Any] = {}
            self.subtask = 0

        def open(self, ctx: Any) -> None:
            self.subtask = ctx.subtask

        def write(self, records: list[Any]) -> None:
            self.n += len(records)
            self.last.update(records)  # records are (key, running sum) pairs

        def snapshot_state(self, checkpoint_id: int) -> Any:
            return (self.n, self.last)

        def restore_state(self, states: list[Any]) -> None:
            self.n, self.last = 0, {}
            for st in states:
                if st:
                    n, last = st
                    self.n += n
                    self.last.update(last)

        def finish(self) -> None:
            path = os.path.join(self.out_dir, f"sink-{self.subtask}.json")
            with open(path + ".tmp", "w") as f:
                json.dump({"n": self.n, "last_sum": sum(v for v in self.last.values()),
                           "keys": len(self.last)}, f)
            os.replace(path + ".tmp", path)

    return CountingSink


# --- one run, in the child process ---------------------------------------------------------
def build_flow(n: int, parallelism: int, checkpoints: bool, ckpt_dir: str, sink_dir: str,
               interval: float = 1.0, ckpt_options: dict[str, Any] | None = None) -> Any:
    import onceflow as of

    sink_cls = _make_sink_class()
    flow = of.Flow("w1", parallelism=parallelism)
    if checkpoints:
        flow.enable_checkpointing(interval=interval, storage=ckpt_dir, **(ckpt_options or {}))
    (flow.source(of.sources.Range(0, n), name="source")
         .map(lambda i: (i * 7919 % 10000, i % 100), name="records")  # W1's record i
         .map(lambda kv: (kv[0], kv[1] * 2), name="double")  # W1's map step
         .key_by(lambda kv: kv[0])
         .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum")
         .sink(sink_cls(sink_dir), name="sink"))
    return flow


def _maxrss_mb(who: int) -> float:
    kb = resource.getrusage(who).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def run_one_onceflow(n: int, parallelism: int, checkpoints: bool, interval: float,
                     ckpt_options: dict[str, Any] | None = None) -> dict:
    tmp = tempfile.mkdtemp(prefix="w1-")
    try:
        ckpt_dir = os.path.join(tmp, "checkpoints")
        sink_dir = os.path.join(tmp, "sink")
        os.makedirs(sink_dir)
        flow = build_flow(n, parallelism, checkpoints, ckpt_dir, sink_dir, interval, ckpt_options)
        result = flow.run()
        driver_mb = _maxrss_mb(resource.RUSAGE_SELF)
        worker_mb = _maxrss_mb(resource.RUSAGE_CHILDREN)  # the largest waited-for worker
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # summed over all workers
        emitted = last_sum = keys = 0
        files = sorted(Path(sink_dir).glob("sink-*.json"))
        for f in files:
            d = json.loads(f.read_text())
            emitted += d["n"]
            last_sum += d["last_sum"]
            keys += d["keys"]
        problems = []
        if len(files) != parallelism:
            problems.append(f"{len(files)} sink files, expected {parallelism}")
        if emitted != n:
            problems.append(f"emitted {emitted} != {n}")
        if last_sum != expected_last_sum_total(n):
            problems.append(f"last-sum total {last_sum} != {expected_last_sum_total(n)}")
        if result.records_in("sink") != n:
            problems.append(f"result.records_in('sink') {result.records_in('sink')} != {n}")
        done = result.completed_checkpoints
        periodic = [c for c in done if not c.final]
        durs = [c.duration * 1e3 for c in periodic if c.duration is not None]
        return {
            "kind": "onceflow",
            "parallelism": parallelism,
            "checkpoints": checkpoints,
            "records": n,
            "processing_s": result.processing_seconds,
            "startup_s": result.processing_started_at - result.started_at,
            "duration_s": result.duration,
            "records_per_s": n / result.processing_seconds,
            "driver_maxrss_mb": driver_mb,
            "max_worker_maxrss_mb": worker_mb,
            "peak_rss_mb": driver_mb + worker_mb,
            "cpu_driver_s": ru_self.ru_utime + ru_self.ru_stime,
            "cpu_workers_s": ru_kids.ru_utime + ru_kids.ru_stime,
            # the work itself: CPU of all workers (start-up and import are in the driver)
            "records_per_cpu_s": n / max(1e-9, ru_kids.ru_utime + ru_kids.ru_stime),
            "emitted": emitted,
            "last_sum_total": last_sum,
            "keys": keys,
            "restarts": result.restarts,
            "checkpoints_completed": len(done),  # including the final one
            "checkpoints_periodic": len(periodic),
            "checkpoints_failed": len(result.checkpoints) - len(done),
            "checkpoint_median_ms": statistics.median(durs) if durs else None,
            "checkpoint_max_ms": max(durs) if durs else None,
            "checkpoint_max_sync_ms": max((c.max_sync_ms for c in periodic), default=None),
            "checkpoint_size_bytes": periodic[-1].size if periodic else None,
            "valid": not problems,
            "problems": problems,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _double(kv: tuple[int, int]) -> tuple[int, int]:
    return (kv[0], kv[1] * 2)


def plain_loop(n: int) -> tuple[int, dict[int, tuple[int, int]]]:
    """W1's work with no framework: build (key, value), map it with a plain function call,
    keep a running sum per key in a dict (holding the last emitted (key, sum), as the reduce
    does), emit (key, sum) and count what is emitted."""
    double = _double
    last: dict[int, tuple[int, int]] = {}
    get = last.get
    emitted = 0
    for i in range(n):
        k, v = double((i * 7919 % 10000, i % 100))
        prev = get(k)
        out = (k, v) if prev is None else (k, prev[1] + v)
        last[k] = out
        emitted += 1
    return emitted, last


def run_one_plain(n: int) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    emitted, last = plain_loop(n)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    last_sum = sum(v[1] for v in last.values())
    problems = []
    if emitted != n:
        problems.append(f"emitted {emitted} != {n}")
    if last_sum != expected_last_sum_total(n):
        problems.append(f"last-sum total {last_sum} != {expected_last_sum_total(n)}")
    return {
        "kind": "plain", "records": n, "processing_s": secs, "records_per_s": n / secs,
        "cpu_processing_s": cpu, "records_per_cpu_s": n / cpu,
        "peak_rss_mb": _maxrss_mb(resource.RUSAGE_SELF), "cpu_driver_s": ru.ru_utime + ru.ru_stime,
        "emitted": emitted,
        "last_sum_total": last_sum, "valid": not problems, "problems": problems,
    }


# --- the parent: configurations, interleaved runs, reporting -------------------------------
CONFIGS: list[dict[str, Any]] = [
    {"name": "plain Python loop", "key": "plain", "args": ["--plain"]},
    {"name": "P1 checkpoints off", "key": "p1-off", "args": ["--parallelism", "1",
                                                             "--checkpoints", "off"]},
    {"name": "P1 checkpoints on (1 s)", "key": "p1-on", "args": ["--parallelism", "1",
                                                                 "--checkpoints", "on"]},
    {"name": "P2 checkpoints off", "key": "p2-off", "args": ["--parallelism", "2",
                                                             "--checkpoints", "off"]},
    {"name": "P2 checkpoints on (1 s)", "key": "p2-on", "args": ["--parallelism", "2",
                                                                 "--checkpoints", "on"]},
]


def sample_tree_rss(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Poll the summed RSS of a process and all its descendants until ``stop`` is set;
    ``out[0]`` holds the peak so far in MB (pages shared after fork are counted once per
    process). Also used by benchmarks/compare/run.py."""
    try:
        import psutil
    except ImportError:
        return
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return
    peak = 0
    while not stop.is_set():
        total = 0
        try:
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        out[:] = [peak / (1024 * 1024)]
        stop.wait(0.05)


class ChildRun(NamedTuple):
    """One benchmark child process: its exit code, its last JSON line (None if it printed
    none), its stderr, its wall time and the peak RSS of its process tree (MB, or None)."""

    returncode: int
    rec: dict[str, Any] | None
    err: str
    wall_s: float
    sampled_tree_rss_mb: float | None


def run_child(cmd: list[str], timeout: float | None = None) -> ChildRun:
    """Run ``cmd`` (a benchmark's ``--one`` child) while sampling its tree's memory; a child
    still running after ``timeout`` seconds is killed (its stderr then says so)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    sampled: list[float] = []
    th = threading.Thread(target=sample_tree_rss, args=(proc.pid, stop, sampled), daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\nTIMEOUT after {timeout} s"
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    rec = json.loads(lines[-1]) if lines else None
    return ChildRun(proc.returncode, rec, err, wall, sampled[0] if sampled else None)


def run_subprocess(cfg: dict[str, Any], args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--records",
           str(args.records), "--interval", str(args.interval), *cfg["args"]]
    run = run_child(cmd)
    rec = run.rec
    if rec is None:
        return {"valid": False, "wall_s": run.wall_s,
                "problems": [f"exit code {run.returncode}: {run.err.strip()[-2000:]}"]}
    if run.returncode != 0:
        rec["valid"] = False
        rec.setdefault("problems", []).append(f"exit code {run.returncode}")
    rec["wall_s"] = run.wall_s
    rec["sampled_tree_rss_mb"] = run.sampled_tree_rss_mb
    return rec


def _med(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def _span(vals: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in vals if x is not None]
    return (min(v), max(v)) if v else (None, None)


def machine_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        **_git_info(),
    }


def _git_info() -> dict[str, Any]:
    """Which engine was measured (read-only git calls; other people edit the tree)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, env=env,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--stat", "HEAD", "--", "onceflow"],
                               cwd=HERE, env=env, capture_output=True, text=True,
                               timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_head": head or None,
            "onceflow_uncommitted_changes": dirty[-1].strip() if dirty else None}


def summarize(cfg: dict[str, Any], runs: list[dict], n: int, machine: dict) -> dict:
    ok = [r for r in runs if r.get("valid")]
    for r in ok:
        r["cpu_s"] = (r.get("cpu_driver_s") or 0) + (r.get("cpu_workers_s") or 0)
    fields = ["records_per_s", "processing_s", "cpu_s", "records_per_cpu_s", "wall_s",
              "peak_rss_mb", "sampled_tree_rss_mb", "checkpoints_completed", "checkpoints_periodic",
              "checkpoint_median_ms", "checkpoint_max_sync_ms", "checkpoint_size_bytes",
              "startup_s"]
    out: dict[str, Any] = {
        "workload": "W1 keyed-sum",
        "configuration": cfg["name"],
        "key": cfg["key"],
        "records": n,
        "seconds": _med([r.get("processing_s") for r in ok]),
        "records_per_s": _med([r.get("records_per_s") for r in ok]),
        "peak_rss_mb": _med([r.get("peak_rss_mb") for r in ok]),
        "valid_runs": len(ok),
        "total_runs": len(runs),
    }
    for f in fields:
        vals = [r.get(f) for r in ok]
        lo, hi = _span(vals)
        if f in ("records_per_s", "peak_rss_mb"):  # the standard fields stay plain numbers
            out[f + "_min"], out[f + "_max"] = lo, hi
        else:
            out[f] = {"median": _med(vals), "min": lo, "max": hi}
    out["seconds_min"], out["seconds_max"] = _span([r.get("processing_s") for r in ok])
    out["runs"] = runs
    out["machine"] = machine
    return out


def _fmt_int(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _fmt(x: float | None, d: int = 1) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def render(summaries: dict[str, dict], machine: dict, args: argparse.Namespace) -> str:
    plain = summaries.get("plain", {}).get("records_per_s")
    rows = [f"| configuration | records/s median (min{DASH}max) | % of plain loop "
            f"| wall s median (min{DASH}max) | peak RSS MB (driver + largest worker / sampled "
            "sum) | CPU s (driver + workers) | checkpoints: completed / median ms / max sync ms "
            "| checkpoint cost vs off |",
            "|---|---|---|---|---|---|---|---|"]
    for key, s in summaries.items():
        rps = s["records_per_s"]
        pct = "-" if key == "plain" or not plain or rps is None else f"{100 * rps / plain:.1f} %"
        wall = s["wall_s"]
        wall_txt = f"{_fmt(wall['median'], 2)} ({_fmt(wall['min'], 2)}{DASH}{_fmt(wall['max'], 2)})"
        ck = "-"
        cost = "-"
        if key.endswith("-on"):
            ck = (f"{_fmt(s['checkpoints_completed']['median'], 0)} / "
                  f"{_fmt(s['checkpoint_median_ms']['median'])} / "
                  f"{_fmt(s['checkpoint_max_sync_ms']['median'])}")
            off = summaries.get(key[:-3] + "-off", {}).get("records_per_s")
            if off and rps:
                cost = f"{100 * (1 - rps / off):+.1f} %"
        if s["valid_runs"] < s["total_runs"]:
            note = f" **({s['total_runs'] - s['valid_runs']} invalid run(s))**"
        else:
            note = ""
        rows.append(f"| {s['configuration']}{note} | {_fmt_int(rps)} "
                    f"({_fmt_int(s['records_per_s_min'])}{DASH}{_fmt_int(s['records_per_s_max'])}) "
                    f"| {pct} | {wall_txt} | {_fmt(s['peak_rss_mb'], 0)} / "
                    f"{_fmt(s['sampled_tree_rss_mb']['median'], 0)} "
                    f"| {_fmt(s['cpu_s']['median'], 2)} | {ck} | {cost} |")
    return "\n".join(rows)


def ratios(summaries: dict[str, dict]) -> list[tuple[str, str, str, bool | None]]:
    def rps(k: str) -> float | None:
        return summaries.get(k, {}).get("records_per_s")

    out: list[tuple[str, str, str, bool | None]] = []
    p1off, p1on, p2on, plain = rps("p1-off"), rps("p1-on"), rps("p2-on"), rps("plain")
    if p1off and p1on:
        cost = 100 * (1 - p1on / p1off)
        out.append(("P1 checkpoint cost (1 - P1-on / P1-off records/s)", f"{cost:.1f} %",
                    "<= 10 %", cost <= 10))
    if p1on:
        out.append(("P1-on records/s vs 750,000", f"{p1on:,.0f} ({100 * p1on / 750_000:.1f} %)",
                    ">= 750,000", p1on >= 750_000))
    if p1on and plain:
        pct = 100 * p1on / plain
        out.append(("P1-on as % of plain loop", f"{pct:.1f} %", ">= 25 %", pct >= 25))
    if p1on and p2on:
        r = p2on / p1on
        out.append(("P2-on / P1-on records/s", f"{r:.2f}", ">= 1.0", r >= 1.0))

    def cpu(k: str) -> float | None:
        v = summaries.get(k, {}).get("records_per_cpu_s")
        return v.get("median") if isinstance(v, dict) else None

    c1off, c1on, c2on, cplain = cpu("p1-off"), cpu("p1-on"), cpu("p2-on"), cpu("plain")
    if c1off and c1on:
        out.append(("(CPU-normalised) P1 checkpoint cost: 1 - rec/CPU-s on / off",
                    f"{100 * (1 - c1on / c1off):.1f} %", "info", None))
    if c1on and cplain:
        out.append(("(CPU-normalised) P1-on rec/CPU-s as % of plain loop",
                    f"{100 * c1on / cplain:.1f} %", "info", None))
    if c1on and c2on:
        out.append(("(CPU-normalised) P2-on / P1-on records per CPU-second",
                    f"{c2on / c1on:.2f}", "info", None))
    return out


def render_ratios(rs: list[tuple[str, str, str, bool | None]]) -> str:
    lines = ["| ratio (medians of this invocation) | value | target | met |", "|---|---|---|---|"]
    for name, val, tgt, met in rs:
        shown = "-" if met is None else ("yes" if met else "NO")
        lines.append(f"| {name} | {val} | {tgt} | {shown} |")
    return "\n".join(lines)


def main_parent(args: argparse.Namespace) -> int:
    machine = machine_info()
    selected = [c for c in CONFIGS if not args.only or c["key"] in args.only.split(",")]
    runs: dict[str, list[dict]] = {c["key"]: [] for c in selected}
    print(f"W1 keyed-sum: N={args.records:,}, {args.runs} interleaved run(s) per configuration, "
          f"{machine['cores']} cores, Python {machine['python']}", flush=True)
    for r in range(args.runs):
        for cfg in selected:
            rec = run_subprocess(cfg, args)
            rec["run"] = r + 1
            runs[cfg["key"]].append(rec)
            status = "ok" if rec.get("valid") else f"INVALID: {rec.get('problems')}"
            extra = ""
            if rec.get("checkpoints"):
                extra = (f", {rec['checkpoints_completed']} ckpts, median "
                         f"{_fmt(rec['checkpoint_median_ms'])} ms, max sync "
                         f"{_fmt(rec['checkpoint_max_sync_ms'])} ms")
            print(f"  run {r + 1} {cfg['name']:<24} {_fmt_int(rec.get('records_per_s'))} rec/s, "
                  f"wall {_fmt(rec.get('wall_s'), 2)} s, peak RSS "
                  f"{_fmt(rec.get('peak_rss_mb'), 0)} MB{extra} [{status}]", flush=True)
    summaries = {c["key"]: summarize(c, runs[c["key"]], args.records, machine) for c in selected}
    table = render(summaries, machine, args)
    rs = ratios(summaries)
    rtable = render_ratios(rs)
    git = machine.get("onceflow_uncommitted_changes")
    head = "\n".join([
        "# W1 keyed-sum results",
        "",
        f"N = {args.records:,} records, {args.runs} interleaved run(s) per configuration, each "
        f"in a fresh subprocess. Machine: {machine['cores']} cores ({machine['cpu']}), "
        f"{machine['implementation']} {machine['python']}, {machine['platform']}; "
        f"{machine['date']}; load average at start {machine['loadavg_at_start']}. Shared, "
        f"noisy machine. Engine: git {machine.get('git_head')}"
        + (f" plus uncommitted changes in onceflow/ ({git})" if git else "") + ".",
        "",
        "- records/s = N / processing seconds (all workers running -> job finished, final "
        "checkpoint included).",
        "- Wall s = the whole subprocess (interpreter start-up, imports, forking workers, run, "
        "exit).",
        "- Peak RSS = driver ru_maxrss + largest worker ru_maxrss (RUSAGE_SELF + "
        "RUSAGE_CHILDREN); the sampled sum polls the RSS of the driver and all workers every "
        "50 ms (pages shared after fork counted once per process).",
        "- CPU s = user + system CPU of the driver and all workers (records per CPU-second "
        "below use the workers' CPU only; for the plain loop, the loop's CPU).",
        "- Checkpoints: the completed count includes the final checkpoint; median duration "
        "and max sync phase are over the periodic ones.",
        "- Checkpoint cost = 1 - records/s(on) / records/s(off) at the same parallelism.",
        "",
    ])
    md = f"{head}\n{table}\n\n{rtable}\n"
    print()
    print(table)
    print()
    print(rtable)
    return save_results("w1", summaries, md, save=not args.no_save)


def save_results(stem: str, summaries: dict[str, Any], md: str, save: bool = True) -> int:
    """Write ``results/<stem>.json`` (one object per configuration) and ``<stem>.md``;
    return the exit status: 1 when any run failed its validity check."""
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.json").write_text(
            json.dumps(list(summaries.values()), indent=2) + "\n")
        (RESULTS / f"{stem}.md").write_text(md)
        print(f"\nwrote {RESULTS / f'{stem}.json'} and {RESULTS / f'{stem}.md'}")
    invalid = sum(s["total_runs"] - s["valid_runs"] for s in summaries.values())
    if invalid:
        print(f"\n{invalid} run(s) failed the validity check", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0, help="checkpoint interval, s")
    ap.add_argument("--only", default="", help="comma-separated keys: plain,p1-off,p1-on,"
                    "p2-off,p2-on")
    ap.add_argument("--no-save", action="store_true", help="do not write results files")
    ap.add_argument("--one", action="store_true", help="run one configuration, print JSON")
    ap.add_argument("--plain", action="store_true", help="with --one: the plain-Python loop")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--checkpoints", choices=["on", "off"], default="off")
    args = ap.parse_args()
    if args.one:
        if args.plain:
            rec = run_one_plain(args.records)
        else:
            rec = run_one_onceflow(args.records, args.parallelism, args.checkpoints == "on",
                                   args.interval)
        print(json.dumps(rec), flush=True)
        return 0 if rec["valid"] else 1
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
