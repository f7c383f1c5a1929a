"""Nexmark over Kafka: onceflow against Flink SQL, Bytewax and Quix Streams on the same topic
(``make nexmark-peers``; issue 14).

    .venv/bin/python benchmarks/nexmark/peers.py                       # 200,000 events, 3 runs
    .venv/bin/python benchmarks/nexmark/peers.py --events 100000 --runs 1 --queries q0,q5 \
        --systems onceflow-memory,flink-hashmap --no-save

One topic (8 partitions) is pre-filled with the generator's events as JSON (seed 0, 10,000
events/s of event time, in order; ``onceflow.nexmark.prefill_kafka``), once. Then, per
query, every system reads it from the start to its end and writes the query's rows to a
fresh Kafka topic; runs are interleaved (run 1 of every system and query, then run 2, ...).
Every system runs at parallelism 1 with checkpoints (snapshots) every 10 s:

* ``onceflow-memory`` / ``onceflow-rocksdb``: ``benchmarks/nexmark/run.py --one`` with
  ``KafkaSource`` → the query → ``KafkaSink(guarantee exactly_once)``.
* ``flink-hashmap`` / ``flink-rocksdb``: ``peer_flink.py``, Flink SQL (PyFlink Table API,
  the JVM engine), Kafka source table, Kafka sink ``sink.delivery-guarantee =
  exactly-once``, EXACTLY_ONCE checkpoints.
* ``bytewax``: ``peer_bytewax.py`` (recovery on; its Kafka sink is at-least-once).
* ``quix``: ``peer_quix.py``, Quix Streams 3.28.1 (``processing_guarantee="exactly-once"``)
  for the queries it expresses (q0-q3; the others: see peer_quix.py and the notes).

After each run a ``read_committed`` consumer counts the rows in the output topic; a run is
valid when that count equals the DuckDB reference's (the SQL of tests/test_nexmark_*.py
over the same events; q4's update stream is not compared, see the notes).

Figures per run: events/s = N / the job's processing time (onceflow: workers running →
job complete; Flink: ``INSERT`` submitted → job finished, the JVM's and mini-cluster's
start-up excluded; Bytewax: ``cli_main``); events/s per core = N / CPU seconds of the
process tree over that interval; "incl. start-up" = N / the whole program's wall time;
peak memory = summed RSS of the process tree, sampled every 50 ms. Results:
benchmarks/results/nexmark-peers.json, .md and .png (matplotlib in compare's plot venv).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(HERE))

from w1 import machine_info, sample_tree_rss  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUERIES = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q11"]
SYSTEMS = ["onceflow-memory", "onceflow-rocksdb", "flink-hashmap", "flink-rocksdb", "bytewax",
           "quix"]
BYTEWAX_QUERIES = {"q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11"}
QUIX_QUERIES = {"q0", "q1", "q2", "q3"}  # why not the others: peer_quix.py
LABEL = {"onceflow-memory": "onceflow (memory)", "onceflow-rocksdb": "onceflow (RocksDB)",
         "flink-hashmap": "Flink SQL 2.2.1 (hashmap)", "flink-rocksdb": "Flink SQL 2.2.1 (RocksDB)",
         "bytewax": "Bytewax 0.21.1", "quix": "Quix Streams 3.28.1"}
GUARANTEE = {
    "onceflow-memory": "exactly-once into Kafka (transactions on checkpoint)",
    "onceflow-rocksdb": "exactly-once into Kafka (transactions on checkpoint)",
    "flink-hashmap": "exactly-once into Kafka (sink.delivery-guarantee)",
    "flink-rocksdb": "exactly-once into Kafka (sink.delivery-guarantee)",
    "bytewax": "state recovered from snapshots; Kafka output at-least-once",
    "quix": "exactly-once into Kafka (processing_guarantee, transactions on commit)",
}


# --- the reference ---------------------------------------------------------------------------
def reference_counts(events: int, queries: list[str]) -> dict[str, int]:
    """Rows of each query by DuckDB over the same events (the tests' SQL)."""
    import duckdb
    import pyarrow as pa

    sys.path.insert(0, str(ROOT / "tests"))
    from test_nexmark_queries import SQL as SQL_A
    from test_nexmark_window_queries import SQL as SQL_W

    from onceflow.nexmark import Generator, NexmarkConfig

    sql = {**SQL_A, **SQL_W}
    evs = Generator(NexmarkConfig(events=events)).events(0, events)
    con = duckdb.connect()
    for kind in ("person", "auction", "bid"):
        rows = [{k: v for k, v in e.items() if k != "kind"} for e in evs if e["kind"] == kind]
        con.register(kind, pa.Table.from_pylist(rows))
    out = {}
    for q in queries:
        if q != "q4":
            out[q] = con.execute(f"SELECT count(*) FROM ({sql[q]})").fetchone()[0]
    return out


def _generator_fingerprint() -> str:
    """A short hash of the default generator's first 2,000 events."""
    import hashlib

    import orjson

    from onceflow.nexmark import Generator, NexmarkConfig

    cfg = NexmarkConfig(events=2000)
    return hashlib.sha256(orjson.dumps(Generator(cfg).events(0, 2000))).hexdigest()[:12]


def cached_reference(events: int, queries: list[str], path: str | None) -> dict[str, int]:
    """:func:`reference_counts`, kept in the JSON file ``path`` (by event count) when
    given: at W5's 5,000,000 events the DuckDB reference takes a minute and a few GB."""
    if not path:
        return reference_counts(events, queries)
    f = Path(path)
    have = json.loads(f.read_text()) if f.exists() else {}
    # by event count and the generator's output: counts made by an older generator (one
    # whose first events differ) are not taken for this one's
    key = f"{events}@{_generator_fingerprint()}"
    got = have.get(key, {})
    missing = [q for q in queries if q != "q4" and q not in got]
    if missing:
        got.update(reference_counts(events, missing))
        have[key] = got
        f.write_text(json.dumps(have, indent=2, sort_keys=True) + "\n")
    return {q: got[q] for q in queries if q in got}


# --- Kafka -----------------------------------------------------------------------------------
def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)


def count_committed(bootstrap: str, topic: str, timeout: float = 120) -> int:
    """Records a read_committed consumer sees in ``topic`` (run.py's count)."""
    from run import count_committed as count

    return int(count(bootstrap, topic, timeout))


# --- running one -----------------------------------------------------------------------------
def _compare() -> Any:
    """benchmarks/compare/run.py (its venvs, made on first use, and the Flink Kafka jar)."""
    import importlib.util

    if "compare_run" not in sys.modules:
        spec = importlib.util.spec_from_file_location("compare_run",
                                                      ROOT / "benchmarks/compare/run.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules["compare_run"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["compare_run"]


def _venv(peer: str) -> str:
    return str(_compare().venv_python(peer))


def _jar() -> str:
    return str(_compare().connector_jar())


def run_one(system: str, query: str, args: argparse.Namespace) -> dict[str, Any]:
    out = f"nxp-{query}-{system}-{uuid.uuid4().hex[:6]}"
    create_topic(args.bootstrap, out, 1 if query == "q4" and system.startswith("flink") else 2)
    work = tempfile.mkdtemp(prefix="nxp-")
    common = ["--query", query, "--bootstrap", args.bootstrap, "--input", args.topic,
              "--output", out, "--workdir", work, "--interval", str(args.interval)]
    if system.startswith("onceflow"):
        cmd = [sys.executable, str(HERE / "run.py"), "--one", "--query", query,
               "--parallelism", "1", "--backend", system.split("-")[1], "--events",
               str(args.events), "--interval", str(args.interval), "--bootstrap",
               args.bootstrap, "--kafka-topic", args.topic, "--output-topic", out]
    elif system.startswith("flink"):
        cmd = [_venv("pyflink"), str(HERE / "peer_flink.py"), *common,
               "--backend", system.split("-")[1], "--jar", _jar()]
    elif system == "quix":
        cmd = [_venv("quix"), str(HERE / "peer_quix.py"), *common]
    else:
        cmd = [_venv("bytewax"), str(HERE / "peer_bytewax.py"), *common,
               "--wait", str(args.events / 10_000 + 10)]  # the input's event-time span
    rec: dict[str, Any] = {"system": system, "query": query, "events": args.events}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, rss = threading.Event(), [0.0]
    th = threading.Thread(target=sample_tree_rss, args=(proc.pid, stop, rss), daemon=True)
    th.start()
    try:
        so, se = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        so, se = proc.communicate()
        se += f"\nTIMEOUT after {args.timeout} s"
    rec["wall_s"] = time.perf_counter() - t0
    stop.set()
    th.join()
    shutil.rmtree(work, ignore_errors=True)
    rec["peak_rss_mb"] = rss[0] if rss else None
    lines = [ln for ln in so.splitlines() if ln.startswith(("{", "RESULT "))]
    if proc.returncode != 0 or not lines:
        rec.update(valid=False, problems=[f"exit {proc.returncode}: {se.strip()[-1500:]}"])
        _compare().delete_topics(args.bootstrap, out)  # and a Quix run's internal topics
        return rec
    got = json.loads(lines[-1].removeprefix("RESULT "))
    if system.startswith("onceflow"):
        rec["job_s"], rec["job_cpu_s"] = got["processing_s"], got["cpu_s"]
        rec["checkpoint_size_bytes"] = got.get("checkpoint_size_bytes")
    else:
        rec["job_s"], rec["job_cpu_s"] = got["job_s"], got["job_cpu_s"]
        rec["job_net_runtime_s"] = got.get("job_net_runtime_s")
    rec["events_per_s"] = args.events / rec["job_s"]
    rec["events_per_cpu_s"] = args.events / max(rec["job_cpu_s"], 1e-9)
    rec["events_per_s_incl_startup"] = args.events / rec["wall_s"]
    rec["results"] = count_committed(args.bootstrap, out)
    _compare().delete_topics(args.bootstrap, out)  # and a Quix run's internal topics
    want = args.reference.get(query)
    problems = list(got.get("problems") or [])  # the program's own checks (onceflow's)
    if system.startswith("onceflow"):
        rec["restarts"] = got.get("restarts")
    if want is not None and rec["results"] != want:
        problems.append(f"{rec['results']} rows in {out}, the reference has {want}")
    rec.update(valid=not problems, problems=problems, output_topic=out)
    return rec


# --- summary, table, chart -------------------------------------------------------------------
def _med(runs: list[dict], f: str) -> float | None:
    v = [r[f] for r in runs if r.get("valid") and r.get(f) is not None]
    return statistics.median(v) if v else None


def summarize(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace,
              machine: dict) -> dict[str, Any]:
    rows = []
    for (q, s), rs in runs.items():
        rows.append({"query": q, "system": s, "events": args.events,
                     "guarantee": GUARANTEE[s], "total_runs": len(rs),
                     "valid_runs": sum(1 for r in rs if r.get("valid")),
                     "results": _med(rs, "results"), "reference": args.reference.get(q),
                     "events_per_s_median": _med(rs, "events_per_s"),
                     "events_per_cpu_s_median": _med(rs, "events_per_cpu_s"),
                     "events_per_s_incl_startup_median": _med(rs, "events_per_s_incl_startup"),
                     "peak_rss_mb_median": _med(rs, "peak_rss_mb"),
                     "checkpoint_size_bytes_median": _med(rs, "checkpoint_size_bytes"),
                     "runs": rs})
    ratios = []
    pairs = [("onceflow-memory", "flink-hashmap"), ("onceflow-rocksdb", "flink-rocksdb"),
             ("onceflow-memory", "bytewax"), ("onceflow-memory", "quix")]
    by = {(r["query"], r["system"]): r for r in rows}
    for q in dict.fromkeys(q for q, _ in runs):
        for a, b in pairs:
            ra, rb = by.get((q, a)), by.get((q, b))
            if not ra or not rb:
                continue
            for f in ("events_per_s_median", "events_per_cpu_s_median"):
                if ra[f] and rb[f]:
                    ratios.append({"query": q, "onceflow": a, "peer": b, "figure": f,
                                   "ratio": ra[f] / rb[f]})
    return {"machine": machine, "events": args.events, "runs": args.runs,
            "flink_rocksdb_queries": args.flink_rocksdb_queries,
            "interval_s": args.interval, "topic": args.topic, "rows": rows, "ratios": ratios}


def _f(x: float | None, d: int = 0) -> str:
    return "-" if x is None else f"{x:,.{d}f}"


def _trunc(x: float) -> str:
    """Two decimals, truncated (never rounded up in onceflow's favour)."""
    return f"{int(x * 100) / 100:.2f}"


FLINK_PER_CORE = {"q5": 22_000, "q7": 12_300}  # Nexmark project's Flink 1.13 RocksDB figures


def targets(res: dict[str, Any]) -> list[str]:
    """The issue's targets against what this invocation measured (ratios truncated)."""
    by = {(r["query"], r["system"]): r for r in res["rows"]}
    out = ["Targets (issue 14), from the medians above:", ""]
    for q, want in FLINK_PER_CORE.items():
        for s in ("onceflow-rocksdb", "onceflow-memory"):
            got = (by.get((q, s)) or {}).get("events_per_cpu_s_median")
            out.append(f"- {q} {LABEL[s]} over Kafka: "
                       + ("not measured" if not got else
                          f"{got:,.0f} events/s per core vs Flink's published {want:,} "
                          f"({_trunc(got / want)}x): {'met' if got >= want else 'MISSED'}"))
    for q in dict.fromkeys(r["query"] for r in res["rows"]):
        a, b = by.get((q, "onceflow-memory")), by.get((q, "bytewax"))
        if not a or not b:
            continue
        if not b["events_per_cpu_s_median"]:
            out.append(f"- {q} onceflow (memory) / Bytewax: no valid Bytewax run (see the "
                       "invalid runs): not measured")
            continue
        for f, what in (("events_per_s_median", "events/s"),
                        ("events_per_cpu_s_median", "events/s per core")):
            if a[f] and b[f]:
                r = a[f] / b[f]
                out.append(f"- {q} onceflow (memory) / Bytewax, {what}: {_trunc(r)}x "
                           f"(≥ 3x: {'met' if r >= 3 else 'MISSED'})")
    return out


NOTES = """
Notes:

- **Size**: 200,000 events for every system (W5 is 5,000,000): one Flink run took 1-2
  minutes here (JVM start, job deployment, JIT warm-up and the shared machine), so W5's
  size, or even 500,000 events, would not fit 3 interleaved rounds of 41 configurations.
  At this size Flink's figures are far from its steady state (its q0 pass-through ran at
  about 12,000 events/s per core here); the ratios say what happens on this machine at
  this size, not what Flink does on a long run. The Flink targets below are against
  Flink's published per-core figures, as the issue sets them.

- **Where a peer cannot express a query.** Bytewax 0.21.1: q4 is not written (its
  per-auction close at the auction's expiry needs an event-time timer; Bytewax's stateful
  operators only have wall-clock notifications). **Quix Streams 3.28.1** ran q0-q3
  (peer_quix.py): q0-q2 as filter/apply, q3 as `group_by` (a re-partition topic, as its
  keyed state needs) and a stateful apply, the same hand-written join as Bytewax's. Not
  run on Quix: q4 (no event-time timers), q8 (no window join; it has as-of, interval and
  lookup joins), and q5, q7, q11: its hopping, tumbling and session windows express them,
  but Quix closes a key's window only when a later message of that key arrives and has no
  end of input, so the last window of every key is never emitted and the output cannot
  equal the reference (so no valid run, and no figure, could be claimed). Flink SQL ran
  every query.
- **Quix Streams**: `processing_guarantee="exactly-once"`, `commit_interval=10` (the
  others' checkpoint interval), its state and changelog defaults, one process. It has no
  bounded mode: `Application.run(timeout=15)` stops it 15 s after the last message read
  (more than a commit interval: with exactly-once, q3's re-partition topic is readable
  only after the commit that wrote it, so q3's second stage waits for the first commit)
  and commits; its events/s is over `run()` to the last message read (the idle tail
  excluded), its CPU seconds the whole process's after its imports.
- **Flink SQL** is the Nexmark project's SQL over our event fields (peer_flink.py), with two
  append-only rewrites a Kafka sink needs: q5 as a window Top-N (rank 1 with ties, the
  same rows as the project's `num >= max` join, which emits updates), and q4 into an
  `upsert-kafka` table keyed by category (q4's rows are updates in every system, so q4's
  row counts are not compared). q7 is the project's join formulation (bids joined with the
  window maximum, the bids kept in state). Parallelism 1, `state.backend.type` hashmap or
  rocksdb, EXACTLY_ONCE checkpoints every 10 s to the file system, the rest Flink's
  defaults. Its events/s and CPU are from `INSERT` submission to the job's end: the JVM's
  and mini-cluster's start-up are excluded, job deployment and JIT warm-up are not, which
  weighs heavily at this input size (see "incl. start-up" too). flink-rocksdb ran q5 and
  q7 only (the queries with published per-core figures), to keep the run within the time
  this machine had.
- **Bytewax**: recovery on (snapshots every 10 s); its Kafka sink is a plain producer
  (at-least-once after a failure; no transactional sink exists for it). Its watermark is
  not per Kafka partition, so its EventClock waits for the input's whole event-time span
  (see peer_bytewax.py; with a 2 s or 10 s wait it dropped on-time events as late). One
  worker. JSON with orjson, as onceflow's and Quix's (since 2026-12-01 17:20 UTC: before,
  the stdlib json module, which cost Bytewax about 1/3 of its CPU on q0, so earlier
  "onceflow / Bytewax" ratios were flattered; nexmark-kafka-profile.txt).
- **Event time**: only the queries that need it (q4, q5, q7, q8, q11: windows, and q4's
  expiry timer) get timestamps and watermarks in onceflow (queries.EVENT_TIME_QUERIES)
  and an `EventClock` in Bytewax; q0-q3 read no event time in either (before 2026-12-04,
  onceflow's source assigned timestamps and watermarks on every query, 5-8 % of q2's
  CPU over Kafka). Flink SQL's source table declares its watermark for every query, as
  the Nexmark project's DDL does (not changed here).
- **CPU seconds**: onceflow's are the driver's from `flow.run()` on plus the workers'
  whole lives, their interpreter start-up and imports included (about 0.3 CPU-s per
  worker, 25-45 % of a 200,000-event q0-q3 run; nexmark-kafka-profile.txt); before
  2026-12-01 17:20 UTC the driver's own start-up and imports (about 0.3 CPU-s) were
  counted too. Bytewax's and Quix's are their process's from `run()` on (their imports
  excluded), Flink's the JVM's from `INSERT` submission.
- **Checkpoint size** (onceflow only: the largest completed checkpoint of the run, bytes;
  Flink's and Bytewax's are not measured). Most runs here end within 10 s, before the
  first periodic checkpoint, so this is mostly the final checkpoint's: the state left after
  every window closed (RocksDB's includes its SST files).
- **onceflow**: `benchmarks/nexmark/run.py --one ... --input kafka` at parallelism 1 (the
  same program as `make nexmark NEXMARK_ARGS="--input kafka"`), KafkaSource → query →
  KafkaSink(exactly_once, a transactional id prefix per run).
- **q4 on RocksDB**: q4 keeps the bids that arrive before their auction (8 partitions read
  at different paces) in list state; RocksDB's list state was one pickled list per key,
  read and rewritten on every `add` (O(n) per append: 2,335 events/s, 6,443 per core, in
  the run before this one). Since 2026-12-01 it is one entry per element (format
  `rocksdb-2`, docs/state.md).
- **Where Kafka's q0/q2/q3 CPU goes** (onceflow, cProfile of the worker,
  nexmark-kafka-profile.txt): the Kafka source's per-message loop 18-27 %, orjson decoding
  12-21 %, librdkafka's consume 5-12 %, the sink's per-record produce up to 22 % (q0), the
  query's operators and functions 12-24 %; the per-partition watermark grouping was
  10-15 % before it went run by run (2026-12-01).
- **Where q5's time goes** (onceflow, in-process, cProfile of the worker:
  nexmark-q5-profile.txt): the generator 33 %, the sliding window's record path (5 panes
  per bid, a timer per new pane) 23 %, firing the windows on watermarks 24 %, the
  timestamp function 6 %, the filter 4 %, the rest about 10 %. Over Kafka the generator
  is replaced by the source's JSON parsing and the sink's JSON and transactional produce
  (not profiled).
- **Noise**: this 2-core machine is shared with other helpers' test suites (load average
  3-7 during the 2026-12-01 18:05 run, 15-19 during the one before): wall-clock events/s
  are depressed and noisy for every system; events/s per core (CPU seconds) is the
  steadier figure, but cache and scheduler contention affect it too.
"""


SIZE_NOTE_200K = NOTES.split("\n\n")[1]  # the "Size" note of the 200,000-event runs

SIZE_NOTE_W5 = """- **Size**: {events:,} events (W5's N is 5,000,000: WORKLOADS.md) for onceflow and
  Bytewax. Flink SQL and Quix Streams were not rerun at this size (one Flink run takes 1-2
  minutes at 200,000 events here; 3 rounds of Flink's and Quix's configurations at
  5,000,000 would take hours on this shared machine): their ratios are those of the
  200,000-event run ({peers_from}.md: the same generator, seed and settings, so the first
  200,000 of these events), both sides measured at 200,000 events (the table after the
  ratios above); they are not ratios to this run's figures."""


#: notes of the 200,000-event runs that later measurements replace in other runs' notes
CPU_NOTE_200K = NOTES[NOTES.index("- **CPU seconds**"):NOTES.index("- **Checkpoint size**")]
WHERE_NOTE_200K = NOTES[NOTES.index("- **Where Kafka's q0/q2/q3"):NOTES.index(
    "- **Where q5's time goes**")]

CPU_NOTE_W5 = """- **CPU seconds**: onceflow's are the driver's from `flow.run()` on plus the
  worker's whole life (the worker is forked from the driver, so it does not import anything again;
  its librdkafka threads included), which is the number the target is judged on; the
  fixed part is about 0.15 CPU-s per run (a 20,000-event q0 or q3 run costs 0.22-0.23
  CPU-s: driver 0.11, worker 0.12-0.13; nexmark-kafka-profile.txt), under 1 % of a
  5,000,000-event run, so no figure without start-up is given. Bytewax's and Quix's are
  their process's from `run()` on (their imports excluded), Flink's the JVM's from
  `INSERT` submission.
"""

WHERE_NOTE_W5 = """- **Where onceflow's CPU goes over Kafka now** (py-spy of the worker at 200 Hz,
  q0 and q3 at 200,000 events, after the batch paths of 2026-12-01 20:20 UTC;
  nexmark-kafka-profile.txt): per event, q0 costs about 4.1 CPU-µs in all (q3 about 2.9):
  the worker's main thread about 3 µs and librdkafka's threads about 0.75 µs. Shares of
  the worker's samples, q0 / q3: orjson decoding 19 % / 32 %, librdkafka's consume 7 % /
  9 %, the source's Python 5 % / 7 %, Producer.produce and poll 13 % / 6 % and the sink's
  Python loop and orjson encoding 16 % / 2 %, the query's operators and functions (the
  filter, the map, the join, the timestamp function) about 10 % / 19 %, the task loop,
  watermarks, message freeing and checkpoints the rest. The earlier cProfile figures
  (18-27 % for the source's per-message loop) were inflated by cProfile's cost per C
  call: without a profiler that loop cost about 1.0 µs per message, 0.2 µs of it the
  loop itself, the rest orjson.
"""


EXTRA_NOTES_W5 = """- **Rounds**: 1 of the 3 planned interleaved rounds ran (2026-12-01 20:52-21:30
  UTC): one round took about 37 minutes, 19 of them Bytewax's q5 and q7, and the session
  had to end by 22:05. So every figure at this size is one run, not a median of three
  (the 200,000-event run's are medians of three). To complete it (about two hours):
  `python benchmarks/nexmark/peers.py --events 5000000 --runs 3 --systems
  onceflow-memory,bytewax --stem nexmark-peers-5m --peers-from nexmark-peers
  --reference-json benchmarks/results/nexmark-peers-5m-reference.json`.
- **Bytewax at 5,000,000 events**: its EventClock waits for the input's whole event-time
  span (510 s here; see the Bytewax note above), so every window, and in q7 every bid,
  stays in its state until the input ends: q5 ran at about 21,000 events/s (38,694 at
  200,000 events), and q7 did not finish within the 900 s limit (2.7 GB resident at
  12 minutes), so q7 has no Bytewax figure and no ratio at this size (at 200,000 events:
  2.90x per core, MISSED there).
- **onceflow's wall-clock rate** was about 125,000 events/s on every query, whatever its
  CPU per event (q2 needs about 2 CPU-us per event): its one consumer of the 8 partitions
  (Bytewax's KafkaSource makes one per partition) stalls on librdkafka's
  `fetch.queue.backoff.ms` (1000 ms by default: a partition whose pre-fetch queue was full
  is fetched again only a second later). With 10 ms the wall-clock rate doubled or more but
  events/s per core fell on most queries (nexmark-peers-5m-onceflow.md), so the default
  stays; onceflow's events/s ratios here understate what its CPU allows, and the per-core
  figures are the target's.
"""


def other_ratios(stem: str, systems: list[str]) -> dict[str, Any]:
    """The ratios of the results ``stem`` to the peers not run here, and its size."""
    other = json.loads((RESULTS / f"{stem}.json").read_text())
    return {"stem": stem, "events": other["events"], "date": other["machine"].get("date"),
            "ratios": [x for x in other["ratios"] if x["peer"] not in systems]}


def _other_lines(res: dict[str, Any]) -> list[str]:
    o = res.get("peers_from")
    if not o or not o["ratios"]:
        return []
    lines = ["", f"Ratios to the peers not run at this size, from {o['stem']}.md "
             f"({o['events']:,} events, {o['date']}; both sides at {o['events']:,} events; "
             "truncated):", "",
             "| query | onceflow | peer | events/s | events/s per core |",
             "|---|---|---|---:|---:|"]
    seen: dict[tuple[str, str, str], dict[str, float]] = {}
    for x in o["ratios"]:
        seen.setdefault((x["query"], x["onceflow"], x["peer"]), {})[x["figure"]] = x["ratio"]
    for (q, a, b), f in seen.items():
        r1, r2 = f.get("events_per_s_median"), f.get("events_per_cpu_s_median")
        lines.append(f"| {q} | {LABEL[a]} | {LABEL[b]} | {_trunc(r1) if r1 else '-'} | "
                     f"{_trunc(r2) if r2 else '-'} |")
    return lines


def later_onceflow(stem: str) -> dict[str, Any]:
    """onceflow (memory) rows of a later run (``--systems onceflow-memory``) on the same
    topic, to put next to this run's Bytewax figures."""
    other = json.loads((RESULTS / f"{stem}.json").read_text())
    return {"stem": stem, "date": other["machine"].get("date"),
            "git": other["machine"].get("git_head"), "runs": other["runs"],
            "rounds_done": other.get("rounds_done", other["runs"]),
            "rows": [r for r in other["rows"] if r["system"] == "onceflow-memory"]}


def _later_lines(res: dict[str, Any]) -> list[str]:
    o = res.get("later")
    if not o:
        return []
    by = {(r["query"], r["system"]): r for r in res["rows"]}
    lines = ["", f"onceflow (memory) in a later run, {o['stem']}.md (git {o['git']}, {o['date']}: "
             f"medians of {o['rounds_done']} run(s), after KafkaSource's fetch.queue.backoff.ms "
             "change), against this run's Bytewax figures (not interleaved with them; "
             "truncated):", "",
             "| query | onceflow events/s | onceflow events/s per core | valid runs | "
             "/ Bytewax, events/s | / Bytewax, events/s per core |",
             "|---|---:|---:|---|---:|---:|"]
    for r in o["rows"]:
        b = by.get((r["query"], "bytewax")) or {}
        ra = [r[f] / b[f] if r.get(f) and b.get(f) else None
              for f in ("events_per_s_median", "events_per_cpu_s_median")]
        verdict = "" if ra[1] is None else (" (met)" if ra[1] >= 3 else " (MISSED)")
        lines.append(f"| {r['query']} | {_f(r['events_per_s_median'])} | "
                     f"{_f(r['events_per_cpu_s_median'])} | {r['valid_runs']}/{r['total_runs']} "
                     f"| {_trunc(ra[0]) if ra[0] else '-'} | "
                     f"{_trunc(ra[1]) + verdict if ra[1] else '-'} |")
    return lines


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Nexmark over Kafka: onceflow, Flink SQL, Bytewax, Quix Streams",
        "",
        f"{res['events']:,} events (seed 0, in order, 10,000 events/s of event time) "
        "pre-filled once into one Kafka topic (8 partitions, JSON); every system reads it "
        "from the start to its end and writes the query's rows to a fresh Kafka topic; "
        f"parallelism 1, checkpoints/snapshots every {res['interval_s']:g} s; medians of "
        f"{res['runs']} interleaved run(s). Machine: {m.get('cores')} cores, {m.get('cpu')}, "
        f"load average at start {m.get('loadavg_at_start')}, git {m.get('git_head')}, "
        f"{m.get('date')}. Rounds completed: {res.get('rounds_done', res['runs'])} of "
        f"{res['runs']}.",
        "",
        "| query | system | rows (reference) | events/s | events/s per core | "
        "events/s incl. start-up | peak memory MB | checkpoint size B | valid runs |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['query']} | {LABEL[r['system']]} | {_f(r['results'])} "
            f"({_f(r['reference'])}) | {_f(r['events_per_s_median'])} | "
            f"{_f(r['events_per_cpu_s_median'])} | "
            f"{_f(r['events_per_s_incl_startup_median'])} | "
            f"{_f(r['peak_rss_mb_median'], 1)} | {_f(r.get('checkpoint_size_bytes_median'))} | "
            f"{r['valid_runs']}/{r['total_runs']} |")
    lines += ["", "Ratios onceflow / peer (medians; truncated to two decimals):", "",
              "| query | onceflow | peer | events/s | events/s per core |",
              "|---|---|---|---:|---:|"]
    seen: dict[tuple[str, str, str], dict[str, float]] = {}
    for x in res["ratios"]:
        seen.setdefault((x["query"], x["onceflow"], x["peer"]), {})[x["figure"]] = x["ratio"]
    for (q, a, b), f in seen.items():
        r1, r2 = f.get("events_per_s_median"), f.get("events_per_cpu_s_median")
        lines.append(f"| {q} | {LABEL[a]} | {LABEL[b]} | {_trunc(r1) if r1 else '-'} | "
                     f"{_trunc(r2) if r2 else '-'} |")
    lines += _other_lines(res)
    lines += _later_lines(res)
    notes = NOTES.strip()
    if res["events"] != 200_000:
        notes = notes.replace(SIZE_NOTE_200K, SIZE_NOTE_W5.format(
            events=res["events"], peers_from=(res.get("peers_from") or {}).get(
                "stem", "nexmark-peers")))
        notes = notes.replace(CPU_NOTE_200K, CPU_NOTE_W5).replace(WHERE_NOTE_200K,
                                                                  WHERE_NOTE_W5)
        if res["events"] == 5_000_000 and res.get("rounds_done") == 1 and any(
                r["system"] == "bytewax" for r in res["rows"]):
            notes += "\n" + EXTRA_NOTES_W5.rstrip()
    if res.get("note"):
        notes += "\n" + res["note"].rstrip()
    lines += ["", *targets(res), "", notes]
    problems = [f"{r['query']} {r['system']} run {i + 1}: {p}" for r in res["rows"]
                for i, run in enumerate(r["runs"]) for p in run.get("problems", [])]
    if problems:
        lines += ["", "Invalid runs:", ""] + [f"- {p[:400]}" for p in problems]
    lines.append("")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    """A grouped bar chart of events/s per core, by query and system (compare's plot venv)."""
    data = {f"{r['query']}|{r['system']}": r["events_per_cpu_s_median"] for r in res["rows"]}
    code = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.loads({json.dumps(json.dumps(data))})
queries = list(dict.fromkeys(k.split("|")[0] for k in data))
systems = list(dict.fromkeys(k.split("|")[1] for k in data))
labels = {json.dumps(LABEL)}
fig, ax = plt.subplots(figsize=(11, 4.5))
w = 0.8 / max(len(systems), 1)
for i, s in enumerate(systems):
    ys = [data.get(q + "|" + s) or 0 for q in queries]
    ax.bar([j + i * w for j in range(len(queries))], ys, w, label=labels[s])
ax.set_xticks([j + w * (len(systems) - 1) / 2 for j in range(len(queries))], queries)
ax.set_yscale("log")
ax.set_ylabel("events/s per core (log)")
ax.set_title("Nexmark over Kafka, {res['events']:,} events, parallelism 1 (0 = not run / invalid)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig({str(path)!r}, dpi=110)
"""
    subprocess.run([_venv("plot"), "-c", code], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--queries", default=",".join(QUERIES))
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--flink-rocksdb-queries", default="q5,q7",
                    help="queries flink-rocksdb runs (default q5,q7: Flink's published "
                    "per-core figures are RocksDB's; the JVM runs are the slowest here)")
    ap.add_argument("--topic", default=None, help="reuse a topic filled by an earlier run "
                    "with the same --events (default: pre-fill a fresh one)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--stem", default="nexmark-peers")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--reference-json", default=None,
                    help="keep the DuckDB reference row counts in this JSON file (by "
                    "--events) and reuse them")
    ap.add_argument("--later", default=None,
                    help="with --render-only: a later onceflow-only results stem whose "
                    "onceflow rows the table also compares with this run's Bytewax")
    ap.add_argument("--note", default=None,
                    help="with --render-only: a file whose text is added to the notes")
    ap.add_argument("--prepare-only", action="store_true",
                    help="pre-fill the topic and compute the reference, then stop (prints "
                    "the topic for --topic)")
    ap.add_argument("--peers-from", default=None,
                    help="a results stem (e.g. nexmark-peers) whose ratios to the systems "
                    "not run here (Flink SQL, Quix) the table also lists, labelled with "
                    "that run's event count")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    if args.render_only:
        res = json.loads((RESULTS / f"{args.stem}.json").read_text())
        for r in res["rows"]:  # figures added to the summary after a run was saved
            r.setdefault("checkpoint_size_bytes_median", _med(r["runs"], "checkpoint_size_bytes"))
        if args.later:
            res["later"] = later_onceflow(args.later)
        if args.note:
            res["note"] = Path(args.note).read_text()
        if args.later or args.note:
            (RESULTS / f"{args.stem}.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / f"{args.stem}.md").write_text(render(res))
        plot(res, RESULTS / f"{args.stem}.png")
        return 0
    machine = machine_info()
    r = subprocess.run([str(ROOT / "scripts" / "kafka"), "start"], capture_output=True,
                       text=True, check=True)
    args.bootstrap = r.stdout.strip().splitlines()[-1].strip()
    queries, systems = args.queries.split(","), args.systems.split(",")
    for s in systems:  # installs happen before any timed run
        if s.startswith("flink"):
            _venv("pyflink")
            _jar()
        elif s in ("bytewax", "quix"):
            _venv(s)
    if not args.topic:
        from onceflow.nexmark import NexmarkConfig, prefill_kafka

        args.topic = f"nexmark-peers-{args.events}-{os.getpid()}"
        t0 = time.perf_counter()
        prefill_kafka(args.bootstrap, args.topic, NexmarkConfig(events=args.events),
                      partitions=8)
        print(f"prefilled {args.topic} in {time.perf_counter() - t0:.1f} s", flush=True)
    args.reference = cached_reference(args.events, queries, args.reference_json)
    print(f"reference row counts: {args.reference}", flush=True)
    if args.prepare_only:
        print(f"prepared: --topic {args.topic} --events {args.events}", flush=True)
        return 0
    runs: dict[tuple[str, str], list[dict]] = {
        (q, s): [] for q in queries for s in systems
        if not (s == "bytewax" and q not in BYTEWAX_QUERIES)
        and not (s == "quix" and q not in QUIX_QUERIES)
        and not (s == "flink-rocksdb" and q not in args.flink_rocksdb_queries.split(","))}
    for i in range(args.runs):
        for (q, s), rs in runs.items():
            rec = run_one(s, q, args)
            rs.append(rec)
            print(f"run {i + 1}/{args.runs} {q} {s}: {rec.get('events_per_s', 0):,.0f} "
                  f"events/s, {rec.get('events_per_cpu_s', 0):,.0f} events/CPU-s, "
                  f"{rec.get('results')} rows"
                  + ("" if rec.get("valid") else f" INVALID {rec.get('problems')}"), flush=True)
        res = summarize(runs, args, machine)  # after every round: what is measured so far
        res["rounds_done"] = i + 1
        if args.peers_from:
            res["peers_from"] = other_ratios(args.peers_from, systems)
        md = render(res)
        if not args.no_save:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{args.stem}.json").write_text(json.dumps(res, indent=2) + "\n")
            (RESULTS / f"{args.stem}.md").write_text(md)
            print(f"wrote {RESULTS / args.stem}.json/.md after round {i + 1}", flush=True)
    print(md)
    if not args.no_save:
        plot(res, RESULTS / f"{args.stem}.png")
    return 0 if all(r.get("valid") for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
