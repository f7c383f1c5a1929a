"""A Kafka → keyed running total → Kafka job for crash tests, and its exact checks.

    python tests/kafkajobs.py --bootstrap B --input T --output T --ckpt DIR [--restore latest]

Input records are JSON ``{"id": i, "user": "u<i%USERS>", "amount": i%10}``; the job emits,
for every input record, ``{"user", "total", "id", "amount"}`` where ``total`` is the user's
running total including that record, keyed by user (so a user's outputs stay in one
partition, in order). ``check_output`` verifies exactly-once from what a read_committed
consumer sees.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from typing import Any

import onceflow as of
from onceflow.kafka import KafkaSink, KafkaSource
from onceflow.testing import throttle

USERS = 50


def make_input(i: int) -> dict[str, Any]:
    return {"id": i, "user": f"u{i % USERS}", "amount": i % 10}


def build(flow: of.Flow, bootstrap: str, inp: str, out: str, rate: float,
          prefix: str | None, txn_timeout_ms: int = 120_000, tag: str | None = None,
          client_config: dict[str, Any] | None = None, source_timeout: float = 30.0,
          **sink_kw: Any) -> None:
    totals = (flow.source(KafkaSource(bootstrap, [inp], deserializer="json",
                                      value_only=True, stop_at="end",
                                      consumer_config=client_config,
                                      timeout=source_timeout), name="kafka-in")
              .map(throttle(rate, every=64), name="throttle")
              .map(lambda r: {"user": r["user"], "total": r["amount"], "id": r["id"],
                              "amount": r["amount"]}, name="parse")
              .key_by(lambda r: r["user"])
              .reduce(lambda a, b: {"user": b["user"], "total": a["total"] + b["amount"],
                                    "id": b["id"], "amount": b["amount"]}, name="total"))
    if tag is not None:  # which job wrote it (jobs sharing an output topic)
        totals = totals.map(lambda r: {**r, "job": tag}, name="tag")
    totals.sink(KafkaSink(bootstrap, out, key=lambda r: r["user"], key_serializer="str",
                          serializer="json", transactional_id_prefix=prefix,
                          transaction_timeout_ms=txn_timeout_ms, producer_config=client_config,
                          **sink_kw),
                name="kafka-out")


def check_output(records: list[tuple[int, int, dict[str, Any]]], n: int) -> list[str]:
    """Problems with the committed output ``[(partition, offset, value)]`` of a run over
    inputs ``0..n-1``; [] when every input's effect is there exactly once."""
    problems: list[str] = []
    ids = [v["id"] for _, _, v in records]
    seen: dict[int, int] = defaultdict(int)
    for i in ids:
        seen[i] += 1
    dups = sorted(i for i, c in seen.items() if c > 1)
    missing = sorted(set(range(n)) - set(seen))
    extra = sorted(set(seen) - set(range(n)))
    if len(records) != n:
        problems.append(f"{len(records)} output records, expected {n}")
    if dups:
        problems.append(f"{len(dups)} ids more than once, e.g. {dups[:10]}")
    if missing:
        problems.append(f"{len(missing)} ids missing, e.g. {missing[:10]}")
    if extra:
        problems.append(f"unexpected ids {extra[:10]}")
    # per user, in partition order, each total = previous total + that record's amount
    by_user: dict[str, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    for rec in records:
        by_user[rec[2]["user"]].append(rec)
    for user, recs in by_user.items():
        if len({p for p, _, _ in recs}) != 1:
            problems.append(f"{user}: outputs in several partitions")
            continue
        recs.sort(key=lambda r: r[1])
        prev = 0
        for _, off, v in recs:
            if v["amount"] != make_input(v["id"])["amount"] or v["total"] != prev + v["amount"]:
                problems.append(f"{user}: at offset {off} total {v['total']} after {prev} "
                                f"with amount {v['amount']} (id {v['id']})")
                break
            prev = v["total"]
        want = sum(make_input(i)["amount"] for i in range(n) if f"u{i % USERS}" == user)
        if prev != want:
            problems.append(f"{user}: final total {prev}, expected {want}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--rate", type=float, default=2000.0, help="records/s per subtask")
    ap.add_argument("--prefix", default=None)
    ap.add_argument("--restore", default=None)
    ap.add_argument("--attempts", type=int, default=20)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--txn-timeout-ms", type=int, default=120_000)
    ap.add_argument("--source-timeout", type=float, default=30.0,
                    help="KafkaSource(timeout=...): how long its start-up calls wait")
    ap.add_argument("--on-lost", default=None, help="KafkaSink(on_lost_transaction=...)")
    ap.add_argument("--tag", default=None, help="add 'job': TAG to every output record")
    ap.add_argument("--client-config", type=json.loads, default=None,
                    help="JSON: the client settings of source and sink (a secured cluster)")
    ap.add_argument("--unchecked-timeout", action="store_true",
                    help="skip the sink's transaction timeout check (to provoke a timeout)")
    args = ap.parse_args()
    if args.unchecked_timeout:
        from onceflow.connectors.kafka.sink import KafkaTransactionalSink
        KafkaTransactionalSink.validate_checkpointing = (  # type: ignore[method-assign]
            lambda self, interval, timeout: None)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    flow = of.Flow("kafka-totals", parallelism=args.parallelism, batch_size=64,
                   restart_strategy=of.restart.fixed_delay(attempts=args.attempts,
                                                           delay=args.delay))
    flow.enable_checkpointing(args.interval, args.ckpt, retained=2, timeout=30)
    sink_kw = {"on_lost_transaction": args.on_lost} if args.on_lost else {}
    build(flow, args.bootstrap, args.input, args.output, args.rate, args.prefix,
          args.txn_timeout_ms, args.tag, args.client_config,
          source_timeout=args.source_timeout, **sink_kw)
    result = flow.run(restore=args.restore)
    print(json.dumps({"restarts": result.restarts, "failures": result.failures,
                      "checkpoints": len(result.completed_checkpoints),
                      "restored_from": result.restored_from,
                      "lost_transactions": result.lost_transactions}), flush=True)


if __name__ == "__main__":
    main()
