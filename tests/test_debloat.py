"""Buffers sized by time: the credit accounting of a remote channel whose limit the
consumer changes while batches, barriers and watermarks flow (a real socket pair)."""

from __future__ import annotations

import random
import socket

import pytest

from onceflow.runtime.channels import Debloater, InputChannel, Peer, RemoteOutput
from onceflow.runtime.events import Barrier, Watermark


def _pair(credits: int) -> tuple[Peer, Peer, RemoteOutput, InputChannel]:
    a, b = socket.socketpair()
    send, recv = Peer(a, 1), Peer(b, 0)
    out = RemoteOutput(send, 7, credits)
    send.outputs[7] = out
    ch = InputChannel(7, recv)
    ch.held = credits
    recv.inputs[7] = ch
    return send, recv, out, ch


def _pump(send: Peer, recv: Peer) -> None:
    for _ in range(3):
        send.flush()
        recv.receive()
        recv.flush()
        send.receive()


@pytest.mark.parametrize("seed", range(20))
def test_changing_limits_never_lose_a_credit_and_bound_the_queue(seed: int) -> None:
    rng = random.Random(seed)
    send, recv, out, ch = _pair(8)
    sent = got = 0
    for _ in range(2000):
        if rng.random() < 0.1:
            ch.limit = rng.choice([None, 1, 2, 3, 8])
        if out.has_room() and rng.random() < 0.7:
            out.send_batch([sent])
            sent += 1
        if rng.random() < 0.1:
            out.send_event(Watermark(float(sent)))
        if rng.random() < 0.05:
            out.send_event(Barrier(sent, 0.0))
        _pump(send, recv)
        if ch.queue and rng.random() < 0.6:
            item = ch.pop()
            if type(item) is list:
                assert item == [got]
                got += 1
        if ch.limit is not None:
            # once settled, what the producer may have queued is bounded by the limit
            # (or by what it held before the limit dropped)
            assert ch.queued + ch.held <= max(ch.limit, 8) + 8
    # drain: the producer must always get room back (no credit lost)
    ch.limit = 1
    for _ in range(200):
        _pump(send, recv)
        while ch.queue:
            if type(ch.pop()) is list:
                got += 1
        _pump(send, recv)
        if out.has_room():
            out.send_batch([sent])
            sent += 1
    _pump(send, recv)
    while ch.queue:
        if type(ch.pop()) is list:
            got += 1
    _pump(send, recv)
    assert got == sent, "every batch arrived, in order"
    assert out.credits >= 1, "the producer was left without credit"


def test_debloater_sizes_limits_by_throughput() -> None:
    chans = [InputChannel(i) for i in range(2)]
    t = [0.0]
    n = [0]
    d = Debloater(chans, buffer_time=0.1, batch_size=100, max_batches=8,
                  counter=lambda: n[0], clock=lambda: t[0])
    t[0], n[0] = 1.0, 4000  # 4,000 records/s: 0.1 s is 400 records, 2 channels, 100 a batch
    d.tick()
    assert [c.limit for c in chans] == [2, 2]
    t[0], n[0] = 2.0, 4100  # slow: at least one batch
    d.tick()
    assert [c.limit for c in chans] == [1, 1]
    t[0], n[0] = 3.0, 1_000_000  # fast: at most the capacity
    d.tick()
    assert [c.limit for c in chans] == [8, 8]
