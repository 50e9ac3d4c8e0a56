"""The bare pass-through: grpc.aio in front, aiohttp behind, and nothing else.

What Python can do for Tollway's contract with none of its features: the text of the request's
messages goes to the stand-in as an OpenAI Chat body over one aiohttp session, and the answer
comes back as the contract's messages (the text, the finish reason, the usage totals). No
validation, admission, routing, pricing, log line or ledger record; no checks on what the
upstream sent beyond what building the answer needs. The issue's CPU target for a unary call
(no more than this) is its figure measured in the same run, not a number carried over from
another machine.

Run: python -m bench.passthrough --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .floor import run_server
from .load import API_KEY

_ROLES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}
_FINISHES = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}


def _body(request: pb.CompleteRequest | pb.StreamCompleteRequest, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": request.model.partition("/")[2] or request.model,
        "messages": [{"role": _ROLES.get(m.role, "user"), "content": "".join(p.text for p in m.parts)}
                     for m in request.messages],
    }
    if request.HasField("max_tokens"):
        body["max_tokens"] = request.max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _usage(out: pb.Usage, usage: dict[str, Any]) -> None:
    out.input.total = usage.get("prompt_tokens", 0)
    out.output.total = usage.get("completion_tokens", 0)
    out.total_tokens = usage.get("total_tokens", 0)


class PassThroughServicer(pb_grpc.CompletionServicer):
    def __init__(self, upstream: str) -> None:
        self.url = f"{upstream}/chat/completions"
        self.session: aiohttp.ClientSession | None = None
        headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
        self.unary_headers = {**headers, "accept": "application/json"}
        self.stream_headers = {**headers, "accept": "text/event-stream"}

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        return self.session

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        async with self._session().post(self.url, data=_body(request, False), headers=self.unary_headers) as answer:
            data = orjson.loads(await answer.read())
        out = pb.CompleteResponse(id=data["id"], model=data["model"], provider="mixrouter")
        for choice in data["choices"]:
            message = choice["message"]
            out.choices.add(message=pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text=message["content"])]),
                            finish_reason=_FINISHES.get(choice.get("finish_reason"), pb.FINISH_REASON_OTHER))
        _usage(out.usage, data["usage"])
        return out

    async def StreamComplete(self, request: pb.StreamCompleteRequest,
                             context: Any) -> AsyncIterator[pb.StreamCompleteResponse]:
        summary = pb.StreamSummary(provider="mixrouter")
        async with self._session().post(self.url, data=_body(request, True), headers=self.stream_headers) as answer:
            async for line in answer.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                event = orjson.loads(line[6:])
                for choice in event.get("choices") or ():
                    text = choice.get("delta", {}).get("content")
                    if text:
                        yield pb.StreamCompleteResponse(delta=pb.TextDelta(text=text))
                    if choice.get("finish_reason"):
                        summary.finishes.add(finish_reason=_FINISHES.get(choice["finish_reason"],
                                                                         pb.FINISH_REASON_OTHER))
                if event.get("usage"):
                    summary.id, summary.model = event.get("id", ""), event.get("model", "")
                    _usage(summary.usage, event["usage"])
        yield pb.StreamCompleteResponse(summary=summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grpc.aio + aiohttp pass-through with Tollway's contract")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True, help="the stand-in's base URL, e.g. http://127.0.0.1:PORT/v1")
    args = parser.parse_args(argv)
    run_server(args.listen, PassThroughServicer(args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
