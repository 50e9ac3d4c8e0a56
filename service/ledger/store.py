"""What the ledger needs from a database, the two ways a database call fails, and the factory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tollway.v1 import completion_pb2 as pb

from .config import LedgerConfig
from .records import LedgerRecord
from .summary import UsageFilter


class StoreUnavailable(Exception):
    """The database did not answer (down, unreachable, locked, too slow): try again later."""


class RecordRejected(Exception):
    """The database refused the data itself: retrying the same batch would fail forever."""


class Store(Protocol):
    name: str

    async def open(self) -> None:
        """Connect (again) and bring the schema up to date; StoreUnavailable when it cannot."""

    async def insert(self, records: Sequence[LedgerRecord]) -> int:
        """Insert, ignoring request ids already present; returns how many rows are new."""

    async def summary(self, filters: UsageFilter, group_by: Sequence[str]) -> list[pb.UsageSummaryRow]: ...

    async def get(self, request_id: str) -> LedgerRecord | None: ...

    async def schema_version(self) -> int: ...

    async def reset(self) -> None:
        """Drop a connection that failed, so the next open() starts clean."""

    async def close(self) -> None: ...


def open_store(config: LedgerConfig, timeout_s: float) -> Store:
    """The store the config names; nothing is connected until open()."""
    if config.dsn:
        from .postgres_store import PostgresStore

        return PostgresStore(config.dsn, timeout_s)
    from .sqlite_store import SqliteStore

    return SqliteStore(config.sqlite_path, timeout_s)
