"""One RPC's bookkeeping: who called, the checks before any network call, the price, the
one log line, the one ledger record, and the status a failure becomes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

import grpc

from tollway.service.admission.auth import Caller, authorize_model
from tollway.service.admission.limits import check_request_limits
from tollway.service.admission.validation import check_capabilities, validate_request
from tollway.service.config.loader import Config
from tollway.service.errors import GatewayError, bounded_message, scrub
from tollway.service.gateway.logs import log_request
from tollway.service.gateway.request_ids import new_request_id
from tollway.service.gateway.status import end_with_status
from tollway.service.ledger import JournalError, Ledger, LedgerClosed, LedgerRecord
from tollway.service.media.policy import check_request_media
from tollway.service.plugins.adapter import AnyRequest
from tollway.service.plugins.registry import Registry
from tollway.service.routing.router import RoutedCall
from tollway.service.routing.routes import Route
from tollway.service.telemetry.tracing import CallTrace
from tollway.service.usage.estimate import estimated_usage
from tollway.v1 import completion_pb2 as pb

if TYPE_CHECKING:
    from tollway.service.quota.enforcer import QuotaEnforcer, Ticket
    from tollway.service.telemetry.metrics import GatewayMetrics

log = logging.getLogger("tollway.servicer")

REQUEST_ID_KEY = "tollway-request-id"


@dataclass(frozen=True)
class ServingState:
    """Config and the registry built from it, replaced together on reload. A call reads it
    once, so it finishes on the config it started with."""

    config: Config
    registry: Registry


class Call:
    __slots__ = ("rpc", "request", "state", "ledger", "request_id", "started", "at", "routed", "caller", "labels",
                 "provider", "upstream_model", "usage", "cost", "attempts", "ttft_ms", "streamed_bytes", "recorded",
                 "trace", "metrics", "limits", "quota")

    def __init__(self, rpc: str, request: AnyRequest, state: ServingState, ledger: Ledger,
                 metrics: GatewayMetrics | None = None, limits: QuotaEnforcer | None = None) -> None:
        self.rpc = rpc
        self.request = request
        self.state = state
        self.ledger = ledger
        self.request_id = new_request_id()
        self.started = time.perf_counter()
        # Wall-clock time of the request: it picks the price in effect.
        self.at = datetime.now(timezone.utc)
        self.routed: RoutedCall | None = None
        self.caller: Caller | None = None
        self.labels: dict[str, str] = {}
        self.provider = ""
        self.upstream_model = ""
        self.usage: pb.Usage | None = None
        self.cost: pb.Cost | None = None
        self.attempts: list[pb.Attempt] = []
        self.ttft_ms: float | None = None
        # Text forwarded to a streaming caller: what a cancelled stream's estimate counts.
        self.streamed_bytes = 0
        # One ledger record per call, whatever happens after it was written.
        self.recorded = False
        # The RPC's span when tracing is on; the servicer ends it.
        self.trace: CallTrace | None = None
        # None when no metrics are kept (server.metrics_listen unset).
        self.metrics = metrics
        # The rate limits and budgets ([[limits.rules]], [[limits.budgets]]), and what this call
        # asked of them (None: none applies).
        self.limits = limits
        self.quota: Ticket | None = None

    def prepare(self, context: grpc.aio.ServicerContext[Any, Any]) -> RoutedCall:
        """Who is calling, every check that needs no network, then the call's deadline budget."""
        config, registry = self.state.config, self.state.registry
        check_request_limits(self.request, config.limits)  # before anything logs or records them
        self.caller = config.callers.authenticate(context.invocation_metadata(), context.auth_context)
        # The caller's configured labels win over what the request says.
        self.labels = {**self.request.labels, **self.caller.labels}
        validate_request(self.request)
        authorize_model(self.caller, self.request.model)
        check_request_media(self.request, config.media)
        route = registry.resolve(self.request.model)
        _check_route_accepts(registry, route, self.request)
        remaining = context.time_remaining()
        budget = config.routing.default_deadline_s if remaining is None else remaining
        self.routed = RoutedCall(route, self.request, asyncio.get_running_loop().time() + budget, trace=self.trace)
        if self.limits is not None:
            self.quota = self.limits.plan(self.request_id, self.caller.name, self.labels, self.request, route,
                                          stream=self.rpc == "StreamComplete")
        return self.routed

    async def check_limits(self) -> None:
        """The rate limits and budgets that apply, checked and counted before any upstream
        attempt; RESOURCE_EXHAUSTED (with QuotaFailure and RetryInfo) when one is used up."""
        if self.quota is not None:
            await cast("QuotaEnforcer", self.limits).admit(self.quota)

    def limit_trailers(self) -> tuple[tuple[str, str], ...]:
        """tollway-ratelimit-remaining-* and tollway-budget-remaining-usd, when limits apply."""
        if self.quota is None:
            return ()
        return cast("QuotaEnforcer", self.limits).trailers(self.quota)

    def _settle_limits(self) -> None:
        """Every end of a call settles its limits once: tokens to their real count, the stream
        slot freed, budgets charged the exact cost."""
        if self.quota is not None:
            cast("QuotaEnforcer", self.limits).settle(self.quota, self.usage, self.cost)

    def first_delta(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000

    def settle(self, provider: str, model: str, usage: pb.Usage, attempts: Iterable[pb.Attempt]) -> pb.Cost:
        """The answer is in: price it and keep what the log line and ledger record need."""
        self.provider, self.upstream_model, self.usage = provider, model, usage
        # In place: these are the attempts of the answer the caller is about to get.
        self.attempts = self._scrubbed(attempts)
        if usage.refused_figures:
            # They quote what the upstream sent as a figure, which may be anything, a key too;
            # before pricing, whose unpriced reason quotes them again.
            secrets = self.state.registry.secrets
            usage.refused_figures[:] = [scrub(figure, secrets) for figure in usage.refused_figures]
        self.cost = self.state.config.prices.price(usage, provider, model, self.at,
                                                   kind=self.state.registry.providers[provider].kind)
        return self.cost

    async def succeed(self) -> None:
        """Log the call and make its ledger record durable before the caller sees OK."""
        self._settle_limits()
        self.log("OK")
        self._count("OK")
        self.recorded = True
        try:
            await self.ledger.record(self._record("OK"))
        except (JournalError, LedgerClosed) as exc:
            # Logged once by the ledger; the caller's answer does not depend on it.
            log.error("usage record %s not journaled: %s", self.request_id, exc)

    def cancelled(self, deadline_passed: bool = False) -> None:
        """The caller went away, or its deadline passed: log it, and record the usage the upstream
        may have billed. A call already answered or failed has its log line and record."""
        if self.recorded:
            return
        status = "DEADLINE_EXCEEDED" if deadline_passed else "CANCELLED"
        self.log(status)
        if self.routed is not None and self.routed.reached_upstream:
            attempts = self.routed.attempts
            if deadline_passed and attempts and attempts[-1].code == grpc.StatusCode.CANCELLED.value[0]:
                # The router saw its attempt cancelled; what cancelled it was the deadline.
                attempts[-1].code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
                attempts[-1].message = "the caller's deadline passed"
            if self.usage is None:
                self._estimate_abandoned_usage()
            self._record_nowait(status)
        self._settle_limits()
        self._count(status)  # after the estimate: the metrics count what the ledger records

    def fail(self, context: grpc.aio.ServicerContext[Any, Any], err: GatewayError) -> None:
        """Log, record and set the error status; the handler returns right after (gateway/status.py)."""
        # Whatever an adapter quoted from a provider, no configured key ever leaves.
        err.message = scrub(err.message, self.state.registry.secrets)
        if err.partial_summary is not None:
            partial = err.partial_summary
            self.settle(partial.provider or self._target_provider(), partial.model or self._target_model(),
                        partial.usage, ())
        self.attempts = self._scrubbed(self.routed.attempts) if self.routed else []
        self.log(err.code.name, err.message)
        self._count(err.code.name)
        refused_by_limit = self.quota is not None and self.quota.refusal is not None
        if self.routed is not None and (self.routed.reached_upstream or refused_by_limit):
            # A refusal by a rate limit or budget is recorded too, with zero usage: billing and
            # the team that owns the limit can see what was turned away.
            self._record_nowait(err.code.name)
        self._settle_limits()
        details = []
        if self.routed is not None and (self.routed.attempts or self.usage is not None):
            failure = pb.CallFailure(route=self.routed.route.name, attempts=self.attempts)
            if self.usage is not None:
                failure.usage.CopyFrom(self.usage)
            _fit_in_trailers(failure)
            details.append(failure)
        status = err.to_status(details)
        end_with_status(context, status.code, status.details,
                        tuple(status.trailing_metadata) + ((REQUEST_ID_KEY, self.request_id),) + self.limit_trailers())

    def crash(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # A bug of ours: the caller gets a request id to report, never a traceback.
        log.exception("unexpected error in %s (request_id=%s)", self.rpc, self.request_id)
        self.log("INTERNAL", "unexpected error")
        self._count("INTERNAL")
        if self.routed is not None and self.routed.reached_upstream:
            self._record_nowait("INTERNAL")
        self._settle_limits()
        end_with_status(context, grpc.StatusCode.INTERNAL,
                        f"internal error in the gateway (request id {self.request_id})",
                        ((REQUEST_ID_KEY, self.request_id),))

    def log(self, status: str, error: str | None = None) -> None:
        if self.trace is not None:
            self._trace_outcome(status, error)
        if self.caller is None:
            # Refused at authentication: what the request says is a stranger's input, not logged.
            log_request(request_id=self.request_id, rpc=self.rpc, status=status, error=error)
            return
        usage = self.usage
        log_request(
            request_id=self.request_id,
            rpc=self.rpc,
            caller=self.caller.name,
            model=self.request.model,
            provider=self.provider or self._target_provider() or None,
            upstream_model=self.upstream_model or self._target_model() or None,
            status=status,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 2),
            attempts=len(self.routed.attempts) if self.routed else 0,
            input_tokens=usage.input.total if usage is not None else None,
            output_tokens=usage.output.total if usage is not None else None,
            error=error,
        )

    def _trace_outcome(self, status: str, error: str | None) -> None:
        """What the log line says, on the RPC's span; as there, nothing the request says
        before its caller is authenticated."""
        trace = cast(CallTrace, self.trace)
        if self.caller is not None:
            trace.identify(self.caller.name, self.routed.route.name if self.routed else self.request.model)
        trace.outcome(status, error, provider=self.provider or self._target_provider(),
                      model=self.upstream_model or self._target_model(),
                      attempts=len(self.routed.attempts) if self.routed else 0, usage=self.usage, cost=self.cost)

    def _count(self, status: str) -> None:
        """The metrics of the finished call: once per call, beside its one log line."""
        if self.metrics is not None:
            try:
                self.metrics.call_finished(self, status)
            except Exception as exc:
                # A metric must never cost a caller its answer or its status.
                log.error("metrics of request %s not counted: %s: %s", self.request_id, type(exc).__name__, exc)

    # -- the ledger record ---------------------------------------------------------------

    def _record(self, status: str) -> LedgerRecord:
        return LedgerRecord.from_protos(
            request_id=self.request_id,
            time=self.at,
            caller=self.caller.name if self.caller else "",
            labels=self.labels,
            route=self.routed.route.name if self.routed else self.request.model,
            provider=self.provider or self._target_provider(),
            model=self.upstream_model or self._target_model(),
            status=status,
            # Scrubbed already on every path that gets here; again because this is what stays on disk.
            attempts=self._scrubbed(self.attempts or (self.routed.attempts if self.routed else ())),
            latency_ms=(time.perf_counter() - self.started) * 1000,
            ttft_ms=self.ttft_ms,
            usage=self.usage,
            cost=self.cost,
        )

    def _record_nowait(self, status: str) -> None:
        """For calls that answer no OK: the record is written before this returns."""
        if self.recorded:
            return
        self.recorded = True
        try:
            self.ledger.record_nowait(self._record(status))
        except (JournalError, LedgerClosed) as exc:
            log.error("usage record %s not journaled: %s", self.request_id, exc)

    def _scrubbed(self, attempts: Iterable[pb.Attempt]) -> list[pb.Attempt]:
        """The attempts, their messages cleaned of every configured key in place (the caller's
        answer, its CallFailure and the ledger record all hold these objects or copies of them)."""
        secrets = self.state.registry.secrets
        attempts = list(attempts)
        for attempt in attempts:
            if attempt.message:
                attempt.message = scrub(attempt.message, secrets)
        return attempts

    def _estimate_abandoned_usage(self) -> None:
        """A stream the caller abandoned: the provider's final figures never came, so estimate
        from the request's text and the text forwarded so far."""
        usage = estimated_usage(self.request, self.streamed_bytes)
        provider, model = self._target_provider(), self._target_model()
        if provider:
            # A target provider comes from the routed call.
            self.settle(provider, model, usage, cast(RoutedCall, self.routed).attempts)

    def _target_provider(self) -> str:
        target = self.routed.target if self.routed else None
        return target.provider if target else ""

    def _target_model(self) -> str:
        target = self.routed.target if self.routed else None
        return target.model if target else ""


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


# The CallFailure travels in a trailer beside the status; gRPC refuses trailers over 16 KiB (the
# caller then gets RESOURCE_EXHAUSTED and loses tollway-request-id). A route of many targets with
# retries makes many attempts, each message up to the 640-byte status bound.
MAX_FAILURE_BYTES = 6 * 1024
SHORT_ATTEMPT_BYTES = 120


def _fit_in_trailers(failure: pb.CallFailure) -> None:
    """Shorten the attempts' messages, then drop middle attempts, until the detail fits."""
    if failure.ByteSize() <= MAX_FAILURE_BYTES:
        return
    for attempt in failure.attempts:
        attempt.message = bounded_message(attempt.message, SHORT_ATTEMPT_BYTES)
    dropped = 0
    room_for_note = 64
    while failure.ByteSize() > MAX_FAILURE_BYTES - room_for_note and len(failure.attempts) > 2:
        # The first attempt and the last ones say the most: what failed first, what ended it.
        del failure.attempts[1]
        dropped += 1
    if dropped:
        failure.attempts[0].message += f" ({dropped} later attempts left out of this detail)"
