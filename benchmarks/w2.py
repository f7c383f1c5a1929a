"""W2 on this machine (``make bench-w2``): Kafka → parse → key by user → running total →
Kafka, against the plain client loop that is its ceiling (/work/shared/bench/WORKLOADS.md).

Throughput, interleaved rounds over one pre-filled input topic (4 partitions, N JSON
records of ~100 bytes); each figure is N / (time a read_committed reader has seen all N
results - process start). The timed reader counts committed records from Fetch responses
without parsing them (compare/committed_count.py: a consumer's 1-2 us of CPU per record
took a core from the job on this 2-core machine, in bursts after every exactly-once
commit); after the job has exited a read_committed consumer checks every id:

* ``plain``: one process, the same client library, no framework: consume (all partitions,
  read_committed), parse with orjson, sum per user in a dict, produce with an idempotent
  producer, flush;
* ``plain-tuned``: the same loop given the one consumer setting onceflow's KafkaSource
  changes from the client's defaults (``fetch.queue.backoff.ms=10``, see docs/kafka.md):
  the client's own speed, a stricter ceiling than ``plain``. The issue's targets are
  defined on ``plain`` (the client's defaults); both ratios are reported;
* onceflow exactly-once and at-least-once, parallelism 1 and 2, checkpoints every 1 s.

Latency: input appended at a fixed rate (20,000 records/s) while the job runs, checkpoints
every 1 s; per record, the time from its append to the input topic (the broker's
LogAppendTime) until a read_committed reader sees its result (p50, p99), exactly-once
against at-least-once.

Results: benchmarks/results/w2.json and w2.md (the table in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "compare")]
RESULTS = HERE / "results"
CKPT_INTERVAL = 1.0
OUT_PARTITIONS = 4
SETTLE_S = 1.0


# --- the programs measured (run as subprocesses: --role ...) ------------------------------
def role_plain(a: argparse.Namespace) -> None:
    import orjson
    from confluent_kafka import Consumer, Producer, TopicPartition

    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": f"w2-plain-{uuid.uuid4()}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest",
                  **json.loads(a.consumer_config)})
    md = c.list_topics(a.input, timeout=30).topics[a.input]
    # real start offsets, as onceflow's source resolves them: a logical "beginning" costs
    # librdkafka about 0.5 s before its first fetch, which would flatter onceflow
    c.assign([TopicPartition(a.input, p, c.get_watermark_offsets(
        TopicPartition(a.input, p), timeout=30)[0]) for p in md.partitions])
    p = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True,
                  "linger.ms": 5, "delivery.report.only.error": True})
    totals: dict[str, int] = {}
    eof: set[int] = set()
    seen = 0
    dumps, loads = orjson.dumps, orjson.loads
    while len(eof) < len(md.partitions):
        for m in c.consume(10000, 0.5):
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    eof.add(m.partition())
                continue
            r = loads(m.value())
            u = r["user"]
            t = totals[u] = totals.get(u, 0) + r["amount"]
            out = dumps({"user": u, "total": t, "id": r["id"]})
            while True:
                try:
                    p.produce(a.output, out, u.encode())
                    break
                except BufferError:
                    p.poll(0.05)
            seen += 1
        p.poll(0)
    assert p.flush(60) == 0
    c.close()
    print("RESULT " + json.dumps({"consumed": seen}), flush=True)


def role_job(a: argparse.Namespace) -> None:
    import onceflow as of
    from onceflow.kafka import KafkaSink, KafkaSource

    flow = of.Flow(f"w2-{uuid.uuid4().hex[:6]}", parallelism=a.parallelism)
    flow.enable_checkpointing(CKPT_INTERVAL, os.path.join(a.workdir, "ckpt"))
    (flow.source(KafkaSource(a.bootstrap, [a.input], deserializer="json", value_only=True,
                             stop_at=None if a.unbounded else "end",
                             consumer_config=json.loads(a.consumer_config)), name="kafka-in")
         .map(lambda r: {"user": r["user"], "total": r["amount"], "id": r["id"]}, name="parse")
         .key_by(lambda r: r["user"])
         .reduce(lambda acc, r: {"user": r["user"], "total": acc["total"] + r["total"],
                                 "id": r["id"]}, name="total")
         .sink(KafkaSink(a.bootstrap, a.output, guarantee=a.guarantee,
                         key=lambda r: r["user"], key_serializer="str", serializer="json",
                         producer_config=json.loads(a.producer_config)),
               name="kafka-out"))
    result = flow.run()
    print("RESULT " + json.dumps({"checkpoints": len(result.completed_checkpoints),
                                  "processing_s_engine": result.processing_seconds}),
          flush=True)


# --- the harness ---------------------------------------------------------------------------
def _cmd(role: str, bootstrap: str, inp: str, out: str, workdir: str, *more: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, "--bootstrap",
            bootstrap, "--input", inp, "--output", out, "--workdir", workdir, *more]


def throughput_run(cmp: Any, name: str, role_args: list[str], bootstrap: str, in_topic: str,
                   n: int, timeout: float, trace: str | None = None) -> dict[str, Any]:
    """One measured run; ``trace``: a file the job's processes write their timeline to
    (``ONCEFLOW_TRACE``), to which the process start, its exit and the moment the reader had
    every result are added.

    Two readers: the timed one counts committed results from the Fetch responses' record
    batch headers (committed_count.py: almost no CPU, so it does not take a core from the
    job on this 2-core machine); once the job has exited, a read_committed consumer reads
    the topic again and checks every id (none lost, none twice)."""
    import shutil
    import tempfile

    from committed_count import CommittedCounter
    tmp = tempfile.mkdtemp(prefix=f"w2-{name}-")
    out_topic = f"w2-out-{name}-{uuid.uuid4().hex[:8]}"
    env = None
    if trace:
        env = {**os.environ, "ONCEFLOW_TRACE": trace}
    try:
        cmp.create_topic(bootstrap, out_topic, OUT_PARTITIONS)
        w = CommittedCounter(bootstrap, out_topic, OUT_PARTITIONS, n, timeout)
        w.start()
        cpu0 = _children_cpu()
        rec = cmp.run_proc(_cmd(role_args[0], bootstrap, in_topic, out_topic, tmp,
                                *role_args[1:]), timeout, env=env, until=w)
        t_exit = time.time()
        cpu = _children_cpu() - cpu0  # the process and its workers, client threads included
        w.stop()
        check = cmp.OutputWatcher(bootstrap, out_topic, n, timeout)
        check.stop_process, check.quiet_after = False, 1.0
        check.start()
        check.thread.join(timeout=timeout)
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(json.dumps({"t": rec["t_start"], "ev": "process_start"}) + "\n")
                f.write(json.dumps({"t": t_exit, "ev": "process_exited"}) + "\n")
                if w.t_done is not None:
                    f.write(json.dumps({"t": w.t_done, "ev": "reader_saw_all"}) + "\n")
                for t, seen in w.progress:
                    f.write(json.dumps({"t": t, "ev": "reader_seen", "seen": seen}) + "\n")
        problems = check.check()
        if w.error is not None:
            problems.append(f"the counting reader failed: {w.error!r}")
        if w.t_done is None:
            problems.append(f"never counted {n} results (counted {w.count}); rc "
                            f"{rec['returncode']}")
        rps = n / (w.t_done - rec["t_start"]) if w.t_done is not None else None
        # > 0: the reader had the last result this long after the process exited (its
        # commits were done by then); <= 0: it had them first and the process was stopped
        after_exit = w.t_done - (rec["t_start"] + rec["wall_s"]) if w.t_done else None
        return {"config": name, "records": n, "records_per_s": rps, "wall_s": rec["wall_s"],
                "seen_all_after_exit_s": after_exit,
                "cpu_s": cpu, "records_per_cpu_s": n / cpu if cpu > 0 else None,
                "tree_peak_rss_mb": rec["tree_peak_rss_mb"], "valid": not problems,
                "problems": problems, "checkpoints": rec.get("checkpoints")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        cmp.delete_topics(bootstrap, out_topic)


def timeline(path: str, every: bool = False) -> list[str]:
    """A trace file (``--trace``) as lines ``+seconds-since-process-start event fields``:
    the control events of the job (the barriers of the final checkpoint only, unless
    ``every``)."""
    from onceflow import _trace
    evs = _trace.read(path)
    t0 = next((e["t"] for e in evs if e["ev"] == "process_start"), evs[0]["t"] if evs else 0)
    finals = {e["checkpoint"] for e in evs if e["ev"] == "trigger" and e.get("final")}
    out = []
    for e in evs:
        if e["ev"] == "barrier" and not every and e["checkpoint"] not in finals:
            continue
        if e["ev"] == "worker_msg" and not every and e.get("msg") not in ("Trigger", "Complete"):
            continue
        if e["ev"] == "reader_seen" and not every:
            continue
        rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "ev"))
        out.append(f"{e['t'] - t0:+8.3f} {e['ev']} {rest}")
    return out


def trace_summary(path: str) -> list[str]:
    """The waits of one traced run, in seconds since process start: when the sources read
    their first and last records, the final checkpoint's trigger and completion, the exit
    and the last result seen; per subtask the barrier alignment and the sinks' pre-commit
    time in all."""
    from onceflow import _trace
    evs = _trace.read(path)
    t0 = next((e["t"] for e in evs if e["ev"] == "process_start"), evs[0]["t"] if evs else 0)

    def at(ev: str, **match: Any) -> list[str]:
        return [f"{e['t'] - t0:.3f}" for e in evs if e["ev"] == ev
                and all(e.get(k) == v for k, v in match.items())]

    out = [f"sources first {at('source_first')} last {at('source_exhausted')}; final "
           f"checkpoint triggered {at('trigger', final=True)} complete "
           f"{at('complete', final=True)}; exit {at('process_exited')}; reader had all "
           f"{at('reader_saw_all')}"]
    align: dict[tuple[str, int], list[float]] = {}
    for e in evs:
        if e["ev"] == "aligned" and e["aligned_s"] > 0:
            align.setdefault((e["task"], e["subtask"]), []).append(e["aligned_s"])
    for (task, sub), xs in sorted(align.items()):
        out.append(f"{task}[{sub}]: aligned {len(xs)} times, {sum(xs):.3f} s in all, "
                   f"longest {max(xs):.3f} s")
    started: dict[int, float] = {}
    pre: dict[int, float] = {}
    for e in evs:
        if e["ev"] == "sink_pre_commit":
            started[e["pid"]] = e["t"]
        elif e["ev"] == "sink_pre_committed" and e["pid"] in started:
            pre[e["pid"]] = pre.get(e["pid"], 0.0) + e["t"] - started.pop(e["pid"])
    for pid, secs in sorted(pre.items()):
        out.append(f"sink of worker pid {pid}: pre-commits {secs:.3f} s in all")
    return out


def _children_cpu() -> float:
    """User + system CPU seconds of this process's ended (and reaped) descendants."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class RateProducer:
    """Appends W2 records at ``rate``/s; remembers each id's append time: the broker's
    log-append timestamp (the input topic uses LogAppendTime), which its delivery report
    carries, so a report handled late on a busy machine does not shift it."""

    def __init__(self, cmp: Any, bootstrap: str, topic: str, rate: float,
                 seconds: float) -> None:
        self.cmp = cmp
        self.bootstrap, self.topic, self.rate, self.seconds = bootstrap, topic, rate, seconds
        self.appended: dict[int, float] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        from confluent_kafka import Producer
        value = self.cmp.w2_value
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 1,
                      "enable.idempotence": True})

        def done(err: Any, msg: Any) -> None:
            if err is None:
                ts_type, ts = msg.timestamp()
                # TIMESTAMP_LOG_APPEND_TIME (2): the broker's clock, the same machine's
                self.appended[int(msg.key())] = ts / 1000.0 if ts_type == 2 else time.time()

        t0 = time.time()
        i = 0
        while time.time() - t0 < self.seconds:
            due = int((time.time() - t0) * self.rate)
            while i < due:
                p.produce(self.topic, value(i), str(i).encode(), on_delivery=done)
                i += 1
            p.poll(0.002)
        self.sent = i
        p.flush(60)


def latency_run(cmp: Any, guarantee: str, bootstrap: str, rate: float, seconds: float,
                warmup: float, consumer_config: str = "{}") -> dict[str, Any]:
    import shutil
    import tempfile

    from confluent_kafka import Consumer
    tmp = tempfile.mkdtemp(prefix=f"w2-lat-{guarantee}-")
    run = uuid.uuid4().hex[:8]
    in_topic, out_topic = f"w2-lat-in-{run}", f"w2-lat-out-{run}"
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics(
        [NewTopic(in_topic, 4, 1, config={"message.timestamp.type": "LogAppendTime"})])
    for f in fs.values():
        f.result(30)
    del admin
    cmp.create_topic(bootstrap, out_topic)
    seen: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w2-lat-{uuid.uuid4()}",
                      "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, **cmp.READER_CONFIG})
        c.subscribe([out_topic])
        while not stop.is_set():
            for m in c.consume(10000, 0.05):
                if not m.error():
                    seen.setdefault(json.loads(m.value())["id"], time.time())
        c.close()

    wt = threading.Thread(target=watch, daemon=True)
    wt.start()
    proc = subprocess.Popen(_cmd("job", bootstrap, in_topic, out_topic, tmp, "--guarantee",
                                 guarantee, "--unbounded", "--consumer-config", consumer_config),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        time.sleep(4.0)  # the job is up (its source polls the empty topic)
        prod = RateProducer(cmp, bootstrap, in_topic, rate, seconds)
        prod.thread.start()
        prod.thread.join()
        deadline = time.time() + 20
        while time.time() < deadline and len(seen) < prod.sent:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        stop.set()
        wt.join(10)
        shutil.rmtree(tmp, ignore_errors=True)
        cmp.delete_topics(bootstrap, in_topic, out_topic)
    t_first = min(prod.appended.values()) if prod.appended else 0.0
    lat = sorted(seen[i] - t for i, t in prod.appended.items()
                 if i in seen and t - t_first >= warmup)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 100 else []
    return {"guarantee": guarantee, "rate": rate, "seconds": seconds, "sent": prod.sent,
            "seen": len(seen), "measured": len(lat),
            "p50_s": q[49] if q else None, "p99_s": q[98] if q else None,
            "max_s": lat[-1] if lat else None}


def render(res: dict[str, Any]) -> str:
    lines = [f"# W2 on this machine ({res['date']})", "",
             f"{res['records']:,} records, {res['rounds']} interleaved rounds, median; "
             "records/s from process start until a read_committed reader has every result; "
             f"checkpoints every {CKPT_INTERVAL:g} s. Command: `make bench-w2`. "
             f"{res.get('cpus')} CPUs, load average (1 min) "
             + " → ".join(f"{x:.1f}" for x in res.get("loadavg_1min", [])) + " (start → end): "
             "other sessions' work shares the cores.", "",
             "| configuration | records/s (median) | runs | x plain loop | records per CPU-s "
             "(median) | x plain loop | valid |",
             "|---|---:|---|---:|---:|---:|---|"]
    plain = res["summary"].get("plain", {}).get("median")
    plain_cpu = res["summary"].get("plain", {}).get("per_cpu_s_median")
    for name, s in res["summary"].items():
        ratio = f"{s['median'] / plain:.2f}" if plain and s["median"] else "-"
        runs = ", ".join(f"{r:,.0f}" for r in s["runs"])
        pc = s.get("per_cpu_s_median") or 0.0
        cratio = f"{pc / plain_cpu:.2f}" if plain_cpu and pc else "-"
        lines.append(f"| {name} | {s['median']:,.0f} | {runs} | {ratio} | {pc:,.0f} | "
                     f"{cratio} | {s['valid']} |")
    lines += ["", "Records per CPU-s: N / (user + system CPU seconds of the measured process "
              "and its workers, the Kafka client's threads included, until it exited); "
              "steadier than records/s on this shared machine, and not what the targets "
              "are defined on."]
    lines += ["", f"Latency at {res['latency_rate']:,.0f} records/s for "
              f"{res['latency_seconds']:g} s (first {res['latency_warmup']:g} s not counted):",
              "", "| guarantee | p50 s | p99 s | max s | results seen / appended |",
              "|---|---:|---:|---:|---|"]
    for r in res["latency"]:
        f = (lambda x: f"{x:.3f}" if x is not None else "-")
        lines.append(f"| {r['guarantee']} | {f(r['p50_s'])} | {f(r['p99_s'])} | "
                     f"{f(r['max_s'])} | {r['seen']:,} / {r['sent']:,} |")
    lines += ["", "Targets (issue 17):", ""]
    for t in res["targets"]:
        verdict = "reported" if t["met"] is None else "met" if t["met"] else "MISSED"
        lines.append(f"- {t['name']}: {t['value']} → {verdict}")
    return "\n".join(lines) + "\n"


def targets(summary: dict[str, Any], latency: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def med(k: str) -> float:
        return float(summary.get(k, {}).get("median") or 0.0)

    out = []
    plain, eo1, alo1, eo2 = med("plain"), med("eo-p1"), med("alo-p1"), med("eo-p2")
    if plain:
        out.append({"name": "exactly-once p1 ≥ 90 % of the plain loop",
                    "value": f"{eo1 / plain:.0%}", "met": eo1 >= 0.9 * plain})
    tuned = med("plain-tuned")
    if tuned:  # reported, not an issue target: the ceiling with onceflow's fetch setting
        out.append({"name": "(reported) exactly-once p1 against plain-tuned, the loop with "
                            "onceflow's fetch setting", "value": f"{eo1 / tuned:.0%}",
                    "met": None})
    if alo1:
        out.append({"name": "exactly-once at most 5 % slower than at-least-once (p1)",
                    "value": f"{1 - eo1 / alo1:+.1%} slower", "met": eo1 >= 0.95 * alo1})
    if eo1:
        out.append({"name": "exactly-once p2 not slower than p1",
                    "value": f"{eo2 / eo1:.2f}x", "met": eo2 >= eo1})
    for r in latency:
        if r["guarantee"] == "exactly_once" and r["p99_s"] is not None:
            out.append({"name": f"exactly-once p99 latency ≤ {CKPT_INTERVAL + 0.5:g} s",
                        "value": f"{r['p99_s']:.3f} s",
                        "met": r["p99_s"] <= CKPT_INTERVAL + 0.5})
    return out


def precompile() -> None:
    """Write the bytecode of onceflow and the Kafka client's Python modules, as ``pip
    install`` does. This machine sets PYTHONDONTWRITEBYTECODE=1, so without it every
    measured process would compile onceflow's ~100 modules from source at start-up
    (~0.3 s), a cost no installed copy pays; the plain loop's client modules get the same."""
    import compileall
    import importlib.util

    dirs = [HERE.parent / "onceflow"]
    for mod in ("confluent_kafka", "orjson"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(d) for d in spec.submodule_search_locations)
    for d in dirs:
        compileall.compile_dir(str(d), quiet=1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["plain", "job"])
    ap.add_argument("--bootstrap")
    ap.add_argument("--input")
    ap.add_argument("--output")
    ap.add_argument("--workdir")
    ap.add_argument("--guarantee", default="exactly_once")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--unbounded", action="store_true")
    ap.add_argument("--records", type=int, default=int(os.environ.get("W2_RECORDS", "1000000")))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("W2_ROUNDS", "5")))
    ap.add_argument("--latency-rate", type=float, default=20_000)
    ap.add_argument("--latency-seconds", type=float, default=15)
    ap.add_argument("--latency-warmup", type=float, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=str(RESULTS / "w2.json"))
    ap.add_argument("--configs", default="plain,plain-tuned,eo-p1,alo-p1,eo-p2,alo-p2",
                    help="comma-separated subset of the configurations to run")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    ap.add_argument("--consumer-config", default="{}", metavar="JSON",
                    help="extra settings of the input consumer, the same for the plain loop "
                         "and onceflow's KafkaSource (e.g. '{\"fetch.queue.backoff.ms\": "
                         "10}'); default: none, the client's defaults")
    ap.add_argument("--producer-config", default="{}", metavar="JSON",
                    help="extra settings of onceflow's KafkaSink producers (its "
                         "producer_config); default: none")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="also run every onceflow configuration as CONFIG-NAME with these "
                         "producer settings (an A/B in the same interleaved rounds)")
    ap.add_argument("--trace", metavar="DIR",
                    help="write each run's timeline (ONCEFLOW_TRACE) to DIR/<config>-<round>"
                         ".jsonl and print it (a diagnosis aid: not for the figures)")
    a = ap.parse_args()
    if a.role == "plain":
        role_plain(a)
        return 0
    if a.role == "job":
        role_job(a)
        return 0
    import run as cmp  # benchmarks/compare/run.py: topic, prefill, watcher, process runner
    precompile()
    load_start = os.getloadavg()[0]
    bootstrap = cmp.kafka_bootstrap()
    in_topic = f"w2-in-{uuid.uuid4().hex[:8]}"
    print(f"[w2] prefilling {in_topic} with {a.records:,} records ...", flush=True)
    cmp.prefill(bootstrap, in_topic, a.records)
    cc = ["--consumer-config", a.consumer_config]
    from onceflow.connectors.kafka.source import FETCH_QUEUE_BACKOFF_MS

    tuned = json.dumps({"fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                        **json.loads(a.consumer_config)})
    configs = {"plain": ["plain", *cc],
               "plain-tuned": ["plain", "--consumer-config", tuned],
               "eo-p1": ["job", "--guarantee", "exactly_once", "--parallelism", "1", *cc],
               "alo-p1": ["job", "--guarantee", "at_least_once", "--parallelism", "1", *cc],
               "eo-p2": ["job", "--guarantee", "exactly_once", "--parallelism", "2", *cc],
               "alo-p2": ["job", "--guarantee", "at_least_once", "--parallelism", "2", *cc]}
    chosen = {k: v for k, v in configs.items() if k in a.configs.split(",")}
    configs = {k: v if v[0] == "plain" else [*v, "--producer-config", a.producer_config]
               for k, v in chosen.items()}
    for variant in a.variant:  # NAME=JSON: each onceflow configuration again, with those
        vname, _, pc = variant.partition("=")  # producer settings (an A/B in one run)
        json.loads(pc)  # a bad JSON fails here, before any run
        configs.update({f"{k}-{vname}": [*v, "--producer-config", pc]
                        for k, v in chosen.items() if v[0] == "job"})
    runs: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        # odd rounds run the configurations in the opposite order, so that none always
        # runs in the same place: in a fixed order exactly-once p1 always ran right after
        # plain-tuned and at-least-once right after it, and with the order reversed the
        # later of the two was the faster one either way (02:34 UTC, 5 rounds); and the
        # broker gets a second between runs
        order = list(configs.items())
        for name, args in order[::-1] if rnd % 2 else order:
            time.sleep(SETTLE_S)
            trace = None
            if a.trace:
                os.makedirs(a.trace, exist_ok=True)
                trace = os.path.join(a.trace, f"{name}-{rnd}.jsonl")
            r = throughput_run(cmp, name, args, bootstrap, in_topic, a.records, a.timeout,
                               trace)
            r["round"] = rnd
            if trace and os.path.exists(trace):
                print("\n".join(timeline(trace) + trace_summary(trace)), flush=True)
            runs.append(r)
            print(f"[w2] round {rnd} {name}: {r['records_per_s'] or 0:,.0f} records/s "
                  f"valid={r['valid']} {r['problems'][:2]}", flush=True)
    cmp.delete_topics(bootstrap, in_topic)  # this invocation's own (random-named) input
    summary: dict[str, Any] = {}
    for name in configs:
        vals = [r["records_per_s"] for r in runs if r["config"] == name and r["records_per_s"]]
        per_cpu = [r["records_per_cpu_s"] for r in runs
                   if r["config"] == name and r.get("records_per_cpu_s")]
        summary[name] = {"median": statistics.median(vals) if vals else 0.0, "runs": vals,
                         "valid": all(r["valid"] for r in runs if r["config"] == name),
                         "per_cpu_s_median": statistics.median(per_cpu) if per_cpu else 0.0}
    latency = []
    for g in () if a.no_latency else ("exactly_once", "at_least_once"):
        lr = latency_run(cmp, g, bootstrap, a.latency_rate, a.latency_seconds,
                         a.latency_warmup, a.consumer_config)
        latency.append(lr)
        print(f"[w2] latency {g}: {lr}", flush=True)
    res = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "records": a.records, "rounds": a.rounds, "input_topic": in_topic,
           "runs": runs, "summary": summary, "latency": latency,
           "latency_rate": a.latency_rate, "latency_seconds": a.latency_seconds,
           "latency_warmup": a.latency_warmup, "targets": targets(summary, latency),
           "consumer_config": json.loads(a.consumer_config),
           "cpus": os.cpu_count(), "loadavg_1min": [load_start, os.getloadavg()[0]]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
