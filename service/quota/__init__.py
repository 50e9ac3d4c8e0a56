"""Rate limits and spend budgets per caller, label and model: their config, which calls they
count, and the stores that keep the figures (in process, or in Redis shared by replicas)."""

from typing import TYPE_CHECKING, Any

from tollway.service.quota.config import Budget, QuotaConfig, RateRule, Scope, parse_usd
from tollway.service.quota.matching import applies, budget_key, period_bounds, subject, window_key
from tollway.service.quota.memory_store import InProcessStore
from tollway.service.quota.store import (
    STREAM_LEASE_S,
    WINDOW_S,
    Admission,
    BudgetCharge,
    BudgetDemand,
    BudgetUsage,
    QuotaStore,
    QuotaStoreError,
    Refusal,
    WindowDemand,
    WindowSettlement,
    WindowUsage,
)

if TYPE_CHECKING:
    from tollway.service.quota.redis_store import RedisStore


def __getattr__(name: str) -> Any:
    # redis-py costs a process about 12 MiB: loaded only by a gateway that names a Redis.
    if name == "RedisStore":
        from tollway.service.quota.redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Scope",
    "RateRule",
    "Budget",
    "QuotaConfig",
    "parse_usd",
    "applies",
    "subject",
    "period_bounds",
    "window_key",
    "budget_key",
    "WINDOW_S",
    "STREAM_LEASE_S",
    "WindowDemand",
    "BudgetDemand",
    "Refusal",
    "Admission",
    "WindowSettlement",
    "BudgetCharge",
    "WindowUsage",
    "BudgetUsage",
    "QuotaStoreError",
    "QuotaStore",
    "InProcessStore",
    "RedisStore",
]
