"""Exactly-once into PostgreSQL: :class:`PostgresSink` (two-phase commit with
``PREPARE TRANSACTION`` / ``COMMIT PREPARED``). Needs psycopg 3: ``pip install
'onceflow[postgres]'``. See docs/postgres.md.

Example::

    import onceflow as of
    from onceflow.postgres import PostgresSink

    totals = PostgresSink("postgresql://app@db/shop", "totals", columns=["user_id", "total"],
                          mode="upsert", key_columns=["user_id"])
    (flow.source(...)
         .key_by(lambda r: r[0])
         .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum")
         .sink(totals, name="totals"))
"""

from onceflow.connectors.postgres import PostgresSink, PostgresTxn, gid_prefix

__all__ = ["PostgresSink", "PostgresTxn", "gid_prefix"]
