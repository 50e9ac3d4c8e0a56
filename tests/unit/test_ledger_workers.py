"""The ledger under `tollway serve --workers N`: a journal per worker, one database for all,
and the journals of slots that no longer run replayed by worker 0."""

from __future__ import annotations

import asyncio

import pytest
from tollway.service.ledger import JournalError, Ledger

from tests.support.ledger import (  # noqa: F401 - fixtures
    Backend,
    backend,
    pg_admin,
    pg_schema,
    sample_record,
    stored_ids,
)


async def test_workers_write_their_own_journals_and_one_database(backend: Backend):
    config = backend.config()
    ledgers = [await Ledger.open(config, worker_index=i, worker_count=3) for i in range(3)]
    try:
        assert [ledger.journal_path for ledger in ledgers] == [
            backend.tmp / "journal", backend.tmp / "journal" / "worker-1", backend.tmp / "journal" / "worker-2"]
        records = [sample_record() for _ in range(90)]
        # Side by side, as the workers' processes write: every record once, whichever worker took it.
        await asyncio.gather(*(ledgers[i % 3].record(rec) for i, rec in enumerate(records)))
        assert all([await ledger.flush(10) for ledger in ledgers])
        assert await stored_ids(backend) == {rec.request_id for rec in records}
    finally:
        for ledger in ledgers:
            await ledger.aclose()


async def test_a_worker_slot_is_held_by_one_process_at_a_time(backend: Backend):
    first = await Ledger.open(backend.config(), worker_index=1, worker_count=2)
    try:
        with pytest.raises(JournalError, match=r"the ledger journal .*/journal/worker-1 is in use by another running"):
            await Ledger.open(backend.config(), worker_index=1, worker_count=2)
    finally:
        await first.aclose()


async def test_worker_0_replays_the_journals_of_slots_beyond_the_count_and_removes_them(backend: Backend):
    config = backend.config()
    # Three workers ran; records of workers 1 and 2 waited in their journals when they stopped.
    old = [await Ledger.open(config, worker_index=i, worker_count=3) for i in (1, 2)]
    kept = {}
    for ledger in old:
        ledger._database_up = False  # the database went away before the writer took them
        recs = [sample_record() for _ in range(5)]
        for rec in recs:
            await ledger.record(rec)
        kept[ledger.worker_index] = recs
        ledger._closing = True
        for task in ledger._tasks:
            task.cancel()
        await asyncio.gather(*ledger._tasks, return_exceptions=True)
        await ledger.journal.aclose()
        await ledger.store.close()
    assert await stored_ids(backend) == set()

    # Now two: worker 0 takes worker 2's journal; worker 1's is its own again.
    zero = await Ledger.open(config, worker_index=0, worker_count=2)
    one = await Ledger.open(config, worker_index=1, worker_count=2)
    try:
        assert await zero.flush(10) and await one.flush(10)
        assert await stored_ids(backend) == {rec.request_id for recs in kept.values() for rec in recs}
        assert not (backend.tmp / "journal" / "worker-2").exists()
        assert (backend.tmp / "journal" / "worker-1").is_dir()
    finally:
        await zero.aclose()
        await one.aclose()


async def test_an_orphan_journal_still_held_is_left_to_its_holder(backend: Backend, caplog):
    config = backend.config()
    holder = await Ledger.open(config, worker_index=3, worker_count=4)
    try:
        zero = await Ledger.open(config, worker_index=0, worker_count=1)
        await zero.aclose()
        assert "journal" in caplog.text and "worker-3 is in use by another running gateway; it is replayed by " \
                                              "whoever holds it, or at the next start" in caplog.text
        rec = sample_record()
        await holder.record(rec)
        assert await holder.flush(10)
        assert rec.request_id in await stored_ids(backend)
    finally:
        await holder.aclose()
