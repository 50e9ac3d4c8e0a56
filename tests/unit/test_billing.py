"""Cost: worked examples per provider, computed by hand; the catalog's lookup rules; unpriced.

Unit prices are nano-USD per million tokens, so a line item is tokens x price / 1e6 nano-USD,
rounded half up. The arithmetic is written out beside each expectation.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from tollway.service.billing.catalog import (
    CLASS_KEYS,
    PriceCatalog,
    PriceCatalogError,
    line_amount,
)
from tollway.v1 import completion_pb2 as pb

TC = pb.TokenClass
CATALOG = PriceCatalog.load_default()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def usage(*, input_: dict[str, int] | None = None, output: dict[str, int] | None = None,
          cost_nano_usd: int | None = None) -> pb.Usage:
    """A consistent Usage: totals are the sums of the given buckets."""
    input_ = input_ or {}
    output = output or {}
    u = pb.Usage(input=pb.InputUsage(total=sum(input_.values()), **input_),
                 output=pb.OutputUsage(total=sum(output.values()), **output))
    u.total_tokens = u.input.total + u.output.total
    if cost_nano_usd is not None:
        u.provider_reported.cost_nano_usd = cost_nano_usd
    return u


def items(cost: pb.Cost) -> list[tuple[str, int, int, int]]:
    return [(CLASS_KEYS[i.token_class], i.tokens, i.unit_price_nano_usd_per_million, i.amount_nano_usd)
            for i in cost.line_items]


# ---- worked examples -------------------------------------------------------------------


def test_seed_mixrouter_response_at_gemini_2_0_flash_prices():
    # The MixRouter example of seed/: 1986 prompt tokens of which text 5 and audio 175 were
    # stated (1806 unattributed), and 83 completion tokens with no modality stated.
    seed = usage(input_={"text": 5, "audio": 175, "unattributed": 1806}, output={"unattributed": 83})
    created = datetime.fromtimestamp(1766735188, timezone.utc)  # the response's `created`

    cost = CATALOG.price(seed, "mixrouter", "gemini-2.0-flash", created)

    assert not cost.unpriced
    assert items(cost) == [
        ("input_text", 5, 100_000_000, 500),                 # 5 x $0.10/M
        ("input_audio", 175, 700_000_000, 122_500),          # 175 x $0.70/M
        ("input_unattributed", 1806, 100_000_000, 180_600),  # at the input text price
        ("output_unattributed", 83, 400_000_000, 33_200),    # at the output text price
    ]
    assert cost.total_nano_usd == 500 + 122_500 + 180_600 + 33_200 == 336_800  # $0.0003368
    assert cost.price_entry == "mixrouter/gemini-2.0-flash@2025-02-05"
    assert not cost.HasField("provider_reported_nano_usd")


def test_anthropic_request_with_one_hour_cache_writes():
    # The prompt-caching guide's mixed-TTL example: input_tokens 2048, cache reads 1800, cache
    # writes 248 = 148 with the 5-minute TTL + 100 with the 1-hour TTL; 503 output tokens.
    u = usage(input_={"unattributed": 2048, "cache_read": 1800, "cache_write_5m": 148, "cache_write_1h": 100},
              output={"unattributed": 503})

    cost = CATALOG.price(u, "anthropic", "claude-sonnet-4-5-20250929", utc(2025, 11, 3, 12, 0))

    assert items(cost) == [
        ("input_unattributed", 2048, 3_000_000_000, 6_144_000),  # 2048 x $3/M
        ("cache_read", 1800, 300_000_000, 540_000),              # 1800 x $0.30/M
        ("cache_write_5m", 148, 3_750_000_000, 555_000),         # 148 x $3.75/M
        ("cache_write_1h", 100, 6_000_000_000, 600_000),         # 100 x $6/M
        ("output_unattributed", 503, 15_000_000_000, 7_545_000),  # 503 x $15/M
    ]
    assert cost.total_nano_usd == 15_384_000
    # The snapshot id finds the entry filed under the model's alias.
    assert cost.price_entry == "anthropic/claude-sonnet-4-5@2025-09-29"


def test_gemini_2_5_pro_above_200k_prompt_tokens_prices_the_whole_request_at_the_long_context_tier():
    u = usage(input_={"text": 180_000, "cache_read": 50_000}, output={"text": 2_000, "reasoning": 3_000})
    assert u.input.total == 230_000

    cost = CATALOG.price(u, "gemini", "gemini-2.5-pro", utc(2026, 3, 1))

    assert items(cost) == [
        ("input_text", 180_000, 2_500_000_000, 450_000_000),    # $2.50/M above 200k
        ("cache_read", 50_000, 250_000_000, 12_500_000),        # $0.25/M above 200k
        ("output_text", 2_000, 15_000_000_000, 30_000_000),     # $15/M above 200k
        ("output_reasoning", 3_000, 15_000_000_000, 45_000_000),  # thinking at the output price
    ]
    assert cost.total_nano_usd == 537_500_000  # $0.5375
    assert cost.price_entry == "gemini/gemini-2.5-pro@2025-06-17[input>200000]"


def test_gemini_2_5_pro_at_exactly_200k_prompt_tokens_stays_in_the_base_tier():
    u = usage(input_={"text": 200_000}, output={"text": 1_000})

    cost = CATALOG.price(u, "gemini", "gemini-2.5-pro", utc(2026, 3, 1))

    assert items(cost) == [
        ("input_text", 200_000, 1_250_000_000, 250_000_000),  # $1.25/M
        ("output_text", 1_000, 10_000_000_000, 10_000_000),   # $10/M
    ]
    assert cost.price_entry == "gemini/gemini-2.5-pro@2025-06-17"


def test_anthropic_sonnet_1m_context_above_200k_input_uses_the_long_context_rates_for_cache_too():
    u = usage(input_={"unattributed": 1_000, "cache_read": 150_000, "cache_write_1h": 60_000},
              output={"unattributed": 4_000})

    cost = CATALOG.price(u, "anthropic", "claude-sonnet-4-0", utc(2025, 9, 1))

    assert items(cost) == [
        ("input_unattributed", 1_000, 6_000_000_000, 6_000_000),     # $6/M
        ("cache_read", 150_000, 600_000_000, 90_000_000),            # $0.60/M
        ("cache_write_1h", 60_000, 12_000_000_000, 720_000_000),     # $12/M
        ("output_unattributed", 4_000, 22_500_000_000, 90_000_000),  # $22.50/M
    ]
    assert cost.total_nano_usd == 906_000_000


def test_openai_audio_request_prices_audio_tokens_apart_from_text():
    u = usage(input_={"text": 20, "audio": 1_234}, output={"text": 50, "audio": 777})

    cost = CATALOG.price(u, "openai", "gpt-4o-audio-preview-2024-12-17", utc(2025, 3, 1))

    assert items(cost) == [
        ("input_text", 20, 2_500_000_000, 50_000),             # 20 x $2.50/M
        ("input_audio", 1_234, 40_000_000_000, 49_360_000),    # 1234 x $40/M
        ("output_text", 50, 10_000_000_000, 500_000),          # 50 x $10/M
        ("output_audio", 777, 80_000_000_000, 62_160_000),     # 777 x $80/M
    ]
    assert cost.total_nano_usd == 112_070_000


def test_openai_cached_prompt_with_reasoning_output():
    u = usage(input_={"text": 1_500, "cache_read": 2_048}, output={"text": 300, "reasoning": 1_200})

    cost = CATALOG.price(u, "openai", "o4-mini-2025-04-16", utc(2025, 8, 1))

    assert items(cost) == [
        ("input_text", 1_500, 1_100_000_000, 1_650_000),       # $1.10/M
        ("cache_read", 2_048, 275_000_000, 563_200),           # $0.275/M
        ("output_text", 300, 4_400_000_000, 1_320_000),        # $4.40/M
        ("output_reasoning", 1_200, 4_400_000_000, 5_280_000),  # reasoning at the output price
    ]
    assert cost.total_nano_usd == 8_813_200


# ---- rounding ---------------------------------------------------------------------------


@pytest.mark.parametrize(("tokens", "unit", "amount"), [
    (1, 1_500_000, 2),    # 1.5 nano-USD rounds half up
    (3, 1_500_000, 5),    # 4.5 -> 5
    (1, 1_499_999, 1),    # 1.499999 -> 1
    (1, 499_999, 0),      # under half a nano-USD -> 0
    (1, 500_000, 1),      # exactly half -> 1
    (7, 0, 0),
])
def test_each_line_item_rounds_half_up_to_a_whole_nano_usd(tokens, unit, amount):
    assert line_amount(tokens, unit) == amount


def test_total_is_the_sum_of_rounded_line_items_not_a_rounded_sum():
    catalog = PriceCatalog().with_overrides([{
        "provider": "acme", "model": "m", "effective_from": date(2025, 1, 1),
        "input_text": 1_500_000, "output_text": 1_500_000,
    }])
    # Each line is 1.5 nano-USD -> 2; the exact sum would be 3, the sum of the lines is 4.
    cost = catalog.price(usage(input_={"text": 1}, output={"text": 1}), "acme", "m", utc(2025, 6, 1))
    assert [i.amount_nano_usd for i in cost.line_items] == [2, 2]
    assert cost.total_nano_usd == 4


# ---- defaults for classes an entry does not list ----------------------------------------


def test_image_video_document_input_default_to_the_input_text_price():
    u = usage(input_={"image": 1_000, "video": 2_000, "document": 3_000}, output={"text": 10})

    cost = CATALOG.price(u, "gemini", "gemini-2.5-flash", utc(2025, 9, 1))

    assert items(cost) == [
        ("input_image", 1_000, 300_000_000, 300_000),
        ("input_video", 2_000, 300_000_000, 600_000),
        ("input_document", 3_000, 300_000_000, 900_000),
        ("output_text", 10, 2_500_000_000, 25_000),
    ]


def test_unknown_ttl_cache_writes_take_the_5_minute_price_where_there_is_one():
    u = usage(input_={"unattributed": 10, "cache_write_unknown_ttl": 1_000}, output={"unattributed": 1})

    cost = CATALOG.price(u, "anthropic", "claude-haiku-4-5", utc(2025, 11, 1))

    assert ("cache_write_unknown_ttl", 1_000, 1_250_000_000, 1_250_000) in items(cost)


def test_unknown_ttl_cache_writes_take_the_input_price_where_there_is_no_write_price():
    u = usage(input_={"text": 10, "cache_write_unknown_ttl": 1_000}, output={"text": 1})

    cost = CATALOG.price(u, "openai", "gpt-4.1", utc(2025, 11, 1))

    assert ("cache_write_unknown_ttl", 1_000, 2_000_000_000, 2_000_000) in items(cost)


def test_output_audio_and_image_default_to_the_output_text_price():
    u = usage(input_={"text": 1}, output={"audio": 10, "image": 20})

    cost = CATALOG.price(u, "openai", "gpt-4.1-mini", utc(2025, 11, 1))

    assert items(cost)[1:] == [
        ("output_audio", 10, 1_600_000_000, 16_000),
        ("output_image", 20, 1_600_000_000, 32_000),
    ]


# ---- effective dates: a price change never rewrites history -----------------------------


def test_a_request_is_priced_by_the_version_in_effect_at_its_time():
    u = usage(input_={"text": 1_000_000}, output={"text": 1_000_000})

    before_cut = CATALOG.price(u, "openai", "o3", utc(2025, 6, 9, 23, 59, 59))
    after_cut = CATALOG.price(u, "openai", "o3", utc(2025, 6, 10))

    assert before_cut.total_nano_usd == 10_000_000_000 + 40_000_000_000  # $10 + $40
    assert before_cut.price_entry == "openai/o3@2025-04-16"
    assert after_cut.total_nano_usd == 2_000_000_000 + 8_000_000_000     # $2 + $8
    assert after_cut.price_entry == "openai/o3@2025-06-10"


def test_a_new_operator_version_leaves_earlier_requests_at_their_old_price():
    u = usage(input_={"text": 1_000}, output={"text": 1_000})
    v1 = {"provider": "acme", "model": "m", "effective_from": date(2025, 1, 1),
          "input_text": 1_000_000_000, "output_text": 2_000_000_000}
    v2 = dict(v1, effective_from=datetime(2025, 7, 1, 12, 0, tzinfo=timezone.utc),
              input_text=3_000_000_000, output_text=4_000_000_000)
    january = utc(2025, 1, 15)

    before = PriceCatalog().with_overrides([v1]).price(u, "acme", "m", january)
    after = PriceCatalog().with_overrides([v1]).with_overrides([v2])

    assert after.price(u, "acme", "m", january) == before
    assert before.total_nano_usd == 1_000_000 + 2_000_000
    assert after.price(u, "acme", "m", utc(2025, 7, 1, 11, 59)).total_nano_usd == 3_000_000
    later = after.price(u, "acme", "m", utc(2025, 7, 1, 12, 0))
    assert later.total_nano_usd == 3_000_000 + 4_000_000
    assert later.price_entry == "acme/m@2025-07-01T12:00:00Z"


def test_a_request_before_the_first_version_is_unpriced():
    cost = CATALOG.price(usage(input_={"text": 1}), "openai", "gpt-4.1", utc(2025, 4, 13, 23, 0))

    assert cost.unpriced
    assert cost.unpriced_reason == "no price for openai/gpt-4.1 at 2025-04-13T23:00:00Z"


def test_a_non_utc_request_time_is_compared_in_utc():
    # 2025-06-10 01:00 in UTC+02:00 is 2025-06-09 23:00 UTC: still the launch price.
    at = datetime(2025, 6, 10, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    cost = CATALOG.price(usage(input_={"text": 1_000_000}), "openai", "o3", at)
    assert cost.price_entry == "openai/o3@2025-04-16"


def test_a_naive_request_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        CATALOG.price(usage(input_={"text": 1}), "openai", "o3", datetime(2025, 6, 10))


# ---- unpriced: never $0 -----------------------------------------------------------------


def test_a_model_without_a_price_is_unpriced_with_the_reason():
    u = usage(input_={"text": 100}, output={"text": 10}, cost_nano_usd=4_200)

    cost = CATALOG.price(u, "mixrouter", "some-new-model", utc(2026, 1, 1))

    assert cost.unpriced
    assert cost.unpriced_reason == "no price for mixrouter/some-new-model at 2026-01-01"
    assert cost.total_nano_usd == 0 and not cost.line_items
    # The provider's own figure is still kept.
    assert cost.provider_reported_nano_usd == 4_200


def test_an_openai_compatible_server_is_unpriced_even_when_named_like_a_priced_kind():
    # A provider configured as "openai" that is really a local OpenAI-compatible server:
    # the shipped catalog is keyed by kind, so the name alone does not price it.
    cost = CATALOG.price(usage(input_={"text": 100}), "openai", "gpt-4o", utc(2026, 1, 1),
                         kind="openai_compatible")

    assert cost.unpriced
    assert cost.unpriced_reason == ("no price for openai/gpt-4o (provider kind openai_compatible) "
                                    "at 2026-01-01")


def test_a_configured_name_is_priced_by_its_kind():
    cost = CATALOG.price(usage(input_={"text": 1_000_000}), "team-openai", "gpt-4.1", utc(2026, 1, 1),
                         kind="openai")
    assert cost.total_nano_usd == 2_000_000_000
    assert cost.price_entry == "openai/gpt-4.1@2025-04-14"


def test_tokens_of_a_class_without_price_or_default_leave_the_response_unpriced():
    # gpt-4o-audio-preview lists no cached-input price.
    u = usage(input_={"text": 10, "cache_read": 1_024}, output={"text": 5})

    cost = CATALOG.price(u, "openai", "gpt-4o-audio-preview", utc(2025, 3, 1))

    assert cost.unpriced
    assert cost.unpriced_reason == ("no price for cache_read tokens under "
                                    "openai/gpt-4o-audio-preview@2024-12-17")
    assert cost.price_entry == "openai/gpt-4o-audio-preview@2024-12-17"
    assert not cost.line_items and cost.total_nano_usd == 0


def test_an_inconsistent_usage_breakdown_is_unpriced_rather_than_billed_wrongly():
    u = usage(input_={"text": 100}, output={"text": 10})
    u.input.total = 150  # 50 tokens in no bucket

    cost = CATALOG.price(u, "openai", "gpt-4.1", utc(2026, 1, 1))

    assert cost.unpriced
    assert cost.unpriced_reason == ("usage for gpt-4.1 is not a consistent breakdown: input buckets "
                                    "sum to 100 of input.total 150, output buckets to 10 of "
                                    "output.total 10")


def test_a_negative_bucket_is_unpriced():
    u = usage(input_={"text": 100})
    u.input.audio = -5
    u.input.total = 95

    cost = CATALOG.price(u, "openai", "gpt-4.1", utc(2026, 1, 1))

    assert cost.unpriced
    assert cost.unpriced_reason == "usage for gpt-4.1 has a negative input_audio count"


def test_a_cost_beyond_the_int64_range_is_unpriced_rather_than_wrapped():
    catalog = PriceCatalog().with_overrides([{
        "provider": "acme", "model": "m", "effective_from": date(2025, 1, 1),
        "input_text": 10**18, "output_text": 1,
    }])

    cost = catalog.price(usage(input_={"text": 10**13}), "acme", "m", utc(2026, 1, 1))

    assert cost.unpriced
    assert cost.unpriced_reason == ("the cost of input_text tokens under acme/m@2025-01-01 "
                                    "exceeds the int64 range of nano-USD")


def test_a_total_beyond_the_int64_range_is_unpriced_even_when_each_line_fits():
    catalog = PriceCatalog().with_overrides([{
        "provider": "acme", "model": "m", "effective_from": date(2025, 1, 1),
        "input_text": 10**18, "output_text": 1,
    }])
    # Image input defaults to the text price: two lines of 6e18 nano-USD each.
    u = usage(input_={"text": 6_000_000, "image": 6_000_000})

    cost = catalog.price(u, "acme", "m", utc(2026, 1, 1))

    assert cost.unpriced
    assert cost.unpriced_reason == "the cost of this m response exceeds the int64 range of nano-USD"
    assert not cost.line_items


def test_an_empty_usage_is_priced_at_zero_with_no_line_items():
    cost = CATALOG.price(pb.Usage(), "openai", "gpt-4.1", utc(2026, 1, 1))
    assert not cost.unpriced
    assert cost.total_nano_usd == 0 and not cost.line_items
    assert cost.price_entry == "openai/gpt-4.1@2025-04-14"


def test_provider_reported_cost_is_kept_beside_tollways_figure():
    u = usage(input_={"text": 1_000_000}, cost_nano_usd=2_100_000_000)

    cost = CATALOG.price(u, "openai", "gpt-4.1", utc(2026, 1, 1))

    assert cost.total_nano_usd == 2_000_000_000
    assert cost.provider_reported_nano_usd == 2_100_000_000


# ---- usage billed to another model in the same response ---------------------------------


def test_usage_of_another_model_is_priced_by_that_models_entry_and_added():
    u = usage(input_={"unattributed": 412}, output={"unattributed": 531})
    u.other_models.add(model="claude-haiku-4-5", usage=usage(input_={"unattributed": 823},
                                                             output={"unattributed": 1612}))

    cost = CATALOG.price(u, "anthropic", "claude-opus-4-5", utc(2026, 1, 1))

    assert items(cost) == [
        ("input_unattributed", 412, 5_000_000_000, 2_060_000),      # Opus 4.5, $5/M
        ("output_unattributed", 531, 25_000_000_000, 13_275_000),   # $25/M
        ("input_unattributed", 823, 1_000_000_000, 823_000),        # Haiku 4.5, $1/M
        ("output_unattributed", 1612, 5_000_000_000, 8_060_000),    # $5/M
    ]
    assert cost.total_nano_usd == 24_218_000
    assert cost.price_entry == "anthropic/claude-opus-4-5@2025-11-24, anthropic/claude-haiku-4-5@2025-10-15"


def test_usage_of_an_unpriced_other_model_leaves_the_whole_response_unpriced():
    u = usage(input_={"unattributed": 412}, output={"unattributed": 531})
    u.other_models.add(model="claude-advisor-x", usage=usage(input_={"unattributed": 823}))

    cost = CATALOG.price(u, "anthropic", "claude-opus-4-5", utc(2026, 1, 1))

    assert cost.unpriced
    assert cost.unpriced_reason == "no price for anthropic/claude-advisor-x at 2026-01-01"
    assert cost.total_nano_usd == 0 and not cost.line_items


# ---- operator overrides ------------------------------------------------------------------


NEGOTIATED = {
    "provider": "mixrouter", "model": "gemini-2.0-flash", "effective_from": "2025-12-01",
    "source": "MixRouter contract 2025-12", "input_text": 80_000_000, "input_audio": 560_000_000,
    "cache_read": 20_000_000, "output_text": 320_000_000,
}


def test_an_operator_entry_overrides_the_shipped_price_from_its_date():
    catalog = CATALOG.with_overrides([NEGOTIATED])
    seed = usage(input_={"text": 5, "audio": 175, "unattributed": 1806}, output={"unattributed": 83})

    cost = catalog.price(seed, "mixrouter", "gemini-2.0-flash", utc(2025, 12, 26, 7, 46, 28))

    # 5 x 0.08 + 175 x 0.56 + 1806 x 0.08 + 83 x 0.32 (nano-USD per token)
    assert [i.amount_nano_usd for i in cost.line_items] == [400, 98_000, 144_480, 26_560]
    assert cost.total_nano_usd == 269_440
    assert cost.price_entry == "mixrouter/gemini-2.0-flash@2025-12-01"
    # Before the operator's date, the shipped list price still applies.
    earlier = catalog.price(seed, "mixrouter", "gemini-2.0-flash", utc(2025, 11, 30))
    assert earlier.total_nano_usd == 336_800
    # The shipped catalog itself is unchanged.
    assert CATALOG.price(seed, "mixrouter", "gemini-2.0-flash", utc(2025, 12, 26)).total_nano_usd == 336_800


def test_an_operator_entry_adds_a_model_and_an_openai_compatible_server():
    catalog = CATALOG.with_overrides([{
        "provider": "local-vllm", "model": "llama-3.3-70b", "effective_from": date(2025, 1, 1),
        "input_text": 200_000_000, "output_text": 600_000_000,
    }])
    u = usage(input_={"text": 1_000}, output={"text": 500})

    cost = catalog.price(u, "local-vllm", "llama-3.3-70b", utc(2026, 1, 1), kind="openai_compatible")

    assert cost.total_nano_usd == 200_000 + 300_000
    assert cost.price_entry == "local-vllm/llama-3.3-70b@2025-01-01"


def test_an_operator_entry_keyed_by_configured_name_wins_over_one_keyed_by_kind():
    by_kind = {"provider": "openai", "model": "gpt-4.1", "effective_from": date(2025, 5, 1),
               "input_text": 1_000_000_000, "output_text": 1_000_000_000}
    by_name = dict(by_kind, provider="eu-openai", input_text=7_000_000_000)
    catalog = CATALOG.with_overrides([by_kind, by_name])
    u = usage(input_={"text": 1_000_000})

    assert catalog.price(u, "eu-openai", "gpt-4.1", utc(2026, 1, 1), kind="openai").total_nano_usd == 7_000_000_000
    assert catalog.price(u, "us-openai", "gpt-4.1", utc(2026, 1, 1), kind="openai").total_nano_usd == 1_000_000_000


def test_an_operator_tier_applies_above_its_threshold():
    catalog = PriceCatalog().with_overrides([{
        "provider": "acme", "model": "m", "effective_from": date(2025, 1, 1),
        "input_text": 1_000_000_000, "output_text": 2_000_000_000,
        "tiers": [{"above_input_tokens": 1_000, "input_text": 5_000_000_000, "output_text": 6_000_000_000},
                  {"above_input_tokens": 100, "input_text": 3_000_000_000, "output_text": 4_000_000_000}],
    }])
    at = utc(2025, 6, 1)

    def unit_prices(input_tokens: int) -> list[int]:
        cost = catalog.price(usage(input_={"text": input_tokens}, output={"text": 1}), "acme", "m", at)
        return [i.unit_price_nano_usd_per_million for i in cost.line_items]

    assert unit_prices(100) == [1_000_000_000, 2_000_000_000]
    assert unit_prices(101) == [3_000_000_000, 4_000_000_000]
    assert unit_prices(1_001) == [5_000_000_000, 6_000_000_000]


@pytest.mark.parametrize(("entry", "message"), [
    ({"model": "m", "effective_from": "2025-01-01", "input_text": 1, "output_text": 1},
     r"config: prices\[0\]: provider is required"),
    ({"provider": "p", "model": "m", "input_text": 1, "output_text": 1},
     r"prices\[0\] \(p/m\): effective_from is required"),
    ({"provider": "p", "model": "m", "effective_from": "next tuesday", "input_text": 1, "output_text": 1},
     r"effective_from 'next tuesday' is not an ISO date or time"),
    ({"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": 2.5, "output_text": 1},
     r"input_text must be a non-negative integer \(nano-USD per million tokens\), got 2.5"),
    ({"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": True, "output_text": 1},
     r"input_text must be a non-negative integer"),
    ({"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": -1, "output_text": 1},
     r"input_text must be a non-negative integer"),
    ({"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": 1},
     r"\(p/m\): output_text required"),
    ({"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": 1, "output_text": 1,
      "cache_reads": 1}, r"unknown key\(s\) cache_reads"),
    ({"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": 1, "output_text": 1,
      "tiers": [{"above_input_tokens": 10, "input_text": 1}]}, r"tiers\[0\]: output_text required"),
    ({"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": 1, "output_text": 1,
      "aliases": "m2"}, r"aliases must be a list of model names"),
])
def test_a_bad_operator_entry_is_refused_naming_the_entry_and_key(entry, message):
    with pytest.raises(PriceCatalogError, match=message):
        CATALOG.with_overrides([entry])


def test_two_operator_versions_of_one_model_at_one_moment_are_refused():
    entry = {"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": 1, "output_text": 1}
    with pytest.raises(PriceCatalogError, match="two prices for p/m take effect at 2025-01-01"):
        CATALOG.with_overrides([entry, dict(entry, input_text=2)])


def test_a_later_override_replaces_an_earlier_one_at_the_same_moment():
    entry = {"provider": "p", "model": "m", "effective_from": "2025-01-01", "input_text": 1_000_000,
             "output_text": 1}
    catalog = CATALOG.with_overrides([entry]).with_overrides([dict(entry, input_text=9_000_000)])
    assert catalog.price(usage(input_={"text": 1}), "p", "m", utc(2025, 2, 1)).total_nano_usd == 9


# ---- the shipped catalog ----------------------------------------------------------------


NOW = utc(2026, 11, 25)


@pytest.mark.parametrize(("kind", "model"), [
    ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"), ("openai", "gpt-4.1-mini"),
    ("openai", "gpt-4.1-nano"), ("openai", "o3"), ("openai", "o4-mini"), ("openai", "gpt-4o-audio-preview"),
    ("openai", "gpt-5"),
    ("anthropic", "claude-opus-4-5"), ("anthropic", "claude-opus-4-1"), ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-sonnet-4-0"), ("anthropic", "claude-haiku-4-5"), ("anthropic", "claude-3-7-sonnet-latest"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("gemini", "gemini-2.0-flash"), ("gemini", "gemini-2.5-flash"), ("gemini", "gemini-2.5-pro"),
    ("mixrouter", "gemini-2.0-flash"), ("mixrouter", "gpt-4o"), ("mixrouter", "claude-sonnet-4-5-20250929"),
])
def test_the_shipped_catalog_prices_current_models_with_a_source(kind, model):
    version = CATALOG.find(kind, model, NOW)
    assert version is not None, f"{kind}/{model}"
    assert version.source.startswith(("https://", "upstream list price: https://"))
    assert version.prices.by_class[TC.TOKEN_CLASS_INPUT_TEXT] > 0


def test_every_anthropic_entry_prices_both_cache_write_ttls():
    for model in ("claude-opus-4-5", "claude-opus-4-1", "claude-opus-4-0", "claude-sonnet-4-5",
                  "claude-sonnet-4-0", "claude-3-7-sonnet-latest", "claude-haiku-4-5", "claude-3-5-haiku-latest"):
        prices = CATALOG.find("anthropic", model, NOW).prices
        base = prices[TC.TOKEN_CLASS_INPUT_TEXT]
        # Anthropic's multipliers: 5-minute writes 1.25x, 1-hour writes 2x, reads 0.1x.
        assert prices[TC.TOKEN_CLASS_CACHE_WRITE_5M] * 4 == base * 5, model
        assert prices[TC.TOKEN_CLASS_CACHE_WRITE_1H] == base * 2, model
        assert prices[TC.TOKEN_CLASS_CACHE_READ] * 10 == base, model


# MixRouter entries carry the upstream vendor's list price: they must not drift from it.
UPSTREAM_KIND = {"gemini-": "gemini", "gpt-": "openai", "o4-": "openai", "claude-": "anthropic"}


@pytest.mark.parametrize("model", [
    "gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro", "gpt-4o", "gpt-4o-mini", "gpt-4.1",
    "gpt-4.1-mini", "o4-mini", "claude-sonnet-4-5", "claude-sonnet-4-0", "claude-3-7-sonnet-latest",
    "claude-opus-4-1", "claude-haiku-4-5",
])
def test_mixrouter_entries_equal_the_upstream_list_price(model):
    kind = next(k for prefix, k in UPSTREAM_KIND.items() if model.startswith(prefix))
    relayed = CATALOG.find("mixrouter", model, NOW)
    upstream = CATALOG.find(kind, model, NOW)
    assert relayed.prices == upstream.prices
    assert relayed.tiers == upstream.tiers
    assert relayed.aliases == upstream.aliases or model == "gpt-4o"
    assert upstream.source.split(" ")[0] in relayed.source


def test_the_shipped_catalog_has_no_openai_compatible_prices():
    assert CATALOG.find("openai_compatible", "gpt-4o", NOW) is None


def test_a_catalog_file_with_an_unknown_top_level_key_is_refused():
    with pytest.raises(PriceCatalogError, match="unknown top-level key"):
        PriceCatalog.from_toml("[price]\nprovider = 'x'\n", "test.toml")
