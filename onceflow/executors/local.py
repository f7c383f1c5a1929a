"""``Local``: every worker is a process forked from the driver (the default).

Forking means user functions (lambdas, closures) need no serialization, and a worker
killed with SIGKILL (or crashing in native code) takes nothing else down. Each attempt forks
fresh workers from the driver, so an attempt never sees objects a previous one changed.
A worker dies with the driver (``PR_SET_PDEATHSIG`` on Linux, and the EOF of its control
socket everywhere), and leaves Ctrl-C to the driver.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from onceflow.executors.base import Executor, Workers, connect_workers

if TYPE_CHECKING:
    from onceflow.runtime.worker import WorkerSpec

_PR_SET_PDEATHSIG = 1


class Local(Executor):
    """Run each worker in a process forked from the driver (needs ``fork``: Linux)."""

    name = "local"

    def __repr__(self) -> str:
        return "Local()"

    def start(self, specs: Sequence[WorkerSpec]) -> Workers:
        from onceflow.runtime.worker import worker_main

        n = len(specs)
        socks = connect_workers(n)
        sys.stdout.flush()
        sys.stderr.flush()
        driver_pid = os.getpid()
        workers = _Processes()
        try:
            for spec in specs:
                w = spec.index
                pid = os.fork()
                if pid == 0:  # the worker process: never returns
                    # never collect what the parent left: a copy of its garbage (a Kafka
                    # client among it) destroyed here, where the client's threads do not
                    # exist, can abort or hang the worker
                    gc.freeze()
                    code = 1
                    try:
                        _become_worker(driver_pid)
                        mine = {s.fileno() for s in socks.peers_of(w).values()}
                        mine.add(socks.ctrl[w][1].fileno())
                        for k, (pa, ch) in enumerate(socks.ctrl):
                            pa.close()
                            if k != w:
                                ch.close()
                        for s in socks.peers.values():
                            if s.fileno() not in mine and s.fileno() != -1:
                                s.close()
                        code = worker_main(spec, Connection(socks.ctrl[w][1].detach()),
                                           socks.peers_of(w))
                    finally:
                        os._exit(code)
                workers.pids[w] = pid
        except BaseException:
            workers.stop()
            socks.close()
            raise
        for w, (pa, ch) in enumerate(socks.ctrl):
            ch.close()
            workers.conns[Connection(pa.detach())] = w
        for s in socks.peers.values():
            s.close()
        return workers


class _Processes(Workers):
    def __init__(self) -> None:
        self.pids: dict[int, int] = {}
        self.conns = {}

    @property
    def ids(self) -> dict[int, int]:
        return dict(self.pids)

    def exit_reason(self, worker: int) -> str:
        pid = self.pids[worker]
        return f"(pid {pid}) {_exit_status(pid)}"

    def stop(self) -> None:
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.join()

    def join(self) -> None:
        for pid in self.pids.values():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()
        self.close_conns()


def _become_worker(driver_pid: int) -> None:
    """In the forked child: die with the driver, leave Ctrl-C to the driver."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the control socket's EOF still ends the worker
    if os.getppid() != driver_pid:
        os._exit(3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _exit_status(pid: int) -> str:
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            wpid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "died"
        if wpid:
            if os.WIFSIGNALED(status):
                return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
            return f"exited with code {os.WEXITSTATUS(status)}"
        time.sleep(0.01)
    return "closed its connection"
