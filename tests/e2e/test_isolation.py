"""One upstream connection pool serves every caller: nothing of one call may leak into another."""

from __future__ import annotations

from tollway.service.routing.health import BreakerPolicy, CircuitBreaker

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json
from tests.support.seed import seed_request
from tests.support.upstream import Reply


async def test_a_cookie_an_upstream_sets_never_rides_on_a_later_request(start_client, upstream):
    # "localhost", not 127.0.0.1: cookie jars refuse cookies from bare IP addresses, which
    # would hide the leak.
    config = {"providers": {"mixrouter": {"base_url": f"http://localhost:{upstream.port}/v1"}},
              "routing": {"max_retries": 0}}
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    body = fixture_json("mixrouter/seed_response.json")
    upstream.reply(Reply(body=body, headers={"set-cookie": "session=caller-a-secret; Path=/"}),
                   Reply(body=body))

    await client.stub.Complete(seed_request(), timeout=5)
    await client.stub.Complete(seed_request(), timeout=5)

    assert len(upstream.received) == 2
    assert "Cookie" not in upstream.received[1].headers


def test_the_error_rate_window_holds_constant_memory_whatever_the_traffic():
    now = [0.0]
    breaker = CircuitBreaker(BreakerPolicy(window_s=60, min_calls=10**9), clock=lambda: now[0])
    for i in range(100_000):
        now[0] = i * 0.01  # 1000 s of calls at 100 a second
        breaker.record_success()
    assert len(breaker._buckets) <= CircuitBreaker.BUCKETS
    assert breaker._calls == 6000  # the last 60 s only
