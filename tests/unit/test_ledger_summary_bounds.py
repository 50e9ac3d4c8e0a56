"""Summaries on both stores stay answerable: at most MAX_SUMMARY_ROWS groups (one more is
refused, saying what to do, instead of a message built from every group in memory), and sums
past int64 saturate instead of failing every summary that includes them."""

from __future__ import annotations

import pytest
from tollway.service.ledger import InputTokens, SummaryTooLarge, UsageFilter
from tollway.service.ledger.store import open_store
from tollway.service.ledger.summary import INT64_MAX, MAX_SUMMARY_ROWS

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


async def test_sums_past_int64_saturate_instead_of_failing_the_summary(backend: Backend):
    # Records with 5e18 prompt tokens, as gateways stored them before figures were bounded:
    # two of them sum past int64, which SQLite's SUM refuses ("integer overflow").
    store = open_store(backend.config(), 10.0)
    await store.open()
    try:
        huge = 5 * 10**18
        await store.insert([
            sample_record(f"huge-{i}", input=InputTokens(total=huge, unattributed=huge), total_tokens=huge,
                          cost_nano_usd=huge, provider_cost_nano_usd=huge) for i in range(2)])
        await store.insert([sample_record("normal")])

        [total] = await store.summary(UsageFilter(), [])
        by_request = {row.group.caller: row for row in await store.summary(UsageFilter(), ["caller"])}
    finally:
        await store.close()

    assert total.requests == 3
    assert (total.input.total, total.input.unattributed, total.total_tokens) == (INT64_MAX, INT64_MAX, INT64_MAX)
    assert (total.cost_nano_usd, total.provider_reported_cost_nano_usd) == (INT64_MAX, INT64_MAX)
    # Sums that fit stay exact.
    assert (total.input.text, total.input.audio) == (5, 175)
    assert by_request["team-a"].requests == 3
