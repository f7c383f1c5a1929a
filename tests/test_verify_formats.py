"""``onceflow verify`` and FileSink's formats: Parquet output is compared record by record,
CSV output is refused with a clear message (a CSV file cannot say whether it has a header)."""

from __future__ import annotations

from pathlib import Path

import pytest

import onceflow as of
from onceflow.cli.verify import comparable_sinks, read_lines


def _flow(out: Path, fmt: str) -> of.Flow:
    flow = of.Flow(f"verify-{fmt}", parallelism=1)
    flow.enable_checkpointing(0.5, str(out.parent / f"ck-{fmt}"))
    (flow.source(of.sources.Collection([(i, i * i) for i in range(50)]))
         .sink(of.sinks.FileSink(str(out), format=fmt), name="files"))
    return flow


def test_parquet_output_is_read_back_record_by_record(tmp_path: Path) -> None:
    flow = _flow(tmp_path / "pq", "parquet")
    flow.run()
    (node,) = comparable_sinks(flow)
    lines = read_lines(node.fn)
    assert sum(lines.values()) == 50
    assert b"[7,49]" in lines


def test_csv_output_is_refused_naming_the_sink(tmp_path: Path) -> None:
    flow = _flow(tmp_path / "csv", "csv")
    with pytest.raises(of.ConfigurationError, match=r"'files'.*format='jsonl'"):
        comparable_sinks(flow)
