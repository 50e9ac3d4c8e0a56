"""The quota keys of the `[limits]` table: rate rules, spend budgets, and where they are kept.

Every error names the key it is about (`limits.rules[0] ("search-team-gpt").models: ...`) and
never repeats the Redis URL, which may carry a password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, cast

from tollway.service.config.keys import reject_unknown

NANO_PER_USD = 1_000_000_000
INT64_MAX = 2**63 - 1
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Digits, optionally a point and 1..9 more: nano-USD is the finest unit money has here.
_USD = re.compile(r"(\d+)(?:\.(\d{1,9}))?")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SCOPE_KEYS = ("callers", "labels", "models", "per")
_RATE_KEYS = ("requests_per_minute", "tokens_per_minute", "concurrent_streams")


@dataclass(frozen=True, slots=True)
class Scope:
    """Which calls a rule or budget counts, and whether they share one window/budget."""

    callers: frozenset[str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    models: tuple[str, ...] | None = None
    # None: one shared by every matching call; "caller": one per caller; "label:<key>": one per
    # value of that label (calls without the label are not counted).
    per: str | None = None


@dataclass(frozen=True, slots=True)
class RateRule:
    name: str
    scope: Scope
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    scope: Scope
    period: Literal["day", "month"]
    max_nano_usd: int


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    redis_url: str | None = None
    on_store_error: Literal["allow", "deny"] = "allow"
    # Each Redis command: a slow store must not stall calls.
    store_timeout_ms: int = 250
    # Redis keys are "{<prefix>}:...": the braces put every key in one cluster hash slot, which
    # the multi-key scripts need.
    key_prefix: str = "tollway"
    rules: tuple[RateRule, ...] = ()
    budgets: tuple[Budget, ...] = ()

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "QuotaConfig":
        """ValueError naming the key of the first problem."""
        reject_unknown(table, ("redis_url", "on_store_error", "store_timeout_ms", "key_prefix", "rules", "budgets"),
                       "in [limits]")
        redis_url = table.get("redis_url")
        if redis_url is not None and (not isinstance(redis_url, str) or not redis_url.startswith(_REDIS_SCHEMES)):
            raise ValueError("limits.redis_url must be a string starting with redis://, rediss:// or unix://")
        on_store_error = table.get("on_store_error", "allow")
        if on_store_error not in ("allow", "deny"):
            raise ValueError('limits.on_store_error must be "allow" or "deny"')
        store_timeout_ms = table.get("store_timeout_ms", 250)
        if not _is_int(store_timeout_ms) or not 1 <= store_timeout_ms <= 60_000:
            raise ValueError("limits.store_timeout_ms must be an integer from 1 to 60000")
        key_prefix = table.get("key_prefix", "tollway")
        if not isinstance(key_prefix, str) or not _NAME.fullmatch(key_prefix):
            raise ValueError("limits.key_prefix must be 1 to 64 of the characters A-Z a-z 0-9 . _ -")
        return cls(
            redis_url=redis_url,
            on_store_error=cast(Literal["allow", "deny"], on_store_error),
            store_timeout_ms=store_timeout_ms,
            key_prefix=key_prefix,
            rules=tuple(_parse_rule(where, entry) for where, entry in _entries(table, "rules")),
            budgets=tuple(_parse_budget(where, entry) for where, entry in _entries(table, "budgets")),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.rules or self.budgets)


def _entries(table: Mapping[str, Any], key: str) -> list[tuple[str, Mapping[str, Any]]]:
    """(where, entry) of each table of an array, names checked and unique."""
    entries = table.get(key, [])
    if not isinstance(entries, list):
        raise ValueError(f"limits.{key} must be an array of tables ([[limits.{key}]])")
    seen: set[str] = set()
    out = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"limits.{key}[{index}] must be a table")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"limits.{key}[{index}].name must be 1 to 64 of the characters A-Z a-z 0-9 . _ -")
        where = f'limits.{key}[{index}] ("{name}")'
        if name in seen:
            raise ValueError(f"{where}: the name is used by an earlier entry of limits.{key}")
        seen.add(name)
        out.append((where, entry))
    return out


def _parse_rule(where: str, entry: Mapping[str, Any]) -> RateRule:
    reject_unknown(entry, ("name", *_SCOPE_KEYS, *_RATE_KEYS), f"in {where}")
    figures: dict[str, int | None] = {}
    for key in _RATE_KEYS:
        value = entry.get(key)
        if value is not None and (not _is_int(value) or value < 1 or value > INT64_MAX):
            raise ValueError(f"{where}.{key} must be an integer >= 1")
        figures[key] = value
    if not any(value is not None for value in figures.values()):
        raise ValueError(f"{where}: needs at least one of {', '.join(_RATE_KEYS)}")
    return RateRule(entry["name"], _parse_scope(where, entry), figures["requests_per_minute"],
                    figures["tokens_per_minute"], figures["concurrent_streams"])


def _parse_budget(where: str, entry: Mapping[str, Any]) -> Budget:
    reject_unknown(entry, ("name", *_SCOPE_KEYS, "period", "max_usd"), f"in {where}")
    period = entry.get("period")
    if period not in ("day", "month"):
        raise ValueError(f'{where}.period must be "day" or "month" (UTC)')
    if "max_usd" not in entry:
        raise ValueError(f'{where}.max_usd is required (a decimal string such as "200.00")')
    return Budget(entry["name"], _parse_scope(where, entry), cast(Literal["day", "month"], period),
                  parse_usd(f"{where}.max_usd", entry["max_usd"]))


def parse_usd(where: str, value: object) -> int:
    """A decimal string of US dollars -> exact nano-USD; ValueError naming `where`."""
    # A TOML float has already been rounded to binary, so money is a string.
    if not isinstance(value, str):
        raise ValueError(f'{where} must be a decimal string such as "200.00" (got a TOML {_toml_type(value)})')
    if value.startswith("-"):
        raise ValueError(f"{where} must not be negative")
    match = _USD.fullmatch(value)
    if not match:
        if re.fullmatch(r"\d+\.\d{10,}", value):
            raise ValueError(f"{where} has more than 9 decimal places (nano-USD is the finest unit)")
        raise ValueError(f'{where} must be a decimal number of US dollars such as "200.00"')
    nano = int(Decimal(value) * NANO_PER_USD)
    if nano > INT64_MAX:
        raise ValueError(f"{where} is too large (at most {Decimal(INT64_MAX) / NANO_PER_USD} USD)")
    return nano


def _parse_scope(where: str, entry: Mapping[str, Any]) -> Scope:
    callers = entry.get("callers")
    if callers is not None:
        if not isinstance(callers, list) or not callers or not all(isinstance(c, str) and c for c in callers):
            raise ValueError(f"{where}.callers must be a non-empty array of caller names")
    labels = entry.get("labels", {})
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                  for k, v in labels.items()):
        raise ValueError(f"{where}.labels must be a table of string values, such as {{ team = \"search\" }}")
    models = entry.get("models")
    if models is not None:
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError(f"{where}.models must be a non-empty array of non-empty model patterns")
    per = entry.get("per")
    if per is not None:
        if not isinstance(per, str) or not (per == "caller" or (per.startswith("label:") and len(per) > 6)):
            raise ValueError(f'{where}.per must be "caller" or "label:<key>"')
    return Scope(
        callers=frozenset(callers) if callers is not None else None,
        labels=dict(labels),
        models=tuple(models) if models is not None else None,
        per=per,
    )


def _toml_type(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "float"}.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
