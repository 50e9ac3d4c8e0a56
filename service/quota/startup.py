"""The limits of a starting gateway: its store, its enforcer, and budgets rebuilt from the ledger."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tollway.service.ledger import Ledger
from tollway.service.quota.config import QuotaConfig
from tollway.service.quota.enforcer import QuotaEnforcer
from tollway.service.quota.memory_store import InProcessStore
from tollway.service.quota.spend import LedgerSpend
from tollway.service.quota.store import QuotaStore, QuotaStoreError

if TYPE_CHECKING:
    from tollway.service.telemetry.metrics import GatewayMetrics

log = logging.getLogger("tollway.limits")


async def start_limits(config: QuotaConfig, ledger: Ledger, targets_of: Callable[[str], Sequence[str]],
                       metrics: GatewayMetrics | None, worker_count: int) -> QuotaEnforcer:
    """Always an enforcer, so a reload may add rules; with none configured it costs a call one
    check. A Redis that does not answer at start-up is no reason not to serve: calls follow
    limits.on_store_error until it does."""
    store: QuotaStore
    if config.redis_url is not None:
        # Imported here: redis-py costs a process about 12 MiB, for nothing without a Redis.
        from tollway.service.quota.redis_store import RedisStore

        store = RedisStore(config.redis_url, timeout_s=config.store_timeout_ms / 1000, key_prefix=config.key_prefix)
        try:
            await store.ping()
            log.info("limits store: Redis at %s", redacted_redis_url(config.redis_url))
        except QuotaStoreError as exc:
            log.error("limits store: Redis at %s does not answer (%s); calls follow limits.on_store_error = %r "
                      "until it does", redacted_redis_url(config.redis_url), exc, config.on_store_error)
    else:
        store = InProcessStore()
        if worker_count > 1 and config.enabled:
            log.warning("limits are counted per worker process without limits.redis_url: with %d workers a rule "
                        "admits up to %d times its limit; set limits.redis_url to share them", worker_count,
                        worker_count)
    enforcer = QuotaEnforcer(config, store, LedgerSpend(ledger, targets_of), metrics)
    if config.enabled:
        await enforcer.rebuild_budgets()
        log.info("limits: %d rules, %d budgets", len(config.rules), len(config.budgets))
    return enforcer


def redacted_redis_url(url: str) -> str:
    """Host, port and database of a Redis URL, never its user or password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "redis"
    rest = rest.rpartition("@")[2]
    return f"{scheme}://{rest.split('?', 1)[0]}"
