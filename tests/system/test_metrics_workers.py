"""Metrics of `tollway serve --workers 2`: every worker writes its values to a directory the
supervisor made, no worker serves /metrics itself, and the supervisor's /metrics serves the
sums; a worker killed and restarted keeps its counters in them, while its live gauges stop
counting."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.served import NORMAL_MODEL, Served, free_port
from tests.support.supervised import established_connections, serving_workers, until_log, worker_pids

WAIT_S = 30.0
CHANNELS = 8


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def wait_for(condition, wait_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, f"not so after {wait_s}s"
        await asyncio.sleep(0.1)


@pytest.fixture
async def gateway(tmp_path, upstream):
    served = Served(tmp_path, upstream, "metrics-workers")
    metrics_port = free_port()
    await served.start(config={"server": {"workers": 2, "metrics_listen": f"127.0.0.1:{metrics_port}"}})
    assert served.proc is not None
    await serving_workers(served.proc, 2, served.log_text, WAIT_S)
    yield served, metrics_port
    await served.stop()


async def calls_over_many_connections(served: Served, calls_per_channel: int) -> set[int]:
    """Unary calls over CHANNELS connections of their own; the worker pids that held one."""
    model = NORMAL_MODEL
    request = pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="ping")])])
    channels = [grpc.aio.insecure_channel(served.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CHANNELS)]
    try:
        for _ in range(calls_per_channel):
            for channel in channels:
                stub = pb_grpc.CompletionStub(channel)  # type: ignore[no-untyped-call]
                response = await stub.Complete(request, metadata=served.auth(), timeout=10)
                assert response.choices[0].message.parts[0].text == "ok"
        workers = worker_pids(served.pid)
        return {pid for pid in workers.values() if established_connections(pid, served.port) > 0}
    finally:
        for channel in channels:
            await channel.close()


async def test_the_supervisor_serves_the_sum_of_every_workers_metrics(gateway):
    served, metrics_port = gateway
    model = NORMAL_MODEL.split("/", 1)[1]
    served_by = await calls_over_many_connections(served, calls_per_channel=2)
    assert len(served_by) == 2, "the kernel gave every connection to one worker"
    expected = 3 + CHANNELS * 2  # Served.start made three calls

    samples = scrape(metrics_port)
    assert total(samples, "tollway_requests_total", gen_ai_request_model=model, status="OK") == expected
    assert total(samples, "gen_ai_server_request_duration_seconds_count", gen_ai_request_model=model) == expected
    assert total(samples, "tollway_tokens_total", gen_ai_request_model=model, gen_ai_token_type="input") == \
        expected * 3
    # In multiprocess mode prometheus-client cannot sum process figures: none are served.
    assert not any(name.startswith("process_") for name, _ in samples)
    # No worker binds the metrics port: the supervisor holds it, and it alone answers.
    assert f"metrics of all workers on http://127.0.0.1:{metrics_port}/metrics" in served.log_text()

    # Gauges are sampled every 2 s: each worker holds one closed breaker for the target.
    breaker = {"gen_ai_provider_name": "openai", "gen_ai_request_model": model, "state": "closed"}
    await wait_for(lambda: total(scrape(metrics_port), "tollway_breaker_state", **breaker) == 2)

    # A worker killed: the supervisor restarts it; its counters stay in the sums.
    victim = worker_pids(served.pid)[1]
    os.kill(victim, signal.SIGKILL)
    await until_log(served.log_text, r"worker 1 \(pid \d+\) serving", 1, WAIT_S, served.proc)
    samples = scrape(metrics_port)
    assert total(samples, "tollway_requests_total", gen_ai_request_model=model, status="OK") == expected
    # The dead worker's breaker no longer counts; the new one has seen no call to that target yet.
    assert total(samples, "tollway_breaker_state", **breaker) == 1


async def test_a_taken_metrics_port_stops_the_supervisor_with_one_line(tmp_path, upstream):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = Served(tmp_path, upstream, "metrics-port-taken")
        with pytest.raises(pytest.fail.Exception, match="exited with 1"):
            await served.start(config={"server": {"workers": 2, "metrics_listen": f"127.0.0.1:{port}"}})
        assert served.proc is not None
        assert await asyncio.wait_for(served.proc.wait(), WAIT_S) == 1
        assert f"tollway: cannot serve metrics on 127.0.0.1:{port}: address already in use" in served.log_text()
        await served.stop()
