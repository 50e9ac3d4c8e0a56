"""Request logs: one line per request, plain or JSON, and never a key.

Logging is configured the way `tollway serve` configures it (tollway.service.gateway.logs.configure_logging),
with the handler's stream pointed at a buffer the test reads.
"""

from __future__ import annotations

import logging
import re
import shlex

import grpc
import orjson
import pytest
from tollway.service.gateway.logs import REQUEST_LOGGER
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.upstream import Reply, sse_events

Code = grpc.StatusCode
MODEL = "mixrouter/gemini-2.0-flash"
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def seed_request(cls=pb.CompleteRequest):
    return cls(
        model=MODEL,
        messages=[pb.Message(role=pb.ROLE_USER, parts=[
            pb.Part(text="请分析下面附件的内容"),
            pb.Part(image=pb.Media(url="https://s2.loli.net/2024/02/01/QSWVdw9bX56gj7O.jpg")),
        ])],
        max_tokens=2000,
    )


STREAM_CHUNKS = [
    {"id": "chatcmpl-log", "object": "chat.completion.chunk", "created": 1766735400, "model": "gemini-2.0-flash",
     "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
    {"id": "chatcmpl-log", "object": "chat.completion.chunk", "created": 1766735400, "model": "gemini-2.0-flash",
     "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}},
]


async def run_mixed_calls(client, upstream) -> dict[str, str]:
    """A unary success, a stream success, an upstream failure and a refusal; returns the
    request id each call reported, by name."""
    ids = {}
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    call = client.stub.Complete(seed_request(), timeout=10)
    await call
    ids["unary"] = dict(await call.trailing_metadata())["tollway-request-id"]

    upstream.reply(Reply(events=sse_events(STREAM_CHUNKS)))
    stream = client.stub.StreamComplete(seed_request(pb.StreamCompleteRequest), timeout=10)
    async for _ in stream:
        pass
    assert await stream.code() == Code.OK
    ids["stream"] = dict(await stream.trailing_metadata())["tollway-request-id"]

    upstream.reply(Reply(status=503, body={"error": {"message": "no available channel"}}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(seed_request(), timeout=10)
    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "mixrouter: upstream returned HTTP 503: no available channel"
    ids["upstream_error"] = dict(caught.value.trailing_metadata())["tollway-request-id"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(pb.CompleteRequest(model=MODEL), timeout=10)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == "messages: at least one message is required"
    ids["refused"] = dict(caught.value.trailing_metadata())["tollway-request-id"]
    return ids


def check_request_lines(lines: list[dict], ids: dict[str, str]) -> None:
    """The four calls of run_mixed_calls, one line each, in order, with every field."""
    assert [line["request_id"] for line in lines] == [ids["unary"], ids["stream"], ids["upstream_error"],
                                                      ids["refused"]]
    for line in lines:
        assert REQUEST_ID.match(line["request_id"])
        assert line["model"] == MODEL
        assert float(line["latency_ms"]) >= 0
    unary, stream, upstream_error, refused = lines
    assert (unary["rpc"], unary["provider"], unary["upstream_model"], unary["status"]) == (
        "Complete", "mixrouter", "gemini-2.0-flash", "OK")
    # The seed's normalized usage: input 1986, output 83.
    assert (int(unary["input_tokens"]), int(unary["output_tokens"])) == (1986, 83)
    assert (stream["rpc"], stream["provider"], stream["status"]) == ("StreamComplete", "mixrouter", "OK")
    assert (int(stream["input_tokens"]), int(stream["output_tokens"])) == (40, 2)
    assert (upstream_error["provider"], upstream_error["status"]) == ("mixrouter", "UNAVAILABLE")
    assert upstream_error["error"] == "mixrouter: upstream returned HTTP 503: no available channel"
    assert refused["status"] == "INVALID_ARGUMENT"
    assert refused["error"] == "messages: at least one message is required"
    # A refusal before any provider was chosen names none and counts no tokens.
    assert refused.get("provider") in (None, "")
    assert refused.get("input_tokens") is None


async def test_json_request_lines(client, upstream, log_buffer):
    buffer = log_buffer("json")

    ids = await run_mixed_calls(client, upstream)

    records = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
    lines = [r for r in records if r["logger"] == REQUEST_LOGGER]
    assert all(r["msg"] == "request" and r["level"] == "info" for r in lines)
    check_request_lines(lines, ids)


def parse_plain(line: str) -> dict[str, str]:
    """`<date> <time> INFO tollway.request request k=v k="v w" ...` -> {k: v}."""
    head, _, tail = line.partition(f" INFO {REQUEST_LOGGER} request ")
    assert tail, line
    return dict(token.split("=", 1) for token in shlex.split(tail))


async def test_plain_request_lines(client, upstream, log_buffer):
    buffer = log_buffer("plain")

    ids = await run_mixed_calls(client, upstream)

    lines = [parse_plain(line) for line in buffer.getvalue().splitlines() if f" {REQUEST_LOGGER} " in line]
    check_request_lines(lines, ids)


def key_echo(message: str) -> dict:
    return {"error": {"message": message, "type": "authentication_error"}}


KEY_LEAK_UNARY = [
    Reply(status=401, body=key_echo(f"Incorrect API key provided: {MIXROUTER_TEST_KEY}")),
    Reply(status=403, body=key_echo(f"key {MIXROUTER_TEST_KEY} may not use this model")),
    Reply(status=400, body=key_echo(f"bad request from {MIXROUTER_TEST_KEY}")),
    Reply(status=429, body=key_echo(f"quota of {MIXROUTER_TEST_KEY} exhausted"), headers={"Retry-After": "3"}),
    Reply(status=500, body=f"<html>internal error for Bearer {MIXROUTER_TEST_KEY}</html>",
          headers={"content-type": "text/html"}),
    Reply(status=200, body=key_echo(f"channel error for {MIXROUTER_TEST_KEY}")),
    Reply(fault="reset"),
    Reply(fault="stall"),
]
KEY_LEAK_STREAMS = [
    Reply(status=401, body=key_echo(f"Incorrect API key provided: {MIXROUTER_TEST_KEY}")),
    Reply(events=[orjson.dumps(key_echo(f"stream failed for {MIXROUTER_TEST_KEY}")).decode()]),
    Reply(events=sse_events(STREAM_CHUNKS, done=False), fault="cut"),
]


@pytest.mark.parametrize("fmt", ["plain", "json"])
async def test_no_log_line_or_error_carries_the_key(start_client, upstream, log_buffer, fmt):
    # Everything, debug lines included, is scanned.
    buffer = log_buffer(fmt, logging.DEBUG)
    errors: list[str] = []

    async def fresh_client():
        # A gateway per failure, so no breaker or key cool-down state spares a later call its upstream trip.
        return await start_client(mixrouter_config(upstream, timeout_s=0.5), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})

    client = await fresh_client()
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    await client.stub.Complete(seed_request(), timeout=10)
    upstream.reply(Reply(events=sse_events(STREAM_CHUNKS)))
    async for _ in client.stub.StreamComplete(seed_request(pb.StreamCompleteRequest), timeout=10):
        pass

    # Failures in which the upstream quotes the key in every place it can.
    for reply in KEY_LEAK_UNARY:
        upstream.reply(reply)
        client = await fresh_client()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.Complete(seed_request(), timeout=10)
        errors.append(caught.value.details())
        errors.append(str(caught.value.trailing_metadata()))
    for reply in KEY_LEAK_STREAMS:
        upstream.reply(reply)
        client = await fresh_client()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in client.stub.StreamComplete(seed_request(pb.StreamCompleteRequest), timeout=10):
                pass
        errors.append(caught.value.details())
        errors.append(str(caught.value.trailing_metadata()))

    # Every call sent the key upstream; none of it came back out.
    calls = 2 + len(KEY_LEAK_UNARY) + len(KEY_LEAK_STREAMS)
    assert len(upstream.received) == calls
    assert all(r.headers["Authorization"] == f"Bearer {MIXROUTER_TEST_KEY}" for r in upstream.received)
    captured = buffer.getvalue()
    request_lines = [line for line in captured.splitlines() if REQUEST_LOGGER in line]
    assert len(request_lines) == calls
    for text in [captured, *errors]:
        assert MIXROUTER_TEST_KEY not in text
        # Not even a recognisable fragment of it.
        assert MIXROUTER_TEST_KEY[8:24] not in text
