"""W1 keyed-sum into PostgreSQL: exactly-once (PostgresSink, two-phase commit) against the
same writes committed batch by batch (PostgresAutocommitSink, at-least-once).

W1 as in /work/shared/bench/WORKLOADS.md (record i = (i * 7919 % 10000, i % 100), map to
(key, value * 2), running sum per key), except that the reduce's output - every update,
N records - goes to PostgreSQL instead of a counting sink:

* ``upsert`` (the headline): upserted into (k integer PRIMARY KEY, total bigint), so the
  table ends with each key's final total;
* ``insert``: appended to (k integer, total bigint), N rows - the same rows in both
  guarantees, so this isolates the cost of the transactions themselves.

Both guarantees use the same sink code, ``batch_rows`` and checkpoints (every
``--interval`` s); they differ only in the transactions: one prepared transaction per
subtask per checkpoint, committed on completion, vs. one autocommit statement per batch.
Note for upsert: while its previous checkpoint's prepared transaction waits for its commit,
the exactly-once sink must not send upserts (they could wait on its own row locks), so it
keeps buffering, merging updates of a key; it therefore sends fewer rows than the
autocommit sink (``db_rows`` in the results).

    python benchmarks/postgres_w1.py                      # 3 interleaved runs each, N = 2M
    python benchmarks/postgres_w1.py --records 500000 --runs 1
    python benchmarks/postgres_w1.py --one --mode exactly_once --table-mode upsert --dsn DSN

Every run is a fresh subprocess with a fresh table. A run is invalid unless the sink saw N
records, the table holds what W1's check demands (10,000 keys whose last totals sum to
2 * sum(i % 100); N rows in insert mode) and no prepared transaction of the run is left.
Writes benchmarks/results/postgres_w1.json; exits non-zero when a run is invalid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODES = ("exactly_once", "autocommit")
TARGET_SLOWDOWN = 0.30


def expected_last_sum_total(n: int) -> int:
    full, rest = divmod(n, 100)
    return 2 * (full * 4950 + rest * (rest - 1) // 2)


# --- one run, in the child process ---------------------------------------------------------
def run_one(dsn: str, mode: str, table_mode: str, n: int, parallelism: int, interval: float,
            batch_rows: int) -> dict[str, Any]:
    import psycopg

    import onceflow as of
    from onceflow.connectors.postgres import PostgresAutocommitSink, PostgresSink, gid_prefix

    tag = uuid.uuid4().hex[:8]
    table, name = f"bench_w1_{tag}", f"pg-w1-{mode}-{tag}"
    upsert = table_mode == "upsert"
    tmp = tempfile.mkdtemp(prefix="pg-w1-")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (k integer {'PRIMARY KEY' if upsert else 'NOT NULL'}, "
                  "total bigint NOT NULL)")
    try:
        cls = PostgresSink if mode == "exactly_once" else PostgresAutocommitSink
        if upsert:
            sink = cls(dsn, table, columns=["k", "total"], mode="upsert", key_columns=["k"],
                       batch_rows=batch_rows)
        else:
            sink = cls(dsn, table, columns=["k", "total"], batch_rows=batch_rows)
        flow = of.Flow(name, parallelism=parallelism)
        flow.enable_checkpointing(interval=interval, storage=os.path.join(tmp, "ckpt"))
        (flow.source(of.sources.Range(0, n), name="source")
             .map(lambda i: (i * 7919 % 10000, i % 100), name="records")
             .map(lambda kv: (kv[0], kv[1] * 2), name="double")
             .key_by(lambda kv: kv[0])
             .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum")
             .sink(sink, name="pg"))
        result = flow.run()
        time.sleep(0.5)  # table statistics reach pg_stat_user_tables shortly after
        with psycopg.connect(dsn, autocommit=True) as c:
            rows, keys, total = c.execute(
                f"SELECT sum(n), count(*), sum(last) FROM (SELECT k, count(*) AS n, "
                f"max(total) AS last FROM {table} GROUP BY k) AS per_key").fetchone()
            left = c.execute("SELECT count(*) FROM pg_prepared_xacts WHERE starts_with(gid, %s)",
                             (gid_prefix(name),)).fetchone()[0]
            stat = c.execute("SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables "
                             "WHERE relname = %s", (table,)).fetchone()
            c.execute(f"DROP TABLE {table}")
        problems = []
        if result.records_in("pg") != n:
            problems.append(f"sink saw {result.records_in('pg')} records, expected {n}")
        if keys != min(n, 10000):
            problems.append(f"{keys} keys in the table, expected {min(n, 10000)}")
        if int(total or 0) != expected_last_sum_total(n):
            problems.append(f"sum of last totals {total} != {expected_last_sum_total(n)}")
        if not upsert and rows != n:
            problems.append(f"{rows} rows in the table, expected {n}")
        if left:
            problems.append(f"{left} prepared transaction(s) left")
        if result.restarts:
            problems.append(f"{result.restarts} restart(s)")
        periodic = [c for c in result.completed_checkpoints if not c.final]
        durs = [c.duration * 1e3 for c in periodic if c.duration is not None]
        return {
            "mode": mode,
            "table_mode": table_mode,
            "records": n,
            "parallelism": parallelism,
            "processing_s": result.processing_seconds,
            "records_per_s": n / result.processing_seconds,
            "wall_s": result.duration,
            "db_rows": stat[0] if stat else None,
            "checkpoints_completed": len(result.completed_checkpoints),
            "checkpoint_median_ms": statistics.median(durs) if durs else None,
            "checkpoint_max_sync_ms": max((c.max_sync_ms for c in periodic), default=None),
            "valid": not problems,
            "problems": problems,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the parent: interleaved runs ------------------------------------------------------------
def start_server() -> str:
    p = subprocess.run([str(ROOT / "scripts" / "postgres"), "start"], capture_output=True,
                       text=True)
    if p.returncode != 0 or not p.stdout.strip():
        sys.exit(f"scripts/postgres start failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout.strip().splitlines()[-1]


def run_child(args: argparse.Namespace, dsn: str, mode: str,
              table_mode: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", "--mode", mode, "--table-mode", table_mode,
           "--dsn", dsn, "--records", str(args.records), "--parallelism",
           str(args.parallelism), "--interval", str(args.interval), "--batch-rows",
           str(args.batch_rows)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"mode": mode, "table_mode": table_mode, "valid": False,
                "process_wall_s": time.perf_counter() - t0,
                "problems": [f"exit code {p.returncode}: {p.stderr.strip()[-2000:]}"]}
    rec: dict[str, Any] = json.loads(lines[-1])
    rec["process_wall_s"] = time.perf_counter() - t0
    return rec


def machine_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "loadavg_at_start": os.getloadavg()}


NAMES = {
    "exactly_once": "PostgresSink (2PC, exactly-once)",
    "autocommit": "PostgresAutocommitSink (autocommit batches, at-least-once)",
}


def main_parent(args: argparse.Namespace) -> int:
    dsn = args.dsn or start_server()
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        server = c.execute("SHOW server_version").fetchone()[0]
        settings = dict(c.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
            "'synchronous_commit', 'max_prepared_transactions', 'shared_buffers')").fetchall())
    machine = machine_info()
    table_modes = args.table_modes.split(",")
    configs = [(t, m) for t in table_modes for m in MODES]
    print(f"W1 -> PostgreSQL {server}: N={args.records:,}, parallelism {args.parallelism}, "
          f"checkpoint every {args.interval:g}s, batch_rows {args.batch_rows}, {args.runs} "
          f"interleaved run(s), {machine['cores']} cores", flush=True)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in configs}
    for r in range(args.runs):
        for t, m in configs:
            rec = run_child(args, dsn, m, t)
            rec["run"] = r + 1
            runs[(t, m)].append(rec)
            status = "ok" if rec.get("valid") else f"INVALID: {rec.get('problems')}"
            rps = rec.get("records_per_s")
            print(f"  run {r + 1} {t:<6} {m:<13} "
                  f"{'-' if rps is None else f'{rps:,.0f}'} rows/s, processing "
                  f"{rec.get('processing_s', 0):.2f} s, {rec.get('db_rows')} rows sent "
                  f"[{status}]", flush=True)
    out: list[dict[str, Any]] = []
    med: dict[tuple[str, str], float | None] = {}
    for t, m in configs:
        ok = [x for x in runs[(t, m)] if x.get("valid")]
        rps = [x["records_per_s"] for x in ok]
        med[(t, m)] = statistics.median(rps) if rps else None
        out.append({
            "workload": f"W1 keyed-sum -> PostgreSQL {t}",
            "configuration": f"{NAMES[m]}, {t}",
            "key": f"{t}-{m}",
            "records": args.records,
            "parallelism": args.parallelism,
            "checkpoint_interval_s": args.interval,
            "batch_rows": args.batch_rows,
            "seconds": statistics.median([x["processing_s"] for x in ok]) if ok else None,
            "records_per_s": med[(t, m)],
            "records_per_s_min": min(rps) if rps else None,
            "records_per_s_max": max(rps) if rps else None,
            "db_rows": statistics.median([x["db_rows"] for x in ok if x.get("db_rows")])
            if ok else None,
            "valid_runs": len(ok),
            "total_runs": len(runs[(t, m)]),
            "runs": runs[(t, m)],
            "machine": machine,
            "postgres": {"version": server, **settings},
        })
    print()
    for t in table_modes:
        eo, ac = med[(t, "exactly_once")], med[(t, "autocommit")]
        if not (eo and ac):
            continue
        slowdown = 1 - eo / ac
        met = slowdown <= TARGET_SLOWDOWN
        # run r of one guarantee against run r of the other (they ran back to back)
        pairs = [a["records_per_s"] / b["records_per_s"] for a, b in
                 zip(runs[(t, "exactly_once")], runs[(t, "autocommit")], strict=True)
                 if a.get("valid") and b.get("valid")]
        out.append({"key": f"ratio-{t}", "table_mode": t, "exactly_once_rows_per_s": eo,
                    "autocommit_rows_per_s": ac, "exactly_once_vs_autocommit": eo / ac,
                    "slowdown": slowdown, "target_max_slowdown": TARGET_SLOWDOWN,
                    "target_met": met, "pairwise_ratios": pairs,
                    "worst_pairwise_ratio": min(pairs) if pairs else None})
        print(f"{t}: median rows/s exactly-once {eo:,.0f}, autocommit {ac:,.0f}; ratio "
              f"{eo / ac:.3f} ({100 * slowdown:+.1f} % slower; target <= "
              f"{100 * TARGET_SLOWDOWN:.0f} %: {'met' if met else 'NOT met'}); run by run "
              f"{', '.join(f'{r:.2f}' for r in pairs)}")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / "postgres_w1.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
    invalid = sum(1 for c in configs for x in runs[c] if not x.get("valid"))
    if invalid:
        print(f"{invalid} run(s) invalid", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--interval", type=float, default=1.0, help="checkpoint interval, s")
    ap.add_argument("--batch-rows", type=int, default=5000)
    ap.add_argument("--dsn", default="", help="default: scripts/postgres start")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", action="store_true", help="one run in this process, JSON line")
    ap.add_argument("--mode", choices=MODES, default="exactly_once")
    ap.add_argument("--table-mode", choices=("upsert", "insert"), default="upsert")
    ap.add_argument("--table-modes", default="upsert,insert",
                    help="comma-separated: which table modes the parent runs")
    args = ap.parse_args()
    if args.one:
        rec = run_one(args.dsn, args.mode, args.table_mode, args.records, args.parallelism,
                      args.interval, args.batch_rows)
        print(json.dumps(rec), flush=True)
        return 0 if rec["valid"] else 1
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
