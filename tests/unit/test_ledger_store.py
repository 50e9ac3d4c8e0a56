"""Both stores: migrations from empty and again, idempotent inserts, every field back as written."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from tollway.service.ledger.schema import COLUMNS, TABLE, VERSION_TABLE, SchemaTooNew
from tollway.service.ledger.store import StoreUnavailable, open_store

from tests.support.ledger import Backend, backend, pg_admin, pg_schema, sample_record  # noqa: F401


def _catalog(backend: Backend, sql: str) -> list[tuple]:
    """Read the database behind the store's back, to see what the migrations made."""
    if backend.name == "sqlite":
        with sqlite3.connect(backend.tmp / "ledger.sqlite3") as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(backend.dsn()) as conn:
        return conn.execute(sql).fetchall()


async def test_migrations_build_the_schema_from_empty_and_a_second_start_changes_nothing(backend: Backend):
    store = open_store(backend.config(), 2.0)
    await store.open()
    assert await store.schema_version() == 1
    await store.open()  # the same process again
    await store.close()
    again = open_store(backend.config(), 2.0)  # a restart
    await again.open()
    assert await again.schema_version() == 1
    await again.close()

    assert _catalog(backend, f"SELECT version FROM {VERSION_TABLE}") == [(1,)]
    if backend.name == "sqlite":
        columns = [row[1] for row in _catalog(backend, f"PRAGMA table_info({TABLE})")]
        indexes = {row[1] for row in _catalog(backend, f"PRAGMA index_list({TABLE})")}
        journal_mode = _catalog(backend, "PRAGMA journal_mode")[0][0]
        assert journal_mode == "wal"
    else:
        columns = [row[0] for row in _catalog(
            backend, f"SELECT column_name FROM information_schema.columns WHERE table_schema = '{backend.schema}' "
                     f"AND table_name = '{TABLE}' ORDER BY ordinal_position")]
        indexes = {row[0] for row in _catalog(
            backend,
            f"SELECT indexname FROM pg_indexes WHERE schemaname = '{backend.schema}' AND tablename = '{TABLE}'")}
        assert f"{TABLE}_labels" in indexes
        money = dict(_catalog(backend, f"SELECT column_name, data_type FROM information_schema.columns "
                                       f"WHERE table_schema = '{backend.schema}' AND column_name LIKE '%nano_usd'"))
        assert money == {"cost_nano_usd": "bigint", "provider_cost_nano_usd": "bigint"}
    assert columns == list(COLUMNS)
    assert {f"{TABLE}_time", f"{TABLE}_caller_time", f"{TABLE}_model_time"} <= indexes


async def test_a_database_migrated_by_a_newer_version_is_refused_by_name(backend: Backend):
    store = open_store(backend.config(), 2.0)
    await store.open()
    await store.close()
    if backend.name == "sqlite":
        with sqlite3.connect(backend.tmp / "ledger.sqlite3") as conn:
            conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES (7, 'later')")
    else:
        with psycopg.connect(backend.dsn(), autocommit=True) as conn:
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (7)")
    store = open_store(backend.config(), 2.0)
    with pytest.raises(SchemaTooNew, match=r"schema version 7, newer than this Tollway knows \(1\); upgrade"):
        await store.open()
    await store.close()


async def test_inserts_are_idempotent_by_request_id_and_every_field_reads_back(backend: Backend):
    store = open_store(backend.config(), 2.0)
    await store.open()
    first = [sample_record(f"r{i}", labels={"team": "search", "émoji": "✓", "i": str(i)}) for i in range(3)]
    assert await store.insert(first) == 3
    replay = [*first, sample_record("r3", ttft_ms=99.5, provider_cost_nano_usd=None, unpriced=True,
                                    unpriced_reason="no price", cost_items=(), cost_nano_usd=0, estimated=True)]
    assert await store.insert(replay) == 1  # a replay never double-counts
    assert await store.insert(replay) == 0
    for rec in replay:
        assert await store.get(rec.request_id) == rec
    assert await store.get("absent") is None
    await store.close()


async def test_a_replayed_record_keeps_the_first_version(backend: Backend):
    store = open_store(backend.config(), 2.0)
    await store.open()
    await store.insert([sample_record("same", cost_nano_usd=100)])
    await store.insert([sample_record("same", cost_nano_usd=999)])
    assert (await store.get("same")).cost_nano_usd == 100
    await store.close()


async def test_a_nul_character_in_a_label_does_not_block_the_ledger(backend: Backend):
    # PostgreSQL text cannot hold U+0000; a caller must not be able to jam the ledger with one.
    store = open_store(backend.config(), 2.0)
    await store.open()
    assert await store.insert([sample_record("nul", labels={"team": "a\x00b"}, caller="c\x00")]) == 1
    stored = await store.get("nul")
    expected = "a\x00b" if backend.name == "sqlite" else "a\ufffdb"
    assert stored.labels == {"team": expected}
    await store.close()


async def test_a_store_that_cannot_connect_says_which_database_and_why(backend: Backend):
    if backend.name == "sqlite":
        (backend.tmp / "ledger.sqlite3").mkdir()  # a directory where the file should be
        store = open_store(backend.config(), 1.0)
        message = r"SQLite ledger .*ledger\.sqlite3: unable to open database file"
    else:
        store = open_store(backend.config(port=1), 1.0)  # nothing listens on port 1
        message = r"PostgreSQL ledger: connection failed: .*port 1 failed: Connection refused"
    with pytest.raises(StoreUnavailable, match=message):
        await store.open()
    await store.close()
