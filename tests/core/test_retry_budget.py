"""The retry budget under a fake clock: the bound, the sliding window, threads, Istio defaults."""

from __future__ import annotations

import sys
import threading

import pytest

from meshlib.core.retry_budget import RetryBudget
from meshlib.policy.destination_rule import RetryBudget as RetryBudgetPolicy


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drain(budget: RetryBudget) -> int:
    taken = 0
    while budget.try_withdraw():
        taken += 1
    return taken


def test_fresh_budget_allows_min_retries() -> None:
    budget = RetryBudget(clock=FakeClock())
    assert budget.balance() == 3
    assert drain(budget) == 3
    assert budget.balance() == 0


def test_1000_requests_to_a_failing_backend_allow_exactly_203_retries() -> None:
    budget = RetryBudget(percent=20.0, min_retries=3, clock=FakeClock())
    retries = 0
    for _ in range(1000):
        budget.deposit()
        if budget.try_withdraw():  # the backend always fails: every request wants a retry
            retries += 1
    retries += drain(budget)
    assert retries == 203
    assert budget.balance() == 0


def test_bound_holds_for_a_burst_of_requests_then_retries() -> None:
    budget = RetryBudget(percent=20.0, min_retries=3, clock=FakeClock())
    for _ in range(1000):
        budget.deposit()
    assert budget.balance() == 203
    assert drain(budget) == 203


@pytest.mark.parametrize(
    ("percent", "deposits", "expected"),
    [(0.0, 1000, 3), (100.0, 7, 10), (12.5, 8, 4), (29.0, 100, 32), (33.3, 1000, 336), (20.0, 4, 3)],
)
def test_share_is_floored_exactly(percent: float, deposits: int, expected: int) -> None:
    budget = RetryBudget(percent=percent, min_retries=3, clock=FakeClock())
    for _ in range(deposits):
        budget.deposit()
    assert budget.balance() == expected


def test_window_slides_old_deposits_and_withdrawals_expire() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(percent=20.0, min_retries=3, window=10.0, clock=clock)
    for _ in range(1000):
        budget.deposit()
    assert drain(budget) == 203
    clock.now = 5.0
    for _ in range(100):
        budget.deposit()
    assert budget.balance() == 3 + 220 - 203
    clock.now = 9.999
    assert budget.balance() == 20  # still the same window
    clock.now = 10.0
    assert budget.balance() == 3 + 20  # t=0 deposits and withdrawals have expired
    clock.now = 15.0
    assert budget.balance() == 3  # everything expired
    clock.now = 1000.0
    assert budget.balance() == 3


def test_events_expire_between_window_less_one_bucket_and_window() -> None:
    clock = FakeClock(0.95)  # late in bucket 0 (buckets are 1s wide)
    budget = RetryBudget(percent=100.0, min_retries=0, window=10.0, clock=clock)
    budget.deposit()
    clock.now = 9.99
    assert budget.balance() == 1  # 9.04s old
    clock.now = 10.0
    assert budget.balance() == 0  # 9.05s old: expired with its bucket


def test_sequential_caller_is_bounded_per_window() -> None:
    # A caller that never has more than one retry in flight is still held to the rate.
    clock = FakeClock(0.0)
    budget = RetryBudget(percent=20.0, min_retries=3, window=10.0, clock=clock)
    attempts = requests = 0
    for step in range(100):
        clock.now = step * 0.05  # 5s of traffic, all inside one window
        budget.deposit()
        requests += 1
        attempts += 1
        for _ in range(3):  # route allows 3 retries; backend always fails
            if not budget.try_withdraw():
                break
            attempts += 1
    assert attempts <= 1.2 * requests + 3
    assert attempts == 100 + 3 + 20


def test_threads_keep_the_bound_and_lose_no_updates() -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        budget = RetryBudget(percent=20.0, min_retries=3, clock=FakeClock())
        taken: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            mine = 0
            for _ in range(1000):
                budget.deposit()
                if budget.try_withdraw():
                    mine += 1
            with lock:
                taken.append(mine)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    withdrawn = sum(taken)
    assert withdrawn <= 3 + 8000 // 5
    assert withdrawn + budget.balance() == 3 + 8000 // 5  # every deposit and withdrawal counted


# --- construction ---------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_from_policy_none_uses_istio_defaults(clock: FakeClock) -> None:
    budget = RetryBudget.from_policy(None, clock)
    assert (budget.percent, budget.min_retries, budget.window) == (20.0, 3, 10.0)


def test_from_policy_reads_the_fields(clock: FakeClock) -> None:
    policy = RetryBudgetPolicy.model_validate(
        {"percent": 5, "minRetryConcurrency": 1, "budgetInterval": "30s"}
    )
    budget = RetryBudget.from_policy(policy, clock)
    assert (budget.percent, budget.min_retries, budget.window) == (5.0, 1, 30.0)


def test_from_policy_fills_unset_fields(clock: FakeClock) -> None:
    budget = RetryBudget.from_policy(RetryBudgetPolicy.model_validate({"percent": 0}), clock)
    assert (budget.percent, budget.min_retries, budget.window) == (0.0, 3, 10.0)
    assert budget.balance() == 3


def test_from_policy_zero_min_retry_concurrency_means_3_as_in_istio(clock: FakeClock) -> None:
    policy = RetryBudgetPolicy.model_validate({"minRetryConcurrency": 0})
    assert RetryBudget.from_policy(policy, clock).min_retries == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"percent": -1.0}, "percent"),
        ({"percent": 101.0}, "percent"),
        ({"min_retries": -1}, "min_retries"),
        ({"window": 0.0}, "window"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryBudget(**kwargs)  # type: ignore[arg-type]
