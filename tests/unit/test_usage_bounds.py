"""Figures that are not token counts never reach a bucket or a bill: a string, a negative or
fractional number, or more than MAX_TOKEN_FIGURE tokens is refused, named in refused_figures,
warned about (FIGURE_OUT_OF_RANGE), and leaves the response unpriced, never $0."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from tollway.providers import mixrouter
from tollway.providers.openai_codec import reported_usage
from tollway.service.billing.catalog import PriceCatalog
from tollway.service.usage.normalize import MAX_TOKEN_FIGURE, ReportedUsage, normalize
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("value, quoted", [
    ("1200", "'1200'"),
    (-5, "-5"),
    (5 * 10**18, "5000000000000000000"),
    (2**64 - 1, "18446744073709551615"),
    (1e30, "1e+30"),
    (12.5, "12.5"),
    (MAX_TOKEN_FIGURE + 1, "1000000000001"),
])
def test_a_prompt_figure_that_is_not_a_count_is_refused_named_and_unpriced(value, quoted):
    raw = {"prompt_tokens": value, "completion_tokens": 10, "total_tokens": 29}

    usage = normalize(reported_usage(raw, "gemini-2.0-flash", mixrouter.DIALECT))

    assert usage.input == pb.InputUsage()
    assert usage.output == pb.OutputUsage(total=10, unattributed=10)
    assert list(usage.refused_figures) == [f"prompt_tokens={quoted}"]
    assert W.USAGE_WARNING_FIGURE_OUT_OF_RANGE in usage.warnings
    cost = PriceCatalog.load_default().price(usage, "mixrouter", "gemini-2.0-flash", NOW)
    assert cost.unpriced and not cost.line_items and cost.total_nano_usd == 0
    assert cost.unpriced_reason == (f"usage for gemini-2.0-flash has figures that are not token counts: "
                                    f"prompt_tokens={quoted}")


def test_the_largest_believable_figure_and_whole_floats_are_counts():
    raw = {"prompt_tokens": MAX_TOKEN_FIGURE, "completion_tokens": 10.0}

    usage = normalize(reported_usage(raw, "gemini-2.0-flash", mixrouter.DIALECT))

    assert (usage.input.total, usage.output.total) == (MAX_TOKEN_FIGURE, 10)
    assert not usage.refused_figures and W.USAGE_WARNING_FIGURE_OUT_OF_RANGE not in usage.warnings


def test_figures_a_plugin_set_itself_are_checked_again():
    # A plugin adapter that does its own arithmetic (or reads a huge count without figure()).
    usage = normalize(ReportedUsage(input_total=5 * 10**18, input_by_modality={"text": -3, "audio": 2**70},
                                    output_total=7, provider_total=2**64, cost_nano_usd=10**30))

    assert usage.input == pb.InputUsage()
    assert usage.output == pb.OutputUsage(total=7, unattributed=7)
    assert list(usage.refused_figures) == [
        "input_total=5000000000000000000", "provider_total=18446744073709551616",
        "input_by_modality[text]=-3", "input_by_modality[audio]=1180591620717411303424",
        "cost_nano_usd=1000000000000000000000000000000"]
    assert not usage.provider_reported.HasField("total_tokens")
    assert not usage.provider_reported.HasField("cost_nano_usd")


def test_a_long_refused_value_is_quoted_shortened():
    usage = normalize(reported_usage({"prompt_tokens": "x" * 5000}, "m", mixrouter.DIALECT))

    assert list(usage.refused_figures) == ["prompt_tokens='" + "x" * 39 + "..."]


def test_only_the_first_refusals_are_named():
    # A hostile upstream with thousands of bogus counters must not grow the ledger's record.
    raw = {"prompt_tokens": 10, "prompt_tokens_details": {f"{m}_tokens": -1 for m in ("text", "image", "audio")},
           "completion_tokens": -1, "total_tokens": -1, "claude_cache_creation_5_m_tokens": "x",
           "claude_cache_creation_1_h_tokens": "y", "completion_tokens_details": {"reasoning_tokens": -2,
                                                                                  "text_tokens": -3}}

    usage = normalize(reported_usage(raw, "m", mixrouter.DIALECT))

    # Nine refusals: eight named, then how many more.
    assert len(usage.refused_figures) == 9
    assert usage.refused_figures[:2] == ["completion_tokens=-1", "claude_cache_creation_5_m_tokens='x'"]
    assert usage.refused_figures[-1] == "and 1 more"
