"""Prometheus metrics of an in-process gateway: what calls, fallbacks, breakers, cool-downs and
media fetches count, read from the /metrics text the gateway serves (and from its registry
where a gauge is read every few seconds)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tollway.service.telemetry import metrics as metrics_module
from tollway.v1 import completion_pb2 as pb

from tests.e2e.test_media_fetch import PDF, document_request
from tests.support.gateway import MIXROUTER_TEST_KEY, Client, fixture_json, mixrouter_config
from tests.support.metrics import tokens_by_type
from tests.support.seed import recorded_stream, seed_request, seed_stream_request
from tests.support.upstream import FakeUpstream, Reply, sse_events

Code = grpc.StatusCode
WAIT_S = 15.0
METRICS = {"metrics_listen": "127.0.0.1:0"}


def with_metrics(config: dict[str, Any], **metrics_table: Any) -> dict[str, Any]:
    config = {**config, "server": {**config.get("server", {}), **METRICS}}
    if metrics_table:
        config["metrics"] = metrics_table
    return config


async def scrape(client: Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample the gateway's /metrics serves: (name, labels) -> value."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{client.gateway.metrics_port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of name's samples whose labels include labels."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def registry_value(client: Client, name: str, **labels: str) -> float | None:
    metrics = client.gateway.runtime.metrics
    assert metrics is not None
    return metrics.registry.get_sample_value(name, labels)


async def wait_for_gauge(client: Client, name: str, value: float, **labels: str) -> None:
    """Gauges are read every couple of seconds: wait (bounded) until the reading shows value."""
    deadline = time.monotonic() + WAIT_S
    while registry_value(client, name, **labels) != value:
        assert time.monotonic() < deadline, (
            f"{name}{labels} is {registry_value(client, name, **labels)}, not {value}, after {WAIT_S}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def metered(start_client, upstream) -> Client:
    return await start_client(with_metrics(mixrouter_config(upstream)), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def test_calls_are_counted_by_status_with_their_tokens_cost_and_durations(metered, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")),
                   Reply(body=fixture_json("mixrouter/seed_response.json")),
                   Reply(events=sse_events(recorded_stream())),
                   Reply(status=503, body={"error": {"message": "overloaded"}}))
    answers = [await metered.stub.Complete(seed_request(), timeout=5) for _ in range(2)]
    summary = None
    async for message in metered.stub.StreamComplete(seed_stream_request(), timeout=5):
        if message.HasField("summary"):
            summary = message.summary
    assert summary is not None
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await metered.stub.Complete(seed_request(), timeout=5)
    assert failed.value.code() == Code.UNAVAILABLE
    assert failed.value.details() == "mixrouter: upstream returned HTTP 503: overloaded"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await metered.stub.Complete(pb.CompleteRequest(model="nowhere/model", messages=seed_request().messages),
                                    timeout=5)
    assert unknown.value.code() == Code.NOT_FOUND

    samples = await scrape(metered)
    target = {"gen_ai_provider_name": "mixrouter", "gen_ai_request_model": "gemini-2.0-flash"}
    requests = "tollway_requests_total"
    assert total(samples, requests, status="OK", rpc="Complete", route="mixrouter/gemini-2.0-flash",
                 caller="anonymous", **target) == 2
    assert total(samples, requests, status="OK", rpc="StreamComplete", **target) == 1
    assert total(samples, requests, status="UNAVAILABLE", **target) == 1
    # Refused before any target was resolved: no caller-chosen name becomes a label value.
    assert total(samples, requests, status="NOT_FOUND", route="", gen_ai_provider_name="",
                 gen_ai_request_model="") == 1
    assert not any("nowhere" in value for (_, labels) in samples for _, value in labels)

    usages = [a.usage for a in answers] + [summary.usage]
    figures = tokens_by_type(usages)
    assert figures["input"] > 0 and figures["output"] > 0
    for kind, tokens in figures.items():
        assert total(samples, "tollway_tokens_total", gen_ai_token_type=kind, **target) == tokens, kind
        assert total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type=kind, **target) == tokens, kind
    calls_with = {"input": 3, "output": 3, "cache_read": sum(1 for u in usages if u.input.cache_read),
                  "reasoning": sum(1 for u in usages if u.output.reasoning),
                  "cache_write": sum(1 for u in usages if u.input.cache_write_5m + u.input.cache_write_1h
                                     + u.input.cache_write_unknown_ttl)}
    for kind, calls in calls_with.items():
        assert total(samples, "gen_ai_client_token_usage_count", gen_ai_token_type=kind, **target) == calls, kind
    cost = sum(a.cost.total_nano_usd for a in answers) + summary.cost.total_nano_usd
    assert cost > 0
    assert total(samples, "tollway_cost_nano_usd_total", **target) == cost

    duration = "gen_ai_server_request_duration_seconds_count"
    assert total(samples, duration, error_type="", gen_ai_operation_name="chat", **target) == 3
    assert total(samples, duration, error_type="UNAVAILABLE", **target) == 1
    assert total(samples, duration) == 5
    assert total(samples, "gen_ai_server_time_to_first_token_seconds_count", **target) == 1
    # Every call that reached the upstream, and only those.
    assert total(samples, "tollway_gateway_overhead_seconds_count") == 4
    assert total(samples, "tollway_gateway_overhead_seconds_count", rpc="StreamComplete") == 1
    assert total(samples, "tollway_attempts_total", status="OK", **target) == 3
    assert total(samples, "tollway_attempts_total", status="UNAVAILABLE", **target) == 1
    assert total(samples, "tollway_fallbacks_total") == 0
    # The process's own figures, as a Python exporter has them.
    assert total(samples, "process_resident_memory_bytes") > 0


async def test_an_unpriced_call_is_counted_apart_from_the_cost(metered, upstream):
    body = fixture_json("mixrouter/seed_response.json")
    body["model"] = "some-model-nobody-prices"
    upstream.reply(Reply(body=body))
    request = seed_request()
    request.model = "mixrouter/some-model-nobody-prices"

    response = await metered.stub.Complete(request, timeout=5)

    assert response.cost.unpriced
    samples = await scrape(metered)
    target = {"gen_ai_provider_name": "mixrouter", "gen_ai_request_model": "some-model-nobody-prices"}
    assert total(samples, "tollway_unpriced_requests_total", **target) == 1
    assert total(samples, "tollway_cost_nano_usd_total", **target) == 0


async def test_the_endpoint_serves_a_link_at_the_root_and_nothing_else(metered):
    base = f"http://127.0.0.1:{metered.gateway.metrics_port}"
    async with httpx.AsyncClient() as http:
        root = await http.get(base + "/", timeout=10)
        other = await http.get(base + "/admin", timeout=10)
    assert root.status_code == 200 and 'href="/metrics"' in root.text
    assert other.status_code == 404 and other.text == "not found: metrics are at /metrics\n"


async def test_no_metrics_listen_keeps_no_metrics_at_all(client):
    runtime = client.gateway.runtime
    assert runtime.metrics is None and runtime.media.metrics is None
    assert client.gateway.metrics_port is None and client.gateway.metrics_sampler is None


# -- routes: attempts, fallbacks, breakers, cool-downs --------------------------------------


def two_providers(ups: list[FakeUpstream], routing: dict[str, Any] | None = None) -> dict[str, Any]:
    a, b, _ = ups
    return with_metrics({
        "providers": {name: {"kind": "mixrouter", "base_url": f"{server.base_url}/v1",
                             "api_key_env": f"{name.upper()}_KEY"} for name, server in (("a", a), ("b", b))},
        "routes": [{"name": "fast", "targets": [{"provider": "a", "model": "model-a"},
                                                {"provider": "b", "model": "model-b", "priority": 2}]}],
        "routing": {"max_retries": 0, "backoff_initial_s": 0.001, "backoff_max_s": 0.005, **(routing or {})},
    })


TWO_KEYS = {"A_KEY": "tw-test-a-key-0001", "B_KEY": "tw-test-b-key-0001"}


def answer(text: str = "ok") -> dict[str, Any]:
    return {"id": "chatcmpl-m", "object": "chat.completion", "created": 1766735300, "model": "upstream-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def fast(model: str = "fast") -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])


async def test_a_fallback_counts_both_attempts_and_the_target_left_behind(start_client, ups):
    a, b, _ = ups
    client = await start_client(two_providers(ups), TWO_KEYS)
    a.reply(Reply(status=503, body={"error": {"message": "overloaded"}}))
    b.reply(Reply(body=answer("from b")))

    response = await client.stub.Complete(fast(), timeout=10)

    assert response.provider == "b"
    samples = await scrape(client)
    assert total(samples, "tollway_attempts_total", gen_ai_provider_name="a", gen_ai_request_model="model-a",
                 status="UNAVAILABLE") == 1
    assert total(samples, "tollway_attempts_total", gen_ai_provider_name="b", gen_ai_request_model="model-b",
                 status="OK") == 1
    assert total(samples, "tollway_fallbacks_total", route="fast", gen_ai_provider_name="a",
                 gen_ai_request_model="model-a") == 1
    assert total(samples, "tollway_fallbacks_total") == 1
    # The call is counted under the target that answered.
    assert total(samples, "tollway_requests_total", route="fast", gen_ai_provider_name="b", status="OK") == 1


async def test_an_open_breaker_and_a_cooling_key_show_in_their_gauges(start_client, ups):
    a, b, _ = ups
    client = await start_client(two_providers(ups, {"breaker": {"consecutive_failures": 1, "cooldown_s": 300}}),
                                TWO_KEYS)
    a.reply(Reply(status=503, body={"error": {"message": "overloaded"}}))
    b.reply(Reply(status=429, body={"error": {"message": "slow down"}}))

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await client.stub.Complete(fast(), timeout=10)

    assert failed.value.code() == Code.RESOURCE_EXHAUSTED
    assert failed.value.details() == "b: upstream returned HTTP 429: slow down"
    await wait_for_gauge(client, "tollway_breaker_state", 1, gen_ai_provider_name="a",
                         gen_ai_request_model="model-a", state="open")
    await wait_for_gauge(client, "tollway_key_cooldowns", 1, gen_ai_provider_name="b",
                         gen_ai_request_model="model-b")
    # b answered (with a 429): its breaker stays closed.
    await wait_for_gauge(client, "tollway_breaker_state", 1, gen_ai_provider_name="b",
                         gen_ai_request_model="model-b", state="closed")


# -- bounded labels -------------------------------------------------------------------------


async def test_caller_chosen_models_past_the_limit_fold_into_other(start_client, upstream, monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_MODELS", 2)
    monkeypatch.setattr(metrics_module, "MAX_ROUTES", 2)
    config = {**mixrouter_config(upstream),
              "routes": [{"name": "fast", "targets": [{"provider": "mixrouter", "model": "configured-model"}]}]}
    client = await start_client(with_metrics(config), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.default = Reply(body=answer())

    for model in ("m1", "m2", "m3", "m4"):
        await client.stub.Complete(fast(f"mixrouter/{model}"), timeout=5)
    # A configured route and its target are the operator's: never folded.
    await client.stub.Complete(fast("fast"), timeout=5)

    samples = await scrape(client)
    models = {dict(labels)["gen_ai_request_model"] for (name, labels) in samples if name == "tollway_requests_total"}
    routes = {dict(labels)["route"] for (name, labels) in samples if name == "tollway_requests_total"}
    assert models == {"m1", "m2", "other", "configured-model"}
    assert routes == {"mixrouter/m1", "mixrouter/m2", "other", "fast"}
    assert total(samples, "tollway_requests_total", gen_ai_request_model="other") == 2
    assert total(samples, "tollway_attempts_total", gen_ai_request_model="other") == 2
    assert total(samples, "tollway_attempts_total", gen_ai_request_model="configured-model") == 1


async def test_request_labels_the_operator_lists_become_metric_labels(start_client, upstream):
    config = with_metrics(mixrouter_config(upstream), label_keys=["team", "cost-center"])
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.default = Reply(body=answer())

    for team in ("search", "search", "ads"):
        request = fast("mixrouter/m")
        request.labels.update({"team": team, "cost-center": "cc-17", "ticket": f"T-{team}"})
        await client.stub.Complete(request, timeout=5)
    await client.stub.Complete(fast("mixrouter/m"), timeout=5)

    samples = await scrape(client)
    assert total(samples, "tollway_requests_total", label_team="search", label_cost_center="cc-17") == 2
    assert total(samples, "tollway_requests_total", label_team="ads") == 1
    assert total(samples, "tollway_requests_total", label_team="", label_cost_center="") == 1
    assert total(samples, "tollway_tokens_total", label_team="search", gen_ai_token_type="input") == 6
    # A label not listed is no metric label.
    assert not any(k == "label_ticket" or v.startswith("T-") for (_, labels) in samples for k, v in labels)


async def test_a_label_key_list_that_cannot_be_labels_is_refused(start_client, upstream):
    from tollway.service.config.loader import ConfigError, parse_config

    with pytest.raises(ConfigError) as refused:
        parse_config({"metrics": {"label_keys": ["cost-center", "cost_center"]}})
    assert str(refused.value) == "metrics.label_keys: 'cost-center' and 'cost_center' are both the metric label " \
                                 "label_cost_center"
    with pytest.raises(ConfigError) as too_many:
        parse_config({"metrics": {"label_keys": [f"k{i}" for i in range(9)]}})
    assert str(too_many.value) == "metrics.label_keys lists 9 keys; at most 8 may be metric labels"
    with pytest.raises(ConfigError) as unknown:
        parse_config({"metrics": {"label_key": ["team"]}})
    assert str(unknown.value) == "unknown key(s) in [metrics]: label_key (did you mean label_keys?)"
    with pytest.raises(ConfigError) as listen:
        parse_config({"server": {"metrics_listen": "9464"}})
    assert str(listen.value) == "server.metrics_listen '9464' is not HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)"


# -- media ----------------------------------------------------------------------------------


@pytest.fixture
async def media_host():
    host = await FakeUpstream().start()
    yield host
    await host.stop()


async def test_media_fetches_count_their_bytes_and_refusals_by_reason(start_client, upstream, media_host):
    config = with_metrics({**mixrouter_config(upstream), "media": {"allow_networks": ["127.0.0.0/8"]}})
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.default = Reply(body=answer())
    media_host.reply(Reply(body=PDF, headers={"content-type": "application/pdf"}),
                     Reply(status=404, body=b"gone"),
                     Reply(body=b"plain words, not a PDF", headers={"content-type": "application/pdf"}))

    await client.stub.Complete(document_request(f"{media_host.base_url}/report.pdf"), timeout=5)
    for path in ("/gone.pdf", "/words.pdf"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.stub.Complete(document_request(f"{media_host.base_url}{path}"), timeout=5)
        assert refused.value.code() == Code.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as blocked:
        await client.stub.Complete(document_request("http://10.0.0.1/secret.pdf"), timeout=5)
    assert blocked.value.code() == Code.PERMISSION_DENIED

    samples = await scrape(client)
    assert total(samples, "tollway_media_fetches_total") == 4
    assert total(samples, "tollway_media_fetch_bytes_total") == len(PDF) + len(b"plain words, not a PDF")
    refusals = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
                if name == "tollway_media_fetch_refusals_total"}
    assert refusals == {"blocked_address": 1, "too_large": 0, "http_error": 1, "redirect": 0, "timeout": 0,
                        "unreachable": 0, "invalid_url": 0, "content": 1}


# -- calls that end without an answer --------------------------------------------------------


async def wait_for_sample(client: Client, name: str, value: float, **labels: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        samples = await scrape(client)
        if total(samples, name, **labels) == value:
            return samples
        assert time.monotonic() < deadline, f"{name}{labels} is {total(samples, name, **labels)}, not {value}"
        await asyncio.sleep(0.05)


async def test_a_stream_the_caller_cancels_is_counted_with_its_estimated_tokens(metered, upstream):
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "first words"},
                            "finish_reason": None}]}]
    upstream.reply(Reply(events=sse_events(chunks, done=False), fault="stall"))
    request = pb.StreamCompleteRequest(model="mixrouter/gemini-2.0-flash",
                                       messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hello there")])])

    call = metered.stub.StreamComplete(request, timeout=30)
    first = await call.read()
    assert first.delta.text == "first words"
    call.cancel()

    target = {"gen_ai_provider_name": "mixrouter", "gen_ai_request_model": "gemini-2.0-flash"}
    samples = await wait_for_sample(metered, "tollway_requests_total", 1, status="CANCELLED", **target)
    # Estimated as the ledger records it: the request's text in, the text forwarded out.
    assert total(samples, "tollway_tokens_total", gen_ai_token_type="input", **target) > 0
    assert total(samples, "tollway_tokens_total", gen_ai_token_type="output", **target) > 0
    assert total(samples, "tollway_attempts_total", status="CANCELLED", **target) == 1
    assert total(samples, "gen_ai_server_time_to_first_token_seconds_count") == 0


async def test_a_metrics_port_already_taken_stops_the_start(start_client, upstream):
    import socket

    from tollway.service.telemetry.metrics_export import MetricsListenError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = mixrouter_config(upstream)
        config["server"] = {"metrics_listen": f"127.0.0.1:{port}"}
        with pytest.raises(MetricsListenError) as refused:
            await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    assert str(refused.value) == f"cannot serve metrics on 127.0.0.1:{port}: address already in use"


async def test_a_reload_keeps_the_metrics_settings_it_started_with(tmp_path, upstream, caplog):
    from tollway.service.config.loader import load_config
    from tollway.service.gateway.server import start_gateway

    path = tmp_path / "tollway.toml"
    base = (f'[server]\nmetrics_listen = "127.0.0.1:0"\n[providers.mixrouter]\nbase_url = "{upstream.base_url}/v1"\n'
            f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    path.write_text(base + '[metrics]\nlabel_keys = ["team"]\n', encoding="utf-8")
    gateway = await start_gateway(load_config(path), environ={"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY},
                                  listen="127.0.0.1:0", config_path=str(path))
    try:
        metrics = gateway.runtime.metrics
        path.write_text(base + '[metrics]\nlabel_keys = ["team", "feature"]\n', encoding="utf-8")
        assert gateway.reload()
        assert "server.metrics_listen or [metrics] changed: the new settings take effect at the next restart" \
            in caplog.text
        assert gateway.runtime.metrics is metrics
        assert metrics is not None and metrics.requests._labelnames[-1] == "label_team"
    finally:
        await gateway.stop(grace=0)
