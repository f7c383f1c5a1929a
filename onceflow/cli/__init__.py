"""The ``onceflow`` command.

    onceflow run job.py [--parallelism N] [--checkpoint-dir D] [--restore latest|PATH]
                        [--fresh] [--dashboard [HOST:]PORT] [--metrics-port PORT]
                        [--no-progress] [--progress-interval S] [--log-json] [-v]
    onceflow verify job.py --kills K [--seed S]
    onceflow savepoint TARGET [--dir D] [--timeout S]
    onceflow stop TARGET --savepoint [--dir D] [--timeout S]
    onceflow checkpoints DIR [--json]
    onceflow inspect PATH [--json]
    onceflow kafka abort-lingering --bootstrap B --prefix P [--command-config FILE]
    onceflow kafka list --bootstrap B --prefix P [--command-config FILE]

Exit codes: 0 success, 1 the job failed (verify: the outputs differ; savepoint/stop: the
job refused or did not answer), 2 bad arguments or configuration; ``run`` stopped by a
signal: 130 after Ctrl-C (SIGINT), 143 after SIGTERM (128 + the signal's number), whether
it stopped with a savepoint (first signal) or at once (second).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from onceflow.api.flow import Flow
from onceflow.checkpoint.storage import METADATA, CheckpointStorage, load_checkpoint
from onceflow.errors import ConfigurationError, JobFailedError, OnceflowError
from onceflow.graph.keygroups import key_group_range


def _load_flow(path: str, name: str) -> Flow:
    if not os.path.isfile(path):
        raise ConfigurationError(f"job file {path} does not exist")
    folder = os.path.dirname(os.path.abspath(path))  # like `python job.py`: siblings import
    if sys.path[:1] != [folder]:
        sys.path.insert(0, folder)
    try:
        ns = runpy.run_path(path, run_name="__onceflow_job__")
    except Exception as e:  # the job file itself raised: show where, in the user's file
        from onceflow._usertrace import format_user_traceback

        raise ConfigurationError(
            f"job file {path} raised while loading:\n{format_user_traceback(e).rstrip()}"
        ) from None
    obj = ns.get(name)
    if obj is None:
        raise ConfigurationError(
            f"{path} defines no {name!r}; define a module-level Flow named {name!r} (and run "
            "it only under `if __name__ == '__main__':`), or pass --flow NAME")
    if callable(obj) and not isinstance(obj, Flow):
        obj = obj()
    if not isinstance(obj, Flow):
        raise ConfigurationError(f"{path}: {name!r} is a {type(obj).__name__}, not a Flow")
    return obj


def _observe_options(args: argparse.Namespace) -> dict[str, Any]:
    """run's observability flags, checked before the job file is even loaded."""
    from onceflow.cli.remote import TOKEN_ENV
    from onceflow.runtime.observers import validate_options

    token = os.environ.get(TOKEN_ENV) or None
    if args.progress_interval is not None and args.progress_interval <= 0:
        raise ConfigurationError("--progress-interval must be a number of seconds > 0")
    progress: bool | float = False if args.no_progress else (args.progress_interval or True)
    opts = {"dashboard": args.dashboard, "metrics_port": args.metrics_port,
            "progress": progress, "dashboard_token": token if args.dashboard else None}
    validate_options(**opts)
    return opts


def cmd_run(args: argparse.Namespace) -> int:
    opts = _observe_options(args)
    flow = _load_flow(args.job, args.flow)
    if args.parallelism is not None:
        flow.parallelism = args.parallelism
    if args.checkpoint_dir is not None:
        if flow.checkpoint_config is None:
            flow.enable_checkpointing(1.0, args.checkpoint_dir)
        else:
            flow.checkpoint_config = replace(flow.checkpoint_config, storage=args.checkpoint_dir)
    from onceflow.runtime import interrupt

    interrupt.resume_hint = _resume_command(args)
    try:
        executor = None
        if getattr(args, "ray", None):
            from onceflow.executors import Ray

            executor = Ray(address=None if args.ray == "local" else args.ray)
        result = flow.run(restore=args.restore, fresh=args.fresh, executor=executor, **opts)
    except JobFailedError as e:
        from onceflow import logging as oflog

        if oflog.json_active():  # a log pipeline gets the failure, the user's frames too
            logging.getLogger("onceflow").error(
                "job %r failed: %s", flow.name, e.reason,
                extra={"event": "job_failed", "flow": flow.name, "cause": e.reason,
                       "user_traceback": e.user_traceback})
        else:
            print(f"onceflow: job failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: what to do next is already printed
        return 128 + (interrupt.last_signal or signal.SIGINT)
    except (OnceflowError, OSError):
        raise  # main() prints their message
    except Exception as e:  # user code run by the driver (a source's splits(), ...)
        from onceflow._usertrace import format_user_traceback

        print(f"onceflow: job failed before it ran:\n{format_user_traceback(e).rstrip()}",
              file=sys.stderr)
        return 1
    print(result.summary())
    if interrupt.last_signal is not None:  # stopped with a savepoint by Ctrl-C / SIGTERM
        return 128 + interrupt.last_signal
    return 0


def _resume_command(args: argparse.Namespace) -> str:
    words = ["onceflow", "run", args.job]
    if args.flow != "flow":
        words += ["--flow", args.flow]
    if args.checkpoint_dir is not None:
        words += ["--checkpoint-dir", args.checkpoint_dir]
    return " ".join(shlex.quote(w) for w in [*words, "--restore", "latest"])


_ENTRIES = ("chk-", "corrupt-chk-", "savepoint-")


def _checkpoint_dirs(root: str) -> tuple[str, list[str]]:
    """The directory that holds chk-<n> entries: ``root`` itself or its only flow folder."""
    names = os.listdir(root)
    if any(n.startswith(_ENTRIES) for n in names):
        return root, names
    subs = [n for n in names if os.path.isdir(os.path.join(root, n))]
    flows = [s for s in subs if any(x.startswith(_ENTRIES)
                                    for x in os.listdir(os.path.join(root, s)))]
    if len(flows) == 1:
        d = os.path.join(root, flows[0])
        return d, os.listdir(d)
    if len(flows) > 1:
        raise ConfigurationError(
            f"{root} holds checkpoints of several flows ({', '.join(sorted(flows))}); "
            "pass one of those directories")
    return root, names


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from onceflow.checkpoint import s3

    storage: CheckpointStorage | None = None
    if s3.is_s3(args.dir):  # a flow's prefix on an object store: s3://bucket/prefix/<flow>
        loc = s3.location(args.dir.rstrip("/"))
        storage = s3.S3CheckpointStorage(loc, "", key_prefix=loc.prefix)
        d, names = storage.dir, storage._names()
    elif not os.path.isdir(args.dir):
        raise ConfigurationError(f"{args.dir} is not a directory")
    else:
        d, names = _checkpoint_dirs(args.dir)
    rows: list[dict[str, Any]] = []
    for n in names:
        if not n.startswith(_ENTRIES):
            continue
        path = os.path.join(d, n)
        try:
            cid = int(n.split("-")[2] if n.startswith("corrupt-") else n.split("-")[1])
        except (IndexError, ValueError):
            continue
        row: dict[str, Any] = {"id": cid, "kind": "savepoint" if n.startswith("savepoint-")
                               else "checkpoint",
                               "path": storage.public_path(path) if storage else path}
        if n.startswith("corrupt-"):
            row["status"] = "corrupt (moved aside)"
        elif not (storage.has_metadata(path) if storage
                  else os.path.exists(os.path.join(path, METADATA))):
            row["status"] = "incomplete"
        else:
            try:
                meta = (storage.load(path) if storage else load_checkpoint(path)).meta
                row["status"] = "complete" + (" (final)" if meta.final else "")
                row["time"] = meta.completion_time
                row["duration_s"] = meta.duration
                row["size"] = meta.size
                row["incremental_size"] = meta.incremental_size
                row["files"] = len(meta.files) + len(meta.extra_files)
                row["shared_files"] = len(meta.shared)
                row["unaligned_subtasks"] = meta.unaligned_subtasks
                row["inflight_bytes"] = meta.inflight_bytes
            except OnceflowError as e:
                row["status"] = f"corrupt: {e}"
        rows.append(row)
    rows.sort(key=lambda r: r["id"])
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no checkpoints in {d}")
        return 0
    print(f"{'id':>6}  {'kind':<10} {'status':<18} {'completed (UTC)':<20} {'duration':>9} "
          f"{'full size':>14} {'incremental':>14} {'files':>5} {'alignment':<10} "
          f"{'in-flight':>12}")
    import time as _t
    for r in rows:
        when = _t.strftime("%Y-%m-%d %H:%M:%S", _t.gmtime(r["time"])) if "time" in r else "-"
        dur = f"{r['duration_s'] * 1e3:.0f} ms" if "duration_s" in r else "-"
        size = f"{r['size']:,} B" if "size" in r else "-"
        inc = f"{r['incremental_size']:,} B" if "incremental_size" in r else "-"
        align = "-" if "unaligned_subtasks" not in r else (
            f"unaligned {r['unaligned_subtasks']}" if r["unaligned_subtasks"] else "aligned")
        flying = f"{r['inflight_bytes']:,} B" if "inflight_bytes" in r else "-"
        print(f"{r['id']:>6}  {r['kind']:<10} {r['status']:<18} {when:<20} {dur:>9} "
              f"{size:>14} {inc:>14} {r.get('files', '-'):>5} {align:<10} {flying:>12}")
    return 0


def _describe_state(kind: str | None, state: Any) -> dict[str, Any]:
    if state is None:
        return {}
    if kind == "source":
        return {"splits": [{"split": repr(s), "position": repr(p), "finished": f}
                           for s, p, f, *_ in state]}  # (+ watermark state)
    if kind == "sink" and isinstance(state, dict) and "pending" in state:
        return {"pending_transactions": [{"checkpoint": c, "transaction": repr(t)}
                                         for c, t in state["pending"]]}
    if isinstance(state, dict) and state.get("format") == "memory-keyed-1":
        return {"keyed_state": {name: len(t) for name, t in state["tables"].items()
                                if not name.startswith("\x00")},
                "timers": _timer_count(state)}
    if isinstance(state, dict) and state.get("format") == "memory-changelog-1":
        chain = state["manifest"]["chain"]
        return {"keyed_state": "memory changelog", "kinds": state["kinds"],
                "chain_files": len(chain), "chain_bytes": sum(c[1] for c in chain),
                "timers": _timer_count(state)}
    if isinstance(state, dict) and state.get("format") in ("rocksdb-1", "rocksdb-2"):
        files = state["manifest"]["files"]
        return {"keyed_state": "rocksdb" + (" (incremental)" if state["manifest"].get(
                    "incremental") else " (full)"),
                "kinds": state["kinds"], "files": len(files),
                "bytes": sum(f[1] for f in files.values()), "timers": _timer_count(state)}
    return {"state": repr(state)[:200]}


def _latest_checkpoint(path: str) -> str:
    """``path`` itself when it is a checkpoint; else the newest complete checkpoint or
    savepoint that verifies in the flow folder (or the storage root of one flow) ``path``.
    Nothing is moved or deleted."""
    if os.path.exists(os.path.join(path, METADATA)) or not os.path.isdir(path):
        return path
    d, _ = _checkpoint_dirs(path)
    storage = CheckpointStorage.__new__(CheckpointStorage)
    storage.root = storage.dir = d
    found = [(cid, storage.path(cid)) for cid in storage.complete_ids()]
    found += [(cid, p) for cid, p in storage.savepoints() if os.path.isdir(p)]
    problems: list[str] = []
    for _, candidate in sorted(found, reverse=True):
        try:
            load_checkpoint(candidate)
        except OnceflowError as e:
            problems.append(str(e))
            continue
        if problems:
            print(f"skipped newer checkpoints that do not verify: {'; '.join(problems)}",
                  file=sys.stderr)
        return candidate
    raise ConfigurationError(
        f"{path} holds no complete checkpoint (no chk-<n>/_metadata)"
        + (f" that verifies ({'; '.join(problems)})" if problems else "")
        + "; pass a checkpoint directory (.../chk-<n>) or a flow's checkpoint folder")


def _key_groups(lo: int, end: int) -> str:
    """A key-group range as the docs write it: first..last, both included."""
    return f"{lo}..{end - 1}"


def cmd_inspect(args: argparse.Namespace) -> int:
    from onceflow.checkpoint import s3

    if s3.is_s3(args.path):  # a checkpoint, or a flow's newest, on an object store
        ckpt = s3.resolve_restore_url(args.path, "", None)
    else:
        ckpt = load_checkpoint(_latest_checkpoint(os.path.abspath(args.path)))
    meta = ckpt.meta
    mp = meta.max_parallelism
    out: dict[str, Any] = {"checkpoint": ckpt.id, "path": ckpt.location, "flow": meta.flow,
                           "final": meta.final, "max_parallelism": mp,
                           "format": meta.format, "kind": meta.kind, "operators": []}
    cache: dict[str, dict[str, Any]] = {}
    for uid, entry in sorted(meta.operators.items()):
        p = entry.parallelism
        subtasks = []
        for f in sorted(entry.files, key=lambda f: f.subtask):
            blob = cache.get(f.file) or cache.setdefault(f.file, ckpt.read_state(f.file))
            sub: dict[str, Any] = {"subtask": f.subtask, "file": f.file,
                                   "file_size": meta.files[f.file].size}
            if entry.kind in ("reduce", "process"):
                sub["key_groups"] = list(key_group_range(f.subtask, p, mp))
            sub.update(_describe_state(entry.kind, blob["ops"].get(uid)))
            subtasks.append(sub)
        out["operators"].append({"uid": uid, "kind": entry.kind, "parallelism": p,
                                 "stateful": entry.stateful, "subtasks": subtasks})
    if args.json:
        print(json.dumps(out, indent=1, default=repr))
        return 0
    print(f"checkpoint {ckpt.id} of flow {meta.flow!r} at {ckpt.location}"
          f"{' (final)' if out['final'] else ''}; max_parallelism {mp}")
    for op in out["operators"]:
        print(f"  {op['uid']} ({op['kind']}, parallelism {op['parallelism']}"
              f"{', stateless' if not op['stateful'] else ''})")
        for s in op["subtasks"]:
            extra = {k: v for k, v in s.items() if k not in ("subtask", "file", "file_size")}
            if "key_groups" in extra:
                extra["key_groups"] = _key_groups(*extra["key_groups"])
            print(f"    [{s['subtask']}] {s['file_size']:,} B  "
                  + "  ".join(f"{k}={v}" for k, v in extra.items()))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from onceflow.cli.verify import verify

    if args.kills < 1:
        raise ConfigurationError(f"--kills must be at least 1, got {args.kills}")
    flow = _load_flow(args.job, args.flow)
    if args.parallelism is not None:
        flow.parallelism = args.parallelism
    try:
        return verify(flow, args.kills, sys.stdout, seed=args.seed)
    except JobFailedError as e:
        print(f"onceflow verify: the job failed: {e}", file=sys.stderr)
        return 1


def cmd_savepoint(args: argparse.Namespace) -> int:
    from onceflow.cli.remote import savepoint

    stop = args.command == "stop"
    path = savepoint(args.target, args.dir, stop, args.timeout)
    print(path)
    if stop:
        print("the job stops: its sources ended and its sinks commit", file=sys.stderr)
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    from onceflow import kafka_cli

    argv = [args.action, "--bootstrap", args.bootstrap, "--prefix", args.prefix]
    if args.command_config:
        argv += ["--command-config", args.command_config]
    return int(kafka_cli.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    from onceflow import __version__

    ap = argparse.ArgumentParser(prog="onceflow",
                                 description="Run and inspect onceflow jobs.")
    ap.add_argument("--version", action="version", version=f"onceflow {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the Flow a Python file defines",
                       description="Run the module-level Flow of job.py (command-line values "
                       "override the file's).")
    r.add_argument("job", help="a Python file defining a module-level Flow")
    r.add_argument("--flow", default="flow", help="name of the Flow (or a function "
                   "returning one) in the file (default: flow)")
    r.add_argument("--parallelism", type=int, help="default parallelism of the operators")
    r.add_argument("--checkpoint-dir", help="checkpoint storage directory")
    r.add_argument("--ray", metavar="ADDRESS",
                   help="run the workers as Ray actors: 'auto', 'ray://HOST:PORT' or 'local' "
                        "(a new single-node Ray); see docs/ray.md")
    r.add_argument("--restore", help="'latest' or a checkpoint directory")
    r.add_argument("--fresh", action="store_true",
                   help="start from the beginning even though the checkpoint storage holds "
                   "completed checkpoints of this flow (its output is written again)")
    r.add_argument("--dashboard", metavar="[HOST:]PORT",
                   help="serve the web dashboard (127.0.0.1 unless HOST is given; port 0 "
                   "picks one; any other host needs ONCEFLOW_DASHBOARD_TOKEN)")
    r.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: pick one)")
    r.add_argument("--no-progress", action="store_true",
                   help="do not print live progress to stderr")
    r.add_argument("--progress-interval", type=float, metavar="S",
                   help="seconds between progress lines (default 0.5 on a terminal, 5 "
                   "otherwise)")
    r.add_argument("--log-json", action="store_true",
                   help="log JSON lines (also: ONCEFLOW_LOG_JSON=1)")
    r.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    r.set_defaults(func=cmd_run)
    v = sub.add_parser("verify", help="check exactly-once output under worker kills",
                       description="Run the flow of job.py three times: twice undisturbed "
                       "(the output must be deterministic), then while SIGKILLing a random "
                       "worker K times; compare what its FileSinks committed, line by line "
                       "in any order. Other sinks are refused. Exit 0 identical, 1 "
                       "different, 2 not verifiable.")
    v.add_argument("job", help="a Python file defining a module-level Flow (bounded input)")
    v.add_argument("--kills", type=int, required=True, metavar="K",
                   help="how many times to kill a worker in the second run")
    v.add_argument("--flow", default="flow", help="name of the Flow in the file")
    v.add_argument("--parallelism", type=int, help="default parallelism of the operators")
    v.add_argument("--seed", type=int, help="seed of the kill schedule (printed)")
    v.add_argument("--log-json", action="store_true", help="log JSON lines")
    v.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    v.set_defaults(func=cmd_verify)
    for name, what in (("savepoint", "take a savepoint of a running job"),
                       ("stop", "take a savepoint and stop a running job")):
        s = sub.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]}. "
                           "TARGET is its dashboard URL (http://127.0.0.1:PORT) or its "
                           "checkpoint directory (the job must run with a dashboard). A "
                           "token goes in ONCEFLOW_DASHBOARD_TOKEN. Prints the savepoint's "
                           "path.")
        s.add_argument("target", metavar="TARGET")
        if name == "stop":
            s.add_argument("--savepoint", action="store_true", required=True,
                           help="required: the job stops after a savepoint")
        s.add_argument("--dir", help="directory for the savepoint (default: the job's "
                       "checkpoint directory)")
        s.add_argument("--timeout", type=float, help="seconds to wait for the savepoint")
        s.set_defaults(func=cmd_savepoint)
    c = sub.add_parser("checkpoints", help="list the checkpoints in a storage directory",
                       description="Every checkpoint in DIR (a storage directory or one "
                       "flow's folder in it, or a flow's prefix on an object store: "
                       "s3://bucket/prefix/<flow>): id, status, time, duration, size, files.")
    c.add_argument("dir")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=cmd_checkpoints)
    i = sub.add_parser("inspect", help="show what one checkpoint holds",
                       description="Operators, parallelism, per-subtask sizes and key-group "
                       "ranges, source positions and sink pending transactions.")
    i.add_argument("path", help="a checkpoint or savepoint directory (.../chk-<n>), or a "
                   "flow's checkpoint folder (or a storage root holding one flow): its "
                   "newest complete checkpoint; or the same as an s3:// URL")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_inspect)
    k = sub.add_parser("kafka", help="Kafka helpers",
                       description="List or abort the transactions a KafkaSink left open "
                       "(for a job that will not be restarted).")
    k.add_argument("action", choices=["abort-lingering", "list"])
    k.add_argument("--bootstrap", required=True)
    k.add_argument("--prefix", required=True, help="the sink's transactional_id_prefix")
    k.add_argument("--command-config", metavar="FILE", help="client settings (key=value "
                   "lines: security.protocol, sasl.*, ssl.*) for a secured cluster")
    k.set_defaults(func=cmd_kafka)
    return ap


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0..65535")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    from onceflow import logging as oflog

    args = build_parser().parse_args(argv)
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    if getattr(args, "log_json", False) or oflog.json_requested():
        # JSON logs feed a log pipeline: one line per checkpoint and restart (INFO)
        oflog.configure(json=True, level=logging.INFO)
    elif level == logging.INFO:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # where the dashboard and metrics are served is worth a line even when not verbose
    logging.getLogger("onceflow.web").setLevel(logging.INFO)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:  # Ctrl-C before a job ran (a job run handles its own)
        print(f"onceflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `onceflow checkpoints DIR | head`: the reader has had enough
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for `cat` in the same place
    except (ConfigurationError, OnceflowError, OSError) as e:
        print(f"onceflow {args.command}: {e}", file=sys.stderr)
        from onceflow.cli.remote import RemoteError

        return 1 if isinstance(e, RemoteError) else 2


if __name__ == "__main__":
    sys.exit(main())


def _timer_count(state: dict[str, Any]) -> int:
    if "timer_count" in state:  # RocksDB: the timers are in RocksDB, the head counts them
        return int(state["timer_count"])
    return len(state["timers"]) + len(state.get("event_timers", ()))
