"""Routes: what a caller names in `model`, and the policy for trying its targets.

A route is an ordered set of priority tiers; targets in one tier share traffic by weight,
later tiers are fallbacks. "provider/model" is a route of one target.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from tollway.service.config.keys import reject_unknown
from tollway.service.routing.health import BreakerPolicy

_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class RoutingConfigError(ValueError):
    """A [[routes]] or [routing] entry that cannot be used; the message names it."""


@dataclass(frozen=True)
class Target:
    provider: str
    model: str
    weight: int = 1
    priority: int = 1


@dataclass(frozen=True)
class Route:
    name: str
    targets: tuple[Target, ...]

    @cached_property
    def target_names(self) -> tuple[str, ...]:
        """"provider/model" of each target: what rate-limit and budget patterns match."""
        return tuple(f"{t.provider}/{t.model}" for t in self.targets)

    @property
    def tiers(self) -> list[tuple[Target, ...]]:
        """Targets grouped by priority, lowest number first."""
        by_priority: dict[int, list[Target]] = {}
        for target in self.targets:
            by_priority.setdefault(target.priority, []).append(target)
        return [tuple(by_priority[p]) for p in sorted(by_priority)]

    def attempt_order(self, rng: random.Random) -> list[Target]:
        """Every target once: each tier in a weighted random order, tiers in priority order."""
        order: list[Target] = []
        for tier in self.tiers:
            order.extend(_weighted_shuffle(tier, rng))
        return order


def direct_route(provider: str, model: str) -> Route:
    return Route(name=f"{provider}/{model}", targets=(Target(provider, model),))


def _weighted_shuffle(targets: Sequence[Target], rng: random.Random) -> list[Target]:
    """Sampling without replacement, each pick proportional to weight."""
    if len(targets) == 1:
        return list(targets)
    pool = list(targets)
    out = []
    while pool:
        total = sum(t.weight for t in pool)
        pick = rng.uniform(0, total)
        for index, target in enumerate(pool):
            pick -= target.weight
            if pick <= 0 or index == len(pool) - 1:
                out.append(pool.pop(index))
                break
    return out


@dataclass(frozen=True)
class RoutingPolicy:
    """The `[routing]` config table: retries, backoff and the deadline budget."""

    # The budget for a call whose caller sent no gRPC deadline.
    default_deadline_s: float = 300.0
    # Retries of one target after its first attempt, before moving to the next target.
    max_retries: int = 1
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    # How long a key that got 429 without Retry-After sits out.
    key_cooldown_s: float = 5.0
    # No attempt starts with less budget than this left: it could not finish.
    min_attempt_s: float = 0.05
    # The most an upstream's Retry-After is believed: a key cools, the router waits and the
    # caller's RetryInfo says at most this long, whatever the header claims.
    max_retry_after_s: float = 300.0
    # Streams one configured caller may have open at once ([callers.<name>] max_streams wins).
    max_streams_per_caller: int = 64
    breaker: BreakerPolicy = BreakerPolicy()

    def capped_retry_after(self, seconds: float | None) -> float | None:
        return None if seconds is None else min(seconds, self.max_retry_after_s)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter."""
        return rng.uniform(0, min(self.backoff_max_s, self.backoff_initial_s * (2**retry)))


def parse_routing(table: Mapping[str, Any]) -> RoutingPolicy:
    fields = {"default_deadline_s", "max_retries", "backoff_initial_s", "backoff_max_s", "key_cooldown_s",
              "min_attempt_s", "max_retry_after_s", "max_streams_per_caller", "breaker"}
    _no_unknown(table, fields, "routing")
    values = {k: v for k, v in table.items() if k != "breaker"}
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise RoutingConfigError(f"routing.{key} must be a number >= 0")
    if "max_retries" in values:
        values["max_retries"] = int(values["max_retries"])
    streams = values.get("max_streams_per_caller", 1)
    if not isinstance(streams, int) or streams < 1:
        raise RoutingConfigError("routing.max_streams_per_caller must be an integer >= 1")
    breaker_table = table.get("breaker", {})
    if not isinstance(breaker_table, Mapping):
        raise RoutingConfigError("routing.breaker must be a table")
    _no_unknown(breaker_table, set(BreakerPolicy.__dataclass_fields__), "routing.breaker")
    for key, value in breaker_table.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise RoutingConfigError(f"routing.breaker.{key} must be a number >= 0")
    return RoutingPolicy(**values, breaker=BreakerPolicy(**breaker_table))


def parse_routes(entries: Any) -> dict[str, Route]:
    if not isinstance(entries, list):
        raise RoutingConfigError("routes must be an array of tables ([[routes]])")
    routes: dict[str, Route] = {}
    for index, entry in enumerate(entries):
        where = f"routes[{index}]"
        if not isinstance(entry, Mapping):
            raise RoutingConfigError(f"{where} must be a table")
        _no_unknown(entry, {"name", "targets"}, where)
        name = entry.get("name")
        if not isinstance(name, str) or not _ROUTE_NAME.match(name):
            raise RoutingConfigError(f"{where}.name must be a name without '/' (letters, digits, . _ : -)")
        if name in routes:
            raise RoutingConfigError(f"{where}: route {name!r} is defined twice")
        targets = entry.get("targets")
        if not isinstance(targets, list) or not targets:
            raise RoutingConfigError(f"{where}.targets must be a non-empty array")
        routes[name] = Route(name, tuple(_parse_target(f"{where}.targets[{i}]", t) for i, t in enumerate(targets)))
    return routes


def _parse_target(where: str, raw: Any) -> Target:
    if not isinstance(raw, Mapping):
        raise RoutingConfigError(f"{where} must be a table")
    _no_unknown(raw, {"provider", "model", "weight", "priority"}, where)
    provider, model = raw.get("provider"), raw.get("model")
    if not isinstance(provider, str) or not provider or not isinstance(model, str) or not model:
        raise RoutingConfigError(f"{where} needs provider and model strings")
    weight, priority = raw.get("weight", 1), raw.get("priority", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
        raise RoutingConfigError(f"{where}.weight must be an integer >= 1")
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 1:
        raise RoutingConfigError(f"{where}.priority must be an integer >= 1")
    return Target(provider, model, weight, priority)


def _no_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    reject_unknown(table, allowed, f"in {where}", error=RoutingConfigError)
