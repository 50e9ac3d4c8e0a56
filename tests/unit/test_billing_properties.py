"""Cost arithmetic for any usage and any prices: exact sums, no negative amounts, no floats."""

from __future__ import annotations

import ast
import inspect
from datetime import date, datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from tollway.service.billing import catalog as billing
from tollway.service.billing.catalog import CLASS_KEYS, INT64_MAX, PriceCatalog
from tollway.v1 import completion_pb2 as pb

TC = pb.TokenClass
AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
INPUT_FIELDS = ("text", "image", "audio", "video", "document", "cache_read", "cache_write_5m",
                "cache_write_1h", "cache_write_unknown_ttl", "unattributed")
OUTPUT_FIELDS = ("text", "audio", "image", "reasoning", "unattributed")
BUCKET_OF_CLASS = {
    **{TC.Value(f"TOKEN_CLASS_INPUT_{f.upper()}"): ("input", f)
       for f in ("text", "image", "audio", "video", "document", "unattributed")},
    **{TC.Value(f"TOKEN_CLASS_{f.upper()}"): ("input", f)
       for f in ("cache_read", "cache_write_5m", "cache_write_1h", "cache_write_unknown_ttl")},
    **{TC.Value(f"TOKEN_CLASS_OUTPUT_{f.upper()}"): ("output", f) for f in OUTPUT_FIELDS},
}

# Up to ten billion tokens a bucket at up to $50,000 per million tokens keeps every amount,
# and the sum of fifteen of them, inside int64 (the proto's range); beyond it is a unit test.
tokens = st.integers(min_value=0, max_value=10**10)
unit_prices = st.integers(min_value=0, max_value=5 * 10**13)


@st.composite
def usages(draw) -> pb.Usage:
    # Many buckets are zero in real responses; draw zeros often.
    count = st.one_of(st.just(0), tokens)
    u = pb.Usage(input=pb.InputUsage(**{f: draw(count) for f in INPUT_FIELDS}),
                 output=pb.OutputUsage(**{f: draw(count) for f in OUTPUT_FIELDS}))
    u.input.total = sum(getattr(u.input, f) for f in INPUT_FIELDS)
    u.output.total = sum(getattr(u.output, f) for f in OUTPUT_FIELDS)
    u.total_tokens = u.input.total + u.output.total
    if draw(st.booleans()):
        u.provider_reported.cost_nano_usd = draw(st.integers(min_value=0, max_value=INT64_MAX))
    return u


@st.composite
def price_tables(draw) -> dict[str, int]:
    """input_text and output_text always; any subset of the other classes."""
    table = {"input_text": draw(unit_prices), "output_text": draw(unit_prices)}
    for key in CLASS_KEYS.values():
        if key not in table and draw(st.booleans()):
            table[key] = draw(unit_prices)
    return table


@st.composite
def catalogs(draw) -> PriceCatalog:
    entry: dict = {"provider": "acme", "model": "m", "effective_from": date(2025, 1, 1), **draw(price_tables())}
    thresholds = draw(st.lists(st.integers(min_value=0, max_value=10**13), max_size=3, unique=True))
    entry["tiers"] = [{"above_input_tokens": t, **draw(price_tables())} for t in thresholds]
    return PriceCatalog().with_overrides([entry])


@settings(max_examples=200, deadline=None)
@given(catalogs(), usages())
def test_line_items_sum_exactly_to_the_total_and_no_amount_is_negative(catalog, u):
    cost = catalog.price(u, "acme", "m", AT)

    if cost.unpriced:
        assert cost.total_nano_usd == 0 and not cost.line_items
        assert cost.unpriced_reason.startswith("no price for ")
    else:
        assert cost.total_nano_usd == sum(item.amount_nano_usd for item in cost.line_items)
        assert all(item.amount_nano_usd >= 0 for item in cost.line_items)
        assert 0 <= cost.total_nano_usd <= INT64_MAX


@settings(max_examples=200, deadline=None)
@given(catalogs(), usages())
def test_each_line_item_is_its_buckets_tokens_at_one_unit_price_rounded_half_up(catalog, u):
    cost = catalog.price(u, "acme", "m", AT)

    seen = set()
    for item in cost.line_items:
        scope, field = BUCKET_OF_CLASS[item.token_class]
        assert item.tokens == getattr(getattr(u, scope), field) > 0
        exact = item.tokens * item.unit_price_nano_usd_per_million  # in nano-USD x 1e6
        # Within half a nano-USD of the exact figure, halves rounding up.
        assert -500_000 < item.amount_nano_usd * 1_000_000 - exact <= 500_000
        seen.add(item.token_class)
    if not cost.unpriced:
        # Every bucket with tokens is billed, once.
        billed = {c for c, (scope, field) in BUCKET_OF_CLASS.items() if getattr(getattr(u, scope), field)}
        assert seen == billed and len(seen) == len(cost.line_items)


@settings(max_examples=150, deadline=None)
@given(catalogs(), usages())
def test_only_a_class_without_price_or_default_makes_a_response_unpriced(catalog, u):
    cost = catalog.price(u, "acme", "m", AT)
    version = catalog.find("acme", "m", AT)
    prices, _ = version.select(u.input.total)
    lacking = [c for c, (scope, field) in BUCKET_OF_CLASS.items()
               if getattr(getattr(u, scope), field) and prices[c] is None]

    assert cost.unpriced == bool(lacking)
    # Only cache reads and TTL-known cache writes have no default price.
    assert set(lacking) <= {TC.TOKEN_CLASS_CACHE_READ, TC.TOKEN_CLASS_CACHE_WRITE_5M, TC.TOKEN_CLASS_CACHE_WRITE_1H}


@settings(max_examples=150, deadline=None)
@given(catalogs(), usages())
def test_every_figure_is_an_int_never_a_float(catalog, u):
    cost = catalog.price(u, "acme", "m", AT)

    assert type(cost.total_nano_usd) is int
    for item in cost.line_items:
        assert type(item.tokens) is int
        assert type(item.unit_price_nano_usd_per_million) is int
        assert type(item.amount_nano_usd) is int
    version = catalog.find("acme", "m", AT)
    for prices in [version.prices, *(tier.prices for tier in version.tiers)]:
        assert all(p is None or type(p) is int for p in prices.by_class.values())
    if u.provider_reported.HasField("cost_nano_usd"):
        assert cost.provider_reported_nano_usd == u.provider_reported.cost_nano_usd
    else:
        assert not cost.HasField("provider_reported_nano_usd")


@settings(max_examples=100, deadline=None)
@given(price_tables(), usages())
def test_a_later_version_never_changes_an_earlier_requests_cost(table, u):
    first = {"provider": "acme", "model": "m", "effective_from": date(2025, 1, 1),
             "input_text": 1_000_000_000, "output_text": 2_000_000_000, "cache_read": 1,
             "cache_write_5m": 1, "cache_write_1h": 1}
    before = PriceCatalog().with_overrides([first])
    after = before.with_overrides([{"provider": "acme", "model": "m", "effective_from": date(2025, 6, 1), **table}])
    at = datetime(2025, 5, 31, 23, 59, 59, tzinfo=timezone.utc)

    assert after.price(u, "acme", "m", at) == before.price(u, "acme", "m", at)


def test_the_money_path_has_no_float_and_no_true_division():
    """A static check of service/billing/catalog.py: no float literal, float() call, `/` or `/=`."""
    tree = ast.parse(inspect.getsource(billing))
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            offences.append(f"float literal {node.value!r} at line {node.lineno}")
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.Div):
            offences.append(f"true division at line {node.lineno}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("float", "round"):
            offences.append(f"{node.func.id}() at line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr in ("Decimal", "Fraction"):
            offences.append(f"{node.attr} at line {node.lineno}")
    assert offences == []
