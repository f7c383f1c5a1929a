#!/usr/bin/env python3
"""Smoke check for the dev PostgreSQL server started by scripts/postgres.

Usage: python scripts/postgres.d/smoke_check.py DSN

Checks that two-phase commit works: max_prepared_transactions > 0, PREPARE TRANSACTION
shows up in pg_prepared_xacts, COMMIT PREPARED makes the row visible, and COMMIT PREPARED
of an unknown gid fails with SQLSTATE 42704 (undefined_object). Exits non-zero on failure.
Needs psycopg 3 (pip install "psycopg[binary]==3.3.9").
"""

from __future__ import annotations

import sys
import uuid
from typing import Any, NoReturn

import psycopg
from psycopg import errors


def fail(msg: str) -> NoReturn:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def scalar(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    if row is None:
        fail(f"no row from: {query}")
    return row[0]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DSN", file=sys.stderr)
        return 2
    dsn = argv[1]
    gid = "onceflow-test-1"
    table = "onceflow_smoke_check"
    marker = uuid.uuid4().hex

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        version = scalar(conn, "SHOW server_version")
        print(f"server_version = {version}")
        mpt = int(scalar(conn, "SHOW max_prepared_transactions"))
        print(f"max_prepared_transactions = {mpt}")
        if mpt <= 0:
            fail("max_prepared_transactions must be > 0 for two-phase commit")

        # A leftover from an earlier, interrupted run would make PREPARE fail: clear it.
        if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
            print(f"rolling back leftover prepared transaction {gid!r}")
            conn.execute(f"ROLLBACK PREPARED '{gid}'")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (marker text PRIMARY KEY)")

        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} (marker) VALUES (%s)", (marker,))
        conn.execute(f"PREPARE TRANSACTION '{gid}'")
        print(f"PREPARE TRANSACTION '{gid}': ok")

        row = conn.execute(
            "SELECT gid, database FROM pg_prepared_xacts WHERE gid = %s", (gid,)
        ).fetchone()
        if row is None:
            fail(f"{gid!r} not found in pg_prepared_xacts")
        print(f"pg_prepared_xacts: gid={row[0]!r} database={row[1]!r}")
        count_sql = f"SELECT count(*) FROM {table} WHERE marker = %s"
        if scalar(conn, count_sql, (marker,)) != 0:
            fail("prepared (uncommitted) row is already visible")

        conn.execute(f"COMMIT PREPARED '{gid}'")
        print(f"COMMIT PREPARED '{gid}': ok")
        if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
            fail(f"{gid!r} still in pg_prepared_xacts after COMMIT PREPARED")
        if scalar(conn, count_sql, (marker,)) != 1:
            fail("row not visible after COMMIT PREPARED")
        print("row visible after COMMIT PREPARED: ok")

        unknown = f"onceflow-test-unknown-{marker}"
        try:
            conn.execute(f"COMMIT PREPARED '{unknown}'")
        except errors.UndefinedObject as e:
            print(f"COMMIT PREPARED of unknown gid: SQLSTATE {e.sqlstate} ({type(e).__name__}): ok")
        except psycopg.Error as e:
            fail(f"COMMIT PREPARED of unknown gid: expected SQLSTATE 42704, got {e.sqlstate}: {e}")
        else:
            fail("COMMIT PREPARED of unknown gid did not fail")

        conn.execute(f"DELETE FROM {table} WHERE marker = %s", (marker,))

    print("smoke check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
