"""Microbenchmark: the CPU a call's quota check costs this process, in process and with Redis.

One call = one admit + one settle against one matching rule (requests and tokens per minute)
and one budget, as the enforcer makes them. CPU is time.process_time of this process only (the
redis-server's own CPU is not the gateway's). Starts its own redis-server on a free loopback
port. `python -m bench.limits_check [--calls N]`; the issue's targets: <= 0.05 ms in process,
<= 0.3 ms with Redis.
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
    BudgetCharge,
    BudgetDemand,
    InProcessStore,
    QuotaStore,
    RedisStore,
    WindowDemand,
    WindowSettlement,
    budget_key,
    period_bounds,
    window_key,
)

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


async def measure(calls: int, redis_binary: str) -> dict[str, float]:
    figures = {"in process": await ms_per_call(InProcessStore(), calls)}
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory), binary=redis_binary).start()
        try:
            store = RedisStore(server.url, timeout_s=1.0, key_prefix="bench")
            try:
                figures["redis (loopback)"] = await ms_per_call(store, calls)
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
        print(f"{store:>18}: {ms:.4f} ms CPU per call (admit + settle, 1 rule rpm+tpm, 1 budget; {args.calls} calls)")


if __name__ == "__main__":
    main()
