"""Channels: bounded, ordered pipes from one producer subtask to one consumer subtask.

* Inside a worker a channel is a ``deque`` the consumer reads; the producer may add a batch
  while fewer than ``capacity`` batches wait (backpressure).
* Between workers, channels are multiplexed over one non-blocking socket per worker pair
  (:class:`Peer`). Frames are ``[length u32][channel u32][kind u8][payload]``. Flow control
  is credit based: a producer holds one credit per batch the consumer has room for and
  sends a batch only with a credit; the consumer returns a credit when it takes a batch
  out. Events (barriers, end of input) need no credit, so a barrier never waits for room,
  but they stay in order behind the batches sent before them. Memory is bounded by
  ``capacity`` batches per channel on both sides.

A key edge may carry each batch's keys, as its partitioner computed them, to the keyed
operator downstream (``send_keyed``), so that the operator does not call the key function
again. They are never part of the batch: a local channel keeps them in its consumer's
``carried`` table (by the batch object, checked by identity), a remote one sends them in
the batch's frame (``DATA_KEYS``/``TS_KEYS``: marshal of records, [timestamps,] keys) and
the receiving peer puts them in that table. A batch without an entry there (replayed
in-flight data, part of a split batch, a pickled batch) simply has its keys computed
again.
"""

from __future__ import annotations

import marshal
import pickle
import socket
import struct
from collections import deque
from typing import Any

from onceflow.runtime.events import Barrier, TsBatch

_HDR = struct.Struct("<IIB")
DATA, EVENT, CREDIT, DATA_MARSHAL, TS_MARSHAL, DATA_KEYS, TS_KEYS = 0, 1, 2, 3, 4, 5, 6
_RECV = 1 << 18


class InputChannel:
    """The consumer's end of a channel. ``barriers``: how many barriers wait in ``queue``
    (an unaligned checkpoint lets one overtake the records before it). ``origin``: (upstream
    task, upstream subtask, upstream parallelism, input number), naming the channel across a
    restore. ``owed``: batches replayed from a checkpoint's in-flight data into a remote
    channel, for which the producer must not get a credit back. ``carried``: the keys a key
    edge's partitioner computed for batches in ``queue``, by ``id(batch)``: (batch, keys)."""

    __slots__ = ("barriers", "blocked", "carried", "ended", "held", "id", "input_no", "limit",
                 "local_out", "origin", "owed", "peer", "queue", "queued")

    def __init__(self, channel_id: int, peer: Peer | None = None,
                 origin: tuple[str, int, int, int] | None = None) -> None:
        self.id = channel_id
        # which logical input of its task (two-input operators)
        self.input_no = origin[3] if origin is not None else 0
        self.queue: deque[Any] = deque()
        self.peer = peer
        self.blocked = False
        self.ended = False
        self.barriers = 0
        self.origin = origin
        self.owed = 0
        # buffers sized by time (the task's Debloater sets ``limit``): a local producer's
        # capacity, or for a remote one the credits it holds plus the batches queued here
        self.limit: int | None = None
        self.held = 0  # credits the remote producer holds, or frames it sent not read yet
        self.queued = 0  # batches in ``queue`` that a credit paid for
        self.local_out: LocalOutput | None = None
        self.carried: dict[int, tuple[Any, list[Any]]] = {}

    def take_keys(self, item: Any) -> list[Any] | None:
        """The keys carried with ``item`` (just popped), or None."""
        e = self.carried.pop(id(item), None)
        return e[1] if e is not None and e[0] is item else None

    def pop(self) -> Any:
        item = self.queue.popleft()
        if self.peer is not None and (type(item) is list or type(item) is TsBatch):
            if self.owed:
                self.owed -= 1
                return item
            self.queued -= 1
            if self.limit is None:
                self.held += 1
                self.peer.grant(self.id)
            else:
                want = self.limit - self.queued - self.held
                if want > 0:
                    self.held += want
                    self.peer.grant(self.id, want)
        return item


class LocalOutput:
    __slots__ = ("capacity", "queue", "target")

    def __init__(self, target: InputChannel, capacity: int) -> None:
        self.target = target
        self.queue = target.queue
        self.capacity = capacity
        target.local_out = self

    def has_room(self) -> bool:
        return len(self.queue) < self.capacity

    def send_batch(self, batch: list[Any]) -> None:
        self.queue.append(batch)

    def send_ts_batch(self, records: list[Any], ts: list[float]) -> None:
        self.queue.append(TsBatch(records, ts))

    def send_keyed(self, batch: list[Any], keys: list[Any], ts: list[float] | None) -> None:
        """A batch with its records' keys (and timestamps, or None)."""
        item: Any = batch if ts is None else TsBatch(batch, ts)
        self.target.carried[id(item)] = (item, keys)
        self.queue.append(item)

    def send_event(self, event: object) -> None:
        self.queue.append(event)
        if type(event) is Barrier:
            self.target.barriers += 1


class RemoteOutput:
    """Batches of built-in types (tuples, str, int, float, ...) travel as ``marshal``
    (faster than pickle for them); the first batch marshal refuses switches the channel to
    pickle for good."""

    __slots__ = ("credits", "id", "peer", "use_marshal")

    def __init__(self, peer: Peer, channel_id: int, credits: int) -> None:
        self.peer, self.id, self.credits = peer, channel_id, credits
        self.use_marshal = True

    def has_room(self) -> bool:
        return self.credits > 0

    def send_batch(self, batch: list[Any]) -> None:
        self.credits -= 1
        if self.use_marshal:
            try:
                self.peer.send(DATA_MARSHAL, self.id, marshal.dumps(batch))
                return
            except ValueError:
                self.use_marshal = False
        self.peer.send(DATA, self.id, pickle.dumps(batch, protocol=5))

    def send_ts_batch(self, records: list[Any], ts: list[float]) -> None:
        self.credits -= 1
        if self.use_marshal:
            try:
                self.peer.send(TS_MARSHAL, self.id, marshal.dumps((records, ts)))
                return
            except ValueError:
                self.use_marshal = False
        self.peer.send(DATA, self.id, pickle.dumps(TsBatch(records, ts), protocol=5))

    def send_keyed(self, batch: list[Any], keys: list[Any], ts: list[float] | None) -> None:
        """A batch with its records' keys in one frame (marshal keeps a key that is also
        inside its record as a back-reference); without marshal, the batch alone."""
        if self.use_marshal:
            try:
                payload = marshal.dumps((batch, keys) if ts is None else (batch, ts, keys))
            except ValueError:
                self.use_marshal = False
            else:
                self.credits -= 1
                self.peer.send(DATA_KEYS if ts is None else TS_KEYS, self.id, payload)
                return
        if ts is None:
            self.send_batch(batch)
        else:
            self.send_ts_batch(batch, ts)

    def send_event(self, event: object) -> None:
        self.peer.send(EVENT, self.id, pickle.dumps(event, protocol=5))


class Debloater:
    """Buffers sized by time (Flink's buffer debloating): every ``period`` seconds, from the
    records a task took in since the last look, each input channel's limit becomes about
    ``buffer_time`` seconds of that throughput (in batches of ``batch_size``, at least one,
    at most the configured capacity: ``max_batches`` for a remote channel, half of it for
    a local one), so a barrier queued behind records under backpressure
    waits about ``buffer_time``, not for a whole fixed-size queue to drain. ``chunk``: when
    even one batch takes longer than ``buffer_time``, the task takes batches in chunks of
    about ``buffer_time`` worth of records."""

    def __init__(self, channels: list[InputChannel], buffer_time: float, batch_size: int,
                 max_batches: int, counter: Any, clock: Any, period: float = 0.2) -> None:
        self.channels, self.buffer_time, self.batch_size = channels, buffer_time, batch_size
        self.max_batches, self.counter, self.clock, self.period = \
            max_batches, counter, clock, period
        self.last_t = clock()
        self.last_n = counter()
        self.limit = max_batches
        self.chunk = 0  # records a task should take from a batch at once (0: all)

    def tick(self) -> None:
        now = self.clock()
        if now - self.last_t < self.period:
            return
        n = self.counter()
        rate = (n - self.last_n) / (now - self.last_t)  # records per second
        self.last_t, self.last_n = now, n
        live = [c for c in self.channels if not c.ended] or self.channels
        per_channel = rate * self.buffer_time / self.batch_size / len(live)
        self.limit = max(1, min(self.max_batches, int(per_channel + 0.999)))
        # records processed in about buffer_time; no chunking when a batch takes less
        self.chunk = max(16, int(rate * self.buffer_time)) \
            if rate * self.buffer_time < self.batch_size else 0
        for c in live:
            c.limit = self.limit
            if c.local_out is not None:
                c.local_out.capacity = min(self.limit, self.max_batches // 2 or 1)


class PeerClosedError(ConnectionError):
    """The worker at the other end of a peer socket went away."""


class Peer:
    """One non-blocking socket to another worker, carrying all channels between the two."""

    def __init__(self, sock: socket.socket, remote_worker: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.remote = remote_worker
        self.out = bytearray()
        self.inbuf = bytearray()
        self.inputs: dict[int, InputChannel] = {}
        self.outputs: dict[int, RemoteOutput] = {}
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: int, channel: int, payload: bytes) -> None:
        self.out += _HDR.pack(len(payload), channel, kind)
        self.out += payload

    def grant(self, channel: int, n: int = 1) -> None:
        self.out += _HDR.pack(n, channel, CREDIT)

    def flush(self) -> None:
        if not self.out or self.closed:
            return
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError as e:
            raise PeerClosedError(f"connection to worker {self.remote} lost: {e}") from e
        del self.out[:n]

    def receive(self) -> bool:
        """Read everything available; dispatch complete frames. True if anything arrived."""
        got = False
        while True:
            try:
                chunk = self.sock.recv(_RECV)
            except BlockingIOError:
                break
            except OSError as e:
                raise PeerClosedError(f"connection to worker {self.remote} lost: {e}") from e
            if not chunk:
                self.closed = True
                raise PeerClosedError(f"worker {self.remote} closed its connection")
            self.inbuf += chunk
            got = True
            if len(chunk) < _RECV:
                break
        if got:
            self._dispatch()
        return got

    def _dispatch(self) -> None:
        buf = self.inbuf
        view = memoryview(buf)
        pos, end, hs = 0, len(buf), _HDR.size
        loads, mloads = pickle.loads, marshal.loads
        try:
            while end - pos >= hs:
                length, channel, kind = _HDR.unpack_from(buf, pos)
                if kind == CREDIT:
                    self.outputs[channel].credits += length
                    pos += hs
                    continue
                if end - pos - hs < length:
                    break
                payload = view[pos + hs : pos + hs + length]
                if kind != EVENT:
                    ch = self.inputs[channel]
                    ch.held -= 1
                    ch.queued += 1
                if kind == DATA_MARSHAL:
                    item = mloads(payload)
                elif kind == TS_MARSHAL:
                    item = TsBatch(*mloads(payload))
                elif kind == DATA_KEYS:
                    item, keys = mloads(payload)
                    ch.carried[id(item)] = (item, keys)
                elif kind == TS_KEYS:
                    recs, ts, keys = mloads(payload)
                    item = TsBatch(recs, ts)
                    ch.carried[id(item)] = (item, keys)
                else:
                    item = loads(payload)
                    if type(item) is Barrier:
                        self.inputs[channel].barriers += 1
                payload.release()  # no export may outlive the loop: the buffer is resized
                self.inputs[channel].queue.append(item)
                pos += hs + length
        finally:
            view.release()
        del buf[:pos]
