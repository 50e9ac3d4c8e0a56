"""GetLimits: the rules and budgets that apply to a caller's calls, with what is used and what
remains, read from the same store the checks use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import grpc

from tollway.service.admission.auth import Caller, Callers
from tollway.service.errors import GatewayError
from tollway.service.quota.config import Budget, RateRule
from tollway.service.quota.enforcer import QuotaEnforcer
from tollway.service.quota.matching import applies, budget_key, subject, window_key
from tollway.service.quota.spend import SpendUnavailable
from tollway.service.quota.store import BudgetUsage, QuotaStoreError, WindowUsage
from tollway.v1 import completion_pb2 as pb

_PERIODS = {"day": pb.BUDGET_PERIOD_DAY, "month": pb.BUDGET_PERIOD_MONTH}
Limit = TypeVar("Limit", RateRule, Budget)


@dataclass(frozen=True, slots=True)
class _Asker:
    """A caller whose calls the answer is about, with the labels those calls carry."""

    name: str
    labels: Mapping[str, str]


async def describe_limits(enforcer: QuotaEnforcer, callers: Callers, asking: Caller, request: pb.GetLimitsRequest,
                          targets: Sequence[str]) -> pb.GetLimitsResponse:
    """`targets`: the "provider/model" targets of request.model (empty when it names none)."""
    askers, everyone = _askers(callers, asking, request)
    config = enforcer.config
    rules = _entries(config.rules, askers, everyone, request.model, targets)
    budgets = _entries(config.budgets, askers, everyone, request.model, targets)
    budget_keys = [enforcer.budget_demand(b, who).key for b, who in budgets]
    response = pb.GetLimitsResponse(store_reachable=True)
    window_usage: list[WindowUsage] = []
    budget_usage: list[BudgetUsage] = []
    try:
        window_usage, budget_usage = await enforcer.store.usage([window_key(r.name, who) for r, who in rules],
                                                                budget_keys)
        missing = [(b, who) for (b, who), used in zip(budgets, budget_usage) if used.spent_nano_usd is None]
        if missing:
            await enforcer.rebuild(missing)
            _, budget_usage = await enforcer.store.usage([], budget_keys)
    except (QuotaStoreError, SpendUnavailable):
        response.store_reachable = False
    for i, (rule, who) in enumerate(rules):
        status = response.rate_limits.add(rule=rule.name, subject=who)
        if rule.requests_per_minute is not None:
            status.requests_per_minute = rule.requests_per_minute
        if rule.tokens_per_minute is not None:
            status.tokens_per_minute = rule.tokens_per_minute
        if rule.concurrent_streams is not None:
            status.concurrent_streams = rule.concurrent_streams
        if i < len(window_usage):
            used = window_usage[i]
            status.requests_used, status.tokens_used, status.streams_open = used.requests, used.tokens, used.streams
            if used.requests_free_in_s is not None:
                status.requests_free_in.FromNanoseconds(int(used.requests_free_in_s * 1e9))
    for i, (budget, who) in enumerate(budgets):
        demand = enforcer.budget_demand(budget, who)
        period = enforcer.period(budget.period)
        spent = budget_usage[i].spent_nano_usd if i < len(budget_usage) else None
        budget_status = response.budgets.add(
            budget=budget.name, subject=who, period=_PERIODS[budget.period], max_nano_usd=demand.max_nano_usd,
            spent_nano_usd=spent or 0, remaining_nano_usd=demand.max_nano_usd - (spent or 0),
            unpriced_calls=budget_usage[i].unpriced_calls if i < len(budget_usage) else 0)
        budget_status.period_start.FromDatetime(period.start)
        budget_status.period_end.FromDatetime(period.end)
    return response


def _askers(callers: Callers, asking: Caller, request: pb.GetLimitsRequest) -> tuple[list[_Asker], bool]:
    """Whose calls, and whether the answer is about everyone's (an admin asking for all)."""
    if request.caller and request.caller != asking.name:
        if not asking.is_admin:
            raise GatewayError(grpc.StatusCode.PERMISSION_DENIED,
                               f'caller: "{asking.name}" may read only its own limits')
        named = next((c for c in callers.entries if c.name == request.caller), None)
        if named is None:
            raise GatewayError(grpc.StatusCode.NOT_FOUND, f"caller: no caller named {request.caller!r} is configured")
        return [_Asker(named.name, {**request.labels, **named.labels})], False
    if asking.is_admin and not request.caller and not callers.anonymous:
        return [_Asker(c.name, {**request.labels, **c.labels}) for c in callers.entries], True
    return [_Asker(asking.name, {**request.labels, **asking.labels})], False


def _entries(limits: Sequence[Limit], askers: list[_Asker], everyone: bool, model: str,
             targets: Sequence[str]) -> list[tuple[Limit, str]]:
    """Each limit with each subject it has for these askers, in config order, once each. For
    everyone's, a shared window is listed even when no configured caller's own labels match it
    (calls may carry the labels it asks for)."""
    found: list[tuple[Limit, str]] = []
    for limit in limits:
        scope = limit.scope if model else replace(limit.scope, models=None)
        subjects: dict[str, None] = {}
        if everyone and scope.per is None:
            subjects[""] = None
        for asker in askers:
            if applies(scope, asker.name, asker.labels, model, targets):
                subjects[subject(scope, asker.name, asker.labels)] = None
        found.extend((limit, who) for who in subjects)
    return found
