"""GetUsageSummary over gRPC and `tollway usage`, against ledger records made by real calls.

Every test drives the same traffic through an in-process gateway (three callers, two relays, a
route with a fallback, an unpriced model, a stream without usage, a failed call) in two batches
with a known moment between them, flushes the ledger, and then compares what the RPC answers
with sums worked out here from what each caller was told.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from tollway.service.cli.render import format_usd
from tollway.service.ledger.records import INPUT_BUCKETS, OUTPUT_BUCKETS
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, Client, mixrouter_config
from tests.support.cli import tollway
from tests.support.ledger import PG_PORT, TcpProxy, pg_admin, pg_schema, with_schema  # noqa: F401 - fixtures
from tests.support.ledger_calls import (
    ENVIRON,
    GEMINI_USAGE,
    auth,
    completion,
    flushed_records,
    gateway_config,
    request_id_of,
    sha,
    text_request,
)
from tests.support.seed import recorded_stream
from tests.support.upstream import FakeUpstream, Reply, sse_events

Code = grpc.StatusCode
# Not real keys: markers the suite-wide log scan looks for.
ALICE_KEY = "tw-test-usage-alice-3b9d1f0e7a"
BOB_KEY = "tw-test-usage-bob-6c2a8e4d1f"
CAROL_KEY = "tw-test-usage-carol-admin-7f31"

GPT_USAGE = {"prompt_tokens": 500, "completion_tokens": 100, "total_tokens": 600,
             "prompt_tokens_details": {"cached_tokens": 100, "text_tokens": 400},
             "completion_tokens_details": {"text_tokens": 100}, "cost": 0.00011}
GPT_USAGE_2 = {"prompt_tokens": 70, "completion_tokens": 30, "total_tokens": 100, "cost": 0.000025}

GROUPINGS = {"caller": pb.USAGE_GROUPING_CALLER, "provider": pb.USAGE_GROUPING_PROVIDER,
             "model": pb.USAGE_GROUPING_MODEL, "route": pb.USAGE_GROUPING_ROUTE, "day": pb.USAGE_GROUPING_DAY}


@dataclass
class Made:
    """One request as its caller saw it, and what the ledger must count for it."""

    request_id: str
    caller: str
    labels: dict[str, str]
    route: str
    provider: str
    model: str
    batch: int
    usage: pb.Usage = field(default_factory=pb.Usage)
    cost: pb.Cost = field(default_factory=pb.Cost)
    day: str = ""


@dataclass
class Traffic:
    gateway: Client
    made: list[Made]
    # Between the two batches: every record of batch 1 is before it, every one of batch 2 after.
    between: datetime
    start: datetime
    end: datetime


def summary_config(upstream: FakeUpstream) -> dict[str, Any]:
    config = gateway_config(upstream)
    config["callers"] = {
        "alice": {"key_sha256": sha(ALICE_KEY), "labels": {"team": "search", "cost_center": "cc-7"}},
        "bob": {"key_sha256": sha(BOB_KEY), "labels": {"team": "ads"}},
        "carol": {"key_sha256": sha(CAROL_KEY), "role": "admin"},
    }
    return config


async def _unary(gateway: Client, key: str, model: str, labels: dict[str, str]) -> tuple[str, pb.CompleteResponse]:
    call = gateway.stub.Complete(text_request(model, labels=labels), timeout=10, metadata=auth(key))
    response = await call
    return request_id_of(await call.trailing_metadata()), response


async def _stream(gateway: Client, key: str, model: str, labels: dict[str, str]) -> tuple[str, pb.StreamSummary]:
    call = gateway.stub.StreamComplete(text_request(model, labels=labels, stream=True), timeout=10,
                                       metadata=auth(key))
    messages = [m async for m in call]
    return request_id_of(await call.trailing_metadata()), messages[-1].summary


@pytest.fixture
async def traffic(start_client, upstream) -> Traffic:
    gateway = await start_client(summary_config(upstream), ENVIRON)
    made: list[Made] = []
    start = datetime.now(timezone.utc)

    async def ok(key, caller, stream, model, labels, merged, batch):
        rid, answer = await (_stream if stream else _unary)(gateway, key, model, labels)
        made.append(Made(rid, caller, merged, model, answer.provider, answer.model, batch, answer.usage,
                         answer.cost))

    # Batch 1.
    upstream.reply(Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE)))
    await ok(ALICE_KEY, "alice", False, "fast", {"feature": "chat"},
             {"team": "search", "cost_center": "cc-7", "feature": "chat"}, 1)
    upstream.reply(Reply(body=completion("gpt-4o-mini", GPT_USAGE)))
    await ok(BOB_KEY, "bob", False, "mixrouter/gpt-4o-mini", {"feature": "summarize", "team": "x"},
             {"team": "ads", "feature": "summarize"}, 1)
    # The route's first target answers 503; the backup relay streams the answer.
    upstream.reply(Reply(status=503, body={"error": {"message": "overloaded"}}),
                   Reply(events=sse_events(recorded_stream())))
    await ok(CAROL_KEY, "carol", True, "resilient", {}, {}, 1)
    await _flush(gateway)
    between = datetime.now(timezone.utc)

    # Batch 2.
    upstream.reply(Reply(events=sse_events(recorded_stream(with_usage=False))))  # estimated usage
    await ok(ALICE_KEY, "alice", True, "fast", {"feature": "chat"},
             {"team": "search", "cost_center": "cc-7", "feature": "chat"}, 2)
    upstream.reply(Reply(body=completion("some-model-nobody-prices", GPT_USAGE_2)))
    await ok(BOB_KEY, "bob", False, "mixrouter/some-model-nobody-prices", {"feature": "summarize"},
             {"team": "ads", "feature": "summarize"}, 2)
    upstream.reply(Reply(body=completion("gpt-4o-mini", GPT_USAGE_2)))
    await ok(BOB_KEY, "bob", False, "mixrouter/gpt-4o-mini", {}, {"team": "ads"}, 2)
    upstream.reply(Reply(status=503, body={"error": {"message": "overloaded"}}))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gateway.stub.Complete(text_request("fast", labels={}), timeout=10, metadata=auth(ALICE_KEY))
    assert failed.value.code() == Code.UNAVAILABLE
    made.append(Made(request_id_of(failed.value.trailing_metadata()), "alice",
                     {"team": "search", "cost_center": "cc-7"}, "fast", "mixrouter", "gemini-2.0-flash", 2))

    records = {r.request_id: r for r in await flushed_records(gateway)}
    assert set(records) == {m.request_id for m in made}
    for m in made:
        m.day = records[m.request_id].time.strftime("%Y-%m-%d")
        assert (records[m.request_id].time < between) == (m.batch == 1)
    return Traffic(gateway, made, between, start, datetime.now(timezone.utc) + timedelta(seconds=1))


async def _flush(gateway: Client) -> None:
    assert await gateway.gateway.runtime.ledger.flush(5)


# -- the expected answer, worked out from what the callers were told ------------------------


def _value(made: Made, grouping: str) -> str | None:
    if grouping.startswith("label:"):
        return made.labels.get(grouping.removeprefix("label:"))
    return getattr(made, grouping)


def expected_rows(made: Iterable[Made], group_by: Sequence[str],
                  keep: Callable[[Made], bool] = lambda m: True) -> dict[tuple, pb.UsageSummaryRow]:
    rows: dict[tuple, pb.UsageSummaryRow] = {}
    for m in made:
        if not keep(m):
            continue
        key = tuple(sorted((g, _value(m, g)) for g in group_by))
        row = rows.setdefault(key, _empty_row(key))
        row.requests += 1
        for bucket in INPUT_BUCKETS:
            setattr(row.input, bucket, getattr(row.input, bucket) + getattr(m.usage.input, bucket))
        for bucket in OUTPUT_BUCKETS:
            setattr(row.output, bucket, getattr(row.output, bucket) + getattr(m.usage.output, bucket))
        row.total_tokens += m.usage.total_tokens
        if m.cost.unpriced:
            row.unpriced_requests += 1
        else:
            row.cost_nano_usd += m.cost.total_nano_usd
        row.estimated_requests += m.usage.estimated
        row.provider_reported_cost_nano_usd += m.cost.provider_reported_nano_usd
    if not group_by and not rows:
        rows[()] = pb.UsageSummaryRow(group=pb.UsageGroup(), input=pb.InputUsage(), output=pb.OutputUsage())
    return rows


def _empty_row(key: tuple) -> pb.UsageSummaryRow:
    row = pb.UsageSummaryRow(group=pb.UsageGroup(), input=pb.InputUsage(), output=pb.OutputUsage())
    for grouping, value in key:
        if value is None:
            continue
        if grouping.startswith("label:"):
            row.group.labels[grouping.removeprefix("label:")] = value
        else:
            setattr(row.group, grouping, value)
    return row


def actual_rows(response: pb.GetUsageSummaryResponse, group_by: Sequence[str]) -> dict[tuple, pb.UsageSummaryRow]:
    rows = {}
    for row in response.rows:
        key = tuple(sorted(
            (g, row.group.labels.get(g.removeprefix("label:")) if g.startswith("label:") else getattr(row.group, g))
            for g in group_by))
        assert key not in rows, f"two rows for {key}"
        rows[key] = row
    return rows


def summary_request(group_by: Sequence[str] = (), **filters: Any) -> pb.GetUsageSummaryRequest:
    request = pb.GetUsageSummaryRequest(**{k: v for k, v in filters.items() if k not in ("start", "end")})
    if "start" in filters:
        request.start_time.FromDatetime(filters["start"])
    if "end" in filters:
        request.end_time.FromDatetime(filters["end"])
    for grouping in group_by:
        if grouping.startswith("label:"):
            if pb.USAGE_GROUPING_LABEL not in request.group_by:
                request.group_by.append(pb.USAGE_GROUPING_LABEL)
            request.group_by_label_keys.append(grouping.removeprefix("label:"))
        else:
            request.group_by.append(GROUPINGS[grouping])
    return request


async def summary(traffic: Traffic, key: str, group_by: Sequence[str] = (), **filters: Any):
    response = await traffic.gateway.stub.GetUsageSummary(summary_request(group_by, **filters), timeout=10,
                                                          metadata=auth(key))
    return actual_rows(response, group_by)


# -- the figures ---------------------------------------------------------------------------


async def test_the_traffic_has_what_the_summary_must_tell_apart(traffic):
    """The sums below are only worth something if the traffic has every kind of record."""
    made = traffic.made
    assert {m.caller for m in made} == {"alice", "bob", "carol"}
    assert {m.provider for m in made} == {"mixrouter", "backup"}
    assert sum(m.cost.unpriced for m in made) == 1
    assert sum(m.usage.estimated for m in made) == 1
    assert sum(m.cost.HasField("provider_reported_nano_usd") for m in made) == 4
    assert sum(m.usage.input.cache_read > 0 for m in made) == 2
    [total] = (await summary(traffic, CAROL_KEY)).values()
    assert total.requests == 7
    assert total.input.total == sum(m.usage.input.total for m in made) > 0
    assert total.cost_nano_usd == sum(m.cost.total_nano_usd for m in made) > 0


@pytest.mark.parametrize("group_by", [
    [], ["caller"], ["provider"], ["model"], ["route"], ["day"], ["label:team"], ["label:feature"],
    ["caller", "model"], ["day", "provider", "route"], ["caller", "label:team", "label:feature"],
], ids=lambda g: "+".join(g) or "all")
async def test_every_grouping_sums_the_records(traffic, group_by):
    assert await summary(traffic, CAROL_KEY, group_by) == expected_rows(traffic.made, group_by)


async def test_a_label_grouping_keeps_records_without_the_label_in_a_group_of_their_own(traffic):
    rows = await summary(traffic, CAROL_KEY, ["label:feature"])
    assert sorted(k[0][1] or "" for k in rows) == ["", "chat", "summarize"]
    [unlabelled] = [row for key, row in rows.items() if key[0][1] is None]
    assert dict(unlabelled.group.labels) == {}
    assert unlabelled.requests == 3  # carol's, bob's last, alice's failed one


FILTERS = {
    "caller": ({"caller": "bob"}, lambda m: m.caller == "bob"),
    "label": ({"labels": {"team": "search"}}, lambda m: m.labels.get("team") == "search"),
    "two-labels": ({"labels": {"team": "ads", "feature": "summarize"}},
                   lambda m: m.labels.get("team") == "ads" and m.labels.get("feature") == "summarize"),
    "provider": ({"provider": "backup"}, lambda m: m.provider == "backup"),
    "model": ({"model": "gpt-4o-mini"}, lambda m: m.model == "gpt-4o-mini"),
    "route": ({"route": "fast"}, lambda m: m.route == "fast"),
    "combined": ({"route": "fast", "caller": "alice", "labels": {"feature": "chat"}},
                 lambda m: m.route == "fast" and m.caller == "alice" and m.labels.get("feature") == "chat"),
    "nothing-matches": ({"model": "no-such-model"}, lambda m: False),
}


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("group_by", [[], ["caller", "day"]], ids=["all", "caller+day"])
async def test_every_filter_counts_only_its_records(traffic, name, group_by):
    filters, keep = FILTERS[name]
    assert await summary(traffic, CAROL_KEY, group_by, **filters) == expected_rows(traffic.made, group_by, keep)


async def test_a_time_range_is_start_inclusive_and_end_exclusive(traffic):
    made, between = traffic.made, traffic.between
    assert await summary(traffic, CAROL_KEY, ["caller"], start=between) == \
        expected_rows(made, ["caller"], lambda m: m.batch == 2)
    assert await summary(traffic, CAROL_KEY, ["caller"], end=between) == \
        expected_rows(made, ["caller"], lambda m: m.batch == 1)
    assert await summary(traffic, CAROL_KEY, ["caller"], start=traffic.start, end=traffic.end) == \
        expected_rows(made, ["caller"])
    # A record's own moment is inside a range that starts at it and outside one that ends at it.
    first = min((await flushed_records(traffic.gateway)), key=lambda r: r.time)
    [(_, from_first)] = (await summary(traffic, CAROL_KEY, start=first.time)).items()
    [(_, until_first)] = (await summary(traffic, CAROL_KEY, end=first.time)).items()
    assert (from_first.requests, until_first.requests) == (7, 0)
    [(_, later)] = (await summary(traffic, CAROL_KEY, start=traffic.end, end=traffic.end + timedelta(days=1))).items()
    assert later == pb.UsageSummaryRow(group=pb.UsageGroup(), input=pb.InputUsage(), output=pb.OutputUsage())


# -- who may see what ----------------------------------------------------------------------


async def test_a_caller_sees_only_its_own_usage(traffic):
    for name, key in (("alice", ALICE_KEY), ("bob", BOB_KEY)):
        mine = lambda m, name=name: m.caller == name  # noqa: E731
        assert await summary(traffic, key) == expected_rows(traffic.made, [], mine)
        assert await summary(traffic, key, ["caller", "model"]) == \
            expected_rows(traffic.made, ["caller", "model"], mine)
        assert await summary(traffic, key, ["caller"], caller=name) == expected_rows(traffic.made, ["caller"], mine)
        # Filters narrow within its own records.
        assert await summary(traffic, key, ["route"], route="fast") == \
            expected_rows(traffic.made, ["route"], lambda m, name=name: m.caller == name and m.route == "fast")


@pytest.mark.parametrize("key, name, other", [(ALICE_KEY, "alice", "bob"), (BOB_KEY, "bob", "carol")])
async def test_a_caller_asking_for_another_callers_usage_is_permission_denied(traffic, key, name, other):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await traffic.gateway.stub.GetUsageSummary(summary_request(caller=other), timeout=10, metadata=auth(key))
    assert caught.value.code() == Code.PERMISSION_DENIED
    assert caught.value.details() == f'caller: "{name}" may read only its own usage'


async def test_an_admin_sees_every_callers_usage(traffic):
    rows = await summary(traffic, CAROL_KEY, ["caller"])
    assert {k[0][1] for k in rows} == {"alice", "bob", "carol"}
    assert rows == expected_rows(traffic.made, ["caller"])
    assert await summary(traffic, CAROL_KEY, caller="alice") == \
        expected_rows(traffic.made, [], lambda m: m.caller == "alice")


@pytest.mark.parametrize("metadata, message", [
    ((), "missing caller key: send metadata 'authorization: Bearer <key>'"),
    (auth("tw-test-usage-nobody-00000000"), "invalid caller key"),
    ((("authorization", f"Basic {CAROL_KEY}"),), "missing caller key: send metadata 'authorization: Bearer <key>'"),
])
async def test_an_unauthenticated_summary_is_refused(traffic, metadata, message):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await traffic.gateway.stub.GetUsageSummary(summary_request(["caller"]), timeout=10, metadata=metadata)
    assert caught.value.code() == Code.UNAUTHENTICATED
    assert caught.value.details() == message


@pytest.mark.parametrize("request_fields, message", [
    ({"group_by": [pb.USAGE_GROUPING_LABEL]}, "group_by LABEL needs group_by_label_keys"),
    ({"group_by": [99]}, "group_by has an unknown grouping (99)"),
    ({"group_by": [pb.USAGE_GROUPING_CALLER, pb.USAGE_GROUPING_CALLER]}, "grouping 'caller' is named twice"),
    ({"group_by": [pb.USAGE_GROUPING_LABEL], "group_by_label_keys": ["team", "team"]},
     "grouping 'label:team' is named twice"),
])
@pytest.mark.parametrize("key", [ALICE_KEY, CAROL_KEY], ids=["user", "admin"])
async def test_a_bad_grouping_is_invalid_argument(traffic, request_fields, message, key):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await traffic.gateway.stub.GetUsageSummary(pb.GetUsageSummaryRequest(**request_fields), timeout=10,
                                                   metadata=auth(key))
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == message


async def test_a_time_range_that_ends_before_it_starts_is_invalid_argument(traffic):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await traffic.gateway.stub.GetUsageSummary(summary_request(start=traffic.end, end=traffic.start), timeout=10,
                                                   metadata=auth(CAROL_KEY))
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == "summary start_time must be before end_time"


async def test_with_no_callers_configured_the_anonymous_caller_sees_everything(start_client, upstream):
    gateway = await start_client(mixrouter_config(upstream), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE)))
    response = await gateway.stub.Complete(text_request("mixrouter/gemini-2.0-flash"), timeout=10)
    await _flush(gateway)

    answer = await gateway.stub.GetUsageSummary(summary_request(["caller", "label:feature"]), timeout=10)
    [row] = answer.rows
    assert (row.group.caller, dict(row.group.labels), row.requests) == ("anonymous", {"feature": "chat"}, 1)
    assert row.input == response.usage.input and row.cost_nano_usd == response.cost.total_nano_usd


# -- tollway usage ---------------------------------------------------------------------------


async def usage_command(traffic: Traffic, *args: str, env: dict[str, str] | None = None) -> str:
    """`tollway usage` against the gateway, as the admin unless env says otherwise."""
    env = {"TOLLWAY_KEY": CAROL_KEY} if env is None else env
    code, out, err = await tollway("usage", "--target", traffic.gateway.target, *args, env=env)
    assert code == 0, err
    assert err == ""
    for secret in (ALICE_KEY, BOB_KEY, CAROL_KEY):
        assert secret not in out
    return out


def _cell(value: str | None) -> str:
    return "" if value is None else value


def _csv_expected(rows: dict[tuple, pb.UsageSummaryRow], group_by: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for key, row in rows.items():
        values = dict(key)
        record = {g: _cell(values[g]) for g in group_by}
        record["requests"] = str(row.requests)
        record.update({f"input_{b}": str(getattr(row.input, b)) for b in INPUT_BUCKETS})
        record.update({f"output_{b}": str(getattr(row.output, b)) for b in OUTPUT_BUCKETS})
        record.update(total_tokens=str(row.total_tokens), cost_nano_usd=str(row.cost_nano_usd),
                      cost_usd=format_usd(row.cost_nano_usd), unpriced_requests=str(row.unpriced_requests),
                      estimated_requests=str(row.estimated_requests),
                      provider_reported_cost_nano_usd=str(row.provider_reported_cost_nano_usd),
                      provider_reported_cost_usd=format_usd(row.provider_reported_cost_nano_usd))
        out.append(record)
    return sorted(out, key=lambda r: [r[g] for g in group_by])


async def test_usage_command_prints_csv_with_every_bucket(traffic):
    group_by = ["caller", "model"]
    out = await usage_command(traffic, "--group-by", "caller,model", "--format", "csv")
    printed = list(csv.DictReader(io.StringIO(out)))
    assert printed == _csv_expected(expected_rows(traffic.made, group_by), group_by)
    # Exact money: alice's gemini call, priced, to the nano-dollar.
    [alice_gemini] = [r for r in printed if (r["caller"], r["model"]) == ("alice", "gemini-2.0-flash")]
    assert int(alice_gemini["cost_nano_usd"]) == sum(
        m.cost.total_nano_usd for m in traffic.made if (m.caller, m.model) == ("alice", "gemini-2.0-flash")) > 0
    # A span back from now, and an ISO end: the same records.
    assert await usage_command(traffic, "--group-by", "caller,model", "--format", "csv", "--since", "1h",
                               "--until", traffic.end.isoformat()) == out


async def test_usage_command_exports_jsonl_with_filters(traffic):
    out = await usage_command(traffic, "--group-by", "label:team,route", "--format", "jsonl",
                              "--since", traffic.between.isoformat(), "--provider", "mixrouter")
    printed = [json.loads(line) for line in out.splitlines()]
    expected = expected_rows(traffic.made, ["route", "label:team"],
                             lambda m: m.batch == 2 and m.provider == "mixrouter")
    assert len(printed) == len(expected) == 3
    for line in printed:
        # Columns in the order the command line named them.
        assert list(line)[:3] == ["label:team", "route", "requests"]
        row = expected[tuple(sorted((("route", line["route"]), ("label:team", line["label:team"]))))]
        assert line["requests"] == row.requests
        assert {b: line[f"input_{b}"] for b in INPUT_BUCKETS} == {b: getattr(row.input, b) for b in INPUT_BUCKETS}
        assert {b: line[f"output_{b}"] for b in OUTPUT_BUCKETS} == {b: getattr(row.output, b) for b in OUTPUT_BUCKETS}
        assert (line["total_tokens"], line["cost_nano_usd"], line["unpriced_requests"], line["estimated_requests"],
                line["provider_reported_cost_nano_usd"]) == (
            row.total_tokens, row.cost_nano_usd, row.unpriced_requests, row.estimated_requests,
            row.provider_reported_cost_nano_usd)
        assert line["cost_usd"] == format_usd(row.cost_nano_usd)


async def test_usage_command_prints_a_table(traffic):
    out = await usage_command(traffic, "--group-by", "label:feature,provider", "--label", "team=ads",
                              "--key-env", "TW_USAGE_KEY", env={"TOLLWAY_KEY": "", "TW_USAGE_KEY": CAROL_KEY})
    # --key-env names the variable: TOLLWAY_KEY is empty, the key is under another name.
    lines = out.splitlines()
    assert lines[0].split() == ["label:feature", "provider", "requests", "input", "output", "total", "tokens",
                                "cost", "USD", "unpriced", "estimated", "provider", "cost", "USD"]
    assert set(lines[1]) == {"-", " "}
    expected = expected_rows(traffic.made, ["provider", "label:feature"], lambda m: m.labels.get("team") == "ads")
    assert len(lines) == 2 + len(expected)
    # Rows in the order of their group values, as the columns stand: a missing label first.
    assert [line.split()[:2] for line in lines[2:]] == [["-", "mixrouter"], ["summarize", "mixrouter"]]
    for line in lines[2:]:
        feature, provider, *numbers = line.split()
        row = expected[tuple(sorted((("provider", provider), ("label:feature", None if feature == "-" else feature))))]
        assert numbers == [str(row.requests), str(row.input.total), str(row.output.total), str(row.total_tokens),
                           format_usd(row.cost_nano_usd), str(row.unpriced_requests), str(row.estimated_requests),
                           format_usd(row.provider_reported_cost_nano_usd)]


async def test_usage_command_confines_a_caller_to_its_own_usage(traffic):
    out = await usage_command(traffic, "--group-by", "caller", "--format", "jsonl", env={"TOLLWAY_KEY": BOB_KEY})
    [line] = [json.loads(x) for x in out.splitlines()]
    [row] = expected_rows(traffic.made, ["caller"], lambda m: m.caller == "bob").values()
    assert (line["caller"], line["requests"], line["cost_nano_usd"]) == ("bob", row.requests, row.cost_nano_usd)

    code, out, err = await tollway("usage", "--target", traffic.gateway.target, "--caller", "alice",
                                   env={"TOLLWAY_KEY": BOB_KEY})
    assert (code, out) == (1, "")
    assert err == 'tollway: PERMISSION_DENIED: caller: "bob" may read only its own usage\n'


@pytest.mark.parametrize("args, env, code, message", [
    (["--group-by", "colour"], {"TOLLWAY_KEY": CAROL_KEY}, 2,
     "tollway: unknown grouping 'colour': use one of caller, provider, model, route, day or label:<key>\n"),
    (["--label", "team"], {"TOLLWAY_KEY": CAROL_KEY}, 2, "tollway: --label 'team' is not KEY=VALUE\n"),
    (["--since", "yesterday"], {"TOLLWAY_KEY": CAROL_KEY}, 2,
     "tollway: --since 'yesterday' is neither an ISO date/time nor a span like 7d\n"),
    ([], {"TOLLWAY_KEY": ""}, 1,
     "tollway: UNAUTHENTICATED: missing caller key: send metadata 'authorization: Bearer <key>'\n"),
])
async def test_usage_command_refusals_say_why(traffic, args, env, code, message):
    exit_code, out, err = await tollway("usage", "--target", traffic.gateway.target, *args, env=env)
    assert (exit_code, out, err) == (code, "", message)


# -- the ledger's database away ----------------------------------------------------------------


async def test_a_summary_while_the_postgresql_ledger_is_away_is_unavailable_and_the_records_wait(
        start_client, upstream, tmp_path, pg_admin, pg_schema):
    proxy = await TcpProxy(PG_PORT).up()
    try:
        config = mixrouter_config(upstream)
        config["ledger"] = {"dsn": with_schema(pg_admin, pg_schema, proxy.port), "path": str(tmp_path / "unused"),
                            "journal_dir": str(tmp_path / "journal"), "retry_interval_s": 0.05,
                            "insert_timeout_s": 1.0}
        gateway = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
        await proxy.down()

        # Calls are still answered: their records wait in the journal.
        upstream.reply(Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE)))
        response = await gateway.stub.Complete(text_request("mixrouter/gemini-2.0-flash"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.GetUsageSummary(summary_request(), timeout=10)
        assert caught.value.code() == Code.UNAVAILABLE
        # The database's address is the operator's business (their log has it), not the caller's.
        assert caught.value.details() == "usage ledger unavailable; retry later"

        await proxy.up()
        await _flush(gateway)
        answer = await gateway.stub.GetUsageSummary(summary_request(["caller"]), timeout=10)
        [row] = answer.rows
        assert (row.group.caller, row.requests, row.input, row.cost_nano_usd) == (
            "anonymous", 1, response.usage.input, response.cost.total_nano_usd)
    finally:
        await proxy.down()
