"""Balancers pick an endpoint per attempt; the factory maps Istio's loadBalancer settings."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from meshlib.core.balancer import (
    Balancer,
    LeastRequest,
    Maglev,
    RandomBalancer,
    RingHash,
    RoundRobin,
    build_balancer,
    hash_key_for,
)
from meshlib.core.snapshot import Endpoint
from meshlib.errors import ConfigError
from meshlib.policy.destination_rule import ConsistentHashLB, LoadBalancerSettings

HOST = "ratings.default.svc.cluster.local"
A, B, C, D = (Endpoint(HOST, f"10.1.0.{i}", 9080) for i in range(1, 5))


def idle(endpoint: Endpoint) -> int:
    return 0


# --- round robin ------------------------------------------------------------------------


def test_round_robin_cycles_evenly_in_order() -> None:
    rr = RoundRobin(random.Random(1))
    healthy = (A, B, C)
    picks = [rr.pick(healthy) for _ in range(300)]
    assert Counter(picks) == {A: 100, B: 100, C: 100}
    start = healthy.index(picks[0])  # type: ignore[arg-type]
    assert picks[:6] == [healthy[(start + i) % 3] for i in range(6)]


def test_round_robin_starts_at_a_random_offset() -> None:
    firsts = {RoundRobin(random.Random(seed)).pick((A, B, C, D)) for seed in range(20)}
    assert len(firsts) > 1


def test_round_robin_follows_a_shrinking_healthy_list() -> None:
    rr = RoundRobin(random.Random(2))
    assert Counter(rr.pick((A, B, C, D)) for _ in range(40)) == {A: 10, B: 10, C: 10, D: 10}
    assert Counter(rr.pick((A, C, D)) for _ in range(30)) == {A: 10, C: 10, D: 10}
    assert Counter(rr.pick((D,)) for _ in range(5)) == {D: 5}
    assert rr.pick(()) is None


def test_weighted_round_robin_gives_weight_shares_smoothly() -> None:
    light, middle, heavy = (Endpoint(HOST, f"10.2.0.{i}", 9080, weight=w) for i, w in enumerate((1, 2, 3)))
    rr = RoundRobin(random.Random(3))
    healthy = (light, middle, heavy)
    picks = [rr.pick(healthy) for _ in range(600)]
    counts = Counter(picks)
    assert abs(counts[light] - 100) <= 2
    assert abs(counts[middle] - 200) <= 2
    assert abs(counts[heavy] - 300) <= 2
    # Smooth: every window of one full round (6 picks) holds each endpoint about its weight.
    for start in range(10, len(picks) - 6):
        window = Counter(picks[start : start + 6])
        assert 2 <= window[heavy] <= 4
    # Leaving one out: the rest keep their relative shares.
    later = Counter(rr.pick((light, heavy)) for _ in range(400))
    assert abs(later[light] - 100) <= 2
    assert abs(later[heavy] - 300) <= 2


def test_round_robin_switches_between_equal_and_unequal_weights() -> None:
    heavy = Endpoint(HOST, "10.3.0.1", 9080, weight=3)
    rr = RoundRobin(random.Random(12))
    for _ in range(3):  # the remembered "all weights equal" must follow the tuple passed
        assert Counter(rr.pick((A, B)) for _ in range(40)) == {A: 20, B: 20}
        weighted = Counter(rr.pick((A, heavy)) for _ in range(400))
        assert abs(weighted[heavy] - 300) <= 2
        as_list = Counter(rr.pick([A, heavy]) for _ in range(400))
        assert abs(as_list[heavy] - 300) <= 2


# --- least request ----------------------------------------------------------------------


def test_least_request_two_endpoints_less_loaded_always_wins() -> None:
    active = {A: 10, B: 0}
    lr = LeastRequest(active.__getitem__, random.Random(4))
    assert all(lr.pick((A, B)) is B for _ in range(1000))


def test_least_request_most_loaded_is_picked_at_most_a_third() -> None:
    active = {A: 9, B: 5, C: 1}
    lr = LeastRequest(active.__getitem__, random.Random(5))
    counts = Counter(lr.pick((A, B, C)) for _ in range(10_000))
    # Two distinct endpoints are sampled, so the busiest always loses: never picked.
    assert counts[A] <= 10_000 / 3
    assert counts[A] == 0
    assert counts[C] > counts[B] > 0  # C wins 2 of 3 pairs, B one


def test_least_request_spreads_load_as_requests_pile_up() -> None:
    active = Counter[Endpoint]()
    lr = LeastRequest(lambda e: active[e], random.Random(6))
    for _ in range(3000):
        chosen = lr.pick((A, B, C))
        assert chosen is not None
        active[chosen] += 1
    assert max(active.values()) - min(active.values()) <= 3


def test_least_request_ties_pick_either_and_edges() -> None:
    lr = LeastRequest(idle, random.Random(7))
    counts = Counter(lr.pick((A, B, C)) for _ in range(9000))
    assert all(2700 <= counts[e] <= 3300 for e in (A, B, C))
    assert lr.pick((D,)) is D
    assert lr.pick(()) is None


def test_least_request_larger_choice_count() -> None:
    active = {A: 3, B: 2, C: 1}
    lr = LeastRequest(active.__getitem__, random.Random(8), choice_count=3)
    assert all(lr.pick((A, B, C)) is C for _ in range(100))
    with pytest.raises(ValueError, match="choice_count"):
        LeastRequest(idle, random.Random(), choice_count=1)


# --- random -----------------------------------------------------------------------------


def test_random_covers_all_endpoints_about_uniformly() -> None:
    rb = RandomBalancer(random.Random(9))
    counts = Counter(rb.pick((A, B, C)) for _ in range(30_000))
    assert all(9_500 <= counts[e] <= 10_500 for e in (A, B, C))
    assert rb.pick((D,)) is D
    assert rb.pick(()) is None


# --- hash keys --------------------------------------------------------------------------


def chlb(**spec: Any) -> ConsistentHashLB:
    return ConsistentHashLB.model_validate(spec)


REQUEST: dict[str, Any] = {
    "headers": {"x-user": "alice", "Content-Type": "text/plain"},
    "cookies": {"session": "s-123", "empty": ""},
    "query": {"tenant": "acme", "blank": ""},
    "source_ip": "10.9.8.7",
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"httpHeaderName": "x-user"}, b"alice"),
        ({"httpHeaderName": "X-User"}, b"alice"),  # names are case-insensitive
        ({"httpHeaderName": "content-type"}, b"text/plain"),
        ({"httpHeaderName": "x-missing"}, None),
        ({"httpCookie": {"name": "session", "ttl": "0s"}}, b"s-123"),
        ({"httpCookie": {"name": "Session"}}, None),  # cookie names are exact
        ({"httpCookie": {"name": "empty"}}, None),  # Envoy: an empty cookie is no cookie
        ({"useSourceIp": True}, b"10.9.8.7"),
        ({"httpQueryParameterName": "tenant"}, b"acme"),
        ({"httpQueryParameterName": "blank"}, b""),  # present, empty: still a key
        ({"httpQueryParameterName": "missing"}, None),
    ],
)
def test_hash_key_for_each_source(spec: dict[str, Any], expected: bytes | None) -> None:
    assert hash_key_for(chlb(**spec), **REQUEST) == expected


def test_hash_key_for_missing_source_ip_and_unicode() -> None:
    assert hash_key_for(chlb(useSourceIp=True), {}, {}, {}, "") is None
    assert hash_key_for(chlb(httpHeaderName="x-name"), {"x-name": "zoë"}, {}, {}, "") == "zoë".encode()


# --- factory ----------------------------------------------------------------------------

ENDPOINTS = (A, B, C, D)


def build(spec: dict[str, Any] | None) -> Balancer:
    settings = None if spec is None else LoadBalancerSettings.model_validate(spec)
    return build_balancer(settings, ENDPOINTS, idle, random.Random(10))


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (None, LeastRequest),  # Istio's default, not Envoy's round robin
        ({}, LeastRequest),
        ({"simple": "UNSPECIFIED"}, LeastRequest),
        ({"simple": "LEAST_REQUEST"}, LeastRequest),
        ({"simple": "LEAST_CONN"}, LeastRequest),  # deprecated alias
        ({"simple": "ROUND_ROBIN"}, RoundRobin),
        ({"simple": "RANDOM"}, RandomBalancer),
        ({"consistentHash": {"httpHeaderName": "x-user"}}, RingHash),
        ({"consistentHash": {"useSourceIp": True, "ringHash": {"minimumRingSize": 64}}}, RingHash),
        ({"consistentHash": {"httpCookie": {"name": "s"}, "maglev": {}}}, Maglev),
        ({"consistentHash": {"httpQueryParameterName": "q", "maglev": {"tableSize": 251}}}, Maglev),
    ],
)
def test_factory_maps_each_istio_setting(spec: dict[str, Any] | None, kind: type) -> None:
    balancer = build(spec)
    assert type(balancer) is kind
    assert balancer.pick(ENDPOINTS, b"key") in ENDPOINTS
    assert balancer.pick(()) is None


@pytest.mark.parametrize(
    ("consistent_hash", "size"),
    [
        ({"useSourceIp": True}, 1024),  # Istio's default minimum ring size
        ({"useSourceIp": True, "ringHash": {"minimumRingSize": 4000}}, 4000),
        ({"useSourceIp": True, "ringHash": {"minimumRingSize": 0}}, 1024),  # 0 = unset
        ({"useSourceIp": True, "minimumRingSize": 2000}, 2000),  # deprecated field
    ],
)
def test_factory_ring_size(consistent_hash: dict[str, Any], size: int) -> None:
    ring = build({"consistentHash": consistent_hash})
    assert isinstance(ring, RingHash)
    assert ring.ring_size == size  # 4 equal endpoints: the minimum is reached exactly


@pytest.mark.parametrize(
    ("table", "size"), [({}, 65537), ({"tableSize": 0}, 65537), ({"tableSize": 251}, 251)]
)
def test_factory_maglev_table_size(table: dict[str, Any], size: int) -> None:
    maglev = build({"consistentHash": {"useSourceIp": True, "maglev": table}})
    assert isinstance(maglev, Maglev)
    assert maglev.table_size == size


def test_factory_rejects_a_non_prime_maglev_table() -> None:
    with pytest.raises(ConfigError, match=r"maglev\.tableSize: 1000"):
        build({"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 1000}}})


def test_factory_balancer_and_hash_key_together() -> None:
    settings = LoadBalancerSettings.model_validate({"consistentHash": {"httpHeaderName": "x-user"}})
    assert settings.consistent_hash is not None
    balancer = build_balancer(settings, ENDPOINTS, idle, random.Random(11))
    key = hash_key_for(settings.consistent_hash, {"X-User": "bob"}, {}, {}, "10.0.0.1")
    chosen = balancer.pick(ENDPOINTS, key)
    assert all(balancer.pick(ENDPOINTS, key) is chosen for _ in range(100))
