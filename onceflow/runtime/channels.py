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
"""

from __future__ import annotations

import marshal
import pickle
import socket
import struct
from collections import deque
from typing import Any

from onceflow.runtime.events import TsBatch

_HDR = struct.Struct("<IIB")
DATA, EVENT, CREDIT, DATA_MARSHAL, TS_MARSHAL = 0, 1, 2, 3, 4
_RECV = 1 << 18


class InputChannel:
    __slots__ = ("blocked", "ended", "id", "input_no", "peer", "queue")

    def __init__(self, channel_id: int, peer: Peer | None = None, input_no: int = 0) -> None:
        self.id = channel_id
        self.input_no = input_no  # which logical input of its task (two-input operators)
        self.queue: deque[Any] = deque()
        self.peer = peer
        self.blocked = False
        self.ended = False

    def pop(self) -> Any:
        item = self.queue.popleft()
        if self.peer is not None and (type(item) is list or type(item) is TsBatch):
            self.peer.grant(self.id)
        return item


class LocalOutput:
    __slots__ = ("capacity", "queue")

    def __init__(self, target: InputChannel, capacity: int) -> None:
        self.queue = target.queue
        self.capacity = capacity

    def has_room(self) -> bool:
        return len(self.queue) < self.capacity

    def send_batch(self, batch: list[Any]) -> None:
        self.queue.append(batch)

    def send_ts_batch(self, records: list[Any], ts: list[float]) -> None:
        self.queue.append(TsBatch(records, ts))

    def send_event(self, event: object) -> None:
        self.queue.append(event)


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

    def send_event(self, event: object) -> None:
        self.peer.send(EVENT, self.id, pickle.dumps(event, protocol=5))


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
                if kind == DATA_MARSHAL:
                    item = mloads(payload)
                elif kind == TS_MARSHAL:
                    item = TsBatch(*mloads(payload))
                else:
                    item = loads(payload)
                payload.release()  # no export may outlive the loop: the buffer is resized
                self.inputs[channel].queue.append(item)
                pos += hs + length
        finally:
            view.release()
        del buf[:pos]
