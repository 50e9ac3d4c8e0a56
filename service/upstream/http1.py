"""The engine's HTTP/1.1 client: an httpx transport on asyncio protocols, parsed by httptools.

Why not aiohttp behind httpx-aiohttp (0.1's choice): at 50 calls in flight it cost about
0.33 ms of CPU per upstream call, a third of a whole call (raw aiohttp 0.23, an asyncio
protocol 0.03); with this client a gateway call takes 0.18 ms less (bench/RESULTS.md, "the
engine's own HTTP/1.1 client"). The work that remains is llhttp's (httptools, the parser
uvicorn uses) and one write per request; adapters keep speaking httpx.Request and
httpx.Response, and httpx still decodes a compressed body.

What it does, and no more: HTTP/1.1 over TCP or TLS (a host's addresses tried with happy
eyeballs, aiohappyeyeballs, as aiohttp does), keep-alive connections pooled per origin
(LIFO; not reused after KEEPALIVE_EXPIRY_S idle, once the server closed them or asked to, or
when anything arrived on them while idle, checked with a poll before reuse as httpcore does),
at most max_connections in all, waiting (the request's "pool" timeout) when all are busy.
Bodies: Content-Length, chunked, or to the end of the connection. No proxies (none were used
before either), redirects, cookies or retries: a request is sent once. A response closed
before its body arrived closes its connection, so an upstream sees a cancel at once. Time
limits here are the connect and pool ones; the engine bounds the rest of an exchange.

Errors are httpx's: ConnectError (its __cause__ the OSError), ConnectTimeout, PoolTimeout,
RemoteProtocolError (the server closed early; MalformedAnswer, a subclass: it spoke no
HTTP/1.1) and ReadError (the connection failed).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import select
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohappyeyeballs
import httptools
import httpx

# Idle connections older than this are closed, not reused (aiohttp's default keep-alive).
KEEPALIVE_EXPIRY_S = 15.0
# A body reader this far behind stops the socket being read until it has taken what is buffered.
HIGH_WATER_BYTES = 256 * 1024
# The status line and headers of an answer (and its trailers), at most: aiohttp refused
# header lines past 8 KiB; nothing a provider sends comes near this.
MAX_HEAD_BYTES = 64 * 1024
# The head start each address of a host gets before the next is tried too (RFC 8305's default).
HAPPY_EYEBALLS_S = 0.25

Origin = tuple[str, str, int]  # scheme, host, port


def _user_agent() -> bytes:
    try:
        version = importlib.metadata.version("tollway")
    except importlib.metadata.PackageNotFoundError:
        version = "dev"
    return f"User-Agent: tollway/{version}\r\n".encode("ascii")


USER_AGENT = _user_agent()


class MalformedAnswer(httpx.RemoteProtocolError):
    """The upstream's bytes are not an HTTP/1.1 answer (a wrong port, a TLS or HTTP/2-only server)."""


class _Connection(asyncio.Protocol):
    """One upstream connection and the one exchange it carries at a time."""

    def __init__(self, origin: Origin, pool: Http1Transport) -> None:
        self.origin = origin
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.paused = False
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        if self.paused and self.transport is not None:
            # A body that arrived whole but was never read left reading paused.
            self.transport.resume_reading()
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.failure: httpx.TransportError | None = None
        self.body_waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.keep_alive = False
        self.no_body = False  # the answer to HEAD: headers only, whatever they say
        self.to_eof = False  # no length and not chunked: the body ends with the connection
        self.in_head = True  # the status line and headers are still arriving
        self.head_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(MalformedAnswer(f"the upstream answered with malformed HTTP/1.1 ({exc})"))
            return
        if self.in_head:
            # Everything read so far is head: an endless header (which httptools would keep
            # joining) is refused within one read of the limit.
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._fail(_head_too_large())

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            self.pool.idle_lost(self)
            return
        if self.to_eof and self.head is not None and self.head.done() and exc is None:
            self.complete = True  # a body delimited by the end of the connection
            self._wake_reader()
        elif exc is not None:
            self._fail(httpx.ReadError(f"the upstream connection failed: {exc}"))
        elif self.head is not None and not self.head.done():
            self._fail(httpx.RemoteProtocolError("the upstream closed the connection without answering"))
        else:
            self._fail(httpx.RemoteProtocolError("the upstream closed the connection before the body's end"))

    # -- httptools callbacks ------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:  # a trailer, after a chunked body: it counts with the head
            self.head_bytes += len(name) + len(value)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._fail(_head_too_large())
                return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows on this connection
            self.headers, self.reason = [], b""
            return
        self.status = status
        self.in_head = False
        if self.no_body:
            # llhttp cannot be told the request was HEAD: it would wait for the body the headers
            # announce. The answer ends here, and the connection with it.
            self.keep_alive = False
            self.complete = True
            if self.head is not None and not self.head.done():
                self.head.set_result(None)
            return
        self.keep_alive = self.parser.should_keep_alive()
        names = {name.lower() for name, _ in self.headers}
        self.to_eof = b"content-length" not in names and b"transfer-encoding" not in names \
            and status not in (204, 304)
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self.status == 0 or self.failure is not None:
            return  # the end of an interim (1xx) answer, or of one refused on the way
        self.complete = True
        self._wake_reader()

    # -- the exchange -------------------------------------------------------------------

    def _fail(self, error: httpx.TransportError) -> None:
        if self.failure is None:
            self.failure = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._wake_reader()
        self.abort()

    def _wake_reader(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def send(self, head: bytes, body: bytes, no_body: bool = False) -> None:
        """Writes the request and waits for the answer's status line and headers."""
        assert self.transport is not None
        self._reset_exchange()
        self.no_body = no_body
        self.head = asyncio.get_running_loop().create_future()
        if self.closed or self.transport.is_closing():
            raise httpx.RemoteProtocolError("the upstream closed the connection without answering")
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)  # a large body is not copied into one buffer with the head
        await self.head

    async def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what arrived since the last piece, de-chunked, as one piece
        (the engine merges the stream deltas of one piece, so the HTTP chunks a read brought
        must stay together)."""
        loop = asyncio.get_running_loop()
        while True:
            if self.chunks:
                chunks, self.chunks, self.buffered = self.chunks, [], 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                continue
            if self.complete:
                return
            if self.failure is not None:
                raise self.failure
            self.body_waiter = loop.create_future()
            try:
                await self.body_waiter
            finally:
                self.body_waiter = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.failure is None \
            and self.transport is not None and not self.transport.is_closing()

    def quiet(self) -> bool:
        """Nothing waits to be read on the idle socket: a close (or stray bytes) the loop has not
        handled yet shows as readable, and such a connection must not carry a request."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)


class _Body(httpx.AsyncByteStream):
    """A response's raw body; closing it gives the connection back or drops it."""

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The connection's own generator, not one more wrapped around it: one layer less per piece.
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        return connection.body()

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.pool.release(connection)


class Http1Transport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int = 1000, keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.keepalive_expiry_s = keepalive_expiry_s
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0  # connecting, busy and idle
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the upstream client is closed", request=request)
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the upstream URL's scheme {scheme!r} is not http or https",
                                            request=request)
        origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        if isinstance(request.stream, httpx.ByteStream):
            body = request.content
        else:  # a streamed body (adapters send bytes): read whole, framed as its headers say
            body = await request.aread()
            if "transfer-encoding" in request.headers:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        head = _request_head(request)
        connection = await self._acquire(origin, timeouts, request)
        try:
            await connection.send(head, body, no_body=request.method == "HEAD")
        except BaseException as exc:
            connection.abort()
            self.release(connection)
            if isinstance(exc, httpx.TransportError):
                exc.request = request
            raise
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if connection.reason:
            extensions["reason_phrase"] = connection.reason
        return httpx.Response(connection.status, headers=connection.headers, stream=_Body(connection),
                              request=request, extensions=extensions)

    async def _acquire(self, origin: Origin, timeouts: dict[str, Any], request: httpx.Request) -> _Connection:
        """An idle connection to origin, else a new one once there is room, waiting for room
        up to the request's pool timeout."""
        loop = asyncio.get_running_loop()
        pool_s = timeouts.get("pool")
        deadline = None if pool_s is None else loop.time() + pool_s
        while True:
            if self._closed:
                raise httpx.ConnectError("the upstream client is closed", request=request)
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()
                if connection.reusable and loop.time() - connection.idle_since < self.keepalive_expiry_s \
                        and connection.quiet():
                    return connection
                self._drop(connection)
            if self._open < self.max_connections or self._close_one_idle():
                break
            await self._wait_for_room(deadline, request)
        self._open += 1
        try:
            return await self._connect(origin, timeouts.get("connect"), request)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, origin: Origin, connect_s: float | None, request: httpx.Request) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            tls = self._ssl_context or _default_ssl_context()
        sni = request.extensions.get("sni_hostname")
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(connect_s):
                addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                # Happy eyeballs (RFC 8305), as aiohttp does: a host whose first address does not
                # answer (IPv6 dropped on the way, say) is reached on the next within 0.25 s
                # rather than after the whole connect timeout. uvloop has no such option.
                sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_S,
                                                               interleave=1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin, self), sock=sock, ssl=tls,
                    server_hostname=(sni or host) if tls is not None else None)
        except BaseException as exc:
            if sock is not None:
                sock.close()  # no transport took it (a second close is harmless)
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"no connection within {connect_s:.3g}s", request=request) from None
            if isinstance(exc, OSError):
                raise httpx.ConnectError(str(exc), request=request) from exc
            raise
        return connection

    async def _wait_for_room(self, deadline: float | None, request: httpx.Request) -> None:
        """Until a connection is released or closed (a waiter woken and then cancelled passes
        its turn on), or PoolTimeout at deadline."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(f"all {self.max_connections} upstream connections stayed busy",
                                        request=request) from None
            raise

    def release(self, connection: _Connection) -> None:
        """A connection's exchange is over: back to its origin's idle list, or closed."""
        if connection.reusable and not self._closed:
            connection.idle_since = asyncio.get_running_loop().time()
            # A body that arrived whole but was left unread is not kept while the connection idles.
            connection.chunks, connection.buffered = [], 0
            self._idle.setdefault(connection.origin, []).append(connection)
            self._wake_one()
            return
        self._drop(connection)

    def idle_lost(self, connection: _Connection) -> None:
        """An idle connection the server closed: its slot is free at once."""
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
            self._open -= 1
            self._wake_one()

    def _drop(self, connection: _Connection) -> None:
        connection.abort()
        self._open -= 1
        self._wake_one()

    def _close_one_idle(self) -> bool:
        """Room for a new connection by closing the oldest idle one of any origin."""
        for idle in self._idle.values():
            if idle:
                idle.pop(0).abort()
                self._open -= 1
                return True
        return False

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
                self._open -= 1
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _head_too_large() -> MalformedAnswer:
    return MalformedAnswer(f"the upstream's status line and headers exceed {MAX_HEAD_BYTES // 1024} KiB")


def _request_head(request: httpx.Request) -> bytes:
    """Request line and headers as httpx prepared them (Host and Content-Length included), and
    a User-Agent when the adapter set none (some fronts refuse requests without one)."""
    target = request.url.raw_path
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
    if "user-agent" not in request.headers:
        lines.append(USER_AGENT)
    lines.append(b"\r\n")
    return b"".join(lines)


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """The system's trust store and hostname checks, as aiohttp's and Python's defaults; made once."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context
