"""W1 on the Ray executor against the fork executor, and the time from a node's loss to
processing again (see benchmarks/README.md).

    python benchmarks/ray_w1.py                       # a simulated cluster on this machine
    python benchmarks/ray_w1.py --records 500000 --runs 1
    python benchmarks/ray_w1.py --address auto        # an existing cluster (no node loss)

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
            if "_WorkerActor.run" in " ".join(p.info["cmdline"] or [])}


class _Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        ev = getattr(record, "event", None)
        if ev:
            self.seen.append((ev, time.time()))


def node_loss(cluster: Any, executor: Any) -> dict[str, Any]:
    """Remove the node of a running worker mid-job: seconds until the failure is noticed,
    and until every worker of the next attempt runs again (the driver's 'restored')."""
    import psutil

    import onceflow as of
    from onceflow.testing import throttle

    tmp = tempfile.mkdtemp(prefix="ray-loss-")
    events = _Events()
    logging.getLogger("onceflow").addHandler(events)
    try:
        flow = of.Flow("ray-loss", parallelism=2,
                       restart_strategy=of.restart.fixed_delay(attempts=3, delay=0.0))
        flow.enable_checkpointing(0.2, os.path.join(tmp, "ck"))
        (flow.source(of.sources.Range(0, 40_000), name="n").map(throttle(4000), name="slow")
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
        before = len(events.seen)
        removed = time.time()
        cluster.remove_node(victim, allow_graceful=False)
        t.join(300)
        r = box.get("r")
        after = events.seen[before:]
        noticed = next((ts for e, ts in after if e == "restart"), None)
        running = next((ts for e, ts in after if e == "restored"), None)
        cluster.add_node(num_cpus=2)
        return {"records_in": r.records_in("out") if r else None,
                "valid": bool(r and r.records_in("out") == 40_000 and r.restarts >= 1),
                "restarts": r.restarts if r else None,
                "failures": r.failures if r else None,
                "noticed_s": noticed - removed if noticed else None,
                "processing_again_s": running - removed if running else None}
    finally:
        logging.getLogger("onceflow").removeHandler(events)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", help="a Ray cluster ('auto', 'ray://...'); default: a "
                                      "simulated one on this machine")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
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
        for _ in range(args.runs):
            for p in (1, 2):
                runs.append(fork_run(args.records, p) | {"kind": "fork"})
                runs.append(ray_run(args.records, p, executor))
                print(json.dumps(runs[-2:]), file=sys.stderr, flush=True)
        loss = node_loss(cluster, executor) if cluster is not None else None
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {}
    for p in (1, 2):
        fork = statistics.median(r["records_per_s"] for r in runs
                                 if r["kind"] == "fork" and r["parallelism"] == p)
        on_ray = statistics.median(r["records_per_s"] for r in runs
                                   if r["kind"] == "ray" and r["parallelism"] == p)
        summary[f"p{p}"] = {"fork_records_per_s": fork, "ray_records_per_s": on_ray,
                            "ray_vs_fork": on_ray / fork, "target_met": on_ray / fork >= 0.8}
    ok = all(r.get("valid", False) for r in runs) and (loss is None or loss["valid"])
    out = {"benchmark": "ray_w1", "when": dt.datetime.now(dt.UTC).isoformat(),
           "address": args.address or "simulated (head 1 CPU + 2 nodes x 2 CPUs)",
           "records": args.records, "runs": runs, "summary": summary, "node_loss": loss,
           "node_loss_target_met": (loss["processing_again_s"] or 1e9) < 5.0 if loss else None,
           "valid": ok}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_w1.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"summary": summary, "node_loss": loss, "valid": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
