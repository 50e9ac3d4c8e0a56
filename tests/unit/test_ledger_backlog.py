"""Ledger.backlog(): the records the database does not have yet and the age of the oldest, which
the tollway_ledger_* gauges show. The database is made unavailable by another writer holding
SQLite's write lock, so inserts wait out their timeout."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tollway.service.ledger import Ledger

from tests.support.ledger import Backend, sample_record

WAIT_S = 15.0


@contextmanager
def database_locked(backend: Backend) -> Iterator[None]:
    conn = sqlite3.connect(backend.tmp / "ledger.sqlite3", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def backlog_becomes(ledger: Ledger, records: int) -> float:
    """Wait (bounded) until the backlog holds records; returns the oldest record's age then."""
    deadline = time.monotonic() + WAIT_S
    while True:
        count, age = ledger.backlog()
        if count == records:
            return age
        assert time.monotonic() < deadline, f"backlog is {count} records, not {records}, after {WAIT_S}s"
        await asyncio.sleep(0.02)


async def test_records_the_database_missed_are_the_backlog_until_it_has_them(tmp_path):
    backend = Backend("sqlite", tmp_path)
    ledger = await Ledger.open(backend.config(insert_timeout_s=0.2))
    try:
        assert ledger.backlog() == (0, 0.0)
        with database_locked(backend):
            for _ in range(5):
                await ledger.record(sample_record())
            first_age = await backlog_becomes(ledger, 5)
            await asyncio.sleep(0.05)
            count, later_age = ledger.backlog()
            assert count == 5 and later_age > first_age > 0
        assert await ledger.flush(WAIT_S)
        assert ledger.backlog() == (0, 0.0)
    finally:
        await ledger.aclose()


async def test_a_journal_left_by_an_earlier_run_is_backlog_at_the_next_start(tmp_path):
    backend = Backend("sqlite", tmp_path)
    config = backend.config(insert_timeout_s=0.2, close_timeout_s=0.3)
    with database_locked(backend):
        ledger = await Ledger.open(config)
        for _ in range(3):
            await ledger.record(sample_record())
        await ledger.aclose()  # the database never had them: they stay in the journal

        again = await Ledger.open(config)
        try:
            assert await backlog_becomes(again, 3) > 0
        finally:
            await again.aclose(timeout=0.3)

    last = await Ledger.open(config)
    try:
        assert await last.flush(WAIT_S)
        assert last.backlog() == (0, 0.0)
    finally:
        await last.aclose()
