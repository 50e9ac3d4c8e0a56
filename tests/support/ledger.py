"""Helpers for the ledger tests: the machine's real PostgreSQL (a fresh schema per test), a TCP
proxy that can take the database away and give it back, and sample records."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from tollway.service.ledger import (
    AttemptRecord,
    CostLine,
    InputTokens,
    LedgerConfig,
    LedgerRecord,
    OutputTokens,
)

PG_HOST, PG_PORT, PG_DATABASE = "127.0.0.1", 5432, "test"
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def pg_admin_dsn() -> str:
    """A DSN that reaches the test database, as user postgres or root; the test fails (never skips)
    when there is none, and says how to start the server."""
    errors = []
    for user in ("postgres", "root"):
        dsn = f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[0]}")
            continue
        return dsn
    pytest.fail(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} (database {PG_DATABASE}): "
                f"{'; '.join(errors)}. Start it with: {PG_START}", pytrace=False)


def with_schema(dsn: str, schema: str, port: int | None = None) -> str:
    """dsn confined to one schema (and optionally sent through another local port)."""
    if port is not None:
        dsn = dsn.replace(f":{PG_PORT}/", f":{port}/")
    return f"{dsn}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def pg_admin() -> str:
    return pg_admin_dsn()


@pytest.fixture
def pg_schema(pg_admin: str) -> Iterator[str]:
    """A schema of its own for one test, dropped afterwards."""
    schema = f"tollway_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@dataclass
class Backend:
    """One of the two stores, empty, and a config factory pointing at it."""

    name: str
    tmp: Path
    admin_dsn: str | None = None
    schema: str | None = None

    def dsn(self, port: int | None = None) -> str | None:
        if self.name != "postgresql":
            return None
        return with_schema(self.admin_dsn, self.schema, port)

    def config(self, port: int | None = None, **overrides: Any) -> LedgerConfig:
        values: dict[str, Any] = dict(
            path=self.tmp / "ledger.sqlite3",
            journal_dir=self.tmp / "journal",
            dsn=self.dsn(port),
            batch_linger_s=0.005,
            insert_timeout_s=1.0,
            retry_interval_s=0.05,
            close_timeout_s=5.0,
        )
        values.update(overrides)
        return LedgerConfig(**values)


@pytest.fixture
def pg_backend(tmp_path: Path, pg_admin: str, pg_schema: str) -> Backend:
    return Backend("postgresql", tmp_path, pg_admin, pg_schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path)
    schema = request.getfixturevalue("pg_schema")
    return Backend("postgresql", tmp_path, request.getfixturevalue("pg_admin"), schema)


class TcpProxy:
    """Forwards a local port to the database; down() refuses new connections and cuts the
    open ones, as a database restart or a network failure would; up() serves again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        self._writers.difference_update((client_writer, upstream_writer))


def sample_record(request_id: str | None = None, **changes) -> LedgerRecord:
    """A realistic record: the seed's MixRouter usage, priced, with one retried attempt."""
    fields = dict(
        request_id=request_id or uuid.uuid4().hex,
        time=datetime(2026, 5, 9, 7, 35, 25, 123456, tzinfo=timezone.utc),
        caller="team-a",
        labels={"team": "search", "feature": "chat"},
        route="fast",
        provider="mixrouter",
        model="gemini-2.0-flash",
        status="OK",
        attempts=(AttemptRecord("mixrouter", "gemini-2.0-flash", "UNAVAILABLE", "mixrouter: HTTP 503", 12.5),
                  AttemptRecord("mixrouter", "gemini-2.0-flash", "OK", "", 801.25)),
        latency_ms=815.5,
        ttft_ms=None,
        input=InputTokens(total=1986, text=5, audio=175, unattributed=1806),
        output=OutputTokens(total=120, text=100, reasoning=20),
        total_tokens=2106,
        warnings=("INPUT_MODALITY_DETAILS_INCOMPLETE",),
        cost_items=(CostLine("INPUT_TEXT", 5, 100_000_000, 500),
                    CostLine("INPUT_AUDIO", 175, 700_000_000, 122_500),
                    CostLine("INPUT_UNATTRIBUTED", 1806, 100_000_000, 180_600),
                    CostLine("OUTPUT_TEXT", 100, 400_000_000, 40_000),
                    CostLine("OUTPUT_REASONING", 20, 400_000_000, 8_000, "gemini-2.0-flash")),
        cost_nano_usd=351_600,
        provider_cost_nano_usd=352_000,
        price_entry="mixrouter/gemini-2.0-flash@2026-01-01",
    )
    fields.update(changes)
    return LedgerRecord(**fields)


async def stored_ids(backend: Backend) -> set[str]:
    """What the database holds, read directly (never through the proxy)."""
    if backend.name == "sqlite":
        with sqlite3.connect(backend.tmp / "ledger.sqlite3") as conn:
            return {row[0] for row in conn.execute("SELECT request_id FROM tollway_ledger")}
    async with await psycopg.AsyncConnection.connect(backend.dsn()) as conn:
        cur = await conn.execute("SELECT request_id FROM tollway_ledger")
        return {row[0] for row in await cur.fetchall()}
