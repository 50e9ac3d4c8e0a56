"""Cancellation, deadlines, graceful shutdown, health and reflection, over real channels.

Waits are bounded (asyncio.wait_for) so a regression fails instead of hanging; nothing
here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config
from tests.support.upstream import Reply, sse_events
from tests import support

Code = grpc.StatusCode
SERVICE = "tollway.v1.Completion"
MODEL = "mixrouter/gemini-2.0-flash"
# Bound on every wait for something that should happen promptly.
WAIT_S = 5.0


def fields() -> dict:
    return dict(model=MODEL, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hello")])])


async def until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def read_to_end(call) -> list[pb.StreamCompleteResponse]:
    """The rest of a stream already read from with read() (the two APIs may not be mixed)."""
    out = []
    while (message := await asyncio.wait_for(call.read(), WAIT_S)) is not grpc.aio.EOF:
        out.append(message)
    return out


def stream_chunks(words: list[str]) -> list[dict]:
    chunks = [
        {"id": "chatcmpl-life", "object": "chat.completion.chunk", "created": 1766735300, "model": "gemini-2.0-flash",
         "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
        for w in words
    ]
    chunks.append({"id": "chatcmpl-life", "object": "chat.completion.chunk", "created": 1766735300,
                   "model": "gemini-2.0-flash", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"id": "chatcmpl-life", "object": "chat.completion.chunk", "created": 1766735300,
                   "model": "gemini-2.0-flash", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}})
    return chunks


# -- cancellation --------------------------------------------------------------------------


async def test_caller_cancel_of_unary_call_closes_the_upstream_request(client, upstream):
    upstream.reply(Reply(fault="stall"))

    call = client.stub.Complete(pb.CompleteRequest(**fields()), timeout=60)
    await until(lambda: len(upstream.received) == 1)
    call.cancel()

    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)
    assert upstream.disconnects == 1
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await call.code() == Code.CANCELLED


async def test_caller_cancel_of_stream_closes_the_upstream_request(client, upstream):
    # The first chunk arrives, then the upstream keeps the stream open without sending more.
    upstream.reply(Reply(events=sse_events(stream_chunks(["one", "two"])), fault="stall"))

    call = client.stub.StreamComplete(pb.StreamCompleteRequest(**fields()), timeout=60)
    first = await asyncio.wait_for(call.read(), WAIT_S)
    assert first.delta.text == "one"
    call.cancel()

    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)
    assert upstream.disconnects == 1
    assert await call.code() == Code.CANCELLED


# -- deadlines -----------------------------------------------------------------------------

# The caller's own deadline may fire first (the gRPC runtime's words) or the gateway's budget
# derived from it may (the gateway's words): both are the caller's deadline.
RUNTIME_DEADLINE_MESSAGES = ("Deadline Exceeded", "Stream removed (Deadline Exceeded)")


def _is_deadline_message(details: str) -> bool:
    return (
        details in RUNTIME_DEADLINE_MESSAGES
        or details == "mixrouter: upstream timed out"
        or details.startswith("mixrouter: upstream did not answer within ")
    )


async def test_caller_deadline_shorter_than_a_slow_upstream(client, upstream):
    upstream.reply(Reply(fault="stall"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(pb.CompleteRequest(**fields()), timeout=0.5)

    assert caught.value.code() == Code.DEADLINE_EXCEEDED
    assert _is_deadline_message(caught.value.details()), caught.value.details()
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)
    assert upstream.disconnects == 1


async def test_caller_deadline_shorter_than_a_slow_stream(client, upstream):
    upstream.reply(Reply(events=sse_events(stream_chunks(["one", "two"])), fault="stall"))

    call = client.stub.StreamComplete(pb.StreamCompleteRequest(**fields()), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass

    assert caught.value.code() == Code.DEADLINE_EXCEEDED
    assert _is_deadline_message(caught.value.details()), caught.value.details()
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)
    assert upstream.disconnects == 1


async def test_provider_timeout_from_config_bounds_a_unary_call(start_client, upstream):
    client = await start_client(mixrouter_config(upstream, timeout_s=0.3), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(fault="stall"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(pb.CompleteRequest(**fields()), timeout=30)

    assert caught.value.code() == Code.DEADLINE_EXCEEDED
    assert caught.value.details() == "mixrouter: upstream did not answer within 0.3s"
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)


async def test_provider_first_byte_timeout_bounds_the_start_of_a_stream(start_client, upstream):
    client = await start_client(mixrouter_config(upstream, first_byte_timeout_s=0.3),
                                {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(events=sse_events(stream_chunks(["late"])), delay_s=30))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.stub.StreamComplete(pb.StreamCompleteRequest(**fields()), timeout=30):
            pass

    assert caught.value.code() == Code.DEADLINE_EXCEEDED
    assert caught.value.details() == "mixrouter: upstream sent nothing within 0.3s"
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)


async def test_provider_idle_timeout_bounds_a_gap_inside_a_stream(start_client, upstream):
    client = await start_client(mixrouter_config(upstream, idle_timeout_s=0.3), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(events=sse_events(stream_chunks(["one", "two"])), fault="stall"))

    call = client.stub.StreamComplete(pb.StreamCompleteRequest(**fields()), timeout=30)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)

    assert [m.delta.text for m in received] == ["one"]
    assert caught.value.code() == Code.DEADLINE_EXCEEDED
    assert caught.value.details() == "mixrouter: upstream stalled for 0.3s mid-stream"
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)


# -- health and reflection -----------------------------------------------------------------


@pytest.mark.parametrize("service", ["", SERVICE])
async def test_health_is_serving(client, service):
    stub = health_pb2_grpc.HealthStub(client.channel)

    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service_is_not_found(client):
    stub = health_pb2_grpc.HealthStub(client.channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="tollway.v1.Nothing"), timeout=WAIT_S)

    # The health servicer is grpcio's own; its NOT_FOUND carries no text of ours to check.
    assert caught.value.code() == Code.NOT_FOUND


async def test_reflection_lists_and_describes_the_completion_service(client):
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]

    responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=WAIT_S)]

    services = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in responses[1].file_descriptor_response.file_descriptor_proto]
    completion = next(f for f in files if f.package == "tollway.v1")
    methods = {m.name for s in completion.service if s.name == "Completion" for m in s.method}
    assert {"Complete", "StreamComplete", "ListModels"} <= methods


# -- graceful shutdown (in process) --------------------------------------------------------


async def test_graceful_stop_drains_an_in_flight_stream(start_client, upstream):
    client = await start_client(mixrouter_config(upstream), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    words = ["draining ", "is ", "done ", "in ", "order"]
    # Paced so the stream is still running when the stop begins.
    upstream.reply(Reply(events=sse_events(stream_chunks(words)), event_delay_s=0.2))
    health = health_pb2_grpc.HealthStub(client.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await asyncio.wait_for(watch.read(), WAIT_S)).status == health_pb2.HealthCheckResponse.SERVING

    stream = client.stub.StreamComplete(pb.StreamCompleteRequest(**fields()), timeout=30)
    first = await asyncio.wait_for(stream.read(), WAIT_S)
    stopping = asyncio.create_task(client.gateway.stop(grace=5))

    # Health turns NOT_SERVING for watchers as soon as the stop begins.
    assert (await asyncio.wait_for(watch.read(), WAIT_S)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    # New calls are refused while the in-flight stream drains: the listener is closed.
    async with grpc.aio.insecure_channel(client.target) as fresh:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.CompletionStub(fresh).Complete(pb.CompleteRequest(**fields()), timeout=WAIT_S)
    assert refused.value.code() == Code.UNAVAILABLE
    assert "Connection refused" in refused.value.details(), refused.value.details()

    rest = await read_to_end(stream)
    assert await stream.code() == Code.OK
    texts = [first.delta.text] + [m.delta.text for m in rest if m.HasField("delta")]
    assert texts == words
    assert rest[-1].summary.finishes[0].finish_reason == pb.FINISH_REASON_STOP
    assert rest[-1].summary.usage.output.total == len(words)
    await asyncio.wait_for(stopping, WAIT_S + 5)


# -- graceful shutdown (the real process) --------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_serving(target: str, proc: asyncio.subprocess.Process) -> None:
    async def poll() -> None:
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"tollway serve exited early with {proc.returncode}")
            async with grpc.aio.insecure_channel(target) as channel:
                try:
                    response = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=0.5
                    )
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), 20)


async def test_tollway_serve_drains_a_stream_on_sigterm_and_exits_0(upstream, tmp_path: Path):
    port = _free_port()
    target = f"127.0.0.1:{port}"
    config = tmp_path / "tollway.toml"
    config.write_text(
        "[server]\n"
        f'listen = "{target}"\n'
        'log_format = "json"\n'
        "grace_period_s = 10\n"
        "[providers.mixrouter]\n"
        f'base_url = "{upstream.base_url}/v1"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env["MIXROUTER_API_KEY"] = MIXROUTER_TEST_KEY
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tollway.service.cli", "serve", "--config", str(config),
        cwd=support.ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _wait_serving(target, proc)
        words = ["signal ", "then ", "drain"]
        upstream.reply(Reply(events=sse_events(stream_chunks(words)), event_delay_s=0.1))
        async with grpc.aio.insecure_channel(target) as channel:
            stream = pb_grpc.CompletionStub(channel).StreamComplete(pb.StreamCompleteRequest(**fields()), timeout=30)
            first = await asyncio.wait_for(stream.read(), WAIT_S)
            proc.send_signal(signal.SIGTERM)
            rest = await read_to_end(stream)
            assert await stream.code() == Code.OK

        texts = [first.delta.text] + [m.delta.text for m in rest if m.HasField("delta")]
        assert texts == words
        assert rest[-1].summary.usage.total_tokens == 3 + len(words)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, stderr.decode(errors="replace")
        log = stderr.decode()
        assert '"status":"OK"' in log
        assert MIXROUTER_TEST_KEY not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
