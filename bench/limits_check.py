"""Microbenchmark: the CPU a call's quota check costs this process, in process and with Redis.

Two figures per store. "store": one admit + one settle against one matching rule (requests and
tokens per minute) and one budget, as the enforcer makes them. "call": what a gateway call
pays in all, through the enforcer: matching the call against the config, the admit, the
settlement (sent in the background, awaited here), and the trailers. CPU is time.process_time
of this process only (the redis-server's own CPU is not the gateway's). Starts its own
redis-server on a free loopback port. `python -m bench.limits_check [--calls N]`; the issue's
targets: <= 0.05 ms in process, <= 0.3 ms with Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tollway.service.quota import (
    Budget,
    BudgetCharge,
    BudgetDemand,
    InProcessStore,
    QuotaConfig,
    QuotaStore,
    RedisStore,
    WindowDemand,
    WindowSettlement,
    budget_key,
    period_bounds,
    window_key,
)

from tollway.service.quota.enforcer import QuotaEnforcer
from tollway.service.routing.routes import direct_route
from tollway.v1 import completion_pb2 as pb

from tests.support.redis_server import RedisServer

WARMUP_CALLS = 500


async def ms_per_call(store: QuotaStore, calls: int) -> float:
    start, end = period_bounds("day", datetime.now(UTC))
    window = window_key("bench-rule", "bench-caller")
    budget = budget_key("bench-budget", "", start)
    expires_at = end.timestamp()
    # Limits far above what the run uses: every call is admitted, as most are in production.
    windows = [WindowDemand(window, 10**9, 10**12, 500, None)]
    budgets = [BudgetDemand(budget, 10**18, expires_at)]
    settlements = [WindowSettlement(window, 500, 420, False)]
    charges = [BudgetCharge(budget, 1_234_567, False, expires_at)]
    await store.seed_budget(budget, 0, 0, expires_at)
    call_ids = [f"call-{i}" for i in range(WARMUP_CALLS + calls)]

    async def run(ids: list[str]) -> None:
        for call_id in ids:
            admission = await store.admit(call_id, windows, budgets)
            if admission.refusal is not None or admission.missing_budgets:
                raise RuntimeError(f"a benchmark call was not admitted: {admission}")
            await store.settle(call_id, settlements, charges)

    await run(call_ids[:WARMUP_CALLS])
    cpu = time.process_time()
    await run(call_ids[WARMUP_CALLS:])
    return (time.process_time() - cpu) / calls * 1000


class _SeededSpend:
    """The budget is seeded before the run, so the ledger is never asked."""

    async def spend(self, budget: Budget, since: datetime, only_subject: str | None = None
                    ) -> dict[str, tuple[int, int]]:
        raise RuntimeError("the benchmark's budget was not seeded")


async def ms_per_enforced_call(store: QuotaStore, calls: int) -> float:
    config = QuotaConfig.from_table({
        "rules": [{"name": "bench-rule", "callers": ["bench-caller"], "models": ["mixrouter/*"],
                   "requests_per_minute": 10**9, "tokens_per_minute": 10**12},
                  # Matches nothing: the loop over rules that do not apply is part of the cost.
                  {"name": "other-team", "labels": {"team": "other"}, "requests_per_minute": 10}],
        "budgets": [{"name": "bench-budget", "labels": {"team": "bench"}, "period": "day", "max_usd": "1000000000"}],
    })
    enforcer = QuotaEnforcer(config, store, _SeededSpend())  # type: ignore[arg-type]
    [budget] = config.budgets
    demand = enforcer.budget_demand(budget, "")
    await store.seed_budget(demand.key, 0, 0, demand.expires_at)
    asked = pb.CompleteRequest(model="mixrouter/gemini-2.0-flash", max_tokens=400, labels={"team": "bench"},
                               messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="x" * 400)])])
    usage = pb.Usage(input=pb.InputUsage(total=100), output=pb.OutputUsage(total=320), total_tokens=420)
    cost = pb.Cost(total_nano_usd=1_234_567)
    route = direct_route("mixrouter", "gemini-2.0-flash")
    labels = {"team": "bench"}

    async def run(count: int) -> None:
        for i in range(count):
            ticket = enforcer.plan(f"call-{i}", "bench-caller", labels, asked, route, stream=False)
            if ticket is None:
                raise RuntimeError("the benchmark's rule does not apply")
            await enforcer.admit(ticket)
            if ticket.admission is None:
                raise RuntimeError("a benchmark call was not admitted")
            enforcer.settle(ticket, usage, cost)
            enforcer.trailers(ticket)
            if i % 64 == 63:
                # Settlements go out in the background, as in the gateway; a bounded number in flight.
                await enforcer.drain()
        await enforcer.drain()

    await run(WARMUP_CALLS)
    cpu = time.process_time()
    await run(calls)
    return (time.process_time() - cpu) / calls * 1000


async def measure(calls: int, redis_binary: str) -> dict[str, float]:
    figures = {"in process, store": await ms_per_call(InProcessStore(), calls),
               "in process, call": await ms_per_enforced_call(InProcessStore(), calls)}
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory), binary=redis_binary).start()
        try:
            for name, measure_one in (("store", ms_per_call), ("call", ms_per_enforced_call)):
                store = RedisStore(server.url, timeout_s=1.0, key_prefix=f"bench-{name}")
                try:
                    figures[f"redis (loopback), {name}"] = await measure_one(store, calls)
                finally:
                    await store.close()
        finally:
            server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        sys.exit("redis-server is not installed (Debian package redis-server)")
    runner: Callable[[Coroutine[Any, Any, dict[str, float]]], dict[str, float]] = asyncio.run
    try:
        import uvloop  # the gateway's own loop

        runner = uvloop.run
    except ImportError:
        pass
    for store, ms in runner(measure(args.calls, redis_binary)).items():
        print(f"{store:>25}: {ms:.4f} ms CPU per call (1 rule rpm+tpm, 1 budget; {args.calls} calls)")


if __name__ == "__main__":
    main()
