"""The limits of one call: which rules and budgets apply to it, the check before any upstream
attempt, and the settlement with what the call really used and cost.

The store (in process, or Redis shared by every worker and replica) does each check-and-record
atomically; this module decides what to ask it, turns its answer into the caller's status and
trailers, and keeps budgets whole: a budget figure the store lacks (a new period, a restart, a
Redis flush) is rebuilt from the ledger before the call is checked against it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import grpc
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # no py.typed

from tollway.service.billing.money import format_usd
from tollway.service.errors import GatewayError
from tollway.service.quota.config import Budget, QuotaConfig, RateRule, Scope
from tollway.service.quota.memory_store import InProcessStore
from tollway.service.quota.matching import (
    applies_to_caller,
    budget_key,
    models_match,
    period_bounds,
    subject,
    window_key,
)
from tollway.service.quota.spend import SpendUnavailable
from tollway.service.quota.store import (
    STREAM_LEASE_S,
    Admission,
    BudgetCharge,
    BudgetDemand,
    QuotaStore,
    QuotaStoreError,
    Refusal,
    WindowDemand,
    WindowSettlement,
)
from tollway.service.usage.estimate import estimate_tokens, request_text_bytes
from tollway.v1 import completion_pb2 as pb

if TYPE_CHECKING:
    from tollway.service.quota.spend import LedgerSpend
    from tollway.service.routing.routes import Route
    from tollway.service.telemetry.metrics import GatewayMetrics

log = logging.getLogger("tollway.limits")

REMAINING_REQUESTS_KEY = "tollway-ratelimit-remaining-requests"
REMAINING_TOKENS_KEY = "tollway-ratelimit-remaining-tokens"
REMAINING_BUDGET_KEY = "tollway-budget-remaining-usd"
# A stream slot usually frees long before its lease ends: ask for a retry soon.
STREAM_RETRY_S = 1.0
# A store that keeps failing gets one log line per this many seconds, not one per call.
STORE_ERROR_LOG_EVERY_S = 10.0
# Budget figures outlive their period by a day, so a late settlement still finds its figure.
BUDGET_KEEP_S = 86400.0
# Bound on each per-input memo of the call path (models and label values are callers' input).
_MEMO_ENTRIES = 4096


@dataclass(slots=True)
class Ticket:
    """What one call asked of the limits, and what it was told."""

    call_id: str
    rules: tuple[RateRule, ...]
    rule_subjects: tuple[str, ...]
    windows: tuple[WindowDemand, ...]
    budgets: tuple[Budget, ...]
    budget_subjects: tuple[str, ...]
    budget_demands: tuple[BudgetDemand, ...]
    # None until admitted, and for a call let through while the store was unreachable.
    admission: Admission | None = None
    refusal: Refusal | None = None
    settled: bool = False
    # What the settlement charged: the trailers report what remains after it.
    actual_tokens: int = 0
    cost_nano_usd: int = 0


@dataclass(slots=True)
class Period:
    start: datetime
    end: datetime
    end_ts: float


@dataclass
class QuotaEnforcer:
    config: QuotaConfig
    store: QuotaStore
    spend: LedgerSpend
    metrics: GatewayMetrics | None = None
    _leases: dict[tuple[str, str], None] = field(default_factory=dict)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)
    _renewer: asyncio.Task[None] | None = None
    _periods: dict[str, Period] = field(default_factory=dict)
    _rebuilding: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    _last_store_log: float = 0.0
    # Remembered per call's inputs; cleared when full or when the config changes.
    _model_matches: dict[tuple[tuple[str, ...], str, Sequence[str]], bool] = field(default_factory=dict)
    _window_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    _demands: dict[tuple[str, str], BudgetDemand] = field(default_factory=dict)

    # -- configuration ----------------------------------------------------------------------

    def reconfigure(self, config: QuotaConfig) -> None:
        """A reload: rules and budgets are read from the new config; windows are keyed by rule
        name, so a rule that keeps its name keeps its window. The store itself is kept."""
        if config.redis_url != self.config.redis_url:
            log.warning("limits.redis_url changed: it takes effect at the next restart")
        if config.store_timeout_ms != self.config.store_timeout_ms or config.key_prefix != self.config.key_prefix:
            log.warning("limits.store_timeout_ms and limits.key_prefix take effect at the next restart")
        self.config = config
        self._model_matches.clear()
        self._demands.clear()

    # -- the call path ----------------------------------------------------------------------

    def plan(self, call_id: str, caller: str, labels: Mapping[str, str], request: pb.CompleteRequest |
             pb.StreamCompleteRequest, route: Route, *, stream: bool) -> Ticket | None:
        """The rules and budgets that apply to this call; None when none does (the common case
        costs a loop over the configured rules and nothing else)."""
        config = self.config
        if not config.rules and not config.budgets:
            return None
        model = request.model
        rules: list[RateRule] = []
        rule_subjects: list[str] = []
        windows: list[WindowDemand] = []
        estimate = -1
        for rule in config.rules:
            streams = rule.concurrent_streams if stream else None
            if not (rule.requests_per_minute or rule.tokens_per_minute or streams) \
                    or not self._applies(rule.scope, caller, labels, model, route):
                continue
            who = subject(rule.scope, caller, labels)
            tokens = 0
            if rule.tokens_per_minute:
                if estimate < 0:
                    estimate = _token_estimate(request)
                tokens = estimate
            rules.append(rule)
            rule_subjects.append(who)
            windows.append(WindowDemand(self._window_key(rule.name, who), rule.requests_per_minute,
                                        rule.tokens_per_minute, tokens, streams))
        budgets: list[Budget] = []
        subjects: list[str] = []
        demands: list[BudgetDemand] = []
        for budget in config.budgets:
            if self._applies(budget.scope, caller, labels, model, route):
                who = subject(budget.scope, caller, labels)
                budgets.append(budget)
                subjects.append(who)
                demands.append(self.budget_demand(budget, who))
        if not rules and not budgets:
            return None
        return Ticket(call_id, tuple(rules), tuple(rule_subjects), tuple(windows), tuple(budgets), tuple(subjects),
                      tuple(demands))

    def _applies(self, scope: Scope, caller: str, labels: Mapping[str, str], model: str, route: Route) -> bool:
        """applies(), with the pattern matching of a model remembered (the model is the caller's
        input, so the memory is bounded). The route's target names are only built when a
        pattern needs them."""
        if not applies_to_caller(scope, caller, labels):
            return False
        patterns = scope.models
        if patterns is None:
            return True
        targets = route.target_names
        key = (patterns, model, targets)
        matched = self._model_matches.get(key)
        if matched is None:
            if len(self._model_matches) >= _MEMO_ENTRIES:
                self._model_matches.clear()
            matched = self._model_matches[key] = models_match(patterns, model, targets)
        return matched

    def _window_key(self, rule: str, who: str) -> str:
        key = self._window_keys.get((rule, who))
        if key is None:
            if len(self._window_keys) >= _MEMO_ENTRIES:
                self._window_keys.clear()
            key = self._window_keys[(rule, who)] = window_key(rule, who)
        return key

    async def admit(self, ticket: Ticket) -> None:
        """Check and record the call in one store step, or raise the refusal the caller gets.
        A store that cannot answer follows limits.on_store_error."""
        try:
            admission = await self._store_admit(ticket)
            if admission.missing_budgets:
                await self.rebuild([(ticket.budgets[i], ticket.budget_subjects[i]) for i in admission.missing_budgets])
                admission = await self._store_admit(ticket)
                if admission.missing_budgets:
                    raise QuotaStoreError("the store dropped a budget figure just rebuilt from the ledger")
        except (QuotaStoreError, SpendUnavailable) as exc:
            self._store_failed("admit", exc)
            if self.config.on_store_error == "deny":
                raise GatewayError(grpc.StatusCode.UNAVAILABLE,
                                   "rate limits and budgets cannot be checked right now (limits store unavailable; "
                                   'limits.on_store_error = "deny"): retry with backoff') from None
            return
        if admission.refusal is not None:
            ticket.refusal = admission.refusal
            raise self._refused(ticket, admission.refusal, admission.now)
        ticket.admission = admission
        for window in ticket.windows:
            if window.concurrent_streams is not None:
                self._leases[(window.key, ticket.call_id)] = None
                self._renew_leases_soon()

    async def _store_admit(self, ticket: Ticket) -> Admission:
        """The store's admit. A call cancelled while the store works may have been recorded
        there: it gives back what it may hold (its token reservation and stream slot), sent
        after the admit on the wire, so the store sees the two in that order."""
        if isinstance(self.store, InProcessStore):
            # Never suspends: there is no moment for a cancel to land in.
            return self.store.admit_now(ticket.call_id, ticket.windows, ticket.budget_demands)
        try:
            return await self.store.admit(ticket.call_id, ticket.windows, ticket.budget_demands)
        except asyncio.CancelledError:
            self._send_settlement(ticket, 0, None)
            raise

    def settle(self, ticket: Ticket | None, usage: pb.Usage | None, cost: pb.Cost | None) -> None:
        """The call is over (answered, failed or cancelled): its token reservation becomes its
        real usage, its stream slot frees, its budgets are charged its exact cost. Sent to the
        store in the background: the caller's answer does not wait for it."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        if ticket.admission is None:
            return  # never recorded in the store: nothing to settle
        actual = usage.input.total + usage.output.total if usage is not None else 0
        ticket.actual_tokens = actual
        self._send_settlement(ticket, actual, cost)

    def _send_settlement(self, ticket: Ticket, actual: int, cost: pb.Cost | None) -> None:
        windows = []
        for w in ticket.windows:
            stream = w.concurrent_streams is not None
            if stream:
                self._leases.pop((w.key, ticket.call_id), None)
            if w.tokens_per_minute or stream:
                windows.append(WindowSettlement(w.key, w.tokens, actual if w.tokens_per_minute else 0, stream))
        charges = []
        if cost is not None:
            ticket.cost_nano_usd = 0 if cost.unpriced else cost.total_nano_usd
            charges = [BudgetCharge(d.key, ticket.cost_nano_usd, cost.unpriced, d.expires_at)
                       for d in ticket.budget_demands]
        if not windows and not charges:
            return
        if isinstance(self.store, InProcessStore):
            self.store.settle_now(ticket.call_id, windows, charges)
            return
        task = asyncio.get_running_loop().create_task(self._settle(ticket.call_id, windows, charges))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def trailers(self, ticket: Ticket | None) -> tuple[tuple[str, str], ...]:
        """For the tightest matching rule and budget: requests and tokens left in the window
        after this call, and the budget's USD left after its cost (0 when spent)."""
        if ticket is None:
            return ()
        found: list[tuple[str, str]] = []
        admission = ticket.admission
        if admission is not None:
            requests = [r for r in admission.remaining_requests if r is not None]
            if requests:
                found.append((REMAINING_REQUESTS_KEY, str(max(0, min(requests)))))
            # Settled: the reservation became the call's real usage.
            adjust = [w.tokens - ticket.actual_tokens if ticket.settled else 0 for w in ticket.windows]
            tokens = [t + a for t, a in zip(admission.remaining_tokens, adjust) if t is not None]
            if tokens:
                found.append((REMAINING_TOKENS_KEY, str(max(0, min(tokens)))))
            if ticket.budget_demands:
                left = min(d.max_nano_usd - spent - ticket.cost_nano_usd
                           for d, spent in zip(ticket.budget_demands, admission.budget_spent))
                found.append((REMAINING_BUDGET_KEY, format_usd(max(0, left))))
        elif ticket.refusal is not None:
            refusal = ticket.refusal
            key = {"requests": REMAINING_REQUESTS_KEY, "tokens": REMAINING_TOKENS_KEY,
                   "budget": REMAINING_BUDGET_KEY}.get(refusal.kind)
            if key is not None:
                left = max(0, refusal.limit - refusal.used)
                found.append((key, format_usd(left) if refusal.kind == "budget" else str(left)))
        return tuple(found)

    # -- start-up and shutdown --------------------------------------------------------------

    async def rebuild_budgets(self) -> None:
        """Every budget's spend this period, from the ledger: a restart or a Redis flush never
        resets a budget. A ledger that does not answer leaves it to the first call that needs it."""
        for budget in self.config.budgets:
            try:
                await self._rebuild_budget(budget, None)
            except (QuotaStoreError, SpendUnavailable) as exc:
                self._store_failed("rebuild", exc)

    async def drain(self) -> None:
        """Until the settlements on their way have reached the store (or failed)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self.config.store_timeout_ms / 1000 * 4 + 1)

    async def close(self) -> None:
        """Send the settlements still on their way, then close the store."""
        if self._renewer is not None:
            self._renewer.cancel()
        await self.drain()
        await self.store.close()

    # -- internals ----------------------------------------------------------------------------

    def budget_demand(self, budget: Budget, subject_: str) -> BudgetDemand:
        """What a call asks of a budget this period (remembered until the period ends)."""
        period = self.period(budget.period)
        demand = self._demands.get((budget.name, subject_))
        if demand is None or demand.expires_at != period.end_ts + BUDGET_KEEP_S:
            if len(self._demands) >= _MEMO_ENTRIES:
                self._demands.clear()
            demand = self._demands[(budget.name, subject_)] = BudgetDemand(
                budget_key(budget.name, subject_, period.start), budget.max_nano_usd, period.end_ts + BUDGET_KEEP_S)
        return demand

    def period(self, kind: str) -> Period:
        """The current UTC day or month, computed once per period."""
        now = time.time()
        period = self._periods.get(kind)
        if period is None or now >= period.end_ts or now < period.start.timestamp():
            start, end = period_bounds(kind, datetime.fromtimestamp(now, timezone.utc))  # type: ignore[arg-type]
            period = self._periods[kind] = Period(start, end, end.timestamp())
        return period

    async def rebuild(self, wanted: Iterable[tuple[Budget, str]]) -> None:
        for budget, subject_ in wanted:
            await self._rebuild_budget(budget, subject_)

    async def _rebuild_budget(self, budget: Budget, subject_: str | None) -> None:
        """Seed the store with the ledger's figure for one budget (subject None: every subject the
        ledger knows). Concurrent calls that miss the same figure share one ledger query."""
        period = self.period(budget.period)
        flight = f"{budget.name}\x00{subject_}\x00{period.start.isoformat()}"
        running = self._rebuilding.get(flight)
        if running is not None:
            await asyncio.shield(running)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rebuilding[flight] = future
        try:
            spent = await self.spend.spend(budget, period.start, subject_)
            if subject_ is not None:
                spent.setdefault(subject_, (0, 0))
            elif budget.scope.per is None:
                # A shared budget nobody has spent from yet: its figure is 0, known from now on.
                spent.setdefault("", (0, 0))
            for who, (nano_usd, unpriced) in spent.items():
                await self.store.seed_budget(budget_key(budget.name, who, period.start), nano_usd, unpriced,
                                             period.end_ts + BUDGET_KEEP_S)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it, no one else need see it
            raise
        finally:
            del self._rebuilding[flight]

    async def _settle(self, call_id: str, windows: Sequence[WindowSettlement], charges: Sequence[BudgetCharge]) -> None:
        try:
            await self.store.settle(call_id, windows, charges)
        except QuotaStoreError as exc:
            # The ledger has the call: the next rebuild counts its cost; its token
            # reservation stands as it was until it leaves the window.
            self._store_failed("settle", exc)

    def _renew_leases_soon(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases(), name="limits-stream-leases")

    async def _renew_leases(self) -> None:
        """Open streams keep their slots while this process lives; a crashed replica's slots
        lapse STREAM_LEASE_S after its last renewal."""
        while self._leases:
            await asyncio.sleep(STREAM_LEASE_S / 4)
            leases = list(self._leases)
            if not leases:
                return
            try:
                await self.store.renew_streams(leases)
            except QuotaStoreError as exc:
                self._store_failed("renew", exc)

    def _store_failed(self, operation: str, exc: Exception) -> None:
        if self.metrics is not None:
            self.metrics.limits_store_failed(operation)
        now = time.monotonic()
        if now - self._last_store_log >= STORE_ERROR_LOG_EVERY_S:
            self._last_store_log = now
            log.error("limits store: %s failed: %s; calls follow limits.on_store_error = %r",
                      operation, exc, self.config.on_store_error)

    def _refused(self, ticket: Ticket, refusal: Refusal, now: float) -> GatewayError:
        if refusal.kind == "budget":
            budget = ticket.budgets[refusal.index]
            who = ticket.budget_subjects[refusal.index]
            period = self.period(budget.period)
            retry: float | None = max(0.0, period.end_ts - now)
            limit_name = budget.name
            message = (f'budget "{budget.name}"{_for(budget.scope.per, who)} is spent: ${format_usd(refusal.used)} of '
                       f'${format_usd(refusal.limit)} this {budget.period} (UTC); it renews at '
                       f'{period.end.strftime("%Y-%m-%dT%H:%M:%SZ")}')
            violation_subject = f"budget:{budget.name}" + (f"/{who}" if who else "")
        else:
            rule = ticket.rules[refusal.index]
            who = ticket.rule_subjects[refusal.index]
            limit_name = rule.name
            retry = refusal.retry_after_s
            prefix = f'rate limit "{rule.name}"{_for(rule.scope.per, who)}'
            if refusal.kind == "requests":
                message = f"{prefix} reached: {refusal.used} of {refusal.limit} requests in the last minute"
            elif refusal.kind == "tokens" and retry is None:
                message = (f"{prefix}: this call needs an estimated {ticket.windows[refusal.index].tokens} tokens, "
                           f"more than the {refusal.limit} tokens per minute the rule allows: "
                           "lower max_tokens or send less text")
            elif refusal.kind == "tokens":
                message = (f"{prefix} reached: {refusal.used} of {refusal.limit} tokens in the last minute, and this "
                           f"call needs an estimated {ticket.windows[refusal.index].tokens}")
            else:
                retry = STREAM_RETRY_S if retry is None else min(retry, STREAM_RETRY_S)
                message = f"{prefix} reached: {refusal.used} of {refusal.limit} streams open; close one"
            violation_subject = f"rule:{rule.name}" + (f"/{who}" if who else "")
        if retry is not None and refusal.kind != "streams":
            message += f"; retry in {_duration(retry)}"
        elif retry is not None:
            message += " or retry later"
        if self.metrics is not None:
            self.metrics.limit_refused(limit_name, refusal.kind)
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=violation_subject, description=message, quota_id=limit_name,
            quota_metric=_METRICS[refusal.kind], quota_value=refusal.limit)
        return GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after=retry,
                            details=[error_details_pb2.QuotaFailure(violations=[violation])])


# What a QuotaFailure violation says ran out, by refusal kind.
_METRICS = {"requests": "requests_per_minute", "tokens": "tokens_per_minute", "streams": "concurrent_streams",
            "budget": "max_usd"}


def _for(per: str | None, who: str) -> str:
    if per is None or not who:
        return ""
    if per == "caller":
        return f' (caller "{who}")'
    return f' ({per.removeprefix("label:")} "{who}")'


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _token_estimate(request: pb.CompleteRequest | pb.StreamCompleteRequest) -> int:
    """What a call may use before it runs: its text (about four bytes a token) and its
    max_tokens. Media are not counted (their size says little about their tokens), nor is
    output a call did not bound: settlement puts in the real figures."""
    estimate = estimate_tokens(request_text_bytes(request))
    if request.HasField("max_tokens") and request.max_tokens > 0:
        estimate += request.max_tokens
    return estimate


__all__ = ["QuotaEnforcer", "Ticket", "REMAINING_BUDGET_KEY", "REMAINING_REQUESTS_KEY", "REMAINING_TOKENS_KEY"]
