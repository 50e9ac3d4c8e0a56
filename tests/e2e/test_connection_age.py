"""server.max_connection_age_s: a connection past its age is sent GOAWAY, so a client that
balances over a headless Service's addresses resolves the name again and finds new pods;
calls in flight on the old connection run to their end."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.support.answers import ok, request, stream_chunks, stream_request
from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config
from tests.support.upstream import Reply, sse_events
from tollway.service.config.loader import ConfigError, parse_config
from tollway.service.gateway.server import connection_age_options
from tollway.v1 import completion_pb2_grpc as pb_grpc

# Bounds for waits that normally take a fraction of a second.
WAIT_S = 20.0
MODEL = "mixrouter/m"


async def gateway(start_client, upstream, age_s: float):
    config = mixrouter_config(upstream)
    config["server"] = {"max_connection_age_s": age_s}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def left_ready(channel: grpc.aio.Channel) -> grpc.ChannelConnectivity:
    await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), WAIT_S)
    return channel.get_state()


async def test_a_connection_past_its_age_is_told_to_go(start_client, upstream):
    client = await gateway(start_client, upstream, 0.2)
    upstream.default = ok("first")
    async with grpc.aio.insecure_channel(client.target) as channel:
        stub = pb_grpc.CompletionStub(channel)  # type: ignore[no-untyped-call]
        assert (await stub.Complete(request(MODEL), timeout=WAIT_S)).choices[0].message.parts[0].text == "first"
        assert channel.get_state() == grpc.ChannelConnectivity.READY

        assert await left_ready(channel) != grpc.ChannelConnectivity.READY

        # The client connects again (resolving the name again) and carries on.
        upstream.default = ok("second")
        assert (await stub.Complete(request(MODEL), timeout=WAIT_S)).choices[0].message.parts[0].text == "second"


async def test_a_stream_on_an_aged_connection_runs_to_its_end(start_client, upstream):
    client = await gateway(start_client, upstream, 0.2)
    words = ["slow ", "but ", "whole"]
    # Paced well past the age: the GOAWAY comes while the stream is still open.
    upstream.reply(Reply(events=sse_events(stream_chunks(words)), event_delay_s=1.0))
    async with grpc.aio.insecure_channel(client.target) as channel:
        stub = pb_grpc.CompletionStub(channel)  # type: ignore[no-untyped-call]
        call = stub.StreamComplete(stream_request(MODEL), timeout=WAIT_S)
        first = await asyncio.wait_for(call.read(), WAIT_S)

        await left_ready(channel)
        assert not call.done()

        messages = [first]
        while (message := await asyncio.wait_for(call.read(), WAIT_S)) is not grpc.aio.EOF:
            messages.append(message)
        assert await call.code() == grpc.StatusCode.OK
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "".join(words)
    assert messages[-1].summary.usage.output.total == len(words)


def test_the_age_becomes_grpcs_option_in_milliseconds_and_zero_sets_none():
    assert connection_age_options(0) == []
    assert connection_age_options(300) == [("grpc.max_connection_age_ms", 300_000)]
    assert connection_age_options(0.0001) == [("grpc.max_connection_age_ms", 1)]
    assert parse_config({}).server.max_connection_age_s == 0


@pytest.mark.parametrize("value", [-1, "300", True, float("nan"), float("inf"), 2_000_001])
def test_an_age_that_is_no_duration_is_refused_by_name(value):
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"max_connection_age_s": value}})
    assert str(caught.value) == "server.max_connection_age_s must be a number from 0 (never) to 2000000 (seconds)"
