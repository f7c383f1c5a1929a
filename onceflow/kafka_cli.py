"""``python -m onceflow.kafka_cli abort-lingering --bootstrap HOST:PORT --prefix P``

Aborts the open transactions of a KafkaSink whose job will not be restarted (see
:func:`onceflow.kafka.abort_lingering`); ``list`` shows the sink's transactional ids and
their states without changing anything."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onceflow.kafka_cli",
                                 description="Kafka helpers for onceflow jobs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("abort-lingering", "abort open transactions of a sink's prefix"),
                        ("list", "list a sink's transactional ids and their states")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--bootstrap", required=True, help="host:port[,host:port]")
        p.add_argument("--prefix", required=True, help="the sink's transactional_id_prefix")
    args = ap.parse_args(argv)
    from onceflow import kafka

    if args.cmd == "list":
        for tid, pid, state in kafka.list_lingering(args.bootstrap, args.prefix):
            print(f"{tid}\tproducer_id={pid}\t{state}")
        return 0
    done = kafka.abort_lingering(args.bootstrap, args.prefix)
    for tid, state in done:
        print(f"{tid}\twas {state}\tinitialised (open transaction aborted, producers fenced)")
    print(f"{len(done)} transactional id(s) with prefix {args.prefix!r} initialised",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
