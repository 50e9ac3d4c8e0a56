"""Usage parsing of the OpenAI Chat format and its relay variants, as pure functions.

Every expected figure is worked out by hand in the test from USAGE.md's rules, so a change
in the codec that changes a bill shows up here as a changed number.
"""

from __future__ import annotations

import orjson
import pytest
from httpx_sse import ServerSentEvent

from tests.support.gateway import fixture_bytes, fixture_json
from tollway.providers.mixrouter import DIALECT as MIXROUTER
from tollway.providers.openai_codec import (
    ChatDialect,
    ChatStreamDecoder,
    parse_completion,
    reported_usage,
    usd_to_nano,
)
from tollway.service.usage.normalize import normalize
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning
# A plain OpenAI-format server (xAI, OpenRouter, vLLM): no relay quirks.
PLAIN = ChatDialect()


def usage_of(raw: dict, model: str = "gemini-2.0-flash", dialect: ChatDialect = MIXROUTER) -> pb.Usage:
    return normalize(reported_usage(raw, model, dialect))


def warnings(usage: pb.Usage) -> set[int]:
    return set(usage.warnings)


def test_seed_usage():
    usage = usage_of(fixture_json("mixrouter/seed_response.json")["usage"])

    # prompt_tokens 1986 holds everything; the relay attributed text 5 and audio 175.
    # image_tokens 0 is "not filled" (rule 2), so 1986 - 5 - 175 = 1806 is unattributed (rule 1).
    assert usage.input == pb.InputUsage(total=1986, text=5, audio=175, unattributed=1806)
    # completion_tokens_details are all zero: 83 output tokens, none attributed.
    assert usage.output == pb.OutputUsage(total=83, unattributed=83)
    assert usage.total_tokens == 1986 + 83 == 2069
    # The input breakdown was stated and does not add up: warned. The output one is all
    # zeros, that is none stated (rule 2): no warning.
    assert warnings(usage) == {W.USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE}
    # The relay's own total (2069) agrees, and is kept beside the buckets.
    assert usage.provider_reported.total_tokens == 2069
    assert not usage.provider_reported.HasField("cost_nano_usd")
    assert not usage.estimated


def test_seed_response_parses_whole():
    response = parse_completion("mixrouter", fixture_bytes("mixrouter/seed_response.json"), "", MIXROUTER)

    assert (response.id, response.model, response.provider) == (
        "chatcmpl-toio20251226074613833316175pDor54M8", "gemini-2.0-flash", "mixrouter")
    assert response.created.seconds == 1766735188
    assert response.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert response.usage == usage_of(fixture_json("mixrouter/seed_response.json")["usage"])


def test_relay_zeros_are_not_figures():
    # new-api serializes every unset integer as 0, including the Anthropic-style fields.
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 0, "text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        "completion_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "reasoning_tokens": 0},
        "input_tokens": 0,
        "output_tokens": 0,
        "input_tokens_details": None,
        "claude_cache_creation_5_m_tokens": 0,
        "claude_cache_creation_1_h_tokens": 0,
    }

    usage = usage_of(raw)

    # Nothing attributed, nothing cached, nothing written: 100 in, 20 out, all unattributed.
    assert usage.input == pb.InputUsage(total=100, unattributed=100)
    assert usage.output == pb.OutputUsage(total=20, unattributed=20)
    assert usage.total_tokens == 120
    # Details of zeros state no breakdown: nothing to warn about (rule 1).
    assert warnings(usage) == set()


def test_null_details_are_not_figures():
    raw = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
           "prompt_tokens_details": None, "completion_tokens_details": None}

    usage = usage_of(raw)

    assert usage.input == pb.InputUsage(total=12, unattributed=12)
    assert usage.output == pb.OutputUsage(total=3, unattributed=3)
    assert usage.total_tokens == 15


def test_claude_behind_relay_adds_cache_to_the_prompt():
    # For a Claude upstream the relay's prompt_tokens excludes cache reads and writes.
    raw = {
        "prompt_tokens": 50,
        "completion_tokens": 200,
        "prompt_tokens_details": {"cached_tokens": 3000, "text_tokens": 50, "audio_tokens": 0, "image_tokens": 0},
        "completion_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "reasoning_tokens": 0},
        "claude_cache_creation_5_m_tokens": 1000,
        "claude_cache_creation_1_h_tokens": 500,
    }

    usage = usage_of(raw, model="claude-sonnet-4-5")

    # input total = 50 fresh + 3000 read + 1000 written (5 min) + 500 written (1 h) = 4550.
    # text_tokens 50 is fresh text already (cache is outside it): text 50, unattributed 0.
    assert usage.input == pb.InputUsage(total=4550, text=50, cache_read=3000, cache_write_5m=1000,
                                        cache_write_1h=500)
    assert usage.output == pb.OutputUsage(total=200, unattributed=200)
    assert usage.total_tokens == 4550 + 200 == 4750
    # Every write has its TTL, so no CACHE_TTL_UNKNOWN.
    assert warnings(usage) == set()


def test_claude_signalled_by_cache_writes_without_a_claude_model_name():
    # A relay alias hides the model; a 5-minute cache write still gives the upstream away.
    raw = {
        "prompt_tokens": 30,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
        "claude_cache_creation_5_m_tokens": 700,
        "claude_cache_creation_1_h_tokens": 0,
    }

    usage = usage_of(raw, model="sonnet-latest")

    # 30 fresh + 700 written = 730; the fresh 30 are unattributed.
    assert usage.input == pb.InputUsage(total=730, cache_write_5m=700, unattributed=30)
    assert usage.total_tokens == 740


def test_claude_signalled_by_cached_creation_tokens_has_unknown_ttl():
    # new-api's cached_creation_tokens is the writes' total with no TTL split.
    raw = {
        "prompt_tokens": 40,
        "completion_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0, "cached_creation_tokens": 800},
    }

    usage = usage_of(raw, model="sonnet-latest")

    # 40 fresh + 800 written = 840, the 800 of unknown TTL.
    assert usage.input == pb.InputUsage(total=840, cache_write_unknown_ttl=800, unattributed=40)
    assert usage.output == pb.OutputUsage(total=8, unattributed=8)
    assert W.USAGE_WARNING_CACHE_TTL_UNKNOWN in warnings(usage)


def test_cached_tokens_above_prompt_tokens_signal_claude():
    # 5000 cached tokens cannot be inside a prompt of 10: the prompt excludes the cache.
    raw = {
        "prompt_tokens": 10,
        "completion_tokens": 30,
        "total_tokens": 5040,
        "prompt_tokens_details": {"cached_tokens": 5000, "text_tokens": 10},
    }

    usage = usage_of(raw, model="anthropic-sonnet")

    # 10 fresh text + 5000 read = 5010 in; 30 out; 5040 matches the relay's own total.
    assert usage.input == pb.InputUsage(total=5010, text=10, cache_read=5000)
    assert usage.output == pb.OutputUsage(total=30, unattributed=30)
    assert usage.total_tokens == 5040
    assert W.USAGE_WARNING_PROVIDER_TOTAL_MISMATCH not in warnings(usage)
    assert W.USAGE_WARNING_DETAILS_EXCEED_TOTAL not in warnings(usage)


def test_openai_cache_reads_come_out_of_text_first():
    # OpenAI semantics: prompt_tokens (2000) includes the 1500 cached, and text_tokens
    # (2000) includes them too; rule 4 takes them out of text first.
    raw = {
        "prompt_tokens": 2000,
        "completion_tokens": 100,
        "total_tokens": 2100,
        "prompt_tokens_details": {"cached_tokens": 1500, "text_tokens": 1900, "image_tokens": 100},
        "completion_tokens_details": {"text_tokens": 100},
    }

    usage = usage_of(raw, model="gpt-4o", dialect=PLAIN)

    # fresh = 2000 - 1500 = 500; text 1900 - 1500 = 400; image 100; nothing unattributed.
    assert usage.input == pb.InputUsage(total=2000, text=400, image=100, cache_read=1500)
    assert usage.output == pb.OutputUsage(total=100, text=100)
    assert usage.total_tokens == 2100
    assert warnings(usage) == set()


def test_xai_reasoning_outside_completion():
    # xAI's shape: completion_tokens (530) leaves out the 233 reasoning tokens, and
    # total_tokens (800 = 37 + 530 + 233) proves it.
    raw = {
        "prompt_tokens": 37,
        "completion_tokens": 530,
        "total_tokens": 800,
        "prompt_tokens_details": {"text_tokens": 37, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 6},
        "completion_tokens_details": {"reasoning_tokens": 233, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }

    usage = usage_of(raw, model="grok-4", dialect=PLAIN)

    # input 37: 6 read from cache, text 37 - 6 = 31 fresh.
    assert usage.input == pb.InputUsage(total=37, text=31, cache_read=6)
    # output = 530 + 233 = 763: reasoning 233, the 530 visible tokens unattributed.
    assert usage.output == pb.OutputUsage(total=763, reasoning=233, unattributed=530)
    assert usage.total_tokens == 37 + 763 == 800
    assert warnings(usage) == {W.USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION}
    assert usage.provider_reported.accepted_prediction_tokens == 0
    assert usage.provider_reported.rejected_prediction_tokens == 0


def test_reasoning_inside_completion_is_not_added_twice():
    # OpenAI proper: completion_tokens (300) includes the 120 reasoning; total 400 = 100 + 300.
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 300,
        "total_tokens": 400,
        "completion_tokens_details": {"reasoning_tokens": 120, "text_tokens": 180},
    }

    usage = usage_of(raw, model="o4-mini", dialect=PLAIN)

    assert usage.output == pb.OutputUsage(total=300, reasoning=120, text=180)
    assert usage.total_tokens == 400
    assert W.USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION not in warnings(usage)


def test_openrouter_cost_and_cache_writes():
    raw = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "cost": 0.0012345,
        "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 400, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 100},
    }

    usage = usage_of(raw, model="anthropic/claude-sonnet-4.5", dialect=PLAIN)

    # prompt 1200 includes 200 read and 400 written (no TTL given): 600 fresh, unattributed.
    assert usage.input == pb.InputUsage(total=1200, cache_read=200, cache_write_unknown_ttl=400, unattributed=600)
    # 300 out: 100 reasoning, 200 unattributed.
    assert usage.output == pb.OutputUsage(total=300, reasoning=100, unattributed=200)
    assert usage.total_tokens == 1500
    # $0.0012345 = 1,234,500 nano-USD, exactly.
    assert usage.provider_reported.cost_nano_usd == 1_234_500
    assert warnings(usage) == {W.USAGE_WARNING_CACHE_TTL_UNKNOWN}


@pytest.mark.parametrize(
    ("cost", "nano"),
    [
        (0, 0),
        (1, 1_000_000_000),
        (0.0012345, 1_234_500),
        # 0.1 + 0.2 in binary floating point: the float noise below a nano-USD is rounded away.
        (0.1 + 0.2, 300_000_000),
        (3.0000000000000004e-05, 30_000),
        # Half a nano-USD rounds to even: 2.5 -> 2, 3.5 -> 4.
        (2.5e-09, 2),
        (3.5e-09, 4),
        ("0.000001", 1_000),
    ],
)
def test_cost_to_nano_usd(cost, nano):
    assert usd_to_nano(cost) == nano


@pytest.mark.parametrize("cost", [None, True, "free", [0.1], {"usd": 0.1}])
def test_cost_that_is_not_a_number_is_not_kept(cost):
    assert usd_to_nano(cost) is None


def test_provider_total_mismatch():
    # 100 + 50 = 150, but the provider says 160 with nothing to explain the 10.
    raw = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 160}

    usage = usage_of(raw, model="gpt-4o-mini", dialect=PLAIN)

    assert usage.input.total == 100
    assert usage.output.total == 50
    assert usage.total_tokens == 150
    assert usage.provider_reported.total_tokens == 160
    assert W.USAGE_WARNING_PROVIDER_TOTAL_MISMATCH in warnings(usage)


def test_details_exceeding_their_total_are_clamped():
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"text_tokens": 80, "image_tokens": 50, "cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 30, "text_tokens": 25},
    }

    usage = usage_of(raw, model="gpt-4o", dialect=PLAIN)

    # Input: text takes its 80, image gets the 20 left of its 50.
    assert usage.input == pb.InputUsage(total=100, text=80, image=20)
    # Output: reasoning takes its 30, text gets the 10 left of its 25.
    assert usage.output == pb.OutputUsage(total=40, reasoning=30, text=10)
    assert usage.total_tokens == 140
    assert warnings(usage) == {W.USAGE_WARNING_DETAILS_EXCEED_TOTAL}
    # Buckets still sum exactly to their totals.
    i, o = usage.input, usage.output
    assert i.text + i.image + i.audio + i.video + i.document + i.cache_read + i.unattributed == i.total
    assert o.text + o.audio + o.image + o.reasoning + o.unattributed == o.total


def test_stream_usage_comes_from_the_usage_chunk():
    decoder = ChatStreamDecoder("mixrouter", "gemini-2.0-flash", MIXROUTER)
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1766735500, "model": "gemini-2.0-flash"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}], "usage": None},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}], "usage": None},
        # An empty choices list alone does not make a usage chunk; the non-null usage does.
        {**base, "choices": []},
        {**base, "choices": [], "usage": {"prompt_tokens": 90, "completion_tokens": 2, "total_tokens": 92,
                                          "prompt_tokens_details": {"text_tokens": 90}}},
    ]
    deltas = []
    for event in events:
        deltas += list(decoder.feed(ServerSentEvent(data=orjson.dumps(event).decode())))
    assert not decoder.finished
    list(decoder.feed(ServerSentEvent(data="[DONE]")))

    assert decoder.finished
    assert [(m.delta.choice_index, m.delta.text) for m in deltas] == [(0, "Hel"), (0, "lo")]
    summary = decoder.summary()
    assert summary.usage.input == pb.InputUsage(total=90, text=90)
    assert summary.usage.output == pb.OutputUsage(total=2, unattributed=2)
    assert summary.usage.total_tokens == 92
    assert not summary.usage.estimated
    assert [(f.index, f.finish_reason) for f in summary.finishes] == [(0, pb.FINISH_REASON_STOP)]
