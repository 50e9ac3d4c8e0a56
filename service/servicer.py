"""The Completion servicer: validate, resolve the provider, call the engine, map errors to status."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass

import grpc

from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .adapter import AnyRequest
from .engine import Engine, MediaFetcher
from .media import check_inline_sizes
from .errors import GatewayError, scrub
from .logs import log_request
from .registry import Provider, Registry
from .validation import check_capabilities, validate_request

log = logging.getLogger("tollway.servicer")

REQUEST_ID_KEY = "tollway-request-id"


@dataclass
class Runtime:
    """What the servicer reads per request. The registry is replaced whole on reload, so a
    call that took its snapshot finishes on the config it started with."""

    registry: Registry
    engine: Engine
    media: MediaFetcher


class CompletionServicer(pb_grpc.CompletionServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        call = _Call("Complete", request)
        try:
            provider, upstream_model = call.prepare(self._runtime.registry, self._runtime.media)
            request = await call.inline_media(self._runtime.media, _time_budget(context, provider.timeout_s))
            timeout = _time_budget(context, provider.timeout_s)
            response = await self._runtime.engine.complete(provider.adapter, request, upstream_model, timeout)
        except GatewayError as err:
            await call.fail(context, err)
        except asyncio.CancelledError:
            call.log("CANCELLED")
            raise
        except Exception:
            await call.crash(context)
        call.usage = response.usage
        call.log("OK")
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        return response

    async def StreamComplete(self, request: pb.StreamCompleteRequest, context: grpc.aio.ServicerContext):
        call = _Call("StreamComplete", request)
        try:
            provider, upstream_model = call.prepare(self._runtime.registry, self._runtime.media)
            request = await call.inline_media(self._runtime.media, _time_budget(context, provider.timeout_s))
            idle_timeout = _time_budget(context, provider.timeout_s)
            stream = self._runtime.engine.stream(provider.adapter, request, upstream_model, idle_timeout)
            async with aclosing(stream) as messages:
                async for message in messages:
                    if message.HasField("summary"):
                        call.usage = message.summary.usage
                    yield message
        except GatewayError as err:
            await call.fail(context, err)
        except asyncio.CancelledError:
            call.log("CANCELLED")
            raise
        except Exception:
            await call.crash(context)
        call.log("OK")
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse()
        for provider in sorted(self._runtime.registry.usable(), key=lambda p: p.name):
            caps = provider.adapter.capabilities
            response.providers.append(
                pb.ProviderInfo(
                    name=provider.name,
                    kind=provider.kind,
                    input_modalities=sorted(caps.modalities),
                    mime_types=sorted({m for types in caps.mime_types.values() for m in types}),
                )
            )
        return response


class _Call:
    """Bookkeeping for one RPC: its id, timing, and the one log line it ends with."""

    __slots__ = ("rpc", "request", "request_id", "started", "provider", "upstream_model", "usage")

    def __init__(self, rpc: str, request: AnyRequest) -> None:
        self.rpc = rpc
        self.request = request
        self.request_id = uuid.uuid4().hex
        self.started = time.perf_counter()
        self.provider: Provider | None = None
        self.upstream_model = ""
        self.usage: pb.Usage | None = None

    def prepare(self, registry: Registry, media: MediaFetcher) -> tuple[Provider, str]:
        validate_request(self.request)
        check_inline_sizes(self.request, media.policy)
        provider, self.upstream_model = registry.resolve(self.request.model)
        self.provider = provider
        check_capabilities(provider.name, provider.adapter.capabilities, self.request)
        return provider, self.upstream_model

    async def inline_media(self, media: MediaFetcher, time_left: float) -> AnyRequest:
        """Fetch URL media the provider cannot take; the fetched types are checked again."""
        capabilities = self.provider.adapter.capabilities
        inlined = await media.inline(self.request, capabilities, time_left)
        if inlined is not self.request:
            check_capabilities(self.provider.name, capabilities, inlined)
        return inlined

    def log(self, status: str, error: str | None = None) -> None:
        usage = self.usage
        log_request(
            request_id=self.request_id,
            rpc=self.rpc,
            model=self.request.model,
            provider=self.provider.name if self.provider else None,
            upstream_model=self.upstream_model,
            status=status,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 2),
            input_tokens=usage.input.total if usage is not None else None,
            output_tokens=usage.output.total if usage is not None else None,
            error=error,
        )

    async def fail(self, context: grpc.aio.ServicerContext, err: GatewayError):
        if self.provider is not None and self.provider.adapter is not None:
            # Whatever an adapter quoted from the provider, the provider's key never leaves.
            err.message = scrub(err.message, (self.provider.adapter.settings.api_key,))
        self.log(err.code.name, err.message)
        status = err.to_status()
        await context.abort(status.code, status.details,
                            tuple(status.trailing_metadata) + ((REQUEST_ID_KEY, self.request_id),))

    async def crash(self, context: grpc.aio.ServicerContext):
        # A bug of ours: the caller gets a request id to report, never a traceback.
        log.exception("unexpected error in %s (request_id=%s)", self.rpc, self.request_id)
        self.log("INTERNAL", "unexpected error")
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error in the gateway (request id {self.request_id})",
                            ((REQUEST_ID_KEY, self.request_id),))


def _time_budget(context: grpc.aio.ServicerContext, provider_timeout: float) -> float:
    """The smaller of the caller's remaining deadline and the provider's limit."""
    remaining = context.time_remaining()
    if remaining is None:
        return provider_timeout
    return max(min(remaining, provider_timeout), 0.001)
