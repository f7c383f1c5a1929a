"""``Inline``: every worker of an attempt is a thread of the calling process.

For debugging (a breakpoint in a user function works, one process to profile) and fast
tests. The job is otherwise the same: the same worker loop, sockets between the workers,
checkpoints, sinks and recovery. What differs:

- each worker gets its own deep copy of the flow's objects (operators, sinks, sources,
  the state backend), taken when the attempt starts, as a forked process would, so no two
  subtasks and no two attempts share them; objects that cannot be copied are refused with
  the operator's name. Module globals and closures' captured variables *are* shared;
- the workers share one interpreter (and its GIL): throughput is lower than ``Local``'s;
- stopping an attempt cannot kill a thread: :meth:`Workers.stop` closes the attempt's
  control connections, and every worker leaves its loop at its next look at them (at the
  latest when its current batch or user function returns); ``stop`` returns only when all
  have, so attempts never overlap. A fault injected with ``ONCEFLOW_FAULT`` kills the whole
  process, driver included: crash tests need ``Local``.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from socket import socket
from typing import TYPE_CHECKING

from onceflow.errors import ConfigurationError
from onceflow.executors.base import Executor, Workers, connect_workers

if TYPE_CHECKING:
    from onceflow.runtime.worker import WorkerSpec

log = logging.getLogger("onceflow")


class Inline(Executor):
    """Run every worker of an attempt as a thread of this process."""

    name = "inline"

    def __repr__(self) -> str:
        return "Inline()"

    def start(self, specs: Sequence[WorkerSpec]) -> Workers:
        own = [_own_copy(s) for s in specs]
        socks = connect_workers(len(specs))
        workers = _Threads()
        for spec in own:
            w = spec.index
            ctrl = Connection(socks.ctrl[w][1].detach())
            t = threading.Thread(target=workers.run_worker, args=(spec, ctrl, socks.peers_of(w)),
                                 name=f"onceflow-worker-{w}", daemon=True)
            workers.threads[w] = t
        for w, (pa, _) in enumerate(socks.ctrl):
            workers.conns[Connection(pa.detach())] = w
        for t in workers.threads.values():
            t.start()
        return workers


def _own_copy(spec: WorkerSpec) -> WorkerSpec:
    """The spec with its own copy of everything a worker may change (not the restore
    point, which workers only read)."""
    try:
        graph = copy.deepcopy(spec.graph)
    except Exception as e:
        for t in spec.graph.tasks.values():
            for n in t.nodes:
                try:
                    copy.deepcopy(n.fn)
                except Exception:
                    raise ConfigurationError(
                        f"executor Inline: operator {n.name!r} holds an object that cannot be "
                        f"copied ({type(e).__name__}: {e}); each subtask needs its own copy: "
                        "create connections and other resources in open(), not when the flow "
                        "is defined") from e
        raise ConfigurationError(f"executor Inline: the flow cannot be copied: {e}") from e
    return replace(spec, graph=graph, plan=copy.deepcopy(spec.plan),
                   state_backend=copy.deepcopy(spec.state_backend), own_process=False)


class _Threads(Workers):
    def __init__(self) -> None:
        self.threads: dict[int, threading.Thread] = {}
        self.codes: dict[int, int] = {}
        self.conns = {}

    def run_worker(self, spec: WorkerSpec, ctrl: Connection, peers: dict[int, socket]) -> None:
        from onceflow.runtime.worker import worker_main

        code = 1
        try:
            code = worker_main(spec, ctrl, peers)
        finally:
            self.codes[spec.index] = code
            ctrl.close()
            for s in peers.values():
                s.close()

    @property
    def ids(self) -> dict[int, int]:
        import os

        return dict.fromkeys(self.threads, os.getpid())

    def exit_reason(self, worker: int) -> str:
        t = self.threads[worker]
        t.join(1.0)
        if t.is_alive():
            return "(thread) closed its connection"
        return f"(thread) exited with code {self.codes.get(worker, 1)}"

    def stop(self) -> None:
        self.close_conns()  # every worker sees EOF at its next look at its connection
        self.join()

    def join(self) -> None:
        started = time.monotonic()
        for w, t in self.threads.items():
            while t.is_alive():
                t.join(10.0)
                if t.is_alive():
                    log.warning("inline worker %d has not stopped after %.0fs (a user function "
                                "that does not return?); waiting for it", w,
                                time.monotonic() - started)
        self.close_conns()


