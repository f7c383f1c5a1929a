"""W5 Nexmark benchmark on onceflow (see /work/shared/bench/WORKLOADS.md): ``make nexmark``.

    python benchmarks/nexmark/run.py                          # W5: 5,000,000 events, 3 runs
    python benchmarks/nexmark/run.py --events 300000 --runs 1 --queries q0,q3
    python benchmarks/nexmark/run.py --one --query q3 --parallelism 2 --backend rocksdb

Each run is a fresh subprocess reading the Nexmark generator in-process (seed 0, 10,000
events/s of event time, in order), running one query at parallelism 1 or 2 on the memory
or RocksDB backend with exactly-once checkpoints every 10 s, into a counting sink whose
count is checkpointed. Runs are interleaved: run 1 of every configuration, then run 2, ...
Figures: events/s (events / processing seconds), events/s per core (events / CPU
seconds of the driver from ``flow.run()`` on and of all workers, their start-up
included), peak memory (summed RSS of the process tree,
sampled), checkpoint size. A run is valid when the sink's exactly-once count equals the
job's own record count and, for the same query, every configuration's count agrees (q0 and
q1 also equal the number of bids, 46 of every 50 events).

``--input kafka`` pre-fills a topic (8 partitions, JSON) once and reads it in every run,
writing results to Kafka in transactions (exactly-once); results in nexmark-kafka.json/.md.

Results: benchmarks/results/nexmark.json and nexmark.md. q4, q5, q7, q8 and q11 run when
the window operator is present. The peers (Flink SQL, Bytewax) on the same Kafka events:
peers.py (``make nexmark-peers``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from w1 import machine_info, run_child, save_results  # noqa: E402

QUERIES = ["q0", "q1", "q2", "q3"]
WINDOWED = ["q4", "q5", "q7", "q8", "q11"]


def available_queries() -> list[str]:
    """q0-q3, and the windowed queries once the window operator is there."""
    import onceflow as of

    return QUERIES + (WINDOWED if hasattr(of, "windows") else [])
CONFIGS = [(p, b) for b in ("memory", "rocksdb") for p in (1, 2)]


def _counting_sink(out_dir: str) -> Any:
    import onceflow as of

    class CountingSink(of.sinks.Sink):
        """Counts results; the count is checkpointed (exact across restarts). Each snapshot
        (the final checkpoint's last) and ``finish`` write it to
        ``<out_dir>/sink-<subtask>.json`` (a sink chained to its source hears no finish)."""

        def __init__(self) -> None:
            self.n = 0
            self.subtask = 0

        def open(self, ctx: Any) -> None:
            self.subtask = ctx.subtask

        def write(self, records: list[Any]) -> None:
            self.n += len(records)

        def snapshot_state(self, checkpoint_id: int) -> Any:
            self.finish()
            return self.n

        def restore_state(self, states: list[Any]) -> None:
            self.n = sum(s for s in states if s)

        def finish(self) -> None:
            path = os.path.join(out_dir, f"sink-{self.subtask}.json")
            with open(path + ".tmp", "w") as f:
                json.dump({"n": self.n}, f)
            os.replace(path + ".tmp", path)

    return CountingSink()


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def count_committed(bootstrap: str, topic: str, timeout: float = 120) -> int:
    """Records a read_committed consumer sees in ``topic``, up to the end of each partition
    (the job has finished: nothing is pending)."""
    import uuid

    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex}",
                     "isolation.level": "read_committed", "enable.auto.commit": False,
                     "enable.partition.eof": True})
    md = c.list_topics(topic, timeout=30).topics[topic]
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in md.partitions])
    n, eof, deadline = 0, set(), time.monotonic() + timeout
    while len(eof) < len(md.partitions) and time.monotonic() < deadline:
        for m in c.consume(10000, timeout=0.5):
            if m.error():
                if m.error().code() == ck.KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise ck.KafkaException(m.error())
            eof.discard(m.partition())
            n += 1
    c.close()
    return n


def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete a run's own output topic (the dev broker must not grow a topic per run); a
    failure is printed, never raised."""
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics(
            [topic], operation_timeout=60)[topic].result(70)
    except Exception as e:
        print(f"[topics] could not delete {topic}: {e}", file=sys.stderr, flush=True)


def run_one(query: str, parallelism: int, backend: str, events: int, interval: float,
            kafka: tuple[str, str] | None = None, output_topic: str | None = None) -> dict:
    from queries import build

    import onceflow as of
    from onceflow.nexmark import NexmarkConfig

    tmp = tempfile.mkdtemp(prefix="nexmark-")
    try:
        sink_dir = os.path.join(tmp, "sink")
        os.makedirs(sink_dir)
        be = (of.state.RocksDBBackend(local_dir=os.path.join(tmp, "rocks"))
              if backend == "rocksdb" else of.state.MemoryBackend())
        flow = of.Flow(f"nexmark-{query}", parallelism=parallelism, state_backend=be)
        flow.enable_checkpointing(interval=interval, storage=os.path.join(tmp, "ckpt"))
        if kafka is None:
            sink: Any = _counting_sink(sink_dir)
        else:  # results to Kafka exactly-once (a fresh topic per run)
            from confluent_kafka.admin import AdminClient, NewTopic

            from onceflow.kafka import KafkaSink

            out = output_topic or f"{kafka[1]}-{query}-p{parallelism}-{backend}-{os.getpid()}"
            if output_topic is None:
                admin = AdminClient({"bootstrap.servers": kafka[0]})
                admin.create_topics([NewTopic(out, 2, 1)])[out].result(timeout=30)
            # transactional ids unique per run: runs of the same query (this benchmark's,
            # peers.py's) share the flow name, and so the default prefix; jobs sharing
            # transactional ids fence each other's transactions
            sink = KafkaSink(kafka[0], out, serializer="json", transactional_id_prefix=out)
        build(flow, query, NexmarkConfig(events=events), sink, kafka=kafka)
        # the driver's CPU from here (its interpreter start-up and imports are not the
        # job's, as the peers' are not theirs); the workers' whole lives (their start-up
        # and imports included)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        result = flow.run()
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru_self.ru_utime + ru_self.ru_stime - ru0.ru_utime - ru0.ru_stime
               + ru_kids.ru_utime + ru_kids.ru_stime)
        problems = []
        if kafka is None:
            counted = sum(json.loads(f.read_text())["n"] for f in Path(sink_dir).glob("sink-*"))
        else:  # what a read_committed consumer sees in the output topic
            counted = count_committed(kafka[0], out)
            if output_topic is None:  # made by this run (else by the caller, who deletes it)
                delete_topic(kafka[0], out)
        if counted != result.records_in("results"):
            problems.append(f"sink counted {counted}, job says {result.records_in('results')}")
        bids = events // 50 * 46 + max(0, events % 50 - 4)
        if query in ("q0", "q1") and counted != bids:
            problems.append(f"{counted} results, expected {bids} bids")
        done = result.completed_checkpoints
        periodic = [c for c in done if not c.final]
        return {
            "query": query, "parallelism": parallelism, "backend": backend, "events": events,
            "input": "kafka" if kafka else "generator",
            "results": counted, "processing_s": result.processing_seconds,
            "events_per_s": events / result.processing_seconds,
            "cpu_s": cpu, "events_per_cpu_s": events / max(cpu, 1e-9),
            "driver_maxrss_mb": _maxrss_mb(resource.RUSAGE_SELF),
            "checkpoints_periodic": len(periodic),
            "checkpoint_size_bytes": max((c.size or 0 for c in done), default=None),
            "restarts": result.restarts, "valid": not problems, "problems": problems,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_subprocess(query: str, parallelism: int, backend: str, args: argparse.Namespace
                   ) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--query", query,
           "--parallelism", str(parallelism), "--backend", backend, "--events",
           str(args.events), "--interval", str(args.interval)]
    if args.kafka_topic:
        cmd += ["--bootstrap", args.bootstrap, "--kafka-topic", args.kafka_topic]
    run = run_child(cmd)
    rec = run.rec
    if run.returncode != 0 or rec is None:
        return {"query": query, "parallelism": parallelism, "backend": backend, "valid": False,
                "problems": [f"exit {run.returncode}: {run.err.strip()[-1500:]}"]}
    rec["wall_s"] = run.wall_s
    rec["peak_rss_mb"] = run.sampled_tree_rss_mb
    return rec


def _med(runs: list[dict], field: str) -> float | None:
    v = [r[field] for r in runs if r.get("valid") and r.get(field) is not None]
    return statistics.median(v) if v else None


def _prefill(args: argparse.Namespace) -> None:
    """``--input kafka``: start the dev broker, fill a fresh topic with the events (8
    partitions, JSON) once for all runs."""
    from onceflow.nexmark import NexmarkConfig, prefill_kafka

    root = HERE.parents[1]
    r = subprocess.run([str(root / "scripts" / "kafka"), "start"], capture_output=True,
                       text=True, check=True)
    args.bootstrap = r.stdout.strip().splitlines()[-1].strip()
    if args.topic:  # reuse a topic a previous invocation filled with the same events
        args.kafka_topic = args.topic
        return
    args.kafka_topic = f"nexmark-w5-{args.events}-{os.getpid()}"
    t0 = time.perf_counter()
    prefill_kafka(args.bootstrap, args.kafka_topic, NexmarkConfig(events=args.events),
                  partitions=8)
    print(f"prefilled {args.kafka_topic} with {args.events:,} events in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)


def main_parent(args: argparse.Namespace) -> int:
    machine = machine_info()
    if args.input == "kafka":
        _prefill(args)
    queries = args.queries.split(",") if args.queries else available_queries()
    configs = ([(int(c.split("-")[0][1:]), c.split("-")[1]) for c in args.configs.split(",")]
               if args.configs else CONFIGS)
    runs: dict[tuple[str, int, str], list[dict]] = {(q, p, b): [] for q in queries
                                                    for p, b in configs}
    for i in range(args.runs):
        for key in runs:
            rec = run_subprocess(*key, args)
            runs[key].append(rec)
            print(f"run {i + 1}/{args.runs} {key}: "
                  f"{rec.get('events_per_s', 0):,.0f} events/s, "
                  f"{rec.get('events_per_cpu_s', 0):,.0f} events/CPU-s"
                  f"{'' if rec.get('valid') else ' INVALID ' + str(rec.get('problems'))}",
                  flush=True)
    for q in queries:  # every configuration of a query must agree on the result count
        counts = {r.get("results") for (qq, _, _), rs in runs.items() if qq == q
                  for r in rs if r.get("valid")}
        if len(counts) > 1:
            for (qq, _, _), rs in runs.items():
                for r in rs:
                    if qq == q:
                        r["valid"] = False
                        r.setdefault("problems", []).append(f"result counts differ: {counts}")
    summaries: dict[str, Any] = {}
    for (q, p, b), rs in runs.items():
        name = f"{q} p{p} {b}"
        summaries[name] = {
            "name": name, "query": q, "parallelism": p, "backend": b, "events": args.events,
            "input": args.input,
            "checkpoint_interval_s": args.interval, "total_runs": len(rs),
            "valid_runs": sum(1 for r in rs if r.get("valid")),
            "results": _med(rs, "results"),
            "events_per_s_median": _med(rs, "events_per_s"),
            "events_per_cpu_s_median": _med(rs, "events_per_cpu_s"),
            "peak_rss_mb_median": _med(rs, "peak_rss_mb"),
            "checkpoint_size_bytes_median": _med(rs, "checkpoint_size_bytes"),
            "runs": rs, "machine": machine,
        }
    md = render(summaries, machine, args)
    print(md)
    return save_results(args.stem, summaries, md, save=not args.no_save)


def _f(x: float | None, d: int = 0) -> str:
    return "-" if x is None else f"{x:,.{d}f}"


def render(summaries: dict[str, Any], machine: dict, args: argparse.Namespace) -> str:
    lines = [
        "# W5 Nexmark on onceflow",
        "",
        f"{args.events:,} events (seed 0, in order), "
        + ("generator in-process into a counting sink" if args.input == "generator" else
           "read from Kafka (8 partitions, JSON) and results to Kafka in transactions")
        + ", exactly-once "
        f"checkpoints every {args.interval:g} s, medians of {args.runs} interleaved run(s). "
        f"Machine: {machine.get('cores')} cores, {machine.get('cpu')}, Python "
        f"{machine.get('python')}, load average at start {machine.get('loadavg_at_start')}, "
        f"git {machine.get('git_head')}.",
        "",
        "| query | parallelism | backend | results | events/s | events/s per core | "
        "peak memory MB | checkpoint size B | valid runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        lines.append(
            f"| {s['query']} | {s['parallelism']} | {s['backend']} | {_f(s['results'])} | "
            f"{_f(s['events_per_s_median'])} | {_f(s['events_per_cpu_s_median'])} | "
            f"{_f(s['peak_rss_mb_median'], 1)} | {_f(s['checkpoint_size_bytes_median'])} | "
            f"{s['valid_runs']}/{s['total_runs']} |")
    missing = [q for q in QUERIES + WINDOWED if q not in {s["query"] for s in summaries.values()}]
    lines += ["", "The peers (Flink SQL, Bytewax) on the same Kafka events: "
              "benchmarks/nexmark/peers.py, nexmark-peers.md"
              + (f". Not measured here: queries {', '.join(missing)}" if missing else "") + ".",
              ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=10.0, help="checkpoint interval, s")
    ap.add_argument("--queries", default=None, help="comma-separated (default: all there)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated, e.g. p1-memory,p2-rocksdb (default: all four)")
    ap.add_argument("--input", choices=["generator", "kafka"], default="generator",
                    help="events from the generator in-process, or pre-filled Kafka topics")
    ap.add_argument("--stem", default=None, help="results file name under results/ "
                    "(default nexmark, nexmark-kafka with --input kafka)")
    ap.add_argument("--topic", default=None, help="--input kafka: read this topic, already "
                    "filled by an earlier invocation with the same --events (no pre-fill)")
    ap.add_argument("--bootstrap", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--output-topic", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kafka-topic", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", action="store_true", help="one run in this process (JSON line)")
    ap.add_argument("--query", default="q0")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--backend", choices=["memory", "rocksdb"], default="memory")
    args = ap.parse_args()
    if args.one:
        kafka = (args.bootstrap, args.kafka_topic) if args.kafka_topic else None
        print(json.dumps(run_one(args.query, args.parallelism, args.backend, args.events,
                                 args.interval, kafka, args.output_topic)), flush=True)
        return 0
    args.stem = args.stem or ("nexmark" if args.input == "generator" else "nexmark-kafka")
    return main_parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
