"""W1 keyed-sum on PyFlink (DataStream API), parallelism 1, EXACTLY_ONCE checkpoints
every 1 s, HashMap state backend with JobManager checkpoint storage (the in-memory
setup; Flink's default state backend).

    python w1_pyflink.py --records N --workdir DIR

The source is Flink's NumberSequenceSource (a bounded, checkpointed, replayable Java
source); W1's record i = (key, value) is built by the first Python map, exactly as
onceflow's benchmark does with its Range source. The Python UDFs run in a separate
Python worker process that Flink starts (the Beam-based Python runner); consecutive
Python operators are chained into that one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, maxrss_self_mb, python_mode, w1_problems
from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.datastream.connectors.number_seq import NumberSequenceSource
from pyflink.datastream.functions import FlatMapFunction, MapFunction, RuntimeContext

PAIR = Types.TUPLE([Types.INT(), Types.LONG()])


class MakeRecord(MapFunction):
    """W1's record i; also notes when the first record reached Python."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.first = None

    def map(self, i):
        if self.first is None:
            self.first = time.time()
            with open(self.path, "w") as f:
                f.write(repr(self.first))
        return (i * 7919 % 10000, i % 100)


def double(kv):
    return (kv[0], kv[1] * 2)


class CountingSink(FlatMapFunction):
    """Counts (key, sum) records and keeps each key's last sum; emits nothing; writes
    its figures when the task closes at end of input."""

    def __init__(self, path: str) -> None:
        self.path = path

    def open(self, runtime_context: RuntimeContext) -> None:
        self.n = 0
        self.last = {}

    def flat_map(self, kv):
        self.n += 1
        self.last[kv[0]] = kv[1]
        return ()

    def close(self) -> None:
        with open(self.path, "w") as f:
            json.dump({"n": self.n, "last_sum": sum(self.last.values()),
                       "keys": len(self.last), "closed_at": time.time()}, f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--checkpoints", choices=["on", "off"], default="on")
    ap.add_argument("--execution-mode", choices=["process", "thread"], default="thread",
                    help="python.execution-mode (Flink's default: process; thread is what "
                         "Flink's docs recommend for performance)")
    ap.add_argument("--state-cache", type=int, default=None,
                    help="python.state.cache-size (Flink's default: 1000 keys per Python worker)")
    a = ap.parse_args()
    n = a.records
    sink_path = os.path.join(a.workdir, "sink.json")
    first_path = os.path.join(a.workdir, "first.txt")
    t_start = time.time()
    conf = Configuration()
    conf.set_string("state.backend.type", "hashmap")
    conf.set_string("execution.checkpointing.storage", "jobmanager")
    python_mode(conf, a.execution_mode)
    if a.state_cache:
        conf.set_string("python.state.cache-size", str(a.state_cache))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.set_python_executable(sys.executable)  # the Python worker uses this venv
    if a.checkpoints == "on":
        env.enable_checkpointing(1000, CheckpointingMode.EXACTLY_ONCE)
    (env.from_source(NumberSequenceSource(0, n - 1), WatermarkStrategy.no_watermarks(),
                     "source")
        .map(MakeRecord(first_path), output_type=PAIR)
        .map(double, output_type=PAIR)
        .key_by(lambda kv: kv[0], key_type=Types.INT())
        .reduce(lambda a, b: (a[0], a[1] + b[1]))
        .flat_map(CountingSink(sink_path), output_type=PAIR)
        .print())  # receives nothing: CountingSink emits no records
    t0 = time.time()
    res = env.execute("w1")
    t1 = time.time()
    net_ms = res.get_net_runtime()
    with open(sink_path) as f:
        d = json.load(f)
    with open(first_path) as f:
        first = float(f.read())
    proc_s = d["closed_at"] - first
    problems = w1_problems(n, d["n"], d["last_sum"])
    emit({"records": n, "processing_s": proc_s, "records_per_s": n / proc_s,
          "job_net_runtime_s": net_ms / 1000, "records_per_s_net_runtime": n / (net_ms / 1000),
          "execute_s": t1 - t0, "startup_to_execute_s": t0 - t_start,
          "emitted": d["n"], "last_sum_total": d["last_sum"], "keys": d["keys"],
          "self_maxrss_mb": maxrss_self_mb(), "valid": not problems, "problems": problems})


if __name__ == "__main__":
    main()
