"""GetUsageSummary on both stores: every filter, every grouping, checked against a plain-Python
reading of the same records, plus hand-counted cases that pin the semantics down."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tollway.service.ledger import (
    InputTokens,
    Ledger,
    LedgerRecord,
    OutputTokens,
    UsageFilter,
    from_proto,
    to_proto,
)
from tollway.service.ledger.records import INPUT_BUCKETS, OUTPUT_BUCKETS
from tollway.v1 import completion_pb2 as pb

from tests.support.ledger import Backend, backend, pg_admin, pg_schema, sample_record  # noqa: F401

UTC = timezone.utc
DAY1 = datetime(2026, 5, 8, tzinfo=UTC)
MODELS = [("mixrouter", "gemini-2.0-flash"), ("mixrouter", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4")]
LABELS = [{"team": "search", "env": "prod"}, {"team": "ads"}, {}, {"a.b": 'x"y', "team": "search"}]
# Around the UTC midnights, and one written in another zone (UTC+2, but the 9th in UTC).
TIMES = [
    datetime(2026, 5, 8, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 5, 9, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 5, 9, 12, 0, 0, tzinfo=UTC),
    datetime(2026, 5, 10, 1, 30, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 5, 10, 0, 0, 0, 1, tzinfo=UTC),
]


def dataset() -> list[LedgerRecord]:
    recs = []
    for i in range(48):
        provider, model = MODELS[i % 3]
        text, audio, cache, reasoning = 10 + i, i % 4, (i * 7) % 11, i % 5
        recs.append(sample_record(
            f"sum-{i:03d}",
            time=TIMES[i % 5] + timedelta(minutes=i // 5 if i % 5 in (2,) else 0),
            caller=["team-a", "team-b", ""][i % 3 if i % 2 else (i // 2) % 3],
            labels=LABELS[i % 4],
            route=["fast", "smart", f"{provider}/{model}"][(i // 3) % 3],
            provider=provider,
            model=model,
            input=InputTokens(total=text + audio + cache, text=text, audio=audio, cache_read=cache),
            output=OutputTokens(total=20 + reasoning, text=20, reasoning=reasoning),
            total_tokens=text + audio + cache + 20 + reasoning,
            cost_nano_usd=0 if i % 5 == 0 else 1000 + i,
            unpriced=i % 5 == 0,
            unpriced_reason="no price" if i % 5 == 0 else "",
            estimated=i % 3 == 0,
            provider_cost_nano_usd=None if i % 2 else 900 + i,
        ))
    return recs


def expected(recs: Sequence[LedgerRecord], f: UsageFilter, group_by: Sequence[str]) -> list[pb.UsageSummaryRow]:
    """The oracle: the summary's meaning, in a few lines of Python."""
    def matches(r: LedgerRecord) -> bool:
        return ((f.start is None or r.time >= f.start) and (f.end is None or r.time < f.end)
                and all(getattr(f, d) in (None, getattr(r, d)) for d in ("caller", "provider", "model", "route"))
                and all(r.labels.get(k) == v for k, v in f.labels.items()))

    def key(r: LedgerRecord) -> tuple:
        return tuple(r.time.strftime("%Y-%m-%d") if g == "day" else
                     r.labels.get(g[6:]) if g.startswith("label:") else getattr(r, g) for g in group_by)

    groups: dict[tuple, list[LedgerRecord]] = {}
    for r in filter(matches, recs):
        groups.setdefault(key(r), []).append(r)
    if not group_by and not groups:
        groups[()] = []
    rows = []
    for values in sorted(groups, key=lambda vs: [(v is not None, v or "") for v in vs]):
        members = groups[values]
        group = pb.UsageGroup()
        for g, v in zip(group_by, values):
            if v is not None:
                if g.startswith("label:"):
                    group.labels[g[6:]] = v
                else:
                    setattr(group, g, v)
        rows.append(pb.UsageSummaryRow(
            group=group,
            requests=len(members),
            input=pb.InputUsage(**{b: sum(getattr(r.input, b) for r in members) for b in INPUT_BUCKETS}),
            output=pb.OutputUsage(**{b: sum(getattr(r.output, b) for r in members) for b in OUTPUT_BUCKETS}),
            total_tokens=sum(r.total_tokens for r in members),
            cost_nano_usd=sum(r.cost_nano_usd for r in members if not r.unpriced),
            unpriced_requests=sum(r.unpriced for r in members),
            estimated_requests=sum(r.estimated for r in members),
            provider_reported_cost_nano_usd=sum(r.provider_cost_nano_usd or 0 for r in members),
        ))
    return rows


FILTERS = {
    "everything": UsageFilter(),
    "from a start": UsageFilter(start=datetime(2026, 5, 9, tzinfo=UTC)),
    "until an end": UsageFilter(end=datetime(2026, 5, 9, tzinfo=UTC)),
    "one UTC day": UsageFilter(start=datetime(2026, 5, 9, tzinfo=UTC), end=datetime(2026, 5, 10, tzinfo=UTC)),
    "a range given in another zone": UsageFilter(start=datetime(2026, 5, 9, 14, tzinfo=timezone(timedelta(hours=2))),
                                                 end=datetime(2026, 5, 10, 0, 0, 0, 1, tzinfo=UTC)),
    "caller": UsageFilter(caller="team-b"),
    "one label": UsageFilter(labels={"team": "search"}),
    "two labels": UsageFilter(labels={"team": "search", "env": "prod"}),
    "an odd label key": UsageFilter(labels={"a.b": 'x"y'}),
    "a label nobody has": UsageFilter(labels={"team": "nobody"}),
    "provider": UsageFilter(provider="mixrouter"),
    "model": UsageFilter(model="claude-sonnet-4"),
    "route": UsageFilter(route="fast"),
    "all at once": UsageFilter(start=DAY1, end=DAY1 + timedelta(days=3), caller="team-a", labels={"team": "search"},
                               provider="mixrouter", model="gemini-2.0-flash", route="fast"),
}
GROUPINGS = [
    [], ["caller"], ["provider"], ["model"], ["route"], ["day"], ["label:team"], ["label:a.b"],
    ["day", "model"], ["caller", "label:team", "label:env"], ["caller", "provider", "model", "route", "day"],
]


@pytest.fixture
async def loaded(backend: Backend) -> AsyncIterator[tuple[Ledger, list[LedgerRecord]]]:
    ledger = await Ledger.open(backend.config())
    recs = dataset()
    for rec in recs:
        await ledger.record(rec)
    assert await ledger.flush(10)
    yield ledger, recs
    await ledger.aclose()


async def test_every_filter_and_grouping_matches_the_plain_reading(loaded):
    ledger, recs = loaded
    for (name, f), group_by in itertools.product(FILTERS.items(), GROUPINGS):
        assert await ledger.summary(f, group_by) == expected(recs, f, group_by), f"{name} by {group_by}"


async def test_hand_counted_day_groups_use_utc_midnight(loaded):
    ledger, _ = loaded
    rows = await ledger.summary(UsageFilter(), ["day"])
    # TIMES[0] is the 8th; TIMES[1], [2] the 9th; TIMES[3] (01:30 at UTC+2) and [4] the 9th and 10th.
    assert [(r.group.day, r.requests) for r in rows] == [("2026-05-08", 10), ("2026-05-09", 29), ("2026-05-10", 9)]


async def test_records_without_a_label_key_form_their_own_group_listed_first(loaded):
    ledger, _ = loaded
    rows = await ledger.summary(UsageFilter(), ["label:env"])
    assert [(dict(r.group.labels), r.requests) for r in rows] == [({}, 36), ({"env": "prod"}, 12)]


async def test_unpriced_requests_are_counted_never_summed_as_zero(loaded):
    ledger, recs = loaded
    [row] = await ledger.summary(UsageFilter(model="gemini-2.0-flash"))
    gemini = [r for r in recs if r.model == "gemini-2.0-flash"]
    assert row.unpriced_requests == sum(r.unpriced for r in gemini) > 0
    assert row.cost_nano_usd == sum(r.cost_nano_usd for r in gemini if not r.unpriced)
    assert row.provider_reported_cost_nano_usd == sum(r.provider_cost_nano_usd or 0 for r in gemini)


async def test_nothing_matches_gives_one_zero_row_without_grouping_and_none_with(loaded):
    ledger, _ = loaded
    nobody = UsageFilter(caller="nobody")
    assert await ledger.summary(nobody) == [
        pb.UsageSummaryRow(group=pb.UsageGroup(), input=pb.InputUsage(), output=pb.OutputUsage())]
    assert await ledger.summary(nobody, ["model"]) == []


async def test_the_proto_request_answers_through_the_same_query(loaded):
    ledger, recs = loaded
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(datetime(2026, 5, 9, tzinfo=UTC))
    end.FromDatetime(datetime(2026, 5, 10, tzinfo=UTC))
    request = pb.GetUsageSummaryRequest(
        start_time=start, end_time=end, labels={"team": "search"}, provider="mixrouter",
        group_by=[pb.USAGE_GROUPING_CALLER, pb.USAGE_GROUPING_LABEL], group_by_label_keys=["env"])
    response = await ledger.summary_response(request)
    f = UsageFilter(start=datetime(2026, 5, 9, tzinfo=UTC), end=datetime(2026, 5, 10, tzinfo=UTC),
                    labels={"team": "search"}, provider="mixrouter")
    assert list(response.rows) == expected(recs, f, ["caller", "label:env"])
    assert len(response.rows) > 1


def test_a_proto_request_becomes_a_filter_and_groupings():
    request = pb.GetUsageSummaryRequest(caller="team-a", model="m", route="r", labels={"k": "v"},
                                        group_by=[pb.USAGE_GROUPING_DAY, pb.USAGE_GROUPING_MODEL,
                                                  pb.USAGE_GROUPING_LABEL],
                                        group_by_label_keys=["team", "env"])
    f, group_by = from_proto(request)
    assert f == UsageFilter(caller="team-a", model="m", route="r", labels={"k": "v"})
    assert group_by == ["day", "model", "label:team", "label:env"]
    assert from_proto(pb.GetUsageSummaryRequest()) == (UsageFilter(), [])


@pytest.mark.parametrize(("request_", "message"), [
    (pb.GetUsageSummaryRequest(group_by=[pb.USAGE_GROUPING_LABEL]), "group_by LABEL needs group_by_label_keys"),
    (pb.GetUsageSummaryRequest(group_by=[pb.USAGE_GROUPING_UNSPECIFIED]), r"group_by has an unknown grouping \(0\)"),
    (pb.GetUsageSummaryRequest(group_by=[pb.USAGE_GROUPING_DAY, pb.USAGE_GROUPING_DAY]), "'day' is named twice"),
    (pb.GetUsageSummaryRequest(start_time=Timestamp(seconds=10), end_time=Timestamp(seconds=10)),
     "start_time must be before end_time"),
])
def test_a_malformed_proto_request_says_what_is_wrong(request_, message):
    with pytest.raises(ValueError, match=message):
        from_proto(request_)


async def test_an_unknown_grouping_is_refused_before_any_query(loaded):
    ledger, _ = loaded
    with pytest.raises(ValueError, match="unknown grouping 'team': use one of caller, provider, model, route, day "
                                         "or label:<key>"):
        await ledger.summary(UsageFilter(), ["team"])


@pytest.mark.parametrize("group_by", GROUPINGS)
def test_to_proto_and_back_keeps_the_filter_and_the_groupings(group_by):
    f = FILTERS["all at once"]
    back_filter, back_groups = from_proto(to_proto(f, group_by))
    assert back_filter == f
    dims = [g for g in group_by if not g.startswith("label:")]
    assert back_groups == dims + [g for g in group_by if g.startswith("label:")]
