"""``onceflow savepoint`` and ``onceflow stop``: ask a running job, through its dashboard.

TARGET is the dashboard's URL (``http://127.0.0.1:8081``) or the job's checkpoint
directory or ``s3://`` URL: a driver that serves a dashboard writes
``<storage>/<flow>/_job.json`` (a file, or an object on the store) with the URL (never the
token). When the dashboard needs a token, put it in
``ONCEFLOW_DASHBOARD_TOKEN``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from onceflow.errors import ConfigurationError, RemoteError
from onceflow.runtime.observers import JOB_FILE

TOKEN_ENV = "ONCEFLOW_DASHBOARD_TOKEN"


def resolve_target(target: str) -> str:
    """The dashboard URL for TARGET (a URL, or a directory holding ``_job.json``)."""
    if target.startswith(("http://", "https://")):
        return target.rstrip("/")
    if target.startswith("s3://"):  # the job's checkpoints on an object store
        from onceflow.checkpoint import s3

        where, raw = s3.find_job_file(target)
        try:
            return str(json.loads(raw)["url"]).rstrip("/")
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigurationError(f"{where} is unreadable: {e}") from e
    if not os.path.isdir(target):
        raise ConfigurationError(f"{target} is neither a dashboard URL (http://HOST:PORT) nor "
                                 "a checkpoint directory")
    candidates = [os.path.join(target, JOB_FILE)]
    if not os.path.exists(candidates[0]):
        candidates = [os.path.join(target, d, JOB_FILE) for d in sorted(os.listdir(target))
                      if os.path.exists(os.path.join(target, d, JOB_FILE))]
    if not candidates or not os.path.exists(candidates[0]):
        raise ConfigurationError(
            f"no running job found in {target}: there is no {JOB_FILE} (a job writes it "
            "there only while it runs with a dashboard, e.g. `onceflow run --dashboard 0`)")
    if len(candidates) > 1:
        raise ConfigurationError(f"{target} holds several running jobs "
                                 f"({', '.join(candidates)}); pass one flow's directory")
    try:
        with open(candidates[0]) as f:
            doc = json.load(f)
        return str(doc["url"]).rstrip("/")
    except (OSError, ValueError, KeyError) as e:
        raise ConfigurationError(f"{candidates[0]} is unreadable: {e}") from e


def post(url: str, path: str, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    token = os.environ.get(TOKEN_ENV)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return dict(json.load(resp))
    except urllib.error.HTTPError as e:
        try:
            msg = json.load(e).get("error", "")
        except ValueError:
            msg = ""
        if e.code == 401:
            msg = f"the dashboard needs an access token: set {TOKEN_ENV}"
        raise RemoteError(f"{url}: {msg or e.reason} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RemoteError(f"no job answers at {url} ({reason}); is it still running?") from None


def savepoint(target: str, directory: str | None, stop: bool, timeout: float | None) -> str:
    url = resolve_target(target)
    if directory and not directory.startswith("s3://"):
        directory = os.path.abspath(directory)  # the driver may run elsewhere: a full path
    body = {"directory": directory or None, "stop": stop,
            "timeout": timeout}
    # the HTTP wait covers the savepoint's own timeout plus a margin
    doc = post(url, "/api/savepoint", body, None if timeout is None else timeout + 10)
    return str(doc["path"])
