"""Every response carries its cost, priced by the catalog in effect at the request's time."""

from __future__ import annotations

import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.seed import recorded_stream, seed_request, seed_stream_request
from tests.support.upstream import Reply, sse_events

TC = pb.TokenClass


def line(token_class: int, tokens: int, unit: int, model: str = "gemini-2.0-flash") -> pb.CostLineItem:
    return pb.CostLineItem(token_class=token_class, tokens=tokens, unit_price_nano_usd_per_million=unit,
                           amount_nano_usd=(tokens * unit + 500_000) // 1_000_000, model=model)


async def test_the_seed_response_is_priced_at_gemini_2_0_flash_list_prices(client, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))

    response = await client.stub.Complete(seed_request(), timeout=5)

    # $0.10/M text input (also for unattributed input), $0.70/M audio input, $0.40/M output.
    expected = [
        line(TC.TOKEN_CLASS_INPUT_TEXT, 5, 100_000_000),            # 500
        line(TC.TOKEN_CLASS_INPUT_AUDIO, 175, 700_000_000),         # 122_500
        line(TC.TOKEN_CLASS_INPUT_UNATTRIBUTED, 1806, 100_000_000),  # 180_600
        line(TC.TOKEN_CLASS_OUTPUT_UNATTRIBUTED, 83, 400_000_000),   # 33_200
    ]
    cost = response.cost
    assert sorted(cost.line_items, key=lambda i: i.token_class) == expected
    assert cost.total_nano_usd == 500 + 122_500 + 180_600 + 33_200 == 336_800
    assert not cost.unpriced
    assert cost.price_entry.startswith("mixrouter/gemini-2.0-flash@")


async def test_a_stream_summary_carries_the_cost(client, upstream):
    upstream.reply(Reply(events=sse_events(recorded_stream())))

    summary = None
    async for message in client.stub.StreamComplete(seed_stream_request(), timeout=5):
        if message.HasField("summary"):
            summary = message.summary

    assert summary is not None
    assert summary.cost.total_nano_usd == sum(i.amount_nano_usd for i in summary.cost.line_items) > 0
    assert not summary.cost.unpriced


async def test_a_model_without_a_price_is_unpriced_never_zero(client, upstream):
    body = fixture_json("mixrouter/seed_response.json")
    body["model"] = "some-model-nobody-prices"
    upstream.reply(Reply(body=body))

    response = await client.stub.Complete(seed_request(), timeout=5)

    assert response.cost.unpriced
    assert response.cost.total_nano_usd == 0 and not response.cost.line_items
    assert response.cost.unpriced_reason.startswith("no price for mixrouter/some-model-nobody-prices")


async def test_an_operator_price_in_config_overrides_the_shipped_catalog(start_client, upstream):
    config = mixrouter_config(upstream)
    config["prices"] = [{"provider": "mixrouter", "model": "gemini-2.0-flash", "effective_from": "2020-01-01",
                         "source": "negotiated contract", "input_text": 50_000_000, "output_text": 200_000_000}]
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))

    response = await client.stub.Complete(seed_request(), timeout=5)

    # Audio input has no operator price: it defaults to the operator's input text price.
    assert response.cost.total_nano_usd == (
        (5 * 50_000_000 + 500_000) // 1_000_000
        + (175 * 50_000_000 + 500_000) // 1_000_000
        + (1806 * 50_000_000 + 500_000) // 1_000_000
        + (83 * 200_000_000 + 500_000) // 1_000_000
    )
    assert response.cost.price_entry == "mixrouter/gemini-2.0-flash@2020-01-01"


@pytest.mark.parametrize("bad", [{"provider": "mixrouter"}, {"provider": "mixrouter", "model": "m",
                                                            "effective_from": "not a date", "input_text": 1}])
async def test_a_bad_price_entry_is_refused_at_start_up(bad):
    from tollway.service.config.loader import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"prices": [bad]})
    assert "prices" in str(err.value)
