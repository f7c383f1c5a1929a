"""Checkpoint storage on an S3-compatible object store (``storage="s3://bucket/prefix"``).

The layout of the keys is the layout of a checkpoint directory (``storage.py``)::

    <prefix>/<flow>/chk-<n>/<task>-<subtask>.state    state of one subtask
    <prefix>/<flow>/chk-<n>/<op>-<subtask>.files/...  private files of a backend
    <prefix>/<flow>/chk-<n>/_metadata                 written last, by the coordinator only
    <prefix>/<flow>/shared/<op>-<subtask>/...         files incremental checkpoints share
    <prefix>/<flow>/savepoint-<n>-<time>/...          a savepoint, self-contained

**How files get there.** Every process maps the store onto a local *staging* directory
with the same layout (``<tmp>/onceflow-s3-<uid>/<store>/<key>``, private to the user). The
code that writes checkpoints is the code of the directory storage: a worker writes its
state file and backend files below the staging directory, then :meth:`Remote.upload`
PUTs each one and deletes the local copy before the worker acknowledges the checkpoint.
A single PUT is atomic: an object whose upload was killed never becomes visible.

**Completion** is the PUT of ``_metadata``, by the coordinator, after every subtask acked,
with ``If-None-Match: *``: the store refuses it when the object exists, so a zombie
coordinator of an older run can never replace the metadata of a completed checkpoint. A
checkpoint without ``_metadata`` does not exist: listing ignores it, and the driver deletes
it (``discard_incomplete``) before tasks run; shared objects no complete checkpoint
references are deleted by the registry's sweep (``shared.py``) at the same moment.

**Restore** downloads into the staging directory: the driver fetches ``_metadata`` and the
state files and checks them (size and CRC-32 as recorded, the other files' sizes from a
listing); each worker fetches the backend files of the subtasks it restores
(:meth:`Remote.fetch_for`) onto its own local disk, where RocksDB working directories
stay. A corrupt newest checkpoint is moved aside (``corrupt-chk-<n>/``, by server-side
copy) and the previous one is used, as with a directory.

**Trust.** State files are Python pickles: the bucket (or the prefix) must be writable
only by the job's owner. Credentials come from the usual AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``) or from :class:`S3Storage`; they are never
logged or put into a message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from onceflow import _faults
from onceflow.checkpoint.metadata import CheckpointMetadata
from onceflow.checkpoint.metadata import decode as decode_metadata
from onceflow.checkpoint.metadata import encode as encode_metadata
from onceflow.checkpoint.storage import (
    _CHK,
    _SAVEPOINT,
    METADATA,
    CheckpointStorage,
    CompletedCheckpoint,
    flow_dir_name,
)
from onceflow.errors import (
    CheckpointStorageError,
    ConfigurationError,
    CorruptCheckpointError,
    NoCheckpointError,
)
from onceflow.state.backend import SHARED_DIR, owner_name

log = logging.getLogger("onceflow.checkpoint")

SCHEME = "s3://"
JOB_FILE = "_job.json"  # as runtime/observers.py names it
_THREADS = 8  # parallel uploads / downloads of one process
_MULTIPART = 64 * 1024 * 1024  # larger files go up in parts (invisible until complete)


# --- where: the store's address and credentials ----------------------------------------
@dataclass(frozen=True)
class S3Storage:
    """Checkpoint storage in an S3-compatible object store, for
    ``enable_checkpointing(storage=S3Storage("s3://bucket/prefix", ...))``.

    ``storage="s3://bucket/prefix"`` is the same with every option from the environment:
    ``endpoint`` from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (unset: AWS itself),
    ``region`` from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default ``us-east-1``), the
    keys from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (or
    the other places boto3 looks). ``staging_dir`` is the local directory files pass through
    (default: a private folder under the system's temp directory)."""

    url: str
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    staging_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(SCHEME):
            raise ConfigurationError(
                f"S3Storage: url must look like s3://bucket/prefix, got {self.url!r}")
        if not self.bucket:
            raise ConfigurationError(f"S3Storage: {self.url!r} names no bucket "
                                     "(s3://bucket/prefix)")
        if self.endpoint is not None and not str(self.endpoint).startswith(
                ("http://", "https://")):
            raise ConfigurationError(f"S3Storage: endpoint must be an http:// or https:// "
                                     f"URL, got {self.endpoint!r}")

    @property
    def bucket(self) -> str:
        return self.url[len(SCHEME):].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The key prefix, without slashes at either end ('' for the bucket's root)."""
        parts = self.url[len(SCHEME):].split("/", 1)
        return parts[1].strip("/") if len(parts) > 1 else ""

    @property
    def endpoint_url(self) -> str | None:
        return (self.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or None)

    def where(self) -> str:
        """The URL and endpoint, for messages (no secrets)."""
        ep = self.endpoint_url
        return f"{self.url} (endpoint {ep})" if ep else self.url


def is_s3(storage: object) -> bool:
    return isinstance(storage, S3Storage) or (
        isinstance(storage, str) and storage.startswith(SCHEME))


def location(storage: object) -> S3Storage:
    return storage if isinstance(storage, S3Storage) else S3Storage(str(storage))


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


# --- the client --------------------------------------------------------------------------
_sessions: dict[tuple[Any, ...], Any] = {}
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _after_fork() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork)


def _client(loc: S3Storage) -> Any:
    """A boto3 S3 client for ``loc``, one per process and settings (clients are thread
    safe; a forked child makes its own, never its parent's connections, from the parent's
    session, whose loaded service model it reuses)."""
    env = tuple(os.environ.get(v) for v in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
        "AWS_DEFAULT_REGION", "AWS_PROFILE"))
    settings = (loc.endpoint_url, loc.region, loc.access_key_id, loc.secret_access_key,
                loc.session_token, env)
    key = (os.getpid(), *settings)
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as e:
                raise ConfigurationError(
                    f"checkpoint storage {loc.url} needs boto3: pip install 'onceflow[s3]'"
                ) from e
            config = Config(
                s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=2 * _THREADS,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required")
            session = _sessions.get(settings)
            if session is None:
                session = _sessions[settings] = boto3.session.Session(
                    aws_access_key_id=loc.access_key_id,
                    aws_secret_access_key=loc.secret_access_key,
                    aws_session_token=loc.session_token,
                    region_name=loc.region or os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
            c = _clients[key] = session.client("s3", endpoint_url=loc.endpoint_url,
                                               config=config)
        return c


def _code(e: BaseException) -> str:
    resp = getattr(e, "response", None) or {}
    err = resp.get("Error", {})
    return str(err.get("Code") or resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _why(e: BaseException, loc: S3Storage) -> str:
    """What went wrong with a request, in words (no secrets)."""
    from botocore import exceptions as be

    if isinstance(e, be.NoCredentialsError | be.PartialCredentialsError):
        return ("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass "
                "S3Storage(access_key_id=..., secret_access_key=...)")
    if isinstance(e, be.EndpointConnectionError | be.ConnectTimeoutError
                  | be.ConnectionClosedError | be.ReadTimeoutError):
        return f"cannot reach the S3 endpoint {loc.endpoint_url or '(AWS)'}: {e}"
    code = _code(e)
    if code in ("NoSuchBucket",):
        return f"bucket {loc.bucket!r} does not exist"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                "InvalidToken", "ExpiredToken"):
        return f"the store refused the credentials or the access ({code})"
    return f"{type(e).__name__}: {e}"


def _fail(e: BaseException, loc: S3Storage, doing: str) -> CheckpointStorageError:
    return CheckpointStorageError(f"checkpoint storage {loc.where()}: {doing} failed: "
                                  f"{_why(e, loc)}")


# --- the store as seen from one process: keys <-> local staging files ----------------------
def _staging_root(loc: S3Storage) -> str:
    if loc.staging_dir:
        return os.path.abspath(loc.staging_dir)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    store = hashlib.sha256(f"{loc.endpoint_url}|{loc.bucket}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"onceflow-s3-{uid}", store)


@dataclass(frozen=True)
class Remote:
    """One bucket of a store and its local staging directory: picklable, so the driver
    hands it to the workers (``WorkerSpec.checkpoint_remote``, ``CompletedCheckpoint.remote``).
    ``key(path)`` is the object of a local file: the file's path below ``local``, which the
    driver chose, so that it is the same path in every process, on every machine."""

    loc: S3Storage
    local: str

    @property
    def client(self) -> Any:
        return _client(self.loc)

    def key(self, path: str) -> str | None:
        """The key of local file or directory ``path``, None if it is not below staging."""
        rel = os.path.relpath(os.path.abspath(path), self.local)
        if rel == "." or rel.startswith(".."):
            return None
        return rel.replace(os.sep, "/")

    def path(self, key: str) -> str:
        return os.path.join(self.local, *key.split("/"))

    def url(self, key: str) -> str:
        return f"{SCHEME}{self.loc.bucket}/{key}"

    def drop_local(self, key: str) -> None:
        """Remove the staging copy of the folder ``key`` (an aborted savepoint), and the
        staging copy of its parent (the savepoint's target) if that is left empty. Higher
        folders stay: another job's checkpoints may be about to use them."""
        path = self.path(key)
        shutil.rmtree(path, ignore_errors=True)
        parent = os.path.dirname(os.path.abspath(path))
        if parent.startswith(os.path.abspath(self.local) + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                pass  # not empty (other savepoints), or gone already

    # -- single requests --
    def put_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        args: dict[str, Any] = {"Bucket": self.loc.bucket, "Key": key, "Body": data}
        if create_only:
            args["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**args)
        except Exception as e:
            if create_only and _code(e) in ("PreconditionFailed", "412"):
                raise CheckpointStorageError(
                    f"{self.url(key)} already exists: another coordinator (an older run of "
                    "this flow still alive?) completed this checkpoint; this one does not "
                    "replace it") from None
            raise _fail(e, self.loc, f"writing {self.url(key)}") from e

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, None when there is no such object."""
        try:
            return bytes(self.client.get_object(Bucket=self.loc.bucket, Key=key)["Body"].read())
        except Exception as e:
            if _code(e) in ("NoSuchKey", "404"):
                return None
            raise _fail(e, self.loc, f"reading {self.url(key)}") from e

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.loc.bucket, Key=key)
            return True
        except Exception as e:
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise _fail(e, self.loc, f"looking up {self.url(key)}") from e

    def list_keys(self, prefix: str, delimiter: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size) of the objects below ``prefix``; with ``delimiter`` also the common
        prefixes, as (prefix ending in the delimiter, -1)."""
        args: dict[str, Any] = {"Bucket": self.loc.bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for p in page.get("CommonPrefixes", ()):
                    yield p["Prefix"], -1
                for o in page.get("Contents", ()):
                    yield o["Key"], int(o["Size"])
        except Exception as e:
            raise _fail(e, self.loc, f"listing {self.url(prefix)}") from e

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i:i + 1000]]
            try:
                out = self.client.delete_objects(Bucket=self.loc.bucket,
                                                 Delete={"Objects": chunk, "Quiet": True})
            except Exception as e:
                raise _fail(e, self.loc, f"deleting {len(chunk)} object(s) such as "
                            f"{self.url(chunk[0]['Key'])}") from e
            if out.get("Errors"):
                first = out["Errors"][0]
                raise CheckpointStorageError(
                    f"checkpoint storage {self.loc.where()}: deleting {self.url(first['Key'])} "
                    f"failed: {first.get('Code')} {first.get('Message', '')}")

    def any_below(self, prefix: str) -> bool:
        """Whether any object's key starts with ``prefix`` (a store may list an emptied
        "folder" as a common prefix for a while)."""
        try:
            page = self.client.list_objects_v2(Bucket=self.loc.bucket, Prefix=prefix,
                                               MaxKeys=1)
        except Exception as e:
            raise _fail(e, self.loc, f"listing {self.url(prefix)}") from e
        return bool(page.get("Contents"))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object below ``prefix``, then the "folders" ``prefix/`` and below
        (deepest first): a store with real directories (SeaweedFS) keeps listing an
        emptied one otherwise; on AWS S3 deleting a key that does not exist is a no-op."""
        top = prefix.rstrip("/") + "/"
        keys = [k for k, _ in list(self.list_keys(top))]
        self.delete(keys)
        folders = {top}
        for k in keys:
            parts = k[len(top):].split("/")[:-1]
            folders.update(top + "/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
        for depth in sorted({f.count("/") for f in folders}, reverse=True):
            try:  # one level at a time: a folder goes only once it is empty
                self.delete(sorted(f for f in folders if f.count("/") == depth))
            except CheckpointStorageError as e:  # the objects are gone: that is what counts
                log.debug("could not delete the emptied folders below %s: %s",
                          self.url(top), e)
                return

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy (the bytes do not pass through this process)."""
        try:
            self.client.copy_object(Bucket=self.loc.bucket, Key=dst,
                                    CopySource={"Bucket": self.loc.bucket, "Key": src})
        except Exception as e:
            raise _fail(e, self.loc, f"copying {self.url(src)} to {self.url(dst)}") from e

    # -- files --
    def upload(self, paths: list[str], fault: dict[str, Any] | None = None) -> None:
        """PUT each local file (below staging) to its key, then delete the local copy
        (deleted also when an upload fails: the checkpoint fails and is cleaned up)."""
        from boto3.s3.transfer import TransferConfig

        tc = TransferConfig(multipart_threshold=_MULTIPART, use_threads=False)
        todo = [(p, k) for p in paths if (k := self.key(p)) is not None]

        def one(item: tuple[str, str]) -> None:
            p, k = item
            try:
                if os.path.getsize(p) < _MULTIPART:  # one PUT
                    with open(p, "rb") as f:
                        self.client.put_object(Bucket=self.loc.bucket, Key=k, Body=f)
                else:  # parts, invisible until the upload completes
                    self.client.upload_file(p, self.loc.bucket, k, Config=tc)
            except Exception as e:
                raise _fail(e, self.loc, f"uploading {self.url(k)}") from e

        try:
            half = len(todo) // 2
            with ThreadPoolExecutor(min(_THREADS, max(1, half))) as pool:
                list(pool.map(one, todo[:half]))
                if fault is not None:
                    _faults.point("snapshot.s3_upload", **fault)
                list(pool.map(one, todo[half:]))
        finally:
            for p, _ in todo:
                try:
                    os.unlink(p)
                except OSError:
                    pass

    def download(self, keys: Iterable[str], have: Any = None) -> None:
        """GET each object into its staging path (a temporary file renamed into place, so
        a concurrent reader never sees half a file). ``have(key, path)`` says whether the
        local copy can be kept."""
        todo = [k for k in keys if have is None or not have(k, self.path(k))]

        def one(k: str) -> None:
            dst = self.path(k)
            os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
            tmp = f"{dst}.{uuid.uuid4().hex[:8]}.part"
            try:
                self.client.download_file(self.loc.bucket, k, tmp)
                os.replace(tmp, dst)
            except Exception as e:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                if isinstance(e, OSError) and not hasattr(e, "response"):
                    raise
                if _code(e) in ("NoSuchKey", "404"):
                    raise FileNotFoundError(f"{self.url(k)} does not exist") from None
                raise _fail(e, self.loc, f"downloading {self.url(k)}") from e

        if todo:
            with ThreadPoolExecutor(min(_THREADS, len(todo))) as pool:
                list(pool.map(one, todo))

    def fetch_for(self, ckpt: CompletedCheckpoint, names: list[str]) -> None:
        """In a worker, before it restores: its state files ``names`` and the backend
        files of the operator subtasks that wrote them, onto this machine's disk (what is
        there already, intact, is kept)."""
        base = self.key(ckpt.path)
        if base is None:
            return
        meta = ckpt.meta
        want = set(names)

        def intact_state(k: str, p: str) -> bool:
            info = meta.files[os.path.basename(p)]
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                return False
            return len(data) == info.size and zlib.crc32(data) == info.crc32

        self.download([f"{base}/{n}" for n in sorted(want)], intact_state)
        owners = {owner_name(uid, f.subtask) for uid, e in meta.operators.items()
                  for f in e.files if f.file in want}
        extra: dict[str, int] = {}
        for rel, info in meta.extra_files.items():
            parts = rel.replace(os.sep, "/").split("/")
            if parts[0].removesuffix(".files") in owners or (
                    len(parts) > 2 and parts[-2] in owners and SHARED_DIR in parts):
                key = self.key(os.path.normpath(os.path.join(ckpt.path, rel)))
                if key is not None:
                    extra[key] = int(info["size"])

        def same_size(k: str, p: str) -> bool:
            try:
                return os.path.getsize(p) == extra[k]
            except OSError:
                return False

        try:
            self.download(sorted(extra), same_size)
        except FileNotFoundError as e:
            raise CorruptCheckpointError(
                self.url(base), f"an object the checkpoint needs is missing: {e}") from None


# --- a savepoint at any s3:// URL ---------------------------------------------------------
def savepoint_remote(url: str, job_remote: Remote | None = None) -> tuple[Remote, str]:
    """The store and key prefix of a savepoint (or its parent) at ``url``
    (``savepoint(directory="s3://bucket/prefix")``). A job whose checkpoints are on the
    same bucket lends its settings (endpoint, credentials, staging directory); any other
    bucket is reached with the settings of the environment (``AWS_*``)."""
    loc = S3Storage(url.rstrip("/"))
    if job_remote is not None and job_remote.loc.bucket == loc.bucket:
        return Remote(replace(job_remote.loc, url=loc.url), job_remote.local), loc.prefix
    return Remote(loc, _staging_root(loc)), loc.prefix


def _bucket_why(e: Exception, loc: S3Storage) -> str:
    """Why a request on the bucket of ``loc`` failed, a missing bucket said plainly."""
    if _code(e) in ("404", "NoSuchBucket"):
        return f"bucket {loc.bucket!r} does not exist (create it first)"
    return _why(e, loc)


def check_savepoint_target(url: str, job_remote: Remote | None = None) -> None:
    """Before a savepoint to ``url`` is triggered: the URL names a bucket that exists and
    these credentials may use. Raises CheckpointStorageError naming the URL."""
    try:
        remote, _ = savepoint_remote(url, job_remote)
    except ConfigurationError as e:
        raise CheckpointStorageError(f"savepoint target {url!r}: {e}") from None
    try:
        remote.client.head_bucket(Bucket=remote.loc.bucket)
    except Exception as e:
        raise CheckpointStorageError(f"savepoint target {remote.loc.where()} cannot be "
                                     f"used: {_bucket_why(e, remote.loc)}") from None


class TargetCheck:
    """:func:`check_savepoint_target` in a thread of its own, so that a store that does
    not answer (up to the client's timeouts and retries) holds up no one: the driver's
    loop looks at ``done`` / ``error`` between its other work and gives up after a time
    of its own (:meth:`late`)."""

    def __init__(self, url: str, job_remote: Remote | None,
                 clock: Callable[[], float]) -> None:
        self.url, self.started = url, clock()
        self.where = url  # the URL and endpoint, once known
        self.error: str | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(job_remote,), daemon=True,
                         name="onceflow-savepoint-target").start()

    def _run(self, job_remote: Remote | None) -> None:
        try:
            self.where = savepoint_remote(self.url, job_remote)[0].loc.where()
        except Exception:
            pass  # a bad URL: the check says so
        try:
            check_savepoint_target(self.url, job_remote)
        except OSError as e:
            self.error = str(e)
        except Exception as e:  # never an unexplained hang of the savepoint
            self.error = f"savepoint target {self.where}: {type(e).__name__}: {e}"
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def late(self, now: float, timeout: float) -> str | None:
        """The error once the check has taken more than ``timeout`` seconds, else None."""
        if now - self.started <= timeout:
            return None
        return (f"savepoint target {self.where} cannot be used: the store did not answer "
                f"within {timeout:g} s")


def find_job_file(url: str) -> tuple[str, bytes]:
    """``onceflow savepoint s3://bucket/prefix[/flow]``: the URL and content of the one
    ``_job.json`` at ``url`` or in one of its flows' folders (settings from the
    environment). Raises ConfigurationError when there is none, or several."""
    remote, k = savepoint_remote(url)
    raw = remote.get_bytes(_join(k, JOB_FILE))
    if raw is not None:
        return remote.url(_join(k, JOB_FILE)), raw
    found = []
    for sub, size in remote.list_keys(k + "/" if k else "", "/"):
        if size == -1 and (doc := remote.get_bytes(_join(sub, JOB_FILE))) is not None:
            found.append((remote.url(_join(sub, JOB_FILE)), doc))
    if not found:
        raise ConfigurationError(
            f"no running job found at {url}: there is no {JOB_FILE} object (a job writes it "
            "there only while it runs with a dashboard, e.g. `onceflow run --dashboard 0`)")
    if len(found) > 1:
        raise ConfigurationError(f"{url} holds several running jobs "
                                 f"({', '.join(u for u, _ in found)}); pass one flow's URL")
    return found[0]


# --- the storage interface, on the store --------------------------------------------------
class S3CheckpointStorage(CheckpointStorage):
    """The checkpoints of one flow under ``s3://bucket/<prefix>/<flow>/`` (see the module
    docstring). ``dir`` is the flow's local staging directory; a path below it stands for
    the object of the same name, a path elsewhere (a savepoint to a local directory) is a
    local directory as with :class:`CheckpointStorage`."""

    def __init__(self, loc: S3Storage, flow: str, key_prefix: str | None = None) -> None:
        self.loc = loc
        self.remote = Remote(loc, _staging_root(loc))
        self.prefix = key_prefix if key_prefix is not None else _join(loc.prefix,
                                                                       flow_dir_name(flow))
        self.root = self.remote.local
        self.dir = self.remote.path(self.prefix)

    @property
    def url(self) -> str:
        return self.remote.url(self.prefix)

    def _key(self, path: str) -> str | None:
        if is_s3(path):
            return None  # a savepoint at a URL: the base class asks its own store
        k = self.remote.key(path)
        return k if k is not None and (k + "/").startswith(self.prefix + "/") else None

    def public_path(self, path: str) -> str:
        k = self._key(path)
        return self.remote.url(k) if k is not None else path

    def local_path(self, public: str) -> str:
        head = f"{SCHEME}{self.loc.bucket}/"
        if public.startswith(head) and (public[len(head):] + "/").startswith(self.prefix + "/"):
            return self.remote.path(public[len(head):])
        return public  # a directory, or a savepoint elsewhere (the base class reads URLs)

    def prepare(self) -> None:
        """Check the store at ``run()``: the bucket exists, the credentials work, a write
        and a delete succeed; and start with an empty local staging directory."""
        c, b = _client(self.loc), self.loc.bucket
        probe = _join(self.prefix, f".write-probe-{uuid.uuid4().hex[:8]}")
        try:
            c.head_bucket(Bucket=b)
            c.put_object(Bucket=b, Key=probe, Body=b"ok")
            c.delete_object(Bucket=b, Key=probe)
        except Exception as e:
            raise ConfigurationError(f"checkpoint storage {self.loc.where()} cannot be "
                                     f"used: {_bucket_why(e, self.loc)}") from e
        try:
            if os.path.isdir(self.dir):
                import shutil

                shutil.rmtree(self.dir)
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigurationError(
                f"checkpoint storage {self.url}: the local staging directory {self.dir} is "
                f"not writable ({e.strerror}); pass S3Storage(..., staging_dir=...)") from e

    def _names(self) -> list[str]:
        out = []
        for k, size in self.remote.list_keys(self.prefix + "/", "/"):
            if size == -1 and not self.remote.any_below(k):
                continue  # an emptied folder, not yet forgotten by the store
            out.append(k[len(self.prefix) + 1:].rstrip("/"))
        return out

    def has_metadata(self, path: str) -> bool:
        k = self._key(path)
        if k is None:
            return super().has_metadata(path)
        return self.remote.exists(f"{k}/{METADATA}")

    def complete_ids(self) -> list[int]:
        done = []
        for k, _ in self.remote.list_keys(self.prefix + "/chk-"):
            rest = k[len(self.prefix) + 1:].split("/")
            if len(rest) == 2 and rest[1] == METADATA and (m := _CHK.match(rest[0])):
                done.append(int(m.group(1)))
        return sorted(done)

    def metadata(self, path: str) -> CheckpointMetadata:
        k = self._key(path)
        if k is None:
            return super().metadata(path)
        raw = self.remote.get_bytes(f"{k}/{METADATA}")
        if raw is None:
            raise CorruptCheckpointError(self.remote.url(k),
                                         "no _metadata object (incomplete checkpoint)")
        return decode_metadata(raw, self.remote.url(k))

    def load(self, path: str) -> CompletedCheckpoint:
        """Fetch the metadata and state files of the checkpoint at ``path`` into staging
        and verify them; check that every other file it lists exists with its size."""
        k = self._key(path)
        if k is None:
            return super().load(path)
        return _load(self.remote, k)

    def write_metadata(self, meta: CheckpointMetadata, directory: str | None = None) -> str:
        d = directory or self.path(meta.checkpoint_id)
        k = self._key(d)
        if k is None:
            return super().write_metadata(meta, directory)
        _faults.point("coordinator.before_metadata_rename", checkpoint=meta.checkpoint_id)
        self.remote.put_bytes(f"{k}/{METADATA}", encode_metadata(meta), create_only=True)
        return self.remote.url(k)

    def savepoints(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for n in self._names():
            m = _SAVEPOINT.match(n)
            if m is None:
                continue
            path = os.path.join(self.dir, n)
            if n.endswith(".ref"):
                raw = self.remote.get_bytes(_join(self.prefix, n))
                if raw is None:
                    continue
                path = raw.decode("utf-8").strip()  # a local directory or an s3:// URL
            out.append((int(m.group(1)), path))
        return sorted(out)

    def write_savepoint_ref(self, cid: int, path: str) -> None:
        if not is_s3(path) and os.path.dirname(os.path.abspath(path)) == self.dir:
            return
        where = path if is_s3(path) else os.path.abspath(path)
        self.remote.put_bytes(_join(self.prefix, f"savepoint-{cid}.ref"),
                              where.encode("utf-8"))

    def _move_aside(self, cid: int) -> str:
        src = self.remote.key(self.path(cid))
        assert src is not None
        dst = _join(self.prefix, f"corrupt-chk-{cid}")
        try:
            keys = [k for k, _ in self.remote.list_keys(src + "/")]
            for key in keys:
                self.remote.copy(key, dst + key[len(src):])
            self.remote.delete(keys)
        except CheckpointStorageError as e:
            return f"could not move it aside ({e})"
        return f"moved it to {self.remote.url(dst)} for inspection"

    def discard_path(self, path: str) -> None:
        k = self._key(path)
        super().discard_path(path)
        if k is not None:
            try:
                self.remote.delete_prefix(k)
            except CheckpointStorageError as e:
                log.warning("could not delete %s: %s", self.remote.url(k), e)

    def discard_incomplete(self) -> None:
        done = set(self.complete_ids())
        for cid in self.ids():
            if cid not in done:
                self.discard(cid)

    def shared_files(self) -> list[str]:
        n = len(self.prefix) + 1
        return [k[n:] for k, _ in self.remote.list_keys(_join(self.prefix, SHARED_DIR) + "/")]

    # -- _job.json: how `onceflow savepoint s3://...` finds the running job's dashboard --
    def put_job_file(self, data: bytes) -> None:
        self.remote.put_bytes(_join(self.prefix, JOB_FILE), data)

    def get_job_file(self) -> bytes | None:
        return self.remote.get_bytes(_join(self.prefix, JOB_FILE))

    def delete_job_file(self) -> None:
        self.remote.delete([_join(self.prefix, JOB_FILE)])

    def delete_file(self, rel: str) -> bool:
        super().delete_file(rel)  # a local copy a restore downloaded
        key = _join(self.prefix, rel)
        self.remote.delete([key])
        return True


def _load(remote: Remote, k: str) -> CompletedCheckpoint:
    """The checkpoint or savepoint at key prefix ``k``: its metadata and state files
    downloaded into staging (where ``load_checkpoint`` would find them) and verified, and
    every other object it lists present with its recorded size (one listing per folder;
    the workers download those they restore, ``Remote.fetch_for``)."""
    url = remote.url(k)
    raw = remote.get_bytes(f"{k}/{METADATA}")
    if raw is None:
        raise CorruptCheckpointError(url, "no _metadata object (incomplete checkpoint)")
    meta = decode_metadata(raw, url)
    path = remote.path(k)
    os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        remote.download([f"{k}/{n}" for n in meta.files])
    except FileNotFoundError as e:
        raise CorruptCheckpointError(url, f"a state file is missing: {e}") from None
    with open(os.path.join(path, METADATA), "wb") as f:
        f.write(raw)
    ckpt = CompletedCheckpoint(meta.checkpoint_id, path, meta, remote=remote)
    for name in meta.files:
        ckpt._read_verified(name)
    sizes: dict[str, int] = {}
    for rel in meta.extra_files:
        key = remote.key(os.path.normpath(os.path.join(path, rel)))
        if key is not None:
            sizes[key] = -2
    for d in {key.rsplit("/", 1)[0] for key in sizes}:
        for key, size in remote.list_keys(d + "/"):
            if key in sizes:
                sizes[key] = size
    for rel, info in meta.extra_files.items():
        key = remote.key(os.path.normpath(os.path.join(path, rel)))
        if key is None:
            continue
        if sizes[key] == -2:
            raise CorruptCheckpointError(
                url, f"object {remote.url(key)} that the checkpoint needs is missing (was "
                "it deleted by hand, or the checkpoint copied without its flow's shared/ "
                "objects?)")
        if sizes[key] != info["size"]:
            raise CorruptCheckpointError(
                url, f"object {remote.url(key)} has {sizes[key]} bytes, the checkpoint "
                f"recorded {info['size']}")
    return ckpt


def resolve_restore_url(url: str, flow: str,
                        storage: CheckpointStorage | None) -> CompletedCheckpoint:
    """``restore="s3://bucket/.../chk-<n>"`` (a checkpoint or savepoint), a flow's prefix,
    or the storage root the flow was configured with (its latest valid checkpoint). The
    job's own S3 settings are used when its storage is on the same bucket."""
    loc = S3Storage(url.rstrip("/"))
    if isinstance(storage, S3CheckpointStorage) and storage.loc.bucket == loc.bucket:
        loc = replace(storage.loc, url=loc.url)
    remote = Remote(loc, _staging_root(loc))
    k = loc.prefix
    if remote.exists(f"{k}/{METADATA}"):
        return _load(remote, k)
    for prefix in (k, _join(k, flow_dir_name(flow))):
        st = S3CheckpointStorage(loc, flow, key_prefix=prefix)
        if st.complete_ids():
            found = st.latest_valid()
            if found is not None:
                return found
            raise NoCheckpointError(
                f"every checkpoint under {st.url} is corrupt or incomplete (see the warnings "
                "above); pass an intact checkpoint's URL")
    raise NoCheckpointError(
        f"restore path {url} holds no complete checkpoint (no chk-<n>/_metadata object); "
        "pass a checkpoint such as s3://bucket/prefix/<flow>/chk-<n>, or restore='latest'")
