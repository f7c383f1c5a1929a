"""``Ray``: every worker of an attempt runs on a Ray node, placed by a placement group.

Ray places, starts and supervises; it never carries records. Every node that can hold a
worker runs one long-lived *host* actor (:class:`_WorkerHost`, no resources of its own)
that has onceflow imported and forks a fresh process for each worker of each attempt on its
node, so a restart costs forks, not new Ray worker processes (seconds of imports). Each
attempt:

1. the spec of every worker is serialised with cloudpickle *in the driver*, so a flow that
   captures something that cannot travel (a lock, an open connection) is refused at
   ``run()`` with the operator's name;
2. a placement group with one bundle per worker (``placement="pack"`` or ``"spread"``,
   ``resources_per_worker`` each) reserves the resources (the failed attempt's group again
   when all its nodes are alive), and the host of each bundle's node forks that worker. The
   process loads its spec (a module the node cannot import is refused here, with how to
   ship it) and opens a TCP listener on its node's address (and a Unix socket for peers on
   the same host);
3. the driver collects the listeners' addresses and hands them to every worker: worker
   ``j`` connects to every worker ``i < j`` (each pair once), and the driver connects to
   each for its control connection. Every connection starts with the attempt's random
   token (:data:`TOKEN_BYTES` bytes, checked with ``hmac.compare_digest``) and who is
   connecting; a connection without it is closed;
4. the process runs :func:`onceflow.runtime.worker.worker_main` on those sockets, as a
   forked worker of the fork executor does. It never calls into Ray, and dies with its
   host (``PR_SET_PDEATHSIG``).

Failures: a worker process or host that dies (SIGKILL, its node lost) closes its sockets,
so the driver sees EOF; :meth:`Workers.exit_reason` says why (the host's wait status, or
Ray's reason for the host's death). ``stop()`` has every host SIGKILL the attempt's
processes and returns once each host reaped them, or Ray reports the host dead; a worker
whose node is only unreachable also sees its control connection close and leaves its loop
(the fence). Workers that reserve a GPU run as one actor per bundle instead
(:class:`_WorkerActor`, started for each attempt): Ray assigns GPUs to actors.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NoReturn

from onceflow.errors import ConfigurationError
from onceflow.executors.base import Executor, FewerSlots, Workers

if TYPE_CHECKING:
    from onceflow.runtime.worker import WorkerSpec

log = logging.getLogger("onceflow")

TOKEN_BYTES = 32
_HELLO = struct.Struct("!i")  # who connects: -1 the driver, else the worker index
_DRIVER = -1
_AF_UNIX: socket.AddressFamily = getattr(socket, "AF_UNIX", socket.AF_INET)
_WIRE_TIMEOUT = 60.0  # seconds for all connections of an attempt to arrive
_STOP_TIMEOUT = 30.0  # seconds for Ray to report every killed actor dead
_PLACE_CHECK = 0.5  # seconds between looks at the cluster while a placement group waits
_START_TRIES = 3  # starts of an attempt's actors when one dies while they are wired
_PLACE_STUCK = 10.0  # seconds before a group that fits the free resources is given up
_HOST_CONCURRENCY = 128  # calls a host serves at once (one waits on each of its workers)


class Ray(Executor):
    """Run each worker on a Ray cluster (a process forked by its node's host actor).

    ``address``: ``None`` (a Ray already initialised in this process, else a new local
    one), ``"auto"`` (the cluster this machine belongs to) or ``"ray://host:10001"``.
    ``placement``: ``"pack"`` (as few nodes as possible) or ``"spread"`` (across nodes).
    ``resources_per_worker``: what each worker's bundle reserves (default one CPU).
    ``runtime_env``: Ray's runtime environment for the actors (e.g. ``{"py_modules":
    [...]}`` or ``{"working_dir": "."}`` to ship the job's code).
    ``bind_host``: the address the actors listen on (default: their node's address).
    ``placement_timeout``: seconds to wait for the placement group of an attempt.
    ``allow_lower_parallelism``: when the cluster cannot hold the job's workers within
    ``placement_timeout`` (a node was lost), run with as many as its alive nodes hold,
    rescaled by key group from the same checkpoint, instead of failing.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, placement: str = "pack",
                 resources_per_worker: dict[str, float] | None = None,
                 runtime_env: dict[str, Any] | None = None,
                 bind_host: str | None = None, init_kwargs: dict[str, Any] | None = None,
                 placement_timeout: float = 60.0,
                 allow_lower_parallelism: bool = False) -> None:
        if placement not in ("pack", "spread"):
            raise ConfigurationError(
                f"of.executors.Ray(placement={placement!r}): use 'pack' or 'spread'")
        res = dict(resources_per_worker or {"CPU": 1.0})
        for k, v in res.items():
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigurationError(
                    f"of.executors.Ray(resources_per_worker={{{k!r}: {v!r}}}): amounts are "
                    "numbers >= 0")
        self.address = address
        self.placement = placement
        self.resources_per_worker = res
        self.runtime_env = runtime_env
        self.bind_host = bind_host
        self.init_kwargs = dict(init_kwargs or {})
        self.placement_timeout = placement_timeout
        self.allow_lower_parallelism = allow_lower_parallelism
        # the next attempt's placement group and actors, started when one fails (_prewarm)
        self._standby: tuple[Any, list[Any]] | None = None
        self._standby_n = 0
        # warm hosts (_WorkerHost): one per node, forking each attempt's worker processes;
        # not for GPU workers (Ray assigns a GPU to an actor, not to a process it forks)
        self._forks = "GPU" not in res and hasattr(os, "fork")
        self._hosts: dict[str, Any] = {}  # node id -> its host actor
        self._kept: tuple[int, Any] | None = None  # (bundles, group) of the failed attempt

    def __repr__(self) -> str:
        return (f"Ray(address={self.address!r}, placement={self.placement!r}, "
                f"resources_per_worker={self.resources_per_worker!r}"
                + (", allow_lower_parallelism=True" if self.allow_lower_parallelism else "")
                + ")")

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError as e:
            raise ConfigurationError(
                "of.executors.Ray needs Ray: pip install 'onceflow[ray]'") from e
        if isinstance(self.address, str) and self.address.startswith("ray://"):
            try:  # Ray Client is an extra of Ray that onceflow does not install
                import grpc  # noqa: F401
            except ImportError:
                raise ConfigurationError(
                    f"of.executors.Ray(address={self.address!r}): a ray:// address connects "
                    "through Ray Client, which this installation lacks (no grpc): pip install "
                    f"\"ray[client]=={getattr(ray, '__version__', '2.60.0')}\", or run the "
                    "job on a machine of the cluster with address=\"auto\"") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False,
                     log_to_driver=True, **self.init_kwargs)
        return ray

    def start(self, specs: Sequence[WorkerSpec]) -> Workers:
        blobs = [_serialise(s) for s in specs]  # refused here, before anything starts
        ray = self._connect()
        for tries in range(_START_TRIES):
            try:
                if self._forks:
                    return self._start_hosted(ray, specs, blobs)
                return self._start(ray, specs, blobs)
            except (ray.exceptions.RayActorError, OSError) as e:
                # an actor (or its node) died while the attempt was being wired: the
                # partial attempt is stopped; start it again on what is alive
                if tries == _START_TRIES - 1:
                    raise
                log.warning("executor Ray: a worker actor died while starting (%s: %s); "
                            "starting the attempt's workers again", type(e).__name__,
                            str(e).splitlines()[0] if str(e) else "")
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def _start(self, ray: Any, specs: Sequence[WorkerSpec], blobs: list[bytes]) -> Workers:
        n = len(specs)
        t0 = time.monotonic()
        token = secrets.token_bytes(TOKEN_BYTES)
        workers = _Actors(ray, token)
        try:
            standby = self._take_standby(n)
            if standby is not None:  # started while the previous attempt was fenced
                workers.pg, actors = standby
                workers.actors = dict(enumerate(actors))
            if not self._place(ray, n, workers):
                for a in workers.actors.values():  # placed again: in the old group
                    ray.kill(a, no_restart=True)
                workers.actors = {}
            placed = time.monotonic()
            if not workers.actors:
                workers.actors = dict(enumerate(self._new_actors(ray, n, workers.pg)))
            prepared = [workers.actors[w].prepare.remote(blobs[w], token, self.bind_host)
                        for w in range(n)]
            addrs: list[tuple[str, int]] = []
            local_names: list[str | None] = []
            for w, ref in enumerate(prepared):
                try:
                    host, port, pid, node, local = ray.get(ref, timeout=_WIRE_TIMEOUT)
                except ray.exceptions.RayTaskError as e:
                    raise _load_error(specs[w], e) from None
                addrs.append((host, port))
                local_names.append(local)
                workers.pids[w] = pid
                workers.nodes[w] = node
            workers.addresses = addrs
            prepared_at = time.monotonic()
            for w in range(n):
                workers.runs[w] = workers.actors[w].run.remote(addrs, local_names)
            for w in range(n):
                sock = _dial(addrs[w], token, _DRIVER)
                workers.conns[Connection(sock.detach())] = w
        except BaseException:
            workers.stop()
            raise
        now = time.monotonic()
        log.info("executor Ray: %d worker actor(s) started in %.2fs (placement group %.2fs, "
                 "actors up with the job loaded %.2fs, connections %.2fs)%s", n, now - t0,
                 placed - t0, prepared_at - placed, now - prepared_at,
                 " (actors started during the previous attempt's stop)" if standby else "")
        workers.prewarm = lambda: self._prewarm(ray, n)
        workers.watch()
        return workers

    def _start_hosted(self, ray: Any, specs: Sequence[WorkerSpec],
                      blobs: list[bytes]) -> Workers:
        """Start an attempt's workers as processes forked by the hosts of the nodes its
        placement group's bundles are on (the group of the failed attempt again when all
        its nodes are alive)."""
        n = len(specs)
        t0 = time.monotonic()
        token = secrets.token_bytes(TOKEN_BYTES)
        workers = _Hosted(ray, token, secrets.token_hex(8))
        workers.keep_pg = lambda pg: setattr(self, "_kept", (n, pg))
        try:
            alive = _alive_nodes(ray)
            self._ensure_hosts(ray, alive)  # all at once: the spares start with the first
            kept, self._kept = self._kept, None
            if kept is not None:
                if kept[0] == n and set(_bundle_nodes(kept[1]).values()) <= alive:
                    workers.pg = kept[1]
                else:
                    _remove_group(kept[1])
            try:
                self._place(ray, n, workers, stuck_after=_PLACE_STUCK)
                where = _bundle_nodes(workers.pg)
            except _Stuck as e:
                where = e.where
                log.warning("executor Ray: the placement group of %d workers was not placed "
                            "within %gs although the alive nodes have the free resources for "
                            "it (Ray's scheduler can wait long on a node that stopped "
                            "answering); this attempt's workers go to the nodes' hosts by "
                            "their free resources, without a reservation", n, _PLACE_STUCK)
            placed = time.monotonic()
            for w in range(n):
                workers.hosts[w] = self._host_on(ray, where[w])
            forked = [workers.hosts[w].fork_worker.remote(workers.key, w, blobs[w], token,
                                                          self.bind_host) for w in range(n)]
            addrs: list[tuple[str, int]] = []
            local_names: list[str | None] = []
            for w, ref in enumerate(forked):
                try:
                    host, port, pid, node, local = ray.get(ref, timeout=_WIRE_TIMEOUT)
                except ray.exceptions.RayTaskError as e:
                    raise _load_error(specs[w], e) from None
                except ray.exceptions.RayActorError:
                    self._hosts.pop(where[w], None)  # that host is gone: a new one next
                    raise
                addrs.append((host, port))
                local_names.append(local)
                workers.pids[w] = pid
                workers.nodes[w] = node
            prepared_at = time.monotonic()
            for w in range(n):
                workers.runs[w] = workers.hosts[w].run_worker.remote(workers.key, w, addrs,
                                                                     local_names)
            for w in range(n):
                sock = _dial(addrs[w], token, _DRIVER)
                workers.conns[Connection(sock.detach())] = w
        except BaseException:
            workers.stop()
            raise
        now = time.monotonic()
        log.info("executor Ray: %d worker process(es) started in %.2fs (placement group "
                 "%.2fs, forked by the nodes' hosts with the job loaded %.2fs, connections "
                 "%.2fs)", n, now - t0, placed - t0, prepared_at - placed, now - prepared_at)
        workers.watch()
        return workers

    def _ensure_hosts(self, ray: Any, alive: set[str]) -> None:
        """A host on every alive node that can hold a worker (started now, not waited
        for: the next attempt may need it); hosts of dead nodes are forgotten."""
        for node in list(self._hosts):
            if node not in alive:
                del self._hosts[node]
        for node in _nodes_that_fit(ray, self.resources_per_worker) & alive:
            self._host_on(ray, node)

    def _forget_hosts(self, alive: set[str]) -> None:
        for node in list(self._hosts):
            if node not in alive:
                del self._hosts[node]

    def _host_on(self, ray: Any, node: str) -> Any:
        host = self._hosts.get(node)
        if host is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts: dict[str, Any] = {
                "num_cpus": 0, "max_restarts": 0, "max_concurrency": _HOST_CONCURRENCY,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
            if self.runtime_env is not None:
                opts["runtime_env"] = self.runtime_env
            host = self._hosts[node] = ray.remote(_WorkerHost).options(**opts).remote()
        return host

    # --- actors for the next attempt, started while the failed one is fenced ------------
    def _new_actors(self, ray: Any, n: int, pg: Any) -> list[Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor_cls = ray.remote(_WorkerActor)
        res = dict(self.resources_per_worker)
        opts: dict[str, Any] = {"num_cpus": res.pop("CPU", 0), "max_restarts": 0,
                                "max_concurrency": 2}
        if "GPU" in res:
            opts["num_gpus"] = res.pop("GPU")
        if "memory" in res:
            opts["memory"] = res.pop("memory")
        if res:
            opts["resources"] = res
        if self.runtime_env is not None:
            opts["runtime_env"] = self.runtime_env
        return [actor_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=w), **opts).remote()
                for w in range(n)]

    def _prewarm(self, ray: Any, n: int) -> None:
        """An attempt of ``n`` workers failed and is being stopped: reserve the next
        attempt's placement group and start its actor processes now (Ray imports and
        onceflow's imports take seconds), so they come up while the old actors are
        confirmed dead. They run nothing before :meth:`start` hands them a job."""
        self.close()
        pg = self._group(ray, n)
        self._standby = (pg, self._new_actors(ray, n, pg))
        self._standby_n = n

    def _take_standby(self, n: int) -> tuple[Any, list[Any]] | None:
        standby, self._standby = self._standby, None
        if standby is not None and self._standby_n != n:  # another parallelism: not these
            self._standby = standby
            self.close()
            return None
        return standby

    def close(self) -> None:
        kept, self._kept = self._kept, None
        hosts, self._hosts = list(self._hosts.values()), {}
        if kept is not None or hosts:
            import ray

            for h in hosts:  # their worker processes die with them
                try:
                    ray.kill(h, no_restart=True)
                except Exception:
                    pass
            if kept is not None:
                _remove_group(kept[1])
        standby, self._standby = self._standby, None
        if standby is None:
            return
        import ray
        from ray.util.placement_group import remove_placement_group

        pg, actors = standby
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        try:
            remove_placement_group(pg)
        except Exception:
            pass

    def _group(self, ray: Any, n: int) -> Any:
        from ray.util.placement_group import placement_group

        return placement_group([dict(self.resources_per_worker) for _ in range(n)],
                               strategy=self.placement.upper())

    def _place(self, ray: Any, n: int, workers: _Actors | _Hosted,
               stuck_after: float | None = None) -> bool:
        """Wait until ``workers.pg`` (created here if None) is ready: True, or False when
        it had to be created again. A node that dies (or is cut off and then declared
        dead) while the group is being placed can hold its reservation up for long, so
        the group is created again whenever a node died since the wait began.
        ``stuck_after``: seconds after which a group that is still not placed although
        the alive nodes have the free resources for it is given up (:class:`_Stuck`)."""
        from ray.util.placement_group import remove_placement_group

        began = time.monotonic()
        deadline = began + self.placement_timeout
        same = True
        while True:
            alive = _alive_nodes(ray)
            if workers.pg is None:
                workers.pg = self._group(ray, n)
            pg = workers.pg
            while True:
                left = deadline - time.monotonic()
                try:
                    ray.get(pg.ready(), timeout=max(0.01, min(_PLACE_CHECK, left)))
                    return same
                except ray.exceptions.GetTimeoutError:
                    pass
                if time.monotonic() >= deadline:
                    self._no_room(ray, n)
                if stuck_after is not None and time.monotonic() - began >= stuck_after:
                    free = self._free_placement(ray, n)
                    if free is not None:
                        remove_placement_group(pg)
                        workers.pg = None
                        raise _Stuck(free)
                if alive - _alive_nodes(ray):
                    log.info("executor Ray: a node died while the placement group of %d "
                             "workers was placed; placing it again", n)
                    remove_placement_group(pg)
                    workers.pg = None
                    same = False
                    break

    def _free_placement(self, ray: Any, n: int) -> dict[int, str] | None:
        """Worker index -> an alive node with the free resources for it (``placement``
        spread: one node after another; pack: fill each node), or None if they lack room.
        """
        try:
            from ray._private.state import available_resources_per_node

            free = {node: dict(res) for node, res in available_resources_per_node().items()
                    if node in _alive_nodes(ray)}
        except Exception:
            return None
        need = self.resources_per_worker
        where: dict[int, str] = {}
        nodes = sorted(free)
        k = 0
        for w in range(n):
            for _ in range(len(nodes)):
                node = nodes[k % len(nodes)]
                if all(free[node].get(r, 0.0) >= v for r, v in need.items()):
                    for r, v in need.items():
                        free[node][r] = free[node].get(r, 0.0) - v
                    where[w] = node
                    if self.placement == "spread":
                        k += 1
                    break
                k += 1
            else:
                return None
        return where

    def _no_room(self, ray: Any, n: int) -> NoReturn:
        """The placement group of ``n`` bundles was not ready in time: a lower parallelism
        (:class:`FewerSlots`) when allowed and the alive nodes hold at least one worker,
        else an error naming what is missing."""
        fit = _bundles_that_fit(ray, self.resources_per_worker)
        res, wait = self.resources_per_worker, self.placement_timeout
        if self.allow_lower_parallelism and 1 <= fit < n:
            raise FewerSlots(fit, f"the cluster's alive nodes hold {fit} worker(s) of {res} "
                                  f"each, not {n} (no room for {n} after {wait:g}s)")
        hint = ("" if self.allow_lower_parallelism or fit < 1 or fit >= n else
                f"; pass of.executors.Ray(allow_lower_parallelism=True) to run with {fit}")
        raise ConfigurationError(
            f"of.executors.Ray: the cluster has no room for {n} workers of {res} each "
            f"({self.placement}) after {wait:g}s: its alive nodes hold {fit} such "
            f"worker(s) in all{hint}; available now: {ray.available_resources()}")


def _alive_nodes(ray: Any) -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}


class _Stuck(Exception):
    """A placement group was not placed although the nodes have room: ``where`` places
    each worker on a node with the free resources instead."""

    def __init__(self, where: dict[int, str]) -> None:
        super().__init__(where)
        self.where = where


def _nodes_that_fit(ray: Any, need: dict[str, float]) -> set[str]:
    """The alive nodes whose total resources hold at least one bundle of ``need``."""
    return {node["NodeID"] for node in ray.nodes() if node.get("Alive")
            and all((node.get("Resources") or {}).get(k, 0.0) >= v for k, v in need.items())}


def _bundle_nodes(pg: Any) -> dict[int, str]:
    """Bundle index -> the id of the node it is placed on (a group that is ready)."""
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(pg)
    return {int(i): str(node) for i, node in table.get("bundles_to_node_id", {}).items()}


def _bundles_that_fit(ray: Any, need: dict[str, float]) -> int:
    """How many bundles of ``need`` the alive nodes of the cluster hold in all (by their
    total resources: what other jobs use is not subtracted)."""
    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources") or {}
        counts = [int(have.get(k, 0.0) // v) for k, v in need.items() if v > 0]
        total += min(counts, default=1 << 20)
    return total


def _serialise(spec: WorkerSpec) -> bytes:
    from ray import cloudpickle

    try:
        return bytes(cloudpickle.dumps(spec))
    except Exception as e:
        for t in spec.graph.tasks.values():
            for node in t.nodes:
                try:
                    cloudpickle.dumps(node.fn)
                except Exception as e2:
                    raise ConfigurationError(
                        f"executor Ray: operator {node.name!r} holds an object that cannot be "
                        f"sent to a Ray worker ({type(e2).__name__}: {e2}); create "
                        "connections, locks and clients in open(), not when the flow is "
                        "defined") from e2
        raise ConfigurationError(
            f"executor Ray: the flow cannot be sent to a Ray worker "
            f"({type(e).__name__}: {e}); create connections, locks and clients in open()"
        ) from e


def _load_error(spec: WorkerSpec, e: Exception) -> ConfigurationError:
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, ImportError):
        return ConfigurationError(
            f"executor Ray: worker {spec.index} of flow {spec.flow!r} cannot import the "
            f"job's code on its node ({type(cause).__name__}: {cause}); ship it with "
            "of.executors.Ray(runtime_env={'working_dir': '.'} or {'py_modules': [...]}) "
            "(Ray's runtime_env), or install the module on every node")
    return ConfigurationError(
        f"executor Ray: worker {spec.index} of flow {spec.flow!r} could not load the job "
        f"on its node: {type(cause).__name__}: {cause}")


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        buf += chunk
    return buf


def _dial(addr: tuple[str, int], token: bytes, me: int) -> socket.socket:
    sock = socket.create_connection(addr, timeout=_WIRE_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(token + _HELLO.pack(me))
    sock.settimeout(None)
    return sock


def accept_authenticated(listener: socket.socket | Sequence[socket.socket], token: bytes,
                         expected: set[int], deadline: float) -> dict[int, socket.socket]:
    """Accept connections (on any of the listeners) until one from each of ``expected``
    (worker indexes, -1 for the driver) arrived with ``token``; any other connection is
    closed."""
    listeners = [listener] if isinstance(listener, socket.socket) else list(listener)
    got: dict[int, socket.socket] = {}
    while set(got) != expected:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connections from {sorted(expected - set(got))} did not "
                               f"arrive within {_WIRE_TIMEOUT:.0f}s")
        ready, _, _ = select.select(listeners, [], [], left)
        if not ready:
            continue
        ready[0].settimeout(max(left, 0.1))
        sock, _ = ready[0].accept()
        try:
            sock.settimeout(min(5.0, max(left, 0.1)))
            hello = _read_exact(sock, TOKEN_BYTES + _HELLO.size)
            (who,) = _HELLO.unpack(hello[TOKEN_BYTES:])
            if not hmac.compare_digest(hello[:TOKEN_BYTES], token) or who not in expected \
                    or who in got:
                raise ConnectionError("refused")
        except (OSError, ConnectionError):
            sock.close()
            continue
        sock.settimeout(None)
        if sock.family != _AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got[who] = sock
    return got


def _local_listener() -> tuple[socket.socket | None, str | None]:
    """A Unix socket in Linux's abstract namespace (no file; scoped to the network
    namespace) for the peers on the same host: faster than TCP over loopback. None
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return None, None
    name = f"\0onceflow-{secrets.token_hex(12)}"
    sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
        sock.listen(64)
    except OSError:
        sock.close()
        return None, None
    return sock, name


def _dial_peer(addr: tuple[str, int], local: str | None, my_host: str, token: bytes,
               me: int) -> socket.socket:
    """To a peer on this host (the same address) over its Unix socket, else over TCP (also
    when the Unix socket cannot be reached, e.g. another network namespace)."""
    if local is not None and addr[0] == my_host:
        sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_WIRE_TIMEOUT)
            sock.connect(local)
            sock.sendall(token + _HELLO.pack(me))
            sock.settimeout(None)
            return sock
        except OSError:
            sock.close()
    return _dial(addr, token, me)


class _WorkerActor:
    """The body of one worker actor (wrapped with ``ray.remote`` by :class:`Ray`)."""

    def __init__(self) -> None:
        import onceflow.runtime.worker  # noqa: F401  (now: an actor started early is ready)

        self.spec: Any = None
        self.token = b""
        self.listener: socket.socket | None = None
        self.local: socket.socket | None = None  # the Unix socket for same-host peers
        self.host = ""

    def prepare(self, blob: bytes, token: bytes,
                bind_host: str | None) -> tuple[str, int, int, str, str | None]:
        import ray
        from ray import cloudpickle

        self.spec = cloudpickle.loads(blob)
        self.token = token
        self.host = host = bind_host or ray.util.get_node_ip_address()
        self.listener = socket.create_server((host, 0), backlog=64)
        port = self.listener.getsockname()[1]
        self.local, local = _local_listener()
        return host, port, os.getpid(), ray.get_runtime_context().get_node_id(), local

    def run(self, addrs: list[tuple[str, int]],
            locals_: Sequence[str | None] | None = None) -> int:
        assert self.listener is not None
        names = list(locals_) if locals_ is not None else [None] * len(addrs)
        listeners = [self.listener] + ([self.local] if self.local is not None else [])
        return _wire_and_run(self.spec, self.token, self.host, listeners, addrs, names)


def _wire_and_run(spec: Any, token: bytes, my_host: str, listeners: list[socket.socket],
                  addrs: Sequence[tuple[str, int]], names: Sequence[str | None]) -> int:
    """Connect worker ``spec.index`` to its peers and the driver, then run it."""
    from onceflow.runtime.worker import worker_main

    me, n = spec.index, len(addrs)
    deadline = time.monotonic() + _WIRE_TIMEOUT
    peers: dict[int, socket.socket] = {}
    for i in range(me):  # each pair connects once: the higher index dials
        peers[i] = _dial_peer(addrs[i], names[i], my_host, token, me)
    try:
        got = accept_authenticated(listeners, token, {_DRIVER, *range(me + 1, n)}, deadline)
    finally:
        for s in listeners:
            s.close()
    ctrl = got.pop(_DRIVER)
    peers.update(got)
    return worker_main(spec, Connection(ctrl.detach()), peers)


class _Watched(Workers):
    """What both kinds of Ray workers share: the watch on their Ray calls."""

    ray: Any
    runs: dict[int, Any]
    pids: dict[int, int]
    nodes: dict[int, str]
    _watching: threading.Event
    _watcher: threading.Thread | None
    _died = "died"  # how the reason says that Ray reported the worker's actor dead

    @property
    def ids(self) -> dict[int, int]:
        return dict(self.pids)

    def _where(self, worker: int) -> str:
        raise NotImplementedError

    def _exited(self, where: str, result: Any) -> str:
        """The reason for a worker whose run call returned ``result``."""
        return f"{where} exited with code {result}"

    def exit_reason(self, worker: int) -> str:
        where = self._where(worker)
        ref = self.runs.get(worker)
        if ref is None:
            return f"{where} closed its connection"
        ready, _ = self.ray.wait([ref], timeout=2.0)
        if not ready:
            return f"{where} closed its connection"
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:
            return (f"{where} {self._died}: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
        except Exception as e:
            return f"{where} failed: {type(e).__name__}: {e}"
        return self._exited(where, result)

    def watch(self) -> None:
        """Watch the actors through Ray as well as through their connections: a node that
        is cut off (powered off, unplugged) closes no connection, but Ray's health checks
        declare its actors dead; the driver then sees that worker's control connection
        end (its end is shut down here) and the attempt fails as for a killed actor."""
        self._watching.set()
        self._watcher = threading.Thread(target=self._watch, name="onceflow-ray-watch",
                                         daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        by_ref = {ref.hex(): w for w, ref in self.runs.items()}
        pending = list(self.runs.values())
        while pending and self._watching.is_set():
            try:
                ready, pending = self.ray.wait(pending, num_returns=1, timeout=0.5)
            except Exception:
                return  # Ray is shutting down: the connections tell the rest
            for ref in ready:
                w = by_ref[ref.hex()]
                try:
                    self.ray.get(ref, timeout=0)
                    continue  # run() returned: the worker finished or failed by itself
                except Exception as e:
                    if not isinstance(e, self.ray.exceptions.RayActorError):
                        continue
                if self._watching.is_set():
                    self._cut(w)

    def _cut(self, worker: int) -> None:
        for c, w in list(self.conns.items()):
            if w != worker:
                continue
            try:
                s = socket.socket(fileno=os.dup(c.fileno()))
            except OSError:
                return  # closed by the driver meanwhile
            try:
                s.shutdown(socket.SHUT_RDWR)  # the driver's recv sees EOF now
            except OSError:
                pass
            finally:
                s.close()


class _Actors(_Watched):
    def __init__(self, ray: Any, token: bytes) -> None:
        self.ray = ray
        self.token = token
        self.actors: dict[int, Any] = {}
        self.runs: dict[int, Any] = {}
        self.pids: dict[int, int] = {}
        self.nodes: dict[int, str] = {}
        self.addresses: list[tuple[str, int]] = []
        self.pg: Any = None
        self.conns = {}
        self.prewarm: Any = None  # set once the attempt started: starts the next one's actors
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def _where(self, worker: int) -> str:
        return f"(Ray actor, pid {self.pids.get(worker)}, node {self.nodes.get(worker, '?')})"

    def stop(self) -> None:
        self._end(prewarm=True)

    def _end(self, prewarm: bool) -> None:
        self._watching.clear()
        self.close_conns()  # a worker that is only unreachable sees EOF and leaves
        for a in self.actors.values():
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:
                pass
        start_next, self.prewarm = self.prewarm, None
        if prewarm and start_next is not None and self.actors:  # the attempt failed
            try:
                start_next()
            except Exception as e:  # the next start() starts them the usual way
                log.info("executor Ray: could not start the next attempt's actors early: "
                         "%s: %s", type(e).__name__, e)
        self._wait_dead()

    def _wait_dead(self) -> None:
        """Return once Ray reports every actor of the attempt dead (the fence)."""
        deadline = time.monotonic() + _STOP_TIMEOUT
        pending = list(self.runs.values())
        while pending and time.monotonic() < deadline:
            _, pending = self.ray.wait(pending, num_returns=len(pending), timeout=1.0)
        alive = []
        for w, a in self.actors.items():  # also the actors that never started run()
            dead = False
            while not dead and time.monotonic() < deadline:
                try:
                    self.ray.get(a.__ray_ready__.remote(), timeout=1.0)
                except self.ray.exceptions.RayActorError:
                    dead = True
                except self.ray.exceptions.GetTimeoutError:
                    continue
                except Exception:
                    dead = True
                time.sleep(0.05)
            if not dead:
                alive.append(w)
        if alive:  # its node is unreachable: it has lost its control connection already
            log.warning("Ray has not confirmed the death of worker actor(s) %s within %.0fs; "
                        "their control connections are closed, so they stop at their next "
                        "look at them", alive, _STOP_TIMEOUT)
        self.actors.clear()
        self.runs.clear()
        self.pids.clear()
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.pg)
            except Exception:
                pass
            self.pg = None

    def join(self) -> None:
        if self.runs:
            self.ray.wait(list(self.runs.values()), num_returns=len(self.runs), timeout=60.0)
        self._end(prewarm=False)


# --- warm hosts: one long-lived actor per node forks each attempt's worker processes ----
_CHILD_TITLE = "ray::onceflow-worker"  # the title of a worker process a host forked


class _WorkerHost:
    """A long-lived actor on one node (no resources of its own; the attempt's placement
    group reserves each worker's). It imports onceflow once, when it starts, and forks a
    fresh process for each worker of each attempt that runs on its node, so a restart costs
    a fork instead of a new Ray worker process (seconds of start-up and imports), as Flink
    keeps its TaskManagers across restarts. Ending an attempt kills its processes, not the
    host. A forked worker dies with its host (``PR_SET_PDEATHSIG``), and never calls into
    Ray: it only has its sockets.

    All forks happen in one thread that lives as long as the host (the parent-death signal
    follows the thread that forked)."""

    def __init__(self) -> None:
        import queue

        import onceflow.runtime.worker  # noqa: F401  (imported once, shared by every fork)

        self.children: dict[tuple[str, int], _Child] = {}
        self.lock = threading.Lock()
        self.forks: queue.Queue[tuple[Any, Any]] = queue.Queue()
        threading.Thread(target=self._forker, name="onceflow-forker", daemon=True).start()

    def _forker(self) -> None:
        from concurrent.futures import Future

        while True:
            fn, fut = self.forks.get()
            assert isinstance(fut, Future)
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def fork_worker(self, key: str, index: int, blob: bytes, token: bytes,
                    bind_host: str | None) -> tuple[str, int, int, str, str | None]:
        """Fork the process of worker ``index`` of attempt ``key``: it loads its part of the
        job and opens its listeners; their addresses, its pid and the node come back."""
        from concurrent.futures import Future

        import ray

        host = bind_host or ray.util.get_node_ip_address()
        fut: Future[_Child] = Future()
        self.forks.put((lambda: _fork_child(blob, token, host), fut))
        child = fut.result()
        with self.lock:
            self.children[(key, index)] = child
        reply = _read_reply(child)
        if reply[0] != "ok":
            try:
                os.kill(child.pid, signal.SIGKILL)  # it may hang rather than exit
            except ProcessLookupError:
                pass
            self._reap(child)
            with self.lock:
                self.children.pop((key, index), None)
            if reply[0] == "import":
                raise ImportError(reply[1])
            raise RuntimeError(reply[1])
        _, port, local = reply
        return host, port, child.pid, ray.get_runtime_context().get_node_id(), local

    def run_worker(self, key: str, index: int, addrs: list[tuple[str, int]],
                   locals_: list[str | None]) -> int:
        """Hand worker ``index`` of attempt ``key`` its peers' addresses; return its wait
        status once it exited (it runs the job until then)."""
        import pickle

        with self.lock:
            child = self.children[(key, index)]
            child.waiter = True
        try:
            os.write(child.to_child, _frame(pickle.dumps((addrs, locals_))))
        except OSError:
            pass  # it died already: its status says how
        return self._reap(child)

    def kill(self, key: str) -> int:
        """SIGKILL every worker process of attempt ``key``; return once all are reaped."""
        with self.lock:
            mine = [(k, c) for k, c in self.children.items() if k[0] == key]
        for _, c in mine:
            try:
                os.kill(c.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for k, c in mine:
            self._reap(c)
            with self.lock:
                self.children.pop(k, None)
        return len(mine)

    def _reap(self, child: _Child) -> int:
        with self.lock:
            mine = not child.reaping
            child.reaping = True
        if mine:
            try:
                _, status = os.waitpid(child.pid, 0)
            except ChildProcessError:
                status = 0
            child.status = status
            for fd in (child.to_child, child.from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            child.done.set()
        else:
            child.done.wait()
        return child.status


class _Child:
    """A worker process a host forked: its pid and the pipes to it."""

    def __init__(self, pid: int, to_child: int, from_child: int) -> None:
        self.pid = pid
        self.to_child = to_child
        self.from_child = from_child
        self.waiter = False
        self.reaping = False
        self.status = 0
        self.done = threading.Event()


_LEN = struct.Struct("!I")


def _frame(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


def _read_frame(fd: int, timeout: float | None) -> bytes:
    buf = b""
    need = _LEN.size
    size = None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        while len(buf) < need:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError("no answer from the worker process")
            chunk = os.read(fd, need - len(buf))
            if not chunk:
                raise EOFError("the worker process closed its pipe")
            buf += chunk
        if size is None:
            (size,) = _LEN.unpack(buf)
            buf, need = b"", size
            if size == 0:
                return b""
            continue
        return buf


def _read_reply(child: _Child) -> tuple[Any, ...]:
    import pickle

    try:
        reply = pickle.loads(_read_frame(child.from_child, _WIRE_TIMEOUT))
    except (EOFError, TimeoutError) as e:
        return ("error", f"the worker process (pid {child.pid}) did not start: {e}")
    assert isinstance(reply, tuple)
    return reply


def _fork_child(blob: bytes, token: bytes, host: str) -> _Child:
    """In the host's forker thread: fork a worker process (see :func:`_child_main`)."""
    import gc

    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker process: never returns
        gc.freeze()  # never collect the host's garbage (Ray's objects) here
        code = 1
        try:
            os.close(to_w)
            os.close(from_r)
            code = _child_main(parent, blob, token, host, to_r, from_w)
        finally:
            os._exit(code)
    os.close(to_r)
    os.close(from_w)
    return _Child(pid, to_w, from_r)


def _child_main(parent: int, blob: bytes, token: bytes, host: str, from_host: int,
                to_host: int) -> int:
    """The worker process a host forked: load the spec, listen, tell the host where, wait
    for the peers' addresses, connect, run :func:`worker_main`. It never touches Ray."""
    import pickle

    from onceflow.executors.local import _become_worker

    _become_worker(parent)
    _set_title(_CHILD_TITLE)
    try:
        from ray import cloudpickle

        spec = cloudpickle.loads(blob)
        listener = socket.create_server((host, 0), backlog=64)
        local, local_name = _local_listener()
    except ImportError as e:
        os.write(to_host, _frame(pickle.dumps(("import", f"{type(e).__name__}: {e}"))))
        return 1
    except BaseException as e:
        os.write(to_host, _frame(pickle.dumps(("error", f"{type(e).__name__}: {e}"))))
        return 1
    os.write(to_host, _frame(pickle.dumps(("ok", listener.getsockname()[1], local_name))))
    os.close(to_host)
    try:
        addrs, names = pickle.loads(_read_frame(from_host, None))
    except EOFError:
        return 3  # the attempt ended before it was wired
    os.close(from_host)
    listeners = [listener] + ([local] if local is not None else [])
    return _wire_and_run(spec, token, host, listeners, addrs, names)


def _set_title(title: str) -> None:
    """The process title ``ps`` shows, through Ray's own setproctitle (best effort)."""
    try:
        from ray import _raylet

        raylet: Any = _raylet
        raylet._current_proctitle_lock = threading.Lock()  # a fresh one: we just forked
        raylet.setproctitle(title)
    except Exception:
        pass


class _Hosted(_Watched):
    """The workers of one attempt as processes forked by the nodes' hosts."""

    def __init__(self, ray: Any, token: bytes, key: str) -> None:
        self.ray = ray
        self.token = token
        self.key = key
        self.hosts: dict[int, Any] = {}  # worker index -> the host that forked it
        self.runs: dict[int, Any] = {}  # worker index -> its run_worker call
        self.pids: dict[int, int] = {}
        self.nodes: dict[int, str] = {}
        self.conns = {}
        self.pg: Any = None
        self.keep_pg: Any = None  # set by start(): takes the group back for a next attempt
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    _died = "died with its host"

    def _where(self, worker: int) -> str:
        return (f"(Ray actor's worker process, pid {self.pids.get(worker)}, node "
                f"{self.nodes.get(worker, '?')})")

    def _exited(self, where: str, status: Any) -> str:
        if os.WIFSIGNALED(status):
            return f"{where} was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"{where} exited with code {os.WEXITSTATUS(status)}"

    def stop(self) -> None:
        self._end(keep=True)

    def join(self) -> None:
        if self.runs:
            self.ray.wait(list(self.runs.values()), num_returns=len(self.runs), timeout=60.0)
        self._end(keep=False)

    def _end(self, keep: bool) -> None:
        """Kill every worker process of the attempt and return once each host reports
        them reaped, or Ray reports the host dead (its processes die with it): the fence."""
        self._watching.clear()
        self.close_conns()  # a worker that is only unreachable sees EOF and leaves
        hosts = {id(h): h for h in self.hosts.values()}
        kills = [h.kill.remote(self.key) for h in hosts.values()]
        deadline = time.monotonic() + _STOP_TIMEOUT
        pending = kills
        while pending and time.monotonic() < deadline:
            _, pending = self.ray.wait(pending, num_returns=len(pending), timeout=1.0)
        if pending:
            log.warning("Ray has not confirmed the end of %d worker host(s)' processes "
                        "within %.0fs; their control connections are closed, so they stop "
                        "at their next look at them", len(pending), _STOP_TIMEOUT)
        self.hosts.clear()
        self.runs.clear()
        self.pids.clear()
        pg, self.pg = self.pg, None
        if pg is not None:
            give_back, self.keep_pg = self.keep_pg, None
            if keep and give_back is not None:
                give_back(pg)  # the next attempt places its workers in it if it can
            else:
                _remove_group(pg)


def _remove_group(pg: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(pg)
    except Exception:
        pass
