"""onceflow demo: a word count that survives a SIGKILL and still counts every word exactly once.

What happens (``make demo`` or ``python examples/demo_wordcount.py``):

1. A deterministic text corpus is generated into a temporary directory (made-up words with a
   Zipf-like skew), and the expected count of every word is computed along the way.
2. The job runs in a child process: ``TextFiles -> flat_map(words) -> key_by(word) ->
   reduce(running count) -> FileSink`` with a checkpoint every second and a fixed-delay
   restart strategy.
3. This (parent) process plays the operator having a bad day: a few seconds in, once at least
   two checkpoints have completed, it SIGKILLs one of the job's worker processes. The job
   notices, restarts every worker from the latest complete checkpoint, and carries on.
4. When the job is done, the committed output files are checked exactly: for every word the
   running count must have emitted 1, 2, ..., n exactly once each, where n is its expected
   count. A single lost or duplicated record anywhere makes the demo fail (exit code 1).

Options: ``--no-kill``, ``--parallelism N``, ``--words N``, ``--keep`` (keep the temporary
directories and print their paths).

The kill uses Linux's ``/proc`` to find the job's worker processes (children of the child).
"""

from __future__ import annotations

import argparse
import collections
import gc
import glob
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import orjson

FLOW_NAME = "wordcount"
N_FILES = 16
VOCABULARY = 3000
DEFAULT_WORDS = 5_000_000
CHECKPOINT_INTERVAL = 1.0
CORPUS_SEED = 20240601


# --- output helpers ------------------------------------------------------------------------
def _clock(t0: float) -> str:
    return f"[{time.time() - t0:5.1f}s]"


def say(msg: str = "") -> None:
    print(msg, flush=True)


# --- the corpus ----------------------------------------------------------------------------
def make_vocabulary(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct pronounceable made-up words ("kovatu", "relimo", ...)."""
    onsets = "b c d f g h j k l m n p r s t v w z ch sh th st br kr pl tr".split()
    vowels = "a e i o u ai ou ee".split()
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        syllables = rng.choice((1, 2, 2, 3, 3, 3, 4))
        w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        if rng.random() < 0.3:
            w += rng.choice("nlrsx")
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def generate_corpus(corpus_dir: str, total_words: int) -> collections.Counter[str]:
    """Write ``N_FILES`` text files of ``total_words`` words in all; return the word counts."""
    rng = random.Random(CORPUS_SEED)
    vocab = make_vocabulary(rng, VOCABULARY)
    # Zipf-like skew: the word of rank r has weight 1 / r (the top word is ~12% of the text).
    cum: list[float] = []
    acc = 0.0
    for rank in range(1, len(vocab) + 1):
        acc += 1.0 / rank
        cum.append(acc)
    expected: collections.Counter[str] = collections.Counter()
    os.makedirs(corpus_dir, exist_ok=True)
    for i in range(N_FILES):
        n = total_words * (i + 1) // N_FILES - total_words * i // N_FILES
        words = rng.choices(vocab, cum_weights=cum, k=n)
        expected.update(words)
        lines = []
        pos = 0
        while pos < n:
            k = rng.randint(4, 16)
            lines.append(" ".join(words[pos : pos + k]))
            pos += k
        with open(os.path.join(corpus_dir, f"book-{i:02d}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
            f.write("\n")
    return expected


# --- the job (runs in the child process) ---------------------------------------------------
def run_job(corpus_dir: str, ckpt_dir: str, out_dir: str, stats_path: str, parallelism: int,
            t0: float) -> int:
    import logging

    import onceflow as of

    class _Elapsed(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            msg = record.getMessage()
            # "checkpoint 3 complete: 4 subtasks, 12.3 ms, 58.6 KiB (max sync ...)": keep the
            # duration and size, drop the per-phase details.
            msg = re.sub(r"(checkpoint \d+ complete[^:]*: )\d+ subtasks, ([^(]*?) \(.*\)$",
                         r"\1\2", msg)
            return f"[{record.created - t0:5.1f}s]   onceflow: {msg}"

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Elapsed())
    logger = logging.getLogger("onceflow")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False

    flow = of.Flow(FLOW_NAME, parallelism=parallelism)
    flow.enable_checkpointing(interval=CHECKPOINT_INTERVAL, storage=ckpt_dir)
    flow.set_restart_strategy(of.restart.fixed_delay(attempts=5, delay=0.5))
    (flow.source(of.sources.TextFiles(os.path.join(corpus_dir, "*.txt")), name="lines")
         .flat_map(lambda line: [(w, 1) for w in line.split()], name="words")
         .key_by(lambda wc: wc[0])
         .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
         .sink(of.sinks.FileSink(out_dir), name="out"))
    try:
        result = flow.run()
    except of.OnceflowError as e:
        print(f"{_clock(t0)} job failed: {e}", flush=True)
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches the parent too; it reports it
        return 130
    done = result.completed_checkpoints
    stats = {
        "summary": result.summary(),
        "duration": result.duration,
        "restarts": result.restarts,
        "failures": result.failures,
        "records_out": result.records_out("count"),
        "checkpoints": [
            {"id": c.id, "ms": (c.duration or 0.0) * 1e3, "sync_ms": c.max_sync_ms,
             "size": c.size, "final": c.final}
            for c in done
        ],
        "failed_checkpoints": len(result.checkpoints) - len(done),
    }
    with open(stats_path, "w", encoding="utf-8") as f:
        json.dump(stats, f)
    return 0


# --- the operator (parent process) ---------------------------------------------------------
def latest_checkpoint(ckpt_dir: str) -> int:
    """The id of the newest complete checkpoint on disk (0 if none yet)."""
    ids = [0]
    for meta in glob.glob(os.path.join(ckpt_dir, FLOW_NAME, "chk-*", "_metadata")):
        m = re.search(r"chk-(\d+)", meta)
        if m:
            ids.append(int(m.group(1)))
    return max(ids)


def children_of(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:  # kernels without CONFIG_PROC_CHILDREN: scan every process's parent
        return _children_by_scan(pid)


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(d))
    return found


def committed_records(out_dir: str) -> Iterator[tuple[str, int]]:
    """The records of the committed output files, file by file.

    Same rule as ``of.sinks.read_committed(out_dir)``: files whose name starts with "." are
    uncommitted transactions and are skipped. Streaming keeps memory small."""
    for name in sorted(os.listdir(out_dir)):
        if name.startswith(".") or not name.startswith("part-"):
            continue
        with open(os.path.join(out_dir, name), "rb") as f:
            data = f.read().strip()
        if data:  # JSON lines -> one JSON array: a single fast parse per file
            yield from orjson.loads(b"[" + data.replace(b"\n", b",") + b"]")


def verify(out_dir: str, expected: collections.Counter[str]) -> tuple[int, list[str]]:
    """Check the committed output against ``expected``; return (records read, problems).

    Each word must have emitted its running counts 1..n exactly once each."""
    seen: dict[str, bytearray] = {w: bytearray(n + 1) for w, n in expected.items()}
    problems: list[str] = []
    records = 0
    dupes: collections.Counter[str] = collections.Counter()
    out_of_range: collections.Counter[str] = collections.Counter()
    unknown: collections.Counter[str] = collections.Counter()
    gc.disable()  # millions of short-lived lists: the cyclic GC would only slow this down
    try:
        for word, count in committed_records(out_dir):
            records += 1
            marks = seen.get(word)
            if marks is None:
                unknown[word] += 1
            elif not 1 <= count < len(marks):
                out_of_range[word] += 1
            elif marks[count]:
                dupes[word] += 1
            else:
                marks[count] = 1
    finally:
        gc.enable()
    for word, n in sorted(unknown.items()):
        problems.append(f"{word!r}: {n} record(s) for a word that is not in the corpus")
    for word, n in sorted(out_of_range.items()):
        problems.append(f"{word!r}: {n} count(s) outside 1..{expected[word]}")
    for word, n in sorted(dupes.items()):
        problems.append(f"{word!r}: {n} duplicated count(s)")
    for word, marks in sorted(seen.items()):
        missing = [i for i in range(1, len(marks)) if not marks[i]]
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            problems.append(f"{word!r}: expected counts 1..{expected[word]}, "
                            f"{len(missing)} missing ({shown})")
    return records, problems


def checkpoint_line(stats: dict) -> str:
    cps = stats["checkpoints"]
    if not cps:
        return "checkpoints: none completed"
    ms = [c["ms"] for c in cps]
    failed = stats["failed_checkpoints"]
    return (f"checkpoints: {len(cps)} completed"
            + (f" ({failed} aborted)" if failed else "")
            + f", median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms, "
            f"max sync {max(c['sync_ms'] for c in cps):.1f} ms, "
            f"last size {cps[-1]['size'] / 1024:,.0f} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-kill", action="store_true", help="do not kill a worker")
    ap.add_argument("--parallelism", type=int, default=2, help="job parallelism (default 2)")
    ap.add_argument("--words", type=int, default=DEFAULT_WORDS,
                    help=f"words in the corpus (default {DEFAULT_WORDS:,})")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument("--job", nargs=4, metavar=("CORPUS", "CKPT", "OUT", "STATS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.parallelism < 1 or args.words < 1:
        ap.error("--parallelism and --words must be at least 1")
    if args.job:
        return run_job(*args.job, parallelism=args.parallelism, t0=args.t0 or time.time())

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    t0 = time.time()
    kill = not args.no_kill
    if kill and not os.path.isdir("/proc"):
        say("(no /proc here: the demo finds worker processes the Linux way; running without "
            "the kill)")
        kill = False
    say(f"onceflow demo: exactly-once word count with parallelism {args.parallelism}, "
        f"a checkpoint every {CHECKPOINT_INTERVAL:g}s"
        + (", and a worker SIGKILLed mid-run" if kill else " (no kill)"))
    root = tempfile.mkdtemp(prefix="onceflow-demo-")
    corpus, ckpt, out = (os.path.join(root, d) for d in ("corpus", "checkpoints", "output"))
    stats_path = os.path.join(root, "job-stats.json")
    child: subprocess.Popen[bytes] | None = None
    try:
        expected = generate_corpus(corpus, args.words)
        say(f"{_clock(t0)} corpus: {N_FILES} files, {args.words:,} words, "
            f"{len(expected):,} distinct")
        cmd = [sys.executable, os.path.abspath(__file__), "--job", corpus, ckpt, out,
               stats_path, "--parallelism", str(args.parallelism), "--t0", repr(t0)]
        child = subprocess.Popen(cmd)
        started = time.time()
        say(f"{_clock(t0)} job started in child process {child.pid}")
        kill_after = random.uniform(1.0, 2.0)  # seconds after the start; varies run to run
        killed: list[int] = []
        while child.poll() is None:
            time.sleep(0.05)
            if not kill or killed or time.time() - started < kill_after:
                continue
            chk = latest_checkpoint(ckpt)
            workers = children_of(child.pid)
            if chk < 1 or not workers:
                continue
            victim = random.choice(workers)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it exited just now (the job is restarting or ending): try again
            killed.append(victim)
            say(f"{_clock(t0)} >>> killing worker pid {victim} with SIGKILL "
                f"(mid-run, checkpoint {chk} is the latest complete one)")
        if child.returncode != 0:
            say(f"{_clock(t0)} FAILED: the job exited with code {child.returncode}")
            return 1
        with open(stats_path, encoding="utf-8") as f:
            stats = json.load(f)
        say(f"{_clock(t0)} job finished in {stats['duration']:.1f}s; verifying the committed "
            "output ...")
        if kill and not killed:
            say("    (the job finished before the kill was due: try more --words)")
        records, problems = verify(out, expected)
        restarts = stats["restarts"]
        if problems:
            say(f"EXACTLY-ONCE: FAILED — {records:,} records read, expected "
                f"{args.words:,}; {len(problems)} problem(s), the first ones:")
            for p in problems[:10]:
                say(f"    {p}")
        else:
            say(f"EXACTLY-ONCE: OK — {records:,} records, {len(expected):,} words, "
                f"{len(killed)} worker{'s' if len(killed) != 1 else ''} killed, "
                f"job restarted {restarts} time{'s' if restarts != 1 else ''}")
        say(checkpoint_line(stats))
        return 1 if problems else 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)  # the driver stops its workers and exits
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()  # the workers die with it (they watch their parent)
                child.wait()
        if args.keep:
            say(f"kept: corpus {corpus}\n      checkpoints {ckpt}\n      output {out}\n"
                f"      job stats {stats_path} (result.summary() and checkpoint figures)")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
