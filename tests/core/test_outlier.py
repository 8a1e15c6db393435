"""Outlier detection under a fake clock: counting, ejection, return, decay, caps, panic."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from meshlib.core.outlier import Outcome, OutlierDetector, outcome_for_status
from meshlib.policy.destination_rule import OutlierDetection

S = Outcome.SUCCESS
E5 = Outcome.ERROR_5XX
GW = Outcome.GATEWAY_ERROR
LO = Outcome.LOCAL_ORIGIN_FAILURE


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings(**fields: Any) -> OutlierDetection:
    return OutlierDetection.model_validate(fields)


def detector(clock: FakeClock, endpoints: int = 10, **fields: Any) -> tuple[OutlierDetector, list[str]]:
    keys = [f"10.0.0.{i}" for i in range(endpoints)]
    found = OutlierDetector(settings(**fields), clock)
    found.set_endpoints(keys)
    return found, keys


def feed(found: OutlierDetector, key: str, *outcomes: Outcome) -> list[bool]:
    return [found.record(key, outcome) for outcome in outcomes]


def identity(key: str) -> str:
    return key


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, S),
        (204, S),
        (404, S),
        (429, S),
        (499, S),
        (500, E5),
        (501, E5),
        (505, E5),
        (599, E5),
        (502, GW),
        (503, GW),
        (504, GW),
        (600, S),
    ],
)
def test_outcome_for_status(status: int, expected: Outcome) -> None:
    assert outcome_for_status(status) is expected


# --- counting -------------------------------------------------------------------------


def test_fifth_consecutive_503_ejects_at_once() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    assert feed(found, a, GW, GW, GW, GW) == [False] * 4
    assert not found.is_ejected(a)
    assert found.record(a, GW) is True
    assert found.is_ejected(a)


def test_a_success_resets_the_run() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    assert not any(feed(found, a, GW, GW, GW, GW, S, GW, GW, GW, GW))
    assert not found.is_ejected(a)
    assert found.record(a, GW)


def test_5xx_counter_mixes_5xx_gateway_and_local_origin_by_default() -> None:
    found, [a, *_] = detector(FakeClock())
    assert feed(found, a, E5, GW, LO, E5, LO) == [False, False, False, False, True]


def test_consecutive_5xx_zero_disables_it() -> None:
    found, [a, *_] = detector(FakeClock(), consecutive5xxErrors=0)
    assert not any(feed(found, a, *[E5] * 50))
    assert not found.is_ejected(a)


def test_consecutive_5xx_custom_threshold() -> None:
    found, [a, *_] = detector(FakeClock(), consecutive5xxErrors=2)
    assert feed(found, a, E5, E5) == [False, True]


def test_gateway_counter_is_off_unless_set() -> None:
    found, [a, *_] = detector(FakeClock(), consecutive5xxErrors=0, consecutiveGatewayErrors=0)
    assert not any(feed(found, a, *[GW] * 20))


def test_gateway_counter_counts_gateway_errors_and_local_origin_failures() -> None:
    found, [a, *_] = detector(FakeClock(), consecutive5xxErrors=0, consecutiveGatewayErrors=3)
    assert feed(found, a, GW, LO, GW) == [False, False, True]


def test_gateway_counter_is_reset_by_a_plain_5xx() -> None:
    # Envoy: a 5xx that is not 502/503/504 breaks a run of gateway errors.
    found, [a, *_] = detector(FakeClock(), consecutive5xxErrors=0, consecutiveGatewayErrors=3)
    assert not any(feed(found, a, GW, GW, E5, GW, GW))
    assert found.record(a, GW)


def test_gateway_threshold_below_5xx_threshold_ejects_first() -> None:
    found, [a, *_] = detector(FakeClock(), consecutiveGatewayErrors=2)
    assert feed(found, a, GW, GW) == [False, True]


def test_deprecated_consecutive_errors_counts_gateway_errors_only_as_istio_maps_it() -> None:
    """Istio: consecutiveErrors N becomes N consecutive gateway failures, 5xx counting off."""
    found, [a, b, *_] = detector(FakeClock(), consecutiveErrors=3)
    assert not any(feed(found, a, *[E5] * 20)), "plain 5xx no longer counts"
    assert feed(found, b, GW, GW, GW) == [False, False, True]
    found, [a, *_] = detector(FakeClock(), consecutiveErrors=3, consecutive5xxErrors=2)
    assert feed(found, a, E5, E5) == [False, True], "an explicit consecutive5xxErrors still counts"


def test_split_local_origin_failures_count_only_on_their_own_counter() -> None:
    found, [a, b, *_] = detector(
        FakeClock(), splitExternalLocalOriginErrors=True, consecutiveGatewayErrors=2, maxEjectionPercent=100
    )
    # Local-origin failures alone reach neither the 5xx nor the gateway counter.
    assert feed(found, a, LO, LO, LO, LO) == [False] * 4
    assert found.record(a, LO)  # the 5th: consecutiveLocalOriginFailures defaults to 5
    # They do not interrupt a run of gateway errors either.
    assert feed(found, b, GW, LO, GW) == [False, False, True]


def test_split_any_response_resets_the_local_origin_counter() -> None:
    found, [a, *_] = detector(
        FakeClock(), splitExternalLocalOriginErrors=True, consecutiveLocalOriginFailures=3
    )
    assert not any(feed(found, a, LO, LO, E5, LO, LO, S, LO, LO))
    assert found.record(a, LO)


def test_split_local_origin_zero_means_default() -> None:
    # Istio passes consecutiveLocalOriginFailures on only when > 0.
    found, [a, *_] = detector(
        FakeClock(), splitExternalLocalOriginErrors=True, consecutiveLocalOriginFailures=0
    )
    assert feed(found, a, *[LO] * 5) == [False] * 4 + [True]


def test_a_refused_ejection_needs_a_whole_new_run() -> None:
    clock = FakeClock()
    found, [a, b, *_] = detector(clock)
    assert found.record(a, GW) is False
    assert feed(found, a, GW, GW, GW, GW)[-1]
    assert feed(found, b, *[GW] * 5)[-1] is False  # refused: 10% of 10 already ejected
    assert not any(feed(found, b, GW, GW, GW, GW))  # counter restarted


# --- ejection time --------------------------------------------------------------------


def eject(found: OutlierDetector, key: str) -> None:
    assert feed(found, key, *[GW] * 5)[-1], f"{key} was not ejected"


def ejected_for(found: OutlierDetector, clock: FakeClock, key: str) -> float:
    """Eject ``key`` now and step the clock until it returns; the time it was out."""
    start = clock.now
    eject(found, key)
    while found.is_ejected(key):
        clock.advance(1.0)
    return clock.now - start


def test_ejection_lasts_base_ejection_time_then_returns() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    eject(found, a)
    clock.advance(29.999)
    assert found.is_ejected(a)
    clock.advance(0.001)
    assert not found.is_ejected(a)


def test_ejection_time_grows_with_each_ejection() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    assert [ejected_for(found, clock, a) for _ in range(3)] == [30.0, 60.0, 90.0]


def test_counters_restart_when_an_endpoint_returns() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    eject(found, a)
    assert not any(feed(found, a, *[GW] * 10))  # ignored while ejected
    clock.advance(30)
    assert not any(feed(found, a, GW, GW, GW, GW))
    assert found.record(a, GW)


def test_multiplier_decays_one_step_per_interval_back_in_service() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    assert [ejected_for(found, clock, a) for _ in range(3)] == [30.0, 60.0, 90.0]
    clock.advance(20.0)  # two whole intervals back in service: multiplier 3 -> 1
    assert ejected_for(found, clock, a) == 60.0


def test_multiplier_needs_whole_intervals() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    ejected_for(found, clock, a)
    clock.advance(9.5)
    assert ejected_for(found, clock, a) == 60.0  # less than one interval: no decay
    clock.advance(25.0)  # two whole intervals: 2 -> 0
    assert ejected_for(found, clock, a) == 30.0


def test_multiplier_decay_uses_custom_interval() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock, interval="1s", baseEjectionTime="5s")
    assert [ejected_for(found, clock, a) for _ in range(3)] == [5.0, 10.0, 15.0]
    clock.advance(100.0)
    assert ejected_for(found, clock, a) == 5.0


def test_ejection_time_is_capped_at_300s() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    times = [ejected_for(found, clock, a) for _ in range(13)]
    assert times[:10] == [30.0 * n for n in range(1, 11)]
    assert times[10:] == [300.0, 300.0, 300.0]


def test_base_above_300s_is_its_own_cap() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock, baseEjectionTime="400s")
    assert [ejected_for(found, clock, a) for _ in range(3)] == [400.0, 400.0, 400.0]


def test_decay_from_the_cap_takes_about_max_over_base_intervals() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    for _ in range(12):
        ejected_for(found, clock, a)
    clock.advance(110.0)  # Envoy's multiplier tops out at 11 with these settings
    assert ejected_for(found, clock, a) == 30.0


# --- max ejection percent -------------------------------------------------------------


def test_max_ejection_percent_10_of_10_endpoints_ejects_one() -> None:
    found, keys = detector(FakeClock())
    ejected = [feed(found, k, *[GW] * 5)[-1] for k in keys]
    assert ejected == [True] + [False] * 9
    assert [k for k in keys if found.is_ejected(k)] == keys[:1]


def test_max_ejection_percent_always_allows_one() -> None:
    found, [a, b] = detector(FakeClock(), endpoints=2)  # 1 of 2 is 50% > 10%
    assert feed(found, a, *[GW] * 5)[-1]
    assert not feed(found, b, *[GW] * 5)[-1]


def test_max_ejection_percent_strict_as_envoy_since_1_28() -> None:
    found = OutlierDetector(settings(), FakeClock(), always_eject_one_host=False)
    found.set_endpoints(["a", "b"])
    assert not feed(found, "a", *[GW] * 5)[-1]
    assert not found.is_ejected("a")


def test_max_ejection_percent_allows_up_to_the_share() -> None:
    found, keys = detector(FakeClock(), endpoints=10, maxEjectionPercent=30)
    ejected = [feed(found, k, *[GW] * 5)[-1] for k in keys]
    assert ejected == [True] * 3 + [False] * 7


def test_max_ejection_percent_zero_means_default_10() -> None:
    found, keys = detector(FakeClock(), endpoints=20, maxEjectionPercent=0)
    ejected = [feed(found, k, *[GW] * 5)[-1] for k in keys]
    assert sum(ejected) == 2


def test_a_returned_endpoint_frees_its_share() -> None:
    clock = FakeClock()
    found, [a, b, *_] = detector(clock)
    eject(found, a)
    clock.advance(30.0)
    assert feed(found, b, *[GW] * 5)[-1]


# --- healthy / panic ------------------------------------------------------------------


def test_healthy_returns_the_input_when_nothing_is_ejected() -> None:
    found, keys = detector(FakeClock())
    assert found.healthy(keys, identity) is keys


def test_healthy_leaves_out_ejected_endpoints_until_they_return() -> None:
    clock = FakeClock()
    found, keys = detector(clock)
    eject(found, keys[3])
    assert list(found.healthy(keys, identity)) == keys[:3] + keys[4:]
    clock.advance(30.0)
    assert found.healthy(keys, identity) is keys


def test_healthy_with_every_endpoint_ejected_and_no_panic_is_empty() -> None:
    found, [a] = detector(FakeClock(), endpoints=1)
    eject(found, a)
    assert list(found.healthy([a], identity)) == []


def test_min_health_percent_panics_to_all_endpoints() -> None:
    found, keys = detector(FakeClock(), endpoints=4, maxEjectionPercent=100, minHealthPercent=50)
    eject(found, keys[0])
    eject(found, keys[1])
    assert list(found.healthy(keys, identity)) == keys[2:]  # 50% healthy: not below
    eject(found, keys[2])
    assert list(found.healthy(keys, identity)) == keys  # 25% < 50%: panic


def test_healthy_works_on_any_endpoint_type_with_a_key() -> None:
    found, keys = detector(FakeClock())
    pairs = [(k, 80) for k in keys]
    eject(found, keys[0])
    assert list(found.healthy(pairs, lambda p: p[0])) == pairs[1:]


# --- settings and membership ----------------------------------------------------------


def test_update_settings_keeps_counters_ejections_and_multipliers() -> None:
    clock = FakeClock()
    found, [a, b, *_] = detector(clock, maxEjectionPercent=20)
    assert [ejected_for(found, clock, a) for _ in range(2)] == [30.0, 60.0]
    feed(found, b, GW, GW, GW)
    found.update_settings(settings(consecutive5xxErrors=4, baseEjectionTime="10s", maxEjectionPercent=20))
    assert found.record(b, GW)  # 3 counted before + this one reaches the new threshold 4
    assert feed(found, a, GW, GW, GW, GW)[-1]
    clock.advance(29.999)
    assert found.is_ejected(a)  # multiplier 3 * the new base 10s
    clock.advance(0.001)
    assert not found.is_ejected(a)


def test_update_settings_shortens_a_running_ejection() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    eject(found, a)
    found.update_settings(settings(baseEjectionTime="5s"))
    clock.advance(5.0)
    assert not found.is_ejected(a)


def test_update_settings_keeps_decay_already_served() -> None:
    clock = FakeClock()
    found, [a, *_] = detector(clock)
    for _ in range(3):
        ejected_for(found, clock, a)
    clock.advance(15.0)  # one 10s interval served (3 -> 2) and half of the next
    found.update_settings(settings(interval="4s"))
    # Counted afresh at 4s the 15s would be three steps; the half interval is one more.
    assert ejected_for(found, clock, a) == 60.0


def test_removed_endpoints_are_forgotten() -> None:
    clock = FakeClock()
    found, keys = detector(clock)
    a, b = keys[0], keys[1]
    eject(found, a)
    feed(found, b, GW, GW, GW, GW)
    found.set_endpoints(keys[2:])
    assert not found.is_ejected(a)
    assert found.healthy(keys, identity) is keys
    assert found.record(b, GW) is False  # outcomes for removed endpoints are dropped
    found.set_endpoints(keys)
    assert not any(feed(found, b, GW, GW, GW, GW))  # back with a fresh count
    assert found.record(b, GW)


def test_set_endpoints_sets_the_total_for_percentages() -> None:
    found, keys = detector(FakeClock(), endpoints=20)
    eject(found, keys[0])
    assert feed(found, keys[1], *[GW] * 5)[-1]  # 2 of 20 = 10%
    found.set_endpoints(keys[:10])  # now 2 of 10 ejected
    assert not feed(found, keys[2], *[GW] * 5)[-1]


def test_record_adopts_keys_before_set_endpoints() -> None:
    found = OutlierDetector(settings(maxEjectionPercent=50), FakeClock())
    for key in "abcd":
        found.record(key, S)
    assert feed(found, "a", *[GW] * 5)[-1]
    assert feed(found, "b", *[GW] * 5)[-1]
    assert not feed(found, "c", *[GW] * 5)[-1]  # 3 of 4 > 50%


# --- threads --------------------------------------------------------------------------


def test_record_from_many_threads_ejects_exactly_once() -> None:
    found, keys = detector(FakeClock(), endpoints=10, maxEjectionPercent=100)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [found.record(k, GW) for _ in range(50) for k in keys]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 10  # each endpoint ejected once; errors while ejected ignored
    assert all(found.is_ejected(k) for k in keys)
