"""Keyed state through ``KeyedStore``: handles scoped by key, snapshots, timers."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import onceflow as of
from onceflow.graph.keygroups import key_group, key_group_range
from onceflow.state import ListState, MapState, MemoryBackend, ValueState
from onceflow.state.memory import KeyedStore

MP = 128


def store(kg_range: tuple[int, int] = (0, MP)) -> KeyedStore:
    return MemoryBackend().create(MP, kg_range)


def at(s: KeyedStore, key: Any) -> KeyedStore:
    s.scope.key = key
    return s


def round_trip(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint does to a snapshot: pickle it at once, load it later."""
    return pickle.loads(pickle.dumps(snapshot, protocol=5))


# --- handles ------------------------------------------------------------------------------
def test_value_state_is_scoped_by_key_with_default() -> None:
    s = store()
    v = s.value_state("count", default=0)
    assert isinstance(v, ValueState)
    at(s, "a")
    assert v.value() == 0
    v.update(5)
    assert v.value() == 5
    at(s, "b")
    assert v.value() == 0
    v.update(7)
    at(s, "a")
    assert v.value() == 5
    v.clear()
    assert v.value() == 0
    at(s, "b")
    assert v.value() == 7


def test_value_state_without_default_is_none_and_can_hold_falsy_values() -> None:
    s = store()
    v = s.value_state("v")
    at(s, 1)
    assert v.value() is None
    v.update(0)
    assert v.value() == 0
    w = s.value_state("w", default="d")
    w.update(None)
    assert w.value() is None, "an explicit None must not fall back to the default"


def test_list_state_is_scoped_by_key() -> None:
    s = store()
    lst = s.list_state("items")
    assert isinstance(lst, ListState)
    at(s, "a")
    assert lst.get() == []
    lst.add(1)
    lst.add_all([2, 3])
    assert lst.get() == [1, 2, 3]
    assert list(lst) == [1, 2, 3]
    at(s, "b")
    assert lst.get() == []
    lst.update(["x"])
    assert lst.get() == ["x"]
    at(s, "a")
    lst.update([9])
    assert lst.get() == [9]
    lst.clear()
    assert lst.get() == []
    at(s, "b")
    assert lst.get() == ["x"]


def test_list_state_get_returns_a_copy() -> None:
    s = store()
    lst = s.list_state("items")
    at(s, "k")
    lst.add(1)
    got = lst.get()
    got.append(2)
    assert lst.get() == [1]


def test_map_state_is_scoped_by_key() -> None:
    s = store()
    m = s.map_state("m")
    assert isinstance(m, MapState)
    at(s, "a")
    assert m.is_empty()
    assert m.get("x") is None
    assert m.get("x", 0) == 0
    m.put("x", 1)
    m.put_all({"y": 2, "z": 3})
    assert m.contains("x") and not m.contains("w")
    assert sorted(m.keys()) == ["x", "y", "z"]
    assert sorted(m.values()) == [1, 2, 3]
    assert sorted(m.items()) == [("x", 1), ("y", 2), ("z", 3)]
    at(s, "b")
    assert m.is_empty() and m.keys() == []
    m.put("x", 100)
    at(s, "a")
    m.remove("x")
    m.remove("not-there")
    assert sorted(m.keys()) == ["y", "z"]
    m.remove("y")
    m.remove("z")
    assert m.is_empty()
    assert s.size() == 1, "an emptied map must not keep an entry for its key"
    at(s, "b")
    assert m.get("x") == 100
    m.clear()
    assert m.is_empty()
    assert s.size() == 0


def test_handles_with_the_same_name_share_the_table() -> None:
    s = store()
    v1 = s.value_state("v", default=0)
    v2 = s.value_state("v", default=0)
    at(s, "k")
    v1.update(3)
    assert v2.value() == 3


def test_a_name_cannot_change_its_kind() -> None:
    s = store()
    s.value_state("x")
    with pytest.raises(of.ConfigurationError, match="'x'"):
        s.list_state("x")
    with pytest.raises(of.ConfigurationError, match="'x'"):
        s.map_state("x")


def test_size_counts_keys_over_all_states() -> None:
    s = store()
    v, lst = s.value_state("v"), s.list_state("l")
    for k in range(5):
        at(s, k)
        v.update(k)
        if k % 2:
            lst.add(k)
    assert s.size() == 5 + 2


# --- snapshot / restore -------------------------------------------------------------------
def fill(s: KeyedStore, keys: list[Any]) -> None:
    v, lst, m = s.value_state("v"), s.list_state("l"), s.map_state("m")
    for i, k in enumerate(keys):
        at(s, k)
        v.update(("v", k))
        lst.add_all([k, k])
        m.put("self", k)
        s.register_timer(1000.0 + i % 7)
    s.scope.key = None


def contents(s: KeyedStore) -> dict[str, dict[Any, Any]]:
    return {name: dict(t) for name, t in s.tables.items()}


KEYS: list[Any] = [f"user-{i}" for i in range(200)] + list(range(200)) + [(1, "t"), None]


def test_snapshot_restore_round_trip() -> None:
    src = store()
    fill(src, KEYS)
    dst = store()
    dst.restore([round_trip(src.snapshot())], filter_by_range=False)
    assert contents(dst) == contents(src)
    assert dst.kinds == src.kinds
    restored_timers = dst.pop_due_timers(float("inf"))
    original_timers = src.pop_due_timers(float("inf"))
    assert [t for t, _ in restored_timers] == sorted(t for t, _ in original_timers)
    assert sorted(map(repr, restored_timers)) == sorted(map(repr, original_timers))


def test_snapshot_is_not_changed_by_later_updates_once_serialized() -> None:
    s = store()
    fill(s, ["a"])
    blob = pickle.dumps(s.snapshot(), protocol=5)
    at(s, "a")
    s.value_state("v").update("changed")
    s.list_state("l").add("more")
    restored = store()
    restored.restore([pickle.loads(blob)], filter_by_range=False)
    at(restored, "a")
    assert restored.value_state("v").value() == ("v", "a")
    assert restored.list_state("l").get() == ["a", "a"]


@pytest.mark.parametrize("subtask", [0, 1])
def test_restore_keeps_only_the_key_groups_of_the_new_range(subtask: int) -> None:
    src = store()
    fill(src, KEYS)
    snap = round_trip(src.snapshot())
    lo, hi = key_group_range(subtask, 2, MP)
    dst = store((lo, hi))
    dst.restore([snap], filter_by_range=True)
    mine = [k for k in KEYS if lo <= key_group(k, MP) < hi]
    assert 0 < len(mine) < len(KEYS)
    for name, table in contents(dst).items():
        assert sorted(map(repr, table)) == sorted(map(repr, mine)), name
        for k in mine:
            assert table[k] == src.tables[name][k]
    timers = dst.pop_due_timers(float("inf"))
    assert sorted(repr(k) for _, k in timers) == sorted(map(repr, mine))


def test_scale_in_merges_the_snapshots_of_both_halves() -> None:
    halves = []
    for i in range(2):
        lo, hi = key_group_range(i, 2, MP)
        part = store((lo, hi))
        fill(part, [k for k in KEYS if lo <= key_group(k, MP) < hi])
        halves.append(round_trip(part.snapshot()))
    whole = store()
    whole.restore(halves, filter_by_range=False)
    reference = store()
    fill(reference, KEYS)
    assert contents(whole) == contents(reference)


def test_snapshot_is_picklable_with_the_default_protocol() -> None:
    s = store()
    fill(s, KEYS[:10])
    assert pickle.loads(pickle.dumps(s.snapshot()))["max_parallelism"] == MP


# --- timers -------------------------------------------------------------------------------
def test_timers_pop_in_time_order_when_due() -> None:
    s = store()
    for key, when in (("a", 30.0), ("b", 10.0), ("c", 20.0), ("d", 10.0)):
        at(s, key).register_timer(when)
    assert s.next_timer() == 10.0
    assert s.pop_due_timers(5.0) == []
    assert s.pop_due_timers(10.0) == [(10.0, "b"), (10.0, "d")]
    assert s.next_timer() == 20.0
    assert s.pop_due_timers(100.0) == [(20.0, "c"), (30.0, "a")]
    assert s.next_timer() is None
    assert s.pop_due_timers(1e9) == []


def test_registering_the_same_timer_twice_for_a_key_fires_once() -> None:
    s = store()
    at(s, "a").register_timer(5.0)
    at(s, "a").register_timer(5.0)
    at(s, "b").register_timer(5.0)  # another key: its own timer
    assert s.pop_due_timers(5.0) == [(5.0, "a"), (5.0, "b")]


def test_deleted_timers_do_not_fire() -> None:
    s = store()
    at(s, "a").register_timer(1.0)
    at(s, "a").register_timer(2.0)
    at(s, "b").register_timer(1.0)
    at(s, "a").delete_timer(1.0)
    at(s, "a").delete_timer(99.0)  # unknown: no effect
    assert s.next_timer() == 1.0
    assert s.pop_due_timers(10.0) == [(1.0, "b"), (2.0, "a")]


def test_a_timer_registered_again_after_delete_fires_once() -> None:
    s = store()
    at(s, "a").register_timer(1.0)
    at(s, "a").delete_timer(1.0)
    assert s.next_timer() is None
    at(s, "a").register_timer(1.0)
    assert s.next_timer() == 1.0
    assert s.pop_due_timers(1.0) == [(1.0, "a")]
    assert s.pop_due_timers(1.0) == []


def test_a_popped_timer_can_be_registered_again() -> None:
    s = store()
    at(s, "a").register_timer(1.0)
    assert s.pop_due_timers(1.0) == [(1.0, "a")]
    at(s, "a").register_timer(1.0)
    assert s.pop_due_timers(1.0) == [(1.0, "a")]


def test_pending_timers_survive_snapshot_and_restore() -> None:
    s = store()
    at(s, "a").register_timer(3.0)
    at(s, "b").register_timer(1.0)
    at(s, "b").register_timer(2.0)
    at(s, "b").delete_timer(2.0)
    restored = store()
    restored.restore([round_trip(s.snapshot())], filter_by_range=False)
    assert restored.scope.key is None
    assert restored.pop_due_timers(10.0) == [(1.0, "b"), (3.0, "a")]
