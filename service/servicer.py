"""The Completion servicer: validate, resolve the route, hand it to the router, map errors to status."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timezone

import grpc

from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .adapter import AnyRequest
from .auth import Caller, authorize_model
from .config import Config
from .engine import Engine, MediaFetcher
from .errors import GatewayError, scrub
from .logs import log_request
from .media import check_inline_sizes
from .registry import Registry
from .router import RoutedCall, Router
from .routing import Route
from .validation import check_capabilities, validate_request

log = logging.getLogger("tollway.servicer")

REQUEST_ID_KEY = "tollway-request-id"


@dataclass(frozen=True)
class ServingState:
    """Config and the registry built from it, replaced together on reload. A call reads it
    once, so it finishes on the config it started with."""

    config: Config
    registry: Registry


@dataclass
class Runtime:
    state: ServingState
    engine: Engine
    media: MediaFetcher
    router: Router


class CompletionServicer(pb_grpc.CompletionServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        call = _Call("Complete", request, self._runtime.state)
        try:
            routed = call.prepare(context)
            response = await self._runtime.router.complete(call.state.registry, call.state.config.routing, routed)
        except GatewayError as err:
            await call.fail(context, err)
        except asyncio.CancelledError:
            call.log("CANCELLED")
            raise
        except Exception:
            await call.crash(context)
        response.cost.CopyFrom(call.price(response.provider, response.model, response.usage))
        call.finish(response.provider, response.model, response.usage)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        return response

    async def StreamComplete(self, request: pb.StreamCompleteRequest, context: grpc.aio.ServicerContext):
        call = _Call("StreamComplete", request, self._runtime.state)
        try:
            routed = call.prepare(context)
            stream = self._runtime.router.stream(call.state.registry, call.state.config.routing, routed)
            async with aclosing(stream) as messages:
                async for message in messages:
                    if message.HasField("summary"):
                        summary = message.summary
                        summary.cost.CopyFrom(call.price(summary.provider, summary.model, summary.usage))
                        call.finish(summary.provider, summary.model, summary.usage)
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
        state = self._runtime.state
        try:
            caller = state.config.callers.authenticate(context.invocation_metadata())
        except GatewayError as err:
            await context.abort(err.code, err.message)
        registry = state.registry
        response = pb.ListModelsResponse()
        for provider in sorted(registry.usable(), key=lambda p: p.name):
            if not caller.may_use_provider(provider.name):
                continue
            caps = provider.adapter.capabilities
            response.providers.append(
                pb.ProviderInfo(
                    name=provider.name,
                    kind=provider.kind,
                    input_modalities=sorted(caps.modalities),
                    mime_types=_mime_list(caps),
                )
            )
        for route in sorted(registry.routes.values(), key=lambda r: r.name):
            if not caller.may_use(route.name):
                continue
            caps = registry.route_capabilities(route)
            info = pb.RouteInfo(name=route.name)
            for t in route.targets:
                info.targets.append(pb.RouteTarget(provider=t.provider, model=t.model, weight=t.weight,
                                                   priority=t.priority, usable=bool(registry.providers[t.provider].keys)))
            if caps is not None:
                info.input_modalities.extend(sorted(caps.modalities))
                info.mime_types.extend(_mime_list(caps))
            response.routes.append(info)
        return response


def _mime_list(caps) -> list[str]:
    return sorted({m for types in caps.mime_types.values() for m in types})


class _Call:
    """Bookkeeping for one RPC: its id, timing, the route, and the one log line it ends with."""

    __slots__ = ("rpc", "request", "state", "request_id", "started", "at", "routed", "provider", "upstream_model",
                 "usage", "caller", "labels")

    def __init__(self, rpc: str, request: AnyRequest, state: ServingState) -> None:
        self.rpc = rpc
        self.request = request
        self.state = state
        self.request_id = uuid.uuid4().hex
        self.started = time.perf_counter()
        # Wall-clock time of the request: it picks the price in effect.
        self.at = datetime.now(timezone.utc)
        self.routed: RoutedCall | None = None
        self.provider = ""
        self.upstream_model = ""
        self.usage: pb.Usage | None = None
        self.caller: Caller | None = None
        self.labels: dict[str, str] = {}

    def prepare(self, context: grpc.aio.ServicerContext) -> RoutedCall:
        """Who is calling, every check that needs no network, then the call's deadline budget."""
        config, registry = self.state.config, self.state.registry
        self.caller = config.callers.authenticate(context.invocation_metadata())
        # The caller's configured labels win over what the request says.
        self.labels = {**self.request.labels, **self.caller.labels}
        validate_request(self.request)
        authorize_model(self.caller, self.request.model)
        check_inline_sizes(self.request, config.media)
        route = registry.resolve(self.request.model)
        _check_route_accepts(registry, route, self.request)
        remaining = context.time_remaining()
        budget = config.routing.default_deadline_s if remaining is None else remaining
        self.routed = RoutedCall(route, self.request, asyncio.get_running_loop().time() + budget)
        return self.routed

    def price(self, provider: str, model: str, usage: pb.Usage) -> pb.Cost:
        kind = self.state.registry.providers[provider].kind
        return self.state.config.prices.price(usage, provider, model, self.at, kind=kind)

    def finish(self, provider: str, model: str, usage: pb.Usage) -> None:
        self.provider, self.upstream_model, self.usage = provider, model, usage
        if self.rpc == "Complete":
            self.log("OK")

    def log(self, status: str, error: str | None = None) -> None:
        usage = self.usage
        target = self.routed.target if self.routed else None
        log_request(
            request_id=self.request_id,
            rpc=self.rpc,
            caller=self.caller.name if self.caller else None,
            model=self.request.model,
            provider=self.provider or (target.provider if target else None),
            upstream_model=self.upstream_model or (target.model if target else None),
            status=status,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 2),
            attempts=len(self.routed.attempts) if self.routed else 0,
            input_tokens=usage.input.total if usage is not None else None,
            output_tokens=usage.output.total if usage is not None else None,
            error=error,
        )

    async def fail(self, context: grpc.aio.ServicerContext, err: GatewayError):
        # Whatever an adapter quoted from a provider, no configured key ever leaves.
        err.message = scrub(err.message, self.state.registry.secrets)
        if err.partial_summary is not None:
            self.usage = err.partial_summary.usage
        self.log(err.code.name, err.message)
        details = []
        if self.routed is not None and (self.routed.attempts or self.usage is not None):
            failure = pb.CallFailure(route=self.routed.route.name, attempts=self.routed.attempts)
            for attempt in failure.attempts:
                attempt.message = scrub(attempt.message, self.state.registry.secrets)
            if self.usage is not None:
                failure.usage.CopyFrom(self.usage)
            details.append(failure)
        status = err.to_status(details)
        await context.abort(status.code, status.details,
                            tuple(status.trailing_metadata) + ((REQUEST_ID_KEY, self.request_id),))

    async def crash(self, context: grpc.aio.ServicerContext):
        # A bug of ours: the caller gets a request id to report, never a traceback.
        log.exception("unexpected error in %s (request_id=%s)", self.rpc, self.request_id)
        self.log("INTERNAL", "unexpected error")
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error in the gateway (request id {self.request_id})",
                            ((REQUEST_ID_KEY, self.request_id),))


def _check_route_accepts(registry: Registry, route: Route, request: AnyRequest) -> None:
    """Refuse media that any usable target of the route cannot take, before any network call."""
    caps = registry.route_capabilities(route)
    if caps is None:
        return  # nothing usable: the router says why
    if len(route.targets) == 1 and "/" in route.name:
        subject = f'provider "{route.targets[0].provider}"'
    else:
        subject = f'route "{route.name}"'
    check_capabilities(subject, caps, request)
