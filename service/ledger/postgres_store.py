"""The PostgreSQL store (psycopg 3, async): one connection for inserts, a short-lived one per read.

The DSN is handed to libpq as is, so every libpq setting works (sslmode, options, service
files, PG* variables, .pgpass).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, cast

import psycopg

from tollway.v1 import completion_pb2 as pb

from .records import LedgerRecord
from .schema import (
    COLUMNS,
    POSTGRES,
    POSTGRES_INSERT_FROM_JSON,
    POSTGRES_MIGRATIONS,
    TABLE,
    VERSION_TABLE,
    pending,
    row_to_record,
)
from .store import RecordRejected, StoreUnavailable
from .summary import UsageFilter, build_query, rows_from_result

# pg_advisory_xact_lock key ("tollway" in ASCII): two gateways starting together migrate one at a time.
_MIGRATION_LOCK = 0x746F6C6C776179


class PostgresStore:
    name = "postgresql"

    def __init__(self, dsn: str, timeout_s: float) -> None:
        self.dsn = dsn
        self._timeout_s = timeout_s
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def _connect(self, statement_timeout: bool) -> psycopg.AsyncConnection:
        # libpq's connect_timeout is whole seconds, at least 2.
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=max(2, math.ceil(self._timeout_s)))
        await conn.execute("SET TIME ZONE 'UTC'")
        if statement_timeout:
            # The server gives up too, so a slow insert does not keep running after we left it to the journal.
            await conn.execute(f"SET statement_timeout = {max(int(self._timeout_s * 1000), 1)}")
        return conn

    async def open(self) -> None:
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await self._connect(statement_timeout=True)
                await self._migrate(self._conn)
            except psycopg.Error as exc:
                await self._drop()
                raise StoreUnavailable(f"PostgreSQL ledger: {_reason(exc)}") from exc

    async def _migrate(self, conn: psycopg.AsyncConnection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                               "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            cur = await conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}")
            # An aggregate with no GROUP BY always returns one row.
            current = cast(tuple[Any, ...], await cur.fetchone())[0]
            for version, statements in pending(POSTGRES_MIGRATIONS, current):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (version,))

    async def insert(self, records: Sequence[LedgerRecord]) -> int:
        if not records:
            return 0
        batch = "[" + ",".join(_json_line(rec) for rec in records) + "]"
        async with self._lock:
            if self._conn is None or self._conn.closed:
                raise StoreUnavailable("PostgreSQL ledger: not connected")
            try:
                cur = await self._conn.execute(POSTGRES_INSERT_FROM_JSON, [batch])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                raise RecordRejected(f"PostgreSQL refused a ledger record: {_reason(exc)}") from exc
            except psycopg.Error as exc:
                raise StoreUnavailable(f"PostgreSQL ledger: {_reason(exc)}") from exc
            return cur.rowcount

    async def summary(self, filters: UsageFilter, group_by: Sequence[str]) -> list[pb.UsageSummaryRow]:
        sql, params = build_query(POSTGRES, filters, group_by)
        return rows_from_result(group_by, await self._read(sql, params))

    async def get(self, request_id: str) -> LedgerRecord | None:
        rows = await self._read(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE request_id = %s", [request_id])
        return row_to_record(rows[0]) if rows else None

    async def schema_version(self) -> int:
        return cast(int, (await self._read(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}", []))[0][0])

    async def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            conn = await self._connect(statement_timeout=False)
            async with conn:
                cur = await conn.execute(sql, params)
                return await cur.fetchall()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL ledger: {_reason(exc)}") from exc

    async def reset(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await conn.close()
            except (psycopg.Error, OSError, TimeoutError):
                pass  # the connection is being abandoned either way

    async def close(self) -> None:
        await self.reset()


def _reason(exc: psycopg.Error) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _json_line(rec: LedgerRecord) -> str:
    """The record's journal line. PostgreSQL text and jsonb cannot hold U+0000, which a caller's
    label may carry: it becomes U+FFFD rather than blocking the ledger."""
    return rec.to_json().decode().replace("\\u0000", "\\ufffd")
