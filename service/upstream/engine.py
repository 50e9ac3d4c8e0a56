"""The engine: the only module that touches the network.

One shared HTTP/1.1 client (http1.Http1Transport: asyncio protocols and httptools; 0.18 ms
less CPU per gateway call than aiohttp behind httpx-aiohttp, bench/RESULTS.md); adapters see
only httpx Request/Response objects. The engine knows no provider's JSON.

Cancellation and deadlines: every upstream call runs inside the caller's task, so when
the caller cancels or its deadline passes, gRPC cancels the task and the upstream
connection is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass

import grpc
import httpx
from httpx_sse import ServerSentEvent

from tollway.service.errors import GatewayError, bad_upstream_body, upstream_http_error
from tollway.service.plugins.adapter import Adapter, AnyRequest, StreamDecoder
from tollway.service.usage.estimate import answer_bytes, estimated_usage
from tollway.v1 import completion_pb2 as pb

from .http1 import Http1Transport, MalformedAnswer
from .sse import SSEDecoder, SSETooLarge

Code = grpc.StatusCode
log = logging.getLogger("tollway.upstream")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024
# An error answer is read this far: enough for any provider's message, and no further.
ERROR_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class AttemptTimeouts:
    """Limits for one upstream attempt, already cut to the caller's remaining deadline."""

    connect: float
    # Unary: the whole attempt.
    total: float
    # Streams: until the first event, then between events.
    first_byte: float
    idle: float


class Engine:
    def __init__(self, *, max_connections: int = 1000, merge_deltas: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_connections = max_connections
        # Upstream answers are counted as they arrive (decoded) and refused once past these:
        # no answer, however large or endless, is held whole in memory.
        self.max_body_bytes = max_body_bytes
        self.max_event_bytes = max_event_bytes
        # Send the consecutive deltas of one choice that one read brought as one message.
        # Off by default: callers then see each upstream event as its own delta, as before.
        self._merge_deltas = merge_deltas
        self._transport: httpx.AsyncBaseTransport | None = None

    @property
    def max_connections(self) -> int:
        return self._max_connections

    async def start(self) -> None:
        """Create the shared transport; must run inside the serving event loop. It keeps no
        cookies: nothing one upstream answer sets rides along on another caller's request."""
        self._transport = Http1Transport(max_connections=self._max_connections)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

    async def complete(
        self, adapter: Adapter, request: AnyRequest, model: str, timeouts: AttemptTimeouts,
        trace_headers: Mapping[str, str] | None = None,
    ) -> pb.CompleteResponse:
        """One unary attempt; timeouts.total bounds the whole exchange. trace_headers
        (traceparent) go on the request when tracing propagates to upstreams."""
        http_request = adapter.build_request(request, model, stream=False)
        if trace_headers:
            http_request.headers.update(trace_headers)
        http_request.extensions["timeout"] = {"connect": timeouts.connect, "read": None, "pool": timeouts.total}
        name = adapter.settings.name
        try:
            async with asyncio.timeout(timeouts.total):
                response = await self._send(http_request)
                try:
                    if response.status_code >= 400:
                        await _read_error_body(name, response)
                    else:
                        await _read_within(name, response, self.max_body_bytes)
                finally:
                    # A cancel, a timeout or a limit mid-body drops the connection, so the
                    # upstream sees it; after a whole body this only releases it.
                    await response.aclose()
        except TimeoutError:
            raise _timeout(name, f"did not answer within {timeouts.total:.3g}s") from None
        except httpx.HTTPError as exc:
            raise _transport_error(name, exc, connect_s=timeouts.connect, base_url=adapter.settings.base_url) from None
        if response.status_code >= 400:
            raise adapter.parse_error(response)
        parsed = adapter.parse_response(response, request, model)
        if not parsed.HasField("usage"):
            parsed.usage.CopyFrom(estimated_usage(request, answer_bytes(parsed.choices)))
        return parsed

    async def stream(
        self, adapter: Adapter, request: AnyRequest, model: str, timeouts: AttemptTimeouts,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[pb.StreamCompleteResponse, None]:
        """Text deltas as they arrive, then the summary; a stream cut off raises UNAVAILABLE.

        Time limits: connecting, the first event, and each gap between events; never the
        whole stream, so a healthy long stream is not killed. An error after the first
        message carries the usage seen so far (estimated) as err.partial_summary.

        The body is read in raw chunks. With merge_deltas, once the first delta is out, the
        consecutive deltas of one choice that the same read brought go out as one message
        (grpc.aio spends 65-170 microseconds per message, bench/RESULTS.md); nothing waits
        for more data to merge with, so no delta is held back, and the first one never waits
        for the rest.
        """
        http_request = adapter.build_request(request, model, stream=True)
        if trace_headers:
            http_request.headers.update(trace_headers)
        http_request.extensions["timeout"] = {"connect": timeouts.connect, "read": None, "pool": timeouts.first_byte}
        name = adapter.settings.name
        decoder = adapter.stream_decoder(request, model)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.first_byte
        waiting_for = f"sent nothing within {timeouts.first_byte:.3g}s"
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send(http_request)
        except TimeoutError:
            raise _timeout(name, waiting_for) from None
        except httpx.HTTPError as exc:
            raise _transport_error(name, exc, connect_s=timeouts.connect, base_url=adapter.settings.base_url) from None
        chunks: AsyncIterator[bytes] | None = None
        delivered = False
        started = False
        try:
            if response.status_code >= 400:
                async with asyncio.timeout_at(deadline):
                    await _read_error_body(name, response)
                raise adapter.parse_error(response)
            if "text/event-stream" not in response.headers.get("content-type", "").partition(";")[0]:
                raise bad_upstream_body(name, "a body that is not an event stream")
            # Raw bytes unless the upstream compressed them anyway (none is asked to).
            chunks = response.aiter_bytes() if "content-encoding" in response.headers else response.aiter_raw()
            sse = SSEDecoder(self.max_event_bytes)
            # One timer for the whole read, armed only while waiting for the upstream: armed
            # while this generator is suspended at `yield`, it would cancel the caller's task
            # wherever that task is.
            async with asyncio.timeout(None) as timer:
                while True:
                    if timer.when() != deadline:
                        timer.reschedule(deadline)
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    oversized = None
                    try:
                        events = sse.feed(chunk)
                    except SSETooLarge as too_large:
                        # The events the same read completed before it still go to the caller.
                        events = too_large.events
                        oversized = GatewayError(Code.UNAVAILABLE, f"{name}: upstream stream event exceeds "
                                                 f"server.max_upstream_event_bytes ({self.max_event_bytes} bytes)")
                    if not events:
                        if oversized is not None:
                            raise oversized
                        continue  # part of an event: the clock runs on
                    timer.reschedule(None)
                    if not started:
                        started = True
                        waiting_for = f"stalled for {timeouts.idle:.3g}s mid-stream"
                    # Read to the end even after the terminal event: a provider may send usage
                    # after it (and Gemini has no terminal event at all).
                    pending = iter(events)
                    if not (delivered and self._merge_deltas):
                        # One event at a time: the first delta never waits for the rest of the
                        # read to be decoded. Without merging, every event goes this way.
                        for event in pending:
                            for message in decoder.feed(event):
                                delivered = True
                                yield message
                            if delivered and self._merge_deltas:
                                break
                    if self._merge_deltas:
                        messages, error = _decode_merged(decoder, pending)
                        for message in messages:
                            yield message
                        if error is not None:
                            raise error
                    if oversized is not None:
                        raise oversized
                    # From now: time spent with the caller (a slow reader) is not the upstream's.
                    deadline = loop.time() + timeouts.idle
            if not decoder.finished:
                raise GatewayError(Code.UNAVAILABLE, f"{name}: upstream stream ended before its final event (truncated)")
            yield pb.StreamCompleteResponse(summary=_summary(decoder, request))
        except TimeoutError:
            raise _with_partial(_timeout(name, waiting_for), decoder, delivered, request) from None
        except httpx.HTTPError as exc:
            raise _with_partial(_transport_error(name, exc, mid_stream=True), decoder, delivered, request) from None
        except GatewayError as err:
            raise _with_partial(err, decoder, delivered, request) from None
        finally:
            if chunks is not None:
                # httpx types aiter_bytes/aiter_raw as AsyncIterator; both are async generators.
                await chunks.aclose()  # type: ignore[attr-defined]
            # Closing before the body is read drops the connection: the upstream sees the cancel.
            await response.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Straight to the transport: adapters build complete requests, and httpx.AsyncClient's
        layers (cookies, auth, redirects, hooks) would only cost time here (bench/RESULTS.md).
        The body is left unread: the caller reads it within its limit."""
        if self._transport is None:
            raise GatewayError(Code.UNAVAILABLE, "gateway is not started")
        return await self._transport.handle_async_request(request)


async def _read_within(name: str, response: httpx.Response, limit: int) -> None:
    """Read the body into response, or UNAVAILABLE as soon as it passes limit decoded bytes
    (Content-Length first, then what arrives, so a compressed body counts as it unpacks)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _body_too_large(name, limit)
    if not await _read_at_most(response, limit):
        raise _body_too_large(name, limit)


async def _read_at_most(response: httpx.Response, limit: int) -> bool:
    """Read up to limit decoded bytes of the body into response; False when there was more
    (the rest is never read: the caller closes the connection)."""
    parts: list[bytes] = []
    size = 0
    whole = True
    # httpx types aiter_bytes as AsyncIterator; it is an async generator.
    async with aclosing(response.aiter_bytes()) as body:  # type: ignore[type-var]
        async for part in body:
            if size + len(part) > limit:
                parts.append(part[:limit - size])
                whole = False
                break
            size += len(part)
            parts.append(part)
    # What Response.aread() does with a whole body; adapters read .content/.json() from it.
    response._content = b"".join(parts)
    return whole


async def _read_error_body(name: str, response: httpx.Response) -> None:
    """An error answer, read to ERROR_BODY_BYTES; past that, the error names the status only
    (a body cut short would only confuse the adapter's parser)."""
    if not await _read_at_most(response, ERROR_BODY_BYTES):
        raise upstream_http_error(name, response.status_code, response.headers.get("retry-after"),
                                  f"an error body of more than {ERROR_BODY_BYTES} bytes (not read further)")


def _body_too_large(name: str, limit: int) -> GatewayError:
    return GatewayError(Code.UNAVAILABLE, f"{name}: upstream body exceeds server.max_upstream_body_bytes "
                        f"({limit} bytes)")


def _decode_merged(decoder: StreamDecoder, events: Iterable[ServerSentEvent]) -> tuple[
        list[pb.StreamCompleteResponse], GatewayError | None]:
    """The messages of events read together, merged, and the error that ended them if one did.

    The messages before an error event still reach the caller, then the error, as when
    each event is handled on its own."""
    messages: list[pb.StreamCompleteResponse] = []
    error = None
    try:
        for event in events:
            messages.extend(decoder.feed(event))
    except GatewayError as err:
        error = err
    return merge_deltas(messages), error


def merge_deltas(messages: list[pb.StreamCompleteResponse]) -> list[pb.StreamCompleteResponse]:
    """Consecutive deltas that continue one another as one delta: text of one choice, reasoning
    of one choice, and the argument fragments of one tool call (a call's first delta, which
    names it, starts a new one). The same text in the same order, in fewer messages."""
    if len(messages) < 2:
        return messages
    merged: list[pb.StreamCompleteResponse] = []
    head: _Piece | None = None  # the delta that absorbs the ones after it, and its key
    pieces: list[str] = []
    for message in messages:
        piece = _piece(message)
        if piece is not None and head is not None and piece.continues(head):
            pieces.append(piece.text)
            continue
        _join_into(head, pieces)
        head, pieces = (piece, [piece.text]) if piece is not None else (None, [])
        merged.append(message)
    _join_into(head, pieces)
    return merged


class _Piece:
    """One mergeable delta: what it continues (key) and its text."""

    __slots__ = ("delta", "field", "key", "text", "names_a_call")

    def __init__(self, delta: pb.TextDelta | pb.ReasoningDelta | pb.ToolCallDelta, field: str,
                 key: tuple[str, int, int], names_a_call: bool = False) -> None:
        self.delta, self.field, self.key = delta, field, key
        self.text: str = getattr(delta, field)
        self.names_a_call = names_a_call

    def continues(self, head: "_Piece") -> bool:
        return self.key == head.key and not self.names_a_call


def _piece(message: pb.StreamCompleteResponse) -> _Piece | None:
    event = message.WhichOneof("event")
    if event == "delta":
        return _Piece(message.delta, "text", ("text", message.delta.choice_index, 0))
    if event == "reasoning_delta":
        return _Piece(message.reasoning_delta, "text", ("reasoning", message.reasoning_delta.choice_index, 0))
    if event == "tool_call_delta":
        call = message.tool_call_delta
        return _Piece(call, "arguments_fragment", ("tool", call.choice_index, call.index),
                      names_a_call=bool(call.id or call.name))
    return None


def _join_into(head: _Piece | None, pieces: list[str]) -> None:
    if head is not None and len(pieces) > 1:
        setattr(head.delta, head.field, "".join(pieces))


def operator_address(base_url: str | None) -> str:
    """scheme://host:port/path of a base URL: no user info, query or fragment, where a key
    could ride along."""
    if not base_url:
        return "(no base URL)"
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        return "(unparsable base URL)"
    if not url.scheme or not url.host:
        return "(unparsable base URL)"
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{url.scheme}://{host}{f':{port}' if port else ''}{url.path}"


def _timeout(name: str, what: str) -> GatewayError:
    return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream {what}", attempt_timeout=True)


def _summary(decoder: StreamDecoder, request: AnyRequest) -> pb.StreamSummary:
    """The decoder's summary, with usage estimated where the provider sent none."""
    summary = decoder.summary()
    if not summary.HasField("usage"):
        summary.usage.CopyFrom(estimated_usage(request, decoder.output_bytes))
    return summary


def _with_partial(err: GatewayError, decoder: StreamDecoder, delivered: bool, request: AnyRequest) -> GatewayError:
    """Attach the usage seen so far to an error that ends a stream the caller already saw."""
    if delivered and err.partial_summary is None:
        summary = _summary(decoder, request)
        summary.usage.estimated = True
        err.partial_summary = summary
    return err


def _transport_error(name: str, exc: httpx.HTTPError, *, mid_stream: bool = False,
                     connect_s: float | None = None, base_url: str | None = None) -> GatewayError:
    """The transport's httpx error as the caller hears it (http1.py says which it raises)."""
    if isinstance(exc, httpx.ConnectTimeout) and connect_s is not None:
        # The connect limit, not the upstream's speed: say which, so an operator tunes the right one.
        return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream did not accept a connection within "
                            f"{connect_s:.3g}s", attempt_timeout=True)
    if isinstance(exc, httpx.TimeoutException):
        return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream timed out", attempt_timeout=True)
    if isinstance(exc, httpx.ConnectError):
        # The caller hears only the provider's name (internal addresses stay internal); the
        # operator needs to know where the gateway tried to connect.
        cause = exc.__cause__
        reason = (cause.strerror if isinstance(cause, OSError) else None) or type(cause or exc).__name__
        log.warning("%s: cannot connect to upstream at %s: %s", name, operator_address(base_url), reason)
        return GatewayError(Code.UNAVAILABLE, f"{name}: cannot connect to upstream")
    if isinstance(exc, MalformedAnswer):
        return GatewayError(Code.UNAVAILABLE, f"{name}: upstream answered with malformed HTTP/1.1")
    if mid_stream or isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return GatewayError(Code.UNAVAILABLE, f"{name}: upstream closed the connection")
    return GatewayError(Code.UNAVAILABLE, f"{name}: upstream connection failed")
