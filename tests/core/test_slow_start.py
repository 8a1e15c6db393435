"""Slow start (DestinationRule warmup): a new endpoint's share grows over the window."""

from __future__ import annotations

from collections import Counter

import pytest

from meshlib.core.slow_start import SlowStart
from meshlib.errors import ConfigError
from meshlib.policy import load_text
from tests.core.test_cluster_state import A, B, C, FakeClock, cluster, state_of

RR = {"simple": "ROUND_ROBIN"}


def share_of_c(warmup: dict[str, object], at: float, picks: int = 3000) -> float:
    clock = FakeClock()
    policy = {"loadBalancer": {**RR, **warmup}}
    state = state_of(cluster((A, B), **policy), clock)
    grown = cluster((A, B, C), **policy)
    state.refresh(grown, 2)  # C joins now
    clock.now += at
    seen = Counter(state.pick(grown, None) for _ in range(picks))
    return seen[C] / picks


def test_a_joining_endpoint_starts_at_the_minimum_and_grows_to_its_full_share() -> None:
    warmup = {"warmup": {"duration": "100s", "minimumPercent": 10}}
    # weights A=1, B=1, C=0.1 at the start: C gets 0.1 / 2.1 of the picks (round robin: exact)
    assert share_of_c(warmup, 0.0) == pytest.approx(0.1 / 2.1, abs=0.01)
    assert share_of_c(warmup, 50.0) == pytest.approx(0.5 / 2.5, abs=0.01)  # linear (aggression 1)
    assert share_of_c(warmup, 100.0) == pytest.approx(1 / 3, abs=0.01)


def test_the_first_endpoints_and_warmup_duration_secs() -> None:
    clock = FakeClock()
    first = cluster((A, B, C), loadBalancer={**RR, "warmupDurationSecs": "100s"})
    state = state_of(first, clock)
    seen = Counter(state.pick(first, None) for _ in range(300))
    assert seen[C] == 100, "the endpoints a cluster starts with are not warmed up (Envoy)"
    assert share_of_c({"warmupDurationSecs": "100s"}, 0.0) == pytest.approx(0.1 / 2.1, abs=0.01)


def test_aggression_bends_the_ramp() -> None:
    ramp = SlowStart(window=100.0, minimum=0.1, aggression=2.0)
    assert ramp.factor(25.0) == pytest.approx(0.5)  # (0.25) ** (1/2)
    assert ramp.factor(1.0) == pytest.approx(0.1)  # the minimum
    assert ramp.factor(200.0) == 1.0


@pytest.mark.parametrize("lb", ["simple: RANDOM", "consistentHash: {httpHeaderName: x-user}"])
def test_warmup_needs_round_robin_or_least_request(lb: str) -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
        f"spec:\n  host: r\n  trafficPolicy:\n    loadBalancer: {{{lb}, warmup: {{duration: 10s}}}}\n"
    )
    with pytest.raises(ConfigError, match="slow start works with ROUND_ROBIN and LEAST_REQUEST only"):
        load_text(text)
