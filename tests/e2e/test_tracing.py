"""Traces as a collector receives them: the gateway's own OTLP exporter sends to a loopback
OTLP/gRPC receiver, and the tests read the spans it got.

A caller's W3C traceparent rides in gRPC metadata; its trace continues in the RPC span, the
upstream attempts are client spans under it, and so are media fetches.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets

import grpc
import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.answers import chunk, request, stream_request
from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config, serving
from tests.support.otlp import CLIENT, SERVER, STATUS_ERROR, STATUS_UNSET, Collector, ReceivedSpan
from tests.support.upstream import FakeUpstream, Reply, sse_events

Code = grpc.StatusCode
PROMPT = "the quarterly numbers are confidential"
ANSWER = "here is the summary you asked for"
CALLER_KEY = "tw-test-tracing-caller-0123456789"
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture
async def collector():
    """Named before start_client by every test, so it outlives the gateways it receives from."""
    receiver = await Collector().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def media_host():
    host = await FakeUpstream().start()
    yield host
    await host.stop()


def caller_parent() -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A caller's trace id, span id and the metadata that carries them (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def answer(text: str = ANSWER, model: str = "gpt-4o-2024-08-06") -> dict:
    return {
        "id": "chatcmpl-traced", "object": "chat.completion", "created": 1766735300, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
                  "prompt_tokens_details": {"cached_tokens": 100}},
    }


def stream_reply(words: list[str]) -> Reply:
    chunks = [*(chunk(w) for w in words), chunk(finish="stop"),
              chunk(usage={"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)})]
    return Reply(events=sse_events(chunks))


def traced(config: dict, collector: Collector, **tracing: object) -> dict:
    return {**config, "tracing": {"otlp_endpoint": collector.endpoint, **tracing}}


def two_providers(ups: list[FakeUpstream], collector: Collector, **tracing: object) -> dict:
    providers = {name: {"kind": "mixrouter", "base_url": f"{server.base_url}/v1", "api_key_envs": [env]}
                 for name, server, env in (("a", ups[0], "A_KEY"), ("b", ups[1], "B_KEY"))}
    routes = [{"name": "fast", "targets": [{"provider": "a", "model": "model-a"},
                                           {"provider": "b", "model": "model-b", "priority": 2}]}]
    config = {"providers": providers, "routes": routes,
              "routing": {"max_retries": 0, "backoff_initial_s": 0.001, "backoff_max_s": 0.005}}
    return traced(config, collector, **tracing)


TWO_KEYS = {"A_KEY": "tw-test-tracing-a-0001", "B_KEY": "tw-test-tracing-b-0001"}


async def flushed(client, collector: Collector, count: int) -> list[ReceivedSpan]:
    assert await client.gateway.runtime.tracing.force_flush()
    return await collector.wait_for(count)


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def every_value(spans: list[ReceivedSpan]) -> str:
    """Every attribute, event and status text of the spans, as one string to search."""
    parts = []
    for span in spans:
        parts += [span.name, span.status_message, repr(span.attributes), repr(span.resource)]
        parts += [f"{name} {attrs!r}" for name, attrs in span.events]
    return "\n".join(parts)


async def test_a_callers_trace_continues_through_the_rpc_and_its_upstream_attempt(collector, start_client, upstream):
    client = await start_client(traced(mixrouter_config(upstream), collector),
                                {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(body=answer()))
    trace_id, parent_id, metadata = caller_parent()

    call = client.stub.Complete(request("mixrouter/gpt-4o", PROMPT), metadata=metadata, timeout=10)
    response = await call

    spans = await flushed(client, collector, 2)
    rpc = one(spans, "tollway.v1.Completion/Complete")
    assert (rpc.trace_id, rpc.parent_span_id, rpc.kind) == (trace_id, parent_id, SERVER)
    request_id = dict(await call.trailing_metadata())["tollway-request-id"]
    assert rpc.attributes == {
        "rpc.system": "grpc", "rpc.service": "tollway.v1.Completion", "rpc.method": "Complete",
        "rpc.grpc.status_code": 0, "tollway.request_id": request_id, "tollway.caller": "anonymous",
        "tollway.route": "mixrouter/gpt-4o", "tollway.provider": "mixrouter",
        "tollway.upstream_model": "gpt-4o-2024-08-06", "tollway.attempts": 1,
        "gen_ai.usage.input_tokens": response.usage.input.total,
        "gen_ai.usage.output_tokens": response.usage.output.total,
        **({} if response.cost.unpriced else {"tollway.cost_nano_usd": response.cost.total_nano_usd}),
    }
    assert rpc.status_code == STATUS_UNSET
    assert rpc.resource["service.name"] == "tollway"

    attempt = one(spans, "chat gpt-4o")
    assert (attempt.trace_id, attempt.parent_span_id, attempt.kind) == (trace_id, rpc.span_id, CLIENT)
    assert response.usage.input.cache_read == 100
    assert attempt.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "mixrouter", "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.stream": False, "tollway.provider": "mixrouter",
        "server.address": "127.0.0.1", "server.port": upstream.port,
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.response.id": "chatcmpl-traced",
        "gen_ai.usage.input_tokens": response.usage.input.total,
        "gen_ai.usage.output_tokens": response.usage.output.total,
        "gen_ai.usage.cache_read.input_tokens": 100, "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0, "gen_ai.response.finish_reasons": ["stop"],
    }
    assert attempt.events == [] and attempt.status_code == STATUS_UNSET

    # The upstream continues the same trace, under the attempt span.
    assert upstream.received[0].headers["traceparent"] == f"00-{trace_id}-{attempt.span_id}-01"
    # No message text anywhere unless the operator opts in.
    text = every_value(spans)
    assert PROMPT not in text and ANSWER not in text and MIXROUTER_TEST_KEY not in text


async def test_a_fallback_gives_one_attempt_span_per_upstream_the_failed_one_with_its_error(collector, start_client,
                                                                                          ups):
    a, b = ups[0], ups[1]
    client = await start_client(two_providers(ups, collector), TWO_KEYS)
    a.reply(Reply(status=503, body={"error": {"message": f"overloaded, key {TWO_KEYS['A_KEY']}"}}))
    b.reply(Reply(body=answer(model="model-b")))
    trace_id, parent_id, metadata = caller_parent()

    await client.stub.Complete(request("fast", PROMPT), metadata=metadata, timeout=10)

    spans = await flushed(client, collector, 3)
    rpc = one(spans, "tollway.v1.Completion/Complete")
    assert (rpc.trace_id, rpc.parent_span_id) == (trace_id, parent_id)
    assert rpc.attributes["tollway.route"] == "fast" and rpc.attributes["tollway.attempts"] == 2
    first, second = one(spans, "chat model-a"), one(spans, "chat model-b")
    assert {first.parent_span_id, second.parent_span_id} == {rpc.span_id}
    assert first.attributes["tollway.provider"] == "a" and first.attributes["server.port"] == a.port
    assert first.attributes["error.type"] == "503" and first.attributes["http.response.status_code"] == 503
    assert first.status_code == STATUS_ERROR
    # The upstream's message, with the configured key it quoted taken out.
    assert first.status_message.startswith("a: upstream returned HTTP 503: overloaded, key ")
    assert TWO_KEYS["A_KEY"] not in every_value(spans)
    assert "gen_ai.usage.input_tokens" not in first.attributes
    assert second.status_code == STATUS_UNSET and "error.type" not in second.attributes
    assert second.attributes["gen_ai.response.model"] == "model-b"
    assert a.received[0].headers["traceparent"] == f"00-{trace_id}-{first.span_id}-01"
    assert b.received[0].headers["traceparent"] == f"00-{trace_id}-{second.span_id}-01"


async def test_a_stream_that_falls_back_is_traced_the_same_way(collector, start_client, ups):
    a, b = ups[0], ups[1]
    client = await start_client(two_providers(ups, collector), TWO_KEYS)
    a.reply(Reply(fault="reset"))
    b.reply(stream_reply(["one ", "two"]))
    trace_id, parent_id, metadata = caller_parent()

    messages = [m async for m in client.stub.StreamComplete(stream_request("fast", PROMPT), metadata=metadata,
                                                             timeout=10)]
    summary = messages[-1].summary

    spans = await flushed(client, collector, 3)
    rpc = one(spans, "tollway.v1.Completion/StreamComplete")
    assert (rpc.trace_id, rpc.parent_span_id, rpc.kind) == (trace_id, parent_id, SERVER)
    assert rpc.attributes["rpc.method"] == "StreamComplete" and rpc.attributes["rpc.grpc.status_code"] == 0
    first, second = one(spans, "chat model-a"), one(spans, "chat model-b")
    assert {first.parent_span_id, second.parent_span_id} == {rpc.span_id}
    assert first.kind == second.kind == CLIENT
    assert first.attributes["error.type"] == "UNAVAILABLE" and first.status_code == STATUS_ERROR
    assert second.attributes["gen_ai.request.stream"] is True
    assert second.attributes["gen_ai.usage.input_tokens"] == summary.usage.input.total == 3
    assert second.attributes["gen_ai.usage.output_tokens"] == summary.usage.output.total == 2
    assert second.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert second.attributes["gen_ai.response.time_to_first_chunk"] >= 0
    assert "one " not in every_value(spans)


async def test_a_target_passed_over_is_an_event_on_the_rpc_span(collector, start_client, ups):
    client = await start_client(two_providers(ups, collector), {"B_KEY": TWO_KEYS["B_KEY"]})
    ups[1].reply(Reply(body=answer(model="model-b")))

    await client.stub.Complete(request("fast"), timeout=10)

    spans = await flushed(client, collector, 2)
    rpc = one(spans, "tollway.v1.Completion/Complete")
    [(name, attributes)] = rpc.events
    assert name == "tollway.target_skipped"
    assert attributes == {"tollway.provider": "a", "gen_ai.request.model": "model-a",
                          "tollway.reason": "provider is configured but has no API key (set A_KEY)"}
    assert [s.name for s in spans if s.parent_span_id == rpc.span_id] == ["chat model-b"]


async def test_a_stream_the_caller_cancels_ends_its_spans_cancelled(collector, start_client, upstream):
    client = await start_client(traced(mixrouter_config(upstream), collector),
                                {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(events=sse_events([chunk(f"word{i} ") for i in range(200)]), event_delay_s=0.05))

    call = client.stub.StreamComplete(stream_request("mixrouter/gpt-4o"), timeout=30)
    first = await call.read()
    assert first.delta.text == "word0 "
    call.cancel()

    # No flush asked for: the batch processor sends them on its own schedule, once both ended.
    spans = await collector.wait_for(2)
    rpc = one(spans, "tollway.v1.Completion/StreamComplete")
    assert rpc.attributes["rpc.grpc.status_code"] == Code.CANCELLED.value[0]
    assert rpc.attributes["error.type"] == "CANCELLED" and rpc.status_code == STATUS_UNSET
    attempt = one(spans, "chat gpt-4o")
    assert attempt.parent_span_id == rpc.span_id
    assert attempt.attributes["error.type"] == "CANCELLED"
    assert (attempt.status_code, attempt.status_message) == (STATUS_ERROR, "the call was cancelled")


async def test_a_failed_call_marks_its_rpc_span_with_the_status(collector, start_client, ups):
    a, b = ups[0], ups[1]
    client = await start_client(two_providers(ups, collector), TWO_KEYS)
    a.reply(Reply(status=503, body={"error": {"message": "a is down"}}))
    b.reply(Reply(status=502, body={"error": {"message": "b is down"}}))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(request("fast"), timeout=10)
    assert err.value.code() == Code.UNAVAILABLE
    assert err.value.details() == "b: upstream returned HTTP 502: b is down"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.stub.Complete(request("nosuch/model"), timeout=10)
    assert refused.value.code() == Code.NOT_FOUND
    assert refused.value.details() == 'model: unknown provider "nosuch" (configured: a, b)'

    spans = await flushed(client, collector, 4)
    rpcs = [s for s in spans if s.name == "tollway.v1.Completion/Complete"]
    failed = next(s for s in rpcs if s.attributes["rpc.grpc.status_code"] == Code.UNAVAILABLE.value[0])
    assert failed.attributes["error.type"] == "UNAVAILABLE"
    assert (failed.status_code, failed.status_message) == (STATUS_ERROR, "b: upstream returned HTTP 502: b is down")
    assert [s.attributes["error.type"] for s in spans if s.parent_span_id == failed.span_id] == ["503", "502"]
    # The caller's mistake is not the gateway's error: the code is there, the span is not ERROR.
    mistaken = next(s for s in rpcs if s.attributes["rpc.grpc.status_code"] == Code.NOT_FOUND.value[0])
    assert mistaken.attributes["error.type"] == "NOT_FOUND" and mistaken.status_code == STATUS_UNSET


async def test_a_media_fetch_is_a_client_span_under_the_rpc(collector, start_client, upstream, media_host):
    config = traced({**mixrouter_config(upstream), "media": {"allow_networks": ["127.0.0.0/8"]}}, collector)
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    media_host.reply(Reply(status=302, headers={"location": f"{media_host.base_url}/files/report.pdf?sig=s3cr3t"}),
                     Reply(body=PDF, headers={"content-type": "application/pdf"}))
    upstream.reply(Reply(body=answer()))
    trace_id, _, metadata = caller_parent()
    document = pb.Part(document=pb.Media(url=f"{media_host.base_url}/report.pdf?token=t0ken"))
    message = pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=PROMPT), document])

    await client.stub.Complete(pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[message]), metadata=metadata,
                               timeout=10)

    spans = await flushed(client, collector, 3)
    rpc = one(spans, "tollway.v1.Completion/Complete")
    fetch = one(spans, "GET")
    assert (fetch.trace_id, fetch.parent_span_id, fetch.kind) == (trace_id, rpc.span_id, CLIENT)
    assert fetch.attributes == {
        "http.request.method": "GET", "url.full": f"{media_host.base_url}/report.pdf",
        "server.address": "127.0.0.1", "server.port": media_host.port,
        "tollway.media.part": "messages[0].parts[1].document.url", "http.response.status_code": 200,
        "tollway.media.redirects": 1, "http.response.body.size": len(PDF), "tollway.media.mime_type": "application/pdf",
    }
    assert "t0ken" not in every_value(spans) and "s3cr3t" not in every_value(spans)
    # The media host is the caller's choice: it learns nothing of the trace.
    assert all("traceparent" not in r.headers for r in media_host.received)
    assert one(spans, "chat gpt-4o").parent_span_id == rpc.span_id


async def test_a_refused_media_fetch_span_says_why(collector, start_client, upstream, media_host):
    config = traced({**mixrouter_config(upstream), "media": {"allow_networks": ["127.0.0.0/8"]}}, collector)
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    media_host.reply(Reply(status=404))
    document = pb.Part(document=pb.Media(url=f"{media_host.base_url}/gone.pdf"))
    message = pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="summarize"), document])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[message]), timeout=10)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[1].document.url: fetching the URL failed with HTTP 404"

    spans = await flushed(client, collector, 2)
    fetch = one(spans, "GET")
    assert fetch.attributes["error.type"] == "INVALID_ARGUMENT"
    assert fetch.attributes["http.response.status_code"] == 404
    assert (fetch.status_code, fetch.status_message) == (STATUS_ERROR, err.value.details())
    assert fetch.parent_span_id == one(spans, "tollway.v1.Completion/Complete").span_id


async def test_content_is_captured_only_when_the_operator_opts_in(collector, start_client, upstream):
    sha = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
    config = traced({**mixrouter_config(upstream), "callers": {"search": {"key_sha256": sha}}}, collector,
                    capture_content=True)
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(body=answer()))
    image = pb.Part(image=pb.Media(data=b"\x89PNG\r\n\x1a\n" + b"\0" * 32, mime_type="image/png"))
    call_request = pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[
        pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="be brief")]),
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=PROMPT), image])])

    await client.stub.Complete(call_request, metadata=(("authorization", f"Bearer {CALLER_KEY}"),), timeout=10)

    spans = await flushed(client, collector, 2)
    assert one(spans, "tollway.v1.Completion/Complete").attributes["tollway.caller"] == "search"
    attempt = one(spans, "chat gpt-4o")
    [(name, details)] = attempt.events
    assert name == "gen_ai.client.inference.operation.details"
    assert json.loads(details["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": PROMPT},
                                   {"type": "blob", "modality": "image", "mime_type": "image/png",
                                    "content": "(not captured)"}]},
    ]
    assert json.loads(details["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "stop"}]
    text = every_value(spans)
    assert CALLER_KEY not in text and MIXROUTER_TEST_KEY not in text and "Bearer" not in text
    assert base64.b64encode(b"\x89PNG").decode() not in text


async def test_list_models_and_usage_summary_get_their_span_too(collector, start_client, upstream):
    sha = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
    config = traced({**mixrouter_config(upstream), "callers": {"search": {"key_sha256": sha}}}, collector)
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    trace_id, parent_id, metadata = caller_parent()

    listed = await client.stub.ListModels(pb.ListModelsRequest(),
                                          metadata=(*metadata, ("authorization", f"Bearer {CALLER_KEY}")), timeout=10)
    assert [p.name for p in listed.providers] == ["mixrouter"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.GetUsageSummary(pb.GetUsageSummaryRequest(), timeout=10)
    assert err.value.code() == Code.UNAUTHENTICATED
    assert err.value.details() == "missing caller key: send metadata 'authorization: Bearer <key>'"

    spans = await flushed(client, collector, 2)
    models = one(spans, "tollway.v1.Completion/ListModels")
    assert (models.trace_id, models.parent_span_id, models.kind) == (trace_id, parent_id, SERVER)
    assert models.attributes == {"rpc.system": "grpc", "rpc.service": "tollway.v1.Completion",
                                 "rpc.method": "ListModels", "rpc.grpc.status_code": 0}
    summary = one(spans, "tollway.v1.Completion/GetUsageSummary")
    assert summary.attributes["rpc.grpc.status_code"] == Code.UNAUTHENTICATED.value[0]
    assert summary.attributes["error.type"] == "UNAUTHENTICATED" and summary.status_code == STATUS_UNSET
    assert CALLER_KEY not in every_value(spans)


async def test_a_captured_stream_answer_is_cut_to_the_bound(collector, start_client, upstream):
    client = await start_client(traced(mixrouter_config(upstream), collector, capture_content=True),
                                {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(stream_reply(["x" * 10_000, "y" * 10_000, "z" * 10_000]))

    messages = [m async for m in client.stub.StreamComplete(stream_request("mixrouter/gpt-4o"), timeout=10)]
    assert messages[-1].HasField("summary")

    spans = await flushed(client, collector, 2)
    [(_, details)] = one(spans, "chat gpt-4o").events
    [output] = json.loads(details["gen_ai.output.messages"])
    content = output["parts"][0]["content"]
    assert content.startswith("x" * 10_000 + "y" * 6000) and "z" not in content
    assert len(content.encode()) < 16 * 1024 + 64


async def test_sample_ratio_zero_exports_nothing_unless_the_caller_sampled_the_trace(collector, start_client,
                                                                                    upstream):
    client = await start_client(traced(mixrouter_config(upstream), collector, sample_ratio=0),
                                {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.default = Reply(body=answer())

    await client.stub.Complete(request("mixrouter/gpt-4o"), timeout=10)
    assert await client.gateway.runtime.tracing.force_flush()
    assert collector.spans() == []
    # Not sampled, yet the upstream still hears the trace (its sampled flag clear).
    flags = upstream.received[0].headers["traceparent"].rsplit("-", 1)[1]
    assert int(flags, 16) & 1 == 0

    trace_id, _, metadata = caller_parent()
    await client.stub.Complete(request("mixrouter/gpt-4o"), metadata=metadata, timeout=10)
    spans = await flushed(client, collector, 2)
    assert {s.trace_id for s in spans} == {trace_id}
    assert sorted(s.name for s in spans) == ["chat gpt-4o", "tollway.v1.Completion/Complete"]


async def test_without_propagation_the_upstream_hears_no_traceparent(collector, start_client, upstream):
    client = await start_client(traced(mixrouter_config(upstream), collector, propagate_upstream=False),
                                {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(body=answer()))
    _, _, metadata = caller_parent()

    await client.stub.Complete(request("mixrouter/gpt-4o"), metadata=metadata, timeout=10)

    assert len(await flushed(client, collector, 2)) == 2
    assert "traceparent" not in upstream.received[0].headers


async def test_tracing_is_off_by_default(start_client, upstream):
    client = await start_client(mixrouter_config(upstream), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(body=answer()))
    _, _, metadata = caller_parent()

    await client.stub.Complete(request("mixrouter/gpt-4o"), metadata=metadata, timeout=10)

    assert client.gateway.runtime.tracing is None
    assert "traceparent" not in upstream.received[0].headers


async def test_stopping_the_gateway_sends_the_spans_still_waiting(upstream, collector, tmp_path):
    config = traced({**mixrouter_config(upstream), "ledger": {"path": str(tmp_path / "ledger.sqlite3")}}, collector)
    upstream.reply(Reply(body=answer()))
    async with serving(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY}) as client:
        await client.stub.Complete(request("mixrouter/gpt-4o"), timeout=10)
    # No flush asked for: stopping sends what the batch processor still holds.
    spans = await collector.wait_for(2)
    assert sorted(s.name for s in spans) == ["chat gpt-4o", "tollway.v1.Completion/Complete"]
