"""Key groups: a stable hash, an even spread, and ranges that partition the groups."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from collections import Counter
from enum import IntEnum
from typing import NamedTuple

import pytest

import onceflow as of
from onceflow.graph.keygroups import key_group, key_group_range, stable_hash, subtask_table

KEYS: list[object] = [
    "", "a", "hello", "ünïcödé ☃", "x" * 1000,
    0, 1, -1, 127, 128, 255, 256, -129, 2**31, -(2**63), 2**100,
    b"", b"\x00", b"bytes", bytes(range(256)),
    0.5, -1.25, 1e300, float("inf"),
    None, True, False,
    (), ("a",), ("a", 1), (1, "a"), (("nested", 2), None, b"z", 2.5, False),
]


def _hashes_in_subprocess(keys: list[object], seed: str) -> tuple[list[int], int]:
    """``stable_hash`` of every key, and the builtin ``hash("hello")``, in a fresh process."""
    code = (
        "import pickle, sys\n"
        "from onceflow.graph.keygroups import stable_hash\n"
        "keys = pickle.loads(sys.stdin.buffer.read())\n"
        "print(([stable_hash(k) for k in keys], hash('hello')))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(keys), env=env,
                         capture_output=True, check=True, timeout=60)
    return ast.literal_eval(out.stdout.decode())


def test_stable_hash_is_equal_in_processes_with_different_hash_seeds() -> None:
    mine = [stable_hash(k) for k in KEYS]
    theirs_1, builtin_1 = _hashes_in_subprocess(KEYS, "1")
    theirs_2, builtin_2 = _hashes_in_subprocess(KEYS, "4242")
    assert builtin_1 != builtin_2, "the seeds did not change the builtin hash"
    assert theirs_1 == mine
    assert theirs_2 == mine


def test_stable_hash_is_a_32_bit_unsigned_int() -> None:
    for k in KEYS:
        h = stable_hash(k)
        assert isinstance(h, int) and 0 <= h < 2**32


def test_subclasses_of_key_types_hash_like_their_base() -> None:
    class Color(IntEnum):
        RED = 3

    class Point(NamedTuple):
        x: int
        y: str

    class Name(str):
        pass

    assert stable_hash(Color.RED) == stable_hash(3)
    assert stable_hash(Point(1, "y")) == stable_hash((1, "y"))
    assert stable_hash(Name("bob")) == stable_hash("bob")


@pytest.mark.parametrize(("a", "b"), [(True, 1), (False, 0), (1, 1.0), (0.0, -0.0), (7, 7.0)])
def test_equal_keys_land_in_the_same_key_group(a: object, b: object) -> None:
    # key_by promises that records with equal keys meet in one subtask (where keyed state
    # is a dict, so they share state). Python considers these keys equal.
    assert a == b
    assert stable_hash(a) == stable_hash(b)


@pytest.mark.parametrize("key", [[1], {"a": 1}, {1}, frozenset({1}), object()])
def test_keys_without_a_stable_hash_are_rejected_naming_the_type(key: object) -> None:
    with pytest.raises(of.ConfigurationError, match=type(key).__name__):
        stable_hash(key)
    with pytest.raises(of.ConfigurationError, match=type(key).__name__):
        stable_hash(("ok", key))


@pytest.mark.parametrize("keys", [
    pytest.param(list(range(10_000)), id="int"),
    pytest.param([f"user-{i}" for i in range(10_000)], id="str"),
    pytest.param([str(i) for i in range(10_000)], id="digits"),
    pytest.param([(i % 100, f"k{i}") for i in range(10_000)], id="tuple"),
])
def test_key_groups_spread_evenly(keys: list[object]) -> None:
    m = 128
    counts = Counter(key_group(k, m) for k in keys)
    mean = len(keys) / m
    assert set(counts) == set(range(m)), "some key group gets no key at all"
    assert max(counts.values()) <= 2 * mean
    assert min(counts.values()) >= mean / 2


@pytest.mark.parametrize("m", [1, 7, 128, 1000])
def test_key_group_is_within_range(m: int) -> None:
    for k in KEYS:
        assert 0 <= key_group(k, m) < m


@pytest.mark.parametrize("m", [7, 8, 128, 1000])
@pytest.mark.parametrize("p", range(1, 8))
def test_key_group_ranges_cover_every_group_exactly_once(p: int, m: int) -> None:
    ranges = [key_group_range(i, p, m) for i in range(p)]
    covered = [kg for lo, hi in ranges for kg in range(lo, hi)]
    assert covered == list(range(m))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1, "ranges are not balanced"


@pytest.mark.parametrize("m", [7, 128])
@pytest.mark.parametrize("p", range(1, 8))
def test_subtask_table_agrees_with_key_group_range(p: int, m: int) -> None:
    table = subtask_table(p, m)
    assert len(table) == m
    for kg, owner in enumerate(table):
        lo, hi = key_group_range(owner, p, m)
        assert lo <= kg < hi
    assert set(table) == set(range(p))


def test_parallelism_equal_to_max_parallelism_gives_one_group_per_subtask() -> None:
    assert subtask_table(16, 16) == list(range(16))
