"""A real Prometheus scrapes a real `tollway serve`, one process or the supervisor of two
workers: what the calls driven through the gateway counted arrives, exactly, in Prometheus's
query API."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from typing import Any

import grpc
import httpx
import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import fixture_json
from tests.support.seed import recorded_stream, seed_request, seed_stream_request
from tests.support.metrics import tokens_by_type
from tests.support.served import Served, free_port
from tests.support.tools import require_tool
from tests.support.upstream import Reply, sse_events

# Prometheus scrapes every second; this bounds how long the values may take to arrive.
WAIT_S = 60.0
MODEL = {"gen_ai_provider_name": "mixrouter", "gen_ai_request_model": "gemini-2.0-flash"}
SELECTOR = '{gen_ai_provider_name="mixrouter", gen_ai_request_model="gemini-2.0-flash"}'


@pytest.fixture(params=[1, 2], ids=["one process", "two workers"])
async def served(request, tmp_path, upstream):
    served = Served(tmp_path, upstream, "prometheus")
    # Port 0: the gateway (or the supervisor of its workers) binds a free port itself and
    # names it in its log.
    await served.start(config={"server": {"metrics_listen": "127.0.0.1:0", "workers": request.param}})
    found = re.search(r"metrics (?:of all workers )?on http://127\.0\.0\.1:(\d+)/metrics", served.log_text())
    assert found, served.log_text()
    assert ("of all workers" in found.group(0)) == (request.param > 1)
    served.metrics_port = int(found.group(1))  # type: ignore[attr-defined]
    yield served
    await served.stop()


@pytest.fixture
async def prometheus(tmp_path, served):
    binary = require_tool("prometheus", "prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tollway\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{served.metrics_port}']\n", encoding="utf-8")
    log_path = tmp_path / "prometheus.log"
    # Prometheus takes no port 0: a port found free may be taken before it binds, so a start that
    # fails is tried again on another.
    for _ in range(3):
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if await ready(f"http://127.0.0.1:{port}", proc):
            break
    else:
        pytest.fail(f"prometheus did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
    yield f"http://127.0.0.1:{port}", proc, log_path
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def ready(base: str, proc: subprocess.Popen[Any]) -> bool:
    """Whether Prometheus answers /-/ready (bounded wait); False if it exited first."""
    deadline = time.monotonic() + WAIT_S
    async with httpx.AsyncClient() as http:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if (await http.get(f"{base}/-/ready", timeout=5)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return False


async def query(base: str, promql: str) -> dict[str, float]:
    """The instant vector of promql, keyed by the value of its one grouping label ("" when none)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    return {next(iter(r["metric"].values()), ""): float(r["value"][1]) for r in body["data"]["result"]}


async def eventually(base: str, promql: str, expected: dict[str, float], proc: subprocess.Popen[Any],
                     log_path: Any) -> None:
    """Poll (bounded) until promql gives exactly expected."""
    deadline = time.monotonic() + WAIT_S
    got: dict[str, float] | None = None
    while True:
        assert proc.poll() is None, f"prometheus exited:\n{log_path.read_text(errors='replace')[-3000:]}"
        try:
            got = await query(base, promql)
        except httpx.HTTPError:
            got = None  # not listening yet
        if got == expected:
            return
        assert time.monotonic() < deadline, f"{promql} gave {got}, not {expected}, within {WAIT_S}s"
        await asyncio.sleep(0.5)


async def test_prometheus_sees_exactly_the_calls_driven_through_the_gateway(served, prometheus):
    base, proc, log_path = prometheus
    served.upstream.reply(*[Reply(body=fixture_json("mixrouter/seed_response.json")) for _ in range(3)],
                          *[Reply(events=sse_events(recorded_stream())) for _ in range(2)],
                          Reply(status=503, body={"error": {"message": "overloaded"}}))
    answers = [await served.complete(seed_request()) for _ in range(3)]
    summaries = []
    for _ in range(2):
        messages = await served.stream(seed_stream_request())
        summaries.append(messages[-1].summary)
    error = await served.failure(seed_request())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "mixrouter: upstream returned HTTP 503: overloaded"

    usages = [a.usage for a in answers] + [s.usage for s in summaries]
    costs = [a.cost for a in answers] + [s.cost for s in summaries]
    assert all(not c.unpriced and c.total_nano_usd > 0 for c in costs)

    def check(promql: str, expected: dict[str, float]):
        return eventually(base, promql, expected, proc, log_path)

    await check(f"sum by (status) (tollway_requests_total{SELECTOR})", {"OK": 5, "UNAVAILABLE": 1})
    await check(f"sum by (rpc) (tollway_requests_total{SELECTOR})", {"Complete": 4, "StreamComplete": 2})
    await check(f"sum by (caller) (tollway_requests_total{SELECTOR})", {"alice": 6})
    await check(f"sum by (gen_ai_token_type) (tollway_tokens_total{SELECTOR})", {
        kind: float(tokens) for kind, tokens in tokens_by_type(usages).items()})
    await check(f"sum by (gen_ai_token_type) (gen_ai_client_token_usage_sum{SELECTOR})", {
        kind: float(tokens) for kind, tokens in tokens_by_type(usages).items()})
    await check(f"sum(tollway_cost_nano_usd_total{SELECTOR})", {"": float(sum(c.total_nano_usd for c in costs))})
    await check(f"sum by (error_type) (gen_ai_server_request_duration_seconds_count{SELECTOR})",
                {"": 5, "UNAVAILABLE": 1})
    await check(f"sum(gen_ai_server_time_to_first_token_seconds_count{SELECTOR})", {"": 2})
    await check('sum(tollway_gateway_overhead_seconds_count{rpc="StreamComplete"})', {"": 2})
    await check(f"sum by (status) (tollway_attempts_total{SELECTOR})", {"OK": 5, "UNAVAILABLE": 1})
    await check("sum(tollway_ledger_journal_backlog_records)", {"": 0})
    await check(f'sum(tollway_breaker_state{{gen_ai_provider_name="mixrouter", state="closed"}})', {"": 1})

