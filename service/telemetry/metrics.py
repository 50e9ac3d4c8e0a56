"""Prometheus metrics: the instruments and the hooks that feed them.

Names follow the OpenTelemetry GenAI semantic conventions mapped to Prometheus (dots to
underscores, the unit as a suffix, `_total` on counters) where a convention exists, and start
with `tollway_` where none does. The README's Metrics section lists every one.

Every label set is bounded: callers, providers and configured routes come from the config;
what a caller chooses (the model of a direct "provider/model" call, the values of the request
labels an operator lists in `[metrics] label_keys`) keeps its first distinct values and folds
the rest into "other" (the breaker and cool-down gauges fold every model past that limit, since
the health board does not say which route a model came from). Children are resolved once per
label combination and cached, so the end of a call costs dictionary lookups and the
observations themselves.

With several worker processes (PROMETHEUS_MULTIPROC_DIR set before the interpreter imports
prometheus_client), every value goes to that directory and the exporter sums them
(metrics_export.py); gauges say how in their multiprocess_mode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, gc_collector, platform_collector
from prometheus_client import process_collector

from tollway.service.telemetry.metrics_config import MetricsConfig
from tollway.v1 import completion_pb2 as pb

if TYPE_CHECKING:
    from tollway.service.gateway.call import Call
    from tollway.service.routing.health import HealthBoard

log = logging.getLogger("tollway.metrics")

# The value a bounded label takes once its limit of distinct values is reached.
OTHER = "other"
# Distinct models (of direct "provider/model" calls: the caller names them) and routes.
MAX_MODELS = 1000
MAX_ROUTES = 1000
# Distinct values of each request label listed in [metrics] label_keys.
MAX_LABEL_VALUES = 100
# How often breaker, cool-down and journal gauges are read (a scrape every 15 s or more is usual).
SAMPLE_INTERVAL_S = 2.0

# Every call is a chat completion in the convention's words (gen_ai.operation.name).
OPERATION = "chat"
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")

# The buckets the conventions recommend, so dashboards built for them fit.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
# The gateway's own time is milliseconds; the top buckets catch media fetches and retry waits.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

MEDIA_REFUSAL_REASONS = ("blocked_address", "too_large", "http_error", "redirect", "timeout", "unreachable",
                         "invalid_url", "content")

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_PROVIDER, _MODEL = "gen_ai_provider_name", "gen_ai_request_model"
_REQUEST_LABELS = ("caller", "route", _PROVIDER, _MODEL)


class Ledgerlike(Protocol):
    def backlog(self) -> tuple[int, float]: ...


class Routerlike(Protocol):
    board: HealthBoard


class BoundedValues:
    """The values one label has taken, up to limit; new values past it are folded into "other"."""

    __slots__ = ("_seen", "_limit")

    def __init__(self, limit: int) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def fold(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


def _as_configured(value: str) -> str:
    return value


class _CallSeries:
    """The children one label combination of a finished call feeds, resolved once."""

    __slots__ = ("requests", "duration", "tokens", "token_usage", "cost", "unpriced", "ttft", "overhead")

    requests: Counter
    duration: Histogram
    tokens: tuple[Counter, ...]
    token_usage: tuple[Histogram, ...]
    cost: Counter
    unpriced: Counter
    ttft: Histogram
    overhead: Histogram


class _GaugeTable:
    """A gauge set from a periodic reading: label sets absent from a reading go to 0 (a
    multiprocess gauge file keeps its last value, so a vanished series must be zeroed)."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._shown: set[tuple[str, ...]] = set()

    def show(self, values: Mapping[tuple[str, ...], int]) -> None:
        for labels in self._shown - values.keys():
            self._gauge.labels(*labels).set(0)
        for labels, value in values.items():
            self._gauge.labels(*labels).set(value)
        self._shown.update(values.keys())


class GatewayMetrics:
    """Every instrument of one gateway process, in its own registry."""

    def __init__(self, config: MetricsConfig, registry: CollectorRegistry | None = None,
                 process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process_metrics:
            # process_*, python_gc_*, python_info, as the default registry has them.
            process_collector.ProcessCollector(registry=r)
            platform_collector.PlatformCollector(registry=r)
            gc_collector.GCCollector(registry=r)
        self._label_keys = config.label_keys
        extra = config.label_names
        self._models = BoundedValues(MAX_MODELS)
        self._routes = BoundedValues(MAX_ROUTES)
        self._label_values = tuple(BoundedValues(MAX_LABEL_VALUES) for _ in self._label_keys)

        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds", "Calls from arrival to the last byte sent, by outcome",
            ["gen_ai_operation_name", _PROVIDER, _MODEL, "rpc", "error_type"], buckets=DURATION_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Streams that ended OK: arrival to the first output sent",
            ["gen_ai_operation_name", _PROVIDER, _MODEL], buckets=TTFT_BUCKETS, registry=r)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per call by type: input and output of every call with usage; cache_read, cache_write "
            "(parts of input) and reasoning (part of output) of the calls that had them",
            ["gen_ai_operation_name", _PROVIDER, _MODEL, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=r)
        self.requests = Counter(
            "tollway_requests_total", "Finished Complete and StreamComplete calls by gRPC status",
            [*_REQUEST_LABELS, "rpc", "status", *extra], registry=r)
        self.tokens = Counter(
            "tollway_tokens_total", "Tokens of finished calls by type", [*_REQUEST_LABELS, "gen_ai_token_type", *extra],
            registry=r)
        self.cost = Counter(
            "tollway_cost_nano_usd_total", "Cost of priced calls in nano-USD (1e-9 USD)", [*_REQUEST_LABELS, *extra],
            registry=r)
        self.unpriced = Counter(
            "tollway_unpriced_requests_total", "Calls with usage whose model has no price (not in the cost)",
            [*_REQUEST_LABELS, *extra], registry=r)
        self.attempts = Counter(
            "tollway_attempts_total", "Requests sent to a provider, by the gRPC status each came to",
            [_PROVIDER, _MODEL, "status"], registry=r)
        self.fallbacks = Counter(
            "tollway_fallbacks_total", "Moves from a route's target to the next one, by the target left behind",
            ["route", _PROVIDER, _MODEL], registry=r)
        self.overhead = Histogram(
            "tollway_gateway_overhead_seconds", "Call time not spent in provider requests (calls that reached one)",
            ["rpc"], buckets=OVERHEAD_BUCKETS, registry=r)
        self.breaker_state = Gauge(
            "tollway_breaker_state", "Circuit breakers (one per provider key) of each target in each state",
            [_PROVIDER, _MODEL, "state"], multiprocess_mode="livesum", registry=r)
        self.key_cooldowns = Gauge(
            "tollway_key_cooldowns", "Provider keys cooling down after HTTP 429, per target",
            [_PROVIDER, _MODEL], multiprocess_mode="livesum", registry=r)
        self.journal_backlog = Gauge(
            "tollway_ledger_journal_backlog_records", "Usage records journaled and not yet in the database",
            multiprocess_mode="livesum", registry=r)
        self.oldest_unsent = Gauge(
            "tollway_ledger_oldest_unsent_record_age_seconds",
            "Age of the oldest usage record not yet in the database (0 when none)",
            multiprocess_mode="livemax", registry=r)
        self.media_fetches = Counter(
            "tollway_media_fetches_total", "Caller media URLs fetched for providers that need bytes", registry=r)
        self.media_fetch_bytes = Counter(
            "tollway_media_fetch_bytes_total", "Bytes read fetching caller media", registry=r)
        self.media_fetch_refusals = Counter(
            "tollway_media_fetch_refusals_total", "Media fetches refused, by reason", ["reason"], registry=r)
        self.limit_refusals = Counter(
            "tollway_limit_refusals_total",
            "Calls refused by a [[limits.rules]] rule or [[limits.budgets]] budget, by its name and what ran out "
            "(requests, tokens, streams, budget)", ["limit", "kind"], registry=r)
        self.limits_store_errors = Counter(
            "tollway_limits_store_errors_total",
            "Limits store operations that failed (unreachable, timed out); calls then follow limits.on_store_error",
            ["operation"], registry=r)

        self._series: dict[tuple[object, ...], _CallSeries] = {}
        self._attempt_children: dict[tuple[str, str, int], Counter] = {}
        self._fallback_children: dict[tuple[str, str, str], Counter] = {}
        self._overhead_children: dict[str, Histogram] = {}
        self._refusal_children = {reason: self.media_fetch_refusals.labels(reason) for reason in MEDIA_REFUSAL_REASONS}
        self._breakers = _GaugeTable(self.breaker_state)
        self._cooldowns = _GaugeTable(self.key_cooldowns)

    # -- the end of a call ----------------------------------------------------------------

    def call_finished(self, call: Call, status: str) -> None:
        """Everything one finished call counts; Call.log calls this once per call, on every path."""
        elapsed = time.perf_counter() - call.started
        routed = call.routed
        direct = False
        if routed is None:
            route = provider = model = ""
        else:
            route = routed.route.name
            # A route named "provider/model" is a direct call, whose model the caller chose: that
            # is what is bounded. Configured routes and their targets come from the config.
            direct = "/" in route
            if direct:
                route = self._routes.fold(route)
            target = routed.target
            # The resolved target: a configured provider and the model actually called.
            provider, model = (target.provider, target.model) if target is not None else ("", "")
            if direct:
                model = self._models.fold(model)
        caller = call.caller.name if call.caller is not None else ""
        if self._label_keys:
            labels = call.labels
            extra = tuple(bound.fold(labels.get(key, "")) for key, bound in zip(self._label_keys, self._label_values))
        else:
            extra = ()
        key = (call.rpc, caller, route, provider, model, status, extra)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(call.rpc, caller, route, provider, model, status, extra)
            self._series[key] = series
        series.requests.inc()
        series.duration.observe(elapsed)
        usage = call.usage
        if usage is not None:
            inputs, outputs = usage.input, usage.output
            counts = (inputs.total, outputs.total, inputs.cache_read,
                      inputs.cache_write_5m + inputs.cache_write_1h + inputs.cache_write_unknown_ttl, outputs.reasoning)
            tokens, usage_of = series.tokens, series.token_usage
            # Input and output are observed for every call with usage, the parts of them only when
            # present: most calls have none, and each observation costs a microsecond or two.
            usage_of[0].observe(counts[0])
            usage_of[1].observe(counts[1])
            for kind, count in enumerate(counts):
                if count:
                    tokens[kind].inc(count)
                    if kind > 1:
                        usage_of[kind].observe(count)
        cost = call.cost
        if cost is not None:
            if cost.unpriced:
                series.unpriced.inc()
            elif cost.total_nano_usd:
                series.cost.inc(cost.total_nano_usd)
        if call.ttft_ms is not None and status == "OK":
            series.ttft.observe(call.ttft_ms / 1000)
        if routed is not None and routed.reached_upstream:
            upstream_s = self._count_attempts(route, routed.attempts, direct)
            series.overhead.observe(max(0.0, elapsed - upstream_s))

    def _new_series(self, rpc: str, caller: str, route: str, provider: str, model: str, status: str,
                    extra: tuple[str, ...]) -> _CallSeries:
        request = (caller, route, provider, model)
        s = _CallSeries()
        s.requests = self.requests.labels(*request, rpc, status, *extra)
        s.duration = self.request_duration.labels(OPERATION, provider, model, rpc, "" if status == "OK" else status)
        s.tokens = tuple(self.tokens.labels(*request, kind, *extra) for kind in TOKEN_TYPES)
        s.token_usage = tuple(self.token_usage.labels(OPERATION, provider, model, kind) for kind in TOKEN_TYPES)
        s.cost = self.cost.labels(*request, *extra)
        s.unpriced = self.unpriced.labels(*request, *extra)
        s.ttft = self.time_to_first_token.labels(OPERATION, provider, model)
        overhead = self._overhead_children.get(rpc)
        if overhead is None:
            overhead = self._overhead_children[rpc] = self.overhead.labels(rpc)
        s.overhead = overhead
        return s

    def _count_attempts(self, route: str, attempts: Iterable[pb.Attempt], direct: bool) -> float:
        """Count attempts and fallbacks; returns the seconds spent in provider requests."""
        fold = self._models.fold if direct else _as_configured
        upstream_s = 0.0
        previous: tuple[str, str] | None = None
        for attempt in attempts:
            target = (attempt.provider, attempt.model)
            if previous is not None and target != previous:
                self._fallback(route, previous[0], fold(previous[1])).inc()
            previous = target
            # Targets skipped without a request (no key, breaker open, keys cooling) have no duration.
            if attempt.HasField("duration"):
                duration = attempt.duration
                upstream_s += duration.seconds + duration.nanos * 1e-9
                key = (attempt.provider, fold(attempt.model), attempt.code)
                child = self._attempt_children.get(key)
                if child is None:
                    child = self._attempt_children[key] = self.attempts.labels(
                        key[0], key[1], _CODE_NAMES.get(attempt.code, "UNKNOWN"))
                child.inc()
        return upstream_s

    def _fallback(self, route: str, provider: str, model: str) -> Counter:
        key = (route, provider, model)
        child = self._fallback_children.get(key)
        if child is None:
            child = self._fallback_children[key] = self.fallbacks.labels(*key)
        return child

    # -- media fetches --------------------------------------------------------------------

    def media_fetch_started(self) -> None:
        self.media_fetches.inc()

    def media_fetch_read(self, count: int) -> None:
        if count:
            self.media_fetch_bytes.inc(count)

    def media_fetch_refused(self, reason: str) -> None:
        self._refusal_children[reason].inc()

    # -- limits and budgets ---------------------------------------------------------------

    def limit_refused(self, limit: str, kind: str) -> None:
        # Names come from the config, so the label set is bounded by it.
        self.limit_refusals.labels(limit, kind).inc()

    def limits_store_failed(self, operation: str) -> None:
        self.limits_store_errors.labels(operation).inc()

    # -- gauges read every few seconds ---------------------------------------------------

    def sample_health(self, board: HealthBoard) -> None:
        """Breakers by state and keys cooling down, per target (provider, model)."""
        fold = self._models.fold
        states: Tally[tuple[str, ...]] = Tally()
        for (provider, model, _key), state in board.breaker_states():
            states[(provider, fold(model), state)] += 1
        cooling: Tally[tuple[str, ...]] = Tally()
        for provider, model, _key in board.cooling_keys():
            cooling[(provider, fold(model))] += 1
        self._breakers.show(states)
        self._cooldowns.show(cooling)

    def sample_ledger(self, ledger: Ledgerlike) -> None:
        records, oldest_age_s = ledger.backlog()
        self.journal_backlog.set(records)
        self.oldest_unsent.set(oldest_age_s)

    async def sample_forever(self, router: Routerlike, ledger: Ledgerlike,
                             interval_s: float = SAMPLE_INTERVAL_S) -> None:
        """Read the gauges now and every interval_s; the router's board is read each time, since a
        reload replaces it."""
        while True:
            try:
                self.sample_health(router.board)
                self.sample_ledger(ledger)
            except Exception as exc:
                # Stale gauges beat no gauges: the next reading may well succeed.
                log.error("metrics: reading the gauges failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval_s)

