"""Endpoint weights (ServiceEntry ``endpoints[].weight``) in every load balancer."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from meshlib.core.balancer import LeastRequest, Maglev, RandomBalancer, RingHash, RoundRobin
from meshlib.core.snapshot import Endpoint

HOST = "api.example.com"
LIGHT, HEAVY = Endpoint(HOST, "10.0.0.1", 80, weight=1), Endpoint(HOST, "10.0.0.2", 80, weight=3)
ENDPOINTS = (LIGHT, HEAVY)


def within_binomial(count: int, trials: int, share: float, sds: float = 5.0) -> bool:
    """``count`` of ``trials`` draws is within ``sds`` standard deviations of ``share``."""
    return abs(count - trials * share) <= sds * math.sqrt(trials * share * (1 - share))


def test_round_robin_gives_exact_weight_shares() -> None:
    rr = RoundRobin(random.Random(1))
    assert Counter(rr.pick(ENDPOINTS) for _ in range(400)) == {HEAVY: 300, LIGHT: 100}


def test_least_request_weighs_endpoints_without_load_exactly() -> None:
    lr = LeastRequest(lambda e: 0, random.Random(2))
    assert Counter(lr.pick(ENDPOINTS) for _ in range(400)) == {HEAVY: 300, LIGHT: 100}


def test_least_request_scales_each_weight_by_its_active_requests() -> None:
    """Envoy: weight / (active + 1). HEAVY with 5 in flight weighs 3/6 against LIGHT's 1/1."""
    active = {LIGHT.key: 0, HEAVY.key: 5}
    lr = LeastRequest(lambda e: active[e.key], random.Random(3))
    picks = Counter(lr.pick(ENDPOINTS) for _ in range(300))
    assert picks == {LIGHT: 200, HEAVY: 100}


def test_least_request_with_equal_weights_is_still_power_of_two_choices() -> None:
    a, b = Endpoint(HOST, "10.0.0.1", 80, weight=2), Endpoint(HOST, "10.0.0.2", 80, weight=2)
    active = {a.key: 3, b.key: 0}
    lr = LeastRequest(lambda e: active[e.key], random.Random(4))
    assert {lr.pick((a, b)) for _ in range(50)} == {b}, "the idle one always wins a two-way pick"


def test_random_draws_by_weight() -> None:
    trials = 4000
    balancer = RandomBalancer(random.Random(5))
    picks = Counter(balancer.pick(ENDPOINTS) for _ in range(trials))
    assert within_binomial(picks[HEAVY], trials, 0.75), picks


def test_random_with_equal_weights_is_uniform() -> None:
    trials = 4000
    other = Endpoint(HOST, "10.0.0.3", 80)
    balancer = RandomBalancer(random.Random(6))
    picks = Counter(balancer.pick((LIGHT, other)) for _ in range(trials))
    assert within_binomial(picks[LIGHT], trials, 0.5), picks


@pytest.mark.parametrize("kind", [RingHash, Maglev])
def test_consistent_hashing_gives_keys_in_proportion_to_weight(kind: type[RingHash] | type[Maglev]) -> None:
    balancer = kind(ENDPOINTS, rng=random.Random(7))
    trials = 4000
    picks = Counter(balancer.pick(ENDPOINTS, f"user-{i}".encode()) for i in range(trials))
    # Hash placement is not a fair coin per key, so a looser bound: within 5 points of 75%.
    assert abs(picks[HEAVY] / trials - 0.75) < 0.05, picks
