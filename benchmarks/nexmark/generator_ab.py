"""q0 in-process with the generator's events() or its plain reference loop (A/B):

    .venv/bin/python benchmarks/nexmark/generator_ab.py new q0
    .venv/bin/python benchmarks/nexmark/generator_ab.py old q0

One run (run.py's run_one: parallelism 1, memory backend, 500,000 events, exactly-once
checkpoints every 10 s); prints events/s and events/s per core."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from onceflow.nexmark.generator import Generator  # noqa: E402

if sys.argv[1] == "old":
    Generator.events = Generator.events_reference  # type: ignore[method-assign]
import run  # noqa: E402

r = run.run_one(sys.argv[2], 1, "memory", 500000, 10.0)
print(json.dumps({k: r[k] for k in ("query", "events_per_s", "events_per_cpu_s", "valid")}))
