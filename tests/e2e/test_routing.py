"""Routes under injected faults: fallbacks, weights, retries, keys, the deadline budget,
stream timeouts, circuit breakers, cancel, and what a response says about its attempts.

Two or three loopback upstreams play different providers (all MixRouter-kind, so their
payloads are OpenAI-format). Everything is counted: upstream requests, Authorization
headers, attempts; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from tollway.service.config.loader import ConfigError, parse_config
from tollway.service.routing.routes import Route, Target
from tollway.v1 import completion_pb2 as pb

from tests.support.upstream import (
    BlackHole,
    FakeUpstream,
    NotHttp,
    RefusedPort,
    Reply,
    html_error_page,
    sse_events,
)

Code = grpc.StatusCode
WAIT_S = 5.0

KEYS = {
    "A_KEY_1": "tw-test-a-key-0001",
    "A_KEY_2": "tw-test-a-key-0002",
    "B_KEY": "tw-test-b-key-0001",
    "C_KEY": "tw-test-c-key-0001",
}
# Fast retries: the tests count attempts, they do not wait for realistic backoff.
QUICK = {"max_retries": 0, "backoff_initial_s": 0.001, "backoff_max_s": 0.005}


# -- upstreams and config ------------------------------------------------------------------


def provider(server, *key_envs: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "mixrouter", "base_url": f"{server.base_url}/v1", "api_key_envs": list(key_envs), **extra}


def target(name: str, **extra: Any) -> dict[str, Any]:
    return {"provider": name, "model": f"model-{name}", **extra}


def config(
    ups: list,
    routes: dict[str, list[dict]],
    routing: dict[str, Any] | None = None,
    **per_provider: dict[str, Any],
) -> dict[str, Any]:
    """Providers a, b, c on the given upstreams, one key each unless `keys=(...)` names more."""
    names = ("a", "b", "c")
    key_envs = {"a": ("A_KEY_1",), "b": ("B_KEY",), "c": ("C_KEY",)}
    providers = {}
    for name, server in zip(names, ups):
        extra = dict(per_provider.get(name, {}))
        envs = extra.pop("keys", key_envs[name])
        providers[name] = provider(server, *envs, **extra)
    return {
        "providers": providers,
        "routes": [{"name": name, "targets": targets} for name, targets in routes.items()],
        "routing": {**QUICK, **(routing or {})},
    }


FALLBACK = {"fast": [target("a"), target("b", priority=2)]}


async def gateway(start_client, ups, routes=FALLBACK, routing=None, **per_provider):
    return await start_client(config(ups, routes, routing, **per_provider), KEYS)


# -- payloads ------------------------------------------------------------------------------


def answer(text: str = "ok", model: str = "upstream-model") -> dict:
    return {
        "id": "chatcmpl-route",
        "object": "chat.completion",
        "created": 1766735300,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None,
          usage: dict | None = None) -> dict:
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-route-stream", "object": "chat.completion.chunk", "created": 1766735300,
            "model": "upstream-model", "choices": choices, "usage": usage}


def stream_chunks(words: list[str]) -> list[dict]:
    return [
        chunk(role="assistant", content=""),
        *(chunk(w) for w in words),
        chunk(finish="stop"),
        chunk(usage={"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}),
    ]


def ok(text: str = "ok") -> Reply:
    return Reply(body=answer(text))


def ok_stream(words: list[str] = ("one ", "two")) -> Reply:
    return Reply(events=sse_events(stream_chunks(list(words))))


def request(model: str = "fast", text: str = "hello") -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])])


def stream_request(model: str = "fast", text: str = "hello") -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(model=model,
                                    messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])])


# -- reading results -----------------------------------------------------------------------


def attempts(messages) -> list[tuple[str, str, Code, str]]:
    by_number = {c.value[0]: c for c in Code}
    return [(a.provider, a.model, by_number[a.code], a.message) for a in messages]


def failure_of(error: grpc.aio.AioRpcError) -> pb.CallFailure:
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries no details"
    failures = [d for d in status.details if d.Is(pb.CallFailure.DESCRIPTOR)]
    assert len(failures) == 1
    failure = pb.CallFailure()
    failures[0].Unpack(failure)
    return failure


async def complete_fails(client, req: pb.CompleteRequest, timeout: float = 10) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(req, timeout=timeout)
    return caught.value


async def read_stream(call) -> tuple[list[str], list[pb.StreamSummary]]:
    texts, summaries = [], []
    async for message in call:
        if message.HasField("delta"):
            texts.append(message.delta.text)
        else:
            summaries.append(message.summary)
    return texts, summaries


async def stream_fails(client, req: pb.StreamCompleteRequest, timeout: float = 10):
    """The texts the caller saw before the stream ended with an error, and the error."""
    texts: list[str] = []
    call = client.stub.StreamComplete(req, timeout=timeout)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            assert not message.HasField("summary"), "a failed stream must not carry a summary"
            texts.append(message.delta.text)
    return texts, caught.value


async def until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def auth_keys(server: FakeUpstream) -> list[str]:
    """Which test key each request carried, by its env name."""
    by_value = {f"Bearer {v}": k for k, v in KEYS.items()}
    return [by_value[r.headers["Authorization"]] for r in server.received]


# -- fallback ------------------------------------------------------------------------------

# Each fault on the first target, the attempt it leaves, and why the next tier is tried.
RETRYABLE_FAULTS = {
    "503": (Reply(status=503, body={"error": {"message": "overloaded"}}),
            Code.UNAVAILABLE, "a: upstream returned HTTP 503: overloaded"),
    "500-html": (html_error_page(500),
                 Code.UNAVAILABLE,
                 "a: upstream returned HTTP 500: the body is not JSON (an HTML error page or a proxy's answer)"),
    "502-html": (html_error_page(502),
                 Code.UNAVAILABLE,
                 "a: upstream returned HTTP 502: the body is not JSON (an HTML error page or a proxy's answer)"),
    "429": (Reply(status=429, body={"error": {"message": "slow down"}}),
            Code.RESOURCE_EXHAUSTED, "a: upstream returned HTTP 429: slow down"),
    "reset": (Reply(fault="reset"), Code.UNAVAILABLE, "a: upstream closed the connection"),
    "malformed": (Reply(fault="malformed"), Code.UNAVAILABLE, "a: upstream answered with a body that is not JSON"),
    "attempt-timeout": (Reply(fault="stall"), Code.DEADLINE_EXCEEDED, "a: upstream did not answer within 0.3s"),
    "slow-first-byte": (Reply(body=answer("too late"), delay_s=30), Code.DEADLINE_EXCEEDED,
                        "a: upstream did not answer within 0.3s"),
}


@pytest.mark.parametrize("fault", list(RETRYABLE_FAULTS))
async def test_unary_falls_back_to_the_next_priority_on_a_retryable_failure(start_client, ups, fault):
    a, b, _ = ups
    reply, code, message = RETRYABLE_FAULTS[fault]
    client = await gateway(start_client, ups, a={"timeout_s": 0.3})
    a.reply(reply)
    b.reply(ok("from b"))

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "b"
    assert response.choices[0].message.parts[0].text == "from b"
    assert response.route == "fast"
    assert attempts(response.attempts) == [
        ("a", "model-a", code, message),
        ("b", "model-b", Code.OK, ""),
    ]
    assert response.attempts[1].duration.ToNanoseconds() > 0
    assert (len(a.received), len(b.received)) == (1, 1)
    assert a.received[0].json()["model"] == "model-a"
    assert b.received[0].json()["model"] == "model-b"


async def test_unary_falls_back_when_the_first_provider_refuses_connections(start_client, ups):
    _, b, c = ups
    refused = RefusedPort()
    try:
        client = await gateway(start_client, [refused, b, c])
        b.reply(ok("from b"))

        response = await client.stub.Complete(request(), timeout=10)
    finally:
        refused.close()

    assert response.provider == "b"
    assert attempts(response.attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: cannot connect to upstream"),
        ("b", "model-b", Code.OK, ""),
    ]


async def test_unary_falls_back_when_the_first_provider_speaks_no_http(start_client, ups):
    _, b, c = ups
    not_http = await NotHttp().start()
    try:
        client = await gateway(start_client, [not_http, b, c])
        b.reply(ok("from b"))

        response = await client.stub.Complete(request(), timeout=10)
    finally:
        await not_http.stop()

    assert response.provider == "b"
    assert attempts(response.attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream answered with malformed HTTP/1.1"),
        ("b", "model-b", Code.OK, ""),
    ]


# A caller's mistake or an operator's: no other target will do better.
FINAL_FAULTS = {
    "400": (400, Code.INVALID_ARGUMENT, "a: upstream returned HTTP 400: bad request body"),
    "401": (401, Code.FAILED_PRECONDITION, "a: provider rejected the gateway's credentials (HTTP 401)"),
    "403": (403, Code.FAILED_PRECONDITION, "a: provider rejected the gateway's credentials (HTTP 403)"),
    "404": (404, Code.NOT_FOUND, "a: upstream returned HTTP 404: bad request body"),
}


@pytest.mark.parametrize("fault", list(FINAL_FAULTS))
async def test_no_fallback_and_no_retry_on_a_final_failure(start_client, ups, fault):
    a, b, _ = ups
    status, code, message = FINAL_FAULTS[fault]
    client = await gateway(start_client, ups, routing={"max_retries": 3})
    a.reply(Reply(status=status, body={"error": {"message": "bad request body"}}))
    b.default = ok()

    error = await complete_fails(client, request())

    assert error.code() == code
    assert error.details() == message
    assert (len(a.received), len(b.received)) == (1, 0)
    failure = failure_of(error)
    assert failure.route == "fast"
    assert attempts(failure.attempts) == [("a", "model-a", code, message)]


async def test_when_every_target_fails_the_last_error_is_returned_with_every_attempt(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups)
    a.reply(Reply(status=503, body={"error": {"message": "a is down"}}))
    b.reply(Reply(status=502, body={"error": {"message": "b is down"}}))

    error = await complete_fails(client, request())

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "b: upstream returned HTTP 502: b is down"
    assert attempts(failure_of(error).attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: a is down"),
        ("b", "model-b", Code.UNAVAILABLE, "b: upstream returned HTTP 502: b is down"),
    ]


async def test_a_tier_is_exhausted_before_the_next_priority_is_tried(start_client, ups):
    a, b, c = ups
    routes = {"fast": [target("a"), target("b"), target("c", priority=2)]}
    client = await gateway(start_client, ups, routes)
    a.reply(Reply(status=503, body={"error": {"message": "a is down"}}))
    b.reply(Reply(status=503, body={"error": {"message": "b is down"}}))
    c.reply(ok("from c"))

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "c"
    tried = attempts(response.attempts)
    # The first tier in either order (weighted random), then the fallback.
    assert sorted(tried[:2]) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: a is down"),
        ("b", "model-b", Code.UNAVAILABLE, "b: upstream returned HTTP 503: b is down"),
    ]
    assert tried[2] == ("c", "model-c", Code.OK, "")


async def test_a_direct_provider_model_is_a_route_of_one_target(start_client, ups):
    a, _, _ = ups
    client = await gateway(start_client, ups)
    a.reply(ok())

    response = await client.stub.Complete(request("a/some-model"), timeout=10)

    assert response.route == "a/some-model"
    assert attempts(response.attempts) == [("a", "some-model", Code.OK, "")]
    assert a.received[0].json()["model"] == "some-model"


# -- weights -------------------------------------------------------------------------------


def test_attempt_order_follows_weights_within_a_tier_and_tiers_in_priority_order():
    route = Route("fast", (Target("a", "m", weight=3), Target("b", "m", weight=1), Target("c", "m", priority=2)))
    rng = random.Random(20240601)

    orders = [route.attempt_order(rng) for _ in range(10_000)]

    assert all(o[2].provider == "c" for o in orders)
    firsts = Counter(o[0].provider for o in orders)
    # Expected 7500 a-first; the binomial standard deviation is about 43.
    assert 7300 <= firsts["a"] <= 7700, firsts
    assert firsts["a"] + firsts["b"] == 10_000


async def test_weights_share_traffic_over_200_calls(start_client, ups):
    a, b, c = ups
    routes = {"fast": [target("a", weight=3), target("b", weight=1), target("c", priority=2)]}
    client = await gateway(start_client, ups, routes)
    for server in ups:
        server.default = ok()

    for _ in range(4):
        responses = await asyncio.gather(*(client.stub.Complete(request(), timeout=10) for _ in range(50)))
        assert all(len(r.attempts) == 1 for r in responses)

    # 150 expected on a; five standard deviations (about 6.1 each) either side.
    assert 120 <= len(a.received) <= 180, (len(a.received), len(b.received))
    assert len(a.received) + len(b.received) == 200
    assert len(c.received) == 0


# -- retries -------------------------------------------------------------------------------


async def test_retries_the_same_target_before_falling_back(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 2})
    a.reply(Reply(status=503, body={"error": {"message": "busy"}}),
            Reply(status=500, body={"error": {"message": "oops"}}),
            ok("third time"))
    b.default = ok()

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "a"
    assert attempts(response.attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: busy"),
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 500: oops"),
        ("a", "model-a", Code.OK, ""),
    ]
    assert (len(a.received), len(b.received)) == (3, 0)


async def test_retries_exhausted_move_on_to_the_next_target(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 1})
    a.default = Reply(status=503, body={"error": {"message": "busy"}})
    b.reply(ok())

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "b"
    assert [x[0] for x in attempts(response.attempts)] == ["a", "a", "b"]
    assert (len(a.received), len(b.received)) == (2, 1)


async def test_retry_waits_out_retry_after(start_client, ups):
    """With one key, a retry sooner than Retry-After would find the key cooling down and skip
    the target; that a answers its second request shows the wait covered the Retry-After."""
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 1})
    a.reply(Reply(status=429, body={"error": {"message": "rate limited"}}, headers={"Retry-After": "0.3"}), ok())
    b.default = ok()

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "a"
    assert attempts(response.attempts) == [
        ("a", "model-a", Code.RESOURCE_EXHAUSTED, "a: upstream returned HTTP 429: rate limited"),
        ("a", "model-a", Code.OK, ""),
    ]
    assert (len(a.received), len(b.received)) == (2, 0)


async def test_retry_after_longer_than_the_deadline_goes_straight_to_the_next_target(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 3})
    a.default = Reply(status=429, body={"error": {"message": "come back later"}}, headers={"Retry-After": "60"})
    b.reply(ok())

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "b"
    assert attempts(response.attempts) == [
        ("a", "model-a", Code.RESOURCE_EXHAUSTED, "a: upstream returned HTTP 429: come back later"),
        ("b", "model-b", Code.OK, ""),
    ]
    assert (len(a.received), len(b.received)) == (1, 1)


async def test_retry_after_on_one_key_does_not_hold_back_the_other_key(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 1}, a={"keys": ("A_KEY_1", "A_KEY_2")})
    a.reply(Reply(status=429, body={"error": {"message": "key limit"}}, headers={"Retry-After": "60"}), ok())
    b.default = ok()

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "a"
    assert (len(a.received), len(b.received)) == (2, 0)
    assert auth_keys(a) == ["A_KEY_1", "A_KEY_2"]


# -- keys ----------------------------------------------------------------------------------


async def test_requests_spread_over_a_providers_keys(start_client, ups):
    a, _, _ = ups
    client = await gateway(start_client, ups, a={"keys": ("A_KEY_1", "A_KEY_2")})
    a.default = ok()

    for _ in range(6):
        await client.stub.Complete(request("a/m"), timeout=10)

    assert auth_keys(a) == ["A_KEY_1", "A_KEY_2"] * 3


@pytest.mark.parametrize("retry_after", ["60", None], ids=["retry-after", "configured-cooldown"])
async def test_a_key_that_got_429_cools_down_and_the_other_key_serves(start_client, ups, retry_after):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"key_cooldown_s": 60}, a={"keys": ("A_KEY_1", "A_KEY_2")})
    headers = {"Retry-After": retry_after} if retry_after else {}
    a.reply(Reply(status=429, body={"error": {"message": "key limit"}}, headers=headers))
    a.default = ok()
    b.default = ok()

    first = await client.stub.Complete(request(), timeout=10)
    later = [await client.stub.Complete(request(), timeout=10) for _ in range(4)]

    assert first.provider == "b"  # no retries configured: the 429 moved the call on
    assert all(r.provider == "a" for r in later)
    assert auth_keys(a) == ["A_KEY_1"] + ["A_KEY_2"] * 4


async def test_a_provider_whose_every_key_cools_down_is_skipped_without_a_request(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups)
    a.reply(Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "60"}))
    b.default = ok()

    await client.stub.Complete(request(), timeout=10)
    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "b"
    assert len(a.received) == 1
    assert attempts(response.attempts) == [
        ("a", "model-a", Code.RESOURCE_EXHAUSTED, "skipped: every key is cooling down after 429"),
        ("b", "model-b", Code.OK, ""),
    ]


# -- the deadline budget -------------------------------------------------------------------


async def test_the_configured_default_deadline_covers_every_attempt(start_client, ups):
    a, b, _ = ups
    # a's own limit is generous; the budget for a call without a deadline is not.
    client = await gateway(start_client, ups, routing={"default_deadline_s": 0.5}, a={"timeout_s": 60})
    a.reply(Reply(fault="stall"))
    b.default = ok()

    error = await complete_fails(client, request(), timeout=None)

    assert error.code() == Code.DEADLINE_EXCEEDED
    assert re.fullmatch(r"a: upstream did not answer within 0\.\d+s \(all that was left of the call's deadline\)",
                        error.details()), error.details()
    assert (len(a.received), len(b.received)) == (1, 0)
    assert attempts(failure_of(error).attempts) == [("a", "model-a", Code.DEADLINE_EXCEEDED, error.details())]
    await asyncio.wait_for(a.disconnected.wait(), WAIT_S)


async def test_the_callers_deadline_covers_every_attempt(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 5}, a={"timeout_s": 60})
    a.default = Reply(status=503, body={"error": {"message": "busy"}}, delay_s=0.2)
    b.default = Reply(status=503, body={"error": {"message": "busy too"}}, delay_s=0.2)

    error = await complete_fails(client, request(), timeout=0.5)

    assert error.code() == Code.DEADLINE_EXCEEDED
    # The gateway saw the budget spent (between attempts or during one), or the gRPC runtime's
    # own deadline fired first: all three are the caller's deadline, named as such.
    details = error.details()
    assert (details in ("fast: the deadline was spent before another attempt could start", "Deadline Exceeded")
            or re.fullmatch(r"[ab]: upstream did not answer within 0\.\d+s \(all that was left of the call's "
                            r"deadline\)", details)), details
    # Six attempts on a and six on b were allowed; the budget let only a few start.
    assert len(a.received) + len(b.received) <= 3


async def test_no_attempt_starts_with_less_than_min_attempt_s_left(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"default_deadline_s": 1.0, "min_attempt_s": 0.6})
    # a fails after 0.5 s: 0.5 s are left, less than an attempt needs.
    a.reply(Reply(status=503, body={"error": {"message": "busy"}}, delay_s=0.5))
    b.default = ok()

    error = await complete_fails(client, request(), timeout=None)

    assert error.code() == Code.DEADLINE_EXCEEDED
    assert error.details() == "fast: the deadline was spent before another attempt could start"
    assert (len(a.received), len(b.received)) == (1, 0)
    assert attempts(failure_of(error).attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: busy"),
    ]


async def test_an_attempts_timeout_is_its_own_when_that_is_shorter_than_the_budget(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, a={"timeout_s": 0.3})
    a.reply(Reply(fault="stall"))
    b.reply(ok())

    response = await client.stub.Complete(request(), timeout=30)

    assert response.provider == "b"
    assert attempts(response.attempts)[0] == (
        "a", "model-a", Code.DEADLINE_EXCEEDED, "a: upstream did not answer within 0.3s")
    await asyncio.wait_for(a.disconnected.wait(), WAIT_S)


# -- stream timeouts -----------------------------------------------------------------------


async def test_stream_connect_timeout_is_configurable_and_falls_back(start_client, ups):
    _, b, c = ups
    hole = BlackHole()
    try:
        client = await gateway(start_client, [hole, b, c], a={"connect_timeout_s": 0.3})
        b.reply(ok_stream())

        texts, summaries = await read_stream(client.stub.StreamComplete(stream_request(), timeout=10))
        # Straight to a, with nowhere to fall back to: the connect timeout is the answer.
        _, error = await stream_fails(client, stream_request("a/m"))
    finally:
        hole.close()

    assert texts == ["one ", "two"]
    assert attempts(summaries[0].attempts) == [
        ("a", "model-a", Code.DEADLINE_EXCEEDED, "a: upstream did not accept a connection within 0.3s"),
        ("b", "model-b", Code.OK, ""),
    ]
    assert error.code() == Code.DEADLINE_EXCEEDED
    assert error.details() == "a: upstream did not accept a connection within 0.3s"


async def test_stream_first_byte_timeout_is_configurable_and_falls_back(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, a={"first_byte_timeout_s": 0.3})
    a.reply(Reply(events=sse_events(stream_chunks(["late"])), delay_s=30))
    b.reply(ok_stream())

    texts, summaries = await read_stream(client.stub.StreamComplete(stream_request(), timeout=10))

    assert texts == ["one ", "two"]
    assert attempts(summaries[0].attempts) == [
        ("a", "model-a", Code.DEADLINE_EXCEEDED, "a: upstream sent nothing within 0.3s"),
        ("b", "model-b", Code.OK, ""),
    ]
    await asyncio.wait_for(a.disconnected.wait(), WAIT_S)


def first_delta_then(fault: str, **extra: Any) -> Reply:
    """A stream whose first event already carries text for the caller, then the fault."""
    events = sse_events([chunk("one ", role="assistant"), chunk("two")], done=False)
    return Reply(events=events[:1] if fault == "stall" else events, fault=fault, **extra)


def nothing_for_the_caller_then(fault: str) -> Reply:
    """A stream that sends only a role chunk (no text reaches the caller), then the fault."""
    return Reply(events=sse_events([chunk(role="assistant", content="")], done=False), fault=fault)


async def test_stream_idle_timeout_is_configurable_and_ends_a_started_stream(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, a={"idle_timeout_s": 0.3})
    a.reply(first_delta_then("stall"))
    b.default = ok_stream()

    texts, error = await stream_fails(client, stream_request())

    assert texts == ["one "]
    assert error.code() == Code.DEADLINE_EXCEEDED
    assert error.details() == "a: upstream stalled for 0.3s mid-stream"
    failure = failure_of(error)
    assert attempts(failure.attempts) == [
        ("a", "model-a", Code.DEADLINE_EXCEEDED, "a: upstream stalled for 0.3s mid-stream"),
    ]
    assert failure.usage.estimated
    assert failure.usage.output.total > 0
    assert (len(a.received), len(b.received)) == (1, 0)
    await asyncio.wait_for(a.disconnected.wait(), WAIT_S)


async def test_a_healthy_long_stream_outlives_every_per_attempt_limit(start_client, ups):
    a, _, _ = ups
    limits = {"idle_timeout_s": 0.5, "first_byte_timeout_s": 0.5, "timeout_s": 0.5, "connect_timeout_s": 0.5}
    client = await gateway(start_client, ups, a=limits)
    words = [f"w{i} " for i in range(50)]
    # 54 gaps of 0.02 s: longer in total than any limit, never idle for long.
    a.reply(Reply(events=sse_events(stream_chunks(words)), event_delay_s=0.02))

    call = client.stub.StreamComplete(stream_request("a/m"), timeout=30)
    texts, summaries = await read_stream(call)

    assert await call.code() == Code.OK
    assert texts == words
    assert len(summaries) == 1
    assert summaries[0].usage.output.total == len(words)
    assert attempts(summaries[0].attempts) == [("a", "m", Code.OK, "")]


async def test_an_upstream_504_is_its_own_timeout_and_falls_back(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups)
    a.reply(Reply(status=504, body={"error": {"message": "upstream timed out"}}))
    b.reply(ok())

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "b"
    assert attempts(response.attempts)[0] == (
        "a", "model-a", Code.DEADLINE_EXCEEDED, "a: upstream returned HTTP 504: upstream timed out")


# -- streams: fallback only before the first delta -----------------------------------------

STREAM_FAULTS_BEFORE_OUTPUT = {
    "503": (Reply(status=503, body={"error": {"message": "overloaded"}}),
            Code.UNAVAILABLE, "a: upstream returned HTTP 503: overloaded"),
    "429": (Reply(status=429, body={"error": {"message": "slow down"}}),
            Code.RESOURCE_EXHAUSTED, "a: upstream returned HTTP 429: slow down"),
    "html": (html_error_page(502), Code.UNAVAILABLE,
             "a: upstream returned HTTP 502: the body is not JSON (an HTML error page or a proxy's answer)"),
    "reset": (Reply(fault="reset"), Code.UNAVAILABLE, "a: upstream closed the connection"),
    "malformed-event": (Reply(events=[], fault="malformed"), Code.UNAVAILABLE,
                        "a: upstream answered with a stream event that is not JSON"),
    "cut-before-text": (nothing_for_the_caller_then("cut"), Code.UNAVAILABLE, "a: upstream closed the connection"),
    "stall-before-text": (nothing_for_the_caller_then("stall"), Code.DEADLINE_EXCEEDED,
                          "a: upstream stalled for 0.3s mid-stream"),
}


@pytest.mark.parametrize("fault", list(STREAM_FAULTS_BEFORE_OUTPUT))
async def test_a_stream_falls_back_while_nothing_reached_the_caller(start_client, ups, fault):
    a, b, _ = ups
    reply, code, message = STREAM_FAULTS_BEFORE_OUTPUT[fault]
    client = await gateway(start_client, ups, a={"idle_timeout_s": 0.3})
    a.reply(reply)
    b.reply(ok_stream(["from ", "b"]))

    call = client.stub.StreamComplete(stream_request(), timeout=10)
    texts, summaries = await read_stream(call)

    assert await call.code() == Code.OK
    assert texts == ["from ", "b"]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.provider == "b"
    assert summary.route == "fast"
    assert attempts(summary.attempts) == [("a", "model-a", code, message), ("b", "model-b", Code.OK, "")]
    assert not summary.usage.estimated
    assert (len(a.received), len(b.received)) == (1, 1)


@pytest.mark.parametrize("fault, code, message", [
    ("cut", Code.UNAVAILABLE, "a: upstream closed the connection"),
    ("stall", Code.DEADLINE_EXCEEDED, "a: upstream stalled for 0.3s mid-stream"),
])
async def test_after_the_first_delta_an_upstream_failure_ends_the_stream(start_client, ups, fault, code, message):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 2}, a={"idle_timeout_s": 0.3})
    a.reply(first_delta_then(fault))
    a.default = ok_stream()
    b.default = ok_stream()

    texts, error = await stream_fails(client, stream_request())

    assert texts[0] == "one "
    assert error.code() == code
    assert error.details() == message
    failure = failure_of(error)
    assert failure.route == "fast"
    # One upstream attempt, recorded once, with its outcome.
    assert attempts(failure.attempts) == [("a", "model-a", code, message)]
    # The usage seen so far rides along, marked as Tollway's estimate.
    assert failure.usage.estimated
    assert failure.usage.output.total >= 1
    assert failure.usage.input.total >= 1
    # Neither a retry nor a fallback: the caller already has part of an answer.
    assert (len(a.received), len(b.received)) == (1, 0)


async def test_a_stream_summary_lists_every_attempt_and_the_route(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 1})
    a.default = Reply(status=503, body={"error": {"message": "down"}})
    b.reply(ok_stream())

    texts, summaries = await read_stream(client.stub.StreamComplete(stream_request(), timeout=10))

    assert texts == ["one ", "two"]
    assert summaries[0].route == "fast"
    assert attempts(summaries[0].attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: down"),
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: down"),
        ("b", "model-b", Code.OK, ""),
    ]
    assert all(x.duration.ToNanoseconds() > 0 for x in summaries[0].attempts)


async def test_a_stream_whose_every_target_fails_before_output_reports_the_last_error(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups)
    a.reply(Reply(status=503, body={"error": {"message": "a down"}}))
    b.reply(Reply(fault="reset"))

    texts, error = await stream_fails(client, stream_request())

    assert texts == []
    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "b: upstream closed the connection"
    failure = failure_of(error)
    assert attempts(failure.attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: a down"),
        ("b", "model-b", Code.UNAVAILABLE, "b: upstream closed the connection"),
    ]
    assert not failure.HasField("usage")


# -- circuit breakers ----------------------------------------------------------------------


def breaker_routing(consecutive: int = 3, cooldown_s: float = 60.0) -> dict[str, Any]:
    # The error-rate rule is out of the way here (tests/unit/test_breaker.py covers it).
    return {"breaker": {"consecutive_failures": consecutive, "cooldown_s": cooldown_s, "min_calls": 1000}}


async def test_a_breaker_opens_after_consecutive_failures_and_the_target_is_skipped(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing=breaker_routing(consecutive=3))
    a.default = Reply(status=503, body={"error": {"message": "down"}})
    b.default = ok()

    for _ in range(3):
        assert (await client.stub.Complete(request(), timeout=10)).provider == "b"
    assert len(a.received) == 3
    skipped = [await client.stub.Complete(request(), timeout=10) for _ in range(5)]

    # No network call to an open target: a saw nothing more.
    assert len(a.received) == 3
    assert len(b.received) == 8
    for response in skipped:
        assert attempts(response.attempts) == [
            ("a", "model-a", Code.UNAVAILABLE, "skipped: circuit breaker open"),
            ("b", "model-b", Code.OK, ""),
        ]
        assert not response.attempts[0].HasField("duration")


async def test_caller_errors_and_rate_limits_do_not_open_a_breaker(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing=breaker_routing(consecutive=2))
    # Retry-After 0: the key does not cool down, so only the breaker could keep a out.
    rate_limited = Reply(status=429, body={"error": {"message": "slow"}}, headers={"Retry-After": "0"})
    refused = Reply(status=400, body={"error": {"message": "bad"}})
    a.reply(refused, rate_limited, refused, rate_limited)
    a.default = ok()
    b.default = ok()

    outcomes = []
    for _ in range(4):
        try:
            outcomes.append((await client.stub.Complete(request(), timeout=10)).provider)
        except grpc.aio.AioRpcError as err:
            outcomes.append((err.code(), err.details()))
    response = await client.stub.Complete(request(), timeout=10)

    assert outcomes == [(Code.INVALID_ARGUMENT, "a: upstream returned HTTP 400: bad"), "b"] * 2
    assert response.provider == "a"
    assert attempts(response.attempts) == [("a", "model-a", Code.OK, "")]
    assert len(a.received) == 5


async def test_a_single_open_target_fails_fast_without_a_network_call(start_client, ups):
    a, _, _ = ups
    client = await gateway(start_client, ups, routing=breaker_routing(consecutive=2))
    a.default = Reply(status=503, body={"error": {"message": "down"}})

    for _ in range(2):
        first = await complete_fails(client, request("a/m"))
        assert first.details() == "a: upstream returned HTTP 503: down"
    error = await complete_fails(client, request("a/m"))

    assert len(a.received) == 2
    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "a/m: no target could be tried (a/m: skipped: circuit breaker open)"


async def test_a_half_open_breaker_lets_one_probe_through_and_closes_on_success(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing=breaker_routing(consecutive=2, cooldown_s=0.3))
    a.reply(*[Reply(status=503, body={"error": {"message": "down"}})] * 2)
    b.default = ok()
    for _ in range(2):
        await client.stub.Complete(request(), timeout=10)
    open_response = await client.stub.Complete(request(), timeout=10)
    assert attempts(open_response.attempts)[0][3] == "skipped: circuit breaker open"
    assert len(a.received) == 2

    await asyncio.sleep(0.4)  # past the cooldown: the breaker half-opens on the next call
    # The probe is slow, so the other calls arrive while it is in flight.
    a.reply(Reply(body=answer("probe"), delay_s=1.0))
    a.default = ok()
    during = await asyncio.gather(*(client.stub.Complete(request(), timeout=10) for _ in range(4)))

    assert len(a.received) == 3  # exactly one probe went out
    providers = sorted(r.provider for r in during)
    assert providers == ["a", "b", "b", "b"]
    for response in during:
        if response.provider == "b":
            assert attempts(response.attempts)[0] == ("a", "model-a", Code.UNAVAILABLE,
                                                      "skipped: circuit breaker open")
    # The probe succeeded: closed again, a serves every call.
    after = [await client.stub.Complete(request(), timeout=10) for _ in range(3)]
    assert [r.provider for r in after] == ["a"] * 3
    assert len(a.received) == 6


async def test_a_failed_probe_opens_the_breaker_again(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing=breaker_routing(consecutive=2, cooldown_s=0.3))
    a.default = Reply(status=503, body={"error": {"message": "still down"}})
    b.default = ok()
    for _ in range(2):
        await client.stub.Complete(request(), timeout=10)

    await asyncio.sleep(0.4)
    probe = await client.stub.Complete(request(), timeout=10)
    after = await client.stub.Complete(request(), timeout=10)

    assert attempts(probe.attempts)[0] == ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: still down")
    assert attempts(after.attempts)[0] == ("a", "model-a", Code.UNAVAILABLE, "skipped: circuit breaker open")
    assert len(a.received) == 3


async def test_breakers_are_per_key(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing=breaker_routing(consecutive=1),
                           a={"keys": ("A_KEY_1", "A_KEY_2")})
    a.reply(Reply(status=503, body={"error": {"message": "key 1 upstream down"}}))
    a.default = ok()
    b.default = ok()

    first = await client.stub.Complete(request(), timeout=10)
    later = [await client.stub.Complete(request(), timeout=10) for _ in range(3)]

    assert first.provider == "b"
    assert [r.provider for r in later] == ["a"] * 3
    assert auth_keys(a) == ["A_KEY_1", "A_KEY_2", "A_KEY_2", "A_KEY_2"]


# -- cancel --------------------------------------------------------------------------------


async def test_caller_cancel_closes_the_attempt_in_flight_and_starts_no_other(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 3})
    a.default = Reply(fault="stall")
    b.default = ok()

    call = client.stub.Complete(request(), timeout=30)
    await until(lambda: len(a.received) == 1)
    call.cancel()

    await asyncio.wait_for(a.disconnected.wait(), WAIT_S)
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (await call.code(), await call.details()) == (Code.CANCELLED, "Locally cancelled by application!")
    # Give a wrongly surviving router time to start a retry or a fallback, then count.
    await asyncio.sleep(0.3)
    assert (len(a.received), len(b.received)) == (1, 0)
    assert a.disconnects == 1


async def test_caller_cancel_during_a_backoff_starts_no_other_attempt(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 3})
    a.reply(Reply(status=429, body={"error": {"message": "wait"}}, headers={"Retry-After": "2"}))
    a.default = ok()
    b.default = ok()

    call = client.stub.Complete(request(), timeout=30)
    await until(lambda: len(a.received) == 1)
    await asyncio.sleep(0.2)  # the router is now waiting out the Retry-After
    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    assert (await call.code(), await call.details()) == (Code.CANCELLED, "Locally cancelled by application!")
    await asyncio.sleep(2.3)  # past the Retry-After: a surviving retry would have gone out by now
    assert (len(a.received), len(b.received)) == (1, 0)


async def test_caller_cancel_of_a_stream_before_output_starts_no_fallback(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, a={"first_byte_timeout_s": 60})
    a.default = Reply(events=sse_events(stream_chunks(["late"])), delay_s=60)
    b.default = ok_stream()

    call = client.stub.StreamComplete(stream_request(), timeout=30)
    await until(lambda: len(a.received) == 1)
    call.cancel()

    await asyncio.wait_for(a.disconnected.wait(), WAIT_S)
    assert (await call.code(), await call.details()) == (Code.CANCELLED, "Locally cancelled by application!")
    await asyncio.sleep(0.3)
    assert (len(a.received), len(b.received)) == (1, 0)


# -- ListModels and what a route accepts ---------------------------------------------------


def mixed_config(ups) -> dict[str, Any]:
    """A route over MixRouter (takes audio) and an Anthropic-kind provider (no audio)."""
    a, b, _ = ups
    return {
        "providers": {
            "a": provider(a, "A_KEY_1"),
            "claude": {"kind": "anthropic", "base_url": b.base_url, "api_key_envs": ["B_KEY"]},
            "nokey": {"kind": "mixrouter", "base_url": f"{a.base_url}/v1", "api_key_envs": ["UNSET_KEY"]},
        },
        "routes": [
            {"name": "mixed", "targets": [target("a", weight=2), {"provider": "claude", "model": "claude-x",
                                                                   "priority": 2}]},
            {"name": "with-unusable", "targets": [target("a"), target("nokey", priority=2)]},
        ],
        "routing": QUICK,
    }


async def test_list_models_lists_routes_with_the_intersection_of_their_targets_modalities(start_client, ups):
    client = await start_client(mixed_config(ups), KEYS)

    response = await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    routes = {r.name: r for r in response.routes}
    assert list(routes) == ["mixed", "with-unusable"]
    mixed = routes["mixed"]
    assert [(t.provider, t.model, t.weight, t.priority, t.usable) for t in mixed.targets] == [
        ("a", "model-a", 2, 1, True),
        ("claude", "claude-x", 1, 2, True),
    ]
    assert list(mixed.input_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_DOCUMENT]
    assert "audio/wav" not in mixed.mime_types
    assert {"image/png", "application/pdf"} <= set(mixed.mime_types)
    # An unusable target (no key) does not narrow what the route accepts; it is marked.
    unusable = routes["with-unusable"]
    assert [(t.provider, t.usable) for t in unusable.targets] == [("a", True), ("nokey", False)]
    assert pb.MODALITY_AUDIO in unusable.input_modalities


async def test_a_route_refuses_media_one_of_its_targets_cannot_take_before_any_request(start_client, ups):
    a, b, _ = ups
    client = await start_client(mixed_config(ups), KEYS)
    req = request("mixed")
    req.messages[0].parts.append(pb.Part(audio=pb.Media(data=b"RIFF\x00\x00\x00\x00WAVEfmt ", mime_type="audio/wav")))

    error = await complete_fails(client, req)

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details().startswith('messages[0].parts[1].audio: route "mixed" ')
    assert (len(a.received), len(b.received)) == (0, 0)


async def test_an_unusable_target_is_skipped_and_named(start_client, ups):
    a, _, _ = ups
    client = await start_client(mixed_config(ups), KEYS)
    a.reply(Reply(status=503, body={"error": {"message": "down"}}))

    error = await complete_fails(client, request("with-unusable"))

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "a: upstream returned HTTP 503: down"
    assert attempts(failure_of(error).attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: down"),
        ("nokey", "model-nokey", Code.FAILED_PRECONDITION,
         "skipped: provider is configured but has no API key (set UNSET_KEY)"),
    ]


async def test_a_half_open_probe_is_not_stranded_when_the_budget_ends_before_the_attempt(start_client, ups):
    """A call that reaches a half-open target with too little budget left must not take the
    probe and then never send it: the next call must still be able to probe."""
    a, b, _ = ups
    routes = {"slow-first": [target("b"), target("a", priority=2)]}
    routing = {**breaker_routing(consecutive=2, cooldown_s=0.3), "default_deadline_s": 1.0, "min_attempt_s": 0.6}
    client = await gateway(start_client, ups, routes, routing)
    a.reply(*[Reply(status=503, body={"error": {"message": "down"}})] * 2)
    for _ in range(2):
        await complete_fails(client, request("a/model-a"), timeout=None)
    await asyncio.sleep(0.4)  # a's breaker half-opens on the next call
    # b fails after 0.5 s: 0.5 s are left when the call reaches a, too little to start.
    b.reply(Reply(status=503, body={"error": {"message": "b down"}}, delay_s=0.5))

    spent = await complete_fails(client, request("slow-first"), timeout=None)
    a.reply(ok("probe"))
    probe = await client.stub.Complete(request("a/model-a"), timeout=10)

    assert spent.code() == Code.DEADLINE_EXCEEDED
    assert spent.details() == "slow-first: the deadline was spent before another attempt could start"
    assert probe.provider == "a"
    assert attempts(probe.attempts) == [("a", "model-a", Code.OK, "")]
    assert len(a.received) == 3


# -- route config --------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"routes": {"name": "x"}}, "routes must be an array of tables ([[routes]])"),
    ({"routes": [{"name": "a/b", "targets": [target("a")]}]},
     "routes[0].name must be a name without '/' (letters, digits, . _ : -)"),
    ({"routes": [{"name": "x", "targets": [target("a")]}, {"name": "x", "targets": [target("a")]}]},
     "routes[1]: route 'x' is defined twice"),
    ({"routes": [{"name": "x", "targets": []}]}, "routes[0].targets must be a non-empty array"),
    ({"routes": [{"name": "x", "targets": [{"provider": "a"}]}]}, "routes[0].targets[0] needs provider and model strings"),
    ({"routes": [{"name": "x", "targets": [target("a", weight=0)]}]}, "routes[0].targets[0].weight must be an integer >= 1"),
    ({"routes": [{"name": "x", "targets": [target("a", priority=1.5)]}]},
     "routes[0].targets[0].priority must be an integer >= 1"),
    ({"routes": [{"name": "x", "targets": [target("a", region="eu")]}]}, "unknown key(s) in routes[0].targets[0]: region"),
    ({"routing": {"max_retries": -1}}, "routing.max_retries must be a number >= 0"),
    ({"routing": {"retries": 2}}, "unknown key(s) in routing: retries (did you mean max_retries?)"),
    ({"routing": {"breaker": {"cooldown": 1}}}, "unknown key(s) in routing.breaker: cooldown (did you mean cooldown_s?)"),
    ({"routing": {"breaker": {"cooldown_s": "soon"}}}, "routing.breaker.cooldown_s must be a number >= 0"),
])
def test_a_bad_route_or_routing_table_is_refused_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)

    assert str(caught.value) == message


async def test_a_route_naming_an_unconfigured_provider_is_refused_at_start(start_client, ups):
    with pytest.raises(ConfigError) as caught:
        await gateway(start_client, ups, {"fast": [target("a"), target("nobody")]})

    assert str(caught.value) == "route 'fast': provider 'nobody' is not configured"


async def test_a_503_retry_after_longer_than_the_deadline_goes_straight_to_the_next_target(start_client, ups):
    a, b, _ = ups
    client = await gateway(start_client, ups, routing={"max_retries": 3})
    a.default = Reply(status=503, body={"error": {"message": "overloaded"}}, headers={"Retry-After": "60"})
    b.reply(ok())

    response = await client.stub.Complete(request(), timeout=10)

    assert response.provider == "b"
    assert attempts(response.attempts) == [
        ("a", "model-a", Code.UNAVAILABLE, "a: upstream returned HTTP 503: overloaded"),
        ("b", "model-b", Code.OK, ""),
    ]
    assert (len(a.received), len(b.received)) == (1, 1)


async def test_a_failure_of_many_attempts_still_fits_the_trailers(start_client, ups):
    """Forty targets, each tried twice, each answering 503 with a long message: the CallFailure
    detail is cut to fit, so the caller still gets the status and its request id (not gRPC's
    RESOURCE_EXHAUSTED for oversized trailers)."""
    many = {"wide": [target("a", weight=1) | {"model": f"model-{i}"} for i in range(40)]}
    client = await gateway(start_client, ups, routes=many, routing={"max_retries": 1})
    ups[0].default = Reply(status=503, body={"error": {"message": "overloaded " + "x" * 700}})

    error = await complete_fails(client, request("wide"), timeout=30)

    assert error.code() == Code.UNAVAILABLE
    assert error.details().startswith("a: upstream returned HTTP 503: overloaded xxx")
    assert any(key == "tollway-request-id" for key, _ in error.trailing_metadata())
    failure = failure_of(error)
    assert failure.ByteSize() <= 6 * 1024
    assert 2 <= len(failure.attempts) < 80
    assert failure.attempts[0].message.endswith(f"({80 - len(failure.attempts)} later attempts left out of this "
                                                "detail)")
