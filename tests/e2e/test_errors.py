"""Every row of the HTTP -> gRPC error table, end to end, unary and streaming.

Each failure is produced by the loopback upstream (or by no upstream at all) and read by
a real gRPC client: the status code and the exact message are both asserted.
"""

from __future__ import annotations

import socket

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config
from tests.support.upstream import Reply

Code = grpc.StatusCode

CALL_KINDS = ["unary", "stream"]


def _fields() -> dict:
    return dict(
        model="mixrouter/gemini-2.0-flash",
        messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hello")])],
    )


async def failing_call(client, kind: str) -> grpc.aio.AioRpcError:
    """Run one call that must fail and return its error; a stream must not end OK."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind == "unary":
            await client.stub.Complete(pb.CompleteRequest(**_fields()), timeout=10)
        else:
            async for _ in client.stub.StreamComplete(pb.StreamCompleteRequest(**_fields()), timeout=10):
                pass
    return caught.value


def openai_error(message: str, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "code": None}}


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


# (HTTP status, provider message, expected gRPC code)
TABLE_ROWS = [
    (400, "messages: content is required", Code.INVALID_ARGUMENT),
    (404, "model gemini-2.0-flash does not exist", Code.NOT_FOUND),
    (408, "request timed out", Code.DEADLINE_EXCEEDED),
    (413, "request entity too large", Code.INVALID_ARGUMENT),
    (500, "internal server error", Code.UNAVAILABLE),
    (502, "bad gateway", Code.UNAVAILABLE),
    (503, "no available channel for model gemini-2.0-flash", Code.UNAVAILABLE),
    (504, "upstream timed out", Code.DEADLINE_EXCEEDED),
]


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize(("http_status", "provider_message", "code"), TABLE_ROWS, ids=[str(r[0]) for r in TABLE_ROWS])
async def test_http_status_maps_by_the_table(client, upstream, kind, http_status, provider_message, code):
    upstream.reply(Reply(status=http_status, body=openai_error(provider_message)))

    error = await failing_call(client, kind)

    assert error.code() == code
    assert error.details() == f"mixrouter: upstream returned HTTP {http_status}: {provider_message}"
    assert retry_info(error) is None
    assert len(upstream.received) == 1


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize("http_status", [401, 403])
async def test_rejected_credentials_never_echo_the_key(client, upstream, kind, http_status):
    # Providers like to quote the key they refused; none of it may reach the caller.
    upstream.reply(
        Reply(status=http_status, body=openai_error(f"Incorrect API key provided: {MIXROUTER_TEST_KEY}",
                                                    "authentication_error"))
    )

    error = await failing_call(client, kind)

    assert error.code() == Code.FAILED_PRECONDITION
    assert error.details() == f"mixrouter: provider rejected the gateway's credentials (HTTP {http_status})"
    assert MIXROUTER_TEST_KEY not in error.details()
    assert MIXROUTER_TEST_KEY not in str(error.trailing_metadata())


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_provider_message_quoting_the_key_is_scrubbed(client, upstream, kind):
    upstream.reply(Reply(status=400, body=openai_error(f"bad header Authorization: Bearer {MIXROUTER_TEST_KEY}")))

    error = await failing_call(client, kind)

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == "mixrouter: upstream returned HTTP 400: bad header Authorization: Bearer [redacted]"
    assert MIXROUTER_TEST_KEY not in error.details()


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize(("retry_after", "seconds", "nanos"), [("7", 7, 0), ("1.5", 1, 500_000_000)])
async def test_429_with_retry_after_carries_retry_info(client, upstream, kind, retry_after, seconds, nanos):
    upstream.reply(Reply(status=429, body=openai_error("rate limit reached", "rate_limit_error"),
                         headers={"Retry-After": retry_after}))

    error = await failing_call(client, kind)

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details() == "mixrouter: upstream returned HTTP 429: rate limit reached"
    info = retry_info(error)
    assert info is not None
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (seconds, nanos)


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_429_without_retry_after_has_no_retry_info(client, upstream, kind):
    upstream.reply(Reply(status=429, body=openai_error("quota exceeded", "insufficient_quota")))

    error = await failing_call(client, kind)

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details() == "mixrouter: upstream returned HTTP 429: quota exceeded"
    assert retry_info(error) is None


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_html_error_page_is_unavailable(client, upstream, kind):
    page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
    upstream.reply(Reply(status=502, body=page, headers={"content-type": "text/html"}))

    error = await failing_call(client, kind)

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == (
        "mixrouter: upstream returned HTTP 502: the body is not JSON (an HTML error page or a proxy's answer)"
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("unary", "mixrouter: upstream answered with a body that is not JSON"),
        ("stream", "mixrouter: upstream answered with a body that is not an event stream"),
    ],
)
async def test_200_with_a_body_that_is_not_the_providers_format(client, upstream, kind, message):
    upstream.reply(Reply(status=200, body="<html><body>Welcome to nginx!</body></html>",
                         headers={"content-type": "text/html"}))

    error = await failing_call(client, kind)

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == message


async def test_200_json_without_choices_is_unavailable(client, upstream):
    upstream.reply(Reply(status=200, body={"object": "chat.completion"}))

    error = await failing_call(client, "unary")

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "mixrouter: upstream answered with JSON without choices"


async def test_stream_event_that_is_not_json_is_unavailable(client, upstream):
    upstream.reply(Reply(events=["{not json", "[DONE]"]))

    error = await failing_call(client, "stream")

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "mixrouter: upstream answered with a stream event that is not JSON"


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_connection_reset_is_unavailable(client, upstream, kind):
    upstream.reply(Reply(fault="reset"))

    error = await failing_call(client, kind)

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "mixrouter: upstream closed the connection"


def _closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_connection_refused_is_unavailable(start_client, kind):
    port = _closed_port()
    client = await start_client(
        {"providers": {"mixrouter": {"base_url": f"http://127.0.0.1:{port}/v1"}}},
        {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY},
    )

    error = await failing_call(client, kind)

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "mixrouter: cannot connect to upstream"
    # Nothing about where the gateway tried to connect leaks to the caller.
    assert str(port) not in error.details()


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_errors_carry_the_request_id(client, upstream, kind):
    upstream.reply(Reply(status=500, body=openai_error("boom")))

    error = await failing_call(client, kind)

    metadata = dict(error.trailing_metadata())
    assert len(metadata["tollway-request-id"]) == 32
    assert error.details() == "mixrouter: upstream returned HTTP 500: boom"


async def test_the_same_gateway_serves_after_errors(start_client, upstream):
    # An error on one call leaves the pool and the server healthy for the next.
    client = await start_client(mixrouter_config(upstream), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(fault="reset"), Reply(status=503, body=openai_error("busy")))
    for _ in range(2):
        error = await failing_call(client, "unary")
        assert error.code() == Code.UNAVAILABLE
    upstream.reply(Reply(body={"id": "x", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}))

    response = await client.stub.Complete(pb.CompleteRequest(**_fields()), timeout=10)

    assert response.choices[0].message.parts[0].text == "ok"


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_error_inside_a_200_body_is_unavailable(client, upstream, kind):
    # Relays answer some failures with 200 and an error object, on a stream as an event.
    error_body = openai_error(f"upstream channel error, key {MIXROUTER_TEST_KEY} suspended", "upstream_error")
    if kind == "unary":
        upstream.reply(Reply(status=200, body=error_body))
    else:
        upstream.reply(Reply(events=[orjson.dumps(error_body).decode()]))

    error = await failing_call(client, kind)

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "mixrouter: upstream answered with an error: upstream channel error, key [redacted] suspended"
    assert MIXROUTER_TEST_KEY not in error.details()
