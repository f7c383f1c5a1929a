"""Long chaos run (``make soak``; deselected from ``make test``): random shapes, random
parallelism, random numbers of worker and driver kills at random moments, for
``ONCEFLOW_SOAK_MINUTES`` (default 10). Every job's committed output must be exact."""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from jobproc import JobProcess
from test_exactly_once import Job, _assert_no_orphans, _kill_randomly

MINUTES = float(os.environ.get("ONCEFLOW_SOAK_MINUTES", "10"))
SHAPES = ["keyed_count", "union_flatmap", "two_keyed", "text_wordcount", "mixed_parallelism"]


@pytest.mark.soak
@pytest.mark.timeout(MINUTES * 60 + 600)  # the run itself, plus the last job
def test_chaos_soak(tmp_path: Path) -> None:
    minutes = MINUTES
    seed = int(os.environ.get("ONCEFLOW_TEST_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    deadline = time.monotonic() + minutes * 60
    runs = 0
    while time.monotonic() < deadline:
        runs += 1
        shape = rng.choice(SHAPES)
        par = rng.choice([1, 2, 3])
        interval = rng.choice(["0.1", "0.3", "0.5"])
        backend = rng.choice(["memory", "rocksdb"])
        state = ["--backend", backend] + (["--incremental"] if rng.random() < 0.6 else [])
        job = Job(tmp_path / f"run{runs}", shape, "--parallelism", str(par), "--rate",
                  str(rng.choice([4000, 8000, 20000])), "--interval", interval, *state,
                  records=rng.choice([20_000, 60_000]))
        (tmp_path / f"run{runs}").mkdir()
        note = f"seed={seed} run={runs} shape={shape} p={par} interval={interval} {state}"
        for _ in range(rng.randrange(3)):  # driver kills, each followed by restore
            if rng.random() < 0.5:  # restore at another parallelism (rescaling)
                par = rng.choice([1, 2, 3])
            proc = job.start("--restore", "latest", "--parallelism", str(par))
            time.sleep(rng.uniform(0.2, 2.0))
            pids = [w.pid for w in job.workers()]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _assert_no_orphans(pids)
        job.start("--restore", "latest", "--parallelism", str(rng.choice([1, 2, 3])))
        _kill_randomly(job, rng, kills=rng.randrange(5))
        code, _ = job.wait(timeout=300)
        assert code == 0, f"{note}: {job.log.read_text()[-3000:]}"
        try:
            job.check_exact()
        except AssertionError as e:
            raise AssertionError(f"{note}: {e}") from None
    assert runs > 0


# --- with the real servers -----------------------------------------------------------------
RESULTS = Path(os.environ.get("ONCEFLOW_SOAK_RESULTS", str(
    Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "soak-servers.json")))


class _Sampler:
    """Samples a driver process's RSS and open fds (psutil) while a job runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (t, rss, fds)

    def sample(self, pid: int) -> None:
        try:
            p = psutil.Process(pid)
            self.samples.append((time.monotonic(), p.memory_info().rss, p.num_fds()))
        except psutil.Error:
            pass

    def growth(self, warmup: float = 0.3) -> dict[str, float] | None:
        """RSS and fd growth from just after warm-up (the median over the run's 30-45 %) to
        its end (the median over the last quarter): medians, so that the sockets of a
        worker being replaced at the moment of one sample do not count as a leak, while
        a steady leak does. None for a run too short to tell."""
        s = self.samples
        if len(s) < 8 or s[-1][0] - s[0][0] < 10:
            return None
        t0, t1 = s[0][0], s[-1][0]
        warm = [x for x in s if t0 + warmup * (t1 - t0) <= x[0] <= t0 + 0.45 * (t1 - t0)]
        tail = [x for x in s if x[0] >= t1 - 0.25 * (t1 - t0)]
        if not warm or not tail:
            return None
        rss0, rss1 = statistics.median(x[1] for x in warm), statistics.median(x[1] for x in tail)
        fd0, fd1 = statistics.median(x[2] for x in warm), statistics.median(x[2] for x in tail)
        return {"rss_growth": rss1 / rss0 - 1, "fd_growth": fd1 / fd0 - 1,
                "rss_mb_after_warmup": rss0 / 2**20, "rss_mb_end": rss1 / 2**20,
                "fds_after_warmup": fd0, "fds_end": fd1}


def _lost_and_duplicated(kind: str, job: Any) -> tuple[int, int, int]:
    """(expected, lost, duplicated) effects of a finished job, counted from what its sink
    committed: for the embedded jobs, committed output records against a failure-free
    run's; for Kafka, input ids in the read_committed output; for PostgreSQL, input ids in
    the events table."""
    if kind == "embedded":
        import crashjobs
        got = crashjobs.committed(str(job.out))
        want = crashjobs.expected(job.shape, job.records, str(job.corpus))
        return (sum(want.values()), sum((want - got).values()), sum((got - want).values()))
    if kind == "kafka":
        from test_kafka import read_committed
        seen: dict[int, int] = {}
        for _, _, v in read_committed(job.bootstrap, job.output):
            seen[v["id"]] = seen.get(v["id"], 0) + 1
        lost = sum(1 for i in range(job.records) if i not in seen)
        return job.records, lost, sum(c - 1 for c in seen.values())
    rows = job.conn.execute(f"SELECT id, count(*) FROM {job.events} GROUP BY id").fetchall()
    ids = {i: c for i, c in rows}
    lost = sum(1 for i in range(job.records) if i not in ids)
    return job.records, lost, sum(c - 1 for c in ids.values())


def _chaos(job: JobProcess, rng: random.Random, max_kills: int, sampler: _Sampler,
           outage: Callable[[], None] | None, counts: dict[str, int],
           procs: set[psutil.Process]) -> None:
    """While the job runs: every 1-4 s SIGKILL a random worker (at most ``max_kills``, then
    only watch), sample the driver, and now and then (at most once) run ``outage`` (a
    broker / database restart)."""
    assert job.proc is not None
    kills = 0
    while job.proc.poll() is None:
        for _ in range(8):
            time.sleep(rng.uniform(1.0, 4.0) / 8)
            sampler.sample(job.proc.pid)
            procs.update(job.workers())
        if job.proc.poll() is not None:
            break
        # an outage only once the job runs (its workers exist): a job started while its
        # server is down fails at start-up on purpose, with a ConfigurationError
        if outage is not None and job.workers() and rng.random() < 0.15:
            outage()
            outage = None
            counts["outages"] += 1
            continue
        if kills >= max_kills:
            continue
        victims = [w for w in job.workers() if w.is_running()]
        if victims:
            try:
                rng.choice(victims).send_signal(signal.SIGKILL)
                counts["worker_kills"] += 1
                kills += 1
            except psutil.NoSuchProcess:
                pass


@pytest.mark.soak
@pytest.mark.timeout(MINUTES * 60 + 900)
def test_chaos_soak_with_the_real_servers(tmp_path: Path) -> None:
    """Random jobs on the embedded path, Kafka and PostgreSQL (a broker and a server of
    this test's own), workers SIGKILLed every few seconds, the driver now and then
    (restore latest), occasional broker and database restarts. Every job's output must be
    exact (and the witnesses agree); each final driver's RSS and open fds may grow at most
    10 % after warm-up; no temporary files, processes or prepared transactions are left.
    Kills survived are printed and written to ``ONCEFLOW_SOAK_RESULTS``."""
    from brokers import OwnBroker, OwnPostgres
    from test_kafka import KJob
    from test_postgres import PgJob

    seed = int(os.environ.get("ONCEFLOW_TEST_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    broker = OwnBroker(tmp_path / "broker")
    pg = OwnPostgres()
    jobs_tmp = tmp_path / "tmpdir"  # TMPDIR of every job: must be empty at the end
    jobs_tmp.mkdir()
    env = {"TMPDIR": str(jobs_tmp)}
    counts = {"worker_kills": 0, "driver_kills": 0, "outages": 0, "jobs": 0}
    per_kind: dict[str, int] = {"embedded": 0, "kafka": 0, "postgres": 0}
    growth: list[dict[str, Any]] = []
    # processes, not pids: on a busy machine a pid seen an hour ago may be another's now
    # (psutil.Process compares and is_running()s by pid and start time)
    procs: set[psutil.Process] = set()

    def alive() -> list[int]:
        out = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    started = time.monotonic()
    deadline = started + MINUTES * 60
    tally = {"effects_expected": 0, "lost": 0, "duplicated": 0}
    failure: str | None = None
    broker.start()
    pg.start()
    import psycopg
    conn = psycopg.connect(pg.dsn, autocommit=True)

    def broker_restart() -> None:
        broker.kill()
        time.sleep(rng.uniform(1, 5))
        broker.start()

    def pg_restart() -> None:
        pg.kill()
        time.sleep(rng.uniform(0.5, 3))
        pg.start()

    try:
        while time.monotonic() < deadline:
            counts["jobs"] += 1
            kind = rng.choice(["embedded", "kafka", "postgres"])
            per_kind[kind] += 1
            run_dir = tmp_path / f"run{counts['jobs']}"
            run_dir.mkdir()
            job: Any
            outage: Callable[[], None] | None = None
            if kind == "embedded":
                shape = rng.choice(SHAPES)
                job = Job(run_dir, shape, "--parallelism", str(rng.choice([1, 2])), "--rate",
                          str(rng.choice([2000, 4000])), "--interval", "0.3",
                          "--backend", rng.choice(["memory", "rocksdb"]), env=env,
                          records=rng.choice([20_000, 40_000]))
            elif kind == "kafka":
                job = KJob(run_dir, broker.bootstrap, "--rate", str(rng.choice([150, 300])),
                           "--attempts", "100000", "--delay", "0.5",
                           records=rng.choice([3000, 6000]))
                job.env.update(env)
                outage = broker_restart
            else:
                job = PgJob(run_dir, pg.dsn, conn, "--rate", str(rng.choice([1500, 3000])),
                            "--attempts", "100000", "--delay", "0.5",
                            records=rng.choice([20_000, 40_000]), env=env)
                outage = pg_restart
            note = f"seed={seed} job={counts['jobs']} kind={kind}"
            if rng.random() < 0.4:  # a driver kill, then restore latest
                proc = job.start("--restore", "latest")
                time.sleep(rng.uniform(1.0, 4.0))
                procs.update(job.workers())
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                deadline_orphans = time.monotonic() + 10
                while alive() and time.monotonic() < deadline_orphans:
                    time.sleep(0.05)
                assert not alive(), f"workers {alive()} outlived their driver"
                counts["driver_kills"] += 1
            job.start("--restore", "latest")
            sampler = _Sampler()
            procs.add(psutil.Process(job.proc.pid))
            # the embedded jobs allow 20 restarts (crashjobs.py); one driver kill may
            # have used some
            _chaos(job, rng, rng.randint(2, 12), sampler, outage, counts, procs)
            code, _ = job.wait(timeout=600)
            assert code == 0, f"{note}: {job.tail(3000)}"
            if kind == "postgres":
                pg.start()
                job.reconnect()
                conn = job.conn
            elif kind == "kafka":
                broker.start()
            want, lost, dup = _lost_and_duplicated(kind, job)
            tally["effects_expected"] += want
            tally["lost"] += lost
            tally["duplicated"] += dup
            try:
                job.check_exact()
                if kind == "kafka":
                    broker.assert_witness(job.output, job.records)
                if kind == "postgres":
                    assert pg.prepared() == [], "pg_prepared_xacts not empty"
            except AssertionError as e:
                failure = f"{note}: {e}"
                raise AssertionError(failure) from None
            g = sampler.growth()
            if g is not None:
                growth.append({"job": counts["jobs"], "kind": kind, **g,
                               "samples": len(sampler.samples)})
    except BaseException as e:
        failure = failure or f"{type(e).__name__}: {e}"
        raise
    finally:
        conn.close()
        pg.remove()
        broker.remove()
        if failure is not None:  # the results file says so too
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({"seed": seed, "minutes": MINUTES, **counts,
                                           **tally, "failed": failure[:4000]}, indent=1))
    leftovers = [str(p) for p in jobs_tmp.rglob("*") if p.is_file()]
    left = alive()
    worst_rss = max((g["rss_growth"] for g in growth), default=None)
    worst_fd = max((g["fd_growth"] for g in growth), default=None)
    result = {"seed": seed, "minutes": MINUTES,
              "elapsed_s": round(time.monotonic() - started, 1), **counts,
              "kills_survived": counts["worker_kills"] + counts["driver_kills"],
              "jobs_by_kind": per_kind, **tally,
              "driver_growth": growth, "worst_rss_growth": worst_rss,
              "worst_fd_growth": worst_fd, "leftover_tmp_files": leftovers,
              "leftover_processes": left}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"\nsoak: {counts['jobs']} jobs {per_kind}, {tally}, survived {counts['worker_kills']} "
          f"worker kills, {counts['driver_kills']} driver kills, {counts['outages']} "
          f"broker/database restarts; worst driver growth after warm-up: RSS {worst_rss}, "
          f"fds {worst_fd}; results in {RESULTS}")
    assert tally["lost"] == 0 and tally["duplicated"] == 0, tally
    assert not leftovers, f"temporary files left: {leftovers[:10]}"
    assert not left, f"processes left: {left}"
    assert worst_rss is None or worst_rss <= 0.10, growth
    assert worst_fd is None or worst_fd <= 0.10, growth
