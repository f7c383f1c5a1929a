"""Nexmark queries (benchmarks/nexmark/queries.py) against DuckDB SQL over the same
generated events: the committed output of each query equals the reference, in order and
out of order, at parallelism 1 and 2, with the memory and RocksDB backends."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import onceflow as of
from onceflow.nexmark import Generator, NexmarkConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "nexmark"))
import queries

EVENTS = 60_000

SQL = {
    "q0": "SELECT auction, bidder, price, date_time, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908::DOUBLE * price, date_time, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """SELECT P.name, P.city, P.state, A.id
             FROM auction A INNER JOIN person P ON A.seller = P.id
             WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
}


def reference(query: str, config: NexmarkConfig) -> Counter[tuple[Any, ...]]:
    events = Generator(config).events(0, config.events)
    con = duckdb.connect()
    for kind in ("person", "auction", "bid"):
        rows = [{k: v for k, v in e.items() if k != "kind"} for e in events if e["kind"] == kind]
        con.register(kind, pa.Table.from_pylist(rows))
    return Counter(tuple(r) for r in con.execute(SQL[query]).fetchall())


CASES = [("q0", 1, "memory", 0.0), ("q1", 2, "memory", 2.0), ("q2", 2, "memory", 0.0),
         ("q3", 1, "memory", 0.0), ("q3", 2, "rocksdb", 2.0), ("q3", 2, "memory", 2.0)]


@pytest.mark.parametrize(("query", "parallelism", "backend", "disorder"), CASES)
def test_query_output_equals_duckdb(tmp_path: Path, query: str, parallelism: int,
                                    backend: str, disorder: float) -> None:
    config = NexmarkConfig(events=EVENTS, seed=11, out_of_orderness=disorder,
                           late_fraction=0.01 if disorder else 0.0)
    be = (of.state.RocksDBBackend(local_dir=str(tmp_path / "rocks")) if backend == "rocksdb"
          else of.state.MemoryBackend())
    flow = of.Flow(f"nexmark-{query}", parallelism=parallelism, state_backend=be)
    flow.enable_checkpointing(0.2, tmp_path / "ck")
    queries.build(flow, query, config, of.sinks.FileSink(tmp_path / "o"), partitions=3)
    flow.run()
    got = Counter(tuple(r) for r in of.sinks.read_committed(tmp_path / "o"))
    want = reference(query, config)
    assert sum(want.values()) > (20 if query == "q3" else 150)
    extra, missing = list((got - want).items())[:3], list((want - got).items())[:3]
    assert got == want, f"{sum(got.values())} vs {sum(want.values())}: {extra=} {missing=}"
