"""Which calls a rule or budget counts, whose window or budget a call lands in, and its key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Literal

from tollway.service.quota.config import Scope

_LABEL_PER = "label:"


def applies(scope: Scope, caller: str, labels: Mapping[str, str], model: str, targets: Sequence[str]) -> bool:
    """Whether a call counts against scope. `model` is what the caller asked for (a route name or
    provider/model); `targets` the "provider/model" of the route's targets. Case-sensitive."""
    return applies_to_caller(scope, caller, labels) and (
        scope.models is None or models_match(scope.models, model, targets))


def applies_to_caller(scope: Scope, caller: str, labels: Mapping[str, str]) -> bool:
    """The caller and label part of applies()."""
    if scope.callers is not None and caller not in scope.callers:
        return False
    for key, value in scope.labels.items():
        if labels.get(key) != value:
            return False
    per = scope.per
    return per is None or not per.startswith(_LABEL_PER) or per[len(_LABEL_PER):] in labels


def models_match(patterns: Sequence[str], model: str, targets: Sequence[str]) -> bool:
    """The model part of applies(): a pattern matches the model asked for or one of its targets."""
    return any(fnmatchcase(model, pattern) or any(fnmatchcase(target, pattern) for target in targets)
               for pattern in patterns)


def subject(scope: Scope, caller: str, labels: Mapping[str, str]) -> str:
    """Whose window/budget within a rule: "" when shared, else the caller or the label's value."""
    per = scope.per
    if per is None:
        return ""
    if per == "caller":
        return caller
    return labels[per[len(_LABEL_PER):]]


def period_bounds(period: Literal["day", "month"], now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day or month holding now (a naive now is taken as UTC)."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


# Keys: the fixed-width or length-prefixed parts come first and the subject last, so two
# different (name, subject) pairs never give one key even when both hold ':'.
def window_key(rule_name: str, subject: str) -> str:
    return f"w:{len(rule_name)}:{rule_name}:{subject}"


def budget_key(budget_name: str, subject: str, period_start: datetime) -> str:
    start = period_start.replace(tzinfo=UTC) if period_start.tzinfo is None else period_start.astimezone(UTC)
    return f"b:{start.year:04d}{start.month:02d}{start.day:02d}:{len(budget_name)}:{budget_name}:{subject}"
