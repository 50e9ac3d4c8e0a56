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
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
import grpc
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_sse import ServerSentEvent

from tollway.v1 import completion_pb2 as pb

from .adapter import Adapter, AnyRequest, Capabilities, StreamDecoder
from .errors import GatewayError, bad_upstream_body, invalid_argument
from .sse import SSEDecoder
from .usage import estimate_missing_input
from .media import (
    MediaPolicy,
    blocked_address,
    check_inline_sizes,
    decode_data_url,
    parts_to_fetch,
    settle_mime_type,
)

Code = grpc.StatusCode

CONNECT_TIMEOUT_S = 10.0


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
    def __init__(self, *, max_connections: int = 1000, merge_deltas: bool = False) -> None:
        self._max_connections = max_connections
        # Send the consecutive deltas of one choice that one read brought as one message.
        # Off by default: callers then see each upstream event as its own delta, as before.
        self._merge_deltas = merge_deltas
        self._transport: AiohttpTransport | None = None

    async def start(self) -> None:
        """Create the shared transport; must run inside the serving event loop."""
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        # One session serves every caller: a cookie one upstream answer sets must never ride
        # along on another caller's request.
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        self._transport = AiohttpTransport(client=session)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

    async def complete(
        self, adapter: Adapter, request: AnyRequest, model: str, timeouts: AttemptTimeouts
    ) -> pb.CompleteResponse:
        """One unary attempt; timeouts.total bounds the whole exchange."""
        http_request = adapter.build_request(request, model, stream=False)
        http_request.extensions["timeout"] = {"connect": timeouts.connect, "read": None, "pool": timeouts.total}
        name = adapter.settings.name
        try:
            async with asyncio.timeout(timeouts.total):
                response = await self._send(http_request, stream=False)
        except TimeoutError:
            raise _timeout(name, f"did not answer within {timeouts.total:.3g}s") from None
        except httpx.HTTPError as exc:
            raise _transport_error(name, exc, connect_s=timeouts.connect) from None
        if response.status_code >= 400:
            raise adapter.parse_error(response)
        parsed = adapter.parse_response(response)
        estimate_missing_input(parsed.usage, request)
        return parsed

    async def stream(
        self, adapter: Adapter, request: AnyRequest, model: str, timeouts: AttemptTimeouts
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
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
        http_request.extensions["timeout"] = {"connect": timeouts.connect, "read": None, "pool": timeouts.first_byte}
        name = adapter.settings.name
        decoder = adapter.stream_decoder(request, model)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.first_byte
        waiting_for = f"sent nothing within {timeouts.first_byte:.3g}s"
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send(http_request, stream=True)
        except TimeoutError:
            raise _timeout(name, waiting_for) from None
        except httpx.HTTPError as exc:
            raise _transport_error(name, exc, connect_s=timeouts.connect) from None
        chunks: AsyncIterator[bytes] | None = None
        delivered = False
        started = False
        try:
            if response.status_code >= 400:
                async with asyncio.timeout_at(deadline):
                    await _read_body(name, response)
                raise adapter.parse_error(response)
            if "text/event-stream" not in response.headers.get("content-type", "").partition(";")[0]:
                raise bad_upstream_body(name, "a body that is not an event stream")
            # Raw bytes unless the upstream compressed them (aiohttp offers gzip and deflate).
            chunks = response.aiter_bytes() if "content-encoding" in response.headers else response.aiter_raw()
            sse = SSEDecoder()
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
                    events = sse.feed(chunk)
                    if not events:
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
                    # From now: time spent with the caller (a slow reader) is not the upstream's.
                    deadline = loop.time() + timeouts.idle
            if not decoder.finished:
                raise GatewayError(Code.UNAVAILABLE, f"{name}: upstream stream ended before its final event (truncated)")
            summary = decoder.summary()
            estimate_missing_input(summary.usage, request)
            yield pb.StreamCompleteResponse(summary=summary)
        except TimeoutError:
            raise _with_partial(_timeout(name, waiting_for), decoder, delivered, request) from None
        except httpx.HTTPError as exc:
            raise _with_partial(_transport_error(name, exc, mid_stream=True), decoder, delivered, request) from None
        except GatewayError as err:
            raise _with_partial(err, decoder, delivered, request) from None
        finally:
            if chunks is not None:
                await chunks.aclose()
            # Closing before the body is read drops the connection: the upstream sees the cancel.
            await response.aclose()

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """Straight to the transport: adapters build complete requests, and httpx.AsyncClient's
        layers (cookies, auth, redirects, hooks) would only cost time here (bench/RESULTS.md)."""
        if self._transport is None:
            raise GatewayError(Code.UNAVAILABLE, "gateway is not started")
        response = await self._transport.handle_async_request(request)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                # A cancel or timeout mid-body: drop the connection so the upstream sees it.
                await response.aclose()
                raise
        return response


async def _read_body(name: str, response: httpx.Response) -> None:
    try:
        await response.aread()
    except httpx.HTTPError as exc:
        raise _transport_error(name, exc) from None


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
    """Consecutive text deltas of the same choice as one delta: the same text in the same
    order, in fewer messages."""
    if len(messages) < 2:
        return messages
    merged: list[pb.StreamCompleteResponse] = []
    head: pb.TextDelta | None = None  # the delta that absorbs the ones after it
    texts: list[str] = []
    for message in messages:
        if message.WhichOneof("event") == "delta":
            delta = message.delta
            if head is not None and delta.choice_index == head.choice_index:
                texts.append(delta.text)
                continue
            _join_into(head, texts)
            head, texts = delta, [delta.text]
        else:
            _join_into(head, texts)
            head, texts = None, []
        merged.append(message)
    _join_into(head, texts)
    return merged


def _join_into(head: pb.TextDelta | None, texts: list[str]) -> None:
    if head is not None and len(texts) > 1:
        head.text = "".join(texts)


def _set_socket_timeouts(request: httpx.Request, timeout: float) -> None:
    request.extensions["timeout"] = {"connect": min(CONNECT_TIMEOUT_S, timeout), "read": timeout, "pool": timeout}


def _timeout(name: str, what: str) -> GatewayError:
    return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream {what}", attempt_timeout=True)


def _with_partial(err: GatewayError, decoder, delivered: bool, request: AnyRequest) -> GatewayError:
    """Attach the usage seen so far to an error that ends a stream the caller already saw."""
    if delivered and err.partial_summary is None:
        summary = decoder.summary()
        estimate_missing_input(summary.usage, request)
        summary.usage.estimated = True
        err.partial_summary = summary
    return err


def _transport_error(name: str, exc: httpx.HTTPError, *, mid_stream: bool = False,
                     connect_s: float | None = None) -> GatewayError:
    """Classify by the underlying aiohttp error: the transport maps every connection error to ConnectTimeout."""
    cause = exc.__cause__ or exc
    if isinstance(cause, aiohttp.ConnectionTimeoutError) and connect_s is not None:
        # The connect limit, not the upstream's speed: say which, so an operator tunes the right one.
        return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream did not accept a connection within "
                            f"{connect_s:.3g}s", attempt_timeout=True)
    if isinstance(cause, (asyncio.TimeoutError, TimeoutError)) or (
        isinstance(exc, httpx.TimeoutException) and exc.__cause__ is None
    ):
        return GatewayError(Code.DEADLINE_EXCEEDED, f"{name}: upstream timed out", attempt_timeout=True)
    if isinstance(cause, aiohttp.ClientConnectorError):
        return GatewayError(Code.UNAVAILABLE, f"{name}: cannot connect to upstream")
    if mid_stream or isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return GatewayError(Code.UNAVAILABLE, f"{name}: upstream closed the connection")
    return GatewayError(Code.UNAVAILABLE, f"{name}: upstream connection failed")


class AddressBlocked(OSError):
    """Raised inside the resolver: the host resolves to an address media may not come from."""


class _GuardedResolver(AbstractResolver):
    """Checks every address a media host resolves to before aiohttp connects to it.

    The connection uses exactly the addresses checked here, so a DNS answer that changes
    between check and connect (rebinding) cannot slip through; every redirect hop
    connects anew and is checked again.
    """

    def __init__(self, fetcher: "MediaFetcher", inner: AbstractResolver | None = None) -> None:
        self._fetcher = fetcher  # its policy may be replaced by a config reload
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        infos = await self._inner.resolve(host, port, family)
        policy = self._fetcher.policy
        if not policy.host_is_trusted(host) and not all(policy.address_allowed(info["host"]) for info in infos):
            raise AddressBlocked(f"{host} resolves to a non-public address")
        return infos

    async def close(self) -> None:
        await self._inner.close()


class MediaFetcher:
    """Fetches caller URLs for providers that need bytes, under the SSRF guard and limits."""

    def __init__(self, policy: MediaPolicy, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._resolver = resolver
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=100, use_dns_cache=False, resolver=_GuardedResolver(self, self._resolver)
        )
        session = aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar())
        self._client = httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=None)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def inline(self, request: AnyRequest, capabilities: Capabilities, time_left: float) -> AnyRequest:
        """A copy of request with every URL the provider cannot take replaced by the fetched bytes."""
        todo = list(parts_to_fetch(request, capabilities.takes_url))
        if not todo:
            return request
        budget = min(self.policy.fetch_timeout_s, time_left)
        copy = type(request)()
        copy.CopyFrom(request)
        fetched = await asyncio.gather(
            *(
                self.fetch(f"messages[{i}].parts[{j}].{kind}.url", modality, getattr(request.messages[i].parts[j], kind),
                           budget)
                for i, j, kind, modality in todo
            )
        )
        for (i, j, kind, _), (data, mime) in zip(todo, fetched):
            media = getattr(copy.messages[i].parts[j], kind)
            media.data = data
            media.mime_type = mime
        check_inline_sizes(copy, self.policy)
        return copy

    async def fetch(self, part_path: str, modality: int, media: pb.Media, budget: float) -> tuple[bytes, str]:
        if self._client is None:
            raise GatewayError(Code.UNAVAILABLE, "gateway is not started")
        url = media.url
        if url.startswith("data:"):
            return decode_data_url(part_path, modality, url)
        try:
            async with asyncio.timeout(budget):
                for _ in range(self.policy.max_redirects + 1):
                    self._check_target(part_path, url)
                    request = httpx.Request("GET", url, headers={"accept": "*/*", "user-agent": "tollway-media/0.1"})
                    _set_socket_timeouts(request, budget)
                    response = await self._client.send(request, stream=True)
                    try:
                        if response.status_code in (301, 302, 303, 307, 308):
                            location = response.headers.get("location")
                            if not location:
                                raise invalid_argument(part_path, "the URL redirected without a Location")
                            url = str(response.url.join(location))
                            continue
                        if response.status_code >= 400:
                            raise invalid_argument(part_path, f"fetching the URL failed with HTTP {response.status_code}")
                        data = await self._read_limited(part_path, response)
                        mime = settle_mime_type(part_path, modality, data, media.mime_type,
                                                response.headers.get("content-type", ""))
                        return data, mime
                    finally:
                        await response.aclose()
                raise invalid_argument(part_path, f"the URL redirected more than {self.policy.max_redirects} times")
        except TimeoutError:
            raise GatewayError(Code.DEADLINE_EXCEEDED, f"{part_path}: fetching the URL timed out") from None
        except httpx.HTTPError as exc:
            if _caused_by(exc, AddressBlocked):
                raise blocked_address(part_path) from None
            raise invalid_argument(part_path, "could not fetch the URL") from None

    def _check_target(self, part_path: str, url: str) -> None:
        parts = httpx.URL(url)
        if parts.scheme not in ("http", "https") or not parts.host:
            raise invalid_argument(part_path, "only http and https URLs can be fetched")
        host = parts.host
        # aiohttp does not resolve IP literals, so the resolver never sees them: check here.
        if _is_ip_literal(host) and not self.policy.host_is_trusted(host) and not self.policy.address_allowed(host):
            raise blocked_address(part_path)

    async def _read_limited(self, part_path: str, response: httpx.Response) -> bytes:
        limit = self.policy.max_fetch_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise invalid_argument(part_path, f"the media is larger than the {limit}-byte limit")
        chunks = []
        size = 0
        async for chunk in response.aiter_bytes():  # decoded: the limit holds for compressed bodies too
            size += len(chunk)
            if size > limit:  # stop reading at once: never buffer more than the limit
                raise invalid_argument(part_path, f"the media is larger than the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, kind) or isinstance(getattr(current, "os_error", None), kind):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
