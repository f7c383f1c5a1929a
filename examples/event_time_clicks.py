"""onceflow example: clicks per user per minute and user sessions, in event time.

    .venv/bin/python examples/event_time_clicks.py            # or --kill to SIGKILL a worker

Generates a day of clicks for 50 users (deterministic seed) into four JSON-lines files,
out of order by up to 20 s, with a few clicks arriving far too late, and one file that
stops early (its split goes idle, and ``with_idleness`` keeps the watermark moving). The
job reads the files with per-file watermarks and computes, exactly-once into FileSinks:

* clicks per user per minute (``tumbling(60)`` + ``allowed_lateness(30)`` + late data to a
  side output),
* sessions per user (``session(gap=300)``, the clicks counted by a ``process`` function).

Then it checks that every click was counted exactly once (in its minute or among the late
clicks, in a session or among the late ones; the minute counts against plain Python over
the clicks the job did not report late) and prints a few lines. With ``--kill`` it
SIGKILLs a worker mid-run, and the check still holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import onceflow as of

BOUND, LATENESS, GAP = 20.0, 30.0, 300.0


def generate(directory: str) -> list[dict[str, Any]]:
    rng = random.Random(13)
    clicks: list[dict[str, Any]] = []
    for f in range(4):
        lines, t = [], 0.0
        n = 1500 if f == 3 else 6000  # file 3 stops early: an idle split
        for i in range(n):
            t += rng.expovariate(1 / 14.0)
            ts = max(0.0, t - rng.uniform(0, BOUND))
            late = f != 3 and i > 1000 and i % 400 == 0
            if late:
                ts = max(0.0, t - 3600.0)  # an hour behind: past any lateness
            c = {"user": f"user{rng.randrange(50)}", "ts": round(ts, 3), "file": f,
                 "n": i, "late": late}
            lines.append(json.dumps(c))
            clicks.append(c)
        with open(os.path.join(directory, f"clicks-{f}.jsonl"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return clicks


def build(flow: of.Flow, data: str, out: str) -> None:
    ws = (of.WatermarkStrategy.bounded_out_of_orderness(BOUND)
          .with_timestamps(lambda line: json.loads(line)["ts"]).with_idleness(2.0))
    clicks = (flow.source(of.sources.TextFiles(os.path.join(data, "*.jsonl")), name="files",
                          watermarks=ws)
              .map(json.loads, name="parse")
              .map(_slow, name="pace"))
    late = of.OutputTag("late")
    per_minute = (clicks.key_by(lambda c: c["user"])
                  .window(of.windows.tumbling(60.0))
                  .allowed_lateness(LATENESS)
                  .side_output_late_data(late)
                  .aggregate(of.agg.count(), name="per-minute"))
    per_minute.sink(of.sinks.FileSink(os.path.join(out, "per-minute")), name="per-minute-out")
    per_minute.side_output(late).sink(of.sinks.FileSink(os.path.join(out, "late")),
                                      name="late-out")
    late_s = of.OutputTag("late-sessions")
    sessions = (clicks.key_by(lambda c: c["user"])
                .window(of.windows.session(GAP))
                .side_output_late_data(late_s)
                .process(lambda user, w, els: {"clicks": len(els)}, name="sessions"))
    sessions.sink(of.sinks.FileSink(os.path.join(out, "sessions")), name="sessions-out")
    sessions.side_output(late_s).sink(of.sinks.FileSink(os.path.join(out, "late-sessions")),
                                      name="late-sessions-out")


def _slow(c: dict[str, Any]) -> dict[str, Any]:
    if c["n"] % 50 == 0:
        time.sleep(0.001)  # a few seconds in all: time for a checkpoint or a kill
    return c


def run_job(data: str, out: str, ckpt: str) -> None:
    flow = of.Flow("clicks", parallelism=2, batch_size=128,
                   restart_strategy=of.restart.fixed_delay(attempts=5, delay=0.2))
    flow.enable_checkpointing(interval=0.5, storage=ckpt)
    build(flow, data, out)
    flow.run()


def check(clicks: list[dict[str, Any]], out: str) -> None:
    """Every click is counted exactly once: in its minute (the newest result of a window
    counts) or among the late clicks, and in a session or among the late ones. Which
    clicks are late depends on timing: a subtask reads its files one after another, and a
    file not started yet holds the watermark back until it is idle (2 s), so the clicks an
    hour behind are late only once the watermark has passed them."""
    def read(name: str) -> list[Any]:
        return list(of.sinks.read_committed(os.path.join(out, name)))

    late = {(c["file"], c["n"]) for c in read("late")}
    want = Counter((c["user"], (c["ts"] // 60) * 60) for c in clicks
                   if (c["file"], c["n"]) not in late)
    got: dict[tuple[Any, float], int] = {}
    for user, start, _end, n in read("per-minute"):
        got[(user, start)] = max(got.get((user, start), 0), n)
    sessions = read("sessions")
    late_s = read("late-sessions")
    far = [c for c in clicks if c["late"]]
    ok = got == dict(want) and \
        sum(s[3]["clicks"] for s in sessions) + len(late_s) == len(clicks)
    print(f"{len(clicks)} clicks; {len(got)} user-minutes; {len(late)} clicks too late for "
          f"their minute ({len(far)} of them an hour behind); {len(sessions)} sessions")
    for s in sorted(sessions, key=lambda s: -s[3]["clicks"])[:3]:
        print(f"  busiest session: {s[0]} from {s[1]:.0f} s to {s[2]:.0f} s, "
              f"{s[3]['clicks']} clicks")
    print("every click counted exactly once" if ok else "MISMATCH")
    if not ok:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kill", action="store_true", help="SIGKILL a worker mid-run")
    ap.add_argument("--job", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        run_job(*args.job)
        return
    tmp = tempfile.mkdtemp(prefix="onceflow-clicks-")
    try:
        data, out, ckpt = (os.path.join(tmp, d) for d in ("data", "out", "ckpt"))
        os.makedirs(data)
        clicks = generate(data)
        proc = subprocess.Popen([sys.executable, __file__, "--job", data, out, ckpt])
        if args.kill:
            time.sleep(2.0)
            kids = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children")
                    .read().split()]
            if kids:
                os.kill(kids[0], signal.SIGKILL)
                print(f"killed worker {kids[0]}")
        if proc.wait() != 0:
            raise SystemExit("the job failed")
        check(clicks, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
