"""Rate limits: Retry-After believed within limits, cool-downs per (provider, model, key),
and a caller told RESOURCE_EXHAUSTED with when to come back when every key is cooling."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import pytest

from tests.support.answers import ok, ok_stream, request, retry_delay, stream_request
from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.upstream import Reply

Code = grpc.StatusCode
KINDS = ["unary", "stream"]


def rate_limited(retry_after: str) -> Reply:
    return Reply(status=429, body={"error": {"message": "rate limit reached"}}, headers={"Retry-After": retry_after})


async def gateway(start_client, upstream, **routing: Any):
    config = {"providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1"}},
              "routing": {"max_retries": 0, **routing}}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def call(client, kind: str, model: str) -> str:
    """One call; the provider it was served by."""
    if kind == "unary":
        return (await client.stub.Complete(request(model), timeout=10)).provider
    async for message in client.stub.StreamComplete(stream_request(model), timeout=10):
        if message.HasField("summary"):
            return message.summary.provider
    raise AssertionError("the stream ended without a summary")


async def failing(client, kind: str, model: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(client, kind, model)
    return caught.value


def answers(kind: str) -> Reply:
    return ok() if kind == "unary" else ok_stream()


# -- item 5: Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_huge_retry_after_is_capped_by_max_retry_after_s(start_client, upstream, kind):
    """retry-after: 99999999999 once cooled the key for ~3,000 years."""
    client = await gateway(start_client, upstream, max_retry_after_s=0.3)
    upstream.reply(rate_limited("99999999999"))
    upstream.default = answers(kind)

    error = await failing(client, kind, "mixrouter/m")

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details() == "mixrouter: upstream returned HTTP 429: rate limit reached"
    assert retry_delay(error) == pytest.approx(0.3)
    await asyncio.sleep(0.4)  # past the capped cool-down
    assert await call(client, kind, "mixrouter/m") == "mixrouter"
    assert len(upstream.received) == 2


async def test_the_default_cap_is_five_minutes(start_client, upstream):
    client = await gateway(start_client, upstream)
    upstream.reply(rate_limited("99999999999"))

    error = await failing(client, "unary", "mixrouter/m")

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details() == "mixrouter: upstream returned HTTP 429: rate limit reached"
    assert retry_delay(error) == 300


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("header", ["1e400", "nan", "-3"])
async def test_a_retry_after_that_is_no_figure_is_ignored(start_client, upstream, kind, header):
    """1e400 once raised OverflowError: UNKNOWN for the caller, the key cooling forever. Now the
    key cools for routing.key_cooldown_s, as after a 429 without Retry-After."""
    client = await gateway(start_client, upstream, key_cooldown_s=0.2)
    upstream.reply(rate_limited(header))
    upstream.default = answers(kind)

    error = await failing(client, kind, "mixrouter/m")

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details() == "mixrouter: upstream returned HTTP 429: rate limit reached"
    assert retry_delay(error) is None
    await asyncio.sleep(0.3)
    assert await call(client, kind, "mixrouter/m") == "mixrouter"


async def test_the_backoff_wait_is_capped_too(start_client, upstream):
    """With a retry left, the router waits out Retry-After, but never longer than the cap."""
    client = await gateway(start_client, upstream, max_retries=1, max_retry_after_s=0.05)
    upstream.reply(rate_limited("99999999999"), ok("second"))

    response = await client.stub.Complete(request("mixrouter/m"), timeout=10)

    assert response.choices[0].message.parts[0].text == "second"
    assert [(a.code, a.message) for a in response.attempts] == [
        (Code.RESOURCE_EXHAUSTED.value[0], "mixrouter: upstream returned HTTP 429: rate limit reached"),
        (Code.OK.value[0], ""),
    ]


# -- item 9: cool-downs per model, and what the caller is told ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_429_on_one_model_leaves_the_keys_other_models_alone(start_client, upstream, kind):
    client = await gateway(start_client, upstream)
    upstream.reply(rate_limited("7"))
    upstream.default = answers(kind)

    await failing(client, kind, "mixrouter/model-x")
    served_by = await call(client, kind, "mixrouter/model-y")

    assert served_by == "mixrouter"
    assert [r.json()["model"] for r in upstream.received] == ["model-x", "model-y"]


@pytest.mark.parametrize("kind", KINDS)
async def test_every_key_cooling_is_resource_exhausted_with_when_to_retry(start_client, upstream, kind):
    client = await gateway(start_client, upstream)
    upstream.reply(rate_limited("7"))
    upstream.default = answers(kind)

    await failing(client, kind, "mixrouter/model-x")
    error = await failing(client, kind, "mixrouter/model-x")

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert re.fullmatch(r"mixrouter/model-x: rate limited: every key is cooling down after HTTP 429 from the "
                        r"provider; the first is free again in [0-9.]+s, retry then", error.details()), error.details()
    delay = retry_delay(error)
    assert delay is not None and 5 < delay <= 7
    assert len(upstream.received) == 1  # the cooling key was not tried
