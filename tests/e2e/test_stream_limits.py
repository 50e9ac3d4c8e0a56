"""Streams and callers that stop reading: a message the caller does not take within
server.stream_send_timeout_s ends the stream, closes the upstream connection and is recorded
with the output forwarded so far; and concurrent streams are bounded per caller and per provider."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from tollway.service.config.loader import ConfigError, parse_config

from tests.support.answers import chunk, ok, request, stream_chunks, stream_request
from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.ledger_calls import REQUEST_ID_KEY, auth, sha, until_records
from tests.support.upstream import Reply, sse_events

Code = grpc.StatusCode
SEND_TIMEOUT_S = 0.5
STALLED = (f"the caller read nothing for {SEND_TIMEOUT_S:.3g}s while a message waited "
           f"(server.stream_send_timeout_s = {SEND_TIMEOUT_S:.3g}): the stream was ended; read a stream as it arrives")
# Far more than HTTP/2 flow-control windows hold: a caller that stops reading blocks the sends.
FLOOD = [f"{i:06d}" + "x" * 65530 for i in range(400)]


async def gateway(start_client, upstream, server: dict[str, Any] | None = None, **provider: Any):
    config = {"server": {"stream_send_timeout_s": SEND_TIMEOUT_S, **(server or {})},
              "providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1", **provider}},
              "routing": {"max_retries": 0}}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def test_a_caller_that_stops_reading_has_its_stream_ended(start_client, upstream):
    client = await gateway(start_client, upstream)
    upstream.reply(Reply(events=sse_events(stream_chunks(FLOOD))))

    call = client.stub.StreamComplete(stream_request("mixrouter/m"), timeout=60)
    first = await call.read()
    assert first.delta.text == FLOOD[0]
    # The caller reads nothing more: within the limit the gateway ends the stream and drops
    # the upstream connection.
    await asyncio.wait_for(upstream.disconnected.wait(), 10)

    # Reading again, the caller gets what was already on its way, then the status.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, "the stream ended OK"
            assert message.WhichOneof("event") == "delta"
    error = caught.value
    assert (error.code(), error.details()) == (Code.RESOURCE_EXHAUSTED, STALLED)
    assert dict(error.trailing_metadata())[REQUEST_ID_KEY]
    [record] = await until_records(client, 1)
    assert record.status == "RESOURCE_EXHAUSTED"
    assert record.estimated and record.output.total > 0


async def test_callers_that_stop_reading_do_not_keep_the_pool_from_others(start_client, upstream):
    """As reported: streams that read one message and stop took every connection of the pool,
    and every other call failed with DEADLINE_EXCEEDED."""
    client = await gateway(start_client, upstream, server={"max_upstream_connections": 2})
    upstream.responder = lambda received: (Reply(events=sse_events(stream_chunks(FLOOD)))
                                           if received.json().get("stream") else ok("served"))
    stopped = [client.stub.StreamComplete(stream_request("mixrouter/m"), timeout=60) for _ in range(2)]
    for call in stopped:
        assert (await call.read()).delta.text == FLOOD[0]

    response = await client.stub.Complete(request("mixrouter/m"), timeout=20)

    assert response.choices[0].message.parts[0].text == "served"
    for call in stopped:
        call.cancel()


async def test_a_caller_that_reads_slowly_within_the_limit_gets_everything(start_client, upstream):
    client = await gateway(start_client, upstream)
    words = FLOOD[:60]
    upstream.reply(Reply(events=sse_events(stream_chunks(words))))

    texts = []
    summary = None
    async for message in client.stub.StreamComplete(stream_request("mixrouter/m"), timeout=60):
        if message.HasField("summary"):
            summary = message.summary
        else:
            texts.append(message.delta.text)
            if len(texts) % 20 == 0:
                await asyncio.sleep(SEND_TIMEOUT_S / 5)

    assert "".join(texts) == "".join(words)
    assert summary is not None and summary.usage.output.total == len(words)


@pytest.mark.parametrize("value", [0, -1, "30s", True])
def test_stream_send_timeout_s_must_be_positive(value):
    with pytest.raises(ConfigError, match=r"^server.stream_send_timeout_s must be a number > 0 \(seconds\)$"):
        parse_config({"server": {"stream_send_timeout_s": value}})


# -- concurrent streams per caller and per provider ----------------------------------------------

KEY_A, KEY_B = "tw-test-caller-a-0001", "tw-test-caller-b-0001"


def stalled() -> Reply:
    """A stream that sends one delta, then nothing: it stays open until its caller leaves."""
    return Reply(events=sse_events([chunk("held ")], done=False), fault="stall")


async def open_stream(client, key: str | None = None):
    """A stream that has delivered its first message (so it is open end to end)."""
    call = client.stub.StreamComplete(stream_request("mixrouter/m"), timeout=60,
                                      metadata=auth(key) if key else None)
    assert (await call.read()).delta.text == "held "
    return call


async def refused_stream(client, key: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.stub.StreamComplete(stream_request("mixrouter/m"), timeout=10,
                                                  metadata=auth(key) if key else None):
            pass
    return caught.value


async def until(predicate, timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


def with_callers(max_streams_a: int | None = None) -> dict[str, Any]:
    team_a: dict[str, Any] = {"key_sha256": sha(KEY_A)}
    if max_streams_a is not None:
        team_a["max_streams"] = max_streams_a
    return {"team-a": team_a, "team-b": {"key_sha256": sha(KEY_B)}}


async def caller_gateway(start_client, upstream, routing: dict[str, Any], callers: dict[str, Any]):
    config = {"providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1"}},
              "routing": {"max_retries": 0, **routing}, "callers": callers}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def test_a_caller_at_its_stream_limit_is_refused_and_others_are_not(start_client, upstream):
    client = await caller_gateway(start_client, upstream, {"max_streams_per_caller": 2}, with_callers())
    upstream.default = stalled()
    held = [await open_stream(client, KEY_A) for _ in range(2)]

    error = await refused_stream(client, KEY_A)

    assert (error.code(), error.details()) == (
        Code.RESOURCE_EXHAUSTED,
        'caller "team-a" has 2 streams open (limit routing.max_streams_per_caller = 2): '
        "close one before opening another")
    assert len(upstream.received) == 2  # the refused stream never reached the provider
    other = await open_stream(client, KEY_B)
    # A stream closed frees its slot.
    held[0].cancel()
    await until(lambda: upstream.disconnects == 1 and client.gateway.runtime.caller_streams.count("team-a") == 1)
    again = await open_stream(client, KEY_A)
    for call in (held[1], other, again):
        call.cancel()


async def test_a_callers_own_max_streams_wins(start_client, upstream):
    client = await caller_gateway(start_client, upstream, {"max_streams_per_caller": 5}, with_callers(1))
    upstream.default = stalled()
    held = await open_stream(client, KEY_A)

    error = await refused_stream(client, KEY_A)

    assert (error.code(), error.details()) == (
        Code.RESOURCE_EXHAUSTED,
        'caller "team-a" has 1 stream open (limit callers.team-a.max_streams = 1): close one before opening another')
    held.cancel()


async def test_a_provider_at_its_stream_limit_refuses_more_streams_but_not_unary_calls(start_client, upstream):
    client = await gateway(start_client, upstream, max_concurrent_streams=2)
    upstream.responder = lambda received: stalled() if received.json().get("stream") else ok()
    held = [await open_stream(client) for _ in range(2)]

    error = await refused_stream(client)

    assert (error.code(), error.details()) == (
        Code.RESOURCE_EXHAUSTED,
        'mixrouter/m: provider "mixrouter" has 2 streams open (limit providers.mixrouter.max_concurrent_streams = 2)')
    assert len(upstream.received) == 2
    assert (await client.stub.Complete(request("mixrouter/m"), timeout=10)).provider == "mixrouter"
    held[0].cancel()
    await until(lambda: upstream.disconnects == 1 and client.gateway.runtime.router.open_streams.count("mixrouter") == 1)
    again = await open_stream(client)
    for call in (held[1], again):
        call.cancel()


async def test_by_default_a_provider_takes_as_many_streams_as_upstream_connections(start_client, upstream):
    client = await gateway(start_client, upstream, server={"max_upstream_connections": 1})
    upstream.default = stalled()
    held = await open_stream(client)

    error = await refused_stream(client)

    assert (error.code(), error.details()) == (
        Code.RESOURCE_EXHAUSTED,
        'mixrouter/m: provider "mixrouter" has 1 stream open (limit server.max_upstream_connections = 1)')
    held.cancel()


@pytest.mark.parametrize(("config", "message"), [
    ({"routing": {"max_streams_per_caller": 0}}, "routing.max_streams_per_caller must be an integer >= 1"),
    ({"routing": {"max_streams_per_caller": 2.5}}, "routing.max_streams_per_caller must be an integer >= 1"),
    ({"providers": {"mixrouter": {"max_concurrent_streams": 0}}},
     "providers.mixrouter.max_concurrent_streams must be an integer >= 1"),
    ({"callers": {"team-a": {"key_sha256": "0" * 64, "max_streams": "many"}}},
     "callers.team-a.max_streams must be an integer >= 1"),
])
def test_stream_limits_are_validated(config, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert str(caught.value) == message
