"""The SQLite store: one file in WAL mode; every sqlite3 call runs on one worker thread,
so the event loop never waits on the disk and the connection is never shared across threads."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

from tollway.v1 import completion_pb2 as pb

from .private_files import make_private, open_private, private_directory
from .records import LedgerRecord
from .schema import (
    COLUMNS,
    SQLITE,
    SQLITE_MIGRATIONS,
    TABLE,
    VERSION_TABLE,
    pending,
    record_to_row,
    row_to_record,
    sqlite_insert_sql,
)
from .store import RecordRejected, StoreUnavailable
from .summary import UsageFilter, build_query, rows_from_result

T = TypeVar("T")


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = Path(path)
        # A writer that holds the lock longer than this makes our insert fail as "slow".
        self._busy_timeout_ms = max(int(timeout_s * 1000), 1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any, writer: bool = True) -> T:
        try:
            if writer:
                return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            # Reads take a thread of their own, so a long summary never holds up inserts.
            return await asyncio.to_thread(fn, *args)
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
            raise RecordRejected(f"SQLite refused a ledger record: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"SQLite ledger {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        private_directory(self.path.parent)
        # The database is created 0600 here, before SQLite would create it by the umask; SQLite
        # then gives its -wal and -shm files the database's mode. Those an earlier version left
        # are made private too.
        try:
            os.close(open_private(self.path, os.O_RDWR))
            for suffix in ("-wal", "-shm", "-journal"):
                make_private(self.path.with_name(self.path.name + suffix))
        except OSError as exc:
            # Worded as SQLite words it (the path is named once, by the caller).
            raise sqlite3.OperationalError(f"unable to open database file ({exc.strerror or exc})") from exc
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        # With WAL, NORMAL commits without an fsync per transaction and survives a process crash.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                         "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            current = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()[0]
            for version, statements in pending(SQLITE_MIGRATIONS, current):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (?, ?)",
                             (version, datetime.now(timezone.utc).isoformat()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def insert(self, records: Sequence[LedgerRecord]) -> int:
        if not records:
            return 0
        params = [value for rec in records for value in record_to_row(rec)]
        return await self._run(self._insert, sqlite_insert_sql(len(records)), params)

    def _insert(self, sql: str, params: list[Any]) -> int:
        if self._conn is None:
            raise sqlite3.OperationalError("not open")
        return self._conn.execute(sql, params).rowcount

    async def summary(self, filters: UsageFilter, group_by: Sequence[str]) -> list[pb.UsageSummaryRow]:
        sql, params = build_query(SQLITE, filters, group_by)
        result = await self._run(self._read_sums, sql, params, filters, group_by, writer=False)
        return rows_from_result(group_by, result)

    def _read_sums(self, sql: str, params: list[Any], filters: UsageFilter,
                   group_by: Sequence[str]) -> list[tuple[Any, ...]]:
        try:
            return self._read(sql, params)
        except sqlite3.OperationalError as exc:
            if "integer overflow" not in str(exc):
                raise
        # A sum past int64 (SUM's exact integers fail on it): the same query with TOTAL, whose
        # floats never overflow; rows_from_result saturates what is past int64.
        sql, params = build_query(SQLITE, filters, group_by, sum_function="TOTAL")
        return self._read(sql, params)

    async def get(self, request_id: str) -> LedgerRecord | None:
        rows = await self._run(self._read, f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE request_id = ?",
                               [request_id], writer=False)
        return row_to_record(rows[0]) if rows else None

    async def schema_version(self) -> int:
        return cast(int, (await self._run(self._read, f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}", [],
                                          writer=False))[0][0])

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        # A connection of its own: WAL lets it read while the writer's thread inserts.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only = 1")
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    async def reset(self) -> None:
        """A failed SQLite call leaves the connection usable: nothing to drop."""

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)
