"""Metrics with several worker processes: two `tollway serve` processes started as workers are
(TOLLWAY_WORKER_INDEX set, one PROMETHEUS_MULTIPROC_DIR) write their values to that directory,
serve no /metrics themselves, and the exporter a supervisor runs serves the sums."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tollway.service.telemetry.metrics_export import serve_metrics, worker_exited

from tests.support.served import NORMAL_MODEL, Served, free_port


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def nothing_listens_on(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
async def workers(tmp_path, upstream):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    metrics_port = free_port()
    started = []
    for index in range(2):
        workdir = tmp_path / f"worker-{index}"
        workdir.mkdir()
        served = Served(workdir, upstream, f"worker-{index}")
        started.append(served)
        await served.start(config={"server": {"metrics_listen": f"127.0.0.1:{metrics_port}"}},
                           env={"TOLLWAY_WORKER_INDEX": str(index), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    yield started, metrics_dir, metrics_port
    for served in started:
        await served.stop()


async def test_two_workers_values_are_summed_by_the_exporter(workers):
    (first, second), metrics_dir, metrics_port = workers
    # Each start made 3 normal calls; two more on the first worker.
    for _ in range(2):
        await first.normal_call()

    # A worker never serves /metrics: the supervisor does, from the directory.
    assert nothing_listens_on(metrics_port)
    exporter = serve_metrics("127.0.0.1:0", str(metrics_dir))
    try:
        model = NORMAL_MODEL.split("/", 1)[1]
        samples = scrape(exporter.port)
        assert total(samples, "tollway_requests_total", gen_ai_request_model=model, status="OK") == 5 + 3
        assert total(samples, "gen_ai_server_request_duration_seconds_count", gen_ai_request_model=model) == 8
        assert total(samples, "tollway_tokens_total", gen_ai_request_model=model, gen_ai_token_type="input") == 8 * 3

        # Gauges are sampled every 2 s: each worker holds one closed breaker for the target.
        breaker = {"gen_ai_provider_name": "openai", "gen_ai_request_model": model, "state": "closed"}
        await wait_for(lambda: total(scrape(exporter.port), "tollway_breaker_state", **breaker) == 2)

        # A worker that exits stops counting in live gauges; its counters stay in the sums.
        await second.stop()
        worker_exited(second.pid)  # the directory the exporter serves
        samples = scrape(exporter.port)
        assert total(samples, "tollway_breaker_state", **breaker) == 1
        assert total(samples, "tollway_requests_total", gen_ai_request_model=model, status="OK") == 8
    finally:
        exporter.close()


async def wait_for(condition, wait_s: float = 15.0) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, f"not so after {wait_s}s"
        await asyncio.sleep(0.1)
