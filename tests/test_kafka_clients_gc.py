"""No Kafka client is ever left for the cyclic garbage collector.

A confluent-kafka client (Producer, Consumer, AdminClient) destroyed by the cyclic GC is
destroyed at whatever moment a collection happens to run, in whatever thread allocates
then: in the middle of another client's call or inside a librdkafka callback. A worker
once hung forever there (``Admin_dealloc`` → ``rd_kafka_destroy`` → ``pthread_join``).
So every client the connectors make must be released by reference counting at a known
point, never be reachable only through a reference cycle: with ``gc.DEBUG_SAVEALL`` a
collection keeps what it would have freed in ``gc.garbage``, and no client may be there.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka as ck  # a missing dependency fails the suite, never skips it
import pytest
from confluent_kafka.cimpl import _AdminClientImpl
from kafka_util import new_topic

import onceflow as of
from onceflow.connectors.kafka import _common
from onceflow.kafka import KafkaSink, KafkaSource

CLIENT_TYPES = (ck.Producer, ck.Consumer, _AdminClientImpl)


@pytest.fixture
def saveall() -> Iterator[None]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


def clients_in_cyclic_garbage() -> list[str]:
    """The open clients that freeing the cyclic garbage would destroy: found unreachable
    themselves, or held only by what was (directly, or through objects held only by
    it). ``DEBUG_SAVEALL`` keeps that garbage, so what it holds is still here to find."""
    gc.collect()
    garbage = gc.garbage
    in_garbage = {id(o) for o in garbage}
    held: dict[int, Any] = {}  # everything reachable from the garbage
    todo = list(garbage)
    while todo:
        o = todo.pop()
        if id(o) not in held:
            held[id(o)] = o
            todo.extend(gc.get_referents(o))
    freed: dict[int, bool] = {}
    mine = {id(garbage), id(held), id(todo), id(freed)}

    def would_be_freed(o: Any, depth: int = 0) -> bool:
        if id(o) in in_garbage:
            return True
        if id(o) not in held or depth > 20:
            return False
        if id(o) not in freed:
            freed[id(o)] = False  # while deciding (a cycle back here: not freed by it)
            refs = [r for r in gc.get_referrers(o) if id(r) not in mine
                    and r is not sys._getframe()]
            freed[id(o)] = bool(refs) and all(would_be_freed(r, depth + 1) for r in refs)
        return freed[id(o)]

    found = [type(o).__name__ for o in held.values()
             if isinstance(o, CLIENT_TYPES) and would_be_freed(o) and _open(o)]
    held.clear()
    freed.clear()
    garbage.clear()
    return found


def clients_held_by(root: Any) -> list[str]:
    """The clients reachable from ``root`` through its own data (not through modules,
    classes or functions' globals): what freeing ``root`` could destroy."""
    seen: set[int] = set()
    found: list[str] = []
    todo = [root]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, types.ModuleType | type | types.FunctionType):
            continue
        seen.add(id(o))
        if isinstance(o, CLIENT_TYPES):
            found.append(type(o).__name__)
            continue
        todo.extend(gc.get_referents(o))
    return found


def _open(client: Any) -> bool:
    """Whether ``client`` still has its librdkafka handle: a closed Producer or Consumer
    has destroyed it already (in ``close()``), so freeing the Python object is harmless.
    An AdminClient has no close in confluent-kafka 2.16: always open."""
    try:
        if isinstance(client, ck.Producer):
            client.poll(0)
        elif isinstance(client, ck.Consumer):
            client.assignment()
    except RuntimeError:  # "Producer has been closed" / "Consumer closed"
        return False
    return True


def _fill(bootstrap: str, topic: str, n: int) -> None:
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, json.dumps({"id": i, "user": f"u{i % 7}"}).encode(), partition=i % 2)
    assert p.flush(30) == 0


def test_shared_admin_expiry_leaves_no_client_to_the_gc(bootstrap: str, saveall: None,
                                                        monkeypatch: Any) -> None:
    """An expired shared admin client is replaced for new calls but released only once
    nobody holds it any more, by the module, never by the garbage collector."""
    monkeypatch.setattr(_common, "SHARED_ADMIN_TTL_S", 0.2)
    first = _common.shared_admin(bootstrap)
    assert _common.brokers(bootstrap)  # a call on it
    assert _common.shared_admin(bootstrap) is first
    time.sleep(0.5)  # expired: new calls get a new client
    second = _common.shared_admin(bootstrap)
    assert second is not first
    # both are still held here (as by a call in progress): not released under the holder
    _common.release_shared_admins()
    assert {id(first), id(second)} <= _module_held()
    assert first.list_topics(timeout=10).brokers
    cycle: list[Any] = [first]
    cycle.append(cycle)  # and then held by a cycle only: the module still holds it too
    first_id, second_id = id(first), id(second)
    del first, second, cycle
    assert clients_in_cyclic_garbage() == []
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()  # the cycle freed for real: the module's reference is the last one now
    _common.release_shared_admins()
    assert not {first_id, second_id} & _module_held()


def _module_held() -> set[int]:
    """ids of the admin clients the module holds (shared or retired)."""
    with _common._shared_lock:
        return {id(e.client) for e in [*_common._shared.values(), *_common._retired]}


def test_a_forked_child_never_releases_the_parents_admin_clients(bootstrap: str) -> None:
    """A forked child (a worker) has copies of the parent's clients without their threads:
    destroying one would wait forever for threads that do not exist. The child makes and
    releases its own; the parent's copies stay untouched."""
    parent = _common.shared_admin(bootstrap)
    _common.brokers(bootstrap)
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only when all went well
        code = 3
        try:
            ours = _common.shared_admin(bootstrap)
            if ours is not parent and _common.brokers(bootstrap):
                del ours
                # the parent's copy is not this process's: never released here
                code = 0 if _common.release_shared_admins() == 0 else 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung with the Kafka admin clients")
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.list_topics(timeout=10).brokers  # the parent's client still works
    parent_id = id(parent)
    del parent
    _common.release_shared_admins()
    assert parent_id not in _module_held()


def test_source_and_sink_lifecycle_leave_no_client_to_the_gc(bootstrap: str, saveall: None,
                                                             tmp_path: Path,
                                                             monkeypatch: Any) -> None:
    """The connectors on their own, as a worker and the driver use them: a bounded source
    (splits, start offsets, readers) on a fresh start and on a restore (no
    initial_position), and an exactly-once sink through begin/write/pre-commit/commit and
    a close with a pending transaction."""
    monkeypatch.setattr(_common, "SHARED_ADMIN_TTL_S", 0.2)
    topic = new_topic(bootstrap, 2, "gcin")
    out = new_topic(bootstrap, 2, "gcout")
    _fill(bootstrap, topic, 50)
    _use_source(bootstrap, topic)
    _use_sink(bootstrap, out, str(tmp_path))
    time.sleep(0.5)  # the shared admin client expired
    _common.release_shared_admins()
    assert clients_in_cyclic_garbage() == []


def _use_source(bootstrap: str, topic: str) -> None:
    src = KafkaSource(bootstrap, [topic], deserializer="json", value_only=True, stop_at="end")
    src.validate()
    splits = src.splits(2)
    readers = [src.reader(s, src.initial_position(s)) for s in splits]
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < 50 and time.monotonic() < deadline:
        for r in readers:
            got.extend(r.read_batch(100) or [])
    assert len(got) == 50
    for r in readers:
        r.close()
    restored = KafkaSource(bootstrap, [topic], value_only=True, stop_at="end")
    restored.splits(2)  # a restore asks for the splits but no start offsets
    # nothing that lives on in the flow graph keeps a client
    assert clients_held_by(src) == []
    assert clients_held_by(restored) == []
    # a cycle holding the sources, as a flow graph does
    cycle: list[Any] = [src, restored]
    cycle.append(cycle)


def _use_sink(bootstrap: str, out: str, flow_dir: str) -> None:
    from onceflow.connectors.sinks import SinkContext

    sink = KafkaSink(bootstrap, out, serializer="json",
                     transactional_id_prefix=f"gc-{uuid.uuid4().hex[:8]}")
    sink.validate()
    ctx = SinkContext(flow="gc", uid="gc-sink", subtask=0, parallelism=1, attempt=0,
                      flow_dir=flow_dir)
    sink.open(ctx)
    for _ in range(2):
        txn = sink.begin_transaction()
        sink.write(txn, [{"a": 1}, {"a": 2}])
        sink.pre_commit(txn)
        sink.commit(txn)
    pending = sink.begin_transaction()
    sink.write(pending, [{"a": 3}])
    sink.pre_commit(pending)
    sink.close()  # the pending transaction's producer is let go, not aborted
    assert clients_held_by(sink) == []
    holder: list[Any] = [sink, pending]
    holder.append(holder)


def test_a_kafka_job_leaves_no_client_to_the_gc(bootstrap: str, saveall: None,
                                                tmp_path: Path, monkeypatch: Any) -> None:
    """A whole Kafka → keyed → Kafka job run in this process (inline executor)."""
    monkeypatch.setattr(_common, "SHARED_ADMIN_TTL_S", 0.2)
    topic = new_topic(bootstrap, 2, "gcjin")
    out = new_topic(bootstrap, 2, "gcjout")
    _fill(bootstrap, topic, 300)
    flow = of.Flow(f"gc-{uuid.uuid4().hex[:6]}", parallelism=2)
    flow.enable_checkpointing(0.3, str(tmp_path / "ckpt"), timeout=30)
    (flow.source(KafkaSource(bootstrap, [topic], deserializer="json", value_only=True,
                             stop_at="end"), name="in")
         .key_by(lambda r: r["user"])
         .map(lambda r: r, name="same")
         .sink(KafkaSink(bootstrap, out, serializer="json", key=lambda r: r["user"],
                         key_serializer="str", transaction_timeout_ms=120_000), name="out"))
    result = flow.run(executor="inline")
    assert result is not None
    del flow, result
    time.sleep(0.5)  # the shared admin client expired
    _common.release_shared_admins()
    assert clients_in_cyclic_garbage() == []
