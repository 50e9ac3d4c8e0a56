"""Malformed input is refused as INVALID_ARGUMENT naming what is wrong, never INTERNAL or UNKNOWN:
URLs that break URL or IDNA parsers, bytes that are no protobuf message, empty text parts."""

from __future__ import annotations

import grpc
import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config, serving
from tests.support.upstream import Reply

Code = grpc.StatusCode


@pytest.fixture(scope="module")
async def shared_client(upstream_server):
    """One gateway for the module: refusals leave no state behind."""
    config = {**mixrouter_config(upstream_server), "media": {"allow_networks": ["127.0.0.0/8"]}}
    async with serving(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY}) as client:
        yield client


@pytest.fixture
def client(shared_client, upstream):
    return shared_client


def image_request(url: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[pb.Message(role=pb.ROLE_USER, parts=[
        pb.Part(text="describe"), pb.Part(image=pb.Media(url=url, mime_type="image/png"))])])


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.000.000.001/a.png", "malformed URL syntax or host encoding"),
    ("http://xn--a.com/a.png", "malformed URL syntax or host encoding"),
    ("http://" + "a" * 70 + ".com/a.png", "host name with an empty, malformed or over-long (over 63 characters) label"),
    ("http://evil.com%2f@127.0.0.1/a.png", "user information (user@) is not allowed"),
    ("http://user:pw@example.com/a.png", "user information (user@) is not allowed"),
    ("http://[::1/a.png", "malformed URL syntax or host encoding"),
    ("http://0x7f.1/a.png", "numeric host that is not a dotted-quad IP address"),
    ("http://1.2.3.4.5/a.png", "numeric host that is not a dotted-quad IP address"),
    ("http://a..b/a.png", "host name with an empty, malformed or over-long (over 63 characters) label"),
    ("http://%41.com/a.png", "host name with an empty, malformed or over-long (over 63 characters) label"),
    ("http:///a.png", "no host"),
    ("http://exa\tmple.com/a.png", "whitespace or control characters"),
    ("http://example.com:99999/a.png", "port outside 1-65535"),
])
@pytest.mark.parametrize("rpc", ["unary", "stream"])
async def test_malformed_media_urls_are_invalid_argument_naming_the_part(client, upstream, url, reason, rpc):
    request = image_request(url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if rpc == "unary":
            await client.stub.Complete(request, timeout=5)
        else:
            stream_request = pb.StreamCompleteRequest(model=request.model, messages=request.messages)
            async for _ in client.stub.StreamComplete(stream_request, timeout=5):
                pass
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == f"messages[0].parts[1].image.url: is not a valid http(s) or data: URL ({reason})"
    assert upstream.received == []


async def test_a_redirect_to_a_malformed_url_is_invalid_argument(client, upstream):
    from tests.support.upstream import FakeUpstream

    media_host = await FakeUpstream().start()
    try:
        media_host.reply(Reply(status=302, headers={"location": "http://xn--a.com/x.pdf"}))
        request = pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[pb.Message(role=pb.ROLE_USER, parts=[
            pb.Part(text="read"), pb.Part(document=pb.Media(url=f"{media_host.base_url}/r.pdf"))])])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.Complete(request, timeout=5)
    finally:
        await media_host.stop()
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[1].document.url: the URL redirected to a malformed URL"
    assert upstream.received == []


@pytest.mark.parametrize(("method", "payload"), [
    ("/tollway.v1.Completion/Complete", b"\xff\xff\xff\xff"),
    ("/tollway.v1.Completion/Complete", b"\x0a\x05ab"),  # a length that runs past the end
    ("/tollway.v1.Completion/ListModels", b"\x0a\x7f"),
])
async def test_bytes_that_are_no_protobuf_message_are_invalid_argument(client, upstream, method, payload):
    call = client.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(payload, timeout=5)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == f"the request is not a valid protobuf message for {method}"
    assert len(dict(err.value.trailing_metadata())["tollway-request-id"]) == 32
    assert upstream.received == []


async def test_undecodable_stream_request_is_invalid_argument(client, upstream):
    method = "/tollway.v1.Completion/StreamComplete"
    call = client.channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call(b"\xff\xff\xff\xff", timeout=5):
            pass
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == f"the request is not a valid protobuf message for {method}"


async def test_a_well_formed_raw_request_still_succeeds(client, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    request = pb.CompleteRequest(model="mixrouter/gpt-4o",
                                 messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])
    call = client.channel.unary_unary("/tollway.v1.Completion/Complete", request_serializer=None,
                                      response_deserializer=None)
    raw = await call(request.SerializeToString(), timeout=5)
    assert pb.CompleteResponse.FromString(raw).choices


@pytest.mark.parametrize(("parts", "field"), [
    ([pb.Part(text="")], "messages[0].parts[0].text"),
    ([pb.Part(text="look"), pb.Part(text="")], "messages[0].parts[1].text"),
])
async def test_an_empty_text_part_is_refused(client, upstream, parts, field):
    request = pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[pb.Message(role=pb.ROLE_USER, parts=parts)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(request, timeout=5)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == f"{field}: must not be empty"
    assert upstream.received == []


async def test_an_empty_text_part_inside_a_tool_result_is_refused(client, upstream):
    request = pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="weather?")]),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(tool_call=pb.ToolCall(id="c1", name="get_weather"))]),
        pb.Message(role=pb.ROLE_TOOL, parts=[pb.Part(tool_result=pb.ToolResult(
            tool_call_id="c1", parts=[pb.Part(text="")]))]),
    ], tools=[pb.Tool(name="get_weather")])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(request, timeout=5)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == "messages[2].parts[0].tool_result.parts[0].text: must not be empty"
    assert upstream.received == []
