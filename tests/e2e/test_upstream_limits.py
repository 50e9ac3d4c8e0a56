"""Upstream answers are read within limits: a unary body (server.max_upstream_body_bytes), a
stream line or event (server.max_upstream_event_bytes), an error body (64 KiB), each counted
as it arrives, decoded; and the ledger records what the caller actually got."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import grpc
import orjson
import pytest
from tollway.service.config.loader import ConfigError, parse_config

from tests.support.answers import answer, chunk, request, stream_request
from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.ledger_calls import only_record
from tests.support.upstream import Reply, sse_events

Code = grpc.StatusCode
LIMIT = 65536
BODY_LIMIT = f"mixrouter: upstream body exceeds server.max_upstream_body_bytes ({LIMIT} bytes)"
EVENT_LIMIT = f"mixrouter: upstream stream event exceeds server.max_upstream_event_bytes ({LIMIT} bytes)"


async def gateway(start_client, upstream, **server: Any):
    config = {"server": {"max_upstream_body_bytes": LIMIT, "max_upstream_event_bytes": LIMIT, **server},
              "providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1"}},
              "routing": {"max_retries": 0}}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def failing_unary(client) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request("mixrouter/m"), timeout=10)
    return caught.value


async def failing_stream(client) -> tuple[list[str], grpc.aio.AioRpcError]:
    """The texts delivered before the stream failed, and its error."""
    texts: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in client.stub.StreamComplete(stream_request("mixrouter/m"), timeout=10):
            texts.append(message.delta.text)
    return texts, caught.value


def big_answer(size: int) -> bytes:
    return orjson.dumps(answer("x" * size))


# -- unary bodies ------------------------------------------------------------------------------


async def test_a_body_whose_content_length_passes_the_limit_is_refused(start_client, upstream):
    client = await gateway(start_client, upstream)
    upstream.reply(Reply(body=big_answer(4 * LIMIT)))

    error = await failing_unary(client)

    assert (error.code(), error.details()) == (Code.UNAVAILABLE, BODY_LIMIT)
    record = await only_record(client)
    assert record.status == "UNAVAILABLE"


async def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(start_client, upstream):
    """No Content-Length: bytes are counted as they arrive and the connection is dropped."""
    client = await gateway(start_client, upstream)
    upstream.reply(Reply(body=big_answer(64 * 1024 * 1024), chunk_size=16384))

    error = await failing_unary(client)

    assert (error.code(), error.details()) == (Code.UNAVAILABLE, BODY_LIMIT)
    await asyncio.wait_for(upstream.disconnected.wait(), 10)  # the rest was never read


async def test_a_compressed_body_counts_as_it_unpacks(start_client, upstream):
    """A few KiB of gzip that unpack to 8 MiB pass any check of Content-Length alone."""
    client = await gateway(start_client, upstream)
    packed = gzip.compress(big_answer(8 * 1024 * 1024))
    assert len(packed) < LIMIT
    upstream.reply(Reply(body=packed, headers={"content-encoding": "gzip"}))

    error = await failing_unary(client)

    assert (error.code(), error.details()) == (Code.UNAVAILABLE, BODY_LIMIT)


async def test_a_body_within_the_limit_is_answered(start_client, upstream):
    client = await gateway(start_client, upstream)
    upstream.reply(Reply(body=big_answer(LIMIT // 2), chunk_size=4096))

    response = await client.stub.Complete(request("mixrouter/m"), timeout=10)

    assert response.choices[0].message.parts[0].text == "x" * (LIMIT // 2)


@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_an_error_body_is_read_no_further_than_64_kib(start_client, upstream, kind):
    client = await gateway(start_client, upstream)
    body = orjson.dumps({"error": {"message": "overloaded " + "x" * (64 * 1024 * 1024)}})
    upstream.reply(Reply(status=503, body=body, chunk_size=16384))

    if kind == "unary":
        error = await failing_unary(client)
    else:
        _, error = await failing_stream(client)

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == ERROR_TRUNCATED
    await asyncio.wait_for(upstream.disconnected.wait(), 10)  # the rest was never read


ERROR_TRUNCATED = "mixrouter: upstream returned HTTP 503: an error body of more than 65536 bytes (not read further)"


# -- stream lines and events -------------------------------------------------------------------


async def test_an_endless_stream_line_is_cut_off_at_the_limit(start_client, upstream):
    client = await gateway(start_client, upstream)
    first = sse_events([chunk("one ")], done=False)
    endless = b"data: " + b"x" * (4 * LIMIT)  # no line end, ever
    upstream.reply(Reply(events=[*first, endless]))

    texts, error = await failing_stream(client)

    assert texts == ["one "]
    assert (error.code(), error.details()) == (Code.UNAVAILABLE, EVENT_LIMIT)
    record = await only_record(client)
    assert record.status == "UNAVAILABLE"


async def test_an_event_of_many_short_lines_is_cut_off_at_the_limit(start_client, upstream):
    client = await gateway(start_client, upstream)
    upstream.reply(Reply(events=[b"data: 0123456789abcdef\n" * (LIMIT // 8)]))

    texts, error = await failing_stream(client)

    assert texts == []
    assert (error.code(), error.details()) == (Code.UNAVAILABLE, EVENT_LIMIT)


# -- what the caller got is what the ledger says ------------------------------------------------


async def test_an_answer_too_large_to_send_is_not_recorded_as_ok(start_client, upstream):
    """The answer fits the upstream limit but not the gateway's gRPC send limit: once the caller
    got RESOURCE_EXHAUSTED from gRPC while the ledger said OK; now both say the same, and the
    record keeps the usage the provider billed."""
    client = await gateway(start_client, upstream, max_upstream_body_bytes=128 * 1024 * 1024)
    limit = client.gateway.runtime.max_send_bytes
    upstream.reply(Reply(body=big_answer(limit + 1024)))

    error = await failing_unary(client)

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details().startswith("mixrouter: the answer is ")
    assert error.details().endswith(f" bytes, more than the gateway sends in one message ({limit} bytes): "
                                    "ask for less (max_tokens) or use StreamComplete")
    record = await only_record(client)
    assert record.status == "RESOURCE_EXHAUSTED"
    assert (record.input.total, record.output.total) == (3, 1)


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["max_upstream_body_bytes", "max_upstream_event_bytes"])
@pytest.mark.parametrize("value", [0, 1023, "32MiB", True])
def test_limits_are_integers_of_at_least_1024(key, value):
    with pytest.raises(ConfigError, match=rf"^server.{key} must be an integer >= 1024 \(bytes\)$"):
        parse_config({"server": {key: value}})


def test_defaults():
    server = parse_config({}).server
    assert (server.max_upstream_body_bytes, server.max_upstream_event_bytes) == (32 * 1024 * 1024, 8 * 1024 * 1024)
