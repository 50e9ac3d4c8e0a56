"""[[limits.rules]] through a real gateway: requests, tokens and streams per minute, refused with
RESOURCE_EXHAUSTED, QuotaFailure and RetryInfo before any upstream attempt, recorded in the ledger
with zero usage, and the remaining figures in every answer's trailers. Each test runs over both
stores: in process, and a Redis of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tollway.v1 import completion_pb2 as pb

from tests.support.answers import ok, ok_stream, request, stream_request
from tests.support.cli import tollway
from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.ledger_calls import ALICE_KEY, BOB_KEY, auth, sha, until_records
from tests.support.redis_server import RedisServer
from tests.support.upstream import Reply

Code = grpc.StatusCode
ENVIRON = {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY}
REMAINING_REQUESTS = "tollway-ratelimit-remaining-requests"
REMAINING_TOKENS = "tollway-ratelimit-remaining-tokens"


@pytest.fixture(params=["memory", "redis"])
def limits_store(request: pytest.FixtureRequest, tmp_path) -> dict[str, Any]:
    """The [limits] keys that pick the store; the Redis is this test's own."""
    if request.param == "memory":
        return {}
    server = RedisServer(tmp_path).start()
    request.addfinalizer(server.stop)
    return {"redis_url": server.url}


def config(upstream, limits_store: dict[str, Any], *rules: dict[str, Any], **limits: Any) -> dict[str, Any]:
    return {
        "providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1"}},
        "routing": {"max_retries": 0},
        "callers": {"alice": {"key_sha256": sha(ALICE_KEY), "labels": {"team": "search"}},
                    "bob": {"key_sha256": sha(BOB_KEY), "role": "admin"}},
        "limits": {**limits_store, **limits, "rules": list(rules)},
    }


def trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return dict(error.trailing_metadata())


async def call_trailers(call: Any) -> dict[str, str]:
    return dict(await call.trailing_metadata())


def quota_details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.QuotaFailure, float | None]:
    status = rpc_status.from_call(error)
    assert status is not None
    failure, retry = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToTimedelta().total_seconds()
    assert failure is not None, "no QuotaFailure detail"
    return failure, retry


async def test_requests_per_minute_refuses_the_call_past_the_limit_before_the_upstream(
        start_client, upstream, limits_store):
    rule = {"name": "search-gpt", "callers": ["alice"], "requests_per_minute": 3}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    upstream.default = ok()

    remaining = []
    for _ in range(3):
        call = client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
        await call
        remaining.append((await call_trailers(call))[REMAINING_REQUESTS])
    assert remaining == ["2", "1", "0"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    error = caught.value
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details().startswith('rate limit "search-gpt" reached: 3 of 3 requests in the last minute; '
                                      "retry in ")
    failure, retry = quota_details(error)
    [violation] = failure.violations
    assert (violation.subject, violation.quota_id, violation.quota_metric, violation.quota_value) == (
        "rule:search-gpt", "search-gpt", "requests_per_minute", 3)
    assert retry is not None and 0 < retry <= 60
    assert trailers(error)[REMAINING_REQUESTS] == "0"
    assert len(upstream.received) == 3, "the refused call reached the provider"

    # The ledger has the refusal, with zero usage and no provider.
    records = await until_records(client, 4)
    [refused] = [r for r in records if r.status == "RESOURCE_EXHAUSTED"]
    assert (refused.caller, refused.route, refused.provider, refused.input.total, refused.output.total,
            refused.cost_nano_usd) == ("alice", "mixrouter/m", "", 0, 0, 0)
    # Bob is not in the rule's callers: he is not limited.
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=5)


async def test_a_per_caller_rule_counts_each_caller_apart(start_client, upstream, limits_store):
    rule = {"name": "each", "per": "caller", "requests_per_minute": 1}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    upstream.default = ok()
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=5)
    assert caught.value.details().startswith('rate limit "each" (caller "bob") reached: 1 of 1 requests')
    failure, _ = quota_details(caught.value)
    assert failure.violations[0].subject == "rule:each/bob"


async def test_rules_match_by_model_pattern_and_label(start_client, upstream, limits_store):
    by_model = {"name": "gpt-only", "models": ["mixrouter/gpt-*"], "requests_per_minute": 1}
    by_label = {"name": "ads", "labels": {"team": "ads"}, "requests_per_minute": 1}
    client = await start_client(config(upstream, limits_store, by_model, by_label), ENVIRON)
    upstream.default = ok()
    # Another model, no ads label: neither rule applies, and no trailer says otherwise.
    for _ in range(3):
        call = client.stub.Complete(request("mixrouter/claude"), metadata=auth(BOB_KEY), timeout=5)
        await call
        assert REMAINING_REQUESTS not in await call_trailers(call)
    await client.stub.Complete(request("mixrouter/gpt-4o"), metadata=auth(BOB_KEY), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request("mixrouter/gpt-4o-mini"), metadata=auth(BOB_KEY), timeout=5)
    assert caught.value.details().startswith('rate limit "gpt-only" reached')
    labelled = request("mixrouter/claude")
    labelled.labels["team"] = "ads"
    await client.stub.Complete(labelled, metadata=auth(BOB_KEY), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(labelled, metadata=auth(BOB_KEY), timeout=5)
    assert caught.value.details().startswith('rate limit "ads" reached')
    # Alice's configured label (team = search) wins over what her request says.
    await client.stub.Complete(labelled, metadata=auth(ALICE_KEY), timeout=5)


async def test_tokens_are_reserved_from_the_estimate_and_settled_to_the_real_usage(
        start_client, upstream, limits_store):
    rule = {"name": "tokens", "tokens_per_minute": 1000}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    upstream.default = ok()  # usage: 3 input + 1 output tokens

    asked = request("mixrouter/m")
    asked.max_tokens = 500
    call = client.stub.Complete(asked, metadata=auth(BOB_KEY), timeout=5)
    await call
    # The reservation (2 text tokens + 500) became the real 4 tokens.
    assert (await call_trailers(call))[REMAINING_TOKENS] == "996"
    limits = await until_used(client, lambda r: r.tokens_used == 4)
    assert [(r.rule, r.tokens_per_minute, r.tokens_used) for r in limits.rate_limits] == [("tokens", 1000, 4)]

    too_big = request("mixrouter/m")
    too_big.max_tokens = 1000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(too_big, metadata=auth(BOB_KEY), timeout=5)
    assert (caught.value.code(), caught.value.details()) == (
        Code.RESOURCE_EXHAUSTED,
        'rate limit "tokens": this call needs an estimated 1002 tokens, more than the 1000 tokens per minute the '
        "rule allows: lower max_tokens or send less text")
    _, retry = quota_details(caught.value)
    assert retry is None, "a call that can never fit is told to retry"

    nearly = request("mixrouter/m")
    nearly.max_tokens = 995
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(nearly, metadata=auth(BOB_KEY), timeout=5)
    assert caught.value.details().startswith(
        'rate limit "tokens" reached: 4 of 1000 tokens in the last minute, and this call needs an estimated 997; '
        "retry in ")


async def test_a_failed_call_gives_its_reserved_tokens_back(start_client, upstream, limits_store):
    rule = {"name": "tokens", "tokens_per_minute": 1000}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    upstream.reply(Reply(status=400, body={"error": {"message": "bad request"}}))
    asked = request("mixrouter/m")
    asked.max_tokens = 900
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(asked, metadata=auth(BOB_KEY), timeout=5)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    limits = await until_used(client, lambda r: r.tokens_used == 0 and r.requests_used == 0)
    assert limits.rate_limits[0].tokens_used == 0


async def test_concurrent_streams_are_bounded_and_freed_when_a_stream_ends(start_client, upstream, limits_store):
    rule = {"name": "streams", "callers": ["alice"], "concurrent_streams": 1}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    # A stream that takes about two seconds: long enough to be open while the second one asks.
    upstream.reply(Reply(events=ok_stream().events, event_delay_s=0.4))

    first = client.stub.StreamComplete(stream_request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=10)
    await until_used(client, lambda r: r.streams_open == 1, caller_key=ALICE_KEY)
    second = client.stub.StreamComplete(stream_request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in second:
            pass
    assert (caught.value.code(), caught.value.details()) == (
        Code.RESOURCE_EXHAUSTED, 'rate limit "streams" reached: 1 of 1 streams open; close one or retry later')
    _, retry = quota_details(caught.value)
    assert retry == 1.0
    # Unary calls hold no stream slot.
    upstream.default = ok()
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    assert [m async for m in first][-1].WhichOneof("event") == "summary"
    await until_used(client, lambda r: r.streams_open == 0, caller_key=ALICE_KEY)
    upstream.reply(ok_stream())
    call = client.stub.StreamComplete(stream_request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=10)
    assert [m async for m in call][-1].WhichOneof("event") == "summary"


async def test_a_stream_carries_the_remaining_figures_in_its_trailers(start_client, upstream, limits_store):
    rule = {"name": "both", "requests_per_minute": 10, "tokens_per_minute": 1000}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    upstream.reply(ok_stream(["one ", "two"]))  # usage: 3 input + 2 output tokens
    call = client.stub.StreamComplete(stream_request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=10)
    assert [m async for m in call][-1].summary.usage.total_tokens == 5
    found = await call_trailers(call)
    assert (found[REMAINING_REQUESTS], found[REMAINING_TOKENS]) == ("9", "995")


async def test_a_cancelled_stream_frees_its_slot(start_client, upstream, limits_store):
    rule = {"name": "streams", "concurrent_streams": 1, "tokens_per_minute": 100000}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    upstream.reply(Reply(events=ok_stream().events, fault="stall"))
    call = client.stub.StreamComplete(stream_request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=10)
    await until_used(client, lambda r: r.streams_open == 1)
    call.cancel()
    await until_used(client, lambda r: r.streams_open == 0)


async def test_get_limits_shows_a_caller_its_own_and_an_admin_everyones(start_client, upstream, limits_store):
    shared = {"name": "shared", "requests_per_minute": 10}
    each = {"name": "each", "per": "caller", "requests_per_minute": 5, "concurrent_streams": 2}
    only_ads = {"name": "ads", "labels": {"team": "ads"}, "requests_per_minute": 1}
    client = await start_client(config(upstream, limits_store, shared, each, only_ads), ENVIRON)
    upstream.default = ok()
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)

    own = await client.stub.GetLimits(pb.GetLimitsRequest(), metadata=auth(ALICE_KEY), timeout=5)
    assert own.store_reachable
    assert [(r.rule, r.subject, r.requests_per_minute, r.requests_used, r.HasField("concurrent_streams"))
            for r in own.rate_limits] == [("shared", "", 10, 1, False), ("each", "alice", 5, 1, True)]
    assert own.rate_limits[0].requests_free_in.ToTimedelta().total_seconds() > 50

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.GetLimits(pb.GetLimitsRequest(caller="bob"), metadata=auth(ALICE_KEY), timeout=5)
    assert (caught.value.code(), caught.value.details()) == (
        Code.PERMISSION_DENIED, 'caller: "alice" may read only its own limits')

    everyone = await client.stub.GetLimits(pb.GetLimitsRequest(), metadata=auth(BOB_KEY), timeout=5)
    assert [(r.rule, r.subject, r.requests_used) for r in everyone.rate_limits] == [
        ("shared", "", 1), ("each", "alice", 1), ("each", "bob", 0), ("ads", "", 0)]
    alice = await client.stub.GetLimits(pb.GetLimitsRequest(caller="alice"), metadata=auth(BOB_KEY), timeout=5)
    assert [r.subject for r in alice.rate_limits] == ["", "alice"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.GetLimits(pb.GetLimitsRequest(caller="carol"), metadata=auth(BOB_KEY), timeout=5)
    assert (caught.value.code(), caught.value.details()) == (
        Code.NOT_FOUND, "caller: no caller named 'carol' is configured")


async def until_used(client, ok_when, caller_key: str = BOB_KEY) -> pb.GetLimitsResponse:
    """GetLimits until its first rule satisfies ok_when: settlements reach the store just after
    the caller has its answer."""
    async def poll() -> pb.GetLimitsResponse:
        while True:
            found = await client.stub.GetLimits(pb.GetLimitsRequest(), metadata=auth(caller_key), timeout=5)
            if found.rate_limits and ok_when(found.rate_limits[0]):
                return found
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), 5)


async def test_tollway_limits_prints_what_is_used_and_what_remains(start_client, upstream, limits_store):
    rule = {"name": "search-gpt", "callers": ["alice"], "requests_per_minute": 60, "tokens_per_minute": 200000}
    client = await start_client(config(upstream, limits_store, rule), ENVIRON)
    upstream.default = ok()
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    await until_used(client, lambda r: r.tokens_used == 4, caller_key=ALICE_KEY)

    code, out, err = await tollway("limits", "--target", client.target, env={"TOLLWAY_KEY": ALICE_KEY})
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["rule", "subject", "requests/min", "tokens/min", "streams", "oldest", "request",
                                "frees", "in"]
    assert lines[1].split()[:9] == ["search-gpt", "(shared)", "1", "of", "60", "4", "of", "200000", "-"]
    assert len(lines) == 2

    code, out, err = await tollway("limits", "--target", client.target, "--caller", "bob",
                                   env={"TOLLWAY_KEY": ALICE_KEY})
    assert (code, out, err) == (1, "", "tollway: PERMISSION_DENIED: caller: \"alice\" may read only its own limits\n")


async def test_get_limits_refuses_strangers_and_oversized_questions(start_client, upstream, limits_store):
    client = await start_client(config(upstream, limits_store, {"name": "r", "requests_per_minute": 5}), ENVIRON)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.GetLimits(pb.GetLimitsRequest(), timeout=5)
    assert (caught.value.code(), caught.value.details()) == (
        Code.UNAUTHENTICATED, "missing caller key: send metadata 'authorization: Bearer <key>'")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.GetLimits(pb.GetLimitsRequest(labels={"team": "x" * 300}), metadata=auth(ALICE_KEY),
                                    timeout=5)
    assert (caught.value.code(), caught.value.details()) == (
        Code.INVALID_ARGUMENT, "labels['team']: is 300 characters; the limit is 256 (limits.max_label_value_chars)")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.GetLimits(pb.GetLimitsRequest(model="nowhere"), metadata=auth(ALICE_KEY), timeout=5)
    assert (caught.value.code(), caught.value.details()) == (
        Code.NOT_FOUND, 'model: unknown route "nowhere" (routes: none; or name "provider/model")')
