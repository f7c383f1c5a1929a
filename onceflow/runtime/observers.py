"""What the driver starts beside a job so people can watch it: the web dashboard, the
Prometheus endpoint, the progress printer, and ``_job.json`` (how ``onceflow savepoint``
finds a running job's dashboard). All of them only read the job's :class:`JobStatus`.

Everything is validated and every port is bound in the constructor, before any worker
starts, so a wrong address or a port in use is a ``ConfigurationError`` at ``run()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from onceflow.errors import ConfigurationError
from onceflow.runtime.status import JobStatus

log = logging.getLogger("onceflow.web")

JOB_FILE = "_job.json"


class _Closable(Protocol):
    def close(self) -> None: ...


class ObserverOptions(Protocol):
    """The fields of ``JobConfig`` this module reads."""

    @property
    def dashboard(self) -> str | None: ...
    @property
    def dashboard_token(self) -> str | None: ...
    @property
    def metrics_port(self) -> int | None: ...
    @property
    def progress(self) -> bool | float: ...


def validate(opts: ObserverOptions) -> None:
    """Check the options without binding anything."""
    validate_options(dashboard=opts.dashboard, dashboard_token=opts.dashboard_token,
                     metrics_port=opts.metrics_port, progress=opts.progress)


def validate_options(*, dashboard: str | None, dashboard_token: str | None,
                     metrics_port: int | None, progress: bool | float) -> None:
    if dashboard is not None:
        from onceflow.web.server import check_binding, parse_address  # only when needed

        host, _ = parse_address(dashboard)
        check_binding(host, dashboard_token)
    elif dashboard_token is not None:
        raise ConfigurationError("dashboard_token is set but the dashboard is off; pass "
                                 "dashboard='[HOST:]PORT' too")
    mp = metrics_port
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int)
                           or not 0 <= mp <= 65535):
        raise ConfigurationError(f"metrics_port must be a port number in 0..65535, got {mp!r}")
    pr = progress
    if not isinstance(pr, bool) and (not isinstance(pr, int | float) or pr <= 0):
        raise ConfigurationError(f"progress must be True, False or a period in seconds > 0, "
                                 f"got {pr!r}")


class Observers:
    """Starts what ``opts`` asks for; :meth:`close` stops all of it (idempotent)."""

    def __init__(self, status: JobStatus, opts: ObserverOptions, job_dir: str | None,
                 control: Callable[[], Any] = lambda: None, job_store: Any = None) -> None:
        """``job_dir``: where ``_job.json`` goes; ``job_store``: an object store's
        checkpoint storage (``S3CheckpointStorage``) to publish it on instead."""
        validate(opts)
        self._open: list[_Closable] = []
        self._job_file: str | None = None
        self._job_store = job_store
        self._job_doc: bytes | None = None
        try:
            if opts.dashboard is not None:
                from onceflow.web.server import DashboardServer, parse_address

                host, port = parse_address(opts.dashboard)
                web = DashboardServer(status, host, port, opts.dashboard_token, control)
                self._open.append(web.start())
                status.set_endpoint("dashboard", web.url)
                log.info("dashboard of job %r at %s/%s", status.flow, web.url,
                            " (access token required)" if opts.dashboard_token else "")
                if job_store is not None:
                    self._publish_job_file(status.flow, web.url,
                                           opts.dashboard_token is not None)
                elif job_dir is not None:
                    self._write_job_file(job_dir, status.flow, web.url,
                                         opts.dashboard_token is not None)
            if opts.metrics_port is not None:
                from onceflow.web.metrics import MetricsServer

                metrics = MetricsServer(status, opts.metrics_port)
                self._open.append(metrics.start())
                status.set_endpoint("metrics", metrics.url)
                log.info("Prometheus metrics of job %r at %s", status.flow, metrics.url)
            if opts.progress:
                from onceflow.cli.progress import ProgressPrinter

                interval = None if opts.progress is True else float(opts.progress)
                self._open.append(ProgressPrinter(status, interval=interval).start())
        except BaseException:
            self.close()
            raise

    def _write_job_file(self, job_dir: str, flow: str, url: str, token: bool) -> None:
        os.makedirs(job_dir, exist_ok=True)
        path = os.path.join(job_dir, JOB_FILE)
        doc = {"flow": flow, "url": url, "pid": os.getpid(), "started": time.time(),
               "token_required": token}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
        self._job_file = path

    def _publish_job_file(self, flow: str, url: str, token: bool) -> None:
        """``_job.json`` as an object next to the flow's checkpoints on the store (the
        same document as in a directory: never the token)."""
        doc = {"flow": flow, "url": url, "pid": os.getpid(), "started": time.time(),
               "token_required": token}
        self._job_doc = json.dumps(doc).encode()
        self._job_store.put_job_file(self._job_doc)

    def close(self) -> None:
        while self._open:
            with contextlib.suppress(Exception):
                self._open.pop().close()
        if self._job_doc is not None:  # only if it is still ours (not a newer run's)
            with contextlib.suppress(Exception):
                if self._job_store.get_job_file() == self._job_doc:
                    self._job_store.delete_job_file()
            self._job_doc = None
        if self._job_file is not None:
            with contextlib.suppress(OSError, ValueError):
                with open(self._job_file) as f:
                    mine = json.load(f).get("pid") == os.getpid()
                if mine:
                    os.unlink(self._job_file)
            self._job_file = None
