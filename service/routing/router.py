"""The router: a route's targets tried in order under one deadline budget.

Retries per target (exponential backoff, full jitter, Retry-After honoured), fallbacks to
the next target and tier, keys spread per provider with 429 cool-downs, and circuit
breakers that skip failing targets without a network call. A stream falls back only
before its first message reaches the caller.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import cast

import grpc

from tollway.service.admission.stream_limits import OpenStreams
from tollway.service.admission.validation import check_capabilities
from tollway.service.errors import GatewayError
from tollway.service.media.fetch import MediaFetcher
from tollway.service.plugins.adapter import Adapter, AnyRequest
from tollway.service.plugins.registry import Provider, ProviderKey, Registry
from tollway.service.routing.health import HealthBoard
from tollway.service.routing.routes import Route, RoutingPolicy, Target
from tollway.service.telemetry.tracing import NO_ATTEMPT, AttemptSpan, CallTrace
from tollway.service.upstream.engine import AttemptTimeouts, Engine
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode

# Failures another attempt may fix. An attempt's own timeout is retryable too
# (GatewayError.attempt_timeout) while the caller's deadline holds.
RETRYABLE = frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED})
# HTTP statuses that are the upstream's own timeout (the table maps them to DEADLINE_EXCEEDED):
# the caller's deadline did not pass, so another attempt may well succeed.
UPSTREAM_TIMEOUT_STATUSES = frozenset({408, 504})


def _retryable(err: GatewayError) -> bool:
    return err.code in RETRYABLE or err.attempt_timeout or err.http_status in UPSTREAM_TIMEOUT_STATUSES


@dataclass
class RoutedCall:
    """One caller request as the router sees it: budget, and what happened so far."""

    route: Route
    request: AnyRequest
    # Event-loop time by which everything must be done.
    deadline: float
    attempts: list[pb.Attempt] = field(default_factory=list)
    # Fetched media per provider kind of capabilities, so fallbacks do not refetch.
    inlined: dict[int, AnyRequest] = field(default_factory=dict)
    target: Target | None = None
    # True once any attempt went out to a provider: such a call gets a ledger record.
    reached_upstream: bool = False
    # Seconds until the first key of a target skipped for 429 cool-downs is free again.
    first_key_free_s: float | None = None
    # Targets skipped because their provider had as many streams open as it may.
    stream_limits: list[str] = field(default_factory=list)
    # The RPC's span when tracing is on: attempt and media spans are started under it.
    trace: CallTrace | None = None


class Router:
    def __init__(self, engine: Engine, media: MediaFetcher, board: HealthBoard, rng: random.Random | None = None):
        self.engine = engine
        self.media = media
        self.board = board
        self._rng = rng or random.Random()
        self._next_key: dict[str, int] = {}
        # Streams open per provider, against providers.<name>.max_concurrent_streams.
        self.open_streams = OpenStreams()

    async def complete(self, registry: Registry, policy: RoutingPolicy, call: RoutedCall) -> pb.CompleteResponse:
        last_error: GatewayError | None = None
        for target, provider in self._targets(registry, call):
            for retry in range(policy.max_retries + 1):
                # Budget and media first: a key picked is a breaker probe taken, which must
                # not be stranded by a failure before the attempt starts.
                timeouts = self._timeouts(provider, call, policy)
                request = await self._inline(call, provider, timeouts.total)
                key = self._pick_key(provider, target, call)
                if key is None:
                    break
                started = asyncio.get_running_loop().time()
                call.reached_upstream = True
                span = _attempt_span(call, provider, key, target, stream=False, request=request)
                try:
                    response = await self.engine.complete(key.adapter, request, target.model, timeouts,
                                                          trace_headers=span.headers())
                except GatewayError as err:
                    span.failed(err)
                    last_error = err
                    wait = self._after_failure(provider, target, key, call, err, started, retry, policy)
                    if wait is None:
                        break
                    await asyncio.sleep(wait)
                    continue
                except BaseException as exc:
                    # Cancelled (or a bug of ours): no verdict on the target's health.
                    span.interrupted(exc)
                    self._record_cancel(call, target, exc, started)
                    self.board.breaker(provider.name, target.model, key.key_id).release_probe()
                    raise
                span.answered(response)
                self._after_success(provider, target, key, call, started)
                response.attempts.extend(call.attempts)
                response.route = call.route.name
                return response
        raise self._exhausted(call, last_error)

    async def stream(
        self, registry: Registry, policy: RoutingPolicy, call: RoutedCall
    ) -> AsyncGenerator[pb.StreamCompleteResponse, None]:
        last_error: GatewayError | None = None
        for target, provider in self._targets(registry, call):
            for retry in range(policy.max_retries + 1):
                timeouts = self._timeouts(provider, call, policy)
                request = await self._inline(call, provider, timeouts.first_byte)
                if self._stream_limit_reached(provider, target, call):
                    break
                key = self._pick_key(provider, target, call)
                if key is None:
                    break
                breaker = self.board.breaker(provider.name, target.model, key.key_id)
                started = asyncio.get_running_loop().time()
                call.reached_upstream = True
                committed = settled = False
                span = _attempt_span(call, provider, key, target, stream=True, request=request)
                self.open_streams.take(provider.name)
                try:
                    async with aclosing(self.engine.stream(key.adapter, request, target.model, timeouts,
                                                           trace_headers=span.headers())) as messages:
                        async for message in messages:
                            span.chunk(message)
                            if not committed:
                                # From here on the caller has seen output: no fallback.
                                committed = True
                                breaker.record_success()
                            if message.HasField("summary"):
                                # One attempt, recorded once, when its outcome is known.
                                self._record(call, target, Code.OK, "", started)
                                span.answered(message.summary)
                                settled = True
                                message.summary.attempts.extend(call.attempts)
                                message.summary.route = call.route.name
                            yield message
                    return
                except GatewayError as err:
                    span.failed(err)
                    err.retry_after = policy.capped_retry_after(err.retry_after)
                    if committed:
                        self._record(call, target, err.code, err.message, started)
                        if err.code == Code.UNAVAILABLE or err.attempt_timeout:
                            breaker.record_failure()  # a stream cut off is a health signal too
                        raise
                    last_error = err
                    wait = self._after_failure(provider, target, key, call, err, started, retry, policy)
                    if wait is None:
                        break
                except BaseException as exc:
                    # Cancelled, closed by the caller, or a bug of ours: no verdict on health.
                    span.interrupted(exc)
                    if not settled:
                        self._record_cancel(call, target, exc, started)
                    if not committed:
                        breaker.release_probe()
                    raise
                finally:
                    self.open_streams.release(provider.name)
                # Only a failure that may be retried gets here; the backoff holds no stream slot.
                await asyncio.sleep(wait)
        raise self._exhausted(call, last_error)

    # -- the steps -------------------------------------------------------------------

    def _targets(self, registry: Registry, call: RoutedCall) -> Iterator[tuple[Target, Provider]]:
        """Usable targets in attempt order; unusable ones are recorded, not tried."""
        for target in call.route.attempt_order(self._rng):
            provider = registry.providers[target.provider]
            if not provider.keys:
                self._record(call, target, Code.FAILED_PRECONDITION, f"skipped: {provider.unusable_reason}")
                continue
            call.target = target
            yield target, provider

    def _pick_key(self, provider: Provider, target: Target, call: RoutedCall) -> ProviderKey | None:
        """Round-robin over keys that are not cooling down for the target's model and whose
        breaker admits a call."""
        keys = provider.keys
        start = self._next_key.get(provider.name, 0)
        self._next_key[provider.name] = start + 1
        cooling: list[float] = []
        open_ = 0
        for offset in range(len(keys)):
            key = keys[(start + offset) % len(keys)]
            left = self.board.cooling_for(provider.name, target.model, key.key_id)
            if left > 0:
                cooling.append(left)
                continue
            if not self.board.breaker(provider.name, target.model, key.key_id).allow():
                open_ += 1
                continue
            return key
        if open_:
            self._record(call, target, Code.UNAVAILABLE, "skipped: circuit breaker open")
        else:
            # Rate limited, not unhealthy: the caller may come back once the first key is free.
            self._record(call, target, Code.RESOURCE_EXHAUSTED, "skipped: every key is cooling down after 429")
            first_free = min(cooling)
            if call.first_key_free_s is None or first_free < call.first_key_free_s:
                call.first_key_free_s = first_free
        return None

    def _stream_limit_reached(self, provider: Provider, target: Target, call: RoutedCall) -> bool:
        limit = provider.config.max_concurrent_streams or self.engine.max_connections
        open_now = self.open_streams.count(provider.name)
        if open_now < limit:
            return False
        setting = (f"providers.{provider.name}.max_concurrent_streams" if provider.config.max_concurrent_streams
                   else "server.max_upstream_connections")
        reason = (f'provider "{provider.name}" has {open_now} stream{"" if open_now == 1 else "s"} open '
                  f"(limit {setting} = {limit})")
        self._record(call, target, Code.RESOURCE_EXHAUSTED, f"skipped: {reason}")
        call.stream_limits.append(reason)
        return True

    def _timeouts(self, provider: Provider, call: RoutedCall, policy: RoutingPolicy) -> AttemptTimeouts:
        remaining = call.deadline - asyncio.get_running_loop().time()
        if remaining < policy.min_attempt_s:
            raise self._deadline_spent(call)
        cfg = provider.config
        return AttemptTimeouts(
            connect=min(cfg.connect_timeout_s, remaining),
            total=min(cfg.timeout_s, remaining),
            first_byte=min(cfg.first_byte_timeout_s, remaining),
            # Between events the caller's own gRPC deadline governs; the budget does not
            # cut a healthy stream that has started.
            idle=cfg.idle_timeout_s,
        )

    async def _inline(self, call: RoutedCall, provider: Provider, time_left: float) -> AnyRequest:
        # _targets yields only providers with keys, so with an adapter.
        capabilities = cast(Adapter, provider.adapter).capabilities
        cached = call.inlined.get(id(capabilities))
        if cached is None:
            cached = await self.media.inline(call.request, capabilities, time_left, trace=call.trace)
            if cached is not call.request:
                check_capabilities(f'provider "{provider.name}"', capabilities, cached)
            call.inlined[id(capabilities)] = cached
        return cached

    def _after_success(self, provider: Provider, target: Target, key: ProviderKey, call: RoutedCall,
                       started: float) -> None:
        self.board.breaker(provider.name, target.model, key.key_id).record_success()
        self._record(call, target, Code.OK, "", started)

    def _after_failure(self, provider: Provider, target: Target, key: ProviderKey, call: RoutedCall,
                       err: GatewayError, started: float, retry: int, policy: RoutingPolicy) -> float | None:
        """Record the attempt and decide: raise (final), None (next target), or seconds to wait."""
        # An upstream's Retry-After is believed up to a limit, for the cool-down, the wait and
        # the caller's RetryInfo alike.
        err.retry_after = policy.capped_retry_after(err.retry_after)
        loop_time = asyncio.get_running_loop().time()
        spent = call.deadline - loop_time < policy.min_attempt_s
        if err.attempt_timeout and spent:
            # The attempt's limit was what was left of the budget: that is the caller's deadline
            # running out, not the provider's configured timeout. Nothing can follow it.
            err.message += " (all that was left of the call's deadline)"
        self._record(call, target, err.code, err.message, started)
        breaker = self.board.breaker(provider.name, target.model, key.key_id)
        if err.code == Code.RESOURCE_EXHAUSTED:
            # Rate limits say nothing about health: cool the key, leave the breaker alone.
            self.board.cool_down(provider.name, target.model, key.key_id,
                                 err.retry_after if err.retry_after is not None else policy.key_cooldown_s)
            breaker.release_probe()
        elif _retryable(err):
            breaker.record_failure()
        else:
            breaker.record_success()  # the upstream answered: it is healthy, the request was not
        if not _retryable(err) or (err.attempt_timeout and spent):
            raise err
        if retry >= policy.max_retries:
            return None
        wait = policy.backoff(retry, self._rng)
        other_key_ready = err.code == Code.RESOURCE_EXHAUSTED and any(
            not self.board.is_cooling(provider.name, target.model, k.key_id) for k in provider.keys
        )
        if err.retry_after is not None and not other_key_ready:
            wait = max(wait, err.retry_after)
        if loop_time + wait + policy.min_attempt_s >= call.deadline:
            return None  # the wait would not fit: go straight to the next target
        return wait

    def _record(self, call: RoutedCall, target: Target, code: Code, message: str,
                started: float | None = None) -> None:
        attempt = pb.Attempt(provider=target.provider, model=target.model, code=code.value[0], message=message)
        if started is not None:
            attempt.duration.FromNanoseconds(int((asyncio.get_running_loop().time() - started) * 1e9))
        elif call.trace is not None:
            call.trace.skipped(target.provider, target.model, message)
        call.attempts.append(attempt)

    def _record_cancel(self, call: RoutedCall, target: Target, exc: BaseException, started: float) -> None:
        """The attempt a cancel cut short (the caller going away, its stream closed while a message
        was on its way, the server stopping) still went out: the ledger record names it."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self._record(call, target, Code.CANCELLED, "the call was cancelled", started)

    def _deadline_spent(self, call: RoutedCall) -> GatewayError:
        return GatewayError(Code.DEADLINE_EXCEEDED,
                            f"{call.route.name}: the deadline was spent before another attempt could start")

    def _exhausted(self, call: RoutedCall, last_error: GatewayError | None) -> GatewayError:
        if last_error is not None:
            return last_error
        if all(a.code == Code.FAILED_PRECONDITION.value[0] for a in call.attempts):
            # Nothing usable is configured: an operator must act, a retry will not help.
            return GatewayError(Code.FAILED_PRECONDITION, "; ".join(
                f"{a.provider}: {a.message.removeprefix('skipped: ')}" for a in call.attempts))
        limited = {Code.FAILED_PRECONDITION.value[0], Code.RESOURCE_EXHAUSTED.value[0]}
        if (call.first_key_free_s is not None or call.stream_limits) and all(a.code in limited for a in call.attempts):
            # Every target that could serve is rate limited or at its stream limit: a retry
            # later will do.
            reasons = list(call.stream_limits)
            wait = call.first_key_free_s
            if wait is not None:
                reasons.insert(0, "rate limited: every key is cooling down after HTTP 429 from the provider; "
                                  f"the first is free again in {wait:.3g}s, retry then")
            return GatewayError(Code.RESOURCE_EXHAUSTED, f"{call.route.name}: " + "; ".join(reasons),
                                retry_after=wait)
        return GatewayError(Code.UNAVAILABLE, f"{call.route.name}: no target could be tried ("
                            + "; ".join(f"{a.provider}/{a.model}: {a.message}" for a in call.attempts) + ")")


def _attempt_span(call: RoutedCall, provider: Provider, key: ProviderKey, target: Target, *, stream: bool,
                  request: AnyRequest) -> AttemptSpan:
    if call.trace is None:
        return NO_ATTEMPT
    return call.trace.attempt(provider=provider.name, kind=provider.kind, base_url=key.adapter.settings.base_url,
                              model=target.model, stream=stream, request=request)
