"""The openai provider: the exact JSON OpenAI receives, responses, streams and errors from
recorded payloads (no network), then end to end over gRPC against a loopback upstream.

Every expected Usage is worked out by hand from the payload, by USAGE.md: OpenAI's
prompt_tokens includes cached, audio, text and image tokens; completion_tokens includes
reasoning, audio and rejected prediction tokens.
"""

from __future__ import annotations

import json

import grpc
import orjson
import pytest

from tests.support.adapters import (  # noqa: F401
    FIXTURES,
    MP3,  # noqa: F401
    OPENAI_TEST_KEY,
    PDF,
    PNG,
    WAV,
    W,
    assert_buckets_add_up,
    b64,
    build_json,
    decode_stream,
    fixture_text,
    respond,
    settings,
    sse_events,
    user,
)
from tests.support.upstream import FakeUpstream, Reply
from tollway.providers import openai as openai_provider
from tollway.providers.openai_codec import reported_usage
from tollway.service.config.loader import ConfigError, parse_config
from tollway.service.errors import GatewayError
from tollway.service.plugins.loader import load_provider_kinds
from tollway.service.plugins.registry import build_registry
from tollway.service.usage.normalize import normalize
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode


# Incomplete breakdowns: OpenAI states no text_tokens for plain chat, so fresh input and
# visible output are unattributed (USAGE.md rule 1: never invent a modality).


# -- helpers shared with test_openai_compatible ------------------------------------------


















ADAPTER = openai_provider.create(settings())




# -- request translation -----------------------------------------------------------------


def test_text_with_system_prompt_and_parameters_is_sent_exactly():
    request = pb.CompleteRequest(
        model="openai/gpt-4.1",
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="You are a helpful assistant.")]),
            user(pb.Part(text="Hello!")),
            pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text="Hi. "), pb.Part(text="What now?")]),
            user(pb.Part(text="Say it twice.")),
        ],
        max_tokens=256, temperature=0.2, top_p=0.9, seed=7, stop=["END"],
    )

    http_request = ADAPTER.build_request(request, "gpt-4.1", stream=False)

    assert http_request.method == "POST"
    assert str(http_request.url) == "https://api.openai.com/v1/chat/completions"
    assert http_request.headers["authorization"] == f"Bearer {OPENAI_TEST_KEY}"
    assert http_request.headers["content-type"] == "application/json"
    assert json.loads(http_request.content) == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Hello!"}]},
            {"role": "assistant", "content": "Hi. What now?"},
            {"role": "user", "content": [{"type": "text", "text": "Say it twice."}]},
        ],
        # OpenAI deprecated max_tokens; reasoning models refuse it.
        "max_completion_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END"],
        "stream": False,
    }


def test_stream_asks_for_usage():
    request = pb.StreamCompleteRequest(model="openai/gpt-4.1", messages=[user(pb.Part(text="hi"))])

    http_request = ADAPTER.build_request(request, "gpt-4.1", stream=True)

    assert http_request.headers["accept"] == "text/event-stream"
    assert json.loads(http_request.content) == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_image_url_and_image_bytes():
    request = pb.CompleteRequest(messages=[user(
        pb.Part(text="Compare these."),
        pb.Part(image=pb.Media(url="https://example.com/a.jpg")),
        pb.Part(image=pb.Media(data=PNG, mime_type="image/png")),
    )])

    assert build_json(ADAPTER, request)["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
    ]


@pytest.mark.parametrize(("data", "mime", "fmt"), [(WAV, "audio/wav", "wav"), (MP3, "audio/mpeg", "mp3")])
def test_audio_bytes_go_as_input_audio(data, mime, fmt):
    request = pb.CompleteRequest(messages=[user(pb.Part(text="Transcribe."),
                                                pb.Part(audio=pb.Media(data=data, mime_type=mime)))])

    assert build_json(ADAPTER, request)["messages"][0]["content"] == [
        {"type": "text", "text": "Transcribe."},
        {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}},
    ]


def test_pdf_goes_as_a_file_part():
    request = pb.CompleteRequest(messages=[user(pb.Part(text="Summarize."),
                                                pb.Part(document=pb.Media(data=PDF, mime_type="application/pdf")))])

    assert build_json(ADAPTER, request)["messages"][0]["content"] == [
        {"type": "text", "text": "Summarize."},
        {"type": "file", "file": {"filename": "document-0-1.pdf",
                                  "file_data": f"data:application/pdf;base64,{b64(PDF)}"}},
    ]


def test_audio_url_never_reaches_openai_as_a_url():
    # The gateway inlines URL audio before the adapter runs (audio is outside url_modalities);
    # should one get here anyway it is refused, never sent or dropped.
    request = pb.CompleteRequest(messages=[user(pb.Part(audio=pb.Media(url="https://example.com/a.wav")))])

    with pytest.raises(GatewayError) as caught:
        ADAPTER.build_request(request, "gpt-4o-audio-preview", stream=False)

    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message == "messages[0].parts[0].audio.url: this provider takes audio as bytes only"


def test_media_in_an_assistant_turn_is_refused():
    request = pb.CompleteRequest(messages=[
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(image=pb.Media(url="https://example.com/a.png"))]),
    ])

    with pytest.raises(GatewayError) as caught:
        ADAPTER.build_request(request, "gpt-4.1", stream=False)

    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message == ("messages[0].parts[0]: assistant messages take text, tool_call and reasoning parts "
                                    "only in the OpenAI format")


def test_capabilities_name_what_openai_takes():
    caps = ADAPTER.capabilities
    assert caps.modalities == {pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_AUDIO, pb.MODALITY_DOCUMENT}
    assert caps.mime_types[pb.MODALITY_AUDIO] == {"audio/wav", "audio/mpeg"}
    assert caps.mime_types[pb.MODALITY_DOCUMENT] == {"application/pdf"}
    # Only images go by URL: URL audio and documents are fetched by the gateway.
    assert caps.url_modalities == {pb.MODALITY_IMAGE}


def test_unknown_option_is_refused_by_name():
    config = parse_config({"providers": {"openai": {"max_tokens_field": "max_tokens"}}})

    with pytest.raises(ConfigError) as caught:
        build_registry(config, load_provider_kinds(), {"OPENAI_API_KEY": OPENAI_TEST_KEY})

    assert str(caught.value) == "providers.openai: unknown option(s) for kind openai: max_tokens_field (known: none)"


# -- response translation ----------------------------------------------------------------


HI = pb.CompleteRequest(messages=[user(pb.Part(text="hi"))])


def parse_fixture(name: str) -> pb.CompleteResponse:
    http_request = ADAPTER.build_request(HI, "gpt-4.1", stream=False)
    return ADAPTER.parse_response(respond(http_request, 200, (FIXTURES / name).read_bytes()), HI, "gpt-4.1")


def test_text_completion():
    response = parse_fixture("openai/chat_completion.json")

    assert (response.id, response.model, response.provider) == (
        "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "gpt-4.1-2025-04-14", "openai")
    assert response.created.seconds == 1741569952
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.message == pb.Message(role=pb.ROLE_ASSISTANT,
                                        parts=[pb.Part(text="Hello! How can I assist you today?")])
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_STOP, "stop")
    usage = response.usage
    # 19 prompt tokens: none cached, no modality stated (audio_tokens 0 is "none").
    assert usage.input == pb.InputUsage(total=19, unattributed=19)
    # 10 completion tokens, no reasoning, no modality stated.
    assert usage.output == pb.OutputUsage(total=10, unattributed=10)
    assert usage.total_tokens == 29
    assert list(usage.warnings) == []
    assert not usage.estimated
    assert usage.provider_reported == pb.ProviderReportedUsage(
        total_tokens=29, accepted_prediction_tokens=0, rejected_prediction_tokens=0)
    assert_buckets_add_up(usage)


def test_tool_call_completion_has_no_text():
    response = parse_fixture("openai/chat_completion_tool_calls.json")

    choice = response.choices[0]
    # content null: the call is the only part (tests/providers/test_openai_tools.py has it in detail).
    assert [p.WhichOneof("content") for p in choice.message.parts] == ["tool_call"]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "tool_calls")
    assert response.usage.input == pb.InputUsage(total=60, unattributed=60)
    assert response.usage.output == pb.OutputUsage(total=15, unattributed=15)
    assert response.usage.total_tokens == 75


def test_audio_model_states_every_modality():
    response = parse_fixture("openai/chat_completion_audio_output.json")

    # prompt 8 = text 8; completion 54 = audio 37 + text 17: both breakdowns complete.
    usage = response.usage
    assert usage.input == pb.InputUsage(total=8, text=8)
    assert usage.output == pb.OutputUsage(total=54, text=17, audio=37)
    assert usage.total_tokens == 62
    assert list(usage.warnings) == []
    assert usage.provider_reported.total_tokens == 62
    assert_buckets_add_up(usage)


def normalized_usage_fixture(name: str, model: str = "gpt-4o") -> pb.Usage:
    return normalize(reported_usage(json.loads(fixture_text(name)), model, openai_provider.DIALECT))


def test_prompt_caching_usage():
    usage = normalized_usage_fixture("openai/usage_prompt_caching.json")

    # prompt_tokens 2006 includes the 1920 cache reads: 86 fresh tokens, modality unstated.
    assert usage.input == pb.InputUsage(total=2006, cache_read=1920, unattributed=86)
    assert usage.output == pb.OutputUsage(total=300, unattributed=300)
    assert usage.total_tokens == 2306
    assert list(usage.warnings) == []
    assert_buckets_add_up(usage)


def test_predicted_outputs_usage():
    usage = normalized_usage_fixture("openai/usage_predicted_outputs.json")

    assert usage.input == pb.InputUsage(total=166, unattributed=166)
    # completion_tokens 226 include the 107 rejected prediction tokens, billed as output
    # and in no modality: all 226 are unattributed; audio_tokens null states nothing.
    assert usage.output == pb.OutputUsage(total=226, unattributed=226)
    assert usage.total_tokens == 392
    assert usage.provider_reported == pb.ProviderReportedUsage(
        total_tokens=392, accepted_prediction_tokens=49, rejected_prediction_tokens=107)
    assert list(usage.warnings) == []


def test_body_that_is_not_json_is_unavailable():
    http_request = ADAPTER.build_request(HI, "gpt-4.1", stream=False)

    with pytest.raises(GatewayError) as caught:
        ADAPTER.parse_response(respond(http_request, 200, b"<html>502 Bad Gateway</html>"), HI, "gpt-4.1")

    assert caught.value.code == Code.UNAVAILABLE
    assert caught.value.message == "openai: upstream answered with a body that is not JSON"


# -- stream translation ------------------------------------------------------------------

STREAM_REQUEST = pb.StreamCompleteRequest(model="openai/gpt-4o",
                                         messages=[user(pb.Part(text="What's the weather like in SF?"))])


def test_stream_with_include_usage():
    texts, summary = decode_stream(ADAPTER, fixture_text("openai/stream_include_usage.sse"), STREAM_REQUEST, "gpt-4o")

    assert texts == {0: "I'm unable to provide real-time updates, including current weather information. For the "
                        "latest weather in San Francisco, I recommend checking a reliable weather website or app such "
                        "as the Weather Channel, BBC Weather, or a local San Francisco news station."}
    assert (summary.id, summary.model, summary.provider) == ("chatcmpl-9tXjg9DdaOfymTPDrSLfxslQEH0C2",
                                                             "gpt-4o-2024-08-06", "openai")
    assert summary.created.seconds == 1723024748
    assert list(summary.finishes) == [
        pb.ChoiceFinish(index=0, finish_reason=pb.FINISH_REASON_STOP, raw_finish_reason="stop")]
    # The usage chunk (choices: []) states only the three totals.
    assert summary.usage.input == pb.InputUsage(total=14, unattributed=14)
    assert summary.usage.output == pb.OutputUsage(total=47, unattributed=47)
    assert summary.usage.total_tokens == 61
    assert list(summary.usage.warnings) == []
    assert not summary.usage.estimated
    # No completion_tokens_details at all: no prediction figures are claimed.
    assert summary.usage.provider_reported == pb.ProviderReportedUsage(total_tokens=61)


def test_tool_call_stream():
    texts, summary = decode_stream(ADAPTER, fixture_text("openai/stream_tool_calls.sse"), STREAM_REQUEST, "gpt-4.1")

    # Tool-call deltas only: decode_stream counts each as empty text of choice 0.
    assert "".join(texts.values()) == ""
    assert [f.raw_finish_reason for f in summary.finishes] == ["tool_calls"]
    assert summary.finishes[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert summary.usage.input == pb.InputUsage(total=60, unattributed=60)
    assert summary.usage.output == pb.OutputUsage(total=15, unattributed=15)
    assert summary.usage.provider_reported.rejected_prediction_tokens == 0


def test_reasoning_model_stream():
    texts, summary = decode_stream(ADAPTER, fixture_text("openai/stream_reasoning.sse"), STREAM_REQUEST, "gpt-5-nano")

    assert texts == {0: "Capital of Denmark."}
    # The first chunk (content-filter results) has an empty id and model; the next names them.
    assert (summary.id, summary.model) == ("chatcmpl-CYPS1lijGoK8gd9lYzY3r9Sx50nbt", "gpt-5-nano-2025-08-07")
    assert summary.created.seconds == 1762317021
    # completion_tokens 78 include the 64 reasoning tokens (78 + 15 = 93, the stated total).
    assert summary.usage.input == pb.InputUsage(total=15, unattributed=15)
    assert summary.usage.output == pb.OutputUsage(total=78, reasoning=64, unattributed=14)
    assert summary.usage.total_tokens == 93
    assert W.USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION not in summary.usage.warnings
    assert list(summary.usage.warnings) == []


def test_stream_that_breaks_off_with_an_error_event():
    decoder = ADAPTER.stream_decoder(STREAM_REQUEST, "gpt-4.1")
    events = sse_events(fixture_text("openai/stream_error.sse"))
    texts = []
    with pytest.raises(GatewayError) as caught:
        for event in events:
            texts.extend(m.delta.text for m in decoder.feed(event))

    assert "".join(texts) == 'The question "'
    assert caught.value.code == Code.UNAVAILABLE
    assert caught.value.message == ("openai: upstream answered with an error: The server had an error while processing "
                                    "your request. Sorry about that!")
    assert not decoder.finished


# -- error translation -------------------------------------------------------------------


def error_for(status: int, body: bytes, headers: dict | None = None) -> GatewayError:
    http_request = ADAPTER.build_request(HI, "gpt-4.1", stream=False)
    return ADAPTER.parse_error(respond(http_request, status, body, headers))


def test_server_error_body_keeps_openais_message():
    error = error_for(500, (FIXTURES / "openai/error_server_error.json").read_bytes())

    assert error.code == Code.UNAVAILABLE
    assert error.message == ("openai: upstream returned HTTP 500: The server had an error while processing your "
                             "request. Sorry about that!")


def test_rate_limit_carries_retry_after():
    body = orjson.dumps({"error": {"message": "Rate limit reached for gpt-4.1 in organization org-x on tokens per min.",
                                   "type": "tokens", "param": None, "code": "rate_limit_exceeded"}})
    error = error_for(429, body, {"retry-after": "20"})

    assert error.code == Code.RESOURCE_EXHAUSTED
    assert error.message == ("openai: upstream returned HTTP 429: Rate limit reached for gpt-4.1 in organization org-x "
                             "on tokens per min.")
    assert error.retry_after == 20.0


def test_bad_key_names_no_key():
    body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {OPENAI_TEST_KEY}.",
                                   "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
    error = error_for(401, body)

    assert error.code == Code.FAILED_PRECONDITION
    assert error.message == "openai: provider rejected the gateway's credentials (HTTP 401)"


# -- end to end over gRPC ----------------------------------------------------------------


def openai_config(upstream: FakeUpstream, **extra) -> dict:
    return {"plugins": {"allow": ["openai"]},
            "providers": {"openai": {"base_url": f"{upstream.base_url}/v1", **extra}}}


@pytest.fixture
async def openai_client(start_client, upstream):
    return await start_client(openai_config(upstream), {"OPENAI_API_KEY": OPENAI_TEST_KEY})


async def test_unary_end_to_end(openai_client, upstream):
    upstream.reply(Reply(body=(FIXTURES / "openai/chat_completion.json").read_bytes()))
    request = pb.CompleteRequest(
        model="openai/gpt-4.1",
        messages=[pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="You are a helpful assistant.")]),
                  user(pb.Part(text="Hello!"), pb.Part(audio=pb.Media(data=WAV, mime_type="audio/wav")))],
        max_tokens=100,
    )

    response = await openai_client.stub.Complete(request, timeout=10)

    got = upstream.received[0]
    assert (got.method, got.path) == ("POST", "/v1/chat/completions")
    assert got.headers["Authorization"] == f"Bearer {OPENAI_TEST_KEY}"
    assert got.json() == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Hello!"},
                                         {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}]},
        ],
        "max_completion_tokens": 100,
        "stream": False,
    }
    assert response.provider == "openai"
    assert response.choices[0].message.parts[0].text == "Hello! How can I assist you today?"
    assert response.usage.input == pb.InputUsage(total=19, unattributed=19)
    assert response.usage.output == pb.OutputUsage(total=10, unattributed=10)


async def test_stream_end_to_end(openai_client, upstream):
    upstream.reply(Reply(events=[(FIXTURES / "openai/stream_reasoning.sse").read_bytes()]))

    call = openai_client.stub.StreamComplete(
        pb.StreamCompleteRequest(model="openai/gpt-5-nano", messages=[user(pb.Part(text="Capital of Denmark?"))]),
        timeout=10)
    messages = [m async for m in call]

    assert await call.code() == grpc.StatusCode.OK
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "Capital of Denmark."
    summary = messages[-1].summary
    assert summary.usage.output == pb.OutputUsage(total=78, reasoning=64, unattributed=14)
    assert upstream.received[0].json()["stream_options"] == {"include_usage": True}


async def test_url_audio_is_fetched_by_the_gateway_and_sent_as_input_audio(start_client, upstream):
    media_host = await FakeUpstream().start()
    try:
        client = await start_client({**openai_config(upstream), "media": {"allow_networks": ["127.0.0.0/8"]}},
                                    {"OPENAI_API_KEY": OPENAI_TEST_KEY})
        media_host.reply(Reply(body=WAV, headers={"content-type": "audio/wav"}))
        upstream.reply(Reply(body=(FIXTURES / "openai/chat_completion.json").read_bytes()))

        await client.stub.Complete(pb.CompleteRequest(
            model="openai/gpt-4o-audio-preview",
            messages=[user(pb.Part(text="What is said?"), pb.Part(audio=pb.Media(url=f"{media_host.base_url}/a.wav")))],
        ), timeout=10)

        assert media_host.received[0].path == "/a.wav"
        assert upstream.received[0].json()["messages"][0]["content"][1] == {
            "type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}
    finally:
        await media_host.stop()


async def test_invalid_request_end_to_end(openai_client, upstream):
    # A status no retry can fix: one upstream answer decides the outcome.
    message = ("This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 "
               "tokens. Please reduce the length of the messages.")
    upstream.reply(Reply(status=400, body={"error": {"message": message, "type": "invalid_request_error",
                                                     "param": "messages", "code": "context_length_exceeded"}}))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await openai_client.stub.Complete(
            pb.CompleteRequest(model="openai/gpt-4.1", messages=[user(pb.Part(text="hi"))]), timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == f"openai: upstream returned HTTP 400: {message}"
    assert len(upstream.received) == 1


async def test_error_event_mid_stream_end_to_end(openai_client, upstream):
    upstream.reply(Reply(events=[(FIXTURES / "openai/stream_error.sse").read_bytes()]))

    call = openai_client.stub.StreamComplete(
        pb.StreamCompleteRequest(model="openai/gpt-4.1", messages=[user(pb.Part(text="angels on a pin?"))]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass

    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == ("openai: upstream answered with an error: The server had an error while "
                                      "processing your request. Sorry about that!")


async def test_video_is_refused_before_any_network_call(openai_client, upstream):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await openai_client.stub.Complete(pb.CompleteRequest(
            model="openai/gpt-4o",
            messages=[user(pb.Part(video=pb.Media(data=b"\x00\x00\x00\x18ftypmp42", mime_type="video/mp4")))],
        ), timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == 'messages[0].parts[0].video: provider "openai" does not accept video input'
    assert upstream.received == []


async def test_list_models_reports_openais_modalities(openai_client):
    response = await openai_client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    info = {p.name: p for p in response.providers}["openai"]
    assert info.kind == "openai"
    assert list(info.input_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_AUDIO, pb.MODALITY_DOCUMENT]
    assert "audio/wav" in info.mime_types and "application/pdf" in info.mime_types
