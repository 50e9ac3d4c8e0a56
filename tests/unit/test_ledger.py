"""The Ledger on both stores: batched inserts, a full queue, the database going away and coming
back, a slow database, flush on close, leftovers from an earlier run, records the database refuses."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import psycopg
import pytest
from tollway.service.ledger import (
    JournalError,
    Ledger,
    LedgerClosed,
    LedgerRecord,
    SchemaTooNew,
    UsageFilter,
)
from tollway.service.ledger.records import InputTokens
from tollway.service.ledger.store import Store, open_store

from tests.support.ledger import (  # noqa: F401 - fixtures
    PG_PORT,
    Backend,
    TcpProxy,
    backend,
    pg_admin,
    pg_backend,
    pg_schema,
    sample_record,
    stored_ids,  # noqa: F401
)


class BatchLog:
    """The real store, with the size of every insert it was asked for written down."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.name = store.name
        self.batches: list[int] = []

    async def insert(self, records: Sequence[LedgerRecord]) -> int:
        self.batches.append(len(records))
        return await self.store.insert(records)

    def __getattr__(self, name: str):
        return getattr(self.store, name)




def segment_files(backend: Backend) -> list[str]:
    return sorted(p.name for p in (backend.tmp / "journal").glob("seg-*"))


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def records(prefix: str, n: int, **changes) -> list[LedgerRecord]:
    return [sample_record(f"{prefix}-{i:04d}", **changes) for i in range(n)]


async def record_all(ledger: Ledger, recs: Sequence[LedgerRecord]) -> None:
    """As concurrent requests do: every call in flight at once."""
    await asyncio.gather(*(ledger.record(rec) for rec in recs))


@asynccontextmanager
async def outage(backend: Backend, proxy: TcpProxy | None) -> AsyncIterator[None]:
    """The database stops answering: PostgreSQL's connections are cut and refused; SQLite is
    locked by another writer, so inserts wait out their timeout."""
    if backend.name == "postgresql":
        await proxy.down()
        yield
        await proxy.up()
    else:
        conn = sqlite3.connect(backend.tmp / "ledger.sqlite3", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture
async def proxy(backend: Backend) -> AsyncIterator[TcpProxy | None]:
    if backend.name != "postgresql":
        yield None
        return
    proxy = await TcpProxy(PG_PORT).up()
    yield proxy
    await proxy.down()


async def test_records_reach_the_database_in_batches_of_at_most_batch_size(backend: Backend):
    config = backend.config(batch_size=200)
    store = BatchLog(open_store(config, config.insert_timeout_s))
    ledger = await Ledger.open(config, store)
    await record_all(ledger, records("b", 450))
    assert await ledger.flush(10)
    assert store.batches == [200, 200, 50]
    assert len(await stored_ids(backend)) == 450
    assert ledger.stats().inserted == 450
    await ledger.aclose()


async def test_records_that_queue_behind_a_busy_insert_gather_into_a_whole_batch(backend: Backend):
    """Under load the database is always busy with the last batch: what queued meanwhile still
    lingers for a whole batch, rather than going in a few records at a time."""
    config = backend.config(batch_size=10, batch_linger_s=30.0)
    store = BatchLog(open_store(config, config.insert_timeout_s))
    gate = asyncio.Event()
    real_insert = store.insert

    async def busy_insert(recs: Sequence[LedgerRecord]) -> int:
        await gate.wait()
        return await real_insert(recs)

    store.insert = busy_insert  # type: ignore[method-assign]
    ledger = await Ledger.open(config, store)
    await record_all(ledger, records("first", 10))  # a whole batch: inserted at once
    await eventually(lambda: store.batches == [] and ledger.stats().inserted == 0 and ledger._in_flight == 10,
                     "the first batch is being inserted")
    await record_all(ledger, records("behind", 4))  # queued while the database is busy
    gate.set()
    await eventually(lambda: ledger.stats().inserted == 10, "the first batch is in")
    await asyncio.sleep(0.2)  # the writer is free: it must not take the four alone
    assert store.batches == [10]
    await record_all(ledger, records("more", 6))
    await eventually(lambda: ledger.stats().inserted == 20, "the second batch is in")
    assert store.batches == [10, 10]
    await ledger.aclose()


async def test_a_full_queue_spills_to_the_journal_and_the_spill_is_replayed_without_double_counting(
        backend: Backend):
    ledger = await Ledger.open(backend.config(queue_size=10))
    recs = records("q", 100)
    await record_all(ledger, recs)
    assert ledger.stats().spilled == 90
    assert await ledger.flush(10)
    assert await stored_ids(backend) == {r.request_id for r in recs}
    [row] = await ledger.summary(UsageFilter())
    assert row.requests == 100
    assert row.input.total == 100 * 1986
    await ledger.aclose()
    assert segment_files(backend) == []


async def test_a_database_that_goes_away_is_caught_up_from_the_journal_when_it_returns(
        backend: Backend, proxy: TcpProxy | None):
    ledger = await Ledger.open(backend.config(port=proxy and proxy.port, insert_timeout_s=0.3))
    before = records("before", 20)
    await record_all(ledger, before)
    assert await ledger.flush(10)

    during = records("during", 30)
    async with outage(backend, proxy):
        for rec in during:
            await ledger.record(rec)  # acknowledged: in the journal, whatever the database does
        await eventually(lambda: not ledger.stats().database_up, "the ledger notices the outage")
        assert not await ledger.flush(0.2)
        assert await stored_ids(backend) == {r.request_id for r in before}
        assert segment_files(backend)
    assert await ledger.flush(10)
    assert await stored_ids(backend) == {r.request_id for r in before + during}
    assert ledger.stats().database_up
    await ledger.aclose()
    assert segment_files(backend) == []


async def test_a_postgresql_insert_slower_than_the_timeout_leaves_the_batch_to_the_journal(pg_backend: Backend):
    # (SQLite's slow database is the lock in the outage tests.)
    ledger = await Ledger.open(pg_backend.config(insert_timeout_s=0.3))
    recs = records("slow", 15)
    async with await psycopg.AsyncConnection.connect(pg_backend.dsn()) as blocker:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE tollway_ledger IN ACCESS EXCLUSIVE MODE")
            await record_all(ledger, recs)
            await eventually(lambda: not ledger.stats().database_up, "the slow insert counts as an outage")
    assert await ledger.flush(10)
    assert await stored_ids(pg_backend) == {r.request_id for r in recs}
    await ledger.aclose()


async def test_aclose_flushes_every_queued_record_before_it_returns(backend: Backend):
    # A linger far longer than the test: only aclose() can be what sends these.
    ledger = await Ledger.open(backend.config(batch_linger_s=60.0))
    recs = records("close", 25)
    for rec in recs:
        await ledger.record(rec)
    await ledger.aclose()
    assert await stored_ids(backend) == {r.request_id for r in recs}
    assert segment_files(backend) == []
    with pytest.raises(LedgerClosed):
        await ledger.record(sample_record())


async def test_records_left_in_the_journal_at_close_are_replayed_at_the_next_start(
        backend: Backend, proxy: TcpProxy | None):
    config = backend.config(port=proxy and proxy.port, insert_timeout_s=0.3)
    ledger = await Ledger.open(config)
    recs = records("left", 12)
    async with outage(backend, proxy):
        await record_all(ledger, recs)
        await ledger.aclose(timeout=0.3)
        assert segment_files(backend)
    assert await stored_ids(backend) == set()
    again = await Ledger.open(config)
    assert await again.flush(10)
    assert await stored_ids(backend) == {r.request_id for r in recs}
    await again.aclose()
    assert segment_files(backend) == []


async def test_a_journal_with_a_torn_last_line_replays_everything_that_was_acknowledged(backend: Backend):
    journal = backend.tmp / "journal"
    journal.mkdir()
    recs = records("torn", 3)
    lines = b"".join(r.to_json() + b"\n" for r in recs)
    (journal / "seg-000000000007.jsonl").write_bytes(lines + sample_record("cut").to_json()[:40])
    ledger = await Ledger.open(backend.config())
    assert await ledger.flush(10)
    assert await stored_ids(backend) == {r.request_id for r in recs}
    await ledger.aclose()
    assert list(journal.glob("seg-*")) == []


async def test_an_unreadable_line_inside_a_segment_keeps_the_file_for_a_person_and_the_rest_replays(
        backend: Backend, caplog: pytest.LogCaptureFixture):
    journal = backend.tmp / "journal"
    journal.mkdir()
    good = records("ok", 2)
    (journal / "seg-000000000001.jsonl").write_bytes(
        good[0].to_json() + b"\n" + b"{not json\n" + good[1].to_json() + b"\n")
    ledger = await Ledger.open(backend.config())
    assert await ledger.flush(10)
    await ledger.aclose()
    assert await stored_ids(backend) == {r.request_id for r in good}
    assert [p.name for p in journal.glob("seg-*")] == ["seg-000000000001.unreadable"]
    assert "seg-000000000001.jsonl had 1 unreadable line(s); kept as" in caplog.text


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_of_its_batch_goes_in(backend: Backend):
    ledger = await Ledger.open(backend.config())
    fine = records("fine", 5)
    # A count past int64 fits no BIGINT column; nothing that retries could ever change that.
    poison = sample_record("poison", input=InputTokens(total=2**63))
    await record_all(ledger, [*fine[:2], poison, *fine[2:]])
    assert await ledger.flush(10)
    await ledger.aclose()
    assert await stored_ids(backend) == {r.request_id for r in fine}
    rejected = (backend.tmp / "journal" / "rejected.jsonl").read_bytes().splitlines()
    assert [LedgerRecord.from_json(line).request_id for line in rejected] == ["poison"]


async def test_records_acknowledged_after_fsync_also_reach_the_database(backend: Backend):
    ledger = await Ledger.open(backend.config(fsync_before_ack=True))
    recs = records("fsync", 40)
    await record_all(ledger, recs[:20])
    for rec in recs[20:]:
        await ledger.record(rec)
    await ledger.aclose()
    assert await stored_ids(backend) == {r.request_id for r in recs}


async def test_two_gateways_cannot_share_one_journal(backend: Backend):
    first = await Ledger.open(backend.config())
    with pytest.raises(JournalError, match=r"the ledger journal .*journal is in use by another running gateway"):
        await Ledger.open(backend.config())
    await first.aclose()


async def test_a_gateway_starts_with_its_database_down_and_catches_up_when_it_appears(
        backend: Backend, proxy: TcpProxy | None):
    config = backend.config(port=proxy and proxy.port, insert_timeout_s=0.3)
    if backend.name == "sqlite":
        sqlite3.connect(config.sqlite_path).close()  # an empty file, locked below before any migration
    recs = records("early", 8)
    async with outage(backend, proxy):
        ledger = await Ledger.open(config)
        assert not ledger.stats().database_up
        await record_all(ledger, recs)
    assert await ledger.flush(10)
    assert await stored_ids(backend) == {r.request_id for r in recs}
    await ledger.aclose()


async def test_a_cancelled_request_does_not_cancel_the_others_sharing_its_fsync(backend: Backend):
    ledger = await Ledger.open(backend.config(fsync_before_ack=True))
    recs = records("group", 5)
    tasks = [asyncio.create_task(ledger.record(rec)) for rec in recs]
    await asyncio.sleep(0)  # every task has written its line and waits for the same fsync
    tasks[2].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 2] == [None] * 4
    assert await ledger.flush(10)
    # The cancelled caller's line was written before it waited: the record is kept, not lost.
    assert await stored_ids(backend) == {r.request_id for r in recs}
    await ledger.aclose()


async def test_a_database_from_a_newer_version_stops_the_start_and_frees_the_journal(backend: Backend):
    config = backend.config()
    await (await Ledger.open(config)).aclose()
    if backend.name == "sqlite":
        with sqlite3.connect(config.sqlite_path) as conn:
            conn.execute("INSERT INTO tollway_schema_version VALUES (2, 'later')")
    else:
        async with await psycopg.AsyncConnection.connect(backend.dsn(), autocommit=True) as conn:
            await conn.execute("INSERT INTO tollway_schema_version (version) VALUES (2)")
    for _ in range(2):  # the second start meets the same refusal, not a journal still locked
        with pytest.raises(SchemaTooNew, match="schema version 2, newer than this Tollway knows"):
            await Ledger.open(config)


async def test_record_nowait_keeps_the_record_of_a_call_that_is_being_cancelled(backend: Backend):
    ledger = await Ledger.open(backend.config())
    rec = sample_record("cancelled-stream", status="CANCELLED", estimated=True)
    started = asyncio.Event()

    async def stream() -> None:
        try:
            started.set()
            await asyncio.Event().wait()  # the upstream stream, until the caller goes away
        except asyncio.CancelledError:
            ledger.record_nowait(rec)  # a cancelled task cannot await; the record is queued regardless
            raise

    task = asyncio.create_task(stream())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await ledger.flush(10)
    assert (await ledger.get("cancelled-stream")) == rec
    await ledger.aclose()
