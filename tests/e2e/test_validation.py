"""Requests the gateway refuses before any network call.

Each refusal is asserted end to end: the status code, a message that names the field,
and an upstream that received nothing.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import struct_pb2
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tollway.providers.openai_codec import ChatDialect, OpenAIChatAdapter
from tollway.service.plugins.adapter import IMAGE, Capabilities, ProviderKind
from tollway.service.plugins.hookspecs import hookimpl
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config, serving
from tests.support.upstream import Reply

Code = grpc.StatusCode
CALL_KINDS = ["unary", "stream"]
MODEL = "mixrouter/gemini-2.0-flash"


@pytest.fixture(scope="module")
async def shared_client(upstream_server):
    """One gateway for the module: refusals leave no state behind, and a gateway per case is slow."""
    async with serving(mixrouter_config(upstream_server), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY}) as client:
        yield client


@pytest.fixture
def client(shared_client, upstream):
    """The shared gateway, with the upstream's record cleared for this test."""
    return shared_client


def user(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=list(parts))


def schema(**fields: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(fields)
    return out


def hello() -> list[pb.Message]:
    return [user(pb.Part(text="hello"))]


async def refused(client, kind: str, **fields) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind == "unary":
            await client.stub.Complete(pb.CompleteRequest(**fields), timeout=10)
        else:
            async for _ in client.stub.StreamComplete(pb.StreamCompleteRequest(**fields), timeout=10):
                pass
    return caught.value


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    out = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


# (test id, request fields, field named, message)
INVALID_REQUESTS = [
    ("no-model", dict(messages=hello()), "model", 'model: is required ("provider/model" or a route name)'),
    ("no-messages", dict(model=MODEL), "messages", "messages: at least one message is required"),
    (
        "role-unspecified",
        dict(model=MODEL, messages=[pb.Message(parts=[pb.Part(text="hi")])]),
        "messages[0].role",
        "messages[0].role: is required (ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL)",
    ),
    (
        "empty-parts",
        dict(model=MODEL, messages=[pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="x")]),
                                    pb.Message(role=pb.ROLE_USER)]),
        "messages[1].parts",
        "messages[1].parts: at least one part is required",
    ),
    (
        "part-with-no-content",
        dict(model=MODEL, messages=[user(pb.Part(text="a"), pb.Part())]),
        "messages[0].parts[1]",
        "messages[0].parts[1]: part is empty (set text, image, audio, video, document, tool_call, tool_result "
        "or reasoning)",
    ),
    (
        "media-with-neither-url-nor-data",
        dict(model=MODEL, messages=[user(pb.Part(text="a"), pb.Part(image=pb.Media(mime_type="image/png")))]),
        "messages[0].parts[1].image",
        "messages[0].parts[1].image: set url or data",
    ),
    (
        "inline-data-without-mime-type",
        dict(model=MODEL, messages=[user(pb.Part(text="a"), pb.Part(audio=pb.Media(data=b"RIFF....WAVE")))]),
        "messages[0].parts[1].audio.mime_type",
        "messages[0].parts[1].audio.mime_type: is required with inline data",
    ),
    (
        "empty-inline-data",
        dict(model=MODEL, messages=[user(pb.Part(image=pb.Media(data=b"", mime_type="image/png")))]),
        # A oneof member set to empty bytes is set: the refusal names data, not the source.
        "messages[0].parts[0].image.data",
        "messages[0].parts[0].image.data: is empty",
    ),
    ("max-tokens-zero", dict(model=MODEL, messages=hello(), max_tokens=0), "max_tokens", "max_tokens: must be > 0"),
    ("max-tokens-negative", dict(model=MODEL, messages=hello(), max_tokens=-5), "max_tokens",
     "max_tokens: must be > 0"),
    ("temperature-negative", dict(model=MODEL, messages=hello(), temperature=-0.1), "temperature",
     "temperature: must be between 0 and 2"),
    ("temperature-too-high", dict(model=MODEL, messages=hello(), temperature=2.5), "temperature",
     "temperature: must be between 0 and 2"),
    ("temperature-nan", dict(model=MODEL, messages=hello(), temperature=math.nan), "temperature",
     "temperature: must be between 0 and 2"),
    ("top-p-zero", dict(model=MODEL, messages=hello(), top_p=0.0), "top_p", "top_p: must be > 0 and <= 1"),
    ("top-p-too-high", dict(model=MODEL, messages=hello(), top_p=1.5), "top_p", "top_p: must be > 0 and <= 1"),
    ("empty-stop", dict(model=MODEL, messages=hello(), stop=["END", ""]), "stop[1]", "stop[1]: must not be empty"),
    # -- tools, structured output, reasoning
    ("tool-name-with-spaces", dict(model=MODEL, messages=hello(), tools=[pb.Tool(name="get weather")]), "tools[0].name",
     "tools[0].name: 'get weather' is not a valid tool name (1 to 64 letters, digits, underscores or dashes)"),
    ("tool-declared-twice", dict(model=MODEL, messages=hello(), tools=[pb.Tool(name="f"), pb.Tool(name="f")]),
     "tools[1].name", 'tools[1].name: "f" is declared twice'),
    ("tool-parameters-not-an-object", dict(model=MODEL, messages=hello(), tools=[pb.Tool(name="f", parameters=schema(
        type="string"))]), "tools[0].parameters", 'tools[0].parameters: must be a JSON Schema of "type": "object"'),
    ("tool-choice-names-an-undeclared-tool", dict(model=MODEL, messages=hello(), tools=[pb.Tool(name="f")],
                                                  tool_choice=pb.ToolChoice(function_name="g")),
     "tool_choice.function_name", 'tool_choice.function_name: "g" is not one of the request\'s tools'),
    ("tool-choice-required-without-tools", dict(model=MODEL, messages=hello(),
                                                tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)),
     "tool_choice.mode", "tool_choice.mode: asks for tools but the request declares none"),
    ("parallel-calls-without-tools", dict(model=MODEL, messages=hello(), parallel_tool_calls=False),
     "parallel_tool_calls", "parallel_tool_calls: is set but the request declares no tools"),
    ("tool-call-in-a-user-message", dict(model=MODEL, messages=[user(pb.Part(tool_call=pb.ToolCall(id="c", name="f")))]),
     "messages[0].parts[0].tool_call", "messages[0].parts[0].tool_call: belongs in an assistant message"),
    ("text-in-a-tool-message", dict(model=MODEL, messages=[*hello(), pb.Message(role=pb.ROLE_TOOL,
                                                                                parts=[pb.Part(text="42")])]),
     "messages[1].parts[0]", "messages[1].parts[0]: ROLE_TOOL messages take tool_result parts only"),
    ("result-for-no-call", dict(model=MODEL, messages=[*hello(), pb.Message(role=pb.ROLE_TOOL, parts=[pb.Part(
        tool_result=pb.ToolResult(tool_call_id="call_x", parts=[pb.Part(text="42")]))])]),
     "messages[1].parts[0].tool_result.tool_call_id",
     'messages[1].parts[0].tool_result.tool_call_id: "call_x" answers no tool_call of an earlier assistant message'),
    ("echoed-call-without-id", dict(model=MODEL, messages=[*hello(), pb.Message(role=pb.ROLE_ASSISTANT, parts=[
        pb.Part(tool_call=pb.ToolCall(name="f"))])]),
     "messages[1].parts[0].tool_call.id", "messages[1].parts[0].tool_call.id: is required (echo the id the answer "
                                          "carried)"),
    ("image-in-a-tool-result", dict(model=MODEL, messages=[*hello(), pb.Message(role=pb.ROLE_ASSISTANT, parts=[
        pb.Part(tool_call=pb.ToolCall(id="c", name="f"))]), pb.Message(role=pb.ROLE_TOOL, parts=[pb.Part(
            tool_result=pb.ToolResult(tool_call_id="c", parts=[pb.Part(image=pb.Media(url="https://a.example/x.png"))]))])]),
     "messages[2].parts[0].tool_result.parts[0]", "messages[2].parts[0].tool_result.parts[0]: tool results take text "
                                                  "parts only"),
    ("response-format-empty", dict(model=MODEL, messages=hello(), response_format=pb.ResponseFormat()),
     "response_format", "response_format: set json_schema or json_object"),
    ("json-schema-without-schema", dict(model=MODEL, messages=hello(), response_format=pb.ResponseFormat(
        json_schema=pb.JsonSchemaFormat(name="answer"))), "response_format.json_schema.schema",
     "response_format.json_schema.schema: is required"),
    ("negative-thinking-budget", dict(model=MODEL, messages=hello(), reasoning=pb.ReasoningConfig(budget_tokens=-1)),
     "reasoning.budget_tokens", "reasoning.budget_tokens: must be >= 0"),
    # JSON has no NaN or Infinity, but a binary client can put them in a Struct's double.
    ("nan-in-a-tool-schema", dict(model=MODEL, messages=hello(), tools=[pb.Tool(name="f", parameters=schema(
        type="object", properties={"n": {"type": "number", "maximum": math.nan}}))]),
     "tools[0].parameters.properties.n.maximum",
     "tools[0].parameters.properties.n.maximum: is nan, which JSON cannot carry: send a finite number"),
    ("infinity-in-a-response-schema", dict(model=MODEL, messages=hello(), response_format=pb.ResponseFormat(
        json_schema=pb.JsonSchemaFormat(name="answer", schema=schema(type="object", enum=[1, -math.inf])))),
     "response_format.json_schema.schema.enum[1]",
     "response_format.json_schema.schema.enum[1]: is -inf, which JSON cannot carry: send a finite number"),
    ("infinity-in-echoed-arguments", dict(model=MODEL, messages=[*hello(), pb.Message(role=pb.ROLE_ASSISTANT, parts=[
        pb.Part(tool_call=pb.ToolCall(id="c", name="f", arguments=schema(x=math.inf)))])]),
     "messages[1].parts[0].tool_call.arguments.x",
     "messages[1].parts[0].tool_call.arguments.x: is inf, which JSON cannot carry: send a finite number"),
]


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize(("fields", "field", "message"), [r[1:] for r in INVALID_REQUESTS],
                         ids=[r[0] for r in INVALID_REQUESTS])
async def test_invalid_request_names_the_field(client, upstream, kind, fields, field, message):
    error = await refused(client, kind, **fields)

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == message
    assert message.startswith(f"{field}: ")
    violations = field_violations(error)
    assert [f for f, _ in violations] == [field]
    assert upstream.received == []


MALFORMED_URLS = [
    "not a url",
    "s2.loli.net/2024/02/01/QSWVdw9bX56gj7O.jpg",
    "//s2.loli.net/a.jpg",
    "ftp://example.com/a.jpg",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "https://",
    "https:///a.jpg",
    "http://exa mple.com/a.jpg",
    "https://example.com:99999/a.jpg",
    "https://example.com:port/a.jpg",
    "http://[::1/a.jpg",
    "data:image/png;base64",
    "data:,no-media-type",
]


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize("url", MALFORMED_URLS)
async def test_malformed_url_is_refused(client, upstream, kind, url):
    error = await refused(client, kind, model=MODEL,
                          messages=[user(pb.Part(text="look"), pb.Part(image=pb.Media(url=url)))])

    assert error.code() == Code.INVALID_ARGUMENT
    # The reason follows in parentheses for URLs that parse as http(s) but are malformed.
    assert error.details().startswith("messages[0].parts[1].image.url: is not a valid http(s) or data: URL")
    assert upstream.received == []


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_unknown_provider_is_not_found(client, upstream, kind):
    error = await refused(client, kind, model="nosuchrouter/gpt-4o", messages=hello())

    assert error.code() == Code.NOT_FOUND
    assert error.details() == 'model: unknown provider "nosuchrouter" (configured: mixrouter)'
    assert upstream.received == []


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_a_name_without_a_slash_is_a_route_and_must_be_configured(client, upstream, kind):
    error = await refused(client, kind, model="gemini-2.0-flash", messages=hello())

    assert error.code() == Code.NOT_FOUND
    assert error.details() == 'model: unknown route "gemini-2.0-flash" (routes: none; or name "provider/model")'
    assert upstream.received == []


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize("model", ["mixrouter/", "/gemini-2.0-flash"])
async def test_model_not_of_the_form_provider_slash_model(client, upstream, kind, model):
    error = await refused(client, kind, model=model, messages=hello())

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == f'model: "{model}" is not of the form "provider/model"'
    assert upstream.received == []


@pytest.mark.parametrize("kind", CALL_KINDS)
async def test_provider_without_a_key_names_the_variable(start_client, upstream, kind):
    client = await start_client(mixrouter_config(upstream, api_key_env="TOLLWAY_TEST_MIXROUTER_KEY"), {})

    error = await refused(client, kind, model=MODEL, messages=hello())

    assert error.code() == Code.FAILED_PRECONDITION
    assert error.details() == (
        "mixrouter: provider is configured but has no API key (set TOLLWAY_TEST_MIXROUTER_KEY)"
    )
    assert upstream.received == []
    # An unusable provider is not listed as usable.
    listed = await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [p.name for p in listed.providers] == []


MIXROUTER_IMAGE_TYPES = "image/gif, image/jpeg, image/png, image/webp"


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize(
    ("part", "field", "mime"),
    [
        (pb.Part(image=pb.Media(data=b"II*\x00", mime_type="image/tiff")), "image", "image/tiff"),
        (pb.Part(image=pb.Media(url="https://example.com/a.tiff", mime_type="image/tiff")), "image", "image/tiff"),
        (pb.Part(image=pb.Media(url="data:image/tiff;base64,SUkqAA==")), "image", "image/tiff"),
        (pb.Part(image=pb.Media(data=b"%PDF-1.7", mime_type="application/pdf")), "image", "application/pdf"),
    ],
    ids=["inline", "url-with-mime", "data-url", "pdf-as-image"],
)
async def test_mime_type_the_provider_does_not_accept(client, upstream, kind, part, field, mime):
    error = await refused(client, kind, model=MODEL, messages=[user(pb.Part(text="look"), part)])

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == (
        f'messages[0].parts[1].{field}.mime_type: provider "mixrouter" does not accept {mime} '
        f"(accepted: {MIXROUTER_IMAGE_TYPES})"
    )
    assert upstream.received == []


class ImagesOnlyPlugin:
    """A provider kind that takes text and images, nothing else: no audio, video or documents."""

    @hookimpl
    def tollway_register_providers(self, register):
        capabilities = Capabilities(mime_types={IMAGE: frozenset({"image/png"})}, url_modalities=frozenset({IMAGE}))
        register(ProviderKind(
            name="imagesonly",
            create=lambda settings: OpenAIChatAdapter(settings, capabilities, ChatDialect()),
            default_base_url=None,
            default_api_key_env="IMAGESONLY_API_KEY",
        ))


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize(
    ("part", "field", "modality"),
    [
        (pb.Part(audio=pb.Media(url="https://cdn.openai.com/API/docs/audio/alloy.wav")), "audio", "audio"),
        (pb.Part(video=pb.Media(data=b"\x00\x00\x00\x18ftypmp42", mime_type="video/mp4")), "video", "video"),
        (pb.Part(document=pb.Media(data=b"%PDF-1.7", mime_type="application/pdf")), "document", "document"),
    ],
    ids=["audio", "video", "document"],
)
async def test_modality_the_provider_does_not_accept(start_client, upstream, kind, part, field, modality):
    client = await start_client(
        {"providers": {"imagesonly": {"base_url": f"{upstream.base_url}/v1"}}},
        {"IMAGESONLY_API_KEY": "tw-test-imagesonly-key"},
        extra_plugins=[ImagesOnlyPlugin()],
    )

    error = await refused(client, kind, model="imagesonly/some-model", messages=[user(pb.Part(text="hi"), part)])

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == (
        f'messages[0].parts[1].{field}: provider "imagesonly" does not accept {modality} input'
    )
    assert upstream.received == []


async def test_a_valid_request_after_refusals_reaches_upstream(client, upstream):
    # The refusals above are decided per request; a good one still goes through.
    await refused(client, "unary", model=MODEL, messages=hello(), top_p=2.0)
    upstream.reply(Reply(body={"id": "ok-1", "model": "gemini-2.0-flash", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}))

    response = await client.stub.Complete(pb.CompleteRequest(model=MODEL, messages=hello(), top_p=1.0), timeout=10)

    assert response.id == "ok-1"
    assert len(upstream.received) == 1
    assert upstream.received[0].headers["Authorization"] == f"Bearer {MIXROUTER_TEST_KEY}"
    assert upstream.received[0].json()["top_p"] == 1.0
