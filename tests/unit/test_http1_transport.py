"""The gateway's HTTP/1.1 client (service/upstream/http1.py) against scripted loopback servers.

Each server is a raw asyncio TCP (or TLS) server that reads the request bytes and writes exact
response bytes, so every framing case is exact: Content-Length, chunked and to-the-end-of-the-
connection bodies, interim and bodiless answers, gzip passed through. It counts the connections
it accepted, keeps the raw bytes it received and sees when the client closes its end, which is
how keep-alive reuse, the pool's limit and wait, cancellation, early closes, keep-alive expiry
and aclose() are checked. Failures: a server that closes early or speaks no HTTP, a refused
port, an untrusted certificate, a scheme other than http(s).
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from tollway.service.upstream.http1 import (
    HIGH_WATER_BYTES,
    KEEPALIVE_EXPIRY_S,
    MAX_HEAD_BYTES,
    Http1Transport,
    MalformedAnswer,
)

from tests.support.certs import CertificateAuthority

PATH = "/v1/chat/completions"
BODY = b'{"model":"m","messages":[]}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
# How long a test waits for something the server or the client should do at once.
PROMPTLY_S = 2.0


class _PeerEof(Exception):
    """The client closed its end in the middle of a request."""


class Peer:
    """One accepted connection: the raw bytes the client sent, and the server's end of it."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader, self.writer = reader, writer
        self.received = bytearray()  # every byte the client sent, as sent
        self.requests: list[bytes] = []  # each request, head and body, as received
        self.eof = asyncio.Event()  # the client closed (or reset) its end
        self.closed = asyncio.Event()  # the server closed its end
        self._buffer = bytearray()

    async def _fill(self) -> bool:
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.eof.set()
            return False
        self.received += data
        self._buffer += data
        return True

    async def _until(self, separator: bytes) -> bytes:
        while (at := self._buffer.find(separator)) < 0:
            if not await self._fill():
                raise _PeerEof
        end = at + len(separator)
        taken = bytes(self._buffer[:end])
        del self._buffer[:end]
        return taken

    async def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not await self._fill():
                raise _PeerEof
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    async def read_request(self) -> bytes | None:
        """The next request's head and body (framed by Content-Length or chunked), or None once
        the client closed the connection."""
        try:
            head = await self._until(b"\r\n\r\n")
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {name.strip().lower(): value.strip() for name, value in fields.items()}
            body = b""
            if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                while True:
                    size_line = await self._until(b"\r\n")
                    body += size_line
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        while (line := await self._until(b"\r\n")) != b"\r\n":  # trailers
                            body += line
                        body += line
                        break
                    body += await self._exactly(size + 2)
            elif b"content-length" in fields:
                body = await self._exactly(int(fields[b"content-length"]))
        except _PeerEof:
            return None
        self.requests.append(head + body)
        return head + body

    async def send(self, *pieces: bytes, pause_s: float = 0.0) -> None:
        """Writes each piece and waits for it to drain, pausing between pieces if asked."""
        for number, piece in enumerate(pieces):
            if number and pause_s:
                await asyncio.sleep(pause_s)
            self.writer.write(piece)
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
        self.closed.set()

    async def until_eof(self) -> None:
        """Reads (and records) whatever comes until the client closes its end."""
        while await self._fill():
            pass


Script = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    """A loopback server running script(peer) on each connection it accepts. When the script
    returns without closing the connection, the server keeps reading until the client closes."""

    def __init__(self, script: Script, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = PATH) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def accepted(self) -> int:
        return len(self.peers)

    @property
    def requests(self) -> list[bytes]:
        return [request for peer in self.peers for request in peer.requests]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(peer)
            if not peer.closed.is_set():
                await peer.until_eof()
        except asyncio.CancelledError:
            pass  # stop(); ending normally spares asyncio 3.11's streams a logged CancelledError
        except BaseException as exc:  # a script's mistake fails the test at stop()
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            if not peer.closed.is_set():
                writer.close()
                peer.closed.set()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        assert not self.errors, f"the scripted server failed: {self.errors!r}"


def keep_alive(*answers: bytes) -> Script:
    """Answers each request on a connection with the next of answers (the last one repeats),
    keeping the connection open."""

    async def script(peer: Peer) -> None:
        number = 0
        while await peer.read_request() is not None:
            await peer.send(answers[min(number, len(answers) - 1)])
            number += 1

    return script


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = PROMPTLY_S) -> None:
    """Polls predicate until it holds, failing after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.005)


async def settled(event: asyncio.Event, what: str, timeout_s: float = PROMPTLY_S) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        pytest.fail(f"not within {timeout_s}s: {what}")


def post(url: str, body: bytes | AsyncIterator[bytes] = BODY, **kwargs) -> httpx.Request:
    return httpx.Request("POST", url, content=body, **kwargs)


async def fetch(transport: Http1Transport, request: httpx.Request) -> tuple[httpx.Response, bytes]:
    """The response and its whole (decoded) body; the response is closed after."""
    response = await transport.handle_async_request(request)
    return response, await response.aread()


@pytest.fixture
async def serve():
    """serve(script, ssl_context=None) -> a started ScriptedServer, stopped after the test."""
    servers: list[ScriptedServer] = []

    async def start(script: Script, ssl_context: ssl.SSLContext | None = None) -> ScriptedServer:
        server = await ScriptedServer(script, ssl_context).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def make_transport():
    """make_transport(**options) -> an Http1Transport, closed after the test."""
    made: list[Http1Transport] = []

    def make(**options) -> Http1Transport:
        transport = Http1Transport(**options)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.aclose()


def head_lines(request: bytes) -> list[bytes]:
    head, _, _ = request.partition(b"\r\n\r\n")
    return head.split(b"\r\n")


UA_LINE = re.compile(rb"User-Agent: tollway/[^\s]+")


# ---- framing and keep-alive --------------------------------------------------------------


async def test_content_length_answer_and_exact_request_bytes_over_one_reused_connection(serve, make_transport):
    server = await serve(keep_alive(OK))
    transport = make_transport()

    first, first_body = await fetch(transport, post(server.url(), headers={"X-Trace": "abc-1"}))
    second, second_body = await fetch(transport, post(server.url(), b"{}", headers={"User-Agent": "adapter/2.0"}))

    assert (first.status_code, first_body) == (200, b'{"ok":true}')
    assert (second.status_code, second_body) == (200, b'{"ok":true}')
    assert first.headers["content-type"] == "application/json"
    assert first.extensions["http_version"] == b"HTTP/1.1"
    assert first.extensions["reason_phrase"] == b"OK"
    assert server.accepted == 1
    assert transport.open_connections == 1  # idle, kept for the next request

    one, two = server.requests
    lines = head_lines(one)
    assert lines[:4] == [  # the headers as httpx prepared them, in its order
        b"POST /v1/chat/completions HTTP/1.1",
        b"Host: 127.0.0.1:%d" % server.port,
        b"X-Trace: abc-1",
        b"Content-Length: %d" % len(BODY),
    ]
    assert len(lines) == 5 and UA_LINE.fullmatch(lines[4]), lines
    assert one.endswith(b"\r\n\r\n" + BODY)
    assert one == b"\r\n".join(lines) + b"\r\n\r\n" + BODY  # nothing else, in this order

    assert two == (b"POST /v1/chat/completions HTTP/1.1\r\n"
                   b"Host: 127.0.0.1:%d\r\n"
                   b"User-Agent: adapter/2.0\r\n"
                   b"Content-Length: 2\r\n"
                   b"\r\n{}") % server.port
    assert bytes(server.peers[0].received) == one + two


async def test_chunked_answer_in_pieces_is_reassembled_and_the_connection_reused(serve, make_transport):
    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5\r\nhel",  # a chunk split across writes
                b"lo\r\n",
                b"7\r\n, world\r\n1;ext=1\r\n!\r\n",
                b"0\r\n",
                b"\r\n",
                pause_s=0.005,
            )

    server = await serve(script)
    transport = make_transport()

    first, first_body = await fetch(transport, post(server.url()))
    second, second_body = await fetch(transport, post(server.url()))

    assert (first.status_code, first_body) == (200, b"hello, world!")
    assert (second.status_code, second_body) == (200, b"hello, world!")
    assert server.accepted == 1
    assert len(server.requests) == 2


async def test_body_delimited_by_the_end_of_the_connection(serve, make_transport):
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n",
                        b"no length, ", b"no chunks: ", b"read to the end", pause_s=0.005)
        await peer.close()

    server = await serve(script)
    transport = make_transport()

    first, first_body = await fetch(transport, post(server.url()))
    assert (first.status_code, first_body) == (200, b"no length, no chunks: read to the end")
    assert transport.open_connections == 0

    second, second_body = await fetch(transport, post(server.url()))
    assert (second.status_code, second_body) == (200, b"no length, no chunks: read to the end")
    assert server.accepted == 2
    assert [len(peer.requests) for peer in server.peers] == [1, 1]


async def test_connection_close_with_content_length_is_not_reused(serve, make_transport):
    # The server would keep the connection open: the client must still not reuse it.
    server = await serve(keep_alive(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"))
    transport = make_transport()

    _, first_body = await fetch(transport, post(server.url()))
    _, second_body = await fetch(transport, post(server.url()))

    assert first_body == second_body == b"bye"
    assert server.accepted == 2
    await settled(server.peers[0].eof, "the client closes the connection it was asked to close")
    assert transport.open_connections == 0


# ---- the server fails --------------------------------------------------------------------


async def test_server_closing_without_answering_is_a_remote_protocol_error(serve, make_transport):
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.close()

    server = await serve(script)
    transport = make_transport()

    with pytest.raises(httpx.RemoteProtocolError, match="closed the connection without answering") as caught:
        await transport.handle_async_request(post(server.url()))

    assert caught.value.request.url == server.url()
    assert len(server.requests) == 1
    assert transport.open_connections == 0


async def test_server_closing_mid_body_fails_the_body_read(serve, make_transport):
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"only ten b")
        await peer.close()

    server = await serve(script)
    transport = make_transport()

    response = await transport.handle_async_request(post(server.url()))
    assert response.status_code == 200
    with pytest.raises(httpx.RemoteProtocolError, match="closed the connection before the body's end"):
        await response.aread()
    await response.aclose()

    assert transport.open_connections == 0


async def test_garbage_instead_of_http_is_a_malformed_answer(serve, make_transport):
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HELLO\r\n\r\n")

    server = await serve(script)
    transport = make_transport()

    with pytest.raises(httpx.RemoteProtocolError, match="malformed HTTP/1.1"):
        await transport.handle_async_request(post(server.url()))

    assert transport.open_connections == 0
    await settled(server.peers[0].eof, "the client drops a connection that spoke no HTTP")


async def test_refused_connection_is_a_connect_error_caused_by_the_os_error(make_transport):
    with socket.socket() as sock:  # a port just bound and closed: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = make_transport()

    with pytest.raises(httpx.ConnectError) as caught:
        await transport.handle_async_request(post(f"http://127.0.0.1:{port}{PATH}"))

    assert isinstance(caught.value.__cause__, OSError)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert str(caught.value) == str(caught.value.__cause__)
    assert transport.open_connections == 0


# ---- the pool ----------------------------------------------------------------------------


async def test_one_connection_at_most_makes_the_second_request_wait_then_share_it(serve, make_transport):
    release = asyncio.Event()
    answered = 0

    async def script(peer: Peer) -> None:
        nonlocal answered
        while (request := await peer.read_request()) is not None:
            if answered == 0:
                await release.wait()  # hold the first answer
            answered += 1
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(request.split(b"\r\n\r\n", 1)[1]), request.split(b"\r\n\r\n", 1)[1]))

    server = await serve(script)
    transport = make_transport(max_connections=1)

    first = asyncio.create_task(fetch(transport, post(server.url(), b"first")))
    await eventually(lambda: len(server.requests) == 1, "the first request reaches the server")
    second = asyncio.create_task(fetch(transport, post(server.url(), b"second")))
    for _ in range(20):  # let the second request get as far as it can
        await asyncio.sleep(0)

    assert not second.done()
    assert server.accepted == 1
    assert len(server.requests) == 1
    assert transport.open_connections == 1

    release.set()
    async with asyncio.timeout(PROMPTLY_S):
        (r1, b1), (r2, b2) = await asyncio.gather(first, second)

    assert (r1.status_code, b1) == (200, b"first")
    assert (r2.status_code, b2) == (200, b"second")
    assert server.accepted == 1
    assert [request.rsplit(b"\r\n\r\n", 1)[1] for request in server.requests] == [b"first", b"second"]
    assert transport.open_connections == 1


async def never_answers(peer: Peer) -> None:
    await peer.read_request()


async def the_one_connection_busy(serve, make_transport) -> tuple[ScriptedServer, Http1Transport, asyncio.Task]:
    """A pool of one connection, busy with a request the server never answers."""
    server = await serve(never_answers)
    transport = make_transport(max_connections=1)
    busy = asyncio.create_task(transport.handle_async_request(post(server.url())))
    await eventually(lambda: len(server.requests) == 1, "the first request reaches the server")
    return server, transport, busy


async def test_pool_timeout_while_the_only_connection_stays_busy(serve, make_transport):
    server, transport, busy = await the_one_connection_busy(serve, make_transport)

    timeout = {"connect": 1.0, "pool": 0.05, "read": None}
    with pytest.raises(httpx.PoolTimeout, match="all 1 upstream connections stayed busy"):
        await transport.handle_async_request(post(server.url(), extensions={"timeout": timeout}))

    assert server.accepted == 1
    assert transport.open_connections == 1
    busy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await busy
    assert transport.open_connections == 0


async def test_cancelling_a_request_closes_its_connection_at_once(serve, make_transport):
    server = await serve(never_answers)
    transport = make_transport()
    waiting = asyncio.create_task(transport.handle_async_request(post(server.url())))
    await eventually(lambda: len(server.requests) == 1, "the request reaches the server")
    assert transport.open_connections == 1

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    await settled(server.peers[0].eof, "the server sees the cancelled request's connection close")
    assert transport.open_connections == 0


async def test_response_closed_before_its_end_closes_the_connection(serve, make_transport):
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"0123456789")
            return  # holds the rest; the server reads until the client closes
        await keep_alive(OK)(peer)

    server = await serve(script)
    transport = make_transport()

    response = await transport.handle_async_request(post(server.url()))
    assert response.status_code == 200
    await response.aclose()

    await settled(server.peers[0].eof, "the server sees the abandoned response's connection close")
    assert transport.open_connections == 0

    _, body = await fetch(transport, post(server.url()))
    assert body == b'{"ok":true}'
    assert server.accepted == 2


async def test_response_closed_unread_after_a_large_body_arrived_whole_does_not_stall_the_next(serve,
                                                                                                make_transport):
    # One byte over the high-water mark: the client stops reading the socket exactly when the
    # whole body is in (complete, and reading paused). Closing the response unread must either
    # drop that connection or resume reading it; reusing it paused leaves the next answer unread.
    big = b"x" * (HIGH_WATER_BYTES + 1)
    server = await serve(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)))
    transport = make_transport()

    response = await transport.handle_async_request(post(server.url()))
    assert response.status_code == 200
    await asyncio.sleep(0.05)  # the client's loop takes in the whole body (not a timing assertion)
    await response.aclose()

    try:
        async with asyncio.timeout(PROMPTLY_S):
            again, body = await fetch(transport, post(server.url()))
    except TimeoutError:
        pytest.fail(f"the next request got no answer within {PROMPTLY_S}s "
                    f"(the server received {len(server.requests)} requests on {server.accepted} connection(s))")
    assert (again.status_code, body) == (200, big)


async def test_idle_connection_the_server_closed_is_replaced(serve, make_transport):
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)  # keep-alive as far as the headers say
        await peer.close()

    server = await serve(script)
    transport = make_transport()

    _, first_body = await fetch(transport, post(server.url()))
    await settled(server.peers[0].closed, "the server closes the idle connection")
    await asyncio.sleep(0.05)  # the client's loop takes in the close (not a timing assertion)

    _, second_body = await fetch(transport, post(server.url()))
    assert first_body == second_body == b'{"ok":true}'
    assert server.accepted == 2
    assert [len(peer.requests) for peer in server.peers] == [1, 1]
    assert transport.open_connections == 1


async def test_connection_the_server_closed_right_after_answering_is_not_reused(serve, make_transport):
    # As above, but the next request goes out as soon as the first body was read: the server
    # had already closed the connection (its FIN is in the client's socket, not yet read).
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await peer.close()

    server = await serve(script)
    transport = make_transport()

    _, first_body = await fetch(transport, post(server.url()))
    assert server.peers[0].closed.is_set()
    _, second_body = await fetch(transport, post(server.url()))

    assert first_body == second_body == b'{"ok":true}'
    assert server.accepted == 2


async def test_keepalive_expiry_closes_an_idle_connection(serve, make_transport):
    assert Http1Transport().keepalive_expiry_s == KEEPALIVE_EXPIRY_S  # the default, here shortened
    server = await serve(keep_alive(OK))
    transport = make_transport(keepalive_expiry_s=0.05)

    await fetch(transport, post(server.url()))
    await asyncio.sleep(0.1)  # twice the expiry
    _, body = await fetch(transport, post(server.url()))

    assert body == b'{"ok":true}'
    assert server.accepted == 2
    await settled(server.peers[0].eof, "the expired connection is closed")
    assert transport.open_connections == 1


async def test_large_body_read_slowly_arrives_whole(serve, make_transport):
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB

    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)

    server = await serve(script)
    transport = make_transport()

    response = await transport.handle_async_request(post(server.url()))
    pieces = []
    async for piece in response.aiter_raw():
        pieces.append(piece)
        await asyncio.sleep(0.001)  # a slow reader: the client stops reading the socket

    assert len(pieces) > 1
    assert sum(map(len, pieces)) == len(big)
    assert b"".join(pieces) == big

    _, again = await fetch(transport, post(server.url()))  # reading resumed and ended cleanly
    assert again == big
    assert server.accepted == 1


# ---- TLS ---------------------------------------------------------------------------------


async def test_tls_with_a_trusted_ca_and_refused_with_system_trust(serve, make_transport, tmp_path: Path):
    ca = CertificateAuthority()
    cert, key = ca.server().write(tmp_path, "server")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await serve(keep_alive(OK), ssl_context=server_context)
    assert server.url().startswith("https://127.0.0.1:")

    trusting = make_transport(ssl_context=ssl.create_default_context(cadata=ca.cert_pem.decode("ascii")))
    response, body = await fetch(trusting, post(server.url()))
    assert (response.status_code, body) == (200, b'{"ok":true}')
    assert head_lines(server.requests[0])[0] == b"POST /v1/chat/completions HTTP/1.1"

    system = make_transport()
    with pytest.raises(httpx.ConnectError, match="certificate verify failed") as caught:
        await system.handle_async_request(post(server.url()))
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert system.open_connections == 0
    assert len(server.requests) == 1


# ---- answers without a plain body --------------------------------------------------------


async def test_interim_100_continue_then_the_real_answer(serve, make_transport):
    server = await serve(keep_alive(b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal"))
    transport = make_transport()

    response, body = await fetch(transport, post(server.url()))

    assert (response.status_code, body) == (200, b"final")
    assert response.headers["x-final"] == "yes"
    assert "x-interim" not in response.headers
    assert response.extensions["reason_phrase"] == b"OK"

    again, body = await fetch(transport, post(server.url()))
    assert (again.status_code, body) == (200, b"final")
    assert server.accepted == 1


async def test_204_no_content_has_an_empty_body_and_keeps_the_connection(serve, make_transport):
    server = await serve(keep_alive(b"HTTP/1.1 204 No Content\r\nX-Seen: 1\r\n\r\n"))
    transport = make_transport()

    first, first_body = await fetch(transport, post(server.url()))
    second, second_body = await fetch(transport, post(server.url()))

    assert (first.status_code, first_body, first.headers["x-seen"]) == (204, b"", "1")
    assert (second.status_code, second_body) == (204, b"")
    assert server.accepted == 1


async def test_gzip_body_passes_through_raw_and_httpx_decodes_it(serve, make_transport):
    text = '{"choices":[{"message":{"content":"squeezed"}}]}' * 20
    packed = gzip.compress(text.encode())
    server = await serve(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: %d\r\n\r\n%s" % (len(packed), packed)))
    transport = make_transport()

    raw_response = await transport.handle_async_request(post(server.url()))
    raw = b"".join([piece async for piece in raw_response.aiter_raw()])
    assert raw == packed

    decoded, body = await fetch(transport, post(server.url()))
    assert body == text.encode()
    assert decoded.text == text
    assert server.accepted == 1


# ---- the client's own end ----------------------------------------------------------------


async def test_aclose_closes_idle_connections_and_refuses_new_requests(serve, make_transport):
    server = await serve(keep_alive(OK))
    transport = make_transport()
    await fetch(transport, post(server.url()))
    assert transport.open_connections == 1

    await transport.aclose()

    await settled(server.peers[0].eof, "the server sees the idle connection close")
    assert transport.open_connections == 0
    with pytest.raises(httpx.ConnectError, match="the upstream client is closed"):
        await transport.handle_async_request(post(server.url()))
    assert server.accepted == 1


async def test_ftp_url_is_an_unsupported_protocol(make_transport):
    transport = make_transport()

    with pytest.raises(httpx.UnsupportedProtocol, match="'ftp' is not http or https"):
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/file.txt"))

    assert transport.open_connections == 0


async def test_streamed_request_body_without_a_length_goes_out_chunked(serve, make_transport):
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b'{"model":', b'"m",', b'"stream":true}'):
            await asyncio.sleep(0)
            yield piece

    server = await serve(keep_alive(OK))
    transport = make_transport()

    response, body = await fetch(transport, post(server.url(), pieces()))

    assert (response.status_code, body) == (200, b'{"ok":true}')
    (request,) = server.requests
    lines = head_lines(request)
    assert lines[:3] == [
        b"POST /v1/chat/completions HTTP/1.1",
        b"Host: 127.0.0.1:%d" % server.port,
        b"Transfer-Encoding: chunked",
    ]
    assert len(lines) == 4 and UA_LINE.fullmatch(lines[3]), lines
    whole = b'{"model":"m","stream":true}'
    assert len(whole) == 0x1B
    assert request.partition(b"\r\n\r\n")[2] == b"1b\r\n" + whole + b"\r\n0\r\n\r\n"
    assert bytes(server.peers[0].received) == request


async def test_answer_to_head_ends_at_its_headers_and_closes_the_connection(serve, make_transport):
    # The headers announce a body that a HEAD answer never carries: waiting for it would hang.
    server = await serve(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"))
    transport = make_transport()
    response, body = await fetch(transport, httpx.Request("HEAD", server.url()))
    assert (response.status_code, body, response.headers["content-length"]) == (200, b"", "10")
    await settled(server.peers[0].eof, "the client closes the connection after a HEAD answer")
    assert transport.open_connections == 0


async def test_an_idle_connection_the_server_closes_frees_its_slot_at_once(serve, make_transport):
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await asyncio.sleep(0.05)
        await peer.close()  # idle, without having said Connection: close

    server = await serve(script)
    transport = make_transport(max_connections=1)
    await fetch(transport, post(server.url()))
    assert transport.open_connections == 1
    await settled(server.peers[0].closed, "the server closes the idle connection")
    await eventually(lambda: transport.open_connections == 0, "the closed idle connection leaves the pool")


async def test_requests_waiting_for_the_pool_fail_when_the_client_closes(serve, make_transport):
    server, transport, busy = await the_one_connection_busy(serve, make_transport)
    waiting = asyncio.create_task(transport.handle_async_request(post(server.url())))
    await asyncio.sleep(0.05)  # the second request is waiting for the one connection
    assert not waiting.done()

    await transport.aclose()
    with pytest.raises(httpx.ConnectError, match="the upstream client is closed"):
        await waiting
    busy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await busy
    assert server.accepted == 1
    assert transport.open_connections == 0


async def test_http_chunks_that_arrive_together_come_out_as_one_piece(serve, make_transport):
    # A provider sends each stream event as its own HTTP chunk; the engine merges the deltas of
    # one piece, so the chunks one read brought must stay together.
    events = [b"data: %d\n\n" % n for n in range(20)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head + chunked)  # one write: one read at the client

    server = await serve(script)
    transport = make_transport()
    response = await transport.handle_async_request(post(server.url()))
    await asyncio.sleep(0.05)  # the whole answer has arrived before the body is read
    pieces = [piece async for piece in response.aiter_raw()]
    assert pieces == [b"".join(events)]


async def test_a_host_name_is_resolved_and_connected_to(serve, make_transport):
    # Through getaddrinfo and happy eyeballs; where "localhost" also resolves to ::1, on which
    # the server does not listen, the client goes on to 127.0.0.1.
    server = await serve(keep_alive(OK))
    transport = make_transport()
    response, body = await fetch(transport, post(f"http://localhost:{server.port}{PATH}"))
    assert (response.status_code, body) == (200, b'{"ok":true}')
    assert server.accepted == 1
    assert server.requests[0].split(b"\r\n")[1] == f"Host: localhost:{server.port}".encode()


async def test_a_name_that_does_not_resolve_is_a_connect_error(make_transport):
    transport = make_transport()
    with pytest.raises(httpx.ConnectError) as refused:
        await transport.handle_async_request(post("http://no-such-host.invalid/v1/chat/completions"))
    assert isinstance(refused.value.__cause__, OSError)
    assert transport.open_connections == 0


async def test_headers_past_the_limit_are_refused_without_waiting_for_their_end(serve, make_transport):
    # One header line that never ends: httptools would keep joining it; the client stops at
    # the limit instead of holding whatever arrives.
    endless = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * (MAX_HEAD_BYTES + 1024)

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(endless)

    server = await serve(script)
    transport = make_transport()
    with pytest.raises(MalformedAnswer, match=r"^the upstream's status line and headers exceed 64 KiB$"):
        await transport.handle_async_request(post(server.url()))
    await settled(server.peers[0].eof, "the client drops the connection")
    assert transport.open_connections == 0


async def test_trailers_past_the_limit_fail_the_body(serve, make_transport):
    trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (n, b"t" * 1000) for n in range(70))
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer-0\r\n\r\n"
              b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n")
    server = await serve(keep_alive(answer))
    transport = make_transport()
    response = await transport.handle_async_request(post(server.url()))
    with pytest.raises(MalformedAnswer, match="exceed 64 KiB"):
        await response.aread()
    await response.aclose()  # as the engine always does: the connection goes, not back to the pool
    assert transport.open_connections == 0
