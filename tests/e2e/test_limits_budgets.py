"""[[limits.budgets]] through a real gateway: charged the exact cost of each call, refusing calls
once spent, rebuilt from the ledger after a restart (and a Redis flush), unpriced calls counted
apart; and what a call gets while the limits store is unreachable. Over both stores."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import redis
from tollway.service.config.loader import load_config, parse_config
from tollway.service.gateway.server import start_gateway
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.e2e.test_limits_rules import ENVIRON, call_trailers, limits_store, quota_details, trailers  # noqa: F401
from tests.e2e.test_metrics import scrape, total, with_metrics
from tests.support.answers import answer, ok, request
from tests.support.ledger_calls import ALICE_KEY, BOB_KEY, auth, sha, until_records
from tests.support.served import to_toml
from tests.support.upstream import RefusedPort, Reply

Code = grpc.StatusCode
REMAINING_USD = "tollway-budget-remaining-usd"
# A tenth of a cent a token, in and out: the suite's answer (3 + 1 tokens) costs $0.004.
PRICE = {"provider": "mixrouter", "model": "upstream-model", "effective_from": "2020-01-01",
         "input_text": 1_000_000_000_000, "output_text": 1_000_000_000_000}
CALL_NANO_USD = 4_000_000


def config(upstream, limits_store: dict[str, Any], tmp_path: Path, *budgets: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1"}},
        "routing": {"max_retries": 0},
        "prices": [PRICE],
        "callers": {"alice": {"key_sha256": sha(ALICE_KEY), "labels": {"team": "search"}},
                    "bob": {"key_sha256": sha(BOB_KEY), "role": "admin"}},
        "ledger": {"path": str(tmp_path / "ledger.sqlite3"), "journal_dir": str(tmp_path / "journal")},
        "limits": {**limits_store, "budgets": list(budgets)},
    }


SEARCH_DAILY = {"name": "search-daily", "labels": {"team": "search"}, "period": "day", "max_usd": "0.01"}


async def budgets_of(client, key: str = BOB_KEY) -> list[pb.BudgetStatus]:
    found = await client.stub.GetLimits(pb.GetLimitsRequest(), metadata=auth(key), timeout=5)
    assert found.store_reachable
    return list(found.budgets)


async def until_spent(client, nano_usd: int) -> None:
    async def poll() -> None:
        while (await budgets_of(client))[0].spent_nano_usd != nano_usd:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 5)


async def test_a_budget_stops_calls_once_its_exact_spend_passes_it(start_client, upstream, limits_store, tmp_path):
    client = await start_client(config(upstream, limits_store, tmp_path, SEARCH_DAILY), ENVIRON)
    upstream.default = ok()

    left = []
    for i in range(3):
        call = client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
        assert (await call).cost.total_nano_usd == CALL_NANO_USD
        left.append((await call_trailers(call))[REMAINING_USD])
        await until_spent(client, CALL_NANO_USD * (i + 1))
    # Each answer's trailer: what is left after its own cost.
    assert left == ["0.006", "0.002", "0.00"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    error = caught.value
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert (error.code(), error.details().split("; retry in ")[0]) == (
        Code.RESOURCE_EXHAUSTED,
        f'budget "search-daily" is spent: $0.012 of $0.01 this day (UTC); it renews at {tomorrow}T00:00:00Z')
    failure, retry = quota_details(error)
    assert (failure.violations[0].subject, failure.violations[0].quota_metric) == ("budget:search-daily", "max_usd")
    assert retry is not None and 0 < retry <= 86400
    assert trailers(error)[REMAINING_USD] == "0.00"
    assert len(upstream.received) == 3
    # Bob's calls carry no team label: the budget is not his.
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=5)

    [status] = await budgets_of(client, ALICE_KEY)
    assert (status.budget, status.subject, status.period, status.max_nano_usd, status.spent_nano_usd,
            status.remaining_nano_usd, status.unpriced_calls) == (
        "search-daily", "", pb.BUDGET_PERIOD_DAY, 10_000_000, 12_000_000, -2_000_000, 0)
    assert status.period_end.ToDatetime(timezone.utc) - status.period_start.ToDatetime(timezone.utc) == \
        timedelta(days=1)


async def test_a_restart_rebuilds_the_spend_from_the_ledger(upstream, limits_store, tmp_path, request):
    settings = config(upstream, limits_store, tmp_path, SEARCH_DAILY)
    upstream.default = ok()
    gateway = await start_gateway(parse_config(settings), environ=ENVIRON, listen="127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.CompletionStub(channel)
        for _ in range(2):
            await stub.Complete(request_for(), metadata=auth(ALICE_KEY), timeout=5)
    await gateway.stop(grace=5)
    if "redis_url" in limits_store:
        # A Redis that lost everything: the ledger still has every call.
        with redis.Redis.from_url(limits_store["redis_url"]) as store:
            store.flushall()

    gateway = await start_gateway(parse_config(settings), environ=ENVIRON, listen="127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.CompletionStub(channel)
            found = await stub.GetLimits(pb.GetLimitsRequest(), metadata=auth(ALICE_KEY), timeout=5)
            assert [b.spent_nano_usd for b in found.budgets] == [2 * CALL_NANO_USD]
            await stub.Complete(request_for(), metadata=auth(ALICE_KEY), timeout=5)
            await asyncio.sleep(0.2)  # the settlement lands just after the answer
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Complete(request_for(), metadata=auth(ALICE_KEY), timeout=5)
            assert caught.value.details().startswith('budget "search-daily" is spent: $0.012 of $0.01')
    finally:
        await gateway.stop(grace=0)


def request_for() -> pb.CompleteRequest:
    return request("mixrouter/m")


async def test_unpriced_calls_are_admitted_and_counted_apart(start_client, upstream, limits_store, tmp_path):
    client = await start_client(config(upstream, limits_store, tmp_path, SEARCH_DAILY), ENVIRON)
    body = answer()
    body["model"] = "some-model-nobody-prices"
    upstream.default = Reply(body=body)
    for _ in range(2):
        response = await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
        assert response.cost.unpriced

    async def poll() -> pb.BudgetStatus:
        while True:
            [status] = await budgets_of(client, ALICE_KEY)
            if status.unpriced_calls == 2:
                return status
            await asyncio.sleep(0.02)

    status = await asyncio.wait_for(poll(), 5)
    assert (status.spent_nano_usd, status.unpriced_calls) == (0, 2)


async def test_a_per_label_budget_keeps_one_figure_per_value(start_client, upstream, limits_store, tmp_path):
    per_team = {"name": "per-team", "per": "label:team", "period": "month", "max_usd": "0.004"}
    client = await start_client(config(upstream, limits_store, tmp_path, per_team), ENVIRON)
    upstream.default = ok()
    ads = request("mixrouter/m")
    ads.labels["team"] = "ads"
    await client.stub.Complete(ads, metadata=auth(BOB_KEY), timeout=5)
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    # A call with no team label is not under the budget.
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=5)
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(ads, metadata=auth(BOB_KEY), timeout=5)
    assert caught.value.details().startswith('budget "per-team" (team "ads") is spent: $0.004 of $0.004 this month')
    everyone = await client.stub.GetLimits(pb.GetLimitsRequest(labels={"team": "ads"}), metadata=auth(BOB_KEY),
                                           timeout=5)
    # Per configured caller, in config order: alice's configured team wins over the asked-for one.
    assert [(b.subject, b.spent_nano_usd, b.period) for b in everyone.budgets] == [
        ("search", CALL_NANO_USD, pb.BUDGET_PERIOD_MONTH), ("ads", CALL_NANO_USD, pb.BUDGET_PERIOD_MONTH)]


@pytest.mark.parametrize("on_store_error", ["allow", "deny"])
async def test_an_unreachable_store_follows_on_store_error(start_client, upstream, tmp_path, on_store_error,
                                                           log_buffer):
    logs = log_buffer("plain")
    closed = RefusedPort()
    limits = {"redis_url": f"redis://:hunter2-secret@127.0.0.1:{closed.port}/0", "on_store_error": on_store_error,
              "store_timeout_ms": 200}
    rule = {"name": "rpm", "requests_per_minute": 1}
    settings = config(upstream, limits, tmp_path, SEARCH_DAILY)
    settings["limits"]["rules"] = [rule]
    client = await start_client(settings, ENVIRON)
    upstream.default = ok()
    if on_store_error == "allow":
        for _ in range(3):
            call = client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
            await call
            # Nothing was counted: no figure to report.
            assert "tollway-ratelimit-remaining-requests" not in await call_trailers(call)
    else:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
        assert (caught.value.code(), caught.value.details()) == (
            Code.UNAVAILABLE, 'rate limits and budgets cannot be checked right now (limits store unavailable; '
                              'limits.on_store_error = "deny"): retry with backoff')
        assert not upstream.received
    found = await client.stub.GetLimits(pb.GetLimitsRequest(), metadata=auth(ALICE_KEY), timeout=5)
    assert not found.store_reachable
    text = logs.getvalue()
    # At start-up: the Redis does not answer, and the budget's figure cannot be seeded. The
    # failures of the calls that follow are counted, and logged once per 10 s.
    assert "limits store: Redis at redis://127.0.0.1:" in text and "does not answer" in text
    assert "limits store: rebuild failed" in text
    assert "hunter2" not in text
    closed.close()


async def test_a_reload_keeps_a_window_whose_rule_keeps_its_name(upstream, tmp_path):
    path = tmp_path / "tollway.toml"
    settings = config(upstream, {}, tmp_path)
    settings["limits"]["rules"] = [{"name": "rpm", "requests_per_minute": 3}]
    path.write_text(to_toml(settings))
    upstream.default = ok()
    gateway = await start_gateway(load_config(path, ENVIRON), environ=ENVIRON, listen="127.0.0.1:0",
                                  config_path=str(path))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.CompletionStub(channel)
            for _ in range(2):
                await stub.Complete(request_for(), metadata=auth(ALICE_KEY), timeout=5)
            settings["limits"]["rules"] = [{"name": "rpm", "requests_per_minute": 3},
                                           {"name": "other", "requests_per_minute": 100}]
            path.write_text(to_toml(settings))
            assert gateway.reload()
            await stub.Complete(request_for(), metadata=auth(ALICE_KEY), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Complete(request_for(), metadata=auth(ALICE_KEY), timeout=5)
            assert caught.value.details().startswith('rate limit "rpm" reached: 3 of 3 requests')
            # A rule renamed is a new window.
            settings["limits"]["rules"] = [{"name": "rpm-renamed", "requests_per_minute": 3}]
            path.write_text(to_toml(settings))
            assert gateway.reload()
            await stub.Complete(request_for(), metadata=auth(ALICE_KEY), timeout=5)
        records = await until_records(SimpleNamespace(gateway=gateway), 5)
        assert sorted(r.status for r in records) == ["OK"] * 4 + ["RESOURCE_EXHAUSTED"]
    finally:
        await gateway.stop(grace=0)


async def test_refusals_and_store_errors_are_counted_in_the_metrics(start_client, upstream, tmp_path):
    closed = RefusedPort()
    settings = config(upstream, {}, tmp_path, {**SEARCH_DAILY, "max_usd": "0.004"})
    settings["limits"]["rules"] = [{"name": "rpm", "callers": ["bob"], "requests_per_minute": 1}]
    client = await start_client(with_metrics(settings), ENVIRON)
    upstream.default = ok()
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    await client.stub.Complete(request("mixrouter/m"), metadata=auth(BOB_KEY), timeout=5)
    for key in (ALICE_KEY, BOB_KEY, BOB_KEY):
        with pytest.raises(grpc.aio.AioRpcError):
            await client.stub.Complete(request("mixrouter/m"), metadata=auth(key), timeout=5)
    samples = await scrape(client)
    assert total(samples, "tollway_limit_refusals_total", limit="search-daily", kind="budget") == 1
    assert total(samples, "tollway_limit_refusals_total", limit="rpm", kind="requests") == 2
    assert total(samples, "tollway_requests_total", status="RESOURCE_EXHAUSTED") == 3

    # A store that does not answer is counted per operation (here: a second gateway on a Redis
    # that is not there, on_store_error allow).
    settings = config(upstream, {"redis_url": f"redis://127.0.0.1:{closed.port}/0", "store_timeout_ms": 200},
                      tmp_path / "second", SEARCH_DAILY)
    (tmp_path / "second").mkdir()
    second = await start_client(with_metrics(settings), ENVIRON)
    for _ in range(2):
        await second.stub.Complete(request("mixrouter/m"), metadata=auth(ALICE_KEY), timeout=5)
    samples = await scrape(second)
    assert total(samples, "tollway_limits_store_errors_total", operation="admit") == 2
    assert total(samples, "tollway_limits_store_errors_total", operation="rebuild") == 1
    closed.close()
