"""Circuit breakers and key cool-downs: what the router remembers about upstream health.

State lives across requests and across config reloads (keyed by names, not objects), so a
reload does not forget that a target is failing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class BreakerPolicy:
    """The `[routing.breaker]` config table."""

    # Opens after this many failures in a row...
    consecutive_failures: int = 5
    # ...or when the failure rate over the window exceeds this, once min_calls were seen.
    error_rate: float = 0.5
    window_s: float = 60.0
    min_calls: int = 20
    # How long an open breaker refuses calls before letting one probe through.
    cooldown_s: float = 30.0


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """closed -> open (on failures) -> half-open after cooldown (one probe) -> closed or open."""

    __slots__ = ("policy", "state", "_clock", "_consecutive", "_buckets", "_calls", "_failures", "_opened_at",
                 "_probe_in_flight")

    # The error-rate window is kept as this many time buckets with running totals: memory
    # and work per call stay constant whatever the traffic.
    BUCKETS = 60

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.state = CLOSED
        self._clock = clock
        self._consecutive = 0
        # [bucket index, calls, failures], oldest first.
        self._buckets: deque[list[int]] = deque()
        self._calls = 0
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    def allow(self) -> bool:
        """May a call go out now? A half-open breaker admits exactly one probe at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self._opened_at < self.policy.cooldown_s:
                return False
            self.state = HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        if self.state == HALF_OPEN:
            self._reset()
            return
        self._consecutive = 0
        self._push(ok=True)

    def record_failure(self) -> None:
        if self.state == HALF_OPEN:
            self._open()
            return
        self._consecutive += 1
        self._push(ok=False)
        if self._consecutive >= self.policy.consecutive_failures or self._rate_exceeded():
            self._open()

    def is_idle(self) -> bool:
        """Closed, no failure in a row and none in the window: it remembers nothing a fresh one would not."""
        return self.state == CLOSED and self._consecutive == 0 and self._failures == 0 and not self._probe_in_flight

    def current_state(self) -> str:
        """The state a call would meet now: an open breaker past its cool-down admits a probe,
        so it reads as half-open (allow() makes the move when a call comes)."""
        if self.state == OPEN and self._clock() - self._opened_at >= self.policy.cooldown_s:
            return HALF_OPEN
        return self.state

    def release_probe(self) -> None:
        """A probe ended without a verdict (the caller cancelled): let another one through."""
        self._probe_in_flight = False

    def _push(self, ok: bool) -> None:
        width = max(self.policy.window_s / self.BUCKETS, 1e-6)
        index = int(self._clock() / width)
        buckets = self._buckets
        while buckets and buckets[0][0] <= index - self.BUCKETS:
            _, calls, failures = buckets.popleft()
            self._calls -= calls
            self._failures -= failures
        if not buckets or buckets[-1][0] != index:
            buckets.append([index, 0, 0])
        buckets[-1][1] += 1
        self._calls += 1
        if not ok:
            buckets[-1][2] += 1
            self._failures += 1

    def _rate_exceeded(self) -> bool:
        if self._calls < self.policy.min_calls:
            return False
        return self._failures > self.policy.error_rate * self._calls

    def _open(self) -> None:
        self.state = OPEN
        self._opened_at = self._clock()
        self._probe_in_flight = False

    def _reset(self) -> None:
        self.state = CLOSED
        self._consecutive = 0
        self._buckets.clear()
        self._calls = self._failures = 0
        self._probe_in_flight = False


class HealthBoard:
    """Breakers and 429 cool-down deadlines, both per (provider, model, key).

    Providers rate-limit per model: a 429 on one model says nothing about the key's other
    models, so a cool-down never spreads beyond the model that got it."""

    # Callers name models, so they choose how many (provider, model, key) entries there are:
    # past this many, entries that remember nothing worth keeping are dropped.
    PRUNE_AT = 10_000

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._breakers: dict[tuple[str, str, str], CircuitBreaker] = {}
        self._cool_until: dict[tuple[str, str, str], float] = {}
        self._prune_at = self.PRUNE_AT

    def breaker(self, provider: str, model: str, key_id: str) -> CircuitBreaker:
        key = (provider, model, key_id)
        breaker = self._breakers.get(key)
        if breaker is None:
            if len(self._breakers) >= self._prune_at:
                self._prune()
            breaker = self._breakers[key] = CircuitBreaker(self.policy, self._clock)
        return breaker

    def _prune(self) -> None:
        """Forget closed breakers that saw no failure in their window and expired cool-downs: a
        fresh breaker or no cool-down behaves the same. What remains (failing targets) sets the
        next threshold, so the work stays proportional to the entries added."""
        self._breakers = {k: b for k, b in self._breakers.items() if not b.is_idle()}
        now = self._clock()
        self._cool_until = {k: until for k, until in self._cool_until.items() if until > now}
        self._prune_at = max(self.PRUNE_AT, 2 * len(self._breakers))

    def cool_down(self, provider: str, model: str, key_id: str, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._cool_until.get((provider, model, key_id), 0.0):
            self._cool_until[(provider, model, key_id)] = until

    def is_cooling(self, provider: str, model: str, key_id: str) -> bool:
        return self.cooling_for(provider, model, key_id) > 0

    def cooling_for(self, provider: str, model: str, key_id: str) -> float:
        """Seconds until the key may serve the model again (0 when it may now)."""
        until = self._cool_until.get((provider, model, key_id))
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._cool_until[(provider, model, key_id)]  # expired: keep the table small
            return 0.0
        return left

    def breaker_states(self) -> Iterator[tuple[tuple[str, str, str], str]]:
        """((provider, model, key id), state) of every breaker held, for the metrics."""
        for key, breaker in list(self._breakers.items()):
            yield key, breaker.current_state()

    def cooling_keys(self) -> Iterator[tuple[str, str, str]]:
        """(provider, model, key id) of every key cooling down now, for the metrics."""
        now = self._clock()
        for key, until in list(self._cool_until.items()):
            if until > now:
                yield key

    def with_policy(self, policy: BreakerPolicy) -> "HealthBoard":
        """The same remembered state under a reloaded policy."""
        if policy == self.policy:
            return self
        board = HealthBoard(policy, self._clock)
        board._cool_until = self._cool_until
        board._prune_at = self._prune_at
        for key, old in self._breakers.items():
            old.policy = policy
            board._breakers[key] = old
        return board
