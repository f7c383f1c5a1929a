"""W1 on the Ray executor against the fork executor, and the time from a node's loss to
processing again (see benchmarks/README.md).

    python benchmarks/ray_w1.py                       # a simulated cluster on this machine
    python benchmarks/ray_w1.py --records 500000 --runs 1
    python benchmarks/ray_w1.py --address auto        # an existing cluster (no node loss)
    python benchmarks/ray_w1.py --parts node-loss --node-loss-rounds 3

Without ``--address`` it starts a simulated cluster (``ray.cluster_utils.Cluster``: a head
and two nodes, the test suite's fast health checks) inside a loopback-only network namespace
(``scripts/netns-run``), runs W1 at parallelism 1 and 2 on Ray and on the fork executor
(every fork run in a subprocess: ``benchmarks/w1.py --one``), interleaved, and then removes
the node of a running worker mid-job and measures the time until every worker of the new
attempt runs again. With ``--address`` it measures the throughput part only (removing a
real node is not the benchmark's business). Targets: Ray >= 80 % of fork at the same
parallelism; node loss to processing again < 5 s. Results: benchmarks/results/ray_w1.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 5}
#: the process titles of onceflow's workers on Ray: forked by a node's host, or an actor
_TITLES = ("onceflow-worker", "_WorkerActor.run")
sys.path.insert(0, str(HERE))

import w1  # noqa: E402  (the W1 flow and its checks)


def fork_run(n: int, p: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HERE / "w1.py"), "--one", "--parallelism", str(p),
                          "--checkpoints", "on", "--records", str(n)],
                         capture_output=True, text=True, check=True)
    d: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return d


def ray_run(n: int, p: int, executor: Any) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="ray-w1-")
    try:
        sink_dir = os.path.join(tmp, "sink")
        os.makedirs(sink_dir)
        flow = w1.build_flow(n, p, True, os.path.join(tmp, "ck"), sink_dir)
        r = flow.run(executor=executor)
        problems = []
        if r.records_in("sink") != n:
            problems.append(f"records_in('sink') {r.records_in('sink')} != {n}")
        files = list(Path(sink_dir).glob("sink-*.json"))  # on one machine: the same dir
        if files:
            total = sum(json.loads(f.read_text())["last_sum"] for f in files)
            if total != w1.expected_last_sum_total(n):
                problems.append(f"last-sum total {total} != {w1.expected_last_sum_total(n)}")
        return {"kind": "ray", "parallelism": p, "records": n,
                "processing_s": r.processing_seconds,
                "startup_s": r.processing_started_at - r.started_at,
                "records_per_s": n / r.processing_seconds, "restarts": r.restarts,
                "valid": not problems, "problems": problems}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _actor_pids() -> set[int]:
    import psutil

    return {p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if any(t in " ".join(p.info["cmdline"] or []) for t in _TITLES)}


class _Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, float]] = []
        self.executor: list[tuple[str, float]] = []  # the Ray executor's start-up notes

    def emit(self, record: logging.LogRecord) -> None:
        ev = getattr(record, "event", None)
        if ev:
            self.seen.append((ev, time.time()))
        elif record.getMessage().startswith("executor Ray:"):
            self.executor.append((record.getMessage(), time.time()))


def _stamp(where: str) -> Any:
    """A map that writes the time of the first record each worker process sees into
    ``where``/<pid> (a directory every node shares: on one machine, any directory)."""
    seen: set[int] = set()

    def stamp(x: Any) -> Any:
        pid = os.getpid()
        if pid not in seen:
            seen.add(pid)
            Path(where, str(pid)).write_text(repr(time.time()))
        return x

    return stamp


def node_loss(cluster: Any, executor: Any) -> dict[str, Any]:
    """Remove the node of a running worker mid-job: seconds until the failure is noticed,
    until every worker of the next attempt runs again (the driver's 'restored'), and until
    every one of them has processed a record (processing again: the later of the two)."""
    import psutil

    import onceflow as of
    from onceflow.testing import throttle

    tmp = tempfile.mkdtemp(prefix="ray-loss-")
    stamps = os.path.join(tmp, "stamps")
    os.makedirs(stamps)
    events = _Events()
    logging.getLogger("onceflow").addHandler(events)
    try:
        flow = of.Flow("ray-loss", parallelism=2,
                       restart_strategy=of.restart.fixed_delay(attempts=3, delay=0.0))
        flow.enable_checkpointing(0.2, os.path.join(tmp, "ck"))
        (flow.source(of.sources.Range(0, 40_000), name="n").map(throttle(4000), name="slow")
             .map(_stamp(stamps), name="stamp")
             .map(lambda i: (i % 97, 1), name="pairs").key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
             .sink(of.sinks.Discard(), name="out"))
        box: dict[str, Any] = {}
        t = threading.Thread(target=lambda: box.update(r=flow.run(executor=executor)))
        t.start()
        deadline = time.monotonic() + 120
        ck = Path(tmp, "ck")
        while not list(ck.glob("*/chk-*/_metadata")):  # a complete checkpoint exists
            if time.monotonic() > deadline or not t.is_alive():
                break
            time.sleep(0.05)
        pids = _actor_pids()
        victim = None
        for node in cluster.worker_nodes:
            raylet = node.all_processes["raylet"][0].process.pid
            if {c.pid for c in psutil.Process(raylet).children(recursive=True)} & pids:
                victim = node
        if victim is None:
            raise RuntimeError("no worker actor on a removable node")
        before, notes = len(events.seen), len(events.executor)
        removed = time.time()
        cluster.remove_node(victim, allow_graceful=False)
        t.join(300)
        r = box.get("r")
        after = events.seen[before:]
        noticed = next((ts for e, ts in after if e == "restart"), None)
        running = next((ts for e, ts in after if e == "restored"), None)
        firsts = [float(f.read_text()) for f in Path(stamps).iterdir()]
        new = sorted(ts for ts in firsts if ts > removed)  # the new attempt's processes
        flowing = new[-1] if len(new) >= 2 else None  # every one of its two workers
        again = max(running, flowing) if running and flowing else None
        cluster.add_node(num_cpus=2)
        return {"records_in": r.records_in("out") if r else None,
                "valid": bool(r and r.records_in("out") == 40_000 and r.restarts >= 1),
                "restarts": r.restarts if r else None,
                "failures": r.failures if r else None,
                "noticed_s": noticed - removed if noticed else None,
                "executor": [f"+{ts - removed:.2f}s {msg}" for msg, ts in events.executor[notes:]],
                "running_again_s": running - removed if running else None,
                "records_flowing_s": flowing - removed if flowing else None,
                "processing_again_s": again - removed if again else None}
    finally:
        logging.getLogger("onceflow").removeHandler(events)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", help="a Ray cluster ('auto', 'ray://...'); default: a "
                                      "simulated one on this machine")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--parts", default="throughput,node-loss",
                    help="what to measure: throughput, node-loss (simulated cluster only) "
                         "or both, comma-separated")
    ap.add_argument("--node-loss-rounds", type=int, default=2)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"throughput", "node-loss"}:
        ap.error(f"--parts: unknown {sorted(parts - {'throughput', 'node-loss'})}")
    cluster = None
    if args.address is None and os.environ.get("ONCEFLOW_IN_NETNS") != "1":
        os.execv(str(ROOT / "scripts" / "netns-run"),
                 [str(ROOT / "scripts" / "netns-run"), sys.executable, *sys.argv])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("onceflow").setLevel(logging.INFO)
    import ray

    import onceflow as of

    tmp = None
    if args.address is None:
        from ray.cluster_utils import Cluster

        tmp = tempfile.mkdtemp(prefix="ray-bench-")
        os.makedirs(os.path.join(tmp, "ray"))
        os.environ.update(RAY_TMPDIR=tmp, HOME=tmp,
                          PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "include_dashboard": False,
                                          "_system_config": FAST_HEALTH})
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"py_modules": [str(ROOT / "onceflow")],
                              "working_dir": str(HERE)})
    executor = of.executors.Ray(placement="spread")
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(args.runs if "throughput" in parts else 0):
            for p in (1, 2):
                runs.append(fork_run(args.records, p) | {"kind": "fork"})
                runs.append(ray_run(args.records, p, executor))
                print(json.dumps(runs[-2:]), file=sys.stderr, flush=True)
        losses = []
        if cluster is not None and "node-loss" in parts:
            for _ in range(args.node_loss_rounds):
                losses.append(node_loss(cluster, executor))
                print(json.dumps(losses[-1]), file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {}
    for p in (1, 2) if runs else ():
        fork = statistics.median(r["records_per_s"] for r in runs
                                 if r["kind"] == "fork" and r["parallelism"] == p)
        on_ray = statistics.median(r["records_per_s"] for r in runs
                                   if r["kind"] == "ray" and r["parallelism"] == p)
        summary[f"p{p}"] = {"fork_records_per_s": fork, "ray_records_per_s": on_ray,
                            "ray_vs_fork": on_ray / fork, "target_met": on_ray / fork >= 0.8}
    again = [x["processing_again_s"] for x in losses if x["processing_again_s"] is not None]
    loss_summary = ({"rounds": len(losses),
                     "processing_again_s_median": statistics.median(again) if again else None,
                     "processing_again_s_max": max(again) if again else None,
                     "target_met": bool(again) and len(again) == len(losses)
                     and statistics.median(again) < 5.0} if losses else None)
    ok = all(r.get("valid", False) for r in runs) and all(x["valid"] for x in losses)
    out = {"benchmark": "ray_w1", "when": dt.datetime.now(dt.UTC).isoformat(),
           "commit": _commit(), "load_average": os.getloadavg(),
           "address": args.address or "simulated (head 1 CPU + 2 nodes x 2 CPUs)",
           "records": args.records, "runs": runs, "summary": summary,
           "node_loss": losses, "node_loss_summary": loss_summary, "valid": ok}
    RESULTS.mkdir(exist_ok=True)
    stem = "ray_w1" if parts == {"throughput", "node-loss"} else f"ray_w1-{'-'.join(sorted(parts))}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(out))
    print(json.dumps({"summary": summary, "node_loss": loss_summary, "valid": ok}, indent=2))
    return 0 if ok else 1


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _markdown(out: dict[str, Any]) -> str:
    lines = [f"# W1 on Ray against fork ({out['when'][:19]} UTC, commit {out['commit']})", "",
             f"Cluster: {out['address']}; {out['records']:,} records per run; load average "
             f"{', '.join(f'{x:.1f}' for x in out['load_average'])} at the end.", ""]
    if out["summary"]:
        lines += ["Processing time (start-up excluded, the same for both executors): every "
                  "worker running to the job's end. Runs interleaved fork, Ray, fork, Ray.", "",
                  "| | fork rec/s (runs) | Ray rec/s (runs) | Ray / fork (medians) |",
                  "|---|---|---|---|"]
        for p in (1, 2):
            f = [r["records_per_s"] for r in out["runs"]
                 if r["kind"] == "fork" and r["parallelism"] == p]
            r_ = [r["records_per_s"] for r in out["runs"]
                  if r["kind"] == "ray" and r["parallelism"] == p]
            lines.append(f"| p{p} | {', '.join(f'{x / 1e6:.2f} M' for x in f)} | "
                         f"{', '.join(f'{x / 1e6:.2f} M' for x in r_)} | "
                         f"{out['summary'][f'p{p}']['ray_vs_fork']:.2f} |")
        lines.append("")
    if out["node_loss"]:
        lines += ["Node loss (`Cluster.remove_node` of a node holding a worker, after the "
                  "first complete checkpoint): seconds from the removal.", "",
                  "| round | noticed | every worker running again | and each has processed a "
                  "record (processing again) |", "|---|---|---|---|"]
        for k, x in enumerate(out["node_loss"], 1):
            cells = [x.get(c) for c in ("noticed_s", "running_again_s", "processing_again_s")]
            lines.append(f"| {k} | " + " | ".join(f"{c:.2f}" if c else "-" for c in cells)
                         + " |")
        lines.append("")
    lines.append(f"All outputs valid: {out['valid']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
