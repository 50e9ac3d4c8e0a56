"""Fetching caller media for providers that need bytes: the SSRF guard, redirects, limits."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, cast

import aiohttp
import grpc
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from google.protobuf.message import Message
from httpx_aiohttp import AiohttpTransport

from tollway.service.errors import GatewayError, invalid_argument
from tollway.service.plugins.adapter import AnyRequest, Capabilities
from tollway.service.telemetry.tracing import NO_FETCH, CallTrace, FetchSpan
from tollway.v1 import completion_pb2 as pb

from .policy import (
    MediaPolicy,
    RequestBytes,
    blocked_address,
    check_inline_sizes,
    decode_data_url,
    parts_to_fetch,
    settle_mime_type,
)
from .urls import BadMediaURL, is_ip_literal, parse_http_url

if TYPE_CHECKING:
    from tollway.service.telemetry.metrics import GatewayMetrics

Code = grpc.StatusCode

CONNECT_TIMEOUT_S = 10.0
POOL_SIZE = 100


def _set_socket_timeouts(request: httpx.Request, timeout: float) -> None:
    request.extensions["timeout"] = {"connect": min(CONNECT_TIMEOUT_S, timeout), "read": timeout, "pool": timeout}


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

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
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
        # None: no metrics are kept (server.metrics_listen unset).
        self.metrics: GatewayMetrics | None = None

    async def start(self) -> None:
        # One pool for every caller. Each request holds at most max_parallel_fetches_per_request
        # of it, and one host at most a quarter, so a slow host cannot hold every connection.
        connector = aiohttp.TCPConnector(
            limit=POOL_SIZE, limit_per_host=POOL_SIZE // 4, use_dns_cache=False,
            resolver=_GuardedResolver(self, self._resolver),
        )
        session = aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar())
        self._client = httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=None)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def inline(self, request: AnyRequest, capabilities: Capabilities, time_left: float,
                     trace: CallTrace | None = None) -> AnyRequest:
        """A copy of request with every URL the provider cannot take replaced by the fetched bytes.

        At most max_parallel_fetches_per_request fetches run at once; all of them count their
        bytes against one RequestBytes, and the first failure cancels the others at once."""
        todo = list(parts_to_fetch(request, capabilities.takes_url))
        if not todo:
            return request
        policy = self.policy
        budget = min(policy.fetch_timeout_s, time_left)
        allowance = RequestBytes(policy.max_request_bytes, used=request.ByteSize())
        slots = asyncio.Semaphore(policy.max_parallel_fetches_per_request)

        async def fetch_one(i: int, j: int, kind: str, modality: pb.Modality) -> tuple[bytes, str]:
            async with slots:
                return await self.fetch(f"messages[{i}].parts[{j}].{kind}.url", modality,
                                        getattr(request.messages[i].parts[j], kind), budget, allowance, trace)

        tasks: list[asyncio.Task[tuple[bytes, str]]] = []
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                tasks.extend(group.create_task(fetch_one(*item)) for item in todo)
        except BaseExceptionGroup as failed:
            failure = _first_failure(failed)
        if failure is not None:
            # Raised outside the except block, so the group (and every part's frames) is not
            # its context; the finished parts' bytes go with the tasks.
            tasks.clear()
            raise failure
        copy = type(request)()
        # The same type as request, which mypy cannot pair across the union; Message takes either.
        cast(Message, copy).CopyFrom(request)
        for (i, j, kind, _), task in zip(todo, tasks):
            data, mime = task.result()
            media = getattr(copy.messages[i].parts[j], kind)
            media.data = data
            media.mime_type = mime
        del tasks  # the fetched bytes live on in the copy only
        try:
            check_inline_sizes(copy, policy)
        except GatewayError as err:
            refusal = err
        else:
            return copy
        # Raised without this frame's copy: a refusal outlives the call (see _first_failure).
        del copy, data
        raise refusal.with_traceback(None)

    async def fetch(self, part_path: str, modality: pb.Modality, media: pb.Media, budget: float,
                    allowance: RequestBytes | None = None, trace: CallTrace | None = None) -> tuple[bytes, str]:
        client = self._client
        if client is None:
            raise GatewayError(Code.UNAVAILABLE, "gateway is not started")
        url = media.url
        if url.startswith("data:"):
            return decode_data_url(part_path, modality, url)  # its bytes are in the request already
        span = NO_FETCH if trace is None else trace.media_fetch(part_path, url)
        metrics = self.metrics
        if metrics is not None:
            metrics.media_fetch_started()
        try:
            data, mime = await self._fetch_url(client, part_path, modality, media, budget, allowance, span)
        except BaseException as exc:
            span.failed(exc)
            if metrics is not None and isinstance(exc, GatewayError):
                metrics.media_fetch_refused(refusal_reason(exc))
            raise
        span.fetched(len(data), mime)
        return data, mime

    async def _fetch_url(self, client: httpx.AsyncClient, part_path: str, modality: pb.Modality, media: pb.Media,
                         budget: float, allowance: RequestBytes | None, span: FetchSpan) -> tuple[bytes, str]:
        url = media.url
        try:
            async with asyncio.timeout(budget):
                for _ in range(self.policy.max_redirects + 1):
                    self._check_target(part_path, url)
                    request = httpx.Request("GET", url, headers={"accept": "*/*", "user-agent": "tollway-media/0.1"})
                    _set_socket_timeouts(request, budget)
                    try:
                        response = await client.send(request, stream=True)
                    except (httpx.InvalidURL, ValueError):
                        # httpx builds the next hop of a 3xx eagerly: a Location it cannot parse
                        # raises here, before the status is seen.
                        raise invalid_argument(part_path, "the URL redirected to a malformed URL") from None
                    span.response(response.status_code)
                    try:
                        if response.status_code in (301, 302, 303, 307, 308):
                            location = response.headers.get("location")
                            if not location:
                                raise invalid_argument(part_path, "the URL redirected without a Location")
                            try:
                                url = str(response.url.join(location))
                            except (httpx.InvalidURL, ValueError):
                                raise invalid_argument(part_path, "the URL redirected to a malformed URL") from None
                            continue
                        if response.status_code >= 400:
                            raise invalid_argument(part_path, f"fetching the URL failed with HTTP {response.status_code}")
                        data = await self._read_limited(part_path, response, allowance)
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
        # Redirect targets come from the media host, not the caller: parsed as strictly.
        try:
            host = parse_http_url(url).host
        except BadMediaURL as exc:
            raise invalid_argument(part_path, f"is not a valid http(s) URL ({exc})") from None
        # aiohttp does not resolve IP literals, so the resolver never sees them: check here.
        if is_ip_literal(host) and not self.policy.host_is_trusted(host) and not self.policy.address_allowed(host):
            raise blocked_address(part_path)

    async def _read_limited(self, part_path: str, response: httpx.Response, allowance: RequestBytes | None) -> bytes:
        limit = self.policy.max_fetch_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit():
            if int(declared) > limit:
                raise invalid_argument(part_path, f"the media is larger than the {limit}-byte limit")
            if allowance is not None and not allowance.fits(int(declared)):
                raise allowance.exceeded(part_path)
        # One growing buffer, not a list of chunks: the chunks (64 KiB, below the mmap threshold)
        # are freed as they are copied, so the heap never holds the body in small pieces that it
        # cannot give back; the buffer itself is big enough to be mmapped (see gateway/heap.py).
        body = bytearray()
        read = 0
        try:
            async for chunk in response.aiter_bytes():  # decoded: the limit holds for compressed bodies too
                read += len(chunk)
                if len(body) + len(chunk) > limit:  # stop reading at once: never buffer more than the limit
                    raise invalid_argument(part_path, f"the media is larger than the {limit}-byte limit")
                if allowance is not None:
                    allowance.take(part_path, len(chunk))  # and never more than the whole request may hold
                body += chunk
            return bytes(body)  # the one copy
        finally:
            # An exception's traceback keeps this frame alive as long as the exception lives
            # (gRPC keeps the last one of a call): it must not keep what was read.
            del body[:]
            if self.metrics is not None:
                self.metrics.media_fetch_read(read)


def refusal_reason(err: GatewayError) -> str:
    """The tollway_media_fetch_refusals_total reason of a refused fetch (messages written above)."""
    message = err.message
    if err.code == Code.PERMISSION_DENIED:
        return "blocked_address"
    if err.code == Code.DEADLINE_EXCEEDED:
        return "timeout"
    if "larger than the" in message or "media.max_request_bytes" in message:
        return "too_large"
    if "failed with HTTP" in message:
        return "http_error"
    if "redirected" in message:
        return "redirect"
    if "could not fetch" in message:
        return "unreachable"
    if "not a valid http(s) URL" in message:
        return "invalid_url"
    return "content"  # what was fetched is not what the part says it is


def _first_failure(failed: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a TaskGroup of fetches raised: the first fetch's own error (siblings were cancelled)."""
    errors: list[BaseException] = []
    pending: list[BaseException] = [failed]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = list(error.exceptions)
        else:
            errors.append(error)
    first = next((e for e in errors if isinstance(e, GatewayError)), errors[0])
    if isinstance(first, GatewayError):
        # A refusal for the caller, nothing to debug: without its traceback and context it
        # holds no frame of a fetch (and none of the bytes such a frame may hold).
        first.__traceback__ = None
        first.__context__ = None
    return first


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, kind) or isinstance(getattr(current, "os_error", None), kind):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
