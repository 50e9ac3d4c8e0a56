"""The Completion servicer: each RPC as a Call that the router serves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from functools import partial, wraps
from typing import Any, TypeVar, cast

import grpc

from tollway.service.admission.auth import Caller
from tollway.service.admission.limits import check_limits_request
from tollway.service.admission.stream_limits import OpenStreams
from tollway.service.errors import GatewayError
from tollway.service.gateway.call import REQUEST_ID_KEY, Call, ServingState
from tollway.service.gateway.send_watch import CallerGone, SendWatch
from tollway.service.gateway.status import end_with_error
from tollway.service.ledger import Ledger, StoreUnavailable, SummaryTooLarge, from_proto
from tollway.service.media.fetch import MediaFetcher
from tollway.service.plugins.adapter import Adapter, AnyRequest, Capabilities
from tollway.service.quota.describe import describe_limits
from tollway.service.quota.enforcer import QuotaEnforcer
from tollway.service.routing.router import Router
from tollway.service.telemetry.metrics import GatewayMetrics
from tollway.service.telemetry.tracing import Tracing
from tollway.service.upstream.engine import Engine
from tollway.service.usage.estimate import estimated_usage
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

__all__ = ["CompletionServicer", "REQUEST_ID_KEY", "Runtime", "ServingState"]

R = TypeVar("R")
Handler = Callable[["CompletionServicer", Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]


def _traced(method: str) -> Callable[[Handler[R]], Handler[R]]:
    """A server span around an RPC that has no Call (Complete and StreamComplete trace theirs)."""

    def wrap(handler: Handler[R]) -> Handler[R]:
        @wraps(handler)
        async def traced(self: CompletionServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
            tracing = self._runtime.tracing
            if tracing is None:
                return await handler(self, request, context)
            trace = tracing.start_rpc(method, context.invocation_metadata(), None)
            try:
                result = await handler(self, request, context)
                # The handlers end a failure by setting the code (gateway/status.py); a code
                # never set reads as None, whatever the stubs say.
                code = cast("grpc.StatusCode | None", context.code())
                trace.status(code or grpc.StatusCode.OK, context.details())
                return result
            except BaseException as exc:
                cancelled = isinstance(exc, asyncio.CancelledError)
                trace.status(grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.INTERNAL,
                             "the call was cancelled" if cancelled else "unexpected error")
                raise
            finally:
                trace.end()

        return traced

    return wrap


@dataclass
class Runtime:
    """What outlives a config reload; `state` is the part a reload replaces."""

    state: ServingState
    engine: Engine
    media: MediaFetcher
    router: Router
    ledger: Ledger
    # The server's grpc.max_send_message_length: an answer larger than this never reaches
    # the caller, so it must not be recorded as OK.
    max_send_bytes: int = 4 * 1024 * 1024
    # Streams open per configured caller, against routing.max_streams_per_caller.
    caller_streams: OpenStreams = field(default_factory=OpenStreams)
    # None: tracing is off (read at start-up only).
    tracing: Tracing | None = None
    # None: no metrics are kept (server.metrics_listen unset).
    metrics: GatewayMetrics | None = None
    # None: no [[limits.rules]] or [[limits.budgets]] at start-up.
    limits: QuotaEnforcer | None = None


class CompletionServicer(pb_grpc.CompletionServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _call(self, rpc: str, request: AnyRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Call:
        """A Call, counted by the ledger until it has finished (see Ledger.call_started)."""
        ledger = self._runtime.ledger
        ledger.call_started()
        call = Call(rpc, request, self._runtime.state, ledger, self._runtime.metrics, self._runtime.limits)
        tracing = self._runtime.tracing
        if tracing is not None:
            call.trace = tracing.start_rpc(rpc, context.invocation_metadata(), call.request_id,
                                           call.state.registry.secrets)
        return call

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext[pb.CompleteRequest, pb.CompleteResponse]
    ) -> pb.CompleteResponse | None:
        # None: the call ended with the error status Call.fail set (gateway/status.py).
        call = self._call("Complete", request, context)
        try:
            routed = call.prepare(context)
            await call.check_limits()
            response = await self._runtime.router.complete(call.state.registry, call.state.config.routing, routed)
            response.cost.CopyFrom(call.settle(response.provider, response.model, response.usage, response.attempts))
            _check_sendable(response, self._runtime.max_send_bytes)
            await call.succeed()
        except GatewayError as err:
            call.fail(context, err)
            return None
        except asyncio.CancelledError:
            call.cancelled(_deadline_passed(context))
            raise
        except Exception:
            call.crash(context)
            return None
        finally:
            call.ledger.call_ended()
            if call.trace is not None:
                call.trace.end()
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),) + call.limit_trailers())
        return response

    async def StreamComplete(
        self,
        request: pb.StreamCompleteRequest,
        context: grpc.aio.ServicerContext[pb.StreamCompleteRequest, pb.StreamCompleteResponse],
    ) -> None:
        # Written with context.write rather than yielded: an async-generator handler gives no
        # hold on the send, and a caller that stops reading would block it (and the upstream
        # connection behind it) forever. write() waits for the caller's flow-control window.
        call = self._call("StreamComplete", request, context)
        holder: str | None = None  # the caller whose stream slot this call holds
        try:
            routed = call.prepare(context)
            holder = self._take_stream_slot(call)
            await call.check_limits()
            send_timeout = call.state.config.server.stream_send_timeout_s
            stream = self._runtime.router.stream(call.state.registry, call.state.config.routing, routed)
            expired = partial(_reader_stopped, call, send_timeout)
            async with aclosing(stream) as messages, SendWatch(send_timeout, expired) as watch:
                async for message in messages:
                    event = message.WhichOneof("event")
                    if event != "summary":
                        call.first_delta()
                        call.streamed_bytes += _output_bytes(message, event)
                        await watch.send(context, message)
                    else:
                        summary = message.summary
                        summary.cost.CopyFrom(call.settle(summary.provider, summary.model, summary.usage,
                                                          summary.attempts))
                        await watch.send(context, message)
                        # After the send: a summary that never reached the caller is not recorded OK.
                        await call.succeed()
        except GatewayError as err:
            call.fail(context, err)
            return
        except asyncio.CancelledError:
            call.cancelled(_deadline_passed(context))
            raise
        except CallerGone:
            # The caller went away while a message was on its way: a cancel too, and the call
            # is over, so there is no status left to send.
            call.cancelled(_deadline_passed(context))
            return
        except Exception:
            call.crash(context)
            return
        finally:
            if holder is not None:
                self._runtime.caller_streams.release(holder)
            call.ledger.call_ended()
            if call.trace is not None:
                call.trace.end()
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),) + call.limit_trailers())

    def _take_stream_slot(self, call: Call) -> str | None:
        """Count the stream against its caller, or RESOURCE_EXHAUSTED at the caller's limit.
        Anonymous calls share no identity to count: the per-provider limit bounds them."""
        caller = cast(Caller, call.caller)  # prepare() authenticated it
        if call.state.config.callers.anonymous:
            return None
        limit, setting = caller.max_streams, f"callers.{caller.name}.max_streams"
        if limit is None:
            limit, setting = call.state.config.routing.max_streams_per_caller, "routing.max_streams_per_caller"
        open_now = self._runtime.caller_streams.count(caller.name)
        if open_now >= limit:
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f'caller "{caller.name}" has {_streams(open_now)} open (limit {setting} = {limit}): '
                               "close one before opening another")
        self._runtime.caller_streams.take(caller.name)
        return caller.name

    @_traced("ListModels")
    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse | None:
        state = self._runtime.state
        try:
            caller = state.config.callers.authenticate(context.invocation_metadata(), context.auth_context)
        except GatewayError as err:
            end_with_error(context, err)
            return None
        registry = state.registry
        response = pb.ListModelsResponse()
        caps: Capabilities | None  # a provider's below, then a route's (None when none is usable)
        for provider in sorted(registry.usable(), key=lambda p: p.name):
            if not caller.may_use_provider(provider.name):
                continue
            caps = cast(Adapter, provider.adapter).capabilities  # usable: it has keys, so an adapter
            response.providers.append(
                pb.ProviderInfo(
                    name=provider.name,
                    kind=provider.kind,
                    input_modalities=sorted(caps.modalities),
                    mime_types=_mime_list(caps),
                    features=_features(caps),
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
                info.features.CopyFrom(_features(caps))
            response.routes.append(info)
        return response

    @_traced("GetUsageSummary")
    async def GetUsageSummary(
        self,
        request: pb.GetUsageSummaryRequest,
        context: grpc.aio.ServicerContext[pb.GetUsageSummaryRequest, pb.GetUsageSummaryResponse],
    ) -> pb.GetUsageSummaryResponse | None:
        state = self._runtime.state
        try:
            caller = state.config.callers.authenticate(context.invocation_metadata(), context.auth_context)
            try:
                filters, group_by = from_proto(request)
            except ValueError as exc:
                raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            if not caller.is_admin:
                # A caller sees its own usage only, whatever it asks for.
                if filters.caller not in (None, caller.name):
                    raise GatewayError(grpc.StatusCode.PERMISSION_DENIED,
                                       f'caller: "{caller.name}" may read only its own usage')
                filters = replace(filters, caller=caller.name)
            try:
                rows = await self._runtime.ledger.summary(filters, group_by)
            except StoreUnavailable as exc:
                # The cause names the database (a file path, a host): the operator's log has it,
                # the caller gets what to do.
                logging.getLogger("tollway.ledger").warning("GetUsageSummary: usage ledger unavailable: %s", exc)
                raise GatewayError(grpc.StatusCode.UNAVAILABLE, "usage ledger unavailable; retry later") from None
            except SummaryTooLarge as exc:
                raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except GatewayError as err:
            end_with_error(context, err)
            return None
        return pb.GetUsageSummaryResponse(rows=rows)

    @_traced("GetLimits")
    async def GetLimits(
        self,
        request: pb.GetLimitsRequest,
        context: grpc.aio.ServicerContext[pb.GetLimitsRequest, pb.GetLimitsResponse],
    ) -> pb.GetLimitsResponse | None:
        state = self._runtime.state
        try:
            caller = state.config.callers.authenticate(context.invocation_metadata(), context.auth_context)
            check_limits_request(request, state.config.limits)
            targets = state.registry.resolve(request.model).target_names if request.model else ()
            limits = self._runtime.limits
            if limits is None:
                return pb.GetLimitsResponse(store_reachable=True)
            return await describe_limits(limits, state.config.callers, caller, request, targets)
        except GatewayError as err:
            end_with_error(context, err)
            return None


def _reader_stopped(call: Call, timeout_s: float) -> GatewayError:
    """The caller stopped reading: the stream is ended (the upstream connection closes as the
    router's generator does), and the output forwarded so far is recorded, estimated."""
    partial = pb.StreamSummary(usage=estimated_usage(call.request, call.streamed_bytes))
    return GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the caller read nothing for {timeout_s:.3g}s while a message waited "
                        f"(server.stream_send_timeout_s = {timeout_s:.3g}): the stream was ended; "
                        "read a stream as it arrives", partial_summary=partial)


def _streams(count: int) -> str:
    return f"{count} stream" if count == 1 else f"{count} streams"


def _check_sendable(response: pb.CompleteResponse, limit: int) -> None:
    """gRPC sends a unary answer after the handler returns and fails it there when it is too
    large: refuse it here, so the log line and the ledger record (with the usage the provider
    billed) say what the caller got."""
    size = response.ByteSize()
    if size > limit:
        raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{response.provider}: the answer is {size} bytes, more than the gateway sends in one "
                           f"message ({limit} bytes): ask for less (max_tokens) or use StreamComplete")


def _deadline_passed(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the caller's own deadline ended the call (the caller then sees DEADLINE_EXCEEDED)
    rather than the caller cancelling it."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _mime_list(caps: Capabilities) -> list[str]:
    return sorted({m for types in caps.mime_types.values() for m in types})


def _features(caps: Capabilities) -> pb.Features:
    return pb.Features(tools=caps.tools, structured_output=caps.structured_output, reasoning=caps.reasoning)


def _output_bytes(message: pb.StreamCompleteResponse, event: str | None) -> int:
    """Bytes of billed output a stream message carries: what a cancelled stream's estimate counts."""
    if event == "delta":
        return len(message.delta.text.encode())
    if event == "tool_call_delta":
        return len(message.tool_call_delta.arguments_fragment.encode())
    if event == "reasoning_delta":
        return len(message.reasoning_delta.text.encode())
    return 0
