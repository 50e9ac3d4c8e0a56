"""Streams and callers that stop reading: a message the caller does not take within
server.stream_send_timeout_s ends the stream, closes the upstream connection and is recorded
with the output forwarded so far; and concurrent streams are bounded per caller and per provider."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from tollway.service.config.loader import ConfigError, parse_config
from tollway.v1 import completion_pb2 as pb

from tests.support.answers import stream_chunks, stream_request
from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.ledger_calls import REQUEST_ID_KEY, until_records
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
