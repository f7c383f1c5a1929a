"""One worker's keyed path at parallelism 2, in one process, with the real classes.

    python benchmarks/keyed_path.py            # W1 tuples, W2 dicts, Nexmark bids
    PYTHONPATH=/tmp/base python benchmarks/keyed_path.py   # another engine (see ab.py)

Each 1,024-record batch goes through ``KeyPartitioner.emit`` into a local channel and a
remote one (a ``RemoteOutput`` over a real socketpair, ``Peer`` framing and dispatch on
the other end), is taken out as the task takes it (carried keys included, where the
engine has them) and reduced by ``ReduceOp``. Figures: CPU ns per record (process time,
best of 7 passes over 300 batches), free of the load and scheduling effects of two
processes, so that small engine changes are visible. Also the components: the key
function, routing, and marshal of the records that cross.
"""

from __future__ import annotations

import json
import marshal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from onceflow.graph.logical import Kind, Node
from onceflow.runtime import task as T
from onceflow.runtime.channels import InputChannel, LocalOutput, Peer, RemoteOutput
from onceflow.runtime.operators import OperatorEnv, ReduceOp

N = 1024


def shapes() -> dict[str, tuple[list[list[Any]], Callable[[Any], Any], Callable[..., Any]]]:
    from onceflow.nexmark import Generator, NexmarkConfig

    w1 = [[((i * 7919 % 10000), (i % 100) * 2) for i in range(s, s + N)]
          for s in range(0, 300 * N, N)]
    w2 = [[{"user": f"u{i % 5000}", "total": i % 1000, "id": i} for i in range(s, s + N)]
          for s in range(0, 300 * N, N)]
    ev = [e for e in Generator(NexmarkConfig(events=400_000)).events(0, 340_000)
          if e["kind"] == "bid"]
    bids = [ev[i:i + N] for i in range(0, len(ev) - N, N)][:300]
    return {
        "w1": (w1, lambda kv: kv[0], lambda a, b: (a[0], a[1] + b[1])),
        "w2": (w2, lambda r: r["user"],
               lambda a, r: {"user": r["user"], "total": a["total"] + r["total"],
                             "id": r["id"]}),
        "bids": (bids, lambda b: b["auction"],
                 lambda a, b: b if b["price"] > a["price"] else a),
    }


def best(f: Callable[[], Any], reps: int = 7) -> float:
    b = 1e9
    for _ in range(reps):
        t0 = time.process_time()
        f()
        b = min(b, time.process_time() - t0)
    return b


def path(batches: list[list[Any]], kf: Callable[[Any], Any], fn: Any) -> float:
    a, b = socket.socketpair()
    try:
        for s, opt in ((a, socket.SO_SNDBUF), (b, socket.SO_RCVBUF)):
            s.setsockopt(socket.SOL_SOCKET, opt, 1 << 22)
        src, dst = Peer(a, 1), Peer(b, 0)
        local_in, remote_in = InputChannel(0), InputChannel(1, dst)
        dst.inputs[1] = remote_in
        lo = LocalOutput(local_in, 1 << 30)
        ro = RemoteOutput(src, 1, 1 << 30)
        src.outputs[1] = ro
        node = Node(1, Kind.REDUCE, "sum", "sum", 2, fn)
        op = ReduceOp(node, kf)
        op.open(OperatorEnv("keyed-path", 0, 2, 128, (0, 64), 0))
        part = T.make_partitioner(T.Partitioning.KEY, [lo, ro], kf, 128, 0, "sum")

        def take(ch: InputChannel) -> None:
            item = ch.pop()
            keys = ch.take_keys(item) if getattr(ch, "carried", None) else None
            if keys is not None:
                op.carried = keys
            op.process(item)
            op.carried = None

        def run() -> None:
            for bt in batches:
                part.emit(bt)
                while src.out:
                    src.flush()
                    dst.receive()
                while local_in.queue:
                    take(local_in)
                while remote_in.queue:
                    take(remote_in)

        run()
        return best(run) / sum(map(len, batches)) * 1e9
    finally:
        a.close()
        b.close()


def measure(name: str, batches: list[list[Any]], kf: Callable[[Any], Any],
            fn: Any) -> dict[str, Any]:
    n = sum(map(len, batches))
    key_ns = best(lambda: [list(map(kf, b)) for b in batches]) / n * 1e9
    cross = [[r for r in b if hash(kf(r)) & 1] for b in batches]  # about half
    nc = sum(map(len, cross))
    blobs = [marshal.dumps(c) for c in cross]
    m_ns = (best(lambda: [marshal.dumps(c) for c in cross])
            + best(lambda: [marshal.loads(x) for x in blobs])) / nc * 1e9
    return {"shape": name, "path_ns_per_record": path(batches, kf, fn), "key_fn_ns": key_ns,
            "marshal_ns_per_crossing_record": m_ns}


def main() -> int:
    for name, (batches, kf, fn) in shapes().items():
        print(json.dumps(measure(name, batches, kf, fn)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
