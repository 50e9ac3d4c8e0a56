"""The Gemini adapter: request translation, response / stream / error translation from
Google's published payloads (tests/fixtures/gemini/SOURCES.md), and end to end over gRPC
against a loopback upstream playing Gemini.

Every expected Usage is worked out by hand in the test, from the figures in the fixture.
"""

from __future__ import annotations

import base64
import json

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from httpx_sse import ServerSentEvent
from hypothesis import given
from hypothesis import strategies as st

from tests.support.gateway import FIXTURES, fixture_bytes, fixture_json
from tests.support.upstream import Reply
from tollway.providers.gemini import (
    DEFAULT_BASE_URL,
    FINISH_REASONS,
    create,
    reported_usage,
)
from tollway.service.errors import GatewayError
from tollway.service.plugins.adapter import (
    AUDIO,
    DOCUMENT,
    IMAGE,
    VIDEO,
    ProviderSettings,
)
from tollway.service.usage.normalize import normalize
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode
W = pb.UsageWarning

# Not a real key: a marker that must never leave the gateway except in its header.
GEMINI_TEST_KEY = "tw-test-gemini-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"
FILE_URI = "https://generativelanguage.googleapis.com/v1beta/files/x27lu0k9zc2k"
YOUTUBE_URL = "https://www.youtube.com/watch?v=9hE5-98ZeCg"
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
MP3_BYTES = b"ID3\x04\x00\x00\x00\x00\x00\x00"


def adapter(base_url: str = DEFAULT_BASE_URL):
    return create(ProviderSettings(name="gemini", kind="gemini", base_url=base_url, api_key=GEMINI_TEST_KEY))


def user(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=list(parts))


def request(*messages: pb.Message, **fields) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=f"gemini/{MODEL}", messages=list(messages), **fields)


def body_of(http_request: httpx.Request) -> dict:
    return json.loads(http_request.content)


def refusal(call) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call()
    return caught.value


def sse_events(relative: str) -> list[ServerSentEvent]:
    """The events of a recorded stream (LF or CRLF). One published file ends without the
    final blank line, so an unterminated last event is kept."""
    text = (FIXTURES / relative).read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for block in text.split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append(ServerSentEvent(data="\n".join(data)))
    return events


def decode_stream(relative: str, model: str = MODEL):
    """The decoder after the whole stream, and its text deltas (reasoning deltas left out)."""
    decoder = adapter().stream_decoder(request(user(pb.Part(text="hi"))), model)
    deltas = [m.delta for e in sse_events(relative) for m in decoder.feed(e) if m.HasField("delta")]
    return decoder, deltas


def parse(relative: str, model: str = MODEL) -> pb.CompleteResponse:
    a = adapter()
    req = request(user(pb.Part(text="hi")))
    http_request = a.build_request(req, model, stream=False)
    return a.parse_response(httpx.Response(200, content=fixture_bytes(relative), request=http_request), req, model)


def error_from(status: int, relative: str, headers: dict | None = None) -> GatewayError:
    a = adapter()
    http_request = a.build_request(request(user(pb.Part(text="hi"))), MODEL, stream=False)
    return a.parse_error(httpx.Response(status, content=fixture_bytes(relative), headers=headers, request=http_request))


# -- request translation ------------------------------------------------------------------


def test_text_request_is_exact():
    http_request = adapter().build_request(request(user(pb.Part(text="Hello"))), MODEL, stream=False)

    assert http_request.method == "POST"
    assert str(http_request.url) == f"{DEFAULT_BASE_URL}/models/{MODEL}:generateContent"
    assert http_request.headers["x-goog-api-key"] == GEMINI_TEST_KEY
    assert http_request.headers["content-type"] == "application/json"
    assert "authorization" not in http_request.headers
    # The key travels in the header only, never in the URL where access logs keep it.
    assert GEMINI_TEST_KEY not in str(http_request.url)
    assert body_of(http_request) == {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}


def test_stream_request_uses_sse_endpoint():
    http_request = adapter().build_request(request(user(pb.Part(text="Hello"))), MODEL, stream=True)

    assert str(http_request.url) == f"{DEFAULT_BASE_URL}/models/{MODEL}:streamGenerateContent?alt=sse"
    assert http_request.headers["accept"] == "text/event-stream"
    assert http_request.headers["x-goog-api-key"] == GEMINI_TEST_KEY
    assert body_of(http_request) == {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}


def test_model_prefix_and_odd_characters_stay_in_one_path_segment():
    a = adapter()
    prefixed = a.build_request(request(user(pb.Part(text="x"))), f"models/{MODEL}", stream=False)
    odd = a.build_request(request(user(pb.Part(text="x"))), "a/b?key=c", stream=False)

    assert str(prefixed.url) == f"{DEFAULT_BASE_URL}/models/{MODEL}:generateContent"
    assert str(odd.url) == f"{DEFAULT_BASE_URL}/models/a%2Fb%3Fkey%3Dc:generateContent"


def test_image_from_files_api_goes_as_file_data():
    message = user(
        pb.Part(text="Describe both."),
        pb.Part(image=pb.Media(url=FILE_URI, mime_type="image/png")),
        # Without a type: Gemini knows the type of its own files, so none is sent.
        pb.Part(image=pb.Media(url=FILE_URI)),
    )

    body = body_of(adapter().build_request(request(message), MODEL, stream=False))

    assert body == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Describe both."},
                    {"file_data": {"mime_type": "image/png", "file_uri": FILE_URI}},
                    {"file_data": {"file_uri": FILE_URI}},
                ],
            }
        ]
    }


def test_youtube_video_goes_as_file_data_without_a_type():
    body = body_of(adapter().build_request(request(user(pb.Part(video=pb.Media(url=YOUTUBE_URL)))), MODEL,
                                           stream=False))

    assert body["contents"][0]["parts"] == [{"file_data": {"file_uri": YOUTUBE_URL}}]


def test_other_url_without_a_type_is_refused_naming_the_field():
    message = user(pb.Part(text="x"), pb.Part(document=pb.Media(url="https://example.com/a.pdf")))

    err = refusal(lambda: adapter().build_request(request(message), MODEL, stream=False))

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == "messages[0].parts[1].document.mime_type: is required for this URL"


def test_image_bytes_go_as_inline_data():
    message = user(pb.Part(image=pb.Media(data=PNG_BYTES, mime_type="image/png")), pb.Part(text="What is this?"))

    body = body_of(adapter().build_request(request(message), MODEL, stream=False))

    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(PNG_BYTES).decode()}},
                {"text": "What is this?"},
            ],
        }
    ]


def test_audio_bytes_go_as_inline_data_with_geminis_spelling():
    # audio/mpeg is what sniffers and servers say for MP3; Gemini documents audio/mp3.
    message = user(pb.Part(audio=pb.Media(data=MP3_BYTES, mime_type="audio/mpeg")),
                   pb.Part(audio=pb.Media(data=b"RIFF....WAVE", mime_type="audio/wav")))

    body = body_of(adapter().build_request(request(message), MODEL, stream=False))

    assert body["contents"][0]["parts"] == [
        {"inline_data": {"mime_type": "audio/mp3", "data": base64.b64encode(MP3_BYTES).decode()}},
        {"inline_data": {"mime_type": "audio/wav", "data": base64.b64encode(b"RIFF....WAVE").decode()}},
    ]


def test_system_prompt_goes_to_system_instruction_and_assistant_is_model():
    messages = [
        pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="You are a cat."), pb.Part(text="Answer briefly.")]),
        user(pb.Part(text="Hello")),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text="Meow.")]),
        user(pb.Part(text="And?")),
    ]

    body = body_of(adapter().build_request(request(*messages), MODEL, stream=False))

    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Meow."}]},
            {"role": "user", "parts": [{"text": "And?"}]},
        ],
        "system_instruction": {"parts": [{"text": "You are a cat."}, {"text": "Answer briefly."}]},
    }


def test_all_parameters_go_to_generation_config():
    req = request(user(pb.Part(text="Hello")), max_tokens=256, temperature=0.7, top_p=0.9, seed=42,
                  stop=["END", "\n\n"])

    body = body_of(adapter().build_request(req, MODEL, stream=False))

    assert body["generationConfig"] == {
        "maxOutputTokens": 256,
        "temperature": 0.7,
        "topP": 0.9,
        "stopSequences": ["END", "\n\n"],
        "seed": 42,
    }


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(image=pb.Media(url=FILE_URI))]),
                 user(pb.Part(text="x"))),
         "messages[0].parts[0]: system messages take text parts only"),
        (request(pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="only a system prompt")])),
         'messages: provider "gemini" needs at least one user or assistant message'),
        (request(user(pb.Part(text="x")), stop=["a", "b", "c", "d", "e", "f"]),
         'stop: provider "gemini" accepts at most 5 stop sequences'),
        (request(user(pb.Part(text="x")), seed=2**31),
         'seed: provider "gemini" takes a 32-bit seed'),
    ],
    ids=["system-media", "system-only", "six-stops", "64-bit-seed"],
)
def test_requests_gemini_cannot_take_are_refused(req, message):
    err = refusal(lambda: adapter().build_request(req, MODEL, stream=False))

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == message


def test_capabilities_take_only_geminis_own_uris():
    caps = adapter().capabilities

    assert caps.url_modalities == frozenset()
    assert caps.takes_url(IMAGE, FILE_URI)
    assert caps.takes_url(DOCUMENT, FILE_URI)
    assert caps.takes_url(VIDEO, YOUTUBE_URL)
    assert caps.takes_url(VIDEO, "https://youtu.be/9hE5-98ZeCg")
    assert not caps.takes_url(IMAGE, YOUTUBE_URL)
    assert not caps.takes_url(IMAGE, "https://example.com/cat.png")
    assert not caps.takes_url(AUDIO, "https://generativelanguage.googleapis.com/v1beta/models/x")
    assert caps.mime_types[DOCUMENT] == frozenset({"application/pdf", "text/plain"})
    assert {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"} == caps.mime_types[IMAGE]


def test_every_finish_reason_of_the_enum_is_mapped():
    # Candidate.FinishReason in google/ai/generativelanguage/v1beta/generative_service.proto.
    enum = {"FINISH_REASON_UNSPECIFIED", "STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "LANGUAGE", "OTHER",
            "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MALFORMED_FUNCTION_CALL", "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT", "IMAGE_OTHER", "NO_IMAGE", "IMAGE_RECITATION", "UNEXPECTED_TOOL_CALL",
            "TOO_MANY_TOOL_CALLS"}
    assert set(FINISH_REASONS) == enum
    filtered = {k for k, v in FINISH_REASONS.items() if v == pb.FINISH_REASON_CONTENT_FILTER}
    assert filtered == {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                        "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE"}
    assert FINISH_REASONS["STOP"] == pb.FINISH_REASON_STOP
    assert FINISH_REASONS["MAX_TOKENS"] == pb.FINISH_REASON_LENGTH
    others = set(enum) - filtered - {"STOP", "MAX_TOKENS"}
    assert {FINISH_REASONS[k] for k in others} == {pb.FINISH_REASON_OTHER}


# -- unary responses from fixtures ---------------------------------------------------------


def test_basic_reply():
    response = parse("gemini/unary-basic-reply-short.json")

    assert (response.id, response.model, response.provider) == ("", "gemini-2.0-flash", "gemini")
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.message == pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(
        text="Google's headquarters, also known as the Googleplex, is located in **Mountain View, California**.\n")])
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_STOP, "STOP")
    # prompt 7 (TEXT 7); candidates 22 (TEXT 22); total 29 = 7 + 22.
    assert response.usage == pb.Usage(
        input=pb.InputUsage(total=7, text=7),
        output=pb.OutputUsage(total=22, text=22),
        total_tokens=29,
        provider_reported=pb.ProviderReportedUsage(total_tokens=29),
    )


def test_thinking_reply_bills_thoughts_and_returns_the_summary_as_reasoning():
    response = parse("gemini/unary-thinking-thought-summary.json")

    assert (response.id, response.model) == ("2pmHaJqQEoqC-8YP6eStyAY", "gemini-2.5-flash")
    # The thought summary part is reasoning, not answer text, and comes first as it did.
    thought = fixture_json("gemini/unary-thinking-thought-summary.json")["candidates"][0]["content"]["parts"][0]
    assert response.choices[0].message.parts == [pb.Part(reasoning=pb.Reasoning(text=thought["text"])),
                                                 pb.Part(text="Mountain View")]
    # prompt 14 (TEXT 14); candidates 2 + thoughts 24 = 26 output, and 14 + 26 = 40 is the
    # provider's total, so the thoughts were outside the candidates. No candidate details:
    # the 2 visible tokens are unattributed.
    assert response.usage == pb.Usage(
        input=pb.InputUsage(total=14, text=14),
        output=pb.OutputUsage(total=26, reasoning=24, unattributed=2),
        total_tokens=40,
        provider_reported=pb.ProviderReportedUsage(total_tokens=40),
    )


def test_explicit_cache_without_details():
    response = parse("gemini/unary-cached-content.json")

    # No modelVersion in this older payload: the requested model is reported.
    assert (response.id, response.model) == ("", MODEL)
    assert response.choices[0].message.parts[0].text.startswith("This is a transcript of the air-to-ground")
    # prompt 323388 includes the cached 323383, so 5 fresh tokens with no modality stated;
    # candidates 397 with no details; total 323785 = 323388 + 397.
    assert response.usage == pb.Usage(
        input=pb.InputUsage(total=323388, cache_read=323383, unattributed=5),
        output=pb.OutputUsage(total=397, unattributed=397),
        total_tokens=323785,
        provider_reported=pb.ProviderReportedUsage(total_tokens=323785),
    )


def test_implicit_cache_with_cache_details_and_thinking():
    response = parse("gemini/unary-implicit-caching.json")

    assert response.choices[0].message.parts == [
        pb.Part(text="Red Riding Hood is looking for **directions** in the forest.")]
    # prompt 12013 (TEXT 12013) of which cached 11243 (cacheTokensDetails TEXT 11243):
    # fresh text 12013 - 11243 = 770. Output 15 + 73 thoughts = 88; 12013 + 88 = 12101.
    assert response.usage == pb.Usage(
        input=pb.InputUsage(total=12013, text=770, cache_read=11243),
        output=pb.OutputUsage(total=88, reasoning=73, unattributed=15),
        total_tokens=12101,
        provider_reported=pb.ProviderReportedUsage(total_tokens=12101),
    )


def test_tool_use_prompt_tokens_are_added_to_input():
    response = parse("gemini/unary-url-context.json")

    assert response.id == "PHLAaNz8O9il1MkP7Jf08Aw"
    assert response.choices[0].message.parts[0].text.startswith("Berkshire Hathaway Inc.'s official website")
    # prompt 15 (TEXT) + tool-use prompt 424 (TEXT) = 439 input, all text; output
    # 102 candidates + 142 thoughts = 244; 439 + 244 = 683, the provider's total.
    assert response.usage == pb.Usage(
        input=pb.InputUsage(total=439, text=439),
        output=pb.OutputUsage(total=244, reasoning=142, unattributed=102),
        total_tokens=683,
        provider_reported=pb.ProviderReportedUsage(total_tokens=683, tool_use_prompt_tokens=424),
    )


def test_safety_finish_is_a_content_filter_and_keeps_the_text():
    response = parse("gemini/unary-failure-finish-reason-safety.json")

    choice = response.choices[0]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_CONTENT_FILTER, "SAFETY")
    assert choice.message.parts == [pb.Part(text="Safety error incoming in 5, 4, 3, 2...")]
    assert response.usage == pb.Usage(input=pb.InputUsage(total=7, text=7), output=pb.OutputUsage(total=20, text=20),
                                      total_tokens=27, provider_reported=pb.ProviderReportedUsage(total_tokens=27))


def test_blocked_prompt_is_invalid_argument_not_an_empty_ok():
    err = refusal(lambda: parse("gemini/unary-failure-only-prompt-feedback.json"))

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == 'messages: provider "gemini" blocked the prompt (no blockReason: Message)'


def test_response_without_candidates_or_feedback_is_unavailable():
    a = adapter()
    req = request(user(pb.Part(text="hi")))
    http_request = a.build_request(req, MODEL, stream=False)

    err = refusal(lambda: a.parse_response(httpx.Response(200, content=b'{"modelVersion": "x"}',
                                                          request=http_request), req, MODEL))

    assert err.code == Code.UNAVAILABLE
    assert err.message == "gemini: upstream answered with a response without candidates"


# -- usage rules not covered by a published payload ----------------------------------------


def test_modalities_and_per_modality_cache_reads():
    # Constructed to exercise every modality name and cacheTokensDetails per modality.
    usage = normalize(reported_usage({
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 600,
        "candidatesTokenCount": 50,
        "totalTokenCount": 1050,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 120}, {"modality": "IMAGE", "tokenCount": 516},
            {"modality": "AUDIO", "tokenCount": 300}, {"modality": "DOCUMENT", "tokenCount": 40},
            {"modality": "VIDEO", "tokenCount": 24},
        ],
        "cacheTokensDetails": [
            {"modality": "IMAGE", "tokenCount": 258}, {"modality": "AUDIO", "tokenCount": 300},
            {"modality": "TEXT", "tokenCount": 42},
        ],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 50}],
    }))

    # Fresh = stated - cached per modality: text 120-42, image 516-258, audio 300-300.
    assert usage.input == pb.InputUsage(total=1000, text=78, image=258, audio=0, video=24, document=40,
                                        cache_read=600)
    assert usage.output == pb.OutputUsage(total=50, text=50)
    assert list(usage.warnings) == []


def test_thoughts_inside_candidates_are_not_added_twice():
    # totalTokenCount 40 = prompt 10 + candidates 30: the 12 thoughts are inside the 30.
    usage = normalize(reported_usage({
        "promptTokenCount": 10, "candidatesTokenCount": 30, "thoughtsTokenCount": 12, "totalTokenCount": 40,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 30}],
    }))

    assert usage.output == pb.OutputUsage(total=30, reasoning=12, text=18)
    assert usage.total_tokens == 40
    assert list(usage.warnings) == [W.USAGE_WARNING_THOUGHTS_INCLUDED_IN_CANDIDATES]


def test_empty_cache_breakdown_is_no_breakdown():
    # An empty cacheTokensDetails list must not leave the cached tokens inside "text".
    usage = normalize(reported_usage({
        "promptTokenCount": 100, "cachedContentTokenCount": 80, "candidatesTokenCount": 5, "totalTokenCount": 105,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 100}], "cacheTokensDetails": [],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 5}],
    }))

    assert usage.input == pb.InputUsage(total=100, text=20, cache_read=80)
    assert list(usage.warnings) == []


def test_total_that_matches_neither_reading_is_flagged():
    usage = normalize(reported_usage({"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
                                      "totalTokenCount": 99}))

    assert usage.output == pb.OutputUsage(total=8, reasoning=3, unattributed=5)
    assert W.USAGE_WARNING_PROVIDER_TOTAL_MISMATCH in usage.warnings


_counts = st.integers(min_value=-5, max_value=10**7)
_details = st.lists(st.fixed_dictionaries({"modality": st.sampled_from(
    ["TEXT", "IMAGE", "AUDIO", "VIDEO", "DOCUMENT", "MODALITY_UNSPECIFIED"]), "tokenCount": _counts}), max_size=6)
_usage_metadata = st.fixed_dictionaries({}, optional={
    "promptTokenCount": _counts, "cachedContentTokenCount": _counts, "candidatesTokenCount": _counts,
    "toolUsePromptTokenCount": _counts, "thoughtsTokenCount": _counts, "totalTokenCount": _counts,
    "promptTokensDetails": _details, "cacheTokensDetails": _details, "candidatesTokensDetails": _details,
    "toolUsePromptTokensDetails": _details,
})


@given(_usage_metadata)
def test_any_usage_metadata_adds_up(u):
    usage = normalize(reported_usage(u))

    i, o = usage.input, usage.output
    assert min(i.total, i.text, i.image, i.audio, i.video, i.document, i.cache_read, i.unattributed) >= 0
    assert min(o.total, o.text, o.audio, o.image, o.reasoning, o.unattributed) >= 0
    assert i.total == (i.text + i.image + i.audio + i.video + i.document + i.cache_read + i.cache_write_5m
                       + i.cache_write_1h + i.cache_write_unknown_ttl + i.unattributed)
    assert o.total == o.text + o.audio + o.image + o.reasoning + o.unattributed
    assert usage.total_tokens == i.total + o.total


# -- streams from fixtures -------------------------------------------------------------------


def test_stream_basic_reply():
    decoder, deltas = decode_stream("gemini/streaming-basic-reply-short.sse")

    assert [(d.choice_index, d.text) for d in deltas] == [(0, "The"), (0, " capital of Wyoming"),
                                                          (0, " is **Cheyenne**.\n")]
    assert decoder.finished
    summary = decoder.summary()
    assert (summary.id, summary.model, summary.provider) == ("", "gemini-3.1-flash-lite", "gemini")
    assert list(summary.finishes) == [pb.ChoiceFinish(index=0, finish_reason=pb.FINISH_REASON_STOP,
                                                      raw_finish_reason="STOP")]
    # The last chunk's cumulative usage: prompt 7 (TEXT), candidates 10 (TEXT), total 17.
    assert summary.usage == pb.Usage(input=pb.InputUsage(total=7, text=7), output=pb.OutputUsage(total=10, text=10),
                                     total_tokens=17, provider_reported=pb.ProviderReportedUsage(total_tokens=17))


def test_stream_thinking_keeps_thoughts_out_of_the_text_and_keeps_the_last_usage():
    decoder, deltas = decode_stream("gemini/streaming-thinking-thought-summary.sse")

    assert [d.text for d in deltas] == [
        "The sky is blue because tiny gas molecules in Earth's atmosphere scatter blue light from the sun more "
        "efficiently than other colors.",
        " Blue light has shorter, smaller wavelengths, causing it to be scattered in all directions, making the sky "
        "appear blue to our eyes.",
    ]
    summary = decoder.summary()
    assert (summary.id, summary.model) == ("0J-HaJetAqv0jrEPwu-tsQ0", "gemini-2.5-flash")
    # Last chunk: prompt 10 (TEXT); candidates 48 + thoughts 540 = 588 output; 10 + 588 = 598.
    assert summary.usage == pb.Usage(
        input=pb.InputUsage(total=10, text=10),
        output=pb.OutputUsage(total=588, reasoning=540, unattributed=48),
        total_tokens=598,
        provider_reported=pb.ProviderReportedUsage(total_tokens=598),
    )


def test_stream_with_tool_use_prompt_tokens():
    decoder, deltas = decode_stream("gemini/streaming-url-context.sse")

    assert "".join(d.text for d in deltas).startswith("\nThe Google homepage primarily serves")
    summary = decoder.summary()
    # Last chunk: prompt 438 + tool-use 619 = 1057 text input; candidates 81 + thoughts 39
    # = 120 output; 1057 + 120 = 1177, the provider's total.
    assert summary.usage == pb.Usage(
        input=pb.InputUsage(total=1057, text=1057),
        output=pb.OutputUsage(total=120, reasoning=39, unattributed=81),
        total_tokens=1177,
        provider_reported=pb.ProviderReportedUsage(total_tokens=1177, tool_use_prompt_tokens=619),
    )


def test_stream_recitation_ends_with_a_content_filter():
    decoder, deltas = decode_stream("gemini/streaming-failure-recitation-no-content.sse")

    assert [d.text for d in deltas] == [f"text{i}" for i in range(1, 9)]
    summary = decoder.summary()
    assert list(summary.finishes) == [pb.ChoiceFinish(index=0, finish_reason=pb.FINISH_REASON_CONTENT_FILTER,
                                                      raw_finish_reason="RECITATION")]
    assert summary.usage == pb.Usage(input=pb.InputUsage(total=9, text=9), output=pb.OutputUsage(total=261, text=261),
                                     total_tokens=270, provider_reported=pb.ProviderReportedUsage(total_tokens=270))


def test_stream_prompt_blocked_midway_is_invalid_argument():
    decoder = adapter().stream_decoder(request(user(pb.Part(text="hi"))), MODEL)
    events = sse_events("gemini/streaming-failure-prompt-blocked-safety.sse")

    texts = [m.delta.text for e in events[:3] for m in decoder.feed(e)]
    err = refusal(lambda: decoder.feed(events[3]))

    assert texts == ["text1", "text2", "text3"]
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == 'messages: provider "gemini" blocked the prompt (blockReason SAFETY)'


def test_stream_without_finish_reason_is_not_finished():
    decoder = adapter().stream_decoder(request(user(pb.Part(text="hi"))), MODEL)
    for event in sse_events("gemini/streaming-basic-reply-short.sse")[:2]:
        list(decoder.feed(event))

    assert not decoder.finished
    # Figures so far are the provider's, but the stream never completed.
    assert decoder.summary().usage.estimated


def test_stream_error_event_keeps_the_provider_message():
    decoder = adapter().stream_decoder(request(user(pb.Part(text="hi"))), MODEL)
    event = ServerSentEvent(data=json.dumps(fixture_json("gemini/error-unknown-model.json")))

    err = refusal(lambda: decoder.feed(event))

    assert err.code == Code.NOT_FOUND
    assert err.message.startswith("gemini: upstream returned HTTP 404: NOT_FOUND: models/gemini-5.0-flash is not found")


# -- errors from fixtures --------------------------------------------------------------------


def test_unknown_model_is_not_found_with_the_message():
    err = error_from(404, "gemini/error-unknown-model.json")

    assert err.code == Code.NOT_FOUND
    assert err.message == (
        "gemini: upstream returned HTTP 404: NOT_FOUND: models/gemini-5.0-flash is not found for API version v1, "
        "or is not supported for generateContent. Call ListModels to see the list of available models and their "
        "supported methods."
    )


def test_invalid_key_is_the_gateways_problem_not_the_callers():
    err = error_from(400, "gemini/error-api-key.json")

    assert err.code == Code.FAILED_PRECONDITION
    assert err.message == "gemini: provider rejected the gateway's credentials (HTTP 400 API_KEY_INVALID)"
    assert err.http_status == 400


def test_quota_error_carries_retry_info_from_the_body():
    err = error_from(429, "gemini/error-quota-retry-info.json")

    assert err.code == Code.RESOURCE_EXHAUSTED
    assert err.retry_after == 26.0
    assert err.message == (
        "gemini: upstream returned HTTP 429: RESOURCE_EXHAUSTED: You exceeded your current quota, please check your "
        "plan and billing details. For more information on this error, head to: "
        "https://ai.google.dev/gemini-api/docs/rate-limits."
    )


def test_error_body_that_is_not_json():
    a = adapter()
    http_request = a.build_request(request(user(pb.Part(text="hi"))), MODEL, stream=False)

    err = a.parse_error(httpx.Response(502, content=b"<html>Bad Gateway</html>", request=http_request))

    assert err.code == Code.UNAVAILABLE
    assert err.message == ("gemini: upstream returned HTTP 502: the body is not JSON (an HTML error page or a "
                           "proxy's answer)")


def test_key_echoed_in_an_error_is_scrubbed():
    a = adapter()
    http_request = a.build_request(request(user(pb.Part(text="hi"))), MODEL, stream=False)
    body = {"error": {"code": 400, "message": f"bad request for key {GEMINI_TEST_KEY}", "status": "INVALID_ARGUMENT"}}

    err = a.parse_error(httpx.Response(400, json=body, request=http_request))

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == "gemini: upstream returned HTTP 400: INVALID_ARGUMENT: bad request for key [redacted]"


# -- end to end over gRPC ----------------------------------------------------------------------


def gemini_config(upstream) -> dict:
    return {"providers": {"gemini": {"base_url": f"{upstream.base_url}/v1beta"}}}


@pytest.fixture
async def gemini_client(start_client, upstream):
    return await start_client(gemini_config(upstream), {"GEMINI_API_KEY": GEMINI_TEST_KEY})


def e2e_fields() -> dict:
    return dict(
        model=f"gemini/{MODEL}",
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="Be brief.")]),
            user(pb.Part(text="Where is Google's headquarters?"), pb.Part(image=pb.Media(url=FILE_URI))),
        ],
        max_tokens=100,
    )


E2E_BODY = {
    "contents": [{"role": "user", "parts": [{"text": "Where is Google's headquarters?"},
                                            {"file_data": {"file_uri": FILE_URI}}]}],
    "system_instruction": {"parts": [{"text": "Be brief."}]},
    "generationConfig": {"maxOutputTokens": 100},
}


def stream_replay(relative: str, **reply) -> Reply:
    return Reply(events=[e.data for e in sse_events(relative)], **reply)


async def collect_stream(client, **fields) -> list[pb.StreamCompleteResponse]:
    return [m async for m in client.stub.StreamComplete(pb.StreamCompleteRequest(**(fields or e2e_fields())),
                                                        timeout=10)]


async def failing(client, kind: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind == "unary":
            await client.stub.Complete(pb.CompleteRequest(**e2e_fields()), timeout=10)
        else:
            await collect_stream(client)
    return caught.value


async def test_e2e_unary(gemini_client, upstream):
    upstream.reply(Reply(body=fixture_json("gemini/unary-implicit-caching.json")))

    response = await gemini_client.stub.Complete(pb.CompleteRequest(**e2e_fields()), timeout=10)

    got = upstream.received[0]
    assert (got.method, got.path, got.query) == ("POST", f"/v1beta/models/{MODEL}:generateContent", "")
    assert got.headers["x-goog-api-key"] == GEMINI_TEST_KEY
    assert "Authorization" not in got.headers
    assert got.json() == E2E_BODY
    assert response.provider == "gemini"
    assert response.choices[0].message.parts[0].text == "Red Riding Hood is looking for **directions** in the forest."
    assert response.usage.input == pb.InputUsage(total=12013, text=770, cache_read=11243)
    assert response.usage.output == pb.OutputUsage(total=88, reasoning=73, unattributed=15)
    assert response.usage.total_tokens == 12101


async def test_e2e_stream_with_crlf_events(gemini_client, upstream):
    upstream.reply(stream_replay("gemini/streaming-thinking-thought-summary.sse", newline="\r\n"))

    messages = await collect_stream(gemini_client)

    got = upstream.received[0]
    assert (got.path, got.query) == (f"/v1beta/models/{MODEL}:streamGenerateContent", "alt=sse")
    assert got.json() == E2E_BODY
    deltas = [m.delta for m in messages if m.HasField("delta")]
    # The two answer parts, whole; one read may bring both as one delta (merge_stream_deltas).
    text = "".join(d.text for d in deltas)
    assert text.startswith("The sky is blue because tiny gas molecules") and " Blue light has shorter" in text
    assert 1 <= len(deltas) <= 2 and all(d.choice_index == 0 for d in deltas)
    summary = messages[-1].summary
    assert summary.finishes[0].finish_reason == pb.FINISH_REASON_STOP
    assert summary.usage.output == pb.OutputUsage(total=588, reasoning=540, unattributed=48)
    assert summary.usage.total_tokens == 598
    assert not summary.usage.estimated


@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_e2e_unknown_model_is_not_found(gemini_client, upstream, kind):
    upstream.reply(Reply(status=404, body=fixture_json("gemini/error-unknown-model.json")))

    error = await failing(gemini_client, kind)

    assert error.code() == Code.NOT_FOUND
    assert error.details().startswith("gemini: upstream returned HTTP 404: NOT_FOUND: models/gemini-5.0-flash is not")


@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_e2e_quota_429_carries_retry_info(gemini_client, upstream, kind):
    upstream.reply(Reply(status=429, body=fixture_json("gemini/error-quota-retry-info.json")))

    error = await failing(gemini_client, kind)

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details().startswith("gemini: upstream returned HTTP 429: RESOURCE_EXHAUSTED: You exceeded your")
    status = rpc_status.from_call(error)
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (26, 0)


async def test_e2e_invalid_key_never_reaches_the_caller(gemini_client, upstream):
    upstream.reply(Reply(status=400, body=fixture_json("gemini/error-api-key.json")))

    error = await failing(gemini_client, "unary")

    assert error.code() == Code.FAILED_PRECONDITION
    assert error.details() == "gemini: provider rejected the gateway's credentials (HTTP 400 API_KEY_INVALID)"
    assert GEMINI_TEST_KEY not in error.details()


@pytest.mark.parametrize("fault", [None, "cut"], ids=["clean-eof", "connection-cut"])
async def test_e2e_stream_ending_before_a_finish_reason_is_unavailable(gemini_client, upstream, fault):
    events = [e.data for e in sse_events("gemini/streaming-basic-reply-short.sse")[:2]]
    upstream.reply(Reply(events=events, fault=fault))

    error = await failing(gemini_client, "stream")

    assert error.code() == Code.UNAVAILABLE
    expected = {None: "gemini: upstream stream ended before its final event (truncated)",
                "cut": "gemini: upstream closed the connection"}[fault]
    assert error.details() == expected


async def test_e2e_blocked_prompt_is_invalid_argument(gemini_client, upstream):
    upstream.reply(Reply(body=fixture_json("gemini/unary-failure-only-prompt-feedback.json")))

    error = await failing(gemini_client, "unary")

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == 'messages: provider "gemini" blocked the prompt (no blockReason: Message)'


async def test_e2e_web_image_url_is_fetched_and_sent_inline(start_client, upstream):
    config = {**gemini_config(upstream), "media": {"allow_networks": ["127.0.0.0/8"]}}
    client = await start_client(config, {"GEMINI_API_KEY": GEMINI_TEST_KEY})
    upstream.reply(Reply(body=PNG_BYTES, headers={"content-type": "image/png"}),
                   Reply(body=fixture_json("gemini/unary-basic-reply-short.json")))
    fields = e2e_fields()
    fields["messages"] = [user(pb.Part(text="x"), pb.Part(image=pb.Media(url=f"{upstream.base_url}/cat.png")))]

    await client.stub.Complete(pb.CompleteRequest(**fields), timeout=10)

    fetch, call = upstream.received
    assert (fetch.method, fetch.path) == ("GET", "/cat.png")
    assert GEMINI_TEST_KEY not in str(fetch.headers)
    assert call.json()["contents"][0]["parts"] == [
        {"text": "x"}, {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(PNG_BYTES).decode()}}]


async def test_e2e_image_type_gemini_does_not_take_is_refused_before_any_call(gemini_client, upstream):
    fields = e2e_fields()
    fields["messages"] = [user(pb.Part(text="x"), pb.Part(image=pb.Media(url="https://example.com/cat.png",
                                                                           mime_type="image/gif")))]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gemini_client.stub.Complete(pb.CompleteRequest(**fields), timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details().startswith('messages[0].parts[1].image.mime_type: provider "gemini" does not accept '
                                             "image/gif")
    assert upstream.received == []


async def test_e2e_list_models_reports_geminis_modalities(gemini_client):
    response = await gemini_client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    (info,) = [p for p in response.providers if p.name == "gemini"]
    assert info.kind == "gemini"
    assert list(info.input_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_AUDIO,
                                           pb.MODALITY_VIDEO, pb.MODALITY_DOCUMENT]
    assert "application/pdf" in info.mime_types and "video/mp4" in info.mime_types
