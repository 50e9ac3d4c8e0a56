"""One conformance suite over every built-in provider kind: the same behaviours, under the same
names, through `tollway serve`'s gRPC surface against a loopback upstream that replays the
kind's own published payloads.

A new built-in kind adds one KindCase; each provider's own module keeps only what is particular
to it (its wire format in detail, its usage rules, its options).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from tests.support import FIXTURES
from tests.support.gateway import Client
from tests.support.upstream import FakeUpstream, Reply
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode
W = pb.UsageWarning

PROMPT = "Say hello."


@dataclass(frozen=True)
class KindCase:
    """What the suite needs to know of one kind: how to configure it and its recorded payloads."""

    kind: str
    model: str
    # The [providers.<name>] table, given the upstream's base URL.
    table: Callable[[str], dict[str, Any]]
    key_env: str
    key: str
    # Where the key travels: (header, value the upstream must see).
    key_header: tuple[str, str]
    unary_fixture: str
    # The answer text of the unary fixture, read from the payload as the provider shaped it.
    unary_text: Callable[[dict[str, Any]], str]
    # Removes the usage from a unary payload (an upstream that reports none).
    without_usage: Callable[[dict[str, Any]], dict[str, Any]]
    stream_fixture: str
    stream_text: str
    # The events of the stream fixture to keep for a stream cut off before its end.
    cut_stream: Callable[[list[str]], list[str]]
    error_fixture: str
    error_status: int
    error_code: Code
    error_message: str
    # The message an upstream 4xx error keeps, as "provider: ..." begins it.
    unsupported_media: pb.Part = field(default_factory=lambda: pb.Part(
        image=pb.Media(data=b"\x00\x01", mime_type="image/x-tollway-unknown")))


def _openai_text(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


def _drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda body: {k: v for k, v in body.items() if k != key}


def _until_done(events: list[str]) -> list[str]:
    """An OpenAI-format stream without its final chunks: no finish_reason, no [DONE]."""
    return events[:2]


def _gemini_cut(events: list[str]) -> list[str]:
    # Gemini has no terminal event: a stream without its finishReason chunk is cut off.
    return [e for e in events if "finishReason" not in e]


def _anthropic_cut(events: list[str]) -> list[str]:
    return [e for e in events if "message_stop" not in e and "message_delta" not in e]


OPENAI_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"

CASES = [
    KindCase(
        kind="mixrouter", model="gemini-2.0-flash",
        table=lambda base: {"base_url": f"{base}/v1"},
        key_env="MIXROUTER_API_KEY", key="tw-test-conformance-mixrouter-1a2b",
        key_header=("authorization", "Bearer tw-test-conformance-mixrouter-1a2b"),
        unary_fixture="mixrouter/seed_response.json", unary_text=_openai_text, without_usage=_drop("usage"),
        stream_fixture="openai/stream_include_usage.sse",
        stream_text="I'm unable to provide real-time updates, including current weather information. For the latest "
                    "weather in San Francisco, I recommend checking a reliable weather website or app such as the "
                    "Weather Channel, BBC Weather, or a local San Francisco news station.",
        cut_stream=_until_done,
        error_fixture="openai/error_server_error.json", error_status=500, error_code=Code.UNAVAILABLE,
        error_message=OPENAI_SERVER_ERROR,
    ),
    KindCase(
        kind="openai", model="gpt-4.1",
        table=lambda base: {"base_url": f"{base}/v1"},
        key_env="OPENAI_API_KEY", key="tw-test-conformance-openai-3c4d",
        key_header=("authorization", "Bearer tw-test-conformance-openai-3c4d"),
        unary_fixture="openai/chat_completion.json", unary_text=_openai_text, without_usage=_drop("usage"),
        stream_fixture="openai/stream_include_usage.sse",
        stream_text="I'm unable to provide real-time updates, including current weather information. For the latest "
                    "weather in San Francisco, I recommend checking a reliable weather website or app such as the "
                    "Weather Channel, BBC Weather, or a local San Francisco news station.",
        cut_stream=_until_done,
        error_fixture="openai/error_server_error.json", error_status=500, error_code=Code.UNAVAILABLE,
        error_message=OPENAI_SERVER_ERROR,
    ),
    KindCase(
        kind="openai_compatible", model="llama3",
        table=lambda base: {"kind": "openai_compatible", "base_url": f"{base}/v1", "api_key_env": "LOCAL_API_KEY"},
        key_env="LOCAL_API_KEY", key="tw-test-conformance-local-5e6f",
        key_header=("authorization", "Bearer tw-test-conformance-local-5e6f"),
        unary_fixture="openai_compatible/ollama_llama3.json", unary_text=_openai_text, without_usage=_drop("usage"),
        stream_fixture="openai_compatible/mistral_thinking_content_array.sse", stream_text="391",
        cut_stream=_until_done,
        error_fixture="openai/error_server_error.json", error_status=500, error_code=Code.UNAVAILABLE,
        error_message=OPENAI_SERVER_ERROR,
    ),
    KindCase(
        kind="anthropic", model="claude-sonnet-4-5",
        table=lambda base: {"base_url": f"{base}/v1"},
        key_env="ANTHROPIC_API_KEY", key="tw-test-conformance-anthropic-7a8b",
        key_header=("x-api-key", "tw-test-conformance-anthropic-7a8b"),
        unary_fixture="anthropic/api_reference_response.json",
        unary_text=lambda body: "".join(b["text"] for b in body["content"] if b["type"] == "text"),
        without_usage=_drop("usage"),
        stream_fixture="anthropic/stream_docs_basic.sse", stream_text="Hello!", cut_stream=_anthropic_cut,
        error_fixture="anthropic/error_not_found.json", error_status=404, error_code=Code.NOT_FOUND,
        error_message="The requested resource could not be found.",
    ),
    KindCase(
        kind="gemini", model="gemini-2.5-flash",
        table=lambda base: {"base_url": f"{base}/v1beta"},
        key_env="GEMINI_API_KEY", key="tw-test-conformance-gemini-9c0d",
        key_header=("x-goog-api-key", "tw-test-conformance-gemini-9c0d"),
        unary_fixture="gemini/unary-basic-reply-short.json",
        unary_text=lambda body: "".join(p["text"] for p in body["candidates"][0]["content"]["parts"]),
        without_usage=_drop("usageMetadata"),
        stream_fixture="gemini/streaming-basic-reply-short.sse", stream_text="The capital of Wyoming is **Cheyenne**.\n",
        cut_stream=_gemini_cut,
        error_fixture="gemini/error-unknown-model.json", error_status=404, error_code=Code.NOT_FOUND,
        error_message="models/gemini-5.0-flash is not found for API version v1",
    ),
]


@pytest.fixture(params=CASES, ids=[c.kind for c in CASES])
def case(request: pytest.FixtureRequest) -> KindCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def gateway(start_client, upstream: FakeUpstream, case: KindCase) -> Client:
    config = {"providers": {case.kind if case.kind != "openai_compatible" else "local": case.table(upstream.base_url)},
              "routing": {"max_retries": 0}}
    return await start_client(config, {case.key_env: case.key})


def target(case: KindCase) -> str:
    provider = "local" if case.kind == "openai_compatible" else case.kind
    return f"{provider}/{case.model}"


def unary(case: KindCase, *parts: pb.Part) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=target(case), max_tokens=64,
                              messages=[pb.Message(role=pb.ROLE_USER, parts=parts or [pb.Part(text=PROMPT)])])


def streaming(case: KindCase) -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(model=target(case), max_tokens=64,
                                    messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=PROMPT)])])


def payload(relative: str) -> dict[str, Any]:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def events(relative: str) -> list[str]:
    """The data of each event of a recorded SSE file, as the upstream will send it again."""
    raw = (FIXTURES / relative).read_text(encoding="utf-8").replace("\r\n", "\n")
    out = []
    for block in raw.split("\n\n"):
        data = [line[5:].lstrip(" ") for line in block.splitlines() if line.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out


def assert_buckets_add_up(usage: pb.Usage) -> None:
    i, o = usage.input, usage.output
    assert i.total == (i.text + i.image + i.audio + i.video + i.document + i.cache_read + i.cache_write_5m
                       + i.cache_write_1h + i.cache_write_unknown_ttl + i.unattributed)
    assert o.total == o.text + o.audio + o.image + o.reasoning + o.unattributed
    assert usage.total_tokens == i.total + o.total


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def stream_failure(call: Any) -> tuple[list[pb.StreamCompleteResponse], grpc.aio.AioRpcError]:
    seen: list[pb.StreamCompleteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            seen.append(message)
    return seen, caught.value


# -- behaviours ----------------------------------------------------------------------------


async def test_a_unary_answer_carries_the_text_finish_usage_and_the_request_id(case, gateway, upstream):
    body = payload(case.unary_fixture)
    upstream.reply(Reply(body=body))

    call = gateway.stub.Complete(unary(case))
    response = await call

    assert [p.text for p in response.choices[0].message.parts] == [case.unary_text(body)]
    assert response.choices[0].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert response.provider == target(case).split("/")[0]
    assert response.usage.total_tokens > 0 and not response.usage.estimated
    assert_buckets_add_up(response.usage)
    assert dict(await call.trailing_metadata())["tollway-request-id"]


async def test_the_key_travels_in_a_header_never_in_the_url_and_the_prompt_is_sent(case, gateway, upstream):
    upstream.reply(Reply(body=payload(case.unary_fixture)))

    await gateway.stub.Complete(unary(case))

    sent = upstream.received[0]
    header, value = case.key_header
    assert {k.lower(): v for k, v in sent.headers.items()}.get(header) == value
    assert case.key not in sent.path and case.key not in sent.query
    assert PROMPT in sent.body.decode()


async def test_a_stream_delivers_the_text_in_deltas_then_one_summary(case, gateway, upstream):
    upstream.reply(Reply(events=events(case.stream_fixture)))

    messages = [m async for m in gateway.stub.StreamComplete(streaming(case))]

    assert all(m.HasField("delta") for m in messages[:-1]) and messages[-1].HasField("summary")
    assert "".join(m.delta.text for m in messages[:-1]) == case.stream_text
    summary = messages[-1].summary
    assert [f.finish_reason for f in summary.finishes] == [pb.FINISH_REASON_STOP]
    assert_buckets_add_up(summary.usage)
    assert summary.cost.unpriced or summary.cost.total_nano_usd == sum(
        item.amount_nano_usd for item in summary.cost.line_items)


async def test_a_stream_cut_off_before_its_end_is_unavailable_never_ok(case, gateway, upstream):
    upstream.reply(Reply(events=case.cut_stream(events(case.stream_fixture)), fault="cut"))

    _, error = await stream_failure(gateway.stub.StreamComplete(streaming(case)))

    assert error.code() == Code.UNAVAILABLE
    assert error.details().startswith(f"{target(case).split('/')[0]}: upstream ")


async def test_an_upstream_error_keeps_the_providers_message_and_never_the_key(case, gateway, upstream):
    upstream.reply(Reply(status=case.error_status, body=payload(case.error_fixture)))

    error = await failure(gateway.stub.Complete(unary(case)))

    assert error.code() == case.error_code
    assert error.details().startswith(f"{target(case).split('/')[0]}: ")
    assert case.error_message in error.details()
    assert case.key not in error.details()


async def test_a_rate_limit_is_resource_exhausted_with_the_retry_delay(case, gateway, upstream):
    upstream.reply(Reply(status=429, body={"error": {"message": "slow down"}}, headers={"retry-after": "7"}))

    error = await failure(gateway.stub.Complete(unary(case)))

    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert error.details().startswith(f"{target(case).split('/')[0]}: ")


async def test_a_body_that_is_not_json_is_unavailable(case, gateway, upstream):
    upstream.reply(Reply(body=b"<html>502 Bad Gateway</html>", headers={"content-type": "text/html"}))

    error = await failure(gateway.stub.Complete(unary(case)))

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == f"{target(case).split('/')[0]}: upstream answered with a body that is not JSON"


async def test_an_answer_without_usage_is_estimated_and_says_so(case, gateway, upstream):
    upstream.reply(Reply(body=case.without_usage(payload(case.unary_fixture))))

    response = await gateway.stub.Complete(unary(case))

    usage = response.usage
    assert usage.estimated and W.USAGE_WARNING_USAGE_MISSING in usage.warnings
    assert usage.input.total == (len(PROMPT.encode()) + 3) // 4
    assert usage.output.total == (len(case.unary_text(payload(case.unary_fixture)).encode()) + 3) // 4
    assert_buckets_add_up(usage)


# Where each kind states its input token count in a unary answer.
PROMPT_FIGURE = {
    "mixrouter": ("usage", "prompt_tokens"),
    "openai": ("usage", "prompt_tokens"),
    "openai_compatible": ("usage", "prompt_tokens"),
    "anthropic": ("usage", "input_tokens"),
    "gemini": ("usageMetadata", "promptTokenCount"),
}


@pytest.mark.parametrize("value, quoted", [
    ("1200", "'1200'"), (-5, "-5"), (5 * 10**18, "5000000000000000000"), (1e30, "1e+30")])
async def test_an_input_figure_that_is_not_a_count_is_refused_flagged_and_unpriced(case, gateway, upstream,
                                                                                  value, quoted):
    body = payload(case.unary_fixture)
    usage_key, figure = PROMPT_FIGURE[case.kind]
    body[usage_key][figure] = value
    upstream.reply(Reply(body=body))

    response = await gateway.stub.Complete(unary(case))

    usage = response.usage
    assert list(usage.refused_figures) == [f"{figure}={quoted}"]
    assert W.USAGE_WARNING_FIGURE_OUT_OF_RANGE in usage.warnings
    assert_buckets_add_up(usage)
    assert usage.input.total < 10**12
    assert response.cost.unpriced and response.cost.total_nano_usd == 0
    assert response.cost.unpriced_reason.endswith(f"has figures that are not token counts: {figure}={quoted}")


async def test_media_the_provider_cannot_take_is_refused_before_any_request(case, gateway, upstream):
    request = unary(case, pb.Part(text=PROMPT), case.unsupported_media)

    error = await failure(gateway.stub.Complete(request))

    assert error.code() == Code.INVALID_ARGUMENT
    assert "image/x-tollway-unknown" in error.details()
    assert upstream.received == []


async def test_list_models_names_the_kind_its_modalities_and_features(case, gateway):
    response = await gateway.stub.ListModels(pb.ListModelsRequest())

    provider = target(case).split("/")[0]
    [info] = [p for p in response.providers if p.name == provider]
    assert info.kind == case.kind
    assert pb.MODALITY_TEXT in info.input_modalities
    # Every built-in kind translates tools, structured output and reasoning settings.
    assert info.features == pb.Features(tools=True, structured_output=True, reasoning=True)
