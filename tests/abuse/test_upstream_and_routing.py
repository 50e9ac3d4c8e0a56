"""Hostile upstreams and callers that stop reading: against `tollway serve`."""

from __future__ import annotations

import asyncio

import grpc
import orjson
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from tests.support.served import Served
from tests.support.upstream import RefusedPort, Reply
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode
MIB = 1024 * 1024


def request(model: str = "openai/gpt-4.1") -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Hi.")])])


def stream_request(model: str = "openai/gpt-4.1") -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER,
                                                                      parts=[pb.Part(text="Hi.")])])


def answer(text: str = "Hello.") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def chunk(text: str | None, finish: str | None = None) -> str:
    delta = {"content": text} if text is not None else {}
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).decode()


def retry_delay_s(err: grpc.aio.AioRpcError) -> float | None:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


RATE_LIMITED = {"error": {"message": "Rate limit reached for requests", "type": "requests"}}


async def test_an_absurd_retry_after_is_capped_and_an_overflowing_one_is_no_crash(served: Served):
    await served.start()
    served.upstream.reply(Reply(status=429, body=RATE_LIMITED, headers={"retry-after": "99999999999"}))
    err = await served.failure(request("openai/model-a"))
    assert err.code() == Code.RESOURCE_EXHAUSTED, err.details()
    delay = retry_delay_s(err)
    assert delay is not None and 0 < delay <= 600, delay

    served.upstream.reply(Reply(status=429, body=RATE_LIMITED, headers={"retry-after": "1e400"}))
    err = await served.failure(request("openai/model-b"))
    assert err.code() == Code.RESOURCE_EXHAUSTED, (err.code(), err.details())
    assert (retry_delay_s(err) or 0) <= 600


async def test_a_429_cools_the_key_for_that_model_only_and_says_when_to_come_back(served: Served):
    await served.start()
    served.upstream.reply(Reply(status=429, body=RATE_LIMITED, headers={"retry-after": "7"}))
    err = await served.failure(request("openai/model-a"))
    assert err.code() == Code.RESOURCE_EXHAUSTED

    served.upstream.reply(Reply(body=answer("other model")))
    response = await served.complete(request("openai/model-b"))
    assert response.choices[0].message.parts[0].text == "other model"

    err = await served.failure(request("openai/model-a"))
    assert err.code() == Code.RESOURCE_EXHAUSTED, (err.code(), err.details())
    delay = retry_delay_s(err)
    assert delay is not None and 5 <= delay <= 7, delay


async def test_a_200mb_body_is_cut_at_the_limit_and_the_ledger_says_what_the_caller_saw(served: Served):
    await served.start()
    filler = "x" * (200 * MIB)
    served.upstream.reply(Reply(body=orjson.dumps(answer(filler))))
    err = await served.failure(request("openai/huge-body"))
    assert err.code() == Code.UNAVAILABLE, (err.code(), err.details())
    assert "max_upstream_body_bytes" in err.details(), err.details()

    await served.check_invariants()
    assert served.ledger_statuses("huge-body") == ["UNAVAILABLE"]


async def test_a_200mb_event_line_is_cut_at_the_limit(served: Served):
    await served.start()
    served.upstream.reply(Reply(events=[chunk("Hel"), chunk("x" * (200 * MIB)), chunk(None, "stop"), "[DONE]"]))
    err = await served.failure(stream_request("openai/huge-event"))
    assert err.code() == Code.UNAVAILABLE, (err.code(), err.details())
    assert "max_upstream_event_bytes" in err.details(), err.details()


async def test_a_refused_connection_names_the_base_url_in_the_log_only(served: Served):
    refused = RefusedPort()
    served.cleanup.append(refused.close)
    await served.start({"providers": {"anthropic": {"base_url": f"http://127.0.0.1:{refused.port}/v1"}}})
    err = await served.failure(pb.CompleteRequest(model="anthropic/claude-sonnet-4-5", max_tokens=16, messages=[
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Hi.")])]))
    assert err.code() == Code.UNAVAILABLE
    assert "cannot connect" in err.details() and "127.0.0.1" not in err.details(), err.details()
    assert f"http://127.0.0.1:{refused.port}/v1" in served.log_text()


async def test_callers_that_stop_reading_release_the_upstream_pool(served: Served):
    await served.start({"server": {"max_upstream_connections": 10, "stream_send_timeout_s": 1.0}})
    events = [chunk("x" * 65536) for _ in range(400)] + [chunk(None, "stop"), "[DONE]"]
    served.upstream.responder = lambda received: Reply(events=events) if b"stuck" in received.body else None
    stuck = []
    for _ in range(10):
        call = served.stub().StreamComplete(stream_request("openai/stuck"), metadata=served.auth("bob"), timeout=60)
        await call.read()  # one message, then this caller stops reading
        stuck.append(call)

    await asyncio.sleep(2.0)  # past the send timeout: the gateway gave up on them
    # While the stuck callers still hold their calls open, a normal call finds a free upstream
    # connection in the pool of 10.
    assert await served.normal_call() < 1.0
    # The stuck callers see an error naming the limit when they read again.
    for call in stuck:
        try:
            while await call.read() is not grpc.aio.EOF:
                pass
            raise AssertionError("a stuck stream ended OK")
        except grpc.aio.AioRpcError as err:
            served.seen.error(err)
            assert err.code() == Code.RESOURCE_EXHAUSTED, (err.code(), err.details())
            assert "server.stream_send_timeout_s" in err.details(), err.details()


async def test_calls_past_max_concurrent_rpcs_are_refused_naming_the_limit(served: Served):
    await served.start({"limits": {"max_concurrent_rpcs": 4}})
    served.upstream.responder = lambda received: Reply(body=answer(), delay_s=30) if b"slow" in received.body else None
    held = [asyncio.create_task(served.complete(request("openai/slow"), timeout=60)) for _ in range(4)]
    while served.upstream.active < 4:
        await asyncio.sleep(0.02)

    err = await served.failure(request("openai/gpt-4.1"))

    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert "limits.max_concurrent_rpcs" in err.details(), err.details()
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_streams_past_a_callers_limit_are_refused_naming_it(served: Served):
    await served.start({"routing": {"max_streams_per_caller": 2}})
    served.upstream.responder = (lambda received: Reply(events=[chunk("Hel")], fault="stall")
                                 if b"held" in received.body else None)
    held = []
    for _ in range(2):
        call = served.stub().StreamComplete(stream_request("openai/held"), metadata=served.auth("bob"), timeout=60)
        await call.read()
        held.append(call)

    err = await served.failure(stream_request("openai/held"), caller="bob")

    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert 'caller "bob" has 2 streams open (limit routing.max_streams_per_caller = 2)' in err.details(), err.details()
    # Another caller is not held back by bob's streams.
    served.upstream.reply(Reply(events=[chunk("Hi."), chunk(None, "stop"), "[DONE]"]))
    assert (await served.stream(stream_request("openai/gpt-4.1"), caller="alice"))[-1].HasField("summary")
    for call in held:
        call.cancel()
