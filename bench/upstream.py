"""The upstream stand-in: an OpenAI-compatible server on 127.0.0.1 that answers at once.

A raw asyncio protocol with every response prebuilt, so it costs a few microseconds per
request and is never the bottleneck. POST .../chat/completions answers with a fixed small
chat.completion (usage included), or, when the body asks for `"stream":true`, with a
20-chunk SSE stream, a usage chunk and `data: [DONE]`, each event written as its own
HTTP chunk as a real provider sends them. HTTP/1.1 keep-alive, no pipelining needed.

Written back to back, the events of a stream usually reach the reader in one or two reads.
Under a path holding `/paced/`, a stream's events go out PACE_S apart instead, so each
arrives in a read of its own, as tokens of a real model do. Under a path holding
`/tools/`, a stream is one tool call instead of text: 20 chunks of `delta.tool_calls`
(the first with id, type and name, then arguments fragments that join to TOOL_ARGUMENTS),
finish_reason "tool_calls", the usage chunk and `[DONE]`, framed as the text stream. Under
a path holding `/fail503/`, every call is answered at once with a 503 and an OpenAI-style
error body.

GET /stats answers {"connections": opened so far, "requests": answered so far}, so the
benchmark can tell whether a client reuses its connections.

Run: python -m bench.upstream [--port 0]; prints the bound port on stdout, then serves
until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
import sys

import orjson

CHUNKS = 20
PACE_S = 0.001  # between the events of a paced stream
MODEL = "bench-model"
CREATED = 1_700_000_000
# The tool stream's one call. The arguments are split into CHUNKS - 1 fragments of a few
# characters, the size of the text stream's deltas, so the two cost alike per message.
TOOL_CALL_ID = "call_bench"
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"city": "Paris", "country": "FR", "unit": "celsius", "days": 3, "hourly": false}'

_USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS,
          "prompt_tokens_details": {"cached_tokens": 0, "text_tokens": 12},
          "completion_tokens_details": {"reasoning_tokens": 0}}

UNARY_BODY = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the stand-in."},
                 "finish_reason": "stop"}],
    "usage": _USAGE,
})


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
    event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
             "usage": usage}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _stream_events() -> list[bytes]:
    events = [_chunk({"role": "assistant", "content": "tok0 "})]
    events += [_chunk({"content": f"tok{i} "}) for i in range(1, CHUNKS - 1)]
    events.append(_chunk({"content": f"tok{CHUNKS - 1}"}, finish="stop"))
    events.append(_chunk({}, usage=_USAGE, choices=False))
    events.append(b"data: [DONE]\n\n")
    return events


def _fragments(text: str, count: int) -> list[str]:
    """text cut into count consecutive pieces of nearly equal length."""
    bounds = [round(i * len(text) / count) for i in range(count + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _tool_stream_events() -> list[bytes]:
    # finish_reason rides on the last fragment, as "stop" on the text stream's last token
    # (OpenAI sends it in a chunk of its own): both streams are CHUNKS events plus usage.
    first = {"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": ""}}
    events = [_chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
    fragments = _fragments(TOOL_ARGUMENTS, CHUNKS - 1)
    for i, fragment in enumerate(fragments):
        piece = {"index": 0, "function": {"arguments": fragment}}
        events.append(_chunk({"tool_calls": [piece]}, finish="tool_calls" if i == len(fragments) - 1 else None))
    events.append(_chunk({}, usage=_USAGE, choices=False))
    events.append(b"data: [DONE]\n\n")
    return events


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _stream_writes(events: list[bytes]) -> list[bytes]:
    """One HTTP chunk per event; the head goes out with the first, as a server flushes it,
    and the chunked end with [DONE]."""
    writes = [_http_chunk(e) for e in events]
    writes[0] = STREAM_HEAD + writes[0]
    writes[-1] += b"0\r\n\r\n"
    return writes


UNARY_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                  b"connection: keep-alive\r\n\r\n" % len(UNARY_BODY)) + UNARY_BODY
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n")
STREAM_WRITES = _stream_writes(_stream_events())
TOOL_STREAM_WRITES = _stream_writes(_tool_stream_events())
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
_UNAVAILABLE_BODY = orjson.dumps({"error": {"message": "the stand-in is down", "type": "server_error"}})
UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
               b"connection: keep-alive\r\n\r\n" % len(_UNAVAILABLE_BODY)) + _UNAVAILABLE_BODY


class _Counters:
    connections = 0
    requests = 0


def _stats_response() -> bytes:
    body = orjson.dumps({"connections": _Counters.connections, "requests": _Counters.requests})
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: keep-alive\r\n\r\n" % len(body)) + body


class _Http(asyncio.Protocol):
    """Just enough HTTP/1.1 for one client that sends Content-Length bodies."""

    __slots__ = ("_transport", "_buffer", "_need")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._need = -1  # bytes of head + body of the request being read; -1: head not complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        _Counters.connections += 1

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if self._need < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._need = end + 4 + _content_length(bytes(buffer[:end]))
            if len(buffer) < self._need:
                return
            request = bytes(buffer[: self._need])
            del buffer[: self._need]
            self._need = -1
            self._answer(request)

    def _answer(self, request: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        line = request[: request.find(b"\r\n")]
        if line.startswith(b"GET /stats "):
            transport.write(_stats_response())
            return
        _Counters.requests += 1
        if not line.startswith(b"POST ") or b"/chat/completions" not in line:
            transport.write(NOT_FOUND)
        elif b"/fail503/" in line:
            transport.write(UNAVAILABLE)
        elif b'"stream":true' in request:
            if b"/paced/" in line:
                self._write_paced(transport)
            else:
                for write in TOOL_STREAM_WRITES if b"/tools/" in line else STREAM_WRITES:
                    transport.write(write)
        else:
            transport.write(UNARY_RESPONSE)

    def _write_paced(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        transport.write(STREAM_WRITES[0])
        for i, write in enumerate(STREAM_WRITES[1:], start=1):
            loop.call_later(i * PACE_S, self._write_if_open, transport, write)

    def _write_if_open(self, transport: asyncio.Transport, data: bytes) -> None:
        if self._transport is transport and not transport.is_closing():
            transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(_Http, sock=sock, backlog=1024)
    print(sock.getsockname()[1], flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fast OpenAI-compatible stand-in on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
