"""Which input a lost transaction's output came from: the source offsets of the checkpoint
that pre-committed it and of the complete checkpoint before it, read back from the flow's
checkpoint directory (for the error a lost Kafka transaction raises)."""

from __future__ import annotations

import os
import re
from typing import Any

OFFSET_BEGINNING = -2


def _positions(ckpt: Any) -> dict[str, dict[tuple[str, int], int]]:
    """{source uid: {(topic, partition): next offset}} of every operator whose state is a
    split reader's positions ``[(split, {(topic, partition): offset}, finished), ...]``."""
    out: dict[str, dict[tuple[str, int], int]] = {}
    meta = ckpt.meta
    operators = meta["operators"] if isinstance(meta, dict) else meta.operators
    for uid, entry in operators.items():
        files = entry["files"] if isinstance(entry, dict) else entry.files
        for f in files:
            name = f["file"] if isinstance(f, dict) else f.file
            st = ckpt.read_state(name)["ops"].get(uid)
            if not isinstance(st, list):
                continue
            for item in st:
                if (isinstance(item, tuple) and len(item) == 3 and isinstance(item[1], dict)
                        and all(isinstance(k, tuple) and len(k) == 2 for k in item[1])):
                    out.setdefault(uid, {}).update(item[1])
    return out


def _complete_ids(flow_dir: str) -> list[int]:
    ids = []
    for name in os.listdir(flow_dir):
        m = re.fullmatch(r"chk-(\d+)", name)
        if m and os.path.exists(os.path.join(flow_dir, name, "_metadata")):
            ids.append(int(m.group(1)))
    return sorted(ids)


def lost_input(flow_dir: str | None, checkpoint_id: int) -> str:
    """``topic[partition] from..to`` for every source partition whose records between the
    checkpoint before ``checkpoint_id`` and ``checkpoint_id`` fed the lost output (the
    half-open offset ranges ``[from, to)``), or why they cannot be told."""
    if flow_dir is None or checkpoint_id < 0:
        return "unknown (no checkpoint directory)"
    try:
        from onceflow.checkpoint.storage import load_checkpoint

        ids = _complete_ids(flow_dir)
        if checkpoint_id not in ids:
            return f"unknown (checkpoint {checkpoint_id} is no longer in {flow_dir})"
        after = _positions(load_checkpoint(os.path.join(flow_dir, f"chk-{checkpoint_id}")))
        earlier = [i for i in ids if i < checkpoint_id]
        before = (_positions(load_checkpoint(os.path.join(flow_dir, f"chk-{earlier[-1]}")))
                  if earlier else {})
        since = f"checkpoint {earlier[-1]}" if earlier else "the start"
        parts = []
        for uid, pos in sorted(after.items()):
            for (topic, part), end in sorted(pos.items()):
                start = before.get(uid, {}).get((topic, part), OFFSET_BEGINNING)
                if start == end:
                    continue
                a = "beginning" if start == OFFSET_BEGINNING else str(start)
                b = "beginning" if end == OFFSET_BEGINNING else str(end)
                parts.append(f"{uid}: {topic}[{part}] offsets {a}..{b}")
        if not parts:
            return f"none that a source recorded (since {since})"
        return f"from {since} to checkpoint {checkpoint_id}, end exclusive: " + "; ".join(parts)
    except Exception as e:  # never hide the loss behind a failure to describe it
        return f"unknown ({type(e).__name__}: {e})"
