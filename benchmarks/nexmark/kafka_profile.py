"""Where a Nexmark query's CPU goes over Kafka on onceflow (nexmark-kafka-profile.txt).

    .venv/bin/python benchmarks/nexmark/kafka_profile.py run q0 --topic TOPIC --events N
    py-spy record -r 200 -s -n -f raw -o q0.txt -- \\
        .venv/bin/python benchmarks/nexmark/kafka_profile.py run q0 --topic TOPIC --events N
    .venv/bin/python benchmarks/nexmark/kafka_profile.py shares q0.txt [q3.txt ...]
    .venv/bin/python benchmarks/nexmark/kafka_profile.py run q0 --topic TOPIC --events N \
        --threads --producer-config '{"partitioner": "consistent_random"}'

``--threads``: the worker's CPU per thread (Python's, librdkafka's ``rdk:broker*`` and
``rdk:main``), sampled from /proc every 0.1 s. ``--producer-config``: librdkafka settings
for the query's KafkaSink, for A/B runs of one setting.

``run``: one run of ``run.py --one`` (parallelism 1, memory backend, exactly-once into a
fresh 2-partition topic) in this process, printing its CPU seconds split into the driver's
(from building the flow to ``flow.run()``'s return) and the forked worker's. ``shares``:
the worker's py-spy samples (``-s``: the forked child's stacks), by what they were doing.
py-spy is not a dependency of the project: install it where you like (``pip install
py-spy``); its samples are wall-clock samples of threads it does not see as idle, so a
thread waiting in native code (a lock, a consume with a timeout) can count.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class ThreadCpu:
    """CPU seconds per thread of this process's children (the forked worker): librdkafka's
    threads (``rdk:main``, ``rdk:broker…``) apart from Python's, read every 0.1 s from
    /proc/<pid>/task/*/stat (a thread that ends between two samples loses at most 0.1 s)."""

    def __init__(self) -> None:
        import threading
        self.seen: dict[tuple[int, int], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._tick = 100.0
        import os
        self._tick = float(os.sysconf("SC_CLK_TCK"))
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _children(self) -> list[int]:
        import os
        me = str(os.getpid())
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    st = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                if st.rsplit(")", 1)[1].split()[1] == me:
                    out.append(int(d))
        return out

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            for pid in self._children():
                try:
                    tids = [int(t) for t in __import__("os").listdir(f"/proc/{pid}/task")]
                except OSError:
                    continue
                for tid in tids:
                    try:
                        st = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                    except OSError:
                        continue
                    name = st[st.index("(") + 1:st.rindex(")")]
                    f = st.rsplit(")", 1)[1].split()
                    self.seen[(pid, tid)] = (name, (int(f[11]) + int(f[12])) / self._tick)

    def report(self) -> str:
        self._stop.set()
        self.thread.join()
        by: dict[str, float] = collections.defaultdict(float)
        for name, cpu in self.seen.values():
            key = "rdk:broker*" if name.startswith("rdk:broker") else name
            by[key] += cpu
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))


def run(query: str, topic: str, events: int, bootstrap: str, threads: bool = False,
        producer_config: dict[str, object] | None = None) -> None:
    import run as nexmark_run
    from confluent_kafka.admin import AdminClient, NewTopic

    import onceflow.kafka  # noqa: F401  (imported before the clock starts, as run.py does)

    out = f"nex-profile-{query}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(out, 2, 1)])[out].result(timeout=30)
    marks: dict[str, float] = {}
    count = nexmark_run.count_committed

    def counted(*a: object, **k: object) -> int:
        marks["driver"] = _cpu(resource.RUSAGE_SELF)  # flow.run() returned
        return count(*a, **k)  # type: ignore[arg-type]

    nexmark_run.count_committed = counted
    if producer_config:  # e.g. {"partitioner": "consistent_random"}: librdkafka chooses
        import onceflow.kafka as okafka
        made = okafka.KafkaSink

        def sink(*a: object, **k: object) -> object:
            return made(*a, producer_config=producer_config, **k)  # type: ignore[arg-type]

        okafka.KafkaSink = sink  # type: ignore[assignment]
    tc = ThreadCpu() if threads else None
    start = _cpu(resource.RUSAGE_SELF)
    rec = nexmark_run.run_one(query, 1, "memory", events, 10.0, kafka=(bootstrap, topic),
                              output_topic=out)
    print(f"{query}: {events:,} events, processing {rec['processing_s']:.2f} s, CPU "
          f"{rec['cpu_s']:.3f} s ({rec['events_per_cpu_s']:,.0f} events/s per core); "
          f"driver (build + run) {marks['driver'] - start:.3f} s, worker "
          f"{_cpu(resource.RUSAGE_CHILDREN):.3f} s; problems {rec['problems']}")
    if tc is not None:
        print(f"  worker threads (CPU s, sampled): {tc.report()}")
    nexmark_run.delete_topic(bootstrap, out)


def category(stack: str) -> str:
    if "Consumer_consume" in stack:
        return "Kafka consume (librdkafka)"
    if "KafkaSplitReader." in stack:
        return ("JSON decode (orjson.loads)" if "orjson/" in stack
                else "the source's Python (_values)")
    if "SinkOp.process" in stack:
        for mark, what in (("Producer_produce", "Producer.produce (C)"),
                           ("Producer_poll", "Producer.poll"),
                           ("orjson/", "JSON encode (orjson.dumps)")):
            if mark in stack:
                return what
        return "the sink's Python (produce loop)"
    if "process_ts" in stack:
        return "query operators and functions"
    if "Thread._bootstrap" in stack:
        return "other threads (checkpoint, commit; mostly waiting)"
    return "task loop, watermarks, channels, the rest"


def shares(paths: list[str]) -> None:
    table: dict[str, tuple[collections.Counter[str], int]] = {}
    for path in paths:
        c: collections.Counter[str] = collections.Counter()
        total = 0
        for line in Path(path).read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            if sum(f.startswith("process ") for f in frames) != 2:
                continue  # the driver's samples (the worker is the driver's child)
            body = ";".join(f for f in frames if not f.startswith("process "))
            c[category(body)] += int(n)
            total += int(n)
        table[Path(path).stem] = (c, total)
    keys = sorted({k for c, _ in table.values() for k in c},
                  key=lambda k: -sum(c[k] / max(t, 1) for c, t in table.values()))
    print(f"{'':52}" + "".join(f"{name:>12}" for name in table))
    for k in keys:
        print(f"{k:52}" + "".join(f"{c[k] / max(t, 1) * 100:11.0f}%"
                                   for c, t in table.values()))
    print(f"{'worker samples':52}" + "".join(f"{t:12}" for _, t in table.values()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("query")
    r.add_argument("--topic", required=True, help="a topic pre-filled by peers.py/run.py")
    r.add_argument("--events", type=int, required=True, help="the events in --topic")
    r.add_argument("--bootstrap", default="127.0.0.1:39092")
    r.add_argument("--threads", action="store_true",
                   help="also the worker's CPU per thread (librdkafka's apart)")
    r.add_argument("--producer-config", default=None,
                   help="JSON: librdkafka settings for the query's KafkaSink")
    s = sub.add_parser("shares")
    s.add_argument("paths", nargs="+", help="py-spy raw files (-f raw)")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.query, a.topic, a.events, a.bootstrap, a.threads,
            json.loads(a.producer_config) if a.producer_config else None)
    else:
        shares(a.paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
