"""The quota keys of [limits]: what parses, and a message naming the key for what does not."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from tollway.service.quota import Budget, QuotaConfig, RateRule, Scope

ISSUE_EXAMPLE = """
redis_url = "redis://127.0.0.1:6379/0"
on_store_error = "allow"
[[rules]]
name = "search-team-gpt"
callers = ["search-team"]
models = ["openai/gpt-4o*", "fast"]
per = "caller"
requests_per_minute = 60
tokens_per_minute = 200000
concurrent_streams = 20
[[budgets]]
name = "search-daily"
labels = { team = "search" }
period = "day"
max_usd = "200.00"
"""


def rule(**overrides: Any) -> dict[str, Any]:
    return {"name": "r", "requests_per_minute": 1, **overrides}


def budget(**overrides: Any) -> dict[str, Any]:
    return {"name": "b", "period": "day", "max_usd": "1", **overrides}


def refused(table: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as error:
        QuotaConfig.from_table(table)
    return str(error.value)


def test_the_issue_example_parses():
    config = QuotaConfig.from_table(tomllib.loads(ISSUE_EXAMPLE))
    assert config == QuotaConfig(
        redis_url="redis://127.0.0.1:6379/0",
        rules=(RateRule("search-team-gpt", Scope(frozenset({"search-team"}), {}, ("openai/gpt-4o*", "fast"), "caller"),
                        60, 200_000, 20),),
        budgets=(Budget("search-daily", Scope(labels={"team": "search"}), "day", 200_000_000_000),),
    )
    assert config.enabled


def test_defaults_are_off_in_process():
    config = QuotaConfig.from_table({})
    assert config == QuotaConfig()
    assert (config.redis_url, config.on_store_error, config.store_timeout_ms, config.key_prefix) == (
        None, "allow", 250, "tollway")
    assert not config.enabled


def test_store_keys_parse():
    config = QuotaConfig.from_table({"redis_url": "unix:///run/redis.sock", "on_store_error": "deny",
                                     "store_timeout_ms": 60000, "key_prefix": "gw.prod-1"})
    assert (config.redis_url, config.on_store_error, config.store_timeout_ms, config.key_prefix) == (
        "unix:///run/redis.sock", "deny", 60000, "gw.prod-1")
    assert QuotaConfig.from_table({"redis_url": "rediss://h:6380"}).redis_url == "rediss://h:6380"


def test_per_label_and_a_rule_with_one_limit_parse():
    config = QuotaConfig.from_table({"rules": [{"name": "r", "per": "label:team", "concurrent_streams": 2}]})
    assert config.rules[0] == RateRule("r", Scope(per="label:team"), None, None, 2)


@pytest.mark.parametrize(("text", "nano"), [
    ("0", 0), ("200.00", 200_000_000_000), ("0.000000001", 1), ("12.5", 12_500_000_000),
    ("9223372036.854775807", 2**63 - 1),
])
def test_max_usd_is_exact(text: str, nano: int):
    assert QuotaConfig.from_table({"budgets": [budget(max_usd=text)]}).budgets[0].max_nano_usd == nano


@pytest.mark.parametrize(("value", "message"), [
    (200.0, 'limits.budgets[0] ("b").max_usd must be a decimal string such as "200.00" (got a TOML float)'),
    (200, 'limits.budgets[0] ("b").max_usd must be a decimal string such as "200.00" (got a TOML integer)'),
    ("-1", 'limits.budgets[0] ("b").max_usd must not be negative'),
    ("0.0000000001", 'limits.budgets[0] ("b").max_usd has more than 9 decimal places'),
    ("ten", 'limits.budgets[0] ("b").max_usd must be a decimal number of US dollars'),
    ("1e3", 'limits.budgets[0] ("b").max_usd must be a decimal number of US dollars'),
    ("NaN", 'limits.budgets[0] ("b").max_usd must be a decimal number of US dollars'),
    (" 1", 'limits.budgets[0] ("b").max_usd must be a decimal number of US dollars'),
    ("9223372036.854775808", 'limits.budgets[0] ("b").max_usd is too large'),
])
def test_max_usd_refusals(value: Any, message: str):
    assert refused({"budgets": [budget(max_usd=value)]}).startswith(message)


@pytest.mark.parametrize(("table", "message"), [
    ({"redis_url": "http://h"}, "limits.redis_url must be a string starting with redis://, rediss:// or unix://"),
    ({"redis_url": 5}, "limits.redis_url must be a string starting with"),
    ({"on_store_error": "block"}, 'limits.on_store_error must be "allow" or "deny"'),
    ({"store_timeout_ms": 0}, "limits.store_timeout_ms must be an integer from 1 to 60000"),
    ({"store_timeout_ms": 60001}, "limits.store_timeout_ms must be an integer from 1 to 60000"),
    ({"store_timeout_ms": True}, "limits.store_timeout_ms must be an integer from 1 to 60000"),
    ({"store_timeout_ms": 2.5}, "limits.store_timeout_ms must be an integer from 1 to 60000"),
    ({"key_prefix": "a{b}"}, "limits.key_prefix must be 1 to 64 of the characters"),
    ({"key_prefix": ""}, "limits.key_prefix must be 1 to 64 of the characters"),
    ({"redis_ulr": "redis://h"}, "unknown key(s) in [limits]: redis_ulr (did you mean redis_url?)"),
    ({"rules": {"name": "r"}}, "limits.rules must be an array of tables ([[limits.rules]])"),
    ({"budgets": "b"}, "limits.budgets must be an array of tables ([[limits.budgets]])"),
    ({"rules": ["r"]}, "limits.rules[0] must be a table"),
    ({"rules": [rule(name="")]}, "limits.rules[0].name must be 1 to 64 of the characters"),
    ({"rules": [rule(name="a b")]}, "limits.rules[0].name must be 1 to 64 of the characters"),
    ({"rules": [rule(name="x" * 65)]}, "limits.rules[0].name must be 1 to 64 of the characters"),
    ({"rules": [rule(name=None)]}, "limits.rules[0].name must be 1 to 64 of the characters"),
    ({"rules": [rule(), rule()]}, 'limits.rules[1] ("r"): the name is used by an earlier entry of limits.rules'),
    ({"budgets": [budget(), budget()]}, 'limits.budgets[1] ("b"): the name is used by an earlier entry'),
    ({"rules": [{"name": "r"}]}, 'limits.rules[0] ("r"): needs at least one of requests_per_minute, '
                                 "tokens_per_minute, concurrent_streams"),
    ({"rules": [rule(requests_per_minute=0)]}, 'limits.rules[0] ("r").requests_per_minute must be an integer >= 1'),
    ({"rules": [rule(tokens_per_minute=True)]}, 'limits.rules[0] ("r").tokens_per_minute must be an integer >= 1'),
    ({"rules": [rule(concurrent_streams=1.5)]}, 'limits.rules[0] ("r").concurrent_streams must be an integer >= 1'),
    ({"rules": [rule(requests_per_minute=2**63)]}, 'limits.rules[0] ("r").requests_per_minute must be an integer'),
    ({"rules": [rule(period="day")]}, 'unknown key(s) in limits.rules[0] ("r"): period'),
    ({"rules": [rule(callers=[])]}, 'limits.rules[0] ("r").callers must be a non-empty array of caller names'),
    ({"rules": [rule(callers="search")]}, 'limits.rules[0] ("r").callers must be a non-empty array'),
    ({"rules": [rule(callers=[""])]}, 'limits.rules[0] ("r").callers must be a non-empty array'),
    ({"rules": [rule(labels={"team": 1})]}, 'limits.rules[0] ("r").labels must be a table of string values'),
    ({"rules": [rule(labels=["team"])]}, 'limits.rules[0] ("r").labels must be a table of string values'),
    ({"rules": [rule(labels={"": "x"})]}, 'limits.rules[0] ("r").labels must be a table of string values'),
    ({"rules": [rule(models=[])]}, 'limits.rules[0] ("r").models must be a non-empty array of non-empty model'),
    ({"rules": [rule(models=["a", ""])]}, 'limits.rules[0] ("r").models must be a non-empty array'),
    ({"rules": [rule(models="gpt-4o")]}, 'limits.rules[0] ("r").models must be a non-empty array'),
    ({"rules": [rule(per="team")]}, 'limits.rules[0] ("r").per must be "caller" or "label:<key>"'),
    ({"rules": [rule(per="label:")]}, 'limits.rules[0] ("r").per must be "caller" or "label:<key>"'),
    ({"budgets": [budget(period="week")]}, 'limits.budgets[0] ("b").period must be "day" or "month" (UTC)'),
    ({"budgets": [{"name": "b", "period": "day"}]}, 'limits.budgets[0] ("b").max_usd is required'),
    ({"budgets": [budget(requests_per_minute=1)]}, 'unknown key(s) in limits.budgets[0] ("b"): requests_per_minute'),
    ({"budgets": [budget(per="nobody")]}, 'limits.budgets[0] ("b").per must be "caller" or "label:<key>"'),
])
def test_refusals_name_the_key(table: dict[str, Any], message: str):
    assert refused(table).startswith(message)


def test_a_bad_url_is_never_echoed():
    message = refused({"redis_url": "http://user:hunter2@redis.internal:6379"})
    assert "hunter2" not in message and "redis.internal" not in message


def test_budgets_and_rules_may_share_a_name():
    config = QuotaConfig.from_table({"rules": [rule(name="x")], "budgets": [budget(name="x")]})
    assert config.rules[0].name == config.budgets[0].name == "x"
