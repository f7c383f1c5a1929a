"""``python -m onceflow.kafka_cli abort-lingering --bootstrap HOST:PORT --prefix P``

Aborts the open transactions of a KafkaSink whose job will not be restarted (see
:func:`onceflow.kafka.abort_lingering`); ``list`` shows the sink's transactional ids and
their states without changing anything. ``--command-config FILE``: client settings for a
secured cluster (``security.protocol``, ``sasl.*``, ``ssl.*``), a properties file of
``key=value`` lines as Kafka's own tools take."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onceflow.errors import ConfigurationError


def read_properties(path: str) -> dict[str, Any]:
    """``key=value`` lines (``#`` and ``!`` start comments) of a client properties file."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise ConfigurationError(f"--command-config: cannot read {path}: {e}") from e
    out: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise ConfigurationError(f"{path}, line {n}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onceflow.kafka_cli",
                                 description="Kafka helpers for onceflow jobs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("abort-lingering", "abort open transactions of a sink's prefix"),
                        ("list", "list a sink's transactional ids and their states")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--bootstrap", required=True, help="host:port[,host:port]")
        p.add_argument("--prefix", required=True, help="the sink's transactional_id_prefix")
        p.add_argument("--command-config", metavar="FILE",
                       help="client settings (key=value lines: security.protocol, sasl.*, "
                       "ssl.*) for a secured cluster")
    args = ap.parse_args(argv)
    from onceflow import kafka

    try:
        conf = read_properties(args.command_config) if args.command_config else None
    except ConfigurationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "list":
        for tid, pid, state in kafka.list_lingering(args.bootstrap, args.prefix, config=conf):
            print(f"{tid}\tproducer_id={pid}\t{state}")
        return 0
    done = kafka.abort_lingering(args.bootstrap, args.prefix, config=conf)
    for tid, state in done:
        print(f"{tid}\twas {state}\tinitialised (open transaction aborted, producers fenced)")
    print(f"{len(done)} transactional id(s) with prefix {args.prefix!r} initialised",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
