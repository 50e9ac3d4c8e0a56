"""The quota store of one process: exact sliding windows and budget figures in memory.

Every method runs to completion without awaiting, so on one event loop each is atomic. Kept
lean because it runs on every call: slotted state, no work for limits a window does not have.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from tollway.service.quota.store import (
    STREAM_LEASE_S,
    WINDOW_S,
    Admission,
    BudgetCharge,
    BudgetDemand,
    BudgetUsage,
    Refusal,
    WindowDemand,
    WindowSettlement,
    WindowUsage,
)

# Budget figures are kept a day past their period, as in Redis, for late settlements.
FIGURE_GRACE_S = 86_400.0
# How often idle windows and expired figures are dropped, so per-caller state does not grow.
_SWEEP_EVERY_S = 60.0


class _Window:
    __slots__ = ("requests", "reservations", "reserved", "leases")

    def __init__(self) -> None:
        # Request timestamps, oldest first.
        self.requests: deque[float] = deque()
        # call_id -> (timestamp, tokens), oldest first; `reserved` is their sum.
        self.reservations: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.reserved = 0
        # call_id -> lease expiry.
        self.leases: dict[str, float] = {}

    def expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        requests = self.requests
        while requests and requests[0] <= horizon:
            requests.popleft()
        reservations = self.reservations
        while reservations:
            call_id, (stamp, tokens) = next(iter(reservations.items()))
            if stamp > horizon:
                break
            del reservations[call_id]
            self.reserved -= tokens
        if self.leases:
            self.expire_leases(now)

    def expire_leases(self, now: float) -> None:
        leases = self.leases
        for call_id in [c for c, expiry in leases.items() if expiry <= now]:
            del leases[call_id]

    def idle(self) -> bool:
        return not (self.requests or self.reservations or self.leases)


class _Figure:
    __slots__ = ("spent", "unpriced", "expires_at")

    def __init__(self, spent: int | None, unpriced: int, expires_at: float) -> None:
        # None: unpriced calls were counted, but no spend figure was seeded yet.
        self.spent = spent
        self.unpriced = unpriced
        self.expires_at = expires_at


class InProcessStore:
    __slots__ = ("_clock", "_windows", "_figures", "_swept_at")

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        self._windows: dict[str, _Window] = {}
        self._figures: dict[str, _Figure] = {}
        self._swept_at = self._clock()

    async def admit(self, call_id: str, windows: Sequence[WindowDemand],
                    budgets: Sequence[BudgetDemand]) -> Admission:
        return self.admit_now(call_id, windows, budgets)

    def admit_now(self, call_id: str, windows: Sequence[WindowDemand], budgets: Sequence[BudgetDemand]) -> Admission:
        """admit() without a coroutine: nothing here waits, and the gateway calls it on every call."""
        now = self._clock()
        if not windows and not budgets:
            return Admission(None, (), (), (), (), now)
        if now - self._swept_at >= _SWEEP_EVERY_S:
            self._sweep(now)
        figures = self._figures
        spent: list[int] = []
        missing: list[int] = []
        for index, budget in enumerate(budgets):
            figure = figures.get(budget.key)
            if figure is None or figure.spent is None or now >= figure.expires_at + FIGURE_GRACE_S:
                missing.append(index)
                spent.append(0)
            else:
                spent.append(figure.spent)
        states = self._windows_of(windows, now)
        refusal = None if missing else self._check(windows, states, budgets, spent, now)
        admitted = refusal is None and not missing
        if admitted:
            for demand, window in zip(windows, states):
                if demand.requests_per_minute is not None:
                    window.requests.append(now)
                if demand.tokens_per_minute is not None:
                    # A call admitted again replaces its reservation rather than leaking the old one.
                    earlier = window.reservations.pop(call_id, None)
                    if earlier is not None:
                        window.reserved -= earlier[1]
                    window.reservations[call_id] = (now, demand.tokens)
                    window.reserved += demand.tokens
                if demand.concurrent_streams is not None:
                    window.leases[call_id] = now + STREAM_LEASE_S
        # After recording these include this call; when nothing was recorded they are what is left
        # without it (tokens may be over the limit after a settlement above its estimate).
        return Admission(
            refusal,
            tuple(missing),
            tuple(None if d.requests_per_minute is None else max(0, d.requests_per_minute - len(w.requests))
                  for d, w in zip(windows, states)),
            tuple(None if d.tokens_per_minute is None else max(0, d.tokens_per_minute - w.reserved)
                  for d, w in zip(windows, states)),
            tuple(spent),
            now,
        )

    def _windows_of(self, demands: Sequence[WindowDemand], now: float) -> list[_Window]:
        windows = self._windows
        states = []
        for demand in demands:
            window = windows.get(demand.key)
            if window is None:
                window = windows[demand.key] = _Window()
            else:
                window.expire(now)
            states.append(window)
        return states

    @staticmethod
    def _check(demands: Sequence[WindowDemand], states: Sequence[_Window], budgets: Sequence[BudgetDemand],
               spent: Sequence[int], now: float) -> Refusal | None:
        for index, (demand, window) in enumerate(zip(demands, states)):
            rpm = demand.requests_per_minute
            if rpm is not None and len(window.requests) >= rpm:
                return Refusal("requests", index, window.requests[0] + WINDOW_S - now, len(window.requests), rpm)
            tpm = demand.tokens_per_minute
            if tpm is not None and window.reserved + demand.tokens > tpm:
                return Refusal("tokens", index, _tokens_free_in(window, demand.tokens, tpm, now), window.reserved, tpm)
            streams = demand.concurrent_streams
            if streams is not None and len(window.leases) >= streams:
                return Refusal("streams", index, min(window.leases.values()) - now, len(window.leases), streams)
        for index, budget in enumerate(budgets):
            if spent[index] >= budget.max_nano_usd:
                return Refusal("budget", index, None, spent[index], budget.max_nano_usd)
        return None

    async def settle(self, call_id: str, windows: Sequence[WindowSettlement],
                     charges: Sequence[BudgetCharge]) -> None:
        self.settle_now(call_id, windows, charges)

    def settle_now(self, call_id: str, windows: Sequence[WindowSettlement], charges: Sequence[BudgetCharge]) -> None:
        """settle() without a coroutine or a task, for the same reason as admit_now."""
        now = self._clock()
        horizon = now - WINDOW_S
        for settlement in windows:
            window = self._windows.get(settlement.key)
            if window is None:
                continue
            reservation = window.reservations.get(call_id)
            # Past the window the reservation no longer counts: leave it for expiry.
            if reservation is not None and reservation[0] > horizon:
                window.reserved += settlement.actual_tokens - reservation[1]
                window.reservations[call_id] = (reservation[0], settlement.actual_tokens)
            if settlement.release_stream:
                window.leases.pop(call_id, None)
        figures = self._figures
        for charge in charges:
            figure = figures.get(charge.key)
            if figure is None:
                # No spend figure: the ledger seed will hold this call's cost, but an unpriced
                # call is still counted so it is not lost before the seed.
                if charge.unpriced:
                    figures[charge.key] = _Figure(None, 1, charge.expires_at)
                continue
            if figure.spent is not None:
                figure.spent += charge.nano_usd
            if charge.unpriced:
                figure.unpriced += 1
            if charge.expires_at > figure.expires_at:
                figure.expires_at = charge.expires_at

    async def seed_budget(self, key: str, spent_nano_usd: int, unpriced_calls: int, expires_at: float) -> None:
        figure = self._figures.get(key)
        if figure is None:
            self._figures[key] = _Figure(spent_nano_usd, unpriced_calls, expires_at)
            return
        if figure.spent is None or figure.spent < spent_nano_usd:
            figure.spent = spent_nano_usd
        figure.unpriced = max(figure.unpriced, unpriced_calls)
        figure.expires_at = max(figure.expires_at, expires_at)

    async def renew_streams(self, leases: Sequence[tuple[str, str]]) -> None:
        now = self._clock()
        for key, call_id in leases:
            window = self._windows.get(key)
            if window is None:
                continue
            expiry = window.leases.get(call_id)
            # An expired lease stays expired: its slot may be taken already.
            if expiry is not None and expiry > now:
                window.leases[call_id] = now + STREAM_LEASE_S

    async def usage(self, windows: Sequence[str],
                    budgets: Sequence[str]) -> tuple[list[WindowUsage], list[BudgetUsage]]:
        now = self._clock()
        window_usage = []
        for key in windows:
            window = self._windows.get(key)
            if window is None:
                window_usage.append(WindowUsage(0, 0, 0, None))
                continue
            window.expire(now)
            free_in = window.requests[0] + WINDOW_S - now if window.requests else None
            window_usage.append(WindowUsage(len(window.requests), window.reserved, len(window.leases), free_in))
        budget_usage = []
        for key in budgets:
            figure = self._figures.get(key)
            if figure is None or now >= figure.expires_at + FIGURE_GRACE_S:
                budget_usage.append(BudgetUsage(None, 0))
            else:
                budget_usage.append(BudgetUsage(figure.spent, figure.unpriced))
        return window_usage, budget_usage

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._windows.clear()
        self._figures.clear()

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for key, window in list(self._windows.items()):
            window.expire(now)
            if window.idle():
                del self._windows[key]
        for key, figure in list(self._figures.items()):
            if now >= figure.expires_at + FIGURE_GRACE_S:
                del self._figures[key]


def _tokens_free_in(window: _Window, demand: int, limit: int, now: float) -> float | None:
    """Seconds until enough of the oldest reservations leave the window for demand to fit;
    None when demand alone is over the limit."""
    if demand > limit:
        return None
    left = window.reserved
    for stamp, tokens in window.reservations.values():
        left -= tokens
        if left + demand <= limit:
            return stamp + WINDOW_S - now
    # Reservations are all gone yet it does not fit: cannot happen while demand <= limit.
    return 0.0
