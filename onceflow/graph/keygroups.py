"""Key groups: the unit in which keyed state is owned, routed and redistributed.

A key's group is ``(stable_hash(key) >> 7) % max_parallelism``. The hash must be the same in every
process and every run (Python's ``hash()`` of ``str`` is salted per process), so it is
computed from the key's bytes with CRC-32 and mixed with a multiplicative step so that small
integer keys spread evenly. Subtask ``i`` of ``p`` owns the contiguous range
``[i * m // p, (i + 1) * m // p)`` of the ``m`` groups.
"""

from __future__ import annotations

import struct
from typing import Any
from zlib import crc32

from onceflow.errors import ConfigurationError

_MIX = 0x9E3779B1


def _key_bytes(key: object) -> bytes:
    t = type(key)
    if t is str:
        return key.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
    if t is int or t is bool:
        return key.to_bytes((key.bit_length() + 8) // 8 or 1, "little", signed=True)  # type: ignore[attr-defined]
    if t is bytes:
        return key  # type: ignore[return-value]
    if t is float:
        if key.is_integer():  # type: ignore[attr-defined]
            return _key_bytes(int(key))  # type: ignore[call-overload]  # 1.0 == 1, -0.0 == 0
        return struct.pack("<d", key)
    if key is None:
        return b"\x00none"
    if t is tuple:
        parts = [_key_bytes(k) for k in key]  # type: ignore[attr-defined]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    if isinstance(key, str | int | bytes | float | tuple):
        return _key_bytes(_coerce(key))  # subclasses (IntEnum, str subclasses) hash as base
    raise ConfigurationError(
        f"key {key!r} of type {t.__name__} has no stable hash; key_by must return str, int, "
        "bytes, float, bool, None or a tuple of those"
    )


def _coerce(key: object) -> object:
    bases: tuple[Any, ...] = (str, int, bytes, float, tuple)
    for base in bases:
        if isinstance(key, base):
            return base(key)
    return key


def stable_hash(key: object) -> int:
    """A 32-bit hash of ``key`` that is equal in every process and every run."""
    return (crc32(_key_bytes(key)) * _MIX) & 0xFFFFFFFF


def key_group(key: object, max_parallelism: int) -> int:
    return (stable_hash(key) >> 7) % max_parallelism


def key_group_range(subtask: int, parallelism: int, max_parallelism: int) -> tuple[int, int]:
    """The half-open range of key groups owned by ``subtask``."""
    return (
        subtask * max_parallelism // parallelism,
        (subtask + 1) * max_parallelism // parallelism,
    )


def subtask_table(parallelism: int, max_parallelism: int) -> list[int]:
    """``table[kg]`` is the subtask that owns key group ``kg``."""
    table = [0] * max_parallelism
    for i in range(parallelism):
        lo, hi = key_group_range(i, parallelism, max_parallelism)
        for kg in range(lo, hi):
            table[kg] = i
    return table
