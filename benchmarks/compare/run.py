"""Compare onceflow with PyFlink, Bytewax, Quix Streams and a plain Python loop on the
standard workloads W1 and W2 (/work/shared/bench/WORKLOADS.md). See README.md here.

    .venv/bin/python benchmarks/compare/run.py                       # everything, 3 runs
    .venv/bin/python benchmarks/compare/run.py --workloads w1 --peers onceflow,bytewax
    .venv/bin/python benchmarks/compare/run.py --w1-pyflink-records 200000   # PyFlink W1 at a smaller N

Run it with onceflow's venv (/work/main/.venv: onceflow, confluent-kafka, psutil). Each
peer gets its own venv under benchmarks/compare/.venvs/<peer>, made on first use. Every
run is a fresh subprocess, runs are interleaved (run 1 of every (workload, peer), then
run 2, ...). Writes benchmarks/results/compare.{json,md,png}.
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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from w1 import sample_tree_rss

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VENVS = HERE / ".venvs"
JARS = HERE / "jars"
MAIN_PY = sys.executable

# pinned versions ---------------------------------------------------------------------------
PYFLINK = "2.2.1"  # newest apache-flink whose minor (2.2) has a Kafka connector release
KAFKA_CONNECTOR = "5.0.0-2.2"  # org.apache.flink:flink-sql-connector-kafka (Maven Central)
PEER_PACKAGES = {
    "bytewax": ["bytewax[kafka]==0.21.1", "confluent-kafka==2.16.1",  # kafka: Nexmark
                "orjson==3.13.0"],  # Nexmark's JSON, as onceflow's (and Quix's) orjson
    "quix": ["quixstreams==3.28.1"],
    "pyflink": [f"apache-flink=={PYFLINK}"],
    "plot": ["matplotlib"],
}

GUARANTEE = {
    ("w1", "onceflow"): "exactly-once checkpoints every 1 s (memory backend)",
    ("w1", "plain"): "none (no framework)",
    ("w1", "bytewax"): "recovery on, snapshot every 1 s (state exactly-once; sinks at-least-once)",
    ("w1", "pyflink"): "EXACTLY_ONCE checkpoints every 1 s (hashmap backend), Python thread mode",
    ("w2", "onceflow"): "exactly-once (Kafka transactions committed on checkpoint), 1 s",
    ("w2", "quix"): 'processing_guarantee="exactly-once", commit_interval 1 s',
    ("w2", "pyflink"): "KafkaSink DeliveryGuarantee.EXACTLY_ONCE, checkpoints every 1 s, Python thread mode",
}
SHORT = {
    ("w1", "onceflow"): "exactly-once ckpt 1 s", ("w1", "plain"): "no guarantee",
    ("w1", "bytewax"): "recovery 1 s\n(at-least-once out)",
    ("w1", "pyflink"): "EXACTLY_ONCE ckpt 1 s", ("w2", "onceflow"): "exactly-once",
    ("w2", "quix"): "exactly-once", ("w2", "pyflink"): "EXACTLY_ONCE sink",
}
LABEL = {"onceflow": "onceflow", "plain": "plain Python loop", "bytewax": "Bytewax 0.21.1",
         "quix": "Quix Streams 3.28.1", "pyflink": f"PyFlink {PYFLINK}"}
W1_PEERS = ["plain", "onceflow", "bytewax", "pyflink"]
W2_PEERS = ["onceflow", "quix", "pyflink"]


# environments ------------------------------------------------------------------------------
def venv_python(peer: str) -> str:
    py = VENVS / peer / "bin" / "python"
    if not py.exists():
        print(f"[setup] creating venv for {peer} ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(VENVS / peer)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES[peer]], check=True)
    return str(py)


def connector_jar() -> Path:
    jar = JARS / f"flink-sql-connector-kafka-{KAFKA_CONNECTOR}.jar"
    if not jar.exists():
        JARS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mvn", "-q", "dependency:copy",
                        f"-Dartifact=org.apache.flink:flink-sql-connector-kafka:{KAFKA_CONNECTOR}",
                        f"-DoutputDirectory={JARS}"], check=True, cwd=str(JARS))
    return jar


def peer_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    try:
        import onceflow
        out["onceflow"] = getattr(onceflow, "__version__", "editable")
    except ImportError:
        pass
    for peer in ("bytewax", "quix", "pyflink"):
        py = VENVS / peer / "bin" / "python"
        if py.exists():
            r = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version("
                                f"'{ {'bytewax': 'bytewax', 'quix': 'quixstreams', 'pyflink': 'apache-flink'}[peer]}'))"],
                               capture_output=True, text=True)
            out[peer] = r.stdout.strip()
    try:
        r = subprocess.run(["java", "-version"], capture_output=True, text=True)
        out["java"] = r.stderr.splitlines()[0]
    except OSError:
        pass
    out["flink_kafka_connector"] = KAFKA_CONNECTOR
    return out


# measuring one run -------------------------------------------------------------------------
def run_proc(cmd: list[str], timeout: float, env: dict | None = None,
             until: Any = None) -> dict:
    """Run cmd, sample its tree's RSS; returns wall time, peak RSS, the RESULT line.
    ``until`` (W2): an object with .done (threading.Event) and .stop_process: when set,
    the process is asked to stop (SIGTERM) once done fires."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(HERE), start_new_session=True)
    stop, peak = threading.Event(), [0.0]
    th = threading.Thread(target=sample_tree_rss, args=(proc.pid, stop, peak), daemon=True)
    th.start()
    if until is not None and until.stop_process:
        deadline = t0 + timeout
        while proc.poll() is None and not until.done.is_set() and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.terminate()
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout - (time.time() - t0)))
        timed_out = False
    except subprocess.TimeoutExpired:
        import signal
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    wall = time.time() - t0
    stop.set()
    th.join()
    res: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
        elif line.startswith("{") and '"records_per_s"' in line:
            res = json.loads(line)
    rec = {"wall_s": wall, "t_start": t0, "tree_peak_rss_mb": peak[0], "returncode": proc.returncode,
           "timed_out": timed_out, **res}
    if not res and until is None:
        rec["valid"] = False
        rec["problems"] = [f"no result (rc {proc.returncode}, timed out {timed_out}): "
                           + (err or "")[-1500:]]
    return rec


# W1 ---------------------------------------------------------------------------------------
def run_w1(peer: str, n: int, timeout: float) -> dict:
    tmp = tempfile.mkdtemp(prefix=f"cmp-w1-{peer}-")
    try:
        if peer == "plain":
            cmd = [MAIN_PY, str(ROOT / "benchmarks" / "w1.py"), "--one", "--plain",
                   "--records", str(n)]
        elif peer == "onceflow":
            cmd = [MAIN_PY, str(ROOT / "benchmarks" / "w1.py"), "--one", "--parallelism", "1",
                   "--checkpoints", "on", "--records", str(n)]
        elif peer == "bytewax":
            cmd = [venv_python("bytewax"), str(HERE / "w1_bytewax.py"), "--records", str(n),
                   "--workdir", tmp]
        elif peer == "pyflink":
            cmd = [venv_python("pyflink"), str(HERE / "w1_pyflink.py"), "--records", str(n),
                   "--workdir", tmp]
        else:
            raise ValueError(peer)
        return run_proc(cmd, timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# W2 ---------------------------------------------------------------------------------------
def w2_value(i: int) -> bytes:
    """W2's input value: JSON of about 100 bytes."""
    head = {"id": i, "user": f"u{i % 5000}", "amount": i % 1000, "pad": ""}
    pad = max(0, 100 - len(json.dumps(head, separators=(",", ":"))))
    head["pad"] = "x" * pad
    return json.dumps(head, separators=(",", ":")).encode()


def kafka_bootstrap() -> str:
    r = subprocess.run([str(ROOT / "scripts" / "kafka"), "start"], capture_output=True,
                       text=True, check=True)
    return r.stdout.strip().splitlines()[-1].strip()


def create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(name, partitions, 1)])
    for f in fs.values():
        f.result(30)


def delete_topics(bootstrap: str, *names: str | None) -> None:
    """Delete a run's own topics (its outputs, a random-named input) so the dev broker does
    not grow a partition per run: each name, and every topic whose name contains one (Quix
    Streams' changelog__/repartition__ topics embed the consumer group, named after the
    run's output). A failure is printed with the names, never raised."""
    from confluent_kafka.admin import AdminClient
    own = [n for n in names if n]
    if not own:
        return
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        todo = [t for t in admin.list_topics(timeout=30).topics if any(n in t for n in own)]
        if not todo:
            return
        fs = admin.delete_topics(todo, operation_timeout=60)
        for name, f in fs.items():
            try:
                f.result(70)
            except Exception as e:
                print(f"[topics] could not delete {name}: {e}", flush=True)
    except Exception as e:
        print(f"[topics] could not delete {todo}: {e}", flush=True)


def prefill(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Producer
    create_topic(bootstrap, topic)
    t0 = time.time()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "none",
                  "enable.idempotence": True, "queue.buffering.max.messages": 500000})
    for i in range(n):
        while True:
            try:
                p.produce(topic, w2_value(i), key=f"u{i % 5000}".encode())
                break
            except BufferError:
                p.poll(0.1)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    return time.time() - t0


#: The results reader's own settings. librdkafka postpones a partition's next fetch by
#: ``fetch.queue.backoff.ms`` (default 1000) whenever its local queue is over
#: ``queued.min.messages``: an exactly-once commit makes a whole checkpoint interval's
#: results visible at once, and a reader with the default then waited ~1 s per burst
#: (it read 500,000 committed results at ~150,000/s; with 10 ms at ~900,000/s). The
#: poll timeout is short, so the last few results are not held for the rest of it.
READER_CONFIG = {"fetch.queue.backoff.ms": 10}
READER_POLL_S = 0.05


class OutputWatcher:
    """read_committed consumer of the output topic, in a thread of the parent: records
    when it has seen n records, then keeps the ids to check them."""

    def __init__(self, bootstrap: str, topic: str, n: int, timeout: float) -> None:
        self.bootstrap, self.topic, self.n, self.timeout = bootstrap, topic, n, timeout
        self.done = threading.Event()
        self.stop_process = True
        self.values: list[bytes] = []  # raw: parsed by check(), after the timed span
        self._parsed: tuple[list[int], int] | None = None
        self.t_done: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.quiet_after = 3.0  # s of no more records after reaching n (to catch extras)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        from confluent_kafka import Consumer
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"cmp-{uuid.uuid4()}",
                      "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, **READER_CONFIG})
        c.subscribe([self.topic])
        end = time.time() + self.timeout
        try:
            # The reader only keeps each value while it counts: a commit makes a whole
            # checkpoint interval's results visible at once, and the reader's own parsing
            # must not be what the figure measures (parsing every value as it arrived held
            # the reader to ~900,000 results/s, a visible tail after exactly-once's last
            # commit). check() parses them afterwards.
            values = self.values
            while time.time() < end:
                msgs = c.consume(10000, READER_POLL_S)
                values.extend([m.value() for m in msgs if m.error() is None])
                if self.t_done is None and len(values) >= self.n:
                    self.t_done = time.time()
                    self.done.set()
                if self.t_done is not None and not msgs and time.time() - self.t_done > self.quiet_after:
                    break
        finally:
            self.done.set()
            c.close()

    def _parse(self) -> tuple[list[int], int]:
        """(ids, unparsable count) of the values seen; cached once the reader stopped."""
        if self._parsed is not None:
            return self._parsed
        import orjson
        ids, bad = [], 0
        for v in list(self.values):
            try:
                ids.append(orjson.loads(v)["id"])
            except Exception:
                bad += 1
        if not self.thread.is_alive():
            self._parsed = (ids, bad)
        return ids, bad

    @property
    def ids(self) -> list[int]:
        """The ``id`` of every value seen."""
        return self._parse()[0]

    @property
    def bad(self) -> int:
        """Values that are not JSON objects with an ``id``."""
        return self._parse()[1]

    def check(self) -> list[str]:
        problems = []
        if len(self.ids) != self.n:
            problems.append(f"read_committed consumer saw {len(self.ids)} records, expected {self.n}")
        s = set(self.ids)
        if len(s) != len(self.ids):
            problems.append(f"{len(self.ids) - len(s)} duplicate ids")
        missing = self.n - len(s & set(range(self.n)))
        if missing:
            problems.append(f"{missing} ids missing")
        if self.bad:
            problems.append(f"{self.bad} unparsable output values")
        return problems


def run_w2(peer: str, n: int, bootstrap: str, in_topic: str, timeout: float) -> dict:
    tmp = tempfile.mkdtemp(prefix=f"cmp-w2-{peer}-")
    out_topic = f"cmp-w2-out-{peer}-{uuid.uuid4().hex[:8]}"
    try:
        create_topic(bootstrap, out_topic)
        common = ["--bootstrap", bootstrap, "--input", in_topic, "--output", out_topic,
                  "--records", str(n), "--workdir", tmp]
        if peer == "onceflow":
            cmd = [MAIN_PY, str(HERE / "w2_onceflow.py"), *common]
        elif peer == "quix":
            cmd = [venv_python("quix"), str(HERE / "w2_quix.py"), *common]
        elif peer == "pyflink":
            cmd = [venv_python("pyflink"), str(HERE / "w2_pyflink.py"), *common,
                   "--jar", str(connector_jar())]
        else:
            raise ValueError(peer)
        w = OutputWatcher(bootstrap, out_topic, n, timeout)
        w.start()
        rec = run_proc(cmd, timeout, until=w)
        w.thread.join(timeout=30)
        problems = w.check()
        if rec.get("timed_out"):
            problems.append("timed out")
        if w.t_done is None:
            problems.append(f"never saw {n} output records (saw {len(w.ids)}); rc {rec['returncode']}")
            rec["records_per_s"] = None
        else:
            secs = w.t_done - rec["t_start"]
            rec["processing_s"] = secs
            rec["records_per_s"] = n / secs
        rec.update({"records": n, "output_seen": len(w.ids), "output_topic": out_topic,
                    "valid": not problems, "problems": problems})
        return rec
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        delete_topics(bootstrap, out_topic)


# summary, tables, chart --------------------------------------------------------------------
def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("valid") and r.get("records_per_s")]
    rps = [r["records_per_s"] for r in ok]
    rss = [r["tree_peak_rss_mb"] for r in runs if r.get("tree_peak_rss_mb")]
    return {"runs_ok": len(ok), "runs_total": len(runs),
            "records_per_s": statistics.median(rps) if rps else None,
            "records_per_s_min": min(rps) if rps else None,
            "records_per_s_max": max(rps) if rps else None,
            "wall_s": statistics.median([r["wall_s"] for r in runs]) if runs else None,
            # N / whole-process wall time (start-up and shutdown included), valid runs
            "records_per_s_wall": statistics.median([r["records"] / r["wall_s"] for r in ok])
            if ok and all(r.get("records") for r in ok) else None,
            "peak_rss_mb": statistics.median(rss) if rss else None,
            "peak_rss_mb_max": max(rss) if rss else None}


def fmt_i(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def render_md(res: dict) -> str:
    m = res["machine"]
    lines = [f"# onceflow vs peers: W1 and W2 ({res['date']})", "",
             f"Machine: {m['cores']} cores ({m['cpu']}), {m['os']}, Python {m['python']}, "
             f"{m.get('java', '')}; shared and noisy. Command: `{res['command']}`. "
             f"{res['runs']} runs per (workload, system), interleaved; medians, min–max over valid runs. "
             "Peak RSS = summed RSS of the run's whole process tree (JVM, Python workers, "
             "forked workers), sampled every 50 ms (pages shared after fork counted per process).",
             ""]
    for wl in res["workloads"]:
        title = {"w1": "W1 keyed-sum, parallelism 1", "w2": "W2 Kafka → running total → Kafka, exactly-once"}[wl]
        rps_head = ("records/s (median), start-up excluded" if wl == "w1"
                    else "records/s (median), start-up included")
        extra_head = " records/s incl. start-up (N / wall) |" if wl == "w1" else ""
        lines += [f"## {title}", "",
                  f"| system | guarantee / setting | N | {rps_head} | min–max | valid runs | "
                  f"wall s |{extra_head} peak RSS MB |",
                  "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if wl == "w1" else "") + "---:|"]
        for peer, s in res["summary"][wl].items():
            wall = "n/a" if s["wall_s"] is None else f"{s['wall_s']:.1f}"
            rss = "n/a" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f}"
            extra = f" {fmt_i(s.get('records_per_s_wall'))} |" if wl == "w1" else ""
            lines.append(f"| {LABEL[peer]} | {GUARANTEE[(wl, peer)]} | {fmt_i(s['records'])} | "
                         f"{fmt_i(s['records_per_s'])} | {fmt_i(s['records_per_s_min'])}–"
                         f"{fmt_i(s['records_per_s_max'])} | {s['runs_ok']}/{s['runs_total']} | "
                         f"{wall} |{extra} {rss} |")
        lines.append("")
        for peer, s in res["summary"][wl].items():
            for p in s.get("problems", [])[:2]:
                lines.append(f"- {LABEL[peer]}: {p[:400]}")
        lines.append("")
    lines += ["## Notes", "",
              "- W1 records/s: onceflow = N / its processing time (workers running → done, final "
              "checkpoint included); plain = N / loop time; Bytewax = N / `cli_main` time; PyFlink = "
              "N / (close of the counting function − first record in Python). Start-up is in 'wall s'.",
              "- W1 'records/s incl. start-up' = N / the run's whole-process wall time (interpreter, "
              "JVM and mini-cluster start, job submission, shutdown).",
              "- W2 records/s: N / (time a read_committed consumer has seen all N outputs − start "
              "of the run's process), so start-up (imports, JVM) is included for every system.",
              "- PyFlink runs its Python functions in 'thread' mode (python.execution-mode=thread, "
              "embedded interpreter), which Flink's docs recommend for performance; Flink's default "
              "'process' mode measured 760–3,620 records/s in W1 here (see "
              "benchmarks/compare/README.md, with all settings).",
              ]
    for wl in res["workloads"]:
        small = [p for p, s in res["summary"][wl].items()
                 if s["records"] and s["records"] != max(x["records"] or 0
                                                         for x in res["summary"][wl].values())]
        if small:
            lines.append(f"- {wl.upper()}: smaller N for {', '.join(LABEL[p] for p in small)}; "
                         "start-up weighs more at small N.")
    for wl in res["workloads"]:
        pf = res["summary"][wl].get("pyflink")
        if pf:
            nets = [r.get("job_net_runtime_s") for r in pf["runs"] if r.get("valid") and r.get("job_net_runtime_s")]
            if nets:
                lines.append(f"- {wl.upper()} PyFlink, N / Flink's own job net runtime (median): "
                             f"{fmt_i(pf['records'] / statistics.median(nets))} records/s.")
    lines += ["", "## Targets (issue #7; medians of this invocation)", "",
              "| target | measured | met |", "|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    lines.append("")
    return "\n".join(lines)


def targets(summary: dict) -> list[dict]:
    out = []

    def rps(wl: str, p: str) -> float | None:
        return summary.get(wl, {}).get(p, {}).get("records_per_s")

    def rss(wl: str, p: str) -> float | None:
        return summary.get(wl, {}).get(p, {}).get("peak_rss_mb")

    def add(name: str, a: float | None, b: float | None, want: float, kind: str = "ge") -> None:
        if a is None or b is None:
            out.append({"target": name, "measured": "not measured", "met": "n/a"})
            return
        r = a / b
        met = r >= want if kind == "ge" else r <= want
        r_shown = int(r * 100) / 100  # truncated, never rounded up
        out.append({"target": name, "measured": f"{r_shown:.2f}× ({fmt_i(a)} vs {fmt_i(b)})",
                    "met": "yes" if met else "NO"})

    add("W1 onceflow ≥ 3× Bytewax (recovery on)", rps("w1", "onceflow"), rps("w1", "bytewax"), 3)
    add("W1 onceflow ≥ 10× PyFlink (checkpointing on)", rps("w1", "onceflow"), rps("w1", "pyflink"), 10)
    add("W1 onceflow ≥ 0.30× plain loop", rps("w1", "onceflow"), rps("w1", "plain"), 0.30)
    add("W2 onceflow ≥ 2× Quix Streams exactly-once", rps("w2", "onceflow"), rps("w2", "quix"), 2)
    add("W2 onceflow ≥ 1× PyFlink KafkaSink exactly-once", rps("w2", "onceflow"), rps("w2", "pyflink"), 1)
    add("W1 peak RSS onceflow ≤ 0.5× PyFlink", rss("w1", "onceflow"), rss("w1", "pyflink"), 0.5, "le")
    add("W2 peak RSS onceflow ≤ 0.5× PyFlink", rss("w2", "onceflow"), rss("w2", "pyflink"), 0.5, "le")
    return out


def plot(res: dict, path: Path) -> None:
    py = venv_python("plot")
    data = []
    for wl in res["workloads"]:
        for peer, s in res["summary"][wl].items():
            if s["records_per_s"]:
                data.append({"wl": wl.upper(), "label": f"{LABEL[peer]}\n{SHORT[(wl, peer)]}\nN = {s['records']:,}",
                             "rps": s["records_per_s"], "lo": s["records_per_s_min"],
                             "hi": s["records_per_s_max"], "peer": peer})
    script = r'''
import json, sys
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
data, path, title = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
wls = sorted({d["wl"] for d in data})
fig, axes = plt.subplots(1, len(wls), figsize=(7 * len(wls), 6), squeeze=False)
colors = {"onceflow": "#2b7bba", "plain": "#999999", "bytewax": "#e69f00", "pyflink": "#d55e00", "quix": "#009e73"}
for ax, wl in zip(axes[0], wls):
    ds = [d for d in data if d["wl"] == wl]
    x = range(len(ds))
    ax.bar(x, [d["rps"] for d in ds], color=[colors[d["peer"]] for d in ds],
           yerr=[[d["rps"] - d["lo"] for d in ds], [d["hi"] - d["rps"] for d in ds]], capsize=4)
    ax.set_yscale("log")
    ax.set_xticks(list(x)); ax.set_xticklabels([d["label"] for d in ds], fontsize=7)
    for i, d in enumerate(ds):
        ax.text(i, d["rps"] * 1.1, f'{d["rps"]:,.0f}', ha="center", fontsize=8)
    ax.set_ylabel("records/s (median, log scale; bars = min-max)")
    ax.set_title({"W1": "W1 keyed sum, parallelism 1", "W2": "W2 Kafka -> Kafka exactly-once (incl. start-up)"}[wl])
fig.suptitle(title, fontsize=9)
fig.tight_layout()
fig.savefig(path, dpi=110)
'''
    m = res["machine"]
    title = (f"onceflow vs peers, {res['date']}, {m['cores']} cores, Python {m['python']}, "
             f"{res['runs']} runs each")
    subprocess.run([py, "-c", script, json.dumps(data), str(path), title], check=True)


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    v = peer_versions()
    return {"cores": os.cpu_count(), "cpu": cpu, "os": platform.platform(),
            "python": platform.python_version(), "java": v.get("java", ""), "versions": v}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="w1,w2")
    ap.add_argument("--peers", default="onceflow,plain,bytewax,quix,pyflink")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--w1-records", type=int, default=2_000_000)
    ap.add_argument("--w1-pyflink-records", type=int, default=0,
                    help="a smaller N for PyFlink W1 (records/s compared); 0 (default): "
                         "--w1-records")
    ap.add_argument("--w2-records", type=int, default=1_000_000)
    ap.add_argument("--w2-pyflink-records", type=int, default=0,
                    help="a smaller N for PyFlink W2 (its own input topic; records/s "
                         "compared); 0 (default): --w2-records, the same topic")
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--render-only", action="store_true",
                    help="re-write compare.md and compare.png from compare.json")
    args = ap.parse_args()
    if args.render_only:
        res = json.loads((RESULTS / "compare.json").read_text())
        res["targets"] = targets(res["summary"])
        (RESULTS / "compare.md").write_text(render_md(res))
        plot(res, RESULTS / "compare.png")
        return 0
    wls = [w for w in args.workloads.split(",") if w]
    peers = [p for p in args.peers.split(",") if p]
    plan: list[tuple[str, str]] = []
    for wl in wls:
        for p in (W1_PEERS if wl == "w1" else W2_PEERS):
            if p in peers:
                plan.append((wl, p))
    for wl, p in plan:  # set up first, so no install lands inside a timed run
        if p in PEER_PACKAGES:
            venv_python(p)
        if (wl, p) == ("w2", "pyflink"):
            connector_jar()
    bootstrap = in_topic = None
    prefill_s = None
    if "w2" in wls:
        bootstrap = kafka_bootstrap()
        in_topic = f"cmp-w2-in-{uuid.uuid4().hex[:8]}"
        print(f"[w2] prefilling {in_topic} with {args.w2_records:,} records on {bootstrap} ...", flush=True)
        prefill_s = prefill(bootstrap, in_topic, args.w2_records)
        small_topic = in_topic
        if args.w2_pyflink_records and ("w2", "pyflink") in plan:
            small_topic = in_topic + f"-n{args.w2_pyflink_records}"
            prefill(bootstrap, small_topic, args.w2_pyflink_records)
    runs: dict[tuple[str, str], list[dict]] = {k: [] for k in plan}
    for r in range(args.runs):
        for wl, p in plan:
            if wl == "w1":
                n = args.w1_records
                if p == "pyflink" and args.w1_pyflink_records:
                    n = args.w1_pyflink_records
                rec = run_w1(p, n, args.timeout)
                rec.setdefault("records", n)
            else:
                if p == "pyflink" and args.w2_pyflink_records:
                    rec = run_w2(p, args.w2_pyflink_records, bootstrap, small_topic, args.timeout)
                else:
                    rec = run_w2(p, args.w2_records, bootstrap, in_topic, args.timeout)
            runs[(wl, p)].append(rec)
            print(f"[{wl} run {r + 1}] {p:9s} records/s {fmt_i(rec.get('records_per_s')):>10s}  "
                  f"wall {rec['wall_s']:.1f}s  peak RSS {rec['tree_peak_rss_mb']:.0f} MB  "
                  f"valid {rec.get('valid')} {rec.get('problems') or ''}"[:600], flush=True)
    if bootstrap:  # the random-named inputs of this invocation
        delete_topics(bootstrap, in_topic, small_topic)
    summary: dict[str, dict] = {wl: {} for wl in wls}
    for (wl, p), rs in runs.items():
        s = summarize(rs)
        s["records"] = rs[0].get("records") if rs else None
        s["guarantee"] = GUARANTEE[(wl, p)]
        s["problems"] = sorted({q for r in rs for q in (r.get("problems") or [])})
        s["runs"] = rs
        summary[wl][p] = s
    res = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join([os.path.relpath(sys.executable, ROOT)
                                if sys.executable.startswith(str(ROOT)) else sys.executable,
                                os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
           "machine": machine_info(), "runs": args.runs, "workloads": wls,
           "w2_input_topic": in_topic, "w2_prefill_s": prefill_s, "summary": summary}
    res["targets"] = targets(summary)
    md = render_md(res)
    print(md)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "compare.json").write_text(json.dumps(res, indent=1, default=str))
        (RESULTS / "compare.md").write_text(md)
        try:
            plot(res, RESULTS / "compare.png")
        except Exception as e:
            print(f"[plot] failed: {e}", flush=True)
    return 0 if all(s["runs_ok"] == s["runs_total"] for w in summary.values() for s in w.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
