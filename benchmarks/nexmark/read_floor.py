"""The CPU floor of reading a Nexmark topic in Python: what consuming its records with
confluent-kafka and decoding them costs with no engine at all (issue 14's q2).

    .venv/bin/python benchmarks/nexmark/read_floor.py --topic TOPIC --events N [--runs 3] \
        [--peers-json benchmarks/results/nexmark-peers-5m-q012.json]

Every stream processor here that reads JSON from Kafka in Python (onceflow, Bytewax, Quix
Streams) pays at least this per event: librdkafka's fetch threads, one confluent-kafka
``Message`` per record, and a JSON decoder's call on its value. Each run is a fresh process
that assigns every partition of ``TOPIC`` from offset 0 and reads ``N`` records in
``consume(1024)`` batches (the batch size onceflow's source reads), keeping no record.
Configurations, in interleaved rounds:

* ``consume``: consume and ``Message.value``, no decoding, librdkafka's defaults;
* ``decode``: plus ``orjson.loads`` of every value, librdkafka's defaults (what the
  Bytewax peer does);
* ``decode-msgspec``: the same with msgspec's decoder, the one ``KafkaSource`` uses
  (``onceflow.connectors.jsonvalues.decode``);
* ``decode-onceflow``: msgspec's decoder with ``KafkaSource``'s consumer settings
  (``reader_config``: read_committed, end-of-partition events, its fetch backoff and
  prefetch limit);
* ``q0-loop``, ``q1-loop``, ``q2-loop``: that, plus the query's own functions
  (queries.py's filter and map, the same objects), ``orjson.dumps`` of each row and a
  transactional producer (``linger.ms`` 50, delivery reports for errors only, a commit
  every 10 s and at the end) into a fresh 2-partition topic: the query as a hand-written
  loop, with no engine (no timestamps, watermarks, checkpoints or recovery), decoding as
  ``decode-onceflow`` does. The least a
  Python job of that query over this topic can cost here.

CPU is the process's (every thread) from before the consumer is made to the last record,
so a connection's set-up is in it, as it is in a job's; imports are not. The garbage
collector is set as onceflow's workers set it (frozen start-up objects, young collections
every 50,000 allocations). ``--peers-json``: a peers.py result; the table then sets the
loops beside that run's Bytewax and onceflow, per core.
Results: benchmarks/results/nexmark-read-floor.json and .md (``--no-save``: print only).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(HERE))

RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ["consume", "decode", "decode-msgspec", "decode-onceflow", "q0-loop", "q1-loop",
           "q2-loop"]
LABEL = {"consume": "consume only (librdkafka defaults)",
         "decode": "consume + orjson.loads (librdkafka defaults)",
         "decode-msgspec": "consume + msgspec's decode (librdkafka defaults)",
         "decode-onceflow": "consume + msgspec's decode (onceflow's reader settings)",
         "q0-loop": "q0 as a plain loop: the same + q0's functions, JSON out, transactions",
         "q1-loop": "q1 as a plain loop",
         "q2-loop": "q2 as a plain loop"}
BATCH = 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(config: str, bootstrap: str, topic: str, events: int) -> dict[str, Any]:
    """One run in this process: read ``events`` records of ``topic`` from the start."""
    import confluent_kafka as ck
    import orjson

    query = config.split("-")[0] if config.endswith("-loop") else None
    out_topic = f"read-floor-{query}-{uuid.uuid4().hex[:8]}" if query else None
    if out_topic:  # made before the clock starts, as the benchmark's jobs' output topics
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(out_topic, 2, 1)])[out_topic].result(timeout=30)
    # imports (onceflow's, queries.py's) before the clock starts: the jobs' are not in
    # their CPU seconds either (their workers are forked from an interpreter that has them)
    keep, project = _query_functions(query) if query else (None, None)
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "enable.auto.commit": False,
                            "group.id": f"read-floor-{uuid.uuid4().hex[:8]}"}
    if config not in ("consume", "decode", "decode-msgspec"):
        from onceflow.connectors.kafka.source import reader_config
        from onceflow.kafka import KafkaSource

        conf = reader_config(KafkaSource(bootstrap, topic, group_id=conf["group.id"]))
    # the garbage collector as onceflow's workers set it (runtime/worker.py): decoded
    # records are many short-lived dicts, collected far less often than by default
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    t0, w0 = _cpu(), time.perf_counter()
    c = ck.Consumer(conf)
    meta = c.list_topics(topic, timeout=30).topics[topic]
    c.assign([ck.TopicPartition(topic, p, 0) for p in sorted(meta.partitions)])
    decode = config != "consume"
    loads: Any = orjson.loads
    if config != "decode":
        from onceflow.connectors.jsonvalues import decode as loads
    prod: Any = None
    errors: list[Any] = []

    def on_error(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    if out_topic:  # a transactional producer, as an exactly-once sink has
        prod = ck.Producer({"bootstrap.servers": bootstrap, "transactional.id": out_topic,
                            "linger.ms": 50, "delivery.report.only.error": True})
        prod.init_transactions()
        prod.begin_transaction()
    value, error = ck.Message.value, ck.Message.error
    n = rows = part = 0
    deadline = time.monotonic() + 600
    committed = time.monotonic()
    while n < events:
        if time.monotonic() > deadline:
            raise SystemExit(f"read only {n} of {events} records of {topic} in 600 s")
        msgs = c.consume(num_messages=BATCH, timeout=0.5)
        if any(map(error, msgs)):  # end-of-partition events (onceflow's settings)
            msgs = [m for m in msgs if m.error() is None]
        raw = list(map(value, msgs))
        n += len(raw)
        if not decode:
            continue
        recs = list(map(loads, raw))
        if prod is None:
            continue
        vals = list(map(orjson.dumps, map(project, filter(keep, recs))))
        produce = prod.produce
        for v in vals:  # one partition per batch, as the sink's sticky partitioning
            produce(out_topic, v, None, part, on_error)
        part ^= 1
        rows += len(vals)
        prod.poll(0)
        if time.monotonic() - committed >= 10.0:  # the benchmark's checkpoint interval
            prod.commit_transaction()
            prod.begin_transaction()
            committed = time.monotonic()
    if prod is not None:
        prod.commit_transaction()
    cpu, wall = _cpu() - t0, time.perf_counter() - w0
    c.close()
    if out_topic:
        admin.delete_topics([out_topic])
    if errors:
        raise SystemExit(f"{len(errors)} records were not delivered: {errors[0]}")
    return {"config": config, "events": n, "rows": rows, "cpu_s": cpu, "wall_s": wall,
            "us_per_event": cpu / n * 1e6, "events_per_cpu_s": n / cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _query_functions(query: str) -> tuple[Any, Any]:
    """The filter and the map function queries.py's ``query`` passes to the API (the same
    function objects), for q0-q2 (a filter, then a map)."""
    import queries

    captured: list[Any] = []

    class Probe:
        def filter(self, fn: Any, name: str = "") -> Probe:
            captured.append(fn)
            return self

        def map(self, fn: Any, name: str = "") -> Probe:
            captured.append(fn)
            return self

    getattr(queries, query)(Probe())
    keep, project = captured
    return keep, project


def _peer_rows(path: str | None) -> dict[str, dict[str, float]]:
    """From a peers.py result: events/s per core of onceflow (memory) and Bytewax, per
    query of q0-q2."""
    if not path:
        return {}
    out: dict[str, dict[str, float]] = {}
    for row in json.loads(Path(path).read_text()).get("rows", []):
        if row.get("query") in ("q0", "q1", "q2") and row.get("events_per_cpu_s_median"):
            out.setdefault(row["query"], {})[row["system"]] = row["events_per_cpu_s_median"]
    return out


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# The CPU floor of reading the Nexmark topic in Python", "",
             f"{res['events']:,} records of `{res['topic']}` (JSON, the peers benchmark's "
             f"topic), read from offset 0 in `consume({BATCH})` batches by a fresh process "
             f"per run; {res['runs']} interleaved round(s), medians. Machine: "
             f"{m['cores']} cores, {m['cpu']}, load average at start "
             f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'] or ())}; git "
             f"{res['git']}, {res['date']}.", "",
             "| configuration | CPU µs per event | events/s per core | events/s | "
             "peak RSS MB | runs (µs per event) |", "|---|---:|---:|---:|---:|---|"]
    for c in CONFIGS:
        s = res["summary"][c]
        lines.append(f"| {LABEL[c]} | {s['us_per_event']:.3f} | {s['events_per_cpu_s']:,.0f} "
                     f"| {s['events_per_s']:,.0f} | {s['peak_rss_mb']:.0f} | "
                     + ", ".join(f"{u:.3f}" for u in s["runs_us"]) + " |")
    peers = res.get("peers") or {}
    if peers:
        lines += ["", f"Against `{res['peers_json']}` (per core, medians of that run):", "",
                  "| query | Bytewax | 3x Bytewax needs, CPU µs per event | the plain loop "
                  "here | loop / Bytewax | onceflow's job there | job / Bytewax |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for q in ("q0", "q1", "q2"):
            got = peers.get(q, {})
            bw, job = got.get("bytewax"), got.get("onceflow-memory")
            loop = res["summary"][f"{q}-loop"]
            if not bw:
                continue
            job_s = f"{job:,.0f} | {job / bw:.2f}" if job else "- | -"
            lines.append(f"| {q} | {bw:,.0f} | {1e6 / (3 * bw):.3f} | "
                         f"{loop['events_per_cpu_s']:,.0f} ({loop['us_per_event']:.3f} µs) | "
                         f"{loop['events_per_cpu_s'] / bw:.2f} | {job_s} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topic", required=True)
    ap.add_argument("--events", type=int, required=True, help="records in --topic")
    ap.add_argument("--bootstrap", default="127.0.0.1:39092")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers-json", default=None)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", default=None, choices=CONFIGS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.bootstrap, a.topic, a.events)))
        return 0
    from w1 import machine_info

    machine = machine_info()  # at the start (its load average), with the git head (w1.py)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for r in range(a.runs):
        order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
        for c in order:
            out = subprocess.run([sys.executable, __file__, "--one", c, "--topic", a.topic,
                                  "--events", str(a.events), "--bootstrap", a.bootstrap],
                                 capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            runs[c].append(got)
            print(f"round {r + 1} {c}: {got['us_per_event']:.3f} us/event, "
                  f"{got['peak_rss_mb']:.0f} MB", flush=True)
    summary = {c: {"us_per_event": statistics.median(x["us_per_event"] for x in rs),
                   "events_per_cpu_s": statistics.median(x["events_per_cpu_s"] for x in rs),
                   "events_per_s": statistics.median(x["events"] / x["wall_s"] for x in rs),
                   "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
                   "runs_us": [x["us_per_event"] for x in rs]}
               for c, rs in runs.items()}
    res = {"topic": a.topic, "events": a.events, "runs": a.runs, "summary": summary,
           "raw": runs, "machine": machine, "git": machine.get("git_head"),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "peers_json": a.peers_json, "peers": _peer_rows(a.peers_json)}
    text = render(res)
    print(text)
    if not a.no_save:
        (RESULTS / "nexmark-read-floor.json").write_text(json.dumps(res, indent=1) + "\n")
        (RESULTS / "nexmark-read-floor.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
