"""The openai_compatible provider: typed options per instance, the JSON each server gets,
responses and streams recorded from xAI, Mistral and Ollama (no network), and several
named instances end to end over gRPC, keyed and keyless.

Expected usage is worked out by hand from each payload per USAGE.md, including the quirks
of such servers: reasoning outside completion_tokens (proved by total_tokens), no usage
at all (estimated), content as a list of typed parts.
"""

from __future__ import annotations

import json

import grpc
import pytest

from tests.support.adapters import (
    FIXTURES,
    MP3,
    PDF,
    PNG,
    WAV,
    assert_buckets_add_up,
    b64,
    build_json,
    decode_stream,
    fixture_text,
    respond,
    settings,
    user,
)
from tests.support.upstream import Reply
from tollway.providers import openai_compatible
from tollway.providers.openai_codec import reported_usage
from tollway.providers.openai_compatible import CompatibleOptions
from tollway.service.config.loader import _PROVIDER_KEYS, ConfigError, parse_config
from tollway.service.errors import GatewayError
from tollway.service.plugins.loader import load_provider_kinds
from tollway.service.plugins.registry import build_registry
from tollway.service.usage.estimate import answer_bytes, estimated_usage
from tollway.service.usage.normalize import normalize
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning
Code = grpc.StatusCode

VLLM_TEST_KEY = "tw-test-vllm-key-0123456789abcdef"
# What an unknown-option refusal lists: the keys every provider table takes, then the kind's own.
KNOWN_OPTIONS = ", ".join(sorted(_PROVIDER_KEYS | load_provider_kinds()["openai_compatible"].options))


def adapter(**options):
    return openai_compatible.create(settings(name="local", kind="openai_compatible",
                                             base_url="http://127.0.0.1:8080/v1", api_key=None, **options))


# -- options -----------------------------------------------------------------------------


def test_defaults_take_images_and_send_max_tokens():
    options = CompatibleOptions.parse({})

    assert options == CompatibleOptions(max_tokens_field="max_tokens", modalities=("image",), audio_style="input_audio")
    caps = options.capabilities()
    assert caps.modalities == {pb.MODALITY_TEXT, pb.MODALITY_IMAGE}
    assert caps.url_modalities == {pb.MODALITY_IMAGE}


def test_every_modality_with_audio_by_url():
    caps = CompatibleOptions.parse({"modalities": ["video", "audio", "image", "document"],
                                    "audio_style": "audio_url"}).capabilities()

    assert caps.modalities == {pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_AUDIO, pb.MODALITY_VIDEO,
                               pb.MODALITY_DOCUMENT}
    # Documents are sent as bytes only, so the gateway fetches their URLs.
    assert caps.url_modalities == {pb.MODALITY_IMAGE, pb.MODALITY_AUDIO, pb.MODALITY_VIDEO}
    assert "audio/ogg" in caps.mime_types[pb.MODALITY_AUDIO]


def test_input_audio_takes_wav_and_mp3_as_bytes():
    caps = CompatibleOptions.parse({"modalities": ["audio"]}).capabilities()

    assert caps.mime_types[pb.MODALITY_AUDIO] == {"audio/wav", "audio/mpeg"}
    assert caps.url_modalities == set()


def test_an_unknown_option_is_refused_by_name_before_the_kind_sees_it():
    config = parse_config({"providers": {"local": {"kind": "openai_compatible", "base_url": "http://127.0.0.1:9",
                                                   "max_token_field": "max_tokens"}}})

    with pytest.raises(ConfigError) as caught:
        build_registry(config, load_provider_kinds(), {})

    assert str(caught.value) == ("providers.local: unknown option(s) for kind openai_compatible: max_token_field "
                                 f"(did you mean max_tokens_field?) (known: {KNOWN_OPTIONS})")


@pytest.mark.parametrize(("options", "message"), [
    ({"max_tokens_field": "maxTokens"}, "option max_tokens_field must be \"max_tokens\" or \"max_completion_tokens\", "
                                        "not 'maxTokens'"),
    ({"modalities": "image"}, "option modalities must be a list of strings"),
    ({"modalities": ["image", "pdf"]},
     "option modalities: unknown modality 'pdf' (known: image, audio, video, document)"),
    ({"modalities": ["audio"], "audio_style": "base64"}, "option audio_style must be \"input_audio\" or \"audio_url\", "
                                                         "not 'base64'"),
    ({"audio_style": "audio_url"}, 'option audio_style is set but modalities does not include "audio"'),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError) as caught:
        CompatibleOptions.parse(options)

    assert str(caught.value) == message


# -- request translation -----------------------------------------------------------------


def test_text_and_parameters_with_the_default_max_tokens_field():
    request = pb.CompleteRequest(
        messages=[pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="Be brief.")]), user(pb.Part(text="Hi"))],
        max_tokens=64, temperature=0.0, stop=["\n\n"],
    )

    http_request = adapter().build_request(request, "Qwen/Qwen3-8B", stream=False)

    assert str(http_request.url) == "http://127.0.0.1:8080/v1/chat/completions"
    # No key: no Authorization header at all (an empty Bearer makes some servers answer 401).
    assert "authorization" not in http_request.headers
    assert json.loads(http_request.content) == {
        "model": "Qwen/Qwen3-8B",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 64,
        # 0.0 is set, not "unset".
        "temperature": 0.0,
        "stop": ["\n\n"],
        "stream": False,
    }


def test_max_completion_tokens_when_the_server_wants_it():
    request = pb.CompleteRequest(messages=[user(pb.Part(text="Hi"))], max_tokens=64)

    body = build_json(adapter(max_tokens_field="max_completion_tokens"), request)

    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


def test_media_parts_per_modality_and_audio_style():
    request = pb.CompleteRequest(messages=[user(
        pb.Part(image=pb.Media(data=PNG, mime_type="image/png")),
        pb.Part(video=pb.Media(url="https://example.com/clip.mp4")),
        pb.Part(audio=pb.Media(data=MP3, mime_type="audio/mpeg")),
        pb.Part(document=pb.Media(data=PDF, mime_type="application/pdf")),
    )])
    every = ["image", "audio", "video", "document"]

    as_input_audio = build_json(adapter(modalities=every), request)["messages"][0]["content"]
    as_audio_url = build_json(adapter(modalities=every, audio_style="audio_url"), request)["messages"][0]["content"]

    assert as_input_audio == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
        {"type": "input_audio", "input_audio": {"data": b64(MP3), "format": "mp3"}},
        {"type": "file", "file": {"filename": "document-0-3.pdf",
                                  "file_data": f"data:application/pdf;base64,{b64(PDF)}"}},
    ]
    assert as_audio_url[2] == {"type": "audio_url", "audio_url": {"url": f"data:audio/mpeg;base64,{b64(MP3)}"}}


# -- responses ---------------------------------------------------------------------------


def parse(name: str, **options) -> pb.CompleteResponse:
    a = adapter(**options)
    req = pb.CompleteRequest(messages=[user(pb.Part(text="hi"))])
    http_request = a.build_request(req, "m", stream=False)
    return a.parse_response(respond(http_request, 200, (FIXTURES / name).read_bytes()), req, "m")


def test_xai_reasoning_outside_completion_tokens():
    response = parse("openai_compatible/xai_grok3mini_tool_call.json")

    assert (response.model, response.choices[0].raw_finish_reason) == ("grok-3-mini", "tool_calls")
    # reasoning_content is a reasoning part, content "" gives no part, then the call
    # (tests/providers/test_openai_tools.py has the parts in detail).
    assert [p.WhichOneof("content") for p in response.choices[0].message.parts] == ["reasoning", "tool_call"]
    usage = response.usage
    # prompt 291 = text 291, of which 244 were cache reads: 47 fresh text tokens.
    assert usage.input == pb.InputUsage(total=291, text=47, cache_read=244)
    # 291 + 26 + 189 = 506 = total_tokens: the 189 reasoning tokens are outside the 26.
    assert usage.output == pb.OutputUsage(total=215, reasoning=189, unattributed=26)
    assert usage.total_tokens == 506
    assert list(usage.warnings) == [W.USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION]
    # cost_in_usd_ticks 1399000 at 10^10 ticks a dollar = 139900 nano-USD.
    assert usage.provider_reported == pb.ProviderReportedUsage(
        total_tokens=506, accepted_prediction_tokens=0, rejected_prediction_tokens=0, cost_nano_usd=139900)
    assert_buckets_add_up(usage)


def test_mistral_content_as_typed_parts():
    response = parse("openai_compatible/mistral_thinking_content_array.json")

    # The thinking part is not visible output; the text part is.
    assert response.choices[0].message == pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text="391")])
    assert response.usage.input == pb.InputUsage(total=28, unattributed=28)
    # No reasoning figure stated: the thinking is somewhere inside the 94, unattributed.
    assert response.usage.output == pb.OutputUsage(total=94, unattributed=94)
    assert response.usage.total_tokens == 122
    assert list(response.usage.warnings) == []


def test_ollama_totals_only():
    response = parse("openai_compatible/ollama_llama3.json")

    assert (response.id, response.model) == ("chatcmpl-915", "llama3")
    assert response.choices[0].message.parts[0].text.startswith("Hello there! *adjusts glasses*")
    assert response.usage.input == pb.InputUsage(total=22, unattributed=22)
    assert response.usage.output == pb.OutputUsage(total=73, unattributed=73)
    assert response.usage.provider_reported == pb.ProviderReportedUsage(total_tokens=95)


def test_cache_reads_outside_prompt_tokens_are_added_not_clamped():
    # The shape Vercel's xAI usage tests pin as "non-inclusive reporting": more cache
    # reads than prompt tokens, and 4142 + 254 + 4328 = 8724 = total_tokens.
    payload = {"prompt_tokens": 4142, "completion_tokens": 254, "total_tokens": 8724,
               "prompt_tokens_details": {"cached_tokens": 4328}}

    usage = normalize(reported_usage(payload, "grok-4", CompatibleOptions().dialect()))

    assert usage.input == pb.InputUsage(total=8470, cache_read=4328, unattributed=4142)
    assert usage.output == pb.OutputUsage(total=254, unattributed=254)
    assert usage.total_tokens == 8724
    assert W.USAGE_WARNING_DETAILS_EXCEED_TOTAL not in usage.warnings
    assert W.USAGE_WARNING_PROVIDER_TOTAL_MISMATCH not in usage.warnings


def test_a_body_without_usage_is_estimated_from_what_went_each_way():
    a = adapter()
    req = pb.CompleteRequest(messages=[user(pb.Part(text="hi"))])
    http_request = a.build_request(req, "m", stream=False)
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world"},
                                    "finish_reason": "stop"}]}).encode()

    response = a.parse_response(respond(http_request, 200, body), req, "m")

    # The adapter states nothing; the engine estimates (usage/estimate.py): about four bytes
    # a token of the 12 bytes of answer text and the 2 of the request's.
    assert not response.HasField("usage")
    usage = estimated_usage(req, answer_bytes(response.choices))
    assert usage.input == pb.InputUsage(total=1, unattributed=1)
    assert usage.output == pb.OutputUsage(total=3, unattributed=3)
    assert usage.estimated
    assert W.USAGE_WARNING_USAGE_MISSING in usage.warnings


# -- streams -----------------------------------------------------------------------------

STREAM_REQUEST = pb.StreamCompleteRequest(model="local/m", messages=[user(pb.Part(text="Say hello."))])


def test_xai_stream_with_reasoning_outside_the_completion():
    texts, summary = decode_stream(adapter(), fixture_text("openai_compatible/xai_grok3mini_text.sse"),
                                   STREAM_REQUEST, "grok-3-mini")

    # reasoning_content deltas are not visible text.
    assert texts == {0: "Hello"}
    assert summary.id == "7327b9f5-1c2f-0a15-3fef-c14a71c460d3"
    usage = summary.usage
    # prompt 12 = text 12 including 11 cache reads; 12 + 1 + 290 = 303 = total_tokens.
    assert usage.input == pb.InputUsage(total=12, text=1, cache_read=11)
    assert usage.output == pb.OutputUsage(total=291, reasoning=290, unattributed=1)
    assert usage.total_tokens == 303
    assert list(usage.warnings) == [W.USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION]
    assert usage.provider_reported.cost_nano_usd == 146625
    assert not usage.estimated


def test_mistral_stream_with_content_part_lists():
    texts, summary = decode_stream(adapter(), fixture_text("openai_compatible/mistral_thinking_content_array.sse"),
                                   STREAM_REQUEST, "mistral-small-latest")

    # Only the "text" parts are visible: "3" inside a list, then "91" as a string.
    assert texts == {0: "391"}
    assert [f.raw_finish_reason for f in summary.finishes] == ["stop"]
    # Usage rides on the chunk that carries finish_reason (not a choices: [] chunk).
    assert summary.usage.input == pb.InputUsage(total=28, unattributed=28)
    assert summary.usage.output == pb.OutputUsage(total=139, unattributed=139)
    assert summary.usage.total_tokens == 167
    assert_buckets_add_up(summary.usage)


def test_ollama_stream_without_usage_is_estimated():
    a = adapter()
    decoder = a.stream_decoder(STREAM_REQUEST, "qwen3:32b")
    texts, summary = decode_stream(a, fixture_text("openai_compatible/ollama_qwen3_no_usage.sse"),
                                   STREAM_REQUEST, "qwen3:32b", decoder=decoder)

    # Only reasoning ("Okay") came before the length cut-off: no visible text (decode_stream
    # counts the reasoning delta as empty text of choice 0), but the reasoning is billed
    # output, so it is what the output estimate counts.
    assert "".join(texts.values()) == ""
    assert [r.text for r in summary.finishes[0].reasoning] == ["Okay"]
    assert summary.finishes[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert not summary.HasField("usage")
    assert decoder.output_bytes == len(b"Okay")
    usage = estimated_usage(STREAM_REQUEST, decoder.output_bytes)  # the engine's estimate
    assert usage.estimated
    assert usage.input == pb.InputUsage(total=3, unattributed=3)  # "Say hello.": 10 bytes
    assert usage.output == pb.OutputUsage(total=1, unattributed=1)
    assert list(usage.warnings) == [W.USAGE_WARNING_USAGE_MISSING]


def test_a_server_error_string_keeps_its_message():
    a = adapter()
    http_request = a.build_request(pb.CompleteRequest(messages=[user(pb.Part(text="hi"))]), "m", stream=False)

    error = a.parse_error(respond(http_request, 404, b'{"error":"model \'nonexistent-model-12345\' not found"}'))

    assert isinstance(error, GatewayError)
    assert error.code == Code.NOT_FOUND
    assert error.message == "local: upstream returned HTTP 404: model 'nonexistent-model-12345' not found"


# -- end to end over gRPC ----------------------------------------------------------------


def two_instances(upstream) -> dict:
    return {
        "plugins": {"allow": ["openai_compatible"]},
        "providers": {
            "local": {"kind": "openai_compatible", "base_url": f"{upstream.base_url}/llamacpp/v1"},
            "vllm": {"kind": "openai_compatible", "base_url": f"{upstream.base_url}/vllm/v1",
                     "api_key_env": "VLLM_API_KEY", "max_tokens_field": "max_completion_tokens",
                     "modalities": ["image", "audio", "video"], "audio_style": "audio_url"},
        },
    }


@pytest.fixture
async def compat_client(start_client, upstream):
    return await start_client(two_instances(upstream), {"VLLM_API_KEY": VLLM_TEST_KEY})


async def test_two_named_instances_each_reach_their_own_server(compat_client, upstream):
    upstream.reply(Reply(body=(FIXTURES / "openai_compatible/ollama_llama3.json").read_bytes()),
                   Reply(body=(FIXTURES / "openai_compatible/xai_grok3mini_tool_call.json").read_bytes()))

    local = await compat_client.stub.Complete(
        pb.CompleteRequest(model="local/llama3", messages=[user(pb.Part(text="Who are you?"))], max_tokens=50),
        timeout=10)
    vllm = await compat_client.stub.Complete(
        pb.CompleteRequest(model="vllm/grok-3-mini", messages=[user(pb.Part(text="Weather in SF?"))], max_tokens=50),
        timeout=10)

    to_local, to_vllm = upstream.received
    assert to_local.path == "/llamacpp/v1/chat/completions"
    # The keyless instance sends no Authorization header at all.
    assert "Authorization" not in to_local.headers
    assert to_local.json() == {"model": "llama3", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Who are you?"}]}], "max_tokens": 50, "stream": False}
    assert to_vllm.path == "/vllm/v1/chat/completions"
    assert to_vllm.headers["Authorization"] == f"Bearer {VLLM_TEST_KEY}"
    assert to_vllm.json()["max_completion_tokens"] == 50
    assert (local.provider, local.usage.total_tokens) == ("local", 95)
    assert (vllm.provider, vllm.usage.total_tokens) == ("vllm", 506)
    assert vllm.usage.output == pb.OutputUsage(total=215, reasoning=189, unattributed=26)


async def test_stream_end_to_end(compat_client, upstream):
    upstream.reply(Reply(events=[(FIXTURES / "openai_compatible/mistral_thinking_content_array.sse").read_bytes()]))

    call = compat_client.stub.StreamComplete(
        pb.StreamCompleteRequest(model="local/mistral-small-latest", messages=[user(pb.Part(text="17 * 23?"))]),
        timeout=10)
    messages = [m async for m in call]

    assert await call.code() == grpc.StatusCode.OK
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "391"
    summary = messages[-1].summary
    assert (summary.provider, summary.usage.total_tokens) == ("local", 167)
    assert upstream.received[0].json()["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_end_to_end_is_estimated(compat_client, upstream):
    upstream.reply(Reply(events=[(FIXTURES / "openai_compatible/ollama_qwen3_no_usage.sse").read_bytes()]))

    call = compat_client.stub.StreamComplete(
        pb.StreamCompleteRequest(model="local/qwen3:32b", messages=[user(pb.Part(text="2+2?"))]), timeout=10)
    messages = [m async for m in call]

    usage = messages[-1].summary.usage
    assert usage.estimated and W.USAGE_WARNING_USAGE_MISSING in usage.warnings
    assert usage.total_tokens == usage.input.total + usage.output.total


async def test_not_found_end_to_end(compat_client, upstream):
    upstream.reply(Reply(status=404, body={"error": "model 'nonexistent-model-12345' not found"}))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await compat_client.stub.Complete(
            pb.CompleteRequest(model="local/nonexistent-model-12345", messages=[user(pb.Part(text="hi"))]), timeout=10)

    assert caught.value.code() == Code.NOT_FOUND
    assert caught.value.details() == "local: upstream returned HTTP 404: model 'nonexistent-model-12345' not found"


async def test_audio_is_refused_by_an_instance_that_did_not_declare_it(compat_client, upstream):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await compat_client.stub.Complete(pb.CompleteRequest(
            model="local/llama3", messages=[user(pb.Part(audio=pb.Media(data=WAV, mime_type="audio/wav")))]),
            timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == 'messages[0].parts[0].audio: provider "local" does not accept audio input'
    assert upstream.received == []


async def test_list_models_names_each_instance_and_what_it_takes(compat_client):
    response = await compat_client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    info = {p.name: p for p in response.providers}
    assert (info["local"].kind, info["vllm"].kind) == ("openai_compatible", "openai_compatible")
    assert list(info["local"].input_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE]
    assert list(info["vllm"].input_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_AUDIO,
                                                   pb.MODALITY_VIDEO]


async def test_an_instance_without_base_url_is_a_config_error(start_client):
    with pytest.raises(ConfigError) as caught:
        await start_client({"plugins": {"allow": ["openai_compatible"]},
                            "providers": {"local": {"kind": "openai_compatible"}}})

    assert str(caught.value) == "providers.local.base_url is required for kind 'openai_compatible'"


@pytest.mark.parametrize(("base_url", "environ", "message"), [
    ("not a url", {}, "providers.local.base_url: 'not a url' is not an http(s) URL with a host"),
    ("ftp://models.example/v1", {}, "providers.local.base_url: 'ftp://models.example/v1' is not an http(s) URL "
                                    "with a host"),
    ("http://user:tw-test-secret-in-url@127.0.0.1:8000/v1", {},
     "providers.local.base_url: the URL carries credentials (user:password@); put the key in api_key_env"),
    ("http://127.0.0.1:8000/v1", {"TOLLWAY_LOCAL_BASE_URL": "http://u:p@127.0.0.1:8000/v1"},
     "TOLLWAY_LOCAL_BASE_URL: the URL carries credentials (user:password@); put the key in api_key_env"),
])
async def test_a_base_url_that_is_not_an_http_url_without_credentials_is_a_config_error(
        start_client, base_url, environ, message):
    with pytest.raises(ConfigError) as caught:
        await start_client({"plugins": {"allow": ["openai_compatible"]},
                            "providers": {"local": {"kind": "openai_compatible", "base_url": base_url}}}, environ)

    assert str(caught.value) == message


async def test_an_unknown_option_is_a_config_error_naming_it(start_client, upstream):
    with pytest.raises(ConfigError) as caught:
        await start_client({"plugins": {"allow": ["openai_compatible"]},
                            "providers": {"local": {"kind": "openai_compatible", "base_url": upstream.base_url,
                                                    "modalitys": ["image"]}}})

    assert str(caught.value) == ("providers.local: unknown option(s) for kind openai_compatible: modalitys "
                                 f"(did you mean modalities?) (known: {KNOWN_OPTIONS})")


def test_a_misspelled_common_key_is_listed_and_the_nearest_suggested():
    """The keys every provider table takes are named too, not only the kind's own options."""
    config = parse_config({"providers": {"local": {"kind": "openai_compatible", "base_url": "http://127.0.0.1:9",
                                                   "timeout": 30}}})

    with pytest.raises(ConfigError) as caught:
        build_registry(config, load_provider_kinds(), {})

    assert str(caught.value) == ("providers.local: unknown option(s) for kind openai_compatible: timeout "
                                 f"(did you mean timeout_s?) (known: {KNOWN_OPTIONS})")
    for common in ("kind", "base_url", "api_key_env", "api_key_envs", "timeout_s", "connect_timeout_s",
                   "first_byte_timeout_s", "idle_timeout_s", "audio_style", "reasoning_echo"):
        assert common in KNOWN_OPTIONS.split(", ")


async def test_without_config_no_instance_is_served(start_client):
    # No default base_url: the embedded default (no [providers] table) cannot make one.
    client = await start_client({"plugins": {"allow": ["openai_compatible"]}})

    response = await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    assert list(response.providers) == []
