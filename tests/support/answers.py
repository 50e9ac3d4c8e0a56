"""OpenAI-format answers (MixRouter kind) as FakeUpstream replies, for tests that need a
plain successful exchange around the fault they look at."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tollway.v1 import completion_pb2 as pb

from .upstream import Reply, sse_events


def answer(text: str = "ok") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1766735300, "model": "upstream-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def chunk(content: str | None = None, *, finish: str | None = None, usage: dict | None = None) -> dict[str, Any]:
    choices = [] if usage else [{"index": 0, "delta": {} if content is None else {"content": content},
                                 "finish_reason": finish}]
    return {"id": "chatcmpl-test-stream", "object": "chat.completion.chunk", "created": 1766735300,
            "model": "upstream-model", "choices": choices, "usage": usage}


def stream_chunks(words: list[str]) -> list[dict[str, Any]]:
    return [*(chunk(w) for w in words), chunk(finish="stop"),
            chunk(usage={"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)})]


def ok(text: str = "ok") -> Reply:
    return Reply(body=answer(text))


def ok_stream(words: list[str] = ["one ", "two"]) -> Reply:  # noqa: B006 - never mutated
    return Reply(events=sse_events(stream_chunks(words)))


def request(model: str, text: str = "hello") -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])])


def stream_request(model: str, text: str = "hello") -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])])


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of a failed call, in seconds, or None when it carries none."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None
