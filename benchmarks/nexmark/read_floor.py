"""The CPU floor of reading a Nexmark topic in Python: what consuming its records with
confluent-kafka and decoding them with orjson costs with no engine at all (issue 14's q2).

    .venv/bin/python benchmarks/nexmark/read_floor.py --topic TOPIC --events N [--runs 3] \
        [--peers-json benchmarks/results/nexmark-peers-5m-q012.json]

Every stream processor here that reads JSON from Kafka in Python (onceflow, Bytewax, Quix
Streams) pays at least this per event: librdkafka's fetch threads, one confluent-kafka
``Message`` per record, and ``orjson.loads`` of its value. Each run is a fresh process
that assigns every partition of ``TOPIC`` from offset 0 and reads ``N`` records in
``consume(1024)`` batches (the batch size onceflow's source reads), keeping no record.
Configurations, in interleaved rounds:

* ``consume``: consume and ``Message.value``, no decoding, librdkafka's defaults;
* ``decode``: plus ``orjson.loads`` of every value, librdkafka's defaults;
* ``decode-onceflow``: the same with ``KafkaSource``'s consumer settings
  (``reader_config``: read_committed, end-of-partition events, its fetch backoff and
  prefetch limit);
* ``q2-onceflow``: that, plus q2's predicate (queries.py) over every decoded event: the
  least any engine's q2 can cost here, before it has timestamps, watermarks, checkpoints or
  a sink.

CPU is the process's (every thread) from before the consumer is made to the last record,
so a connection's set-up is in it, as it is in a job's. ``--peers-json``: a peers.py
result; the table then says what 3x that run's Bytewax per core would leave per event.
Results: benchmarks/results/nexmark-read-floor.json and .md (``--no-save``: print only).
"""

from __future__ import annotations

import argparse
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
CONFIGS = ["consume", "decode", "decode-onceflow", "q2-onceflow"]
LABEL = {"consume": "consume only (librdkafka defaults)",
         "decode": "consume + orjson.loads (librdkafka defaults)",
         "decode-onceflow": "consume + orjson.loads (onceflow's reader settings)",
         "q2-onceflow": "the same + q2's predicate on every event"}
BATCH = 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(config: str, bootstrap: str, topic: str, events: int) -> dict[str, Any]:
    """One run in this process: read ``events`` records of ``topic`` from the start."""
    import confluent_kafka as ck
    import orjson

    t0, w0 = _cpu(), time.perf_counter()
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "enable.auto.commit": False,
                            "group.id": f"read-floor-{uuid.uuid4().hex[:8]}"}
    if config in ("decode-onceflow", "q2-onceflow"):
        from onceflow.connectors.kafka.source import reader_config
        from onceflow.kafka import KafkaSource

        conf = reader_config(KafkaSource(bootstrap, topic, group_id=conf["group.id"]))
    c = ck.Consumer(conf)
    meta = c.list_topics(topic, timeout=30).topics[topic]
    c.assign([ck.TopicPartition(topic, p, 0) for p in sorted(meta.partitions)])
    decode = config != "consume"
    pred = _q2_predicate() if config == "q2-onceflow" else None
    value, error = ck.Message.value, ck.Message.error
    n = 0
    deadline = time.monotonic() + 600
    while n < events:
        if time.monotonic() > deadline:
            raise SystemExit(f"read only {n} of {events} records of {topic} in 600 s")
        msgs = c.consume(num_messages=BATCH, timeout=0.5)
        if any(map(error, msgs)):  # end-of-partition events (onceflow's settings)
            msgs = [m for m in msgs if m.error() is None]
        raw = list(map(value, msgs))
        if decode:
            out = list(map(orjson.loads, raw))
            if pred is not None:
                out = list(filter(pred, out))
            del out
        n += len(raw)
    cpu, wall = _cpu() - t0, time.perf_counter() - w0
    c.close()
    return {"config": config, "events": n, "cpu_s": cpu, "wall_s": wall,
            "us_per_event": cpu / n * 1e6, "events_per_cpu_s": n / cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _q2_predicate() -> Any:
    """q2's filter, as queries.q2 passes it to ``filter`` (the same function object)."""
    import queries

    captured: list[Any] = []

    class Probe:
        def filter(self, fn: Any, name: str = "") -> Probe:
            captured.append(fn)
            return self

        def map(self, fn: Any, name: str = "") -> Probe:
            return self

    queries.q2(Probe())  # type: ignore[arg-type]
    return captured[0]


def _peer_bound(path: str | None) -> dict[str, Any] | None:
    """From a peers.py result: Bytewax's q2 events/s per core, and the CPU per event that
    3x it leaves onceflow."""
    if not path:
        return None
    res = json.loads(Path(path).read_text())
    for row in res.get("rows", []):
        if row.get("query") == "q2" and row.get("system") == "bytewax":
            per_core = row.get("events_per_cpu_s_median")
            if per_core:
                return {"from": path, "bytewax_q2_per_core": per_core,
                        "us_per_event_for_3x": 1e6 / (3 * per_core)}
    return {"from": path, "bytewax_q2_per_core": None, "us_per_event_for_3x": None}


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
    b = res.get("peer_bound")
    if b and b.get("us_per_event_for_3x"):
        floor = res["summary"]["decode-onceflow"]["us_per_event"]
        q2 = res["summary"]["q2-onceflow"]["us_per_event"]
        lines += ["", f"3x Bytewax's q2 per core in `{b['from']}` "
                  f"({b['bytewax_q2_per_core']:,.0f} events/s per core) leaves "
                  f"{b['us_per_event_for_3x']:.3f} CPU-µs per event for the whole job; "
                  f"reading and decoding alone take {floor:.3f} here "
                  f"({floor / b['us_per_event_for_3x']:.0%} of it), with q2's predicate "
                  f"{q2:.3f} ({q2 / b['us_per_event_for_3x']:.0%})."]
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
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    res = {"topic": a.topic, "events": a.events, "runs": a.runs, "summary": summary,
           "raw": runs, "machine": machine_info(), "git": git,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "peer_bound": _peer_bound(a.peers_json)}
    text = render(res)
    print(text)
    if not a.no_save:
        (RESULTS / "nexmark-read-floor.json").write_text(json.dumps(res, indent=1) + "\n")
        (RESULTS / "nexmark-read-floor.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
