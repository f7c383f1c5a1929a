"""The control-event timeline (``ONCEFLOW_TRACE``, onceflow/_trace.py): off by default; on,
every process of a real job appends its events, in an order the protocol fixes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from onceflow import _trace

JOB = textwrap.dedent("""
    import sys
    import onceflow as of
    from onceflow.sinks import FileSink

    flow = of.Flow("trace-job", parallelism=2)
    flow.enable_checkpointing(0.2, sys.argv[1] + "/ckpt")
    (flow.source(of.sources.Range(0, 20_000), name="numbers")
         .key_by(lambda x: x % 7)
         .reduce(lambda a, b: a + b, name="sum")
         .sink(FileSink(sys.argv[1] + "/out"), name="files"))
    flow.run()
""")


def test_off_unless_the_environment_names_a_file() -> None:
    assert bool(os.environ.get("ONCEFLOW_TRACE")) == _trace.ON
    if not _trace.ON:
        _trace.event("nothing", x=1)  # a no-op: no file to write


def test_a_job_writes_its_timeline(tmp_path) -> None:
    trace = tmp_path / "trace.jsonl"
    env = {**os.environ, "ONCEFLOW_TRACE": str(trace)}
    subprocess.run([sys.executable, "-c", JOB, str(tmp_path)], env=env, check=True,
                   timeout=120)
    evs = _trace.read(str(trace))
    kinds = [e["ev"] for e in evs]
    pids = {e["pid"] for e in evs}
    assert len(pids) >= 3  # the driver and both workers wrote to the one file
    # both source subtasks read and ended; the driver heard of each end
    assert sorted(e["subtask"] for e in evs if e["ev"] == "source_exhausted") == [0, 1]
    assert sorted(e["subtask"] for e in evs if e["ev"] == "exhausted_received") == [0, 1]
    final = [e for e in evs if e["ev"] == "trigger" and e["final"]]
    assert len(final) == 1
    fid = final[0]["checkpoint"]
    # the final checkpoint: triggered after the last end was reported, then every keyed
    # subtask got its barrier on both input channels, then it completed, then workers ended
    last_end = max(e["t"] for e in evs if e["ev"] == "exhausted_received")
    assert final[0]["t"] >= last_end
    barriers = [e for e in evs if e["ev"] == "barrier" and e["checkpoint"] == fid]
    assert sorted((e["subtask"], e["channel"][1]) for e in barriers
                  if e["task"] == barriers[0]["task"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    done = next(e for e in evs if e["ev"] == "complete" and e["checkpoint"] == fid)
    assert done["final"] and all(b["t"] <= done["t"] for b in barriers)
    acks = [e for e in evs if e["ev"] == "ack_received" and e["checkpoint"] == fid]
    assert len(acks) == len({(e["task"], e["subtask"]) for e in acks}) >= 4
    assert kinds.count("worker_finished") == 2 and kinds[-1] == "workers_joined"
