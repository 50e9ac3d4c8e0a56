"""What only the Redis store has: other replicas, a server that restarts, flushes, stalls or is
gone, key expiry, and a URL with a password that must never show in an error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tollway.service.quota import (
    BudgetCharge,
    BudgetDemand,
    QuotaStoreError,
    RedisStore,
    WindowDemand,
    WindowSettlement,
)

from tests.quota.conftest import unique_prefix
from tests.support.redis_server import RedisServer, free_port

PASSWORD = "s3cret-quota-pw"
DAY = 86_400.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may stop, pause and flush; password-protected, as production is."""
    running = RedisServer(tmp_path, password=PASSWORD).start()
    yield running
    running.resume()
    running.stop()


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    made = RedisStore(server.url, timeout_s=1.0, key_prefix=unique_prefix())
    yield made
    await made.close()


def requests_window(rpm: int) -> WindowDemand:
    return WindowDemand("w:1:r:", rpm, None, 0, None)


def assert_no_secret(error: QuotaStoreError, url: str) -> None:
    # The redis error it replaces stays out of tracebacks (suppressed context) and holds no password.
    assert error.__cause__ is None and error.__suppress_context__
    for text in (str(error), repr(error), str(error.__context__)):
        assert PASSWORD not in text and url not in text


async def test_two_replicas_admitting_at_once_never_exceed_the_limit(server: RedisServer):
    prefix = unique_prefix()
    replicas = [RedisStore(server.url, timeout_s=5.0, key_prefix=prefix) for _ in range(2)]
    try:
        admissions = await asyncio.gather(*(replicas[call % 2].admit(f"c{call}", [requests_window(60)], [])
                                            for call in range(200)))
        assert sum(a.refusal is None for a in admissions) == 60
        windows, _ = await replicas[0].usage(["w:1:r:"], [])
        assert windows[0].requests == 60

        tokens = WindowDemand("w:1:t:", None, 1000, 7, None)
        admissions = await asyncio.gather(*(replicas[call % 2].admit(f"t{call}", [tokens], [])
                                            for call in range(300)))
        assert sum(a.refusal is None for a in admissions) == 1000 // 7
    finally:
        for replica in replicas:
            await replica.close()


async def test_the_server_clock_is_used_without_a_given_clock(store: RedisStore):
    admission = await store.admit("a", [requests_window(5)], [])
    # The server's TIME, not a test clock: within reach of this machine's own.
    assert abs(admission.now - time.time()) < 60


async def test_a_stopped_server_is_an_error_and_a_restarted_one_works_again(server: RedisServer,
                                                                            store: RedisStore):
    assert (await store.admit("a", [requests_window(5)], [])).refusal is None
    server.stop()
    with pytest.raises(QuotaStoreError) as stopped:
        await store.admit("b", [requests_window(5)], [])
    assert_no_secret(stopped.value, server.url)
    with pytest.raises(QuotaStoreError):
        await store.ping()

    server.start()
    # The very next call works, on a new connection; the restart lost the figures (no persistence).
    admission = await store.admit("c", [requests_window(5)], [BudgetDemand("b:1", 100, time.time() + DAY)])
    assert admission.missing_budgets == (0,)
    await store.ping()


async def test_a_flush_makes_budgets_missing_and_scripts_reload(server: RedisServer, store: RedisStore):
    await store.seed_budget("b:1", 10, 0, time.time() + DAY)
    assert (await store.admit("a", [], [BudgetDemand("b:1", 100, time.time() + DAY)])).missing_budgets == ()
    server.flush()
    with server.client() as client:
        client.script_flush()
    assert (await store.admit("a", [], [BudgetDemand("b:1", 100, time.time() + DAY)])).missing_budgets == (0,)


async def test_a_server_that_stops_answering_times_out(server: RedisServer):
    store = RedisStore(server.url, timeout_s=0.2, key_prefix=unique_prefix())
    try:
        await store.ping()
        server.pause()
        with pytest.raises(QuotaStoreError, match="did not answer within 200 ms"):
            await store.admit("a", [requests_window(5)], [])
        with pytest.raises(QuotaStoreError, match="did not answer"):
            await store.settle("a", [WindowSettlement("w:1:r:", 0, 0, True)], [])
        server.resume()
        assert (await store.admit("b", [requests_window(5)], [])).refusal is None
    finally:
        server.resume()
        await store.close()


async def test_an_unreachable_server_is_an_error_without_the_password():
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    store = RedisStore(url, timeout_s=1.0)
    try:
        with pytest.raises(QuotaStoreError) as unreachable:
            await store.admit("a", [requests_window(5)], [])
        assert_no_secret(unreachable.value, url)
        with pytest.raises(QuotaStoreError):
            await store.seed_budget("b:1", 1, 0, time.time() + DAY)
    finally:
        await store.close()


async def test_a_wrong_password_is_an_error_naming_neither_password(server: RedisServer):
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0"
    store = RedisStore(url, timeout_s=1.0)
    try:
        with pytest.raises(QuotaStoreError) as refused:
            await store.admit("a", [requests_window(5)], [])
        assert_no_secret(refused.value, url)
        assert "wrong-" not in str(refused.value)
    finally:
        await store.close()


def test_an_invalid_url_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as invalid:
        RedisStore(f"redis://:{PASSWORD}@127.0.0.1:notaport/0", timeout_s=1.0)
    assert PASSWORD not in str(invalid.value)


async def test_every_key_has_a_hash_tag_and_expires(server: RedisServer):
    prefix = unique_prefix()
    store = RedisStore(server.url, timeout_s=1.0, key_prefix=prefix)
    expires_at = time.time() + DAY
    try:
        await store.seed_budget("b:seeded", 5, 0, expires_at)
        await store.admit("a", [WindowDemand("w:1:r:", 10, 1000, 50, 2)], [BudgetDemand("b:seeded", 100, expires_at)])
        await store.renew_streams([("w:1:r:", "a")])
        await store.settle("a", [WindowSettlement("w:1:r:", 50, 80, False)],
                           [BudgetCharge("b:seeded", 3, False, expires_at),
                            BudgetCharge("b:unseeded", 0, True, expires_at)])
        with server.client() as client:
            keys = sorted(key.decode() for key in client.scan_iter(match=f"{{{prefix}}}:*"))
            ttls = {key: client.ttl(key) for key in keys}
    finally:
        await store.close()
    assert len(keys) == 7  # requests, reservations (3), leases, two budgets
    for key, ttl in ttls.items():
        if key.startswith(f"{{{prefix}}}:w:"):
            assert 0 < ttl <= 180, key
        else:
            assert DAY < ttl <= 2 * DAY + 1, key
