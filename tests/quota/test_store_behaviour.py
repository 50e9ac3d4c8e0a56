"""One behaviour for both quota stores: the same calls, the same answers, in process and in Redis."""

from __future__ import annotations

from tollway.service.quota import (
    STREAM_LEASE_S,
    WINDOW_S,
    Admission,
    BudgetCharge,
    BudgetDemand,
    BudgetUsage,
    InProcessStore,
    QuotaStore,
    Refusal,
    WindowDemand,
    WindowSettlement,
    WindowUsage,
)

from tests.quota.conftest import ManualClock

DAY = 86_400.0


def window(key: str = "w:1:r:", rpm: int | None = None, tpm: int | None = None, tokens: int = 0,
           streams: int | None = None) -> WindowDemand:
    return WindowDemand(key, rpm, tpm, tokens, streams)


def budget(clock: ManualClock, max_nano_usd: int, key: str = "b:20260101:1:b:") -> BudgetDemand:
    return BudgetDemand(key, max_nano_usd, clock.now + DAY)


def settled(key: str = "w:1:r:", reserved: int = 0, actual: int = 0, release: bool = False) -> WindowSettlement:
    return WindowSettlement(key, reserved, actual, release)


def charge(clock: ManualClock, nano_usd: int, unpriced: bool = False, key: str = "b:20260101:1:b:") -> BudgetCharge:
    return BudgetCharge(key, nano_usd, unpriced, clock.now + DAY)


async def window_usage(store: QuotaStore, key: str = "w:1:r:") -> WindowUsage:
    windows, _ = await store.usage([key], [])
    return windows[0]


async def budget_usage(store: QuotaStore, key: str = "b:20260101:1:b:") -> BudgetUsage:
    _, budgets = await store.usage([], [key])
    return budgets[0]


# Requests


async def test_the_requests_window_slides_exactly_to_the_entry(store: QuotaStore, clock: ManualClock):
    start = clock.now
    remaining = []
    for call in range(3):
        admission = await store.admit(f"c{call}", [window(rpm=3)], [])
        assert admission.refusal is None
        remaining.append(admission.remaining_requests)
        clock.advance(10)
    assert remaining == [(2,), (1,), (0,)]

    refused = await store.admit("late", [window(rpm=3)], [])
    assert refused.refusal == Refusal("requests", 0, 30.0, 3, 3)
    assert refused.remaining_requests == (0,)

    clock.now = start + WINDOW_S - 0.5
    assert (await store.admit("late", [window(rpm=3)], [])).refusal == Refusal("requests", 0, 0.5, 3, 3)

    # At exactly 60 s the first entry has left the window.
    clock.now = start + WINDOW_S
    admitted = await store.admit("late", [window(rpm=3)], [])
    assert admitted.refusal is None
    assert admitted.remaining_requests == (0,)
    assert (await store.admit("later", [window(rpm=3)], [])).refusal == Refusal("requests", 0, 10.0, 3, 3)


async def test_admission_reports_the_store_clock(store: QuotaStore, clock: ManualClock):
    clock.now += 0.25
    assert (await store.admit("c", [window(rpm=1)], [])).now == clock.now


async def test_an_empty_admission_admits_without_looking(store: QuotaStore, clock: ManualClock):
    assert await store.admit("c", [], []) == Admission(None, (), (), (), (), clock.now)


# Tokens


async def test_a_reservation_settles_down_then_another_settles_up(store: QuotaStore, clock: ManualClock):
    first = await store.admit("a", [window(tpm=1000, tokens=600)], [])
    assert first.refusal is None and first.remaining_tokens == (400,) and first.remaining_requests == (None,)

    clock.advance(5)
    refused = await store.admit("b", [window(tpm=1000, tokens=600)], [])
    assert refused.refusal == Refusal("tokens", 0, 55.0, 600, 1000)
    assert refused.remaining_tokens == (400,)

    await store.settle("a", [settled(reserved=600, actual=200)], [])
    assert (await window_usage(store)).tokens == 200
    second = await store.admit("b", [window(tpm=1000, tokens=600)], [])
    assert second.refusal is None and second.remaining_tokens == (200,)

    await store.settle("b", [settled(reserved=600, actual=900)], [])
    assert (await window_usage(store)).tokens == 1100
    over = await store.admit("c", [window(tpm=1000, tokens=0)], [])
    # Over the limit after settling up: nothing is left, and "a" leaving (at 60 s) makes room.
    assert over.refusal == Refusal("tokens", 0, 55.0, 1100, 1000)
    assert over.remaining_tokens == (0,)


async def test_a_token_demand_over_the_limit_itself_is_never_admitted(store: QuotaStore):
    admission = await store.admit("c", [window(tpm=100, tokens=101)], [])
    assert admission.refusal == Refusal("tokens", 0, None, 0, 100)


async def test_token_retry_waits_for_just_enough_of_the_oldest_reservations(store: QuotaStore,
                                                                               clock: ManualClock):
    start = clock.now
    await store.admit("a", [window(tpm=1000, tokens=400)], [])
    clock.now = start + 10
    await store.admit("b", [window(tpm=1000, tokens=400)], [])
    clock.now = start + 20
    assert (await store.admit("c", [window(tpm=1000, tokens=500)], [])).refusal == Refusal("tokens", 0, 40.0, 800, 1000)
    assert (await store.admit("c", [window(tpm=1000, tokens=700)], [])).refusal == Refusal("tokens", 0, 50.0, 800, 1000)
    clock.now = start + WINDOW_S
    admitted = await store.admit("c", [window(tpm=1000, tokens=500)], [])
    assert admitted.refusal is None and admitted.remaining_tokens == (100,)


async def test_a_settlement_after_the_window_changes_nothing(store: QuotaStore, clock: ManualClock):
    await store.admit("a", [window(tpm=1000, tokens=500)], [])
    clock.advance(WINDOW_S + 1)
    await store.settle("a", [settled(reserved=500, actual=900)], [])
    assert (await window_usage(store)).tokens == 0
    assert (await store.admit("b", [window(tpm=1000, tokens=1000)], [])).refusal is None


async def test_a_call_admitted_again_replaces_its_reservation(store: QuotaStore):
    await store.admit("a", [window(tpm=1000, tokens=300)], [])
    await store.admit("a", [window(tpm=1000, tokens=500)], [])
    assert (await window_usage(store)).tokens == 500


# Streams


async def test_stream_leases_expire_unless_renewed(store: QuotaStore, clock: ManualClock):
    start = clock.now
    for call in ("a", "b"):
        assert (await store.admit(call, [window(streams=2)], [])).refusal is None
    assert (await store.admit("c", [window(streams=2)], [])).refusal == Refusal("streams", 0, STREAM_LEASE_S, 2, 2)
    assert (await window_usage(store)).streams == 2

    clock.now = start + 30
    await store.renew_streams([("w:1:r:", "a")])
    clock.now = start + STREAM_LEASE_S
    # "b" expired; "a" was renewed and holds its slot until 150 s.
    assert (await window_usage(store)).streams == 1
    await store.renew_streams([("w:1:r:", "b")])
    assert (await window_usage(store)).streams == 1, "an expired lease is not revived"
    assert (await store.admit("c", [window(streams=2)], [])).refusal is None
    assert (await store.admit("d", [window(streams=2)], [])).refusal == Refusal("streams", 0, 30.0, 2, 2)

    await store.settle("a", [settled(release=True)], [])
    assert (await store.admit("d", [window(streams=2)], [])).refusal is None


async def test_a_call_that_is_not_a_stream_takes_no_lease(store: QuotaStore):
    # The enforcer leaves concurrent_streams unset for unary calls of a rule with a stream limit.
    await store.admit("a", [window(rpm=10)], [])
    assert (await window_usage(store)).streams == 0


# Budgets


async def test_a_missing_budget_is_reported_and_nothing_is_recorded(store: QuotaStore, clock: ManualClock):
    admission = await store.admit("a", [window(rpm=1, tpm=100, tokens=10, streams=1)],
                                  [budget(clock, 1000, key="b:seeded"), budget(clock, 1000)])
    assert admission.missing_budgets == (0, 1)
    assert admission.refusal is None
    assert admission.budget_spent == (0, 0)
    assert admission.remaining_requests == (1,) and admission.remaining_tokens == (100,)
    assert await window_usage(store) == WindowUsage(0, 0, 0, None)

    await store.seed_budget("b:seeded", 0, 0, clock.now + DAY)
    again = await store.admit("a", [window(rpm=1)], [budget(clock, 1000, key="b:seeded"), budget(clock, 1000)])
    assert again.missing_budgets == (1,)


async def test_a_missing_budget_is_reported_before_any_window_refusal(store: QuotaStore, clock: ManualClock):
    await store.admit("a", [window(rpm=1)], [])
    admission = await store.admit("b", [window(rpm=1)], [budget(clock, 1000)])
    assert admission.missing_budgets == (0,) and admission.refusal is None


async def test_a_seed_keeps_the_larger_figure(store: QuotaStore, clock: ManualClock):
    expires = clock.now + DAY
    await store.seed_budget("b:20260101:1:b:", 500, 2, expires)
    await store.seed_budget("b:20260101:1:b:", 300, 1, expires)
    assert await budget_usage(store) == BudgetUsage(500, 2)
    await store.seed_budget("b:20260101:1:b:", 800, 5, expires)
    assert await budget_usage(store) == BudgetUsage(800, 5)


async def test_charges_add_up_to_a_refusal_at_the_maximum(store: QuotaStore, clock: ManualClock):
    await store.seed_budget("b:20260101:1:b:", 0, 0, clock.now + DAY)
    await store.settle("a", [], [charge(clock, 250)])
    admitted = await store.admit("b", [], [budget(clock, 300)])
    assert admitted.refusal is None and admitted.budget_spent == (250,)
    await store.settle("b", [], [charge(clock, 50)])
    refused = await store.admit("c", [window(rpm=5)], [budget(clock, 300)])
    assert refused.refusal == Refusal("budget", 0, None, 300, 300)
    assert refused.budget_spent == (300,)
    assert (await window_usage(store)).requests == 0, "a budget refusal records nothing on the windows"


async def test_budget_figures_are_exact_beyond_double_precision(store: QuotaStore, clock: ManualClock):
    big = 2**62
    await store.seed_budget("b:20260101:1:b:", big, 0, clock.now + DAY)
    assert (await store.admit("a", [], [budget(clock, big + 1)])).refusal is None
    await store.settle("a", [], [charge(clock, 1)])
    assert await budget_usage(store) == BudgetUsage(big + 1, 0)
    refused = await store.admit("b", [], [budget(clock, big + 1)])
    assert refused.refusal == Refusal("budget", 0, None, big + 1, big + 1)
    await store.seed_budget("b:20260101:1:b:", big + 2, 0, clock.now + DAY)
    assert await budget_usage(store) == BudgetUsage(big + 2, 0)


async def test_a_charge_to_a_missing_figure_waits_for_the_seed(store: QuotaStore, clock: ManualClock):
    await store.settle("a", [], [charge(clock, 500)])
    assert await budget_usage(store) == BudgetUsage(None, 0)
    await store.seed_budget("b:20260101:1:b:", 100, 0, clock.now + DAY)
    assert await budget_usage(store) == BudgetUsage(100, 0)


async def test_unpriced_calls_are_counted_with_or_without_a_figure(store: QuotaStore, clock: ManualClock):
    await store.settle("a", [], [charge(clock, 0, unpriced=True)])
    assert await budget_usage(store) == BudgetUsage(None, 1)
    assert (await store.admit("b", [], [budget(clock, 1000)])).missing_budgets == (0,)

    await store.seed_budget("b:20260101:1:b:", 10, 0, clock.now + DAY)
    assert await budget_usage(store) == BudgetUsage(10, 1)
    await store.settle("b", [], [charge(clock, 0, unpriced=True), charge(clock, 7, key="b:other")])
    assert await budget_usage(store) == BudgetUsage(10, 2)
    assert await budget_usage(store, "b:other") == BudgetUsage(None, 0)


# Atomicity and figures


async def test_a_refusal_on_the_second_window_records_nothing_on_the_first(store: QuotaStore):
    first, second = "w:5:first:", "w:6:second:"
    demands = [window(first, rpm=5, tpm=100, tokens=10, streams=5), window(second, rpm=1)]
    assert (await store.admit("a", demands, [])).refusal is None
    refused = await store.admit("b", demands, [])
    assert refused.refusal == Refusal("requests", 1, WINDOW_S, 1, 1)
    assert refused.remaining_requests == (4, 0) and refused.remaining_tokens == (90, None)
    assert await window_usage(store, first) == WindowUsage(1, 10, 1, WINDOW_S)


async def test_remaining_figures_per_window(store: QuotaStore, clock: ManualClock):
    await store.seed_budget("b:20260101:1:b:", 40, 0, clock.now + DAY)
    admission = await store.admit("a", [window("w:1:x:", rpm=10), window("w:1:y:", tpm=500, tokens=120),
                                        window("w:1:z:", streams=3)], [budget(clock, 100)])
    assert admission == Admission(None, (), (9, None, None), (None, 380, None), (40,), clock.now)


async def test_usage_of_windows_and_budgets(store: QuotaStore, clock: ManualClock):
    assert await store.usage(["w:1:r:"], ["b:20260101:1:b:"]) == ([WindowUsage(0, 0, 0, None)],
                                                                  [BudgetUsage(None, 0)])
    await store.admit("a", [window(rpm=10, tpm=1000, tokens=70, streams=2)], [])
    clock.advance(15)
    await store.admit("b", [window(rpm=10, tpm=1000, tokens=30)], [])
    await store.seed_budget("b:20260101:1:b:", 123, 4, clock.now + DAY)
    assert await store.usage(["w:1:r:", "w:1:other:"], ["b:20260101:1:b:"]) == (
        [WindowUsage(2, 100, 1, 45.0), WindowUsage(0, 0, 0, None)], [BudgetUsage(123, 4)])
    clock.advance(45)
    assert await window_usage(store) == WindowUsage(1, 30, 1, 15.0)


async def test_the_in_process_store_forgets_idle_windows_and_old_figures():
    clock = ManualClock()
    store = InProcessStore(clock)
    await store.admit("a", [window(rpm=1)], [])
    await store.seed_budget("b:old", 5, 0, clock.now + 10)
    clock.advance(DAY + 11)
    await store.admit("b", [window("w:1:other:", rpm=1)], [])
    assert list(store._windows) == ["w:1:other:"]
    assert store._figures == {}
