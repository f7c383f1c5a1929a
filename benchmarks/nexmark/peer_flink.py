"""One Nexmark query on Flink SQL (PyFlink's Table API: the JVM engine runs the SQL, no
Python functions), reading the events ``prefill_kafka`` wrote (JSON, one table over the
topic, bounded at the end offsets it has at start) and writing the query's rows to a Kafka
topic with ``sink.delivery-guarantee = exactly-once`` (transactions committed when a
checkpoint completes). EXACTLY_ONCE checkpoints every 10 s, hashmap or RocksDB backend,
parallelism 1. Run by benchmarks/nexmark/peers.py in benchmarks/compare/.venvs/pyflink:

    python peer_flink.py --query q5 --bootstrap HOST:PORT --input TOPIC --output TOPIC \
        --jar flink-sql-connector-kafka.jar --workdir DIR --backend rocksdb

The SQL is the Nexmark project's query SQL, over the event fields of onceflow's generator
(``date_time`` in seconds becomes the event-time column ``dt``, milliseconds), with two
append-only rewrites a Kafka sink needs (the project's own q5 and q4 produce updates):
q5's maximum per hop window and the join back (``num >= max``) are windowed on the count
rows' ``window_time`` (a window Top-N would be shorter, but Flink 2.2 allows only
ROW_NUMBER there, which drops ties); q4 writes its updating averages to an
``upsert-kafka`` table keyed by category.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pyflink.table import EnvironmentSettings, TableEnvironment

EVENTS = """
CREATE TABLE events (
  kind STRING, id BIGINT, name STRING, email_address STRING, credit_card STRING,
  city STRING, state STRING, item_name STRING, description STRING, initial_bid BIGINT,
  reserve BIGINT, expires DOUBLE, seller BIGINT, category BIGINT, auction BIGINT,
  bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time DOUBLE, extra STRING,
  dt AS TO_TIMESTAMP_LTZ(CAST(date_time * 1000 AS BIGINT), 3),
  WATERMARK FOR dt AS dt
) WITH (
  'connector' = 'kafka', 'topic' = '{input}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'properties.group.id' = 'nexmark-flink-{output}',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
  'format' = 'json', 'json.fail-on-missing-field' = 'false',
  'json.ignore-parse-errors' = 'false'
)"""

VIEWS = [
    "CREATE VIEW person AS SELECT id, name, email_address, credit_card, city, state, dt, "
    "extra FROM events WHERE kind = 'person'",
    "CREATE VIEW auction AS SELECT id, item_name, description, initial_bid, reserve, dt, "
    "date_time, expires, seller, category, extra FROM events WHERE kind = 'auction'",
    "CREATE VIEW bid AS SELECT auction, bidder, price, channel, url, dt, date_time, extra "
    "FROM events WHERE kind = 'bid'",
]

# views a query needs first
PRE = {
    # q5's bid counts per auction and hop window (10 s every 2 s); window_time (the end
    # minus 1 ms) stays a time attribute, so a 2 s tumbling window over it holds exactly one
    # hop window's counts: the maximum and the join back are window operations (append-only)
    "q5": ["CREATE VIEW q5_counts AS SELECT auction, COUNT(*) AS num, window_start AS "
           "hop_start, window_time AS rowtime FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dt), "
           "INTERVAL '2' SECOND, INTERVAL '10' SECOND)) "
           "GROUP BY auction, window_start, window_end, window_time"],
}

# query -> (sink columns, SELECT)
QUERIES: dict[str, tuple[str, str]] = {
    "q0": ("auction BIGINT, bidder BIGINT, price BIGINT, date_time DOUBLE, extra STRING",
           "SELECT auction, bidder, price, date_time, extra FROM bid"),
    "q1": ("auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time DOUBLE, "
           "extra STRING",
           "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid"),
    "q2": ("auction BIGINT, price BIGINT",
           "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0"),
    "q3": ("name STRING, city STRING, state STRING, id BIGINT",
           "SELECT P.name, P.city, P.state, A.id FROM auction AS A INNER JOIN person AS P "
           "ON A.seller = P.id WHERE A.category = 10 AND "
           "(P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')"),
    "q4": ("category BIGINT, avg_final BIGINT, PRIMARY KEY (category) NOT ENFORCED",
           "SELECT Q.category, AVG(Q.final) FROM (SELECT MAX(B.price) AS final, A.category "
           "FROM auction AS A, bid AS B WHERE A.id = B.auction AND "
           "B.date_time BETWEEN A.date_time AND A.expires "
           "GROUP BY A.id, A.category) AS Q GROUP BY Q.category"),
    "q5": ("auction BIGINT, num BIGINT, window_start TIMESTAMP(3)",
           "SELECT A.auction, A.num, A.hop_start FROM (SELECT * FROM TABLE(TUMBLE(TABLE "
           "q5_counts, DESCRIPTOR(rowtime), INTERVAL '2' SECOND))) AS A JOIN (SELECT "
           "window_start, window_end, MAX(num) AS maxn FROM TABLE(TUMBLE(TABLE q5_counts, "
           "DESCRIPTOR(rowtime), INTERVAL '2' SECOND)) GROUP BY window_start, window_end) AS M "
           "ON A.window_start = M.window_start AND A.window_end = M.window_end AND "
           "A.num >= M.maxn"),
    "q7": ("auction BIGINT, price BIGINT, bidder BIGINT, date_time DOUBLE, extra STRING",
           "SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid AS B JOIN "
           "(SELECT MAX(price) AS maxprice, window_end AS w_end FROM TABLE(TUMBLE(TABLE bid, "
           "DESCRIPTOR(dt), INTERVAL '10' SECOND)) GROUP BY window_start, window_end) AS B1 "
           "ON B.price = B1.maxprice WHERE CAST(B.dt AS TIMESTAMP(3)) BETWEEN "
           "B1.w_end - INTERVAL '10' SECOND AND B1.w_end"),
    "q8": ("id BIGINT, name STRING, starttime TIMESTAMP(3)",
           "SELECT P.id, P.name, P.starttime FROM (SELECT id, name, window_start AS "
           "starttime, window_end AS endtime FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(dt), "
           "INTERVAL '10' SECOND)) GROUP BY id, name, window_start, window_end) AS P JOIN "
           "(SELECT seller, window_start AS starttime, window_end AS endtime FROM "
           "TABLE(TUMBLE(TABLE auction, DESCRIPTOR(dt), INTERVAL '10' SECOND)) "
           "GROUP BY seller, window_start, window_end) AS A ON P.id = A.seller AND "
           "P.starttime = A.starttime AND P.endtime = A.endtime"),
    "q11": ("bidder BIGINT, bid_count BIGINT, starttime TIMESTAMP(3), endtime TIMESTAMP(3)",
            "SELECT bidder, COUNT(*) AS bid_count, SESSION_START(dt, INTERVAL '10' SECOND), "
            "SESSION_END(dt, INTERVAL '10' SECOND) FROM bid "
            "GROUP BY bidder, SESSION(dt, INTERVAL '10' SECOND)"),
}


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and every descendant alive now, from
    /proc (the JVM is a child of this Python process)."""
    tick = os.sysconf("SC_CLK_TCK")
    kids: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(parts[1]), []).append(int(d))
        stats[int(d)] = (int(parts[11]) + int(parts[12])) / tick
    total, todo = 0.0, [os.getpid()]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo += kids.get(p, [])
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("--query", "--bootstrap", "--input", "--output", "--jar", "--workdir"):
        ap.add_argument(k, required=True)
    ap.add_argument("--backend", choices=["hashmap", "rocksdb"], default="hashmap")
    ap.add_argument("--interval", type=float, default=10.0)
    a = ap.parse_args()
    t0 = time.time()
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("pipeline.jars", "file://" + os.path.abspath(a.jar))
    conf.set("parallelism.default", "1")
    conf.set("state.backend.type", a.backend)
    conf.set("execution.checkpointing.interval", f"{int(a.interval * 1000)} ms")
    conf.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set("execution.checkpointing.storage", "filesystem")
    conf.set("execution.checkpointing.dir", "file://" + os.path.abspath(a.workdir) + "/ckpt")
    conf.set("table.local-time-zone", "UTC")
    cols, select = QUERIES[a.query]
    events = EVENTS.format(input=a.input, bootstrap=a.bootstrap, output=a.output)
    env.execute_sql(events)
    for v in VIEWS + PRE.get(a.query, []):
        env.execute_sql(v)
    if a.query == "q4":
        sink = (f"CREATE TABLE results ({cols}) WITH ('connector' = 'upsert-kafka', "
                f"'topic' = '{a.output}', 'properties.bootstrap.servers' = '{a.bootstrap}', "
                "'key.format' = 'json', 'value.format' = 'json', "
                "'sink.delivery-guarantee' = 'exactly-once', "
                f"'sink.transactional-id-prefix' = 'nx-{a.output}', "
                "'properties.transaction.timeout.ms' = '600000')")
    else:
        sink = (f"CREATE TABLE results ({cols}) WITH ('connector' = 'kafka', "
                f"'topic' = '{a.output}', 'properties.bootstrap.servers' = '{a.bootstrap}', "
                "'format' = 'json', 'sink.delivery-guarantee' = 'exactly-once', "
                f"'sink.transactional-id-prefix' = 'nx-{a.output}', "
                "'properties.transaction.timeout.ms' = '600000')")
    env.execute_sql(sink)
    cpu0, t1 = tree_cpu_s(), time.time()
    result = env.execute_sql(f"INSERT INTO results {select}")
    result.wait()
    t2 = time.time()
    cpu = tree_cpu_s()
    job = result.get_job_client()
    net = None
    try:  # Flink's own job runtime, when the client still knows the job
        net = job.get_job_execution_result().result().get_net_runtime() / 1000
    except Exception:
        net = None
    sys.stdout.write("RESULT " + json.dumps({
        "query": a.query, "backend": a.backend, "setup_s": t1 - t0, "job_s": t2 - t1,
        "job_net_runtime_s": net, "job_cpu_s": cpu - cpu0, "tree_cpu_s": cpu,
    }) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
