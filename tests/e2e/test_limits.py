"""Request size and shape limits, and calls at once (issue 10, item 8): each refusal names the
[limits] key and its value, and comes before the caller is authenticated, anything is logged
with the request's fields, or anything reaches the upstream or the ledger."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tollway.service.config.loader import ConfigError, parse_config
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.upstream import Reply

Code = grpc.StatusCode
GUARD_S = 20
MIB = 1024 * 1024


def request(text: str = "hello", model: str = "mixrouter/gpt-4o", labels: dict[str, str] | None = None):
    return pb.CompleteRequest(model=model, labels=labels or {},
                              messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])])


async def start(start_client, upstream, limits: dict | None = None, **extra):
    config = {**mixrouter_config(upstream), **extra}
    if limits is not None:
        config["limits"] = limits
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def refused(client, message: pb.CompleteRequest, rpc: str = "unary", metadata=()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if rpc == "unary":
            await client.stub.Complete(message, timeout=10, metadata=metadata)
        else:
            streamed = pb.StreamCompleteRequest(model=message.model, labels=message.labels, messages=message.messages)
            async for _ in client.stub.StreamComplete(streamed, timeout=10, metadata=metadata):
                pass
    return err.value


@pytest.mark.parametrize("rpc", ["unary", "stream"])
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": "mixrouter/" + "m" * 247}, "model: is 257 characters; the limit is 256 (limits.max_model_chars)"),
    ({"labels": {f"k{n}": "v" for n in range(65)}}, "labels: 65 labels; the limit is 64 (limits.max_labels)"),
    ({"labels": {"team-" + "k" * 60: "v"}},
     "labels: key 'team-kkkkkkkkkkkkkkkkkkkkkkkkkkk...' is 65 characters; the limit is 64 "
     "(limits.max_label_key_chars)"),
    ({"labels": {"team": "v" * 257}},
     "labels['team']: is 257 characters; the limit is 256 (limits.max_label_value_chars)"),
])
async def test_default_limits_on_model_and_labels(start_client, upstream, kwargs, message, rpc):
    client = await start(start_client, upstream)
    error = await refused(client, request(**kwargs), rpc)
    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == message
    assert upstream.received == []


async def test_values_at_the_limits_are_accepted_and_recorded(start_client, upstream):
    client = await start(start_client, upstream)
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    labels = {f"k{n:02d}" + "k" * 59: "v" * 256 for n in range(64)}
    answer = await client.stub.Complete(request(labels=labels), timeout=10)
    assert answer.choices


async def test_a_5_mb_model_name_is_refused_even_without_a_caller_key(start_client, upstream):
    """Unauthenticated calls are logged too: the name is refused before anything uses it."""
    client = await start(start_client, upstream, callers={"ops": {"key_sha256": "0" * 64}})
    error = await refused(client, request(model="m" * (5 * MIB)))
    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == f"model: is {5 * MIB} characters; the limit is 256 (limits.max_model_chars)"
    assert upstream.received == []


async def test_the_whole_request_counts_text_included(start_client, upstream):
    client = await start(start_client, upstream, {"max_request_bytes": 4096})
    message = request(text="t" * 5000)
    error = await refused(client, message)
    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == (f"request: is {message.ByteSize()} bytes serialized; the limit is 4096 "
                               "(limits.max_request_bytes)")
    assert upstream.received == []


async def test_text_has_a_limit_of_its_own(start_client, upstream):
    client = await start(start_client, upstream, {"max_text_bytes": 4096})
    message = request(text="t" * 5000)
    error = await refused(client, message)
    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == (f"messages: text parts total {message.messages[0].parts[0].ByteSize()} bytes; "
                               "the limit is 4096 (limits.max_text_bytes)")
    assert upstream.received == []


async def test_far_over_the_size_limit_grpc_refuses_it_unread(start_client, upstream):
    """gRPC's receive limit is limits.max_request_bytes plus 1 MiB: beyond it, gRPC's own refusal."""
    client = await start(start_client, upstream, {"max_request_bytes": 4096})
    message = request(text="t" * (2 * MIB))
    error = await refused(client, message)
    assert error.code() == Code.RESOURCE_EXHAUSTED
    # gRPC's message gives the figures but no key: the README names limits.max_request_bytes for it.
    assert error.details() == f"SERVER: Received message larger than max ({message.ByteSize()} vs. {4096 + MIB})"
    assert upstream.received == []


async def test_calls_over_max_concurrent_rpcs_are_resource_exhausted(start_client, upstream):
    client = await start(start_client, upstream, {"max_concurrent_rpcs": 2})
    upstream.reply(Reply(fault="stall"), Reply(fault="stall"))
    held = [asyncio.create_task(_complete(client)) for _ in range(2)]
    try:
        async with asyncio.timeout(GUARD_S):
            while upstream.active < 2:
                await asyncio.sleep(0.01)
        error = await refused(client, request())
        assert error.code() == Code.RESOURCE_EXHAUSTED
        assert error.details() == ("the gateway is serving its limit of 2 calls at once "
                                   "(limits.max_concurrent_rpcs); retry with backoff")
        assert len(dict(error.trailing_metadata())["tollway-request-id"]) == 32
        stream_error = await refused(client, request(), "stream")
        assert stream_error.code() == Code.RESOURCE_EXHAUSTED
        assert len(upstream.received) == 2
    finally:
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    # The slots come back when the calls end: a later call is served.
    upstream.default = Reply(body=fixture_json("mixrouter/seed_response.json"))
    async with asyncio.timeout(GUARD_S):
        while True:
            try:
                answer = await client.stub.Complete(request(), timeout=10)
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() == Code.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.05)
    assert answer.choices


async def _complete(client):
    return await client.stub.Complete(request(), timeout=60)


@pytest.mark.parametrize(("table", "message"), [
    ({"max_labels": 0}, "limits.max_labels must be an integer >= 1"),
    ({"max_model_chars": "256"}, "limits.max_model_chars must be an integer >= 1"),
    ({"max_concurrent_rpcs": True}, "limits.max_concurrent_rpcs must be an integer >= 1"),
    ({"max_request_bytes": 100}, "limits.max_request_bytes must be at least 1024"),
    ({"max_label": 3}, "unknown key(s) in [limits]: max_label (did you mean max_labels?)"),
])
def test_limits_table_is_validated(table, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": table})
    assert str(err.value) == message


def test_defaults():
    limits = parse_config({}).limits
    assert (limits.max_request_bytes, limits.max_labels, limits.max_label_key_chars, limits.max_label_value_chars,
            limits.max_model_chars, limits.max_concurrent_rpcs) == (64 * MIB, 64, 64, 256, 256, 1000)
    assert limits.max_text_bytes == 16 * MIB
