"""Circuit breakers, key cool-downs and backoff, on a fake clock: no sleeping, no network."""

from __future__ import annotations

import random

import pytest
from tollway.service.routing.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerPolicy,
    CircuitBreaker,
    HealthBoard,
)
from tollway.service.routing.routes import RoutingPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(clock: FakeClock, **policy) -> CircuitBreaker:
    return CircuitBreaker(BreakerPolicy(**policy), clock)


def outcomes(b: CircuitBreaker, pattern: str) -> None:
    """Record outcomes: "x" a failure, "." a success."""
    for mark in pattern:
        b.record_failure() if mark == "x" else b.record_success()


# -- consecutive failures ------------------------------------------------------------------


def test_opens_after_the_configured_run_of_consecutive_failures(clock):
    b = breaker(clock, consecutive_failures=3, min_calls=1000)

    outcomes(b, "xx")
    assert (b.state, b.allow()) == (CLOSED, True)
    b.record_failure()

    assert b.state == OPEN
    assert not b.allow()


def test_a_success_resets_the_run(clock):
    b = breaker(clock, consecutive_failures=3, min_calls=1000)

    outcomes(b, "xx.xx.xx")

    assert b.state == CLOSED
    b.record_failure()
    assert b.state == OPEN


# -- error rate over a window --------------------------------------------------------------


def test_opens_when_the_error_rate_over_the_window_exceeds_the_limit(clock):
    b = breaker(clock, consecutive_failures=100, error_rate=0.5, window_s=60, min_calls=10)

    # Ten calls, half failed: at the limit, not over it.
    for _ in range(5):
        outcomes(b, "x.")
        clock.advance(1)
    assert b.state == CLOSED

    b.record_failure()  # 6 of 11 failed
    assert b.state == OPEN


def test_the_error_rate_waits_for_min_calls(clock):
    b = breaker(clock, consecutive_failures=100, error_rate=0.5, window_s=60, min_calls=10)

    outcomes(b, "x.xxx.xx.")  # 6 of 9 failed, but fewer than min_calls were seen

    assert b.state == CLOSED
    b.record_failure()  # 7 of 10
    assert b.state == OPEN


def test_outcomes_older_than_the_window_are_forgotten(clock):
    b = breaker(clock, consecutive_failures=100, error_rate=0.5, window_s=10, min_calls=4)
    outcomes(b, "xx..")  # 2 of 4: at the limit
    clock.advance(11)

    b.record_failure()  # with the old calls it would be 3 of 5; alone in the window it is 1 of 1

    assert b.state == CLOSED
    outcomes(b, ".x")
    assert b.state == CLOSED  # 2 of 3 in the window: fewer than min_calls
    b.record_failure()  # 3 of 4 in the window
    assert b.state == OPEN


# -- open, half-open, closed ---------------------------------------------------------------


def test_open_refuses_until_the_cooldown_then_admits_a_single_probe(clock):
    b = breaker(clock, consecutive_failures=1, cooldown_s=30)
    b.record_failure()

    clock.advance(29.9)
    assert not b.allow()
    clock.advance(0.1)

    assert b.allow()  # the probe
    assert b.state == HALF_OPEN
    assert not b.allow()  # only one at a time
    assert not b.allow()


def test_a_successful_probe_closes_the_breaker(clock):
    b = breaker(clock, consecutive_failures=2, cooldown_s=30)
    outcomes(b, "xx")
    clock.advance(30)
    assert b.allow()

    b.record_success()

    assert b.state == CLOSED
    assert all(b.allow() for _ in range(5))
    b.record_failure()  # the run starts over after closing
    assert b.state == CLOSED


def test_a_failed_probe_opens_the_breaker_for_another_cooldown(clock):
    b = breaker(clock, consecutive_failures=2, cooldown_s=30)
    outcomes(b, "xx")
    clock.advance(30)
    assert b.allow()

    b.record_failure()

    assert b.state == OPEN
    clock.advance(29)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()


def test_a_probe_released_without_a_verdict_lets_the_next_call_probe(clock):
    b = breaker(clock, consecutive_failures=1, cooldown_s=5)
    b.record_failure()
    clock.advance(5)
    assert b.allow()
    assert not b.allow()

    b.release_probe()  # the caller cancelled the probe

    assert b.state == HALF_OPEN
    assert b.allow()
    assert not b.allow()


def test_the_error_rate_history_starts_over_after_closing(clock):
    b = breaker(clock, consecutive_failures=100, error_rate=0.5, window_s=60, min_calls=4)
    outcomes(b, "x.xx")
    assert b.state == OPEN
    clock.advance(30)
    assert b.allow()
    b.record_success()

    outcomes(b, "x.x")  # 2 of 3 since closing: below min_calls, the old failures do not count

    assert b.state == CLOSED


# -- the health board ----------------------------------------------------------------------


def test_breakers_are_kept_per_provider_model_and_key(clock):
    board = HealthBoard(BreakerPolicy(consecutive_failures=1), clock)

    board.breaker("a", "m", "KEY_1").record_failure()

    assert board.breaker("a", "m", "KEY_1").state == OPEN
    assert board.breaker("a", "m", "KEY_1") is board.breaker("a", "m", "KEY_1")
    for other in (("a", "m", "KEY_2"), ("a", "other-model", "KEY_1"), ("b", "m", "KEY_1")):
        assert board.breaker(*other).state == CLOSED


def test_a_key_cools_down_for_the_given_time_and_a_shorter_one_does_not_shorten_it(clock):
    board = HealthBoard(BreakerPolicy(), clock)

    board.cool_down("a", "m", "KEY_1", 10)
    board.cool_down("a", "m", "KEY_1", 2)

    assert board.is_cooling("a", "m", "KEY_1")
    assert board.cooling_for("a", "m", "KEY_1") == 10
    assert not board.is_cooling("a", "m", "KEY_2")
    assert not board.is_cooling("b", "m", "KEY_1")
    clock.advance(9.9)
    assert board.is_cooling("a", "m", "KEY_1")
    clock.advance(0.1)
    assert not board.is_cooling("a", "m", "KEY_1")
    assert board.cooling_for("a", "m", "KEY_1") == 0


def test_a_cool_down_holds_for_the_model_that_got_the_429_only(clock):
    """Providers rate-limit per model: the key still serves the provider's other models."""
    board = HealthBoard(BreakerPolicy(), clock)

    board.cool_down("a", "m", "KEY_1", 7)

    assert board.is_cooling("a", "m", "KEY_1")
    assert not board.is_cooling("a", "other-model", "KEY_1")


def test_a_reloaded_policy_keeps_breaker_state_and_cool_downs(clock):
    board = HealthBoard(BreakerPolicy(consecutive_failures=1, cooldown_s=30), clock)
    board.breaker("a", "m", "K").record_failure()
    board.breaker("a", "m", "K2").record_failure()
    board.cool_down("a", "m", "K", 60)

    reloaded = board.with_policy(BreakerPolicy(consecutive_failures=1, cooldown_s=5))

    assert board.with_policy(board.policy) is board
    assert reloaded.breaker("a", "m", "K").state == OPEN
    assert reloaded.is_cooling("a", "m", "K")
    clock.advance(5)  # the new, shorter cooldown applies to the remembered breaker
    assert reloaded.breaker("a", "m", "K").allow()


# -- backoff -------------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RoutingPolicy(backoff_initial_s=0.2, backoff_max_s=1.0)
    rng = random.Random(5)

    for retry, ceiling in [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.0), (10, 1.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(2000)]
        assert all(0 <= w <= ceiling for w in waits), retry
        # Full jitter: the whole range is used, not a band near the ceiling.
        assert min(waits) < ceiling * 0.05
        assert max(waits) > ceiling * 0.95
        assert 0.45 * ceiling < sum(waits) / len(waits) < 0.55 * ceiling


def test_many_model_names_do_not_grow_the_board_without_bound(clock, monkeypatch):
    """Callers choose model names: healthy breakers and expired cool-downs are forgotten once
    the board holds PRUNE_AT entries; failing ones and live cool-downs are kept."""
    monkeypatch.setattr(HealthBoard, "PRUNE_AT", 100)
    board = HealthBoard(BreakerPolicy(), clock)
    failing = board.breaker("openai", "failing-model", "k")
    failing.record_failure()
    board.cool_down("openai", "cooling-model", "k", 60)
    board.cool_down("openai", "cooled-model", "k", 1)
    clock.now += 2
    for i in range(1000):
        board.breaker("openai", f"model-{i}", "k").record_success()

    assert len(board._breakers) <= 100
    assert board.breaker("openai", "failing-model", "k") is failing
    assert board.is_cooling("openai", "cooling-model", "k")
    assert ("openai", "cooled-model", "k") not in board._cool_until
