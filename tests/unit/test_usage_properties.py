"""Property tests of the billing contract: whatever a provider sends, the normalized Usage
has every bucket >= 0, input and output buckets that add up exactly to their totals, and
total_tokens = input.total + output.total.

Checked over tollway.service.usage.normalize itself and over every usage parser in front of it:
the OpenAI Chat codec in each dialect (openai, openai_compatible, the MixRouter relay),
its stream decoder, and the Anthropic and Gemini parsers when those providers are present.
"""

from __future__ import annotations

import importlib
from typing import Any

import orjson
from httpx_sse import ServerSentEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tollway.providers import mixrouter, openai
from tollway.providers.openai_codec import ChatStreamDecoder, reported_usage
from tollway.providers.openai_compatible import CompatibleOptions
from tollway.service.usage.normalize import MAX_TOKEN_FIGURE, ReportedUsage, is_token_count, normalize
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning

DIALECTS = {
    "openai": openai.DIALECT,
    "openai_compatible": CompatibleOptions().dialect(),
    "mixrouter": mixrouter.DIALECT,
}
# Relay rules key on the model name (a claude* model behind a relay).
MODELS = ["gpt-4o", "grok-3-mini", "claude-sonnet-4-5", "llama3"]

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_contract(usage: pb.Usage) -> None:
    i, o = usage.input, usage.output
    # A figure that is not a count is named and warned about, and never reaches a bucket.
    assert (W.USAGE_WARNING_FIGURE_OUT_OF_RANGE in usage.warnings) == bool(usage.refused_figures), usage
    assert usage.total_tokens <= 100 * MAX_TOKEN_FIGURE, usage
    input_buckets = [i.text, i.image, i.audio, i.video, i.document, i.cache_read, i.cache_write_5m, i.cache_write_1h,
                     i.cache_write_unknown_ttl, i.unattributed]
    output_buckets = [o.text, o.audio, o.image, o.reasoning, o.unattributed]
    assert all(b >= 0 for b in input_buckets + output_buckets + [i.total, o.total]), usage
    assert sum(input_buckets) == i.total, usage
    assert sum(output_buckets) == o.total, usage
    assert usage.total_tokens == i.total + o.total, usage


# -- what a provider could send ----------------------------------------------------------

# Counts as servers send them: real figures, relay zeros, nulls; occasionally a float or a
# string where a count belongs; and what a hostile upstream sends: negative, absurd (past any
# context, past int64, past any integer) and fractional figures.
count = st.integers(min_value=0, max_value=2_000_000)
hostile = st.sampled_from([-5, 5 * 10**18, 2**64 - 1, 1e30, float("inf"), float("nan"), 2.5, True])
stated = st.one_of(count, count, st.just(0), st.none(), st.floats(min_value=0, max_value=1e6), st.just("12"),
                   hostile)


def some_of(keys: list[str], values: st.SearchStrategy) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any subset of keys: missing keys are as common as present ones."""
    return st.fixed_dictionaries({}, optional={k: values for k in keys})


prompt_details = some_of(["cached_tokens", "text_tokens", "audio_tokens", "image_tokens", "video_tokens",
                          "cache_write_tokens", "cached_creation_tokens"], stated)
completion_details = some_of(["reasoning_tokens", "text_tokens", "audio_tokens", "image_tokens",
                              "accepted_prediction_tokens", "rejected_prediction_tokens"], stated)
details = lambda inner: st.one_of(inner, st.none(), st.just([]), st.just("n/a"))  # noqa: E731

openai_usage = st.fixed_dictionaries({}, optional={
    "prompt_tokens": stated,
    "completion_tokens": stated,
    "total_tokens": stated,
    "prompt_tokens_details": details(prompt_details),
    "completion_tokens_details": details(completion_details),
    "claude_cache_creation_5_m_tokens": stated,
    "claude_cache_creation_1_h_tokens": stated,
    "cost": st.one_of(st.none(), st.floats(min_value=0, max_value=100), st.just("0.0012")),
    "cost_in_usd_ticks": stated,
})


@st.composite
def self_consistent_openai_usage(draw) -> dict[str, Any]:
    """Payloads whose total_tokens proves reasoning and/or cache reads outside the counts
    (the xAI shapes), alongside cache > prompt and details > totals."""
    prompt, completion = draw(count), draw(count)
    reasoning, cached = draw(count), draw(count)
    total = prompt + completion + draw(st.sampled_from([0, reasoning, cached, reasoning + cached]))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": cached, "text_tokens": draw(count), "audio_tokens": draw(count)},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "text_tokens": draw(count),
                                      "rejected_prediction_tokens": draw(count)},
    }


any_openai_usage = st.one_of(openai_usage, self_consistent_openai_usage())


# -- normalize ---------------------------------------------------------------------------

signed = st.integers(min_value=-1000, max_value=2_000_000)
modality_counts = lambda names: st.dictionaries(st.sampled_from(names), signed)  # noqa: E731


@st.composite
def reported(draw) -> ReportedUsage:
    return ReportedUsage(
        input_total=draw(signed),
        input_by_modality=draw(modality_counts(["text", "image", "audio", "video", "document"])),
        cache_read=draw(signed),
        cache_read_by_modality=draw(st.one_of(st.none(), modality_counts(["text", "image", "audio", "video"]))),
        modalities_include_cache_reads=draw(st.booleans()),
        cache_write_5m=draw(signed),
        cache_write_1h=draw(signed),
        cache_write_unknown_ttl=draw(signed),
        output_total=draw(signed),
        output_by_modality=draw(modality_counts(["text", "audio", "image"])),
        reasoning=draw(signed),
        provider_total=draw(st.one_of(st.none(), signed)),
        estimated=draw(st.booleans()),
    )


@PROPERTY_SETTINGS
@given(reported())
def test_normalize_keeps_the_contract_for_any_reported_figures(r):
    assert_contract(normalize(r))


# -- the OpenAI Chat codec ---------------------------------------------------------------


@PROPERTY_SETTINGS
@given(payload=any_openai_usage, dialect=st.sampled_from(sorted(DIALECTS)), model=st.sampled_from(MODELS))
def test_openai_chat_usage_keeps_the_contract(payload, dialect, model):
    usage = normalize(reported_usage(payload, model, DIALECTS[dialect]))

    assert_contract(usage)
    # The provider's own total is kept beside the buckets exactly when it is a token count,
    # and named among the refused figures when it is something else.
    total = payload.get("total_tokens")
    if is_token_count(total):
        assert usage.provider_reported.total_tokens == int(total)
    elif total is not None:
        assert not usage.provider_reported.HasField("total_tokens")
        # (named, unless more than eight figures were refused before it)
        assert any(f.startswith(("total_tokens=", "and ")) for f in usage.refused_figures), usage


@PROPERTY_SETTINGS
@given(payload=any_openai_usage, dialect=st.sampled_from(sorted(DIALECTS)))
def test_stream_summary_keeps_the_contract(payload, dialect):
    decoder = ChatStreamDecoder("p", "m", DIALECTS[dialect])
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": payload}
    for data in (orjson.dumps(chunk).decode(), "[DONE]"):
        list(decoder.feed(ServerSentEvent(data=data)))

    assert_contract(decoder.summary().usage)


# -- the other providers' parsers ---------------------------------------------------------

anthropic = importlib.import_module("tollway.providers.anthropic")
gemini = importlib.import_module("tollway.providers.gemini")

anthropic_sampling = st.fixed_dictionaries({}, optional={
    "input_tokens": stated, "output_tokens": stated, "cache_read_input_tokens": stated,
    "cache_creation_input_tokens": stated,
    "cache_creation": details(some_of(["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"], stated)),
    "output_tokens_details": details(some_of(["thinking_tokens"], stated)),
})
anthropic_usage = st.builds(
    lambda top, iterations: {**top, "iterations": iterations},
    anthropic_sampling,
    st.lists(st.builds(lambda s, kind, model: {**s, "type": kind, "model": model}, anthropic_sampling,
                       st.sampled_from(["compaction", "message", "advisor_message"]),
                       st.sampled_from(["claude-opus-4-1", "claude-haiku-4-5"])), max_size=3),
)


@PROPERTY_SETTINGS
@given(anthropic_usage)
def test_anthropic_usage_keeps_the_contract(payload):
    usage = anthropic.usage_from(payload)

    assert_contract(usage)
    for other in usage.other_models:
        assert_contract(other.usage)


modality_entries = st.lists(st.fixed_dictionaries(
    {"modality": st.sampled_from(["TEXT", "IMAGE", "AUDIO", "VIDEO", "DOCUMENT", "MODALITY_UNSPECIFIED"]),
     "tokenCount": stated}), max_size=4)
gemini_usage = st.fixed_dictionaries({}, optional={
    "promptTokenCount": stated, "candidatesTokenCount": stated, "totalTokenCount": stated,
    "cachedContentTokenCount": stated, "thoughtsTokenCount": stated, "toolUsePromptTokenCount": stated,
    "promptTokensDetails": modality_entries, "cacheTokensDetails": modality_entries,
    "candidatesTokensDetails": modality_entries, "toolUsePromptTokensDetails": modality_entries,
})


@PROPERTY_SETTINGS
@given(gemini_usage)
def test_gemini_usage_keeps_the_contract(payload):
    assert_contract(normalize(gemini.reported_usage(payload)))
