"""A summary answers at most MAX_SUMMARY_ROWS groups, on both stores: one more is refused
with what to do instead of a message built from every group in memory."""

from __future__ import annotations

import pytest
from tollway.service.ledger import SummaryTooLarge, UsageFilter
from tollway.service.ledger.store import open_store
from tollway.service.ledger.summary import MAX_SUMMARY_ROWS

from tests.support.ledger import Backend, backend, pg_admin, pg_schema, sample_record  # noqa: F401


async def test_more_groups_than_the_cap_are_refused_and_the_cap_itself_is_answered(backend: Backend):
    store = open_store(backend.config(), 10.0)
    await store.open()
    try:
        records = [sample_record(f"r{i}", caller=f"caller-{i}") for i in range(MAX_SUMMARY_ROWS)]
        for start in range(0, len(records), 500):
            await store.insert(records[start:start + 500])

        rows = await store.summary(UsageFilter(), ["caller"])
        assert len(rows) == MAX_SUMMARY_ROWS

        await store.insert([sample_record("one-more", caller="caller-one-more")])
        with pytest.raises(SummaryTooLarge) as caught:
            await store.summary(UsageFilter(), ["caller"])
        assert str(caught.value) == (f"the summary has more than {MAX_SUMMARY_ROWS} rows; narrow the time range "
                                     "or the filters, or group by fewer dimensions")
        # Without a grouping there is one row, whatever the number of records.
        [total] = await store.summary(UsageFilter(), [])
        assert total.requests == MAX_SUMMARY_ROWS + 1
    finally:
        await store.close()
