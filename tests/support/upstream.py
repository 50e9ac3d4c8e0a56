"""A real HTTP server on 127.0.0.1 that plays a provider: it replays recorded payloads,
records what it received, and injects faults.

Tests queue a Reply (or set a default) and read `received` afterwards. Used by the test
suite and the benchmark alike.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    """One upstream answer. `fault` selects a misbehaviour instead of a clean answer."""

    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    # SSE: each item is one event's data (str) or raw bytes written as they are.
    events: Sequence[str | bytes] | None = None
    # Line ending between SSE lines: "\n", "\r\n" or "\r".
    newline: str = "\n"
    delay_s: float = 0.0  # before the status line (slow first byte)
    # "reset": close the socket without answering; "stall": send the head, then hang;
    # "cut": stream the events, then close without the terminal event; "malformed": a 200
    # whose JSON body (or, with events, whose first event) breaks off mid-object.
    fault: str | None = None
    event_delay_s: float = 0.0
    # A plain body written in pieces of this many bytes, chunked, with no Content-Length (0:
    # the whole body at once, with its Content-Length).
    chunk_size: int = 0


# A JSON object that breaks off in the middle, as a proxy cutting a body short leaves it.
MALFORMED_JSON = b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "message": {"content": "Hel'


class FakeUpstream:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.queue: list[Reply] = []
        self.default: Reply | None = None
        self.disconnects = 0  # requests whose client went away before the answer was complete
        # Per-request faults: called with each request first; a Reply answers it, None falls
        # through to the queue and the default.
        self.responder: Callable[[Received], Reply | None] | None = None
        self.active = 0  # requests being answered right now (a stalled one stays until its client leaves)
        # Bytes of streamed (events) bodies written so far: what a client actually made this server send.
        self.sent_bytes = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.disconnected = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "FakeUpstream":
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away cancels its handler, so a stalled or
        # slow answer still records the disconnect (aiohttp's default leaves it running).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        self.received.clear()
        self.queue.clear()
        self.default = None
        self.responder = None
        self.disconnects = 0
        self.sent_bytes = 0
        self.disconnected = asyncio.Event()

    def reply(self, *replies: Reply) -> None:
        self.queue.extend(replies)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received = Received(request.method, request.path, request.query_string, dict(request.headers), body)
        self.received.append(received)
        reply = self.responder(received) if self.responder is not None else None
        if reply is None:
            reply = self.queue.pop(0) if self.queue else self.default
        if reply is None:
            return web.json_response({"error": {"message": "no reply queued"}}, status=599)
        self.active += 1
        try:
            return await self._answer(request, reply)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.fault == "reset":
            request.transport.abort() if request.transport else None
            # Never written (the connection is gone); returned rather than raised so that
            # aiohttp does not log the injected fault as an error of this server.
            return web.Response(status=599)
        if reply.events is not None:
            return await self._stream(request, reply)
        body = reply.body
        if isinstance(body, (dict, list)):
            body = orjson.dumps(body)
        elif isinstance(body, str):
            body = body.encode()
        if reply.fault == "malformed":
            body = MALFORMED_JSON
        headers = {"content-type": "application/json", **reply.headers}
        if reply.fault == "stall":
            response = web.StreamResponse(status=reply.status, headers=headers)
            await response.prepare(request)
            await asyncio.sleep(3600)
        if reply.chunk_size:
            return await self._chunked(request, reply, body, headers)
        return web.Response(status=reply.status, body=body, headers=headers)

    async def _chunked(self, request: web.Request, reply: Reply, body: bytes,
                       headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(status=reply.status, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), reply.chunk_size):
            await response.write(body[start:start + reply.chunk_size])
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache", **reply.headers}
        response = web.StreamResponse(status=reply.status, headers=headers)
        await response.prepare(request)
        nl = reply.newline
        if reply.fault == "malformed":
            await response.write(b"data: " + MALFORMED_JSON + nl.encode() * 2)
        for event in reply.events or ():
            if reply.event_delay_s:
                await asyncio.sleep(reply.event_delay_s)
            data = event if isinstance(event, bytes) else f"data: {event}{nl}{nl}".encode()
            # write() waits while the client's socket is full, so the count follows what it reads.
            await response.write(data)
            self.sent_bytes += len(data)
            if reply.fault == "stall":
                await asyncio.sleep(3600)
        if reply.fault == "cut":
            # Close the connection mid-stream: no terminal event, no clean chunked end.
            request.transport.abort() if request.transport else None
            return response
        await response.write_eof()
        return response


def sse_events(chunks: Sequence[Any], *, done: bool = True) -> list[str]:
    """JSON chunks as SSE data lines, with OpenAI's terminal [DONE]."""
    events = [orjson.dumps(c).decode() for c in chunks]
    if done:
        events.append("[DONE]")
    return events


def html_error_page(status: int = 502, headers: dict[str, str] | None = None) -> Reply:
    """What a load balancer in front of a provider answers: an HTML page, not the provider's JSON."""
    title = f"{status} Bad Gateway" if status == 502 else f"{status} Error"
    body = f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center><hr>" \
           "<center>nginx</center></body></html>\n"
    return Reply(status=status, body=body, headers={"content-type": "text/html", **(headers or {})})


class RefusedPort:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._sock.close()


class NotHttp:
    """A loopback server that answers every request with bytes that are no HTTP (a wrong port,
    a server speaking another protocol)."""

    ANSWER = b"SSH-2.0-OpenSSH_9.6\r\n\r\n"

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> "NotHttp":
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            writer.write(self.ANSWER)
            await writer.drain()
            await reader.read()  # until the client hangs up
            writer.close()

        self._server = await asyncio.start_server(answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class BlackHole:
    """A loopback port where connecting hangs: a listener whose accept queue is full and
    which never accepts, so the kernel drops further SYNs (a connect timeout, no network needed)."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        # A backlog of 0 still queues one connection: fill it.
        self._filler = socket.create_connection(("127.0.0.1", self.port))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._filler.close()
        self._listener.close()
