"""Which calls a scope counts, whose window or budget they land in, and keys that never collide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from tollway.service.quota import Scope, applies, budget_key, period_bounds, subject, window_key

TARGETS = ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4")


def test_an_empty_scope_counts_every_call():
    assert applies(Scope(), "anyone", {}, "fast", ())


def test_callers():
    scope = Scope(callers=frozenset({"search-team", "ads"}))
    assert applies(scope, "ads", {}, "m", ())
    assert not applies(scope, "Ads", {}, "m", ()), "caller names are case-sensitive"
    assert not applies(scope, "billing", {}, "m", ())


def test_every_label_must_be_present_and_equal():
    scope = Scope(labels={"team": "search", "env": "prod"})
    assert applies(scope, "c", {"team": "search", "env": "prod", "extra": "x"}, "m", ())
    assert not applies(scope, "c", {"team": "search"}, "m", ())
    assert not applies(scope, "c", {"team": "Search", "env": "prod"}, "m", ())


def test_models_match_the_asked_name_or_a_target():
    scope = Scope(models=("openai/gpt-4o*", "fast"))
    assert applies(scope, "c", {}, "fast", ())
    assert applies(scope, "c", {}, "openai/gpt-4o", ())
    assert applies(scope, "c", {}, "smart", TARGETS), "a route whose target matches"
    assert not applies(scope, "c", {}, "smart", ("anthropic/claude-sonnet-4",))
    assert not applies(scope, "c", {}, "FAST", ()), "patterns are case-sensitive"
    assert not applies(scope, "c", {}, "openai/gpt-4", ())
    assert applies(Scope(models=("*/claude-?onnet-[0-9]",)), "c", {}, "x", TARGETS)


def test_per_label_needs_the_label():
    scope = Scope(per="label:team")
    assert applies(scope, "c", {"team": "search"}, "m", ())
    assert not applies(scope, "c", {"other": "x"}, "m", ())


def test_subject():
    labels = {"team": "search:eu"}
    assert subject(Scope(), "c", labels) == ""
    assert subject(Scope(per="caller"), "c", labels) == "c"
    assert subject(Scope(per="label:team"), "c", labels) == "search:eu"


@pytest.mark.parametrize(("period", "now", "start", "end"), [
    ("day", datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC), datetime(2026, 3, 14, tzinfo=UTC),
     datetime(2026, 3, 15, tzinfo=UTC)),
    ("day", datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC),
     datetime(2027, 1, 1, tzinfo=UTC)),
    ("day", datetime(2026, 3, 15, 1, 0, tzinfo=timezone(timedelta(hours=2))), datetime(2026, 3, 14, tzinfo=UTC),
     datetime(2026, 3, 15, tzinfo=UTC)),
    ("day", datetime(2026, 3, 14, 0, 0), datetime(2026, 3, 14, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC)),
    ("month", datetime(2026, 2, 28, 12, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC),
     datetime(2026, 3, 1, tzinfo=UTC)),
    ("month", datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
])
def test_period_bounds_are_utc(period, now, start, end):
    assert period_bounds(period, now) == (start, end)


def test_window_keys_do_not_collide():
    pairs = [("a", "b:c"), ("a:b", "c"), ("a:b:c", ""), ("", "a:b:c"), ("a", "b"), ("ab", "")]
    assert len({window_key(name, who) for name, who in pairs}) == len(pairs)


def test_budget_keys_do_not_collide_and_carry_the_period():
    day = datetime(2026, 3, 14, tzinfo=UTC)
    pairs = [("a", "b:c"), ("a:b", "c"), ("a:b:c", ""), ("1:a", "b")]
    assert len({budget_key(name, who, day) for name, who in pairs}) == len(pairs)
    assert budget_key("a", "", day) != budget_key("a", "", day + timedelta(days=1))
    assert budget_key("a", "x", day) == budget_key("a", "x", datetime(2026, 3, 14))
    assert budget_key("a", "x", day) != window_key("a", "x")
