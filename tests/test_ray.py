"""The Ray executor on a simulated cluster (a head and two nodes on this machine, one
cluster for the whole module): the crash-test shapes commit what the fork executor commits;
a worker actor SIGKILLed mid-job and a node removed mid-job still give the exact output;
every data connection needs the job's token; a flow that cannot travel is refused at run().
The tests that kill workers, drivers and nodes keep their checkpoints on a real S3 store
(SeaweedFS, started inside the namespace by tests/s3store.py).

Ray binds to the machine's routable address, so this module runs inside a network
namespace that has only loopback (``scripts/netns-run``; ``make test`` runs it that way,
alone: ``scripts/netns-run .venv/bin/python -m pytest -m ray tests/test_ray.py``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import crashjobs
import psutil
import pytest
import s3store

import onceflow as of
from onceflow.executors.ray import TOKEN_BYTES, _dial, accept_authenticated

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent
# where scripts/kafka keeps its jars: read before the cluster fixture moves HOME
KAFKA_CACHE = os.environ.get("ONCEFLOW_CACHE") or str(Path.home() / ".cache" / "onceflow")
SEED = int(os.environ.get("ONCEFLOW_TEST_SEED", "20261201"))
SHAPES = ["keyed_count", "union_flatmap", "two_keyed", "text_wordcount", "mixed_parallelism"]
RECORDS = 6000
NODE: dict[str, Any] = {"num_cpus": 2, "resources": {"slot": 1}}  # every node: one "slot"
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 5}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    if os.environ.get("ONCEFLOW_IN_NETNS") != "1":
        pytest.fail("the Ray tests run in a loopback-only network namespace: "
                    "scripts/netns-run .venv/bin/python -m pytest -m ray tests/test_ray.py "
                    "(make test does this)")
    s3store.ensure_server()  # before HOME moves: the server's binary is cached under it
    tmp = tempfile.mkdtemp(prefix="onceflow-ray-")
    os.makedirs(os.path.join(tmp, "ray"))
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RAY_TMPDIR", "HOME",
                                            "PYTHONPATH", *s3store.ENV)}
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=tmp, HOME=tmp,
                      PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    # the store's endpoint and credentials reach the actors the way they would on a real
    # cluster: in the environment the nodes were started with
    os.environ.update(s3store.ENV)
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 1, "resources": {"slot": 1},
                                "include_dashboard": False, "_system_config": FAST_HEALTH})
    for _ in range(2):
        c.add_node(**NODE)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _flow(tmp: Path, shape: str, name: str, rate: float = 1e9,
          attempts: int = 0, storage: str | None = None) -> tuple[of.Flow, Path]:
    out = tmp / f"out-{name}"
    restart = (of.restart.fixed_delay(attempts=attempts, delay=0.0) if attempts
               else of.restart.no_restart())
    flow = of.Flow(f"ray-{shape}", parallelism=2, batch_size=64,
                   state_backend=of.state.MemoryBackend(full_every=3),
                   restart_strategy=restart)
    flow.enable_checkpointing(0.1, storage or tmp / f"ck-{name}", retained=2,
                              incremental=True)
    crashjobs.build(shape, flow, RECORDS, rate, str(out), str(tmp / "corpus"))
    return flow, out


def _actor_pids() -> list[int]:
    """The pids of the running onceflow workers: the processes the nodes' hosts forked
    (or worker actors, for GPU workers)."""
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "onceflow-worker" in cmd or "_WorkerActor.run" in cmd:
            pids.append(p.info["pid"])
    return pids


def _wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _completed_checkpoints(ck: Path) -> int:
    return len(list(ck.glob("*/chk-*/_metadata"))) if ck.exists() else 0


def test_nothing_listens_beyond_loopback(cluster: Any, tmp_path: Path) -> None:
    flow, _ = _flow(tmp_path, "keyed_count", "listen", rate=4000)
    t = threading.Thread(target=flow.run, kwargs={"executor": of.executors.Ray()})
    t.start()
    _wait_for(lambda: len(_actor_pids()) == 2, 60, "two worker actors")
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True,
                               check=True).stdout.split("\n")
    unix = _wait_for(lambda: "@onceflow-" in (out := subprocess.run(
        ["ss", "-Hxa"], capture_output=True, text=True, check=True).stdout) and out, 30,
        "the two actors' Unix socket")  # same host: the peers connect over a Unix socket
    t.join(120)
    assert not t.is_alive()
    addrs = [line.split()[3] for line in listening if line.strip()]
    assert len(addrs) > 5, addrs  # Ray's own servers are in the list
    local = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    assert [a for a in addrs if not a.startswith(local)] == []
    assert "ESTAB" in unix or "estab" in unix.lower(), unix


@pytest.mark.parametrize("shape", SHAPES)
def test_ray_commits_what_fork_commits(cluster: Any, tmp_path: Path, shape: str) -> None:
    # the fork executor runs in a process of its own (forking this one, which holds a Ray
    # connection, would share Ray's gRPC state with the children)
    out = tmp_path / "out-local"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "crashjobs.py"), shape, "--out", str(out),
         "--ckpt", str(tmp_path / "ck-local"), "--records", str(RECORDS), "--rate", "1e9",
         "--interval", "0.1", "--batch-size", "64", "--incremental",
         "--corpus", str(tmp_path / "corpus")],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    flow, out_ray = _flow(tmp_path, shape, "ray")
    r_ray = flow.run(executor=of.executors.Ray(placement="spread"))
    want = crashjobs.expected(shape, RECORDS, str(tmp_path / "corpus"))
    local, got = crashjobs.committed(str(out)), crashjobs.committed(str(out_ray))
    assert local == want, crashjobs.diff(local, want)
    assert got == local, crashjobs.diff(got, local)
    assert r_ray.records_in("files") == sum(want.values())
    assert r_ray.restarts == 0


def test_actor_per_worker_as_for_gpu_workers_commits_the_same(cluster: Any,
                                                               tmp_path: Path) -> None:
    """Workers that reserve a GPU run as one actor per bundle (Ray assigns GPUs to actors,
    not to processes a host forks); the cluster has no GPU, so that way is chosen here by
    hand: the same exact output, and the workers are actors, not forked processes."""
    flow, out = _flow(tmp_path, "keyed_count", "actors", rate=3000)
    executor = of.executors.Ray(placement="spread")
    executor._forks = False
    t, box = _run_in_thread(flow, executor)
    pids = _wait_for(lambda: (p if len(p := _actor_pids()) == 2 else None), 60, "workers")
    titles = [" ".join(psutil.Process(p).cmdline()) for p in pids]
    t.join(120)
    assert not t.is_alive() and "error" not in box, box.get("error")
    assert all("_WorkerActor.run" in c for c in titles), titles
    want = crashjobs.expected("keyed_count", RECORDS)
    got = crashjobs.committed(str(out))
    assert got == want, crashjobs.diff(got, want)


def _finished(t: threading.Thread, box: dict[str, Any]) -> Any:
    """The JobResult of a run in ``t`` (from :func:`_run_in_thread`), once it ended."""
    t.join(180)
    assert not t.is_alive()
    assert "error" not in box, box.get("error")
    return box["result"]


def _finished_exact(t: threading.Thread, box: dict[str, Any], out: Path) -> Any:
    """:func:`_finished`, and the keyed_count output in ``out`` equals the reference."""
    r = _finished(t, box)
    want = crashjobs.expected("keyed_count", RECORDS)
    got = crashjobs.committed(str(out))
    assert got == want, crashjobs.diff(got, want)
    return r


def _run_in_thread(flow: of.Flow, executor: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["result"] = flow.run(executor=executor)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=go)
    t.start()
    return t, box


def test_sigkilled_actor_gives_exact_output(cluster: Any, tmp_path: Path,
                                            checkpoint_storage: str) -> None:
    flow, out = _flow(tmp_path, "keyed_count", "kill", rate=800, attempts=3,
                      storage=checkpoint_storage)
    t, box = _run_in_thread(flow, of.executors.Ray())
    pids = _wait_for(lambda: (p if len(p := _actor_pids()) == 2 else None), 60, "actors")
    _wait_for(lambda: _latest_checkpoint(checkpoint_storage, "ray-keyed_count") >= 0, 60,
              "a checkpoint")
    hosts = {psutil.Process(p).ppid() for p in pids}  # the nodes' long-lived host actors
    os.kill(pids[0], signal.SIGKILL)
    # the restart forks the new attempt's workers from the same hosts (warm: no new Ray
    # worker process)
    again = _wait_for(lambda: (p if len(p := set(_actor_pids()) - set(pids)) == 2 else None)
                      or not t.is_alive(), 60, "the next attempt's workers")
    r = _finished_exact(t, box, out)
    assert r.restarts >= 1
    assert any("Ray actor" in f and "SIGKILL" in f for f in r.failures), r.failures
    assert again is not True, "the job ended before its next attempt's workers were seen"
    assert {psutil.Process(p).ppid() for p in again if psutil.pid_exists(p)} <= hosts
    on_store = s3store.keys(checkpoint_storage)
    assert any(k.endswith("/_metadata") for k in on_store), sorted(on_store)[:20]
    assert not (tmp_path / "ck-kill").exists()


def test_killed_host_takes_its_workers_with_it(cluster: Any, tmp_path: Path) -> None:
    """SIGKILL of a node's host actor (the Ray actor that forks the workers of its node):
    the worker processes it forked die with it at once (parent-death signal), the attempt
    fails, the next one gets a new host there, and the output is exact."""
    flow, out = _flow(tmp_path, "keyed_count", "host", rate=800, attempts=3)
    t, box = _run_in_thread(flow, of.executors.Ray())
    pids = _wait_for(lambda: (p if len(p := _actor_pids()) == 2 else None), 60, "workers")
    _wait_for(lambda: _completed_checkpoints(tmp_path / "ck-host") >= 1, 60, "a checkpoint")
    host = psutil.Process(pids[0]).ppid()
    orphans = [p for p in pids if psutil.Process(p).ppid() == host]
    assert "_WorkerHost" in " ".join(psutil.Process(host).cmdline())
    os.kill(host, signal.SIGKILL)
    _wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                              != psutil.STATUS_ZOMBIE for p in orphans), 10,
              "the host's workers to die with it")
    r = _finished_exact(t, box, out)
    assert r.restarts >= 1
    assert any("died with its host" in f for f in r.failures), r.failures


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(20)
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def test_token_is_required_on_every_connection() -> None:
    """The handshake every actor runs on its listener (the driver's control connection
    and every peer's): a connection without the job's token is closed, and the ones with
    it are still accepted after it."""
    token = b"t" * TOKEN_BYTES
    listener = socket.create_server(("127.0.0.1", 0))
    addr = listener.getsockname()
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.update(
        got=accept_authenticated(listener, token, {-1, 1}, time.monotonic() + 30)))
    t.start()
    raw = socket.create_connection(addr)  # a raw socket without the token
    raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"x" * 40)
    assert _closed_by_peer(raw)
    wrong = socket.create_connection(addr)  # right length, wrong token
    wrong.sendall(b"u" * TOKEN_BYTES + (-1).to_bytes(4, "big", signed=True))
    assert _closed_by_peer(wrong)
    good = [_dial(addr, token, -1), _dial(addr, token, 1)]
    t.join(30)
    assert sorted(box["got"]) == [-1, 1]
    for s in [raw, wrong, *good, *box["got"].values(), listener]:
        s.close()


def test_a_worker_actor_refuses_a_connection_without_the_token(cluster: Any) -> None:
    """Against a real worker actor on the cluster: a raw connection to its TCP listener,
    and one to its Unix socket for same-host peers, is closed; the driver's connection
    with the token becomes its control connection (the worker, given a spec it cannot
    run, reports that failure over it)."""
    import ray
    from ray import cloudpickle

    from onceflow.executors.ray import _WorkerActor
    from onceflow.runtime import messages as m

    token = os.urandom(TOKEN_BYTES)
    actor = ray.remote(_WorkerActor).options(num_cpus=0).remote()
    try:
        blob = cloudpickle.dumps(types.SimpleNamespace(index=0))
        host, port, _, _, local = ray.get(actor.prepare.remote(blob, token, None),
                                          timeout=60)
        assert host == "127.0.0.1"
        assert local is not None and local.startswith("\0onceflow-")  # same-host peers
        done = actor.run.remote([(host, port)], [local])
        raw = socket.create_connection((host, port))
        raw.sendall(b"\0" * (TOKEN_BYTES + 4))  # the driver's role, no token
        assert _closed_by_peer(raw)
        raw_local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw_local.connect(local)  # the Unix socket checks the token the same way
        raw_local.sendall(b"\0" * (TOKEN_BYTES + 4))
        assert _closed_by_peer(raw_local)
        raw_local.close()
        ctrl = Connection(_dial((host, port), token, -1).detach())
        assert ctrl.poll(60)
        msg = m.recv(ctrl)
        assert isinstance(msg, m.Failed) and msg.worker == 0
        assert ray.get(done, timeout=60) == 1
        raw.close()
        ctrl.close()
    finally:
        ray.kill(actor)


def test_a_forked_worker_refuses_a_connection_without_the_token(cluster: Any) -> None:
    """The same against a worker process forked by a node's host actor (how workers run):
    raw connections to its TCP listener and to its Unix socket are closed, the driver's
    connection with the token becomes its control connection; and ending an attempt
    (``kill``) returns once the host has reaped that attempt's processes."""
    import ray
    from ray import cloudpickle

    from onceflow.executors.ray import _WorkerHost
    from onceflow.runtime import messages as m

    token = os.urandom(TOKEN_BYTES)
    host = ray.remote(_WorkerHost).options(num_cpus=0, max_concurrency=8).remote()
    try:
        blob = cloudpickle.dumps(types.SimpleNamespace(index=0))
        addr, port, pid, _, local = ray.get(
            host.fork_worker.remote("a1", 0, blob, token, None), timeout=60)
        assert addr == "127.0.0.1" and local is not None and local.startswith("\0onceflow-")
        assert "onceflow-worker" in " ".join(psutil.Process(pid).cmdline())
        done = host.run_worker.remote("a1", 0, [(addr, port)], [local])
        raw = socket.create_connection((addr, port))
        raw.sendall(b"\0" * (TOKEN_BYTES + 4))
        assert _closed_by_peer(raw)
        raw_local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw_local.connect(local)
        raw_local.sendall(b"\0" * (TOKEN_BYTES + 4))
        assert _closed_by_peer(raw_local)
        raw_local.close()
        ctrl = Connection(_dial((addr, port), token, -1).detach())
        assert ctrl.poll(60)
        msg = m.recv(ctrl)
        assert isinstance(msg, m.Failed) and msg.worker == 0
        status = ray.get(done, timeout=60)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
        raw.close()
        ctrl.close()
        # a second attempt's process, killed before it was wired
        _, _, pid2, _, _ = ray.get(host.fork_worker.remote("a2", 0, blob, token, None),
                                   timeout=60)
        assert psutil.pid_exists(pid2)
        assert ray.get(host.kill.remote("a2"), timeout=60) == 1
        assert not psutil.pid_exists(pid2)  # killed and reaped
    finally:
        ray.kill(host)


def test_unpicklable_capture_fails_at_run_naming_the_operator(cluster: Any) -> None:
    lock = threading.Lock()

    def guarded(x: int) -> int:
        with lock:
            return x

    flow = of.Flow("ray-lock", parallelism=2)
    (flow.source(of.sources.Range(0, 100), name="n").map(guarded, name="guarded-map")
         .sink(of.sinks.Discard(), name="out"))
    with pytest.raises(of.ConfigurationError) as e:
        flow.run(executor=of.executors.Ray())
    assert "'guarded-map'" in str(e.value) and "lock" in str(e.value)
    assert "open()" in str(e.value)


def test_module_missing_on_the_nodes_says_how_to_ship_it(cluster: Any,
                                                          tmp_path: Path) -> None:
    (tmp_path / "only_on_driver.py").write_text("def double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_on_driver

        flow = of.Flow("ray-missing", parallelism=1)
        (flow.source(of.sources.Range(0, 100), name="n")
             .map(only_on_driver.double, name="double")
             .sink(of.sinks.Discard(), name="out"))
        with pytest.raises(of.ConfigurationError) as e:
            flow.run(executor=of.executors.Ray())
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_on_driver", None)
    msg = str(e.value)
    assert "only_on_driver" in msg and "runtime_env" in msg and "install" in msg


def test_cli_runs_a_job_on_ray(cluster: Any, tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(
        "import onceflow as of\n"
        "flow = of.Flow('cli-ray', parallelism=2)\n"
        "(flow.source(of.sources.Range(0, 5000), name='n')\n"
        "     .map(lambda i: (i % 3, i), name='pairs').key_by(lambda kv: kv[0])\n"
        "     .reduce(lambda a, b: (a[0], a[1] + b[1]), name='sum')\n"
        f"     .sink(of.sinks.FileSink({str(tmp_path / 'out')!r}), name='files'))\n")
    proc = subprocess.run([sys.executable, "-c", "import sys; from onceflow.cli import main; "
                           "sys.exit(main())", "run", str(job),
                           "--ray", cluster.address, "--no-progress"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = crashjobs.committed(str(tmp_path / "out"))
    sums: dict[int, int] = {}
    for i in range(5000):
        sums[i % 3] = sums.get(i % 3, 0) + i
    assert {k: max(v for kk, v in got if kk == k) for k in sums} == sums  # the final sums
    assert sum(got.values()) == 5000


@pytest.fixture
def checkpoint_storage() -> str:
    """Where the actor-kill, driver-kill, rescale and lower-parallelism tests keep their
    checkpoints: a fresh prefix on the S3 store (the endpoint and credentials are in the
    environment the cluster's nodes started with)."""
    return f"s3://{s3store.BUCKET}/ray-{uuid.uuid4().hex[:12]}"


KEYED = "crash-keyed_count"  # the flow tests/crashjobs.py runs for keyed_count


def _latest_checkpoint(storage: str, flow: str = KEYED) -> int:
    """The id of the newest complete checkpoint of ``flow`` in ``storage`` (-1: none)."""
    from onceflow.checkpoint.storage import open_storage

    return max(open_storage(storage, flow).complete_ids(), default=-1)


def _driver(cluster: Any, tmp: Path, storage: str, parallelism: int,
            restore: str | None = None, rate: float = 500.0) -> subprocess.Popen[str]:
    """A driver process running ``keyed_count`` on the cluster (``tests/crashjobs.py``);
    every driver of one test shares the output and checkpoint directories."""
    args = [sys.executable, str(ROOT / "tests" / "crashjobs.py"), "keyed_count",
            "--out", str(tmp / "out"), "--ckpt", storage, "--records", str(RECORDS),
            "--rate", str(rate), "--interval", "0.1", "--batch-size", "64", "--incremental",
            "--parallelism", str(parallelism), "--ray", cluster.address]
    if restore is not None:
        args += ["--restore", restore]
    log = open(tmp / f"driver-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)


def _finish(proc: subprocess.Popen[str], tmp: Path) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=180)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp.glob("driver-*.log")))
    assert proc.returncode == 0, logs
    lines = [line for line in out.splitlines() if line.startswith('{"restarts"')]
    assert lines, out[-3000:]  # Ray may print to stdout too
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _kill_driver_after_checkpoint(proc: subprocess.Popen[str], storage: str, after: int,
                                  workers: int) -> set[int]:
    """SIGKILL the driver once its ``workers`` actors run and a checkpoint newer than
    ``after`` completed; the pids of its actors."""
    pids = _wait_for(lambda: (p if len(p := set(_actor_pids())) == workers else None), 90,
                     f"{workers} worker actors")
    _wait_for(lambda: _latest_checkpoint(storage) > after or proc.poll() is not None, 90,
              f"a checkpoint after {after}")
    assert proc.poll() is None, "the job finished before the driver was killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    return pids


def test_killed_driver_resumed_with_restore_latest_and_zombie_never_commits(
        cluster: Any, tmp_path: Path, checkpoint_storage: str) -> None:
    """The driver process is SIGKILLed mid-job. Just before, the node of one of its actors
    was frozen (SIGSTOP of the node's raylet and its processes: a node cut off), so Ray
    cannot end that actor: it is a zombie of the dead driver. A new driver resumes with
    restore="latest" on the other nodes; once it completed a checkpoint the zombie's node
    is thawed and the zombie runs on: it must never commit (no driver is left to tell it a
    checkpoint completed, and its token opens none of the new actors' listeners). The
    committed output equals the failure-free run exactly, and the zombie ends."""
    first = _driver(cluster, tmp_path, checkpoint_storage, 2)
    pids = _wait_for(lambda: (p if len(p := set(_actor_pids())) == 2 else None), 90,
                     "two worker actors")
    _wait_for(lambda: _latest_checkpoint(checkpoint_storage) >= 0 or first.poll() is not None,
              90, "a checkpoint")
    assert first.poll() is None, "the job finished before the driver was killed"
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in cluster.worker_nodes}
    zombie = next((p for p in pids if _raylet_of(p) in raylets), None)
    assert zombie is not None, "no worker actor on a non-head node"
    node = raylets[_raylet_of(zombie)]
    raylet = psutil.Process(_raylet_of(zombie))
    frozen = [raylet, *raylet.children(recursive=True)]
    for p in frozen:
        p.suspend()
    try:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
        killed_at = _latest_checkpoint(checkpoint_storage)
        second = _driver(cluster, tmp_path, checkpoint_storage, 2, restore="latest", rate=2000)
        _wait_for(lambda: _latest_checkpoint(checkpoint_storage) > killed_at
                  or second.poll() is not None, 90, "a checkpoint of the new driver")
        assert psutil.Process(zombie).status() == psutil.STATUS_STOPPED
    finally:
        for p in frozen:
            try:
                p.resume()
            except psutil.NoSuchProcess:
                pass
    try:
        result = _finish(second, tmp_path)
        want = crashjobs.expected("keyed_count", RECORDS)
        got = crashjobs.committed(str(tmp_path / "out"))
        assert got == want, crashjobs.diff(got, want)
        assert result["restored_from"] is not None and result["sink_in"] == RECORDS
        _wait_for(lambda: not psutil.pid_exists(zombie)
                  or psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE, 60,
                  "the zombie actor to end")
    finally:
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()  # the next test starts with every node registered


def test_rescale_from_three_nodes_to_one_and_back(cluster: Any, tmp_path: Path,
                                                   checkpoint_storage: str) -> None:
    """A checkpoint taken at parallelism 3 with a worker on each of the three nodes; the
    job resumed from it at parallelism 1 (one node) until a new checkpoint, then at 3
    again to the end (each driver SIGKILLed mid-job): the committed output is exact."""
    first = _driver(cluster, tmp_path, checkpoint_storage, 3, rate=400)
    pids = _kill_driver_after_checkpoint(first, checkpoint_storage, -1, 3)
    assert len({_raylet_of(p) for p in pids}) == 3, "the three workers share a node"
    ck = checkpoint_storage
    second = _driver(cluster, tmp_path, ck, 1, restore="latest", rate=400)
    _kill_driver_after_checkpoint(second, ck, _latest_checkpoint(ck), 1)
    third = _driver(cluster, tmp_path, ck, 3, restore="latest", rate=5000)  # on to the end
    result = _finish(third, tmp_path)
    want = crashjobs.expected("keyed_count", RECORDS)
    got = crashjobs.committed(str(tmp_path / "out"))
    assert got == want, crashjobs.diff(got, want)
    assert result["sink_in"] == RECORDS


def _raylet_of(pid: int) -> int:
    """The pid of the raylet (simulated node) that started process ``pid``."""
    p: psutil.Process | None = psutil.Process(pid)
    while p is not None and "raylet" not in p.name():
        p = p.parent()
    assert p is not None, f"process {pid} is not under a raylet"
    return p.pid


@pytest.mark.soak
def test_removed_node_gives_exact_output(cluster: Any, tmp_path: Path) -> None:
    """It removes a node (and adds a fresh one back after). In the soak run only: the
    normal run removes a node in test_lost_node_lowers_the_parallelism_when_allowed."""
    flow, out = _flow(tmp_path, "keyed_count", "node", rate=800, attempts=3)
    t, box = _run_in_thread(flow, of.executors.Ray(placement="spread"))
    pids = _wait_for(lambda: (p if len(p := _actor_pids()) == 2 else None), 60, "actors")
    _wait_for(lambda: _completed_checkpoints(tmp_path / "ck-node") >= 1, 60, "a checkpoint")
    victim = None
    for node in cluster.worker_nodes:
        raylet = node.all_processes["raylet"][0].process.pid
        kids = {p.pid for p in psutil.Process(raylet).children(recursive=True)}
        if kids & set(pids):
            victim = node
            break
    assert victim is not None, "no worker actor on a non-head node"
    cluster.remove_node(victim, allow_graceful=False)
    try:
        assert _finished_exact(t, box, out).restarts >= 1
    finally:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()  # the next test starts with every node registered


def test_no_room_without_the_option_names_what_is_missing(cluster: Any) -> None:
    flow = of.Flow("ray-no-room", parallelism=4)
    (flow.source(of.sources.Range(0, 100), name="n").map(lambda x: x, name="same")
         .sink(of.sinks.Discard(), name="out"))
    with pytest.raises(of.ConfigurationError) as e:
        flow.run(executor=of.executors.Ray(resources_per_worker={"CPU": 0.5, "slot": 1},
                                           placement_timeout=1.0))
    msg = str(e.value)
    assert "no room for 4 workers" in msg and "'slot': 1" in msg
    assert "hold 3 such worker(s)" in msg and "allow_lower_parallelism=True" in msg


def test_lost_node_lowers_the_parallelism_when_allowed(cluster: Any, tmp_path: Path,
                                                       checkpoint_storage: str) -> None:
    """Three nodes with one slot each, a worker on each; a node is removed mid-job, so the
    next attempt's three workers fit nowhere: with allow_lower_parallelism the job goes on
    at parallelism 2 from the latest checkpoint (a rescale by key group), says so, and
    commits exactly the failure-free output."""
    out = tmp_path / "out"
    flow = of.Flow("ray-lower", parallelism=3, batch_size=64,
                   state_backend=of.state.MemoryBackend(full_every=3),
                   restart_strategy=of.restart.fixed_delay(attempts=3, delay=0.0))
    flow.enable_checkpointing(0.1, checkpoint_storage, retained=2, incremental=True)
    # 24 s of input at least: the node must go while the job runs, however slowly the
    # first checkpoint reaches the store under load
    crashjobs.build("keyed_count", flow, RECORDS, 250, str(out), "")
    executor = of.executors.Ray(placement="spread", resources_per_worker={"CPU": 1, "slot": 1},
                                placement_timeout=2.0, allow_lower_parallelism=True)
    t, box = _run_in_thread(flow, executor)
    pids = _wait_for(lambda: (p if len(p := _actor_pids()) == 3 else None), 60, "actors")
    _wait_for(lambda: _latest_checkpoint(checkpoint_storage, "ray-lower") >= 0, 60,
              "a checkpoint")
    raylets = {_raylet_of(p) for p in pids}
    assert len(raylets) == 3, "the three workers share a node"
    victim = next(n for n in cluster.worker_nodes
                  if n.all_processes["raylet"][0].process.pid in raylets)
    assert t.is_alive(), "the job ended before the node could be removed; make it longer"
    cluster.remove_node(victim, allow_graceful=False)
    try:
        r = _finished_exact(t, box, out)
        assert r.restarts >= 1
        assert r.rescales and r.rescales[0].startswith("parallelism 3 -> 2: "), r.rescales
        assert r.operators["count"].parallelism == 2
    finally:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()  # the next test starts with every node registered


@pytest.mark.soak
def test_a_node_cut_off_is_noticed_through_ray(cluster: Any, tmp_path: Path) -> None:
    """A node that is cut off (its raylet and processes frozen with SIGSTOP) closes no
    connection; Ray's health checks declare it dead, the executor sees its actor dead and
    fails the attempt at once (not after the checkpoint timeout, 10 minutes here), and the
    job restarts on the other nodes with the exact output."""
    flow, out = _flow(tmp_path, "keyed_count", "cut", rate=800, attempts=3)
    t, box = _run_in_thread(flow, of.executors.Ray(placement="spread"))
    pids = _wait_for(lambda: (p if len(p := _actor_pids()) == 2 else None), 60, "actors")
    _wait_for(lambda: _completed_checkpoints(tmp_path / "ck-cut") >= 1, 60, "a checkpoint")
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in cluster.worker_nodes}
    victim = next((p for p in pids if _raylet_of(p) in raylets), None)
    assert victim is not None, "no worker actor on a non-head node"
    raylet = psutil.Process(_raylet_of(victim))
    node = raylets[raylet.pid]
    frozen = [raylet, *raylet.children(recursive=True)]
    for p in frozen:
        p.suspend()
    try:
        t.join(120)
        assert not t.is_alive(), "the cut-off node was not noticed"
    finally:
        for p in frozen:
            try:
                p.resume()
            except psutil.NoSuchProcess:
                pass
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()  # the next test starts with every node registered
    assert "error" not in box, box.get("error")
    r = box["result"]
    want = crashjobs.expected("keyed_count", RECORDS)
    got = crashjobs.committed(str(out))
    assert got == want, crashjobs.diff(got, want)
    assert r.restarts >= 1 and any("died" in f for f in r.failures), r.failures


# --- a Kafka job (keyed exchange, transactional Kafka sink) under random kills ----------
@pytest.fixture(scope="module")
def kafka_in_namespace() -> Iterator[str]:
    """A Kafka broker of this module's own, inside its network namespace (the machine's
    shared broker is on the other loopback, out of reach here): its own data directory,
    stopped at the end of the module."""
    data = tempfile.mkdtemp(prefix="onceflow-ray-kafka-")
    env = {**os.environ, "ONCEFLOW_KAFKA_DIR": data, "ONCEFLOW_KAFKA_PORT": "39292",
           "ONCEFLOW_KAFKA_CONTROLLER_PORT": "39293", "ONCEFLOW_CACHE": KAFKA_CACHE}
    kafka = str(ROOT / "scripts" / "kafka")
    proc = subprocess.run([kafka, "start"], capture_output=True, text=True, timeout=180,
                          env=env)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"scripts/kafka start (in the namespace) failed ({proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}")
    bootstrap = proc.stdout.strip().splitlines()[-1]
    try:
        yield bootstrap
    finally:
        subprocess.run([kafka, "stop"], capture_output=True, text=True, timeout=60, env=env)
        from kafka_util import TOPICS
        TOPICS.forget(bootstrap)  # its topics go with its data directory
        shutil.rmtree(data, ignore_errors=True)


def _read_committed(bootstrap: str, topic: str, timeout: float = 60.0
                    ) -> list[tuple[int, int, Any]]:
    """What a read_committed consumer sees in ``topic``: [(partition, offset, value)],
    once it has reached the end of every partition and nothing more came for a second."""
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                     "isolation.level": "read_committed", "enable.auto.commit": False,
                     "enable.partition.eof": True})
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
    out: list[tuple[int, int, Any]] = []
    at_end: set[int] = set()
    deadline, quiet = time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                if len(at_end) == len(parts):
                    quiet = quiet or time.monotonic() + 1.0
                    if time.monotonic() > quiet:
                        return out
                continue
            if msg.error():
                if msg.error().code() == ck.KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise ck.KafkaException(msg.error())
            at_end.discard(msg.partition())
            quiet = None
            out.append((msg.partition(), msg.offset(), json.loads(msg.value())))
    finally:
        c.close()
    raise AssertionError(f"{topic}: the end of every partition not reached in {timeout}s")


def _kafka_totals_with_kills(bootstrap: str, storage: str, records: int, kills: int,
                             rng: random.Random) -> None:
    """tests/kafkajobs.py's job (Kafka -> keyed running total -> transactional Kafka sink)
    at parallelism 2 on the cluster, checkpoints on the S3 store; ``kills`` times a random
    worker process is SIGKILLed at a random moment: what a read_committed reader sees is
    every input's effect exactly once, in order per key."""
    import confluent_kafka as ck
    import kafka_util
    import kafkajobs

    inp = kafka_util.new_topic(bootstrap, 4, "ray-in")
    out = kafka_util.new_topic(bootstrap, 4, "ray-out")
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(records):
        producer.produce(inp, json.dumps(kafkajobs.make_input(i)).encode(), partition=i % 4)
    assert producer.flush(30) == 0
    flow = of.Flow("ray-kafka-totals", parallelism=2, batch_size=64,
                   restart_strategy=of.restart.fixed_delay(attempts=kills + 5, delay=0.2))
    flow.enable_checkpointing(0.3, storage, retained=2, timeout=30)
    kafkajobs.build(flow, bootstrap, inp, out, 150, None)
    t, box = _run_in_thread(flow, of.executors.Ray(placement="spread"))
    killed: set[int] = set()
    for _ in range(kills):
        pids = _wait_for(lambda gone=frozenset(killed): (  # not the earlier attempts'
            p if len(p := set(_actor_pids()) - gone) == 2 else None) or not t.is_alive(),
            60, "the attempt's two workers")
        if pids is True:
            break
        time.sleep(rng.uniform(0.5, 2.5))
        if not t.is_alive():
            break
        victim = rng.choice(sorted(pids))
        os.kill(victim, signal.SIGKILL)
        killed.update(pids)
    assert killed and _finished(t, box).restarts >= 1, "no worker was killed while the job ran"
    got = _read_committed(bootstrap, out)
    problems = kafkajobs.check_output(got, records)
    assert problems == [], problems[:10]


def test_kafka_totals_with_random_kills_are_exact(
        cluster: Any, kafka_in_namespace: str, checkpoint_storage: str) -> None:
    _kafka_totals_with_kills(kafka_in_namespace, checkpoint_storage, 1500, 2,
                             random.Random(f"{SEED}-ray-kafka"))


@pytest.mark.soak
def test_kafka_totals_with_many_random_kills_are_exact(
        cluster: Any, kafka_in_namespace: str, checkpoint_storage: str) -> None:
    _kafka_totals_with_kills(kafka_in_namespace, checkpoint_storage, 6000, 8,
                             random.Random(f"{SEED}-ray-kafka-soak"))
