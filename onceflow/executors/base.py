"""The executor interface: where the subtasks of an attempt run.

The driver (``runtime/driver.py``) never starts a process or a thread itself; it asks its
executor. One attempt of a job goes through these steps, always in this order:

1. ``executor.start(specs)`` starts one *worker* per spec (worker ``i`` runs subtask ``i``
   of every task, see ``graph/jobgraph.py``) and returns the attempt's :class:`Workers`.
   Each worker gets its control connection to the driver and one socket to every other
   worker of the same attempt (:func:`connect_workers`), and runs
   :func:`onceflow.runtime.worker.worker_main` on them.
2. The driver talks to the workers only through ``workers.conns`` (typed messages,
   ``runtime/messages.py``). A worker that dies, fails or finishes closes its connection:
   the driver sees EOF, and :meth:`Workers.exit_reason` says why (for the failure report).
3. ``workers.stop()`` ends the attempt (after a failure, or when the driver itself fails):
   when it returns, no worker of the attempt runs any more, so none can commit, write a
   checkpoint file or send a record; the next attempt starts only then. This is the
   *fence* between attempts: an old attempt's subtask never overlaps a new one.
   ``workers.join()`` is the same for an attempt whose workers all finished by themselves.

An executor holds configuration only (it is part of what users pass to ``Flow.run``);
what it starts lives in the :class:`Workers` it returns, except what it prepares for the
next attempt while a failed one is stopped (the Ray executor's early actors), which
``executor.close()`` releases when the run ends.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onceflow.runtime.worker import WorkerSpec


class Workers(abc.ABC):
    """The running workers of one attempt, as the driver sees them."""

    #: the driver's end of each worker's control connection -> the worker's index
    conns: dict[Connection, int]

    @property
    @abc.abstractmethod
    def ids(self) -> dict[int, int]:
        """Worker index -> an id to show users (a process id)."""

    @abc.abstractmethod
    def exit_reason(self, worker: int) -> str:
        """Why ``worker``'s connection closed, e.g. ``"(pid 12) was killed by SIGKILL"``."""

    @abc.abstractmethod
    def stop(self) -> None:
        """End every worker of the attempt and return once none runs; idempotent."""

    @abc.abstractmethod
    def join(self) -> None:
        """Every worker finished (it sent ``Finished``): wait for them to exit."""

    def send_all(self, data: bytes) -> None:
        """One encoded message to every worker still connected."""
        for c in list(self.conns):
            try:
                c.send_bytes(data)
            except OSError:
                pass  # the worker died; its EOF is noticed by the driver loop

    def close_conns(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()


class FewerSlots(Exception):
    """Raised by :meth:`Executor.start` when the executor can hold only ``workers`` workers
    (fewer than asked) and the user allowed a lower parallelism: the driver builds the job
    graph again with at most ``workers`` subtasks per task and starts the attempt again
    from the same checkpoint (a rescale by key group)."""

    def __init__(self, workers: int, reason: str) -> None:
        super().__init__(reason)
        self.workers = workers
        self.reason = reason


class Executor(abc.ABC):
    """Where subtasks run (see the module docstring for the lifecycle)."""

    name: str = "executor"

    @abc.abstractmethod
    def start(self, specs: Sequence[WorkerSpec]) -> Workers:
        """Start one worker per spec (``specs[i].index == i``)."""

    def close(self) -> None:
        """The run ended: release what the executor prepared for a next attempt (the Ray
        executor starts the next attempt's actors while a failed one is stopped)."""
        return None


@dataclass
class WorkerSockets:
    """The sockets of one attempt: ``ctrl[i]`` is (driver end, worker end) of worker
    ``i``'s control connection; ``peers[(i, j)]`` is worker ``i``'s socket to worker ``j``."""

    ctrl: list[tuple[socket.socket, socket.socket]]
    peers: dict[tuple[int, int], socket.socket]

    def peers_of(self, w: int) -> dict[int, socket.socket]:
        return {j: s for (i, j), s in self.peers.items() if i == w}

    def close(self) -> None:
        for a, b in self.ctrl:
            a.close()
            b.close()
        for s in self.peers.values():
            s.close()


def connect_workers(n: int) -> WorkerSockets:
    """A control socket pair per worker and a socket pair between every two workers."""
    ctrl = [socket.socketpair() for _ in range(n)]
    peers: dict[tuple[int, int], socket.socket] = {}
    for i in range(n):
        for j in range(i + 1, n):
            a, b = socket.socketpair()
            peers[(i, j)], peers[(j, i)] = a, b
    return WorkerSockets(ctrl, peers)
