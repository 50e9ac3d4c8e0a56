"""The quota stores under test: in process and on a redis-server of the suite's own, both
on a clock the test moves, so window expiry is tested without sleeping."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from tollway.service.quota import InProcessStore, QuotaStore, RedisStore

from tests.support.redis_server import RedisServer


class ManualClock:
    """Unix seconds that move only when told. Starts at a whole second near now (Redis key
    expiry runs on the real clock, so figures must not look decades old)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def unique_prefix() -> str:
    """Each test's own keys on the shared server."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[QuotaStore]:
    made: QuotaStore
    if request.param == "memory":
        made = InProcessStore(clock)
    else:
        server = request.getfixturevalue("redis_server")
        made = RedisStore(server.url, timeout_s=5.0, key_prefix=unique_prefix(), clock=clock)
    yield made
    await made.close()
