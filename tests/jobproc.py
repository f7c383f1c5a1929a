"""Shared harness for crash tests: a flow run as its own driver process, and the ways
tests kill it. The connector test modules subclass :class:`JobProcess` with their own
command line and exactness check."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil


class JobProcess:
    """A job script run as a subprocess (the driver); its children are the workers."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.env = {**os.environ, **(env or {})}
        self.log = tmp / "job.log"
        self.proc: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, *more: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        cmd = [sys.executable, *self.command(), *more]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.log, "a"),
                                     text=True, env={**self.env, **(env or {})})
        return self.proc

    def wait(self, timeout: float = 120) -> tuple[int, dict[str, Any] | None]:
        """Exit code and the JSON line the job printed last (None if it printed none)."""
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"job did not finish in {timeout}s:\n{self.tail()}") from None
        line = out.strip().splitlines()[-1] if out.strip() else ""
        return self.proc.returncode, (json.loads(line) if line.startswith("{") else None)

    def workers(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else "(no log)"


def kill_randomly(job: JobProcess, rng: random.Random, kills: int,
                  pause: tuple[float, float] = (0.3, 1.1)) -> int:
    """SIGKILL a random worker ``kills`` times at random moments; returns kills delivered."""
    done = 0
    assert job.proc is not None
    while done < kills and job.proc.poll() is None:
        time.sleep(rng.uniform(*pause))
        victims = [w for w in job.workers() if w.is_running()]
        if not victims or job.proc.poll() is not None:
            continue
        try:
            rng.choice(victims).send_signal(signal.SIGKILL)
            done += 1
        except psutil.NoSuchProcess:
            pass
    return done


def assert_no_orphans(pids: list[int], within: float = 3.0) -> None:
    """The workers of a killed driver must exit by themselves."""
    deadline = time.monotonic() + within
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"workers {alive} outlived their driver")


def kill_driver_at_fault(job: JobProcess, point: str, token: Path, timeout: float = 60,
                         action: str | None = None) -> None:
    """Start ``job`` with the worker fault ``point`` armed and SIGKILL its driver as soon
    as the fault fires (its token file appears); its workers must then exit by themselves.
    With ``action="pause"`` the worker stops at the point instead of dying, so the driver's
    death is what interrupts it."""
    env = {"ONCEFLOW_FAULT": point, "ONCEFLOW_FAULT_TOKEN": str(token)}
    if action is not None:
        env["ONCEFLOW_FAULT_ACTION"] = action
    proc = job.start(env=env)
    deadline = time.monotonic() + timeout
    while not token.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert token.exists(), f"fault {point} never fired\n{job.tail(2000)}"
    pids = [w.pid for w in job.workers()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_no_orphans(pids)
