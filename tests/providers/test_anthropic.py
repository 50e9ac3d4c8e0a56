"""The Anthropic adapter: request, response, stream and error translation from Anthropic's
published payloads (tests/fixtures/anthropic/SOURCES.md), then end to end over gRPC against
a loopback upstream that plays the Messages API.

Every expected Usage is worked out by hand in the test from the fixture's figures.
"""

from __future__ import annotations

import base64
import json

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from httpx_sse import ServerSentEvent

from tests.support.gateway import FIXTURES, fixture_json
from tests.support.upstream import Reply
from tollway.providers import anthropic
from tollway.service.admission.validation import check_capabilities
from tollway.service.config.loader import ConfigError, parse_config
from tollway.service.errors import GatewayError
from tollway.service.plugins.adapter import ProviderSettings
from tollway.service.plugins.loader import load_provider_kinds
from tollway.service.plugins.registry import build_registry
from tollway.service.usage.estimate import answer_bytes, estimated_usage
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning
Code = grpc.StatusCode

# Not a real key: shaped like one so scrubbing is exercised.
KEY = "tw-test-anthropic-key-0123456789abcdef"
MODEL = "claude-sonnet-4-5"
PDF = b"%PDF-1.4\n%not-a-real-document\n"
PNG = b"\x89PNG\r\n\x1a\n-not-a-real-image"

# Anthropic states no modality breakdown: its figures are unattributed, with no modality
# warning (USAGE.md rule 1).


def make_adapter(**options) -> anthropic.AnthropicAdapter:
    return anthropic.create(ProviderSettings("anthropic", "anthropic", anthropic.DEFAULT_BASE_URL, KEY, options))


def user(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=list(parts))


def text(value: str) -> pb.Part:
    return pb.Part(text=value)


def request(*messages: pb.Message, **fields) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=f"anthropic/{MODEL}", messages=list(messages), **fields)


def sent_body(req: pb.CompleteRequest, *, stream: bool = False, **options) -> dict:
    return json.loads(make_adapter(**options).build_request(req, MODEL, stream=stream).content)


def raises(call, *args, **kwargs) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args, **kwargs)
    return caught.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- request translation -------------------------------------------------------------------


def test_text_request_is_a_messages_call_with_anthropic_headers():
    http_request = make_adapter().build_request(request(user(text("Hello, Claude"))), MODEL, stream=False)

    assert http_request.method == "POST"
    assert str(http_request.url) == "https://api.anthropic.com/v1/messages"
    assert http_request.headers["x-api-key"] == KEY
    assert http_request.headers["anthropic-version"] == "2023-06-01"
    assert http_request.headers["content-type"] == "application/json"
    assert http_request.headers["accept"] == "application/json"
    assert "authorization" not in http_request.headers
    assert json.loads(http_request.content) == {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]}],
        "stream": False,
    }


def test_image_url_is_a_url_source():
    body = sent_body(request(user(text("What is this?"), pb.Part(image=pb.Media(url="https://example.com/cat.jpg")))))

    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_image_bytes_are_a_base64_source():
    body = sent_body(request(user(pb.Part(image=pb.Media(data=PNG, mime_type="image/PNG")))))

    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)}}
    ]


def test_image_data_url_is_a_base64_source():
    # A data: URL is inline bytes under another name: Anthropic takes it as a base64 source.
    url = "data:image/png;base64," + b64(PNG)
    body = sent_body(request(user(pb.Part(image=pb.Media(url=url)))))

    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)}}
    ]


def test_data_url_that_does_not_decode_is_refused():
    req = request(user(pb.Part(image=pb.Media(url="data:image/png;base64,%%%not-base64"))))

    err = raises(make_adapter().build_request, req, MODEL, stream=False)

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == "messages[0].parts[0].image.url: is a data: URL whose base64 payload does not decode"


def test_pdf_bytes_are_a_base64_document():
    body = sent_body(request(user(pb.Part(document=pb.Media(data=PDF, mime_type="application/pdf")), text("Sum up"))))

    assert body["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)}},
        {"type": "text", "text": "Sum up"},
    ]


def test_pdf_url_is_a_url_document():
    url = "https://assets.anthropic.com/m/1cd9d098ac3e6467/original/Claude-3-Model-Card-October-Addendum.pdf"
    body = sent_body(request(user(pb.Part(document=pb.Media(url=url)))))

    assert body["messages"][0]["content"] == [{"type": "document", "source": {"type": "url", "url": url}}]


def test_system_messages_go_to_top_level_system_and_same_role_turns_merge():
    req = request(
        pb.Message(role=pb.ROLE_SYSTEM, parts=[text("You are terse.")]),
        user(text("Hello there.")),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[text("Hi, I'm Claude.")]),
        user(text("Can you explain LLMs")),
        user(text("in plain English?")),
        pb.Message(role=pb.ROLE_SYSTEM, parts=[text("Answer in one line.")]),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[text("The best answer is (")]),
    )

    body = sent_body(req)

    assert body["system"] == [{"type": "text", "text": "You are terse."},
                              {"type": "text", "text": "Answer in one line."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hello there."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi, I'm Claude."}]},
        {"role": "user", "content": [{"type": "text", "text": "Can you explain LLMs"},
                                     {"type": "text", "text": "in plain English?"}]},
        # A final assistant turn is a prefill: Anthropic continues from it.
        {"role": "assistant", "content": [{"type": "text", "text": "The best answer is ("}]},
    ]


def test_parameters_are_translated_and_stream_is_set():
    req = request(user(text("Hi")), max_tokens=256, temperature=0.7, top_p=0.9, stop=["END", "\n\nHuman:"])

    body = sent_body(req, stream=True)

    assert body == {
        "model": MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "temperature": 0.7,
        "top_p": 0.9,
        "stop_sequences": ["END", "\n\nHuman:"],
        "stream": True,
    }
    assert make_adapter().build_request(req, MODEL, stream=True).headers["accept"] == "text/event-stream"


def test_temperature_zero_is_sent_not_dropped():
    assert sent_body(request(user(text("Hi")), temperature=0.0))["temperature"] == 0.0


def test_missing_max_tokens_gets_the_configured_default():
    assert sent_body(request(user(text("Hi"))))["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS == 4096
    assert sent_body(request(user(text("Hi"))), default_max_tokens=1000)["max_tokens"] == 1000
    # The caller's own value always wins over the default.
    assert sent_body(request(user(text("Hi")), max_tokens=7), default_max_tokens=1000)["max_tokens"] == 7


@pytest.mark.parametrize(
    "options, message",
    [
        ({"default_max_tokens": 0}, "default_max_tokens must be a positive integer, got 0"),
        ({"default_max_tokens": -5}, "default_max_tokens must be a positive integer, got -5"),
        ({"default_max_tokens": "4096"}, "default_max_tokens must be a positive integer, got '4096'"),
        ({"default_max_tokens": True}, "default_max_tokens must be a positive integer, got True"),
        ({"default_max_tokens": 2**31}, "default_max_tokens must be a positive integer, got 2147483648"),
        ({"max_tokens": 100}, "unknown option(s) for kind anthropic: max_tokens (known: default_max_tokens)"),
    ],
)
def test_bad_options_are_refused_at_start_up_naming_the_key(options, message):
    config = parse_config({"providers": {"anthropic": options}})

    with pytest.raises(ConfigError) as caught:
        build_registry(config, load_provider_kinds(), {"ANTHROPIC_API_KEY": KEY})

    assert str(caught.value) == f"providers.anthropic: {message}"


def test_seed_is_refused_naming_field_and_provider():
    err = raises(make_adapter().build_request, request(user(text("Hi")), seed=0), MODEL, stream=False)

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == 'seed: provider "anthropic" does not support seed'
    assert [(v.field, v.description) for v in err.violations] == [
        ("seed", 'provider "anthropic" does not support seed')
    ]


def test_temperature_above_anthropics_range_is_refused():
    err = raises(make_adapter().build_request, request(user(text("Hi")), temperature=1.5), MODEL, stream=False)

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == 'temperature: provider "anthropic" takes 0 to 1, got 1.5'


@pytest.mark.parametrize("kind, mime", [("audio", "audio/wav"), ("video", "video/mp4")])
def test_audio_and_video_are_refused_centrally_and_by_the_adapter(kind, mime):
    req = request(user(text("Listen"), pb.Part(**{kind: pb.Media(data=b"\x00\x01", mime_type=mime)})))
    expected = f'messages[0].parts[1].{kind}: provider "anthropic" does not accept {kind} input'

    with pytest.raises(GatewayError) as central:
        check_capabilities('provider "anthropic"', make_adapter().capabilities, req)
    adapter_err = raises(make_adapter().build_request, req, MODEL, stream=False)

    for err in (central.value, adapter_err):
        assert err.code == Code.INVALID_ARGUMENT
        assert err.message == expected


def test_capabilities_accept_images_and_pdfs_by_url_or_bytes():
    caps = make_adapter().capabilities
    assert caps.modalities == {pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_DOCUMENT}
    assert caps.mime_types[pb.MODALITY_IMAGE] == {"image/jpeg", "image/png", "image/gif", "image/webp"}
    assert caps.mime_types[pb.MODALITY_DOCUMENT] == {"application/pdf"}
    assert caps.takes_url(pb.MODALITY_IMAGE, "https://example.com/a.png")
    assert caps.takes_url(pb.MODALITY_DOCUMENT, "https://example.com/a.pdf")


def test_media_in_an_assistant_or_system_message_is_refused():
    image = pb.Part(image=pb.Media(url="https://example.com/a.png"))
    assistant = request(user(text("Hi")), pb.Message(role=pb.ROLE_ASSISTANT, parts=[image]))
    system = request(pb.Message(role=pb.ROLE_SYSTEM, parts=[text("Be brief."), image]), user(text("Hi")))

    err = raises(make_adapter().build_request, assistant, MODEL, stream=False)
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == ('messages[1].parts[0]: provider "anthropic" takes text, tool calls and reasoning only '
                           "in assistant messages")

    err = raises(make_adapter().build_request, system, MODEL, stream=False)
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == 'messages[0].parts[1]: provider "anthropic" takes text only in system messages'


def test_a_conversation_of_system_messages_only_is_refused():
    req = request(pb.Message(role=pb.ROLE_SYSTEM, parts=[text("You are terse.")]))

    err = raises(make_adapter().build_request, req, MODEL, stream=False)

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == 'messages: provider "anthropic" needs a user or assistant message besides system messages'


# -- response translation ------------------------------------------------------------------


def parse(body: dict | bytes, status: int = 200) -> pb.CompleteResponse:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = request(user(text("Hi")))
    sent = make_adapter().build_request(req, MODEL, stream=False)
    return make_adapter().parse_response(httpx.Response(status, content=content, request=sent), req, MODEL)


def with_usage(usage: dict) -> dict:
    """A published usage fragment placed in the API reference's Message envelope."""
    return {**fixture_json("anthropic/api_reference_response.json"), "usage": usage}


def test_api_reference_response():
    response = parse(fixture_json("anthropic/api_reference_response.json"))

    assert (response.id, response.model, response.provider) == ("msg_013Zva2CMHLNnXjNJJKqJ2EF", "claude-opus-5",
                                                                 "anthropic")
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.message.role == pb.ROLE_ASSISTANT
    assert [p.text for p in choice.message.parts] == ["Hi! My name is Claude."]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_STOP, "end_turn")

    usage = response.usage
    # input_tokens 2095 excludes cache reads 2051 and cache writes 2051: 2095 + 2051 + 2051 = 6197.
    # The writes' TTL split says 5m 0 / 1h 0, so all 2051 have an unknown TTL.
    assert usage.input == pb.InputUsage(total=6197, cache_read=2051, cache_write_unknown_ttl=2051,
                                        unattributed=2095)
    # thinking_tokens 0: no reasoning; the 503 output tokens have no stated modality.
    assert usage.output == pb.OutputUsage(total=503, unattributed=503)
    assert usage.total_tokens == 6700 == 6197 + 503
    assert set(usage.warnings) == {W.USAGE_WARNING_CACHE_TTL_UNKNOWN}
    assert not usage.estimated
    # web_search_requests 0 is not a call; web_fetch_requests 2 are.
    assert [(t.tool, t.count) for t in usage.provider_reported.server_tool_use] == [("web_fetch_requests", 2)]
    assert not usage.provider_reported.HasField("total_tokens")
    assert len(usage.other_models) == 0


def test_recorded_tool_use_response():
    response = parse(fixture_json("anthropic/tool_use_response.json"))

    choice = response.choices[0]
    # The tool_use block is a tool call after the text; the stop reason says a tool call ended the turn.
    assert [p.WhichOneof("content") for p in choice.message.parts] == ["text", "tool_call"]
    assert choice.message.parts[0].text == (
        "I'll use the test_tool with the value \"test\" as requested, then provide a final response."
    )
    call = choice.message.parts[1].tool_call
    assert (call.id, call.name, call.arguments_json) == ("toolu_01Ff6oGJapCYgEPy4WkqkoMJ", "test_tool",
                                                         '{"value":"test"}')
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "tool_use")
    assert response.model == "claude-sonnet-4-20250514"
    usage = response.usage
    # No cache traffic (all zero, split zero too): 415 fresh input, 76 output.
    assert usage.input == pb.InputUsage(total=415, unattributed=415)
    assert usage.output == pb.OutputUsage(total=76, unattributed=76)
    assert usage.total_tokens == 491
    assert set(usage.warnings) == set()
    assert not usage.HasField("provider_reported") or len(usage.provider_reported.server_tool_use) == 0


def test_prompt_caching_writes_split_by_ttl():
    usage = parse(with_usage(fixture_json("anthropic/usage_prompt_caching_1h.json")["usage"])).usage

    # 2048 fresh + 1800 read + 248 written (148 for 5 minutes, 100 for an hour) = 4096.
    assert usage.input == pb.InputUsage(total=4096, cache_read=1800, cache_write_5m=148, cache_write_1h=100,
                                        unattributed=2048)
    assert usage.output == pb.OutputUsage(total=503, unattributed=503)
    assert usage.total_tokens == 4599
    # Every write has a TTL: no CACHE_TTL_UNKNOWN.
    assert set(usage.warnings) == set()


def test_compaction_iteration_is_added_to_the_top_level():
    usage = parse(with_usage(fixture_json("anthropic/usage_compaction.json")["usage"])).usage

    # Top level 45000 in / 1234 out excludes the compaction pass (180000 in / 3500 out);
    # the `message` iteration (23000 / 1000) is already inside the top level.
    assert usage.input == pb.InputUsage(total=225000, unattributed=225000)
    assert usage.output == pb.OutputUsage(total=4734, unattributed=4734)
    assert usage.total_tokens == 229734
    assert len(usage.other_models) == 0


def test_advisor_iteration_is_usage_of_another_model():
    usage = parse(with_usage(fixture_json("anthropic/usage_advisor.json")["usage"])).usage

    # The executor's own bill is the top level: 412 in, 531 out.
    assert usage.input == pb.InputUsage(total=412, unattributed=412)
    assert usage.output == pb.OutputUsage(total=531, unattributed=531)
    assert usage.total_tokens == 943
    # The advisor's 823 in / 1612 out are billed to claude-fable-5, beside it, not in it.
    assert len(usage.other_models) == 1
    advisor = usage.other_models[0]
    assert advisor.model == "claude-fable-5"
    assert advisor.usage.input == pb.InputUsage(total=823, unattributed=823)
    assert advisor.usage.output == pb.OutputUsage(total=1612, unattributed=1612)
    assert advisor.usage.total_tokens == 2435
    assert set(advisor.usage.warnings) == set()


def test_thinking_blocks_are_reasoning_parts_not_visible_text():
    body = {**fixture_json("anthropic/api_reference_response.json"),
            **fixture_json("anthropic/content_extended_thinking.json")}

    response = parse(body)

    parts = response.choices[0].message.parts
    assert [p.WhichOneof("content") for p in parts] == ["reasoning", "text"]
    assert [p.text for p in parts if p.WhichOneof("content") == "text"] == ["Based on my analysis..."]
    assert parts[0].reasoning == pb.Reasoning(
        text="Let me analyze this step by step...",
        signature=b"WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL....")


@pytest.mark.parametrize(
    "stop_reason, finish",
    [
        ("end_turn", pb.FINISH_REASON_STOP),
        ("stop_sequence", pb.FINISH_REASON_STOP),
        ("max_tokens", pb.FINISH_REASON_LENGTH),
        ("model_context_window_exceeded", pb.FINISH_REASON_LENGTH),
        ("tool_use", pb.FINISH_REASON_TOOL_CALLS),
        ("refusal", pb.FINISH_REASON_CONTENT_FILTER),
        ("pause_turn", pb.FINISH_REASON_OTHER),
        ("compaction", pb.FINISH_REASON_OTHER),
        ("a_reason_from_the_future", pb.FINISH_REASON_OTHER),
    ],
)
def test_stop_reasons_map_and_the_raw_value_is_kept(stop_reason, finish):
    choice = parse({**fixture_json("anthropic/api_reference_response.json"), "stop_reason": stop_reason}).choices[0]

    assert (choice.finish_reason, choice.raw_finish_reason) == (finish, stop_reason)


def test_response_without_usage_is_estimated():
    body = fixture_json("anthropic/api_reference_response.json")
    del body["usage"]
    raw = json.dumps(body).encode()

    response = parse(raw)

    # The adapter states nothing; the engine estimates from the answer and the request's "Hi".
    assert not response.HasField("usage")
    usage = estimated_usage(request(user(text("Hi"))), answer_bytes(response.choices))
    text_bytes = len("Hi! My name is Claude.".encode())
    assert usage.estimated
    assert W.USAGE_WARNING_USAGE_MISSING in usage.warnings
    assert usage.output.total == (text_bytes + 3) // 4
    assert usage.input.total == 1


def test_error_object_in_a_200_body_is_an_error():
    err = raises(parse, fixture_json("anthropic/error_not_found.json"))

    assert err.code == Code.NOT_FOUND
    assert err.message == "anthropic: upstream reported not_found_error: The requested resource could not be found."


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>502 Bad Gateway</html>", "anthropic: upstream answered with a body that is not JSON"),
        (b"[1, 2]", "anthropic: upstream answered with a body that is not a JSON object"),
        (b'{"id": "msg_x", "type": "message"}', "anthropic: upstream answered with JSON without content"),
    ],
)
def test_unreadable_200_body_is_unavailable(body, message):
    err = raises(parse, body)

    assert err.code == Code.UNAVAILABLE
    assert err.message == message


# -- error translation ---------------------------------------------------------------------


def http_error(status: int, body: dict | bytes, headers: dict | None = None) -> GatewayError:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return make_adapter().parse_error(httpx.Response(status, content=content, headers=headers or {}))


def error_body(error_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def test_http_error_body_keeps_type_and_message():
    err = http_error(404, fixture_json("anthropic/error_not_found.json"))

    assert err.code == Code.NOT_FOUND
    assert err.message == ("anthropic: upstream returned HTTP 404: "
                           "not_found_error: The requested resource could not be found.")
    assert err.http_status == 404


@pytest.mark.parametrize(
    "status, error_type, code",
    [
        (400, "invalid_request_error", Code.INVALID_ARGUMENT),
        (413, "request_too_large", Code.INVALID_ARGUMENT),
        (500, "api_error", Code.UNAVAILABLE),
        (504, "timeout_error", Code.DEADLINE_EXCEEDED),
        (529, "overloaded_error", Code.UNAVAILABLE),
    ],
)
def test_http_error_statuses_follow_the_table(status, error_type, code):
    err = http_error(status, error_body(error_type, "Something happened"))

    assert err.code == code
    assert err.message == f"anthropic: upstream returned HTTP {status}: {error_type}: Something happened"


def test_rate_limit_carries_retry_after():
    err = http_error(429, error_body("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
                     {"retry-after": "7"})

    assert err.code == Code.RESOURCE_EXHAUSTED
    assert err.message == ("anthropic: upstream returned HTTP 429: "
                           "rate_limit_error: Number of request tokens has exceeded your rate limit")
    assert err.retry_after == 7.0


def test_rejected_key_says_only_what_to_fix():
    err = http_error(401, error_body("authentication_error", f"invalid x-api-key {KEY}"))

    assert err.code == Code.FAILED_PRECONDITION
    assert err.message == "anthropic: provider rejected the gateway's credentials (HTTP 401)"
    assert KEY not in err.message


def test_keys_echoed_in_an_error_message_are_scrubbed():
    err = http_error(400, error_body("invalid_request_error", f"bad key {KEY} and sk-ant-api03-abcdefghijkl"))

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == ("anthropic: upstream returned HTTP 400: "
                           "invalid_request_error: bad key [redacted] and [redacted]")


def test_html_error_page_is_named_as_such():
    err = http_error(502, b"<html><body>Bad gateway</body></html>")

    assert err.code == Code.UNAVAILABLE
    assert err.message == ("anthropic: upstream returned HTTP 502: "
                           "the body is not JSON (an HTML error page or a proxy's answer)")


# -- stream translation (decoder fed ServerSentEvent objects, no network) ------------------


def fixture_events(name: str) -> list[ServerSentEvent]:
    """An .sse fixture split into events the way an SSE parser would (LF, blank-line framed)."""
    events = []
    for block in (FIXTURES / "anthropic" / name).read_text(encoding="utf-8").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.strip("\n").split("\n") if line)
        if fields:
            events.append(ServerSentEvent(event=fields.get("event"), data=fields.get("data")))
    return events


def decode(events: list[ServerSentEvent], req: pb.CompleteRequest | None = None):
    """(text deltas, decoder) after feeding every event; reasoning and tool-call deltas are
    in decoder.forwarded."""
    decoder = make_adapter().stream_decoder(req or request(user(text("Hello"))), MODEL)
    decoder.forwarded = [m for event in events for m in decoder.feed(event)]
    deltas = [m.delta for m in decoder.forwarded if m.HasField("delta")]
    return deltas, decoder


def test_docs_basic_stream():
    deltas, decoder = decode(fixture_events("stream_docs_basic.sse"))

    assert [(d.choice_index, d.text) for d in deltas] == [(0, "Hello"), (0, "!")]
    assert decoder.finished
    summary = decoder.summary()
    assert (summary.id, summary.model, summary.provider) == ("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                                                             "claude-opus-5", "anthropic")
    assert [(f.index, f.finish_reason, f.raw_finish_reason) for f in summary.finishes] == [
        (0, pb.FINISH_REASON_STOP, "end_turn")
    ]
    usage = summary.usage
    # message_start says 25 in / 1 out; message_delta's cumulative 15 replaces the 1 (never 16).
    assert usage.input == pb.InputUsage(total=25, unattributed=25)
    assert usage.output == pb.OutputUsage(total=15, unattributed=15)
    assert usage.total_tokens == 40
    assert set(usage.warnings) == set()
    assert not usage.estimated


def test_sdk_stream_message_delta_overwrites_each_field_it_carries():
    deltas, decoder = decode(fixture_events("stream_sdk_message_delta_fields.sse"))

    assert [d.text for d in deltas] == ["Hello there!"]
    usage = decoder.summary().usage
    # message_delta overwrites input 25 -> 40, reads 5 -> 7, writes 10 -> 12, output 1 -> 8.
    # It carries no TTL split, so message_start's (5m: 10, 1h: 0) stands: 2 writes have no TTL.
    # Input: 40 + 7 + 12 = 59.
    assert usage.input == pb.InputUsage(total=59, cache_read=7, cache_write_5m=10, cache_write_unknown_ttl=2,
                                        unattributed=40)
    # 8 output tokens, of which thinking_tokens says 3 were thinking.
    assert usage.output == pb.OutputUsage(total=8, reasoning=3, unattributed=5)
    assert usage.total_tokens == 67
    assert set(usage.warnings) == {W.USAGE_WARNING_CACHE_TTL_UNKNOWN}
    assert [(t.tool, t.count) for t in usage.provider_reported.server_tool_use] == [("web_search_requests", 1)]


def test_sdk_refusal_stream():
    deltas, decoder = decode(fixture_events("stream_sdk_refusal.sse"))

    # The text block opened and closed empty: nothing to send.
    assert deltas == []
    summary = decoder.summary()
    assert [(f.finish_reason, f.raw_finish_reason) for f in summary.finishes] == [
        (pb.FINISH_REASON_CONTENT_FILTER, "refusal")
    ]
    # 20 in; 120 out of which 67 thinking.
    assert summary.usage.input == pb.InputUsage(total=20, unattributed=20)
    assert summary.usage.output == pb.OutputUsage(total=120, reasoning=67, unattributed=53)
    assert summary.usage.total_tokens == 140


def test_docs_thinking_stream_sends_thinking_as_reasoning_and_estimates_the_missing_usage():
    req = request(user(text("What is the greatest common divisor of 1071 and 462?")))

    deltas, decoder = decode(fixture_events("stream_docs_thinking.sse"), req)

    answer = "The greatest common divisor of 1071 and 462 is **21**."
    assert [d.text for d in deltas] == [answer]
    # The thinking is not visible text: it goes out as reasoning deltas, ahead of the text.
    thinking_deltas = ["I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 × 462 + 147",
                       "\n462 = 3 × 147 + 21", "\n147 = 7 × 21 + 0", "\nThe remainder is 0, so GCD(1071, 462) = 21."]
    assert [m.WhichOneof("event") for m in decoder.forwarded] == ["reasoning_delta"] * 4 + ["delta"]
    assert [m.reasoning_delta.text for m in decoder.forwarded[:4]] == thinking_deltas
    assert decoder.finished
    summary = decoder.summary()
    assert (summary.id, summary.model) == ("msg_01...", "claude-opus-5")
    assert [(f.finish_reason, f.raw_finish_reason) for f in summary.finishes] == [(pb.FINISH_REASON_STOP, "end_turn")]
    assert list(summary.finishes[0].reasoning) == [
        pb.Reasoning(text="".join(thinking_deltas), signature=b"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...")
    ]
    # This transcript carries no usage at all: the decoder counts what it saw, thinking
    # included, and the engine estimates from that (usage/estimate.py).
    thinking = ("I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 × 462 + 147"
                "\n462 = 3 × 147 + 21" "\n147 = 7 × 21 + 0" "\nThe remainder is 0, so GCD(1071, 462) = 21.")
    assert not summary.HasField("usage")
    assert decoder.output_bytes == len(thinking.encode()) + len(answer.encode())
    output_tokens = (len(thinking.encode()) + len(answer.encode()) + 3) // 4
    usage = estimated_usage(req, decoder.output_bytes)
    assert usage.estimated
    assert usage.output == pb.OutputUsage(total=output_tokens, unattributed=output_tokens)
    input_tokens = (len("What is the greatest common divisor of 1071 and 462?".encode()) + 3) // 4
    assert usage.input == pb.InputUsage(total=input_tokens, unattributed=input_tokens)
    assert set(usage.warnings) == {W.USAGE_WARNING_USAGE_MISSING}


def test_stream_usage_with_iterations_and_advisor():
    start = {"type": "message_start", "message": {"id": "msg_x", "model": MODEL, "usage": {"input_tokens": 412,
                                                                                         "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": fixture_json("anthropic/usage_advisor.json")["usage"]}
    events = [ServerSentEvent(event=e["type"], data=json.dumps(e)) for e in
              (start, delta, {"type": "message_stop"})]

    _, decoder = decode(events)

    usage = decoder.summary().usage
    assert (usage.input.total, usage.output.total) == (412, 531)
    assert [(m.model, m.usage.input.total, m.usage.output.total) for m in usage.other_models] == [
        ("claude-fable-5", 823, 1612)
    ]


def test_event_name_missing_falls_back_to_the_data_type():
    events = [ServerSentEvent(data=e.data) for e in fixture_events("stream_docs_basic.sse")]

    deltas, decoder = decode(events)

    assert [d.text for d in deltas] == ["Hello", "!"]
    assert decoder.finished


def test_stream_without_message_stop_is_not_finished_and_its_usage_is_estimated():
    events = [e for e in fixture_events("stream_docs_basic.sse") if e.event != "message_stop"]

    _, decoder = decode(events)

    assert not decoder.finished
    assert decoder.summary().usage.estimated


def test_docs_error_event_is_unavailable():
    events = fixture_events("stream_docs_error_event.sse")
    decoder = make_adapter().stream_decoder(request(user(text("Hi"))), MODEL)

    err = raises(lambda: list(decoder.feed(events[0])))

    assert err.code == Code.UNAVAILABLE
    assert err.message == "anthropic: upstream reported overloaded_error: Overloaded"


@pytest.mark.parametrize(
    "error_type, code, message",
    [
        ("rate_limit_error", Code.RESOURCE_EXHAUSTED, "anthropic: upstream reported rate_limit_error: slow down"),
        ("invalid_request_error", Code.INVALID_ARGUMENT,
         "anthropic: upstream reported invalid_request_error: slow down"),
        ("api_error", Code.UNAVAILABLE, "anthropic: upstream reported api_error: slow down"),
        ("timeout_error", Code.DEADLINE_EXCEEDED, "anthropic: upstream reported timeout_error: slow down"),
        ("billing_error", Code.FAILED_PRECONDITION, "anthropic: upstream reported billing_error: slow down"),
        ("authentication_error", Code.FAILED_PRECONDITION,
         "anthropic: provider rejected the gateway's credentials (authentication_error)"),
        ("error_from_the_future", Code.UNAVAILABLE, "anthropic: upstream reported error_from_the_future: slow down"),
    ],
)
def test_error_events_map_through_the_status_table(error_type, code, message):
    event = ServerSentEvent(event="error", data=json.dumps(error_body(error_type, "slow down")))
    decoder = make_adapter().stream_decoder(request(user(text("Hi"))), MODEL)

    err = raises(lambda: list(decoder.feed(event)))

    assert err.code == code
    assert err.message == message


def test_error_event_message_is_scrubbed():
    event = ServerSentEvent(event="error", data=json.dumps(error_body("api_error", f"leaked {KEY}")))
    decoder = make_adapter().stream_decoder(request(user(text("Hi"))), MODEL)

    err = raises(lambda: list(decoder.feed(event)))

    assert err.code == Code.UNAVAILABLE
    assert err.message == "anthropic: upstream reported api_error: leaked [redacted]"


def test_stream_event_that_is_not_json_is_unavailable():
    decoder = make_adapter().stream_decoder(request(user(text("Hi"))), MODEL)

    err = raises(lambda: list(decoder.feed(ServerSentEvent(event="content_block_delta", data="{not json"))))

    assert err.code == Code.UNAVAILABLE
    assert err.message == "anthropic: upstream answered with a stream event that is not JSON"


# -- end to end over gRPC ------------------------------------------------------------------


def sse_body(name: str, newline: str = "\n", *, drop: str | None = None) -> bytes:
    """A fixture transcript as the upstream sends it, with the chosen line ending; every
    event, the last included, ends with a blank line as on the wire."""
    blocks = (FIXTURES / "anthropic" / name).read_text(encoding="utf-8").strip("\n").split("\n\n")
    if drop:
        blocks = [b for b in blocks if not b.startswith(f"event: {drop}\n")]
    return "".join(block.replace("\n", newline) + newline + newline for block in blocks).encode()


def anthropic_config(upstream, **options) -> dict:
    # No retries: each test looks at one upstream exchange.
    return {"providers": {"anthropic": {"base_url": f"{upstream.base_url}/v1", **options}},
            "routing": {"max_retries": 0}}


@pytest.fixture
async def claude(start_client, upstream):
    """A gateway with only Anthropic configured, pointed at the loopback upstream."""
    return await start_client(anthropic_config(upstream), {"ANTHROPIC_API_KEY": KEY})


def stream_request(*messages: pb.Message, **fields) -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(model=f"anthropic/{MODEL}", messages=list(messages), **fields)


async def collect(call):
    deltas, summaries = [], []
    async for message in call:
        (deltas if message.HasField("delta") else summaries).append(
            message.delta if message.HasField("delta") else message.summary
        )
    return deltas, summaries


async def test_e2e_unary(claude, upstream):
    upstream.reply(Reply(body=fixture_json("anthropic/api_reference_response.json")))
    req = request(pb.Message(role=pb.ROLE_SYSTEM, parts=[text("Be brief.")]),
                  user(text("What is this?"), pb.Part(image=pb.Media(data=PNG, mime_type="image/png"))),
                  max_tokens=512, temperature=0.2)

    response = await claude.stub.Complete(req, timeout=10)

    got = upstream.received[0]
    assert (got.method, got.path, got.query) == ("POST", "/v1/messages", "")
    assert got.headers["x-api-key"] == KEY
    assert got.headers["anthropic-version"] == "2023-06-01"
    assert got.json() == {
        "model": MODEL,
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)}},
        ]}],
        "temperature": 0.2,
        "stream": False,
    }
    assert (response.id, response.model, response.provider) == ("msg_013Zva2CMHLNnXjNJJKqJ2EF", "claude-opus-5",
                                                                "anthropic")
    assert [p.text for p in response.choices[0].message.parts] == ["Hi! My name is Claude."]
    assert response.usage.input == pb.InputUsage(total=6197, cache_read=2051, cache_write_unknown_ttl=2051,
                                                 unattributed=2095)
    assert response.usage.total_tokens == 6700


async def test_e2e_default_max_tokens_from_config(start_client, upstream):
    client = await start_client(anthropic_config(upstream, default_max_tokens=1000), {"ANTHROPIC_API_KEY": KEY})
    upstream.reply(Reply(body=fixture_json("anthropic/tool_use_response.json")))

    await client.stub.Complete(request(user(text("Hi"))), timeout=10)

    assert upstream.received[0].json()["max_tokens"] == 1000


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
async def test_e2e_stream(claude, upstream, newline):
    upstream.reply(Reply(events=[sse_body("stream_sdk_message_delta_fields.sse", newline)]))

    call = claude.stub.StreamComplete(stream_request(user(text("Hello"))), timeout=10)
    deltas, summaries = await collect(call)

    assert await call.code() == Code.OK
    got = upstream.received[0]
    assert got.json()["stream"] is True
    assert got.headers["Accept"] == "text/event-stream"
    assert [(d.choice_index, d.text) for d in deltas] == [(0, "Hello there!")]
    assert len(summaries) == 1
    summary = summaries[0]
    assert (summary.id, summary.model, summary.provider) == ("msg_01MessageDeltaFields00000001", "claude-sonnet-4-5",
                                                             "anthropic")
    assert [(f.finish_reason, f.raw_finish_reason) for f in summary.finishes] == [(pb.FINISH_REASON_STOP, "end_turn")]
    assert summary.usage.input == pb.InputUsage(total=59, cache_read=7, cache_write_5m=10, cache_write_unknown_ttl=2,
                                                unattributed=40)
    assert summary.usage.output == pb.OutputUsage(total=8, reasoning=3, unattributed=5)
    assert not summary.usage.estimated


async def test_e2e_docs_stream_with_ping(claude, upstream):
    upstream.reply(Reply(events=[sse_body("stream_docs_basic.sse")]))

    deltas, summaries = await collect(claude.stub.StreamComplete(stream_request(user(text("Hello"))), timeout=10))

    assert "".join(d.text for d in deltas) == "Hello!"
    assert (summaries[0].usage.input.total, summaries[0].usage.output.total) == (25, 15)


def rich_details(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    metadata = dict(err.trailing_metadata() or ())
    return status_pb2.Status.FromString(metadata["grpc-status-details-bin"])


@pytest.mark.parametrize(
    "status, error_type, message, code",
    [
        (404, "not_found_error", "model: claude-nonexistent", Code.NOT_FOUND),
        (529, "overloaded_error", "Overloaded", Code.UNAVAILABLE),
        (400, "invalid_request_error", "max_tokens: must be greater than 0", Code.INVALID_ARGUMENT),
    ],
)
async def test_e2e_http_error_rows(claude, upstream, status, error_type, message, code):
    upstream.reply(Reply(status=status, body=error_body(error_type, message)))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await claude.stub.Complete(request(user(text("Hi"))), timeout=10)

    assert caught.value.code() == code
    assert caught.value.details() == f"anthropic: upstream returned HTTP {status}: {error_type}: {message}"


async def test_e2e_rate_limit_has_retry_info(claude, upstream):
    upstream.reply(Reply(status=429, body=error_body("rate_limit_error", "Too many requests"),
                         headers={"retry-after": "12"}))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await claude.stub.Complete(request(user(text("Hi"))), timeout=10)

    assert caught.value.code() == Code.RESOURCE_EXHAUSTED
    assert caught.value.details() == "anthropic: upstream returned HTTP 429: rate_limit_error: Too many requests"
    [info] = [d for d in rich_details(caught.value).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    retry = error_details_pb2.RetryInfo()
    info.Unpack(retry)
    assert retry.retry_delay.seconds == 12


async def test_e2e_stream_http_error(claude, upstream):
    upstream.reply(Reply(status=529, body=error_body("overloaded_error", "Overloaded")))

    call = claude.stub.StreamComplete(stream_request(user(text("Hi"))), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)

    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "anthropic: upstream returned HTTP 529: overloaded_error: Overloaded"


async def test_e2e_error_event_after_200(claude, upstream):
    start = sse_body("stream_docs_basic.sse").split(b"\n\n")[0] + b"\n\n"
    upstream.reply(Reply(events=[start, sse_body("stream_docs_error_event.sse")]))

    call = claude.stub.StreamComplete(stream_request(user(text("Hi"))), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)

    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "anthropic: upstream reported overloaded_error: Overloaded"


async def test_e2e_stream_ended_without_message_stop_is_truncated(claude, upstream):
    upstream.reply(Reply(events=[sse_body("stream_docs_basic.sse", drop="message_stop")]))

    call = claude.stub.StreamComplete(stream_request(user(text("Hi"))), timeout=10)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)

    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "anthropic: upstream stream ended before its final event (truncated)"
    # The text that arrived was delivered; a summary never is.
    assert [m.delta.text for m in received] == ["Hello", "!"]


async def test_e2e_stream_cut_mid_way_is_unavailable(claude, upstream):
    upstream.reply(Reply(events=[sse_body("stream_docs_basic.sse", drop="message_stop")], fault="cut"))

    call = claude.stub.StreamComplete(stream_request(user(text("Hi"))), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)

    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "anthropic: upstream closed the connection"


@pytest.mark.parametrize("kind, mime", [("audio", "audio/wav"), ("video", "video/mp4")])
async def test_e2e_audio_and_video_are_refused_before_any_network_call(claude, upstream, kind, mime):
    req = request(user(text("Listen"), pb.Part(**{kind: pb.Media(url=f"https://example.com/clip.{kind}",
                                                                  mime_type=mime)})))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await claude.stub.Complete(req, timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == f'messages[0].parts[1].{kind}: provider "anthropic" does not accept {kind} input'
    assert upstream.received == []


async def test_e2e_seed_is_refused_before_any_network_call(claude, upstream):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await claude.stub.Complete(request(user(text("Hi")), seed=42), timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == 'seed: provider "anthropic" does not support seed'
    assert upstream.received == []


async def test_e2e_without_key_names_the_variable(start_client, upstream):
    client = await start_client(anthropic_config(upstream), {})

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request(user(text("Hi"))), timeout=10)

    assert caught.value.code() == Code.FAILED_PRECONDITION
    assert caught.value.details() == "anthropic: provider is configured but has no API key (set ANTHROPIC_API_KEY)"
    assert upstream.received == []


async def test_e2e_list_models_reports_what_anthropic_accepts(claude):
    response = await claude.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    [info] = response.providers
    assert (info.name, info.kind) == ("anthropic", "anthropic")
    assert list(info.input_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_DOCUMENT]
    assert list(info.mime_types) == ["application/pdf", "image/gif", "image/jpeg", "image/png", "image/webp"]
