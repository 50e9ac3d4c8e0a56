"""Limits shared by every replica: two `tollway serve` instances on their own ports, two workers
each, one Redis and one PostgreSQL ledger. A rule admits its limit across all of them, not its
limit per process; a budget stops both once the ledger-exact spend passes it, and survives a
restart of both and a Redis flush; with Redis stopped, calls follow on_store_error and enforcement
resumes when it returns."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field

import grpc
import psycopg
import pytest
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.answers import ok, request
from tests.support.gateway import TEST_KEY_PATTERN
from tests.support.ledger import pg_admin, pg_schema, with_schema  # noqa: F401 - fixtures
from tests.support.redis_server import RedisServer
from tests.support.served import free_port, to_toml
from tests.support.supervised import ServedGateway
from tests.support.upstream import FakeUpstream

WAIT_S = 30.0
KEYS = {"batch": "tw-test-limits-batch-5b7e1d", "spender": "tw-test-limits-spender-0a9c44",
        "probe": "tw-test-limits-probe-77e2c1", "ops": "tw-test-limits-ops-d41f08"}
# A tenth of a cent a token in and out: each answer (3 + 1 tokens) costs $0.004.
CALL_NANO_USD = 4_000_000
BUDGET_NANO_USD = 50_000_000
child_log = logging.getLogger("tests.limits.gateway")


def auth(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[name]}"),)


@dataclass
class Fleet:
    instances: list[ServedGateway]
    redis: RedisServer
    dsn: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stubs(self) -> list[pb_grpc.CompletionStub]:
        """Four connections per instance, so both of its workers take calls."""
        if not self.channels:
            for instance in self.instances:
                for i in range(4):
                    self.channels.append(grpc.aio.insecure_channel(
                        instance.target, options=[("grpc.use_local_subchannel_pool", 1), ("test.connection", i)]))
        return [pb_grpc.CompletionStub(channel) for channel in self.channels]

    async def close_channels(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels.clear()

    def ledger_rows(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
async def fleet(tmp_path, pg_admin, pg_schema):  # noqa: F811 - fixtures
    redis_server = RedisServer(tmp_path).start()
    upstream = await FakeUpstream().start()
    upstream.default = ok()
    dsn = with_schema(pg_admin, pg_schema)
    instances = []
    for name in ("east", "west"):
        port = free_port()
        config = {
            "server": {"listen": f"127.0.0.1:{port}", "workers": 2, "log_format": "json", "grace_period_s": 5},
            "providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1"}},
            "routing": {"max_retries": 0},
            "prices": [{"provider": "mixrouter", "model": "upstream-model", "effective_from": "2020-01-01",
                        "input_text": 1_000_000_000_000, "output_text": 1_000_000_000_000}],
            "callers": {caller: {"key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                                 **({"role": "admin"} if caller == "ops" else {})}
                        for caller, key in KEYS.items()},
            "ledger": {"dsn": dsn, "path": str(tmp_path / f"{name}.sqlite3"),
                       "journal_dir": str(tmp_path / f"{name}-journal"), "batch_linger_s": 0.01},
            "limits": {
                "redis_url": redis_server.url, "on_store_error": "allow", "store_timeout_ms": 200,
                "rules": [{"name": "batch-60", "callers": ["batch"], "requests_per_minute": 60},
                          {"name": "probe-5", "callers": ["probe"], "requests_per_minute": 5}],
                "budgets": [{"name": "spender-daily", "callers": ["spender"], "period": "day", "max_usd": "0.05"}],
            },
        }
        path = tmp_path / f"{name}.toml"
        path.write_text(to_toml(config), encoding="utf-8")
        instances.append(ServedGateway(path, port, workers=2, wait_s=WAIT_S))
    await asyncio.gather(*(instance.start() for instance in instances))
    fleet = Fleet(instances, redis_server, dsn)
    yield fleet
    await fleet.close_channels()
    for instance in instances:
        await instance.terminate()
    redis_server.stop()
    await upstream.stop()
    for instance in instances:
        text = instance.log_text()
        for line in text.splitlines():
            child_log.info("%s", line)
        assert TEST_KEY_PATTERN.findall(text) == [], "a test key reached the gateway's log"


async def outcome(stub: pb_grpc.CompletionStub, caller: str) -> grpc.StatusCode:
    try:
        await stub.Complete(request("mixrouter/m"), metadata=auth(caller), timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_three_times_a_60_per_minute_rule_over_two_instances_admits_60_a_minute(fleet):
    stubs = fleet.stubs()
    started = time.monotonic()
    sent: list[tuple[float, asyncio.Task[grpc.StatusCode]]] = []
    # 3 calls a second for 62 s, round-robin over both instances' eight connections.
    for i in range(186):
        await asyncio.sleep(max(0.0, started + i / 3 - time.monotonic()))
        sent.append((time.monotonic() - started, asyncio.create_task(outcome(stubs[i % len(stubs)], "batch"))))
    results = [(at, await task) for at, task in sent]
    first_minute = [code for at, code in results if at < 59.5]
    admitted = first_minute.count(grpc.StatusCode.OK)
    refused = first_minute.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert admitted + refused == len(first_minute), set(first_minute)
    assert 59 <= admitted <= 61, f"admitted {admitted} in the first minute"
    logging.getLogger("tests.limits").warning("60 a minute over two instances of two workers: %d of %d calls "
                                              "admitted in the first minute, %d in all of %d", admitted,
                                              len(first_minute), sum(c == grpc.StatusCode.OK for _, c in results),
                                              len(results))
    # The window slides: the calls of the first seconds leave it, and calls are admitted again.
    assert grpc.StatusCode.OK in [code for at, code in results if at > 60.5]
    # Every instance took part in both admitting and refusing.
    ok_per_target = {i % len(stubs) // 4 for i, (_, code) in enumerate(results) if code == grpc.StatusCode.OK}
    assert ok_per_target == {0, 1}
    # The ledger agrees: one OK record per admitted call, one refusal record per refused one.
    await asyncio.sleep(1.0)
    rows = dict(fleet.ledger_rows("SELECT status, COUNT(*) FROM tollway_ledger WHERE caller = 'batch' GROUP BY status"))
    total_ok = sum(code == grpc.StatusCode.OK for _, code in results)
    assert rows == {"OK": total_ok, "RESOURCE_EXHAUSTED": len(results) - total_ok}


async def test_a_budget_stops_both_instances_and_survives_their_restart_and_a_redis_flush(fleet):
    stubs = fleet.stubs()
    in_flight = 4

    async def spend_until_refused(stub: pb_grpc.CompletionStub) -> int:
        admitted = 0
        while (code := await outcome(stub, "spender")) == grpc.StatusCode.OK:
            admitted += 1
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        return admitted

    # Two callers at a time on each instance.
    admitted = sum(await asyncio.gather(*(spend_until_refused(stubs[i]) for i in (0, 1, 4, 5))))
    await asyncio.sleep(1.0)
    [(spent, calls)] = fleet.ledger_rows(
        "SELECT SUM(cost_nano_usd), COUNT(*) FROM tollway_ledger WHERE caller = 'spender' AND status = 'OK'")
    spent = int(spent)  # PostgreSQL's SUM of a bigint is a numeric
    assert calls == admitted and spent == admitted * CALL_NANO_USD
    overshoot = spent - BUDGET_NANO_USD
    # Past the budget only by calls admitted while earlier ones were still in flight: at most the
    # four callers' calls, and each caller's previous call if its charge had not reached Redis yet.
    assert 0 <= overshoot <= 2 * in_flight * CALL_NANO_USD, overshoot
    logging.getLogger("tests.limits").warning("budget $0.05 with %d calls in flight: %d calls admitted, spend "
                                              "$%.3f, overshoot $%.3f", in_flight, admitted, spent / 1e9,
                                              overshoot / 1e9)
    for stub in (stubs[2], stubs[6]):
        assert await outcome(stub, "spender") == grpc.StatusCode.RESOURCE_EXHAUSTED

    async def spent_seen(stub: pb_grpc.CompletionStub) -> int:
        found = await stub.GetLimits(pb.GetLimitsRequest(caller="spender"), metadata=auth("ops"), timeout=10)
        assert found.store_reachable
        [budget] = found.budgets
        return budget.spent_nano_usd

    assert await spent_seen(stubs[0]) == spent
    # Both instances restarted mid-day: the budget is where it was.
    await fleet.close_channels()
    for instance in fleet.instances:
        await instance.terminate()
    await asyncio.gather(*(instance.start() for instance in fleet.instances))
    stubs = fleet.stubs()
    assert await spent_seen(stubs[0]) == spent
    assert await outcome(stubs[4], "spender") == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Redis loses everything: the figure is rebuilt from the ledger the first time it is needed.
    with fleet.redis.client() as client:
        client.flushall()
    assert await outcome(stubs[1], "spender") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await spent_seen(stubs[5]) == spent


async def test_with_redis_stopped_calls_are_allowed_and_enforcement_resumes_when_it_returns(fleet):
    stubs = fleet.stubs()
    fleet.redis.stop()
    # on_store_error = "allow": every call is served, on both instances, past the rule's 5.
    codes = await asyncio.gather(*(outcome(stubs[i % len(stubs)], "probe") for i in range(12)))
    assert codes == [grpc.StatusCode.OK] * 12
    fleet.redis.start()
    codes = [await outcome(stubs[i % len(stubs)], "probe") for i in range(8)]
    assert codes == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    for instance in fleet.instances:
        text = instance.log_text()
        assert "limits store: admit failed" in text
        assert "Traceback" not in text
        assert instance.proc is not None and instance.proc.returncode is None
