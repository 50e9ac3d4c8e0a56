"""The engine: the only module that touches the network.

One shared httpx.AsyncClient over an aiohttp transport (httpx's own pool was measured at
about a third of aiohttp's throughput here, see bench/RESULTS.md); adapters still see only
httpx Request/Response objects. The engine knows no provider's JSON.

Cancellation and deadlines: every upstream call runs inside the caller's task, so when
the caller cancels or its deadline passes, gRPC cancels the task and the upstream
connection is closed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import grpc
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource, SSEError

from tollway.v1 import completion_pb2 as pb

from .adapter import Adapter, AnyRequest
from .errors import GatewayError, bad_upstream_body

Code = grpc.StatusCode

CONNECT_TIMEOUT_S = 10.0


class Engine:
    def __init__(self, *, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Create the shared client; must run inside the serving event loop."""
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector)
        self._client = httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=None)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def complete(self, adapter: Adapter, request: AnyRequest, model: str, timeout: float) -> pb.CompleteResponse:
        """One unary call; timeout bounds the whole exchange (the caller's deadline or the provider's limit)."""
        http_request = adapter.build_request(request, model, stream=False)
        _set_socket_timeouts(http_request, timeout)
        name = adapter.settings.name
        try:
            async with asyncio.timeout(timeout):
                response = await self._send(http_request, stream=False)
        except TimeoutError:
            raise _timeout(name, timeout) from None
        except httpx.HTTPError as exc:
            raise _transport_error(name, exc) from None
        if response.status_code >= 400:
            raise adapter.parse_error(response)
        return adapter.parse_response(response)

    async def stream(
        self, adapter: Adapter, request: AnyRequest, model: str, idle_timeout: float
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        """Text deltas as they arrive, then the summary; a stream cut off raises UNAVAILABLE.

        idle_timeout bounds connecting, the first byte and each gap between chunks, never
        the whole stream, so a healthy long stream is not killed.
        """
        http_request = adapter.build_request(request, model, stream=True)
        _set_socket_timeouts(http_request, idle_timeout)
        name = adapter.settings.name
        decoder = adapter.stream_decoder(request, model)
        try:
            async with asyncio.timeout(idle_timeout):
                response = await self._send(http_request, stream=True)
        except TimeoutError:
            raise _timeout(name, idle_timeout) from None
        except httpx.HTTPError as exc:
            raise _transport_error(name, exc) from None
        try:
            if response.status_code >= 400:
                await _read_body(name, response)
                raise adapter.parse_error(response)
            try:
                async for event in EventSource(response).aiter_sse():
                    # Read to the end even after the terminal event: a provider may send
                    # usage after it (and Gemini has no terminal event at all).
                    for message in decoder.feed(event):
                        yield message
            except SSEError:
                raise bad_upstream_body(name, "a body that is not an event stream") from None
            except httpx.HTTPError as exc:
                raise _transport_error(name, exc, mid_stream=True) from None
            if not decoder.finished:
                raise GatewayError(Code.UNAVAILABLE, f"{name}: upstream stream ended before its final event (truncated)")
            yield pb.StreamCompleteResponse(summary=decoder.summary())
        finally:
            # Closing before the body is read drops the connection: the upstream sees the cancel.
            await response.aclose()

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        if self._client is None:
            raise GatewayError(Code.UNAVAILABLE, "gateway is not started")
        return await self._client.send(request, stream=stream)


async def _read_body(name: str, response: httpx.Response) -> None:
    try:
        await response.aread()
    except httpx.HTTPError as exc:
        raise _transport_error(name, exc) from None


def _set_socket_timeouts(request: httpx.Request, timeout: float) -> None:
    request.extensions["timeout"] = {"connect": min(CONNECT_TIMEOUT_S, timeout), "read": timeout, "pool": timeout}


def _timeout(name: str, timeout: float) -> GatewayError:
    return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream did not answer within {timeout:.3g}s")


def _transport_error(name: str, exc: httpx.HTTPError, *, mid_stream: bool = False) -> GatewayError:
    """Classify by the underlying aiohttp error: the transport maps every connection error to ConnectTimeout."""
    cause = exc.__cause__ or exc
    if isinstance(cause, (asyncio.TimeoutError, TimeoutError)) or (
        isinstance(exc, httpx.TimeoutException) and exc.__cause__ is None
    ):
        return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream timed out")
    if isinstance(cause, aiohttp.ClientConnectorError):
        return GatewayError(Code.UNAVAILABLE, f"{name}: cannot connect to upstream")
    if mid_stream or isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return GatewayError(Code.UNAVAILABLE, f"{name}: upstream closed the connection")
    return GatewayError(Code.UNAVAILABLE, f"{name}: upstream connection failed")
