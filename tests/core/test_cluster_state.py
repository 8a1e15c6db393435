"""Cluster state: connection pool limits, and what survives a new snapshot's Cluster.

A ClusterState is shared by every request to one cluster whatever snapshot it started on:
counters, outlier detection and the retry budget live there, and the last two follow the
newest snapshot only. Endpoints, the balancer and the pool limits come from the request's
own Cluster, passed to each call."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshlib.core.balancer import LeastRequest, RandomBalancer, RoundRobin
from meshlib.core.cluster_state import Clusters, ClusterState, Limits
from meshlib.core.outlier import Outcome
from meshlib.core.routing_table import Cluster
from meshlib.core.snapshot import Endpoint
from meshlib.policy.destination_rule import TrafficPolicy

HOST = "reviews.default.svc.cluster.local"
UNLIMITED = 1 << 32
A = Endpoint(HOST, "10.0.0.1", 9080)
B = Endpoint(HOST, "10.0.0.2", 9080)
C = Endpoint(HOST, "10.0.0.3", 9080)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cluster(endpoints: tuple[Endpoint, ...] = (A, B), **policy: Any) -> Cluster:
    return Cluster(HOST, None, 9080, endpoints, TrafficPolicy.model_validate(policy), True)


def pool(**pool: Any) -> Limits:
    return Limits.from_cluster(cluster(connectionPool=pool))


def state_of(found: Cluster, clock: FakeClock | None = None, version: int = 1) -> ClusterState:
    return ClusterState(found, clock or FakeClock(), random.Random(3), version)


# --- Limits ----------------------------------------------------------------------------


def test_no_connection_pool_is_unlimited() -> None:
    assert Limits.from_cluster(cluster()) == Limits(UNLIMITED, UNLIMITED, UNLIMITED)
    assert pool() == Limits(UNLIMITED, UNLIMITED, UNLIMITED)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"tcp": {"maxConnections": 10}, "http": {"http1MaxPendingRequests": 5}},
            Limits(max_active=UNLIMITED, max_in_flight=15, max_retries=UNLIMITED),
        ),
        ({"tcp": {"maxConnections": 10}}, Limits(UNLIMITED, 10 + UNLIMITED, UNLIMITED)),
        ({"http": {"http1MaxPendingRequests": 5}}, Limits(UNLIMITED, UNLIMITED, UNLIMITED)),
        ({"http": {"http2MaxRequests": 7}}, Limits(7, UNLIMITED, UNLIMITED)),
        ({"http": {"maxRetries": 2}}, Limits(UNLIMITED, UNLIMITED, 2)),
        (
            {
                "tcp": {"maxConnections": 1},
                "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 3, "maxRetries": 4},
            },
            Limits(max_active=3, max_in_flight=2, max_retries=4),
        ),
        ({"tcp": {"maxConnections": 0}}, Limits(UNLIMITED, UNLIMITED, UNLIMITED)),
        ({"http": {"http2MaxRequests": 0}}, Limits(UNLIMITED, UNLIMITED, UNLIMITED)),
    ],
)
def test_limits_from_connection_pool(settings: dict[str, Any], expected: Limits) -> None:
    assert pool(**settings) == expected


def test_zero_max_retries_means_unset_as_in_istio() -> None:
    # Istio (applyConnectionPool) copies maxRetries only when > 0; otherwise the cluster
    # keeps Istio's default threshold of 2^32-1. 0 must not forbid every retry.
    assert pool(http={"maxRetries": 0}).max_retries == UNLIMITED


def test_zero_pending_requests_means_unset_as_in_istio() -> None:
    # Istio copies http1MaxPendingRequests only when > 0, as it does maxConnections and
    # http2MaxRequests: 0 is the same as leaving the field out.
    zero = pool(tcp={"maxConnections": 2}, http={"http1MaxPendingRequests": 0})
    assert zero == pool(tcp={"maxConnections": 2})


def test_admit_refuses_at_the_limit_and_release_frees_a_slot() -> None:
    limited = cluster(connectionPool={"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}})
    state = state_of(limited)
    assert state.admit(limited, A) is True
    assert state.admit(limited, B) is True
    assert state.admit(limited, A) is False
    assert (state.in_flight, state.active) == (2, {A.key: 1, B.key: 1})
    state.release(A)
    assert (state.in_flight, state.active) == (1, {A.key: 0, B.key: 1})
    assert state.admit(limited, None) is True  # a request to the host as it is takes a slot too
    assert state.admit(limited, A) is False
    state.release(None)
    assert state.in_flight == 1


def test_max_active_requests() -> None:
    limited = cluster(connectionPool={"http": {"http2MaxRequests": 1}})
    state = state_of(limited)
    assert [state.admit(limited, A), state.admit(limited, B)] == [True, False]


def test_admit_retry_limits_retries_in_flight() -> None:
    limited = cluster(connectionPool={"http": {"maxRetries": 1}})
    state = state_of(limited)
    assert state.admit_retry(limited) is True
    assert state.admit_retry(limited) is False
    state.release_retry()
    assert state.retries_in_flight == 0
    assert state.admit_retry(limited) is True


def test_limits_are_computed_once_per_cluster_object() -> None:
    first = cluster(connectionPool={"http": {"http2MaxRequests": 3}})
    state = state_of(first)
    assert state.limits(first) is state.limits(first)
    assert state.limits(first).max_active == 3
    other = cluster(connectionPool={"http": {"http2MaxRequests": 5}})
    assert state.limits(other).max_active == 5
    assert state.limits(first).max_active == 3  # not the other cluster's, cached or not


# --- picking -----------------------------------------------------------------------------


def test_pick_prefers_endpoints_not_tried() -> None:
    three = cluster((A, B, C))
    state = state_of(three)
    for _ in range(50):
        assert state.pick(three, None, (A, B)) == C
    assert {state.pick(three, None, (A, B, C)) for _ in range(200)} == {A, B, C}  # all tried: any
    alone = cluster((A,))
    single = state_of(alone)
    assert single.pick(alone, None, (A,)) == A


def test_pick_skips_ejected_endpoints() -> None:
    found = cluster((A, B), outlierDetection={"consecutive5xxErrors": 2})
    state = state_of(found)
    state.record(A, Outcome.GATEWAY_ERROR)
    assert A in {state.pick(found, None) for _ in range(200)}
    state.record(A, Outcome.GATEWAY_ERROR)
    assert {state.pick(found, None) for _ in range(200)} == {B}


def test_pick_uses_the_endpoints_of_the_cluster_it_is_given() -> None:
    old = cluster((A, B))
    state = state_of(old, version=1)
    new = cluster((C,))
    state.refresh(new, 2)
    assert state.cluster is new
    # A request still on the old snapshot picks among the old endpoints, never C.
    assert {state.pick(old, None) for _ in range(200)} == {A, B}
    assert {state.pick(new, None) for _ in range(50)} == {C}


# --- balancers -----------------------------------------------------------------------------


def test_balancer_is_built_once_per_endpoints_and_settings() -> None:
    state = state_of(cluster((A, B)))
    first = state.balancer(cluster((A, B)))
    assert isinstance(first, LeastRequest)  # Istio's default
    assert state.balancer(cluster((A, B))) is first  # an equal Cluster from another snapshot
    assert state.balancer(cluster((A, C))) is not first
    round_robin = state.balancer(cluster((A, B), loadBalancer={"simple": "ROUND_ROBIN"}))
    assert isinstance(round_robin, RoundRobin)
    assert round_robin is not first
    assert state.balancer(cluster((A, B))) is first  # both kept while they are in use


def test_balancers_alternating_between_two_configurations_are_reused() -> None:
    state = state_of(cluster((A, B)))
    old = cluster((A, B), loadBalancer={"simple": "RANDOM"})
    new = cluster((A, C), loadBalancer={"simple": "ROUND_ROBIN"})
    seen: dict[str, set[int]] = {"old": set(), "new": set()}
    for _ in range(10):
        seen["old"].add(id(state.balancer(old)))
        seen["new"].add(id(state.balancer(new)))
    assert len(seen["old"]) == len(seen["new"]) == 1
    assert isinstance(state.balancer(old), RandomBalancer)
    assert isinstance(state.balancer(new), RoundRobin)


def test_at_most_four_balancers_are_kept_the_oldest_goes_first() -> None:
    state = state_of(cluster((A,)))
    configs = [cluster((A,)), cluster((B,)), cluster((C,)), cluster((A, B)), cluster((A, C))]
    built = [state.balancer(c) for c in configs]
    assert len(set(map(id, built))) == 5
    assert len(state._balancers) == 4
    assert state.balancer(configs[4]) is built[4]
    assert state.balancer(configs[1]) is built[1]
    assert state.balancer(configs[0]) is not built[0]  # evicted: built again


def test_least_request_sees_active_counts_across_configurations() -> None:
    old = cluster((A, B))
    state = state_of(old)
    assert state.admit(old, A) is True  # a request of the old snapshot is busy on A
    new = cluster((A, C))
    state.refresh(new, 2)
    assert isinstance(state.balancer(new), LeastRequest)
    assert state.active == {A.key: 1}
    # Least request on the new configuration still sees A busy: the other one always wins.
    assert {state.pick(new, None) for _ in range(200)} == {C}
    state.release(A)
    assert state.in_flight == 0
    assert {state.pick(new, None) for _ in range(200)} == {A, C}


def test_balancer_with_locality_failover_settings() -> None:
    # localityLbSetting.failover holds plain dicts: the balancer cache must not need to hash them.
    found = cluster(
        (A, B),
        loadBalancer={
            "simple": "ROUND_ROBIN",
            "localityLbSetting": {"enabled": True, "failover": [{"from": "us-east", "to": "us-west"}]},
        },
    )
    state = state_of(found)
    assert {state.pick(found, None) for _ in range(20)} == {A, B}
    assert state.balancer(found) is state.balancer(found)


# --- refresh -----------------------------------------------------------------------------


def test_refresh_keeps_outlier_state_and_active_counts() -> None:
    clock = FakeClock()
    old = cluster((A, B), outlierDetection={"consecutive5xxErrors": 2, "baseEjectionTime": "30s"})
    state = state_of(old, clock)
    detector = state.outlier
    assert detector is not None
    state.record(A, Outcome.GATEWAY_ERROR)
    state.record(A, Outcome.GATEWAY_ERROR)
    assert state.admit(old, B) is True
    new = cluster(
        (A, B),
        outlierDetection={"consecutive5xxErrors": 3, "baseEjectionTime": "30s"},
        loadBalancer={"simple": "ROUND_ROBIN"},
    )
    state.refresh(new, 2)
    assert (state.cluster, state.version) == (new, 2)
    assert state.outlier is detector
    assert detector.is_ejected(A.key) is True
    assert {state.pick(new, None) for _ in range(100)} == {B}
    assert (state.in_flight, state.active) == (1, {B.key: 1})
    assert isinstance(state.balancer(new), RoundRobin)
    state.release(B)
    assert (state.in_flight, state.active) == (0, {B.key: 0})
    clock.now += 30.0
    assert {state.pick(new, None) for _ in range(100)} == {A, B}  # back after its ejection time


def test_refresh_with_the_same_cluster_object_changes_nothing() -> None:
    found = cluster(outlierDetection={"consecutive5xxErrors": 1}, retryBudget={"percent": 20})
    state = state_of(found, version=3)
    outlier, budget = state.outlier, state.budget
    state.refresh(found, 4)
    assert (state.cluster, state.version) == (found, 3)
    assert state.outlier is outlier
    assert state.budget is budget


def test_each_request_is_limited_by_its_own_clusters_pool() -> None:
    old = cluster(connectionPool={"http": {"http2MaxRequests": 1}})
    state = state_of(old)
    assert state.admit(old, A) is True
    assert state.admit(old, B) is False
    new = cluster(connectionPool={"http": {"http2MaxRequests": 2}})
    state.refresh(new, 2)
    assert state.limits(new).max_active == 2
    assert state.admit(old, B) is False  # a request of the old snapshot: still 1
    assert state.admit(new, B) is True  # the request in flight still counts: 2 of 2
    assert state.admit(new, A) is False


def test_outlier_detection_removed_and_added_again() -> None:
    state = state_of(cluster(outlierDetection={"consecutive5xxErrors": 1}))
    state.record(A, Outcome.GATEWAY_ERROR)
    plain = cluster()
    state.refresh(plain, 2)
    assert state.outlier is None
    assert {state.pick(plain, None) for _ in range(100)} == {A, B}
    state.refresh(cluster(outlierDetection={"consecutive5xxErrors": 1}), 3)
    assert state.outlier is not None
    assert state.outlier.is_ejected(A.key) is False  # a new detector starts clean


def test_no_budget_without_retry_budget() -> None:
    state = state_of(cluster(connectionPool={"http": {"maxRetries": 5}}))
    assert state.budget is None


def test_budget_from_policy_survives_refresh_while_unchanged() -> None:
    clock = FakeClock()
    state = state_of(cluster(retryBudget={"percent": 50, "minRetryConcurrency": 1}), clock)
    budget = state.budget
    assert budget is not None
    assert (budget.percent, budget.min_retries) == (50, 1)
    for _ in range(4):
        budget.deposit()
    assert budget.try_withdraw() is True
    assert budget.balance() == 2  # 1 + 50% of 4 - 1
    state.refresh(cluster((A, C), retryBudget={"percent": 50, "minRetryConcurrency": 1}), 2)
    assert state.budget is budget
    assert budget.balance() == 2
    state.refresh(cluster((A, C), retryBudget={"percent": 20, "minRetryConcurrency": 1}), 3)
    assert state.budget is not budget
    assert state.budget is not None
    assert state.budget.percent == 20
    state.refresh(cluster((A, C)), 4)
    assert state.budget is None


# --- older snapshots never win ---------------------------------------------------------------


def test_an_older_snapshot_never_resets_outlier_settings_or_budget() -> None:
    v1 = cluster(outlierDetection={"consecutive5xxErrors": 1}, retryBudget={"percent": 50})
    state = state_of(v1, version=1)
    v2 = cluster(outlierDetection={"consecutive5xxErrors": 3}, retryBudget={"percent": 20})
    state.refresh(v2, 2)
    detector, budget = state.outlier, state.budget
    assert budget is not None
    assert budget.percent == 20
    for stale in (v1, cluster(outlierDetection={"consecutive5xxErrors": 1})):
        state.refresh(stale, 1)  # a request still running on snapshot 1
        assert (state.cluster, state.version) == (v2, 2)
        assert state.outlier is detector
        assert state.budget is budget
        assert budget.percent == 20
    state.refresh(cluster(), 2)  # another Cluster of the same version: not newer either
    assert state.cluster is v2
    # Snapshot 2's threshold still applies: one 5xx does not eject (snapshot 1's would).
    state.record(A, Outcome.ERROR_5XX)
    assert detector is not None
    assert detector.is_ejected(A.key) is False
    state.record(A, Outcome.ERROR_5XX)
    state.record(A, Outcome.ERROR_5XX)
    assert detector.is_ejected(A.key) is True


def test_an_older_snapshot_does_not_remove_outlier_detection() -> None:
    v2 = cluster(outlierDetection={"consecutive5xxErrors": 1})
    state = state_of(v2, version=2)
    state.record(A, Outcome.GATEWAY_ERROR)
    v1 = cluster()  # snapshot 1 had no outlier detection
    state.refresh(v1, 1)
    assert state.outlier is not None
    assert state.outlier.is_ejected(A.key) is True
    assert {state.pick(v1, None) for _ in range(100)} == {B}  # ejections apply to every request


# --- Clusters ------------------------------------------------------------------------------


def test_clusters_share_state_per_key_and_refresh_it() -> None:
    clock = FakeClock()
    clusters = Clusters(clock, random.Random(1))
    first = cluster(outlierDetection={"consecutive5xxErrors": 1})
    state = clusters.get(first, 1)
    assert state.version == 1
    assert clusters.get(first, 1) is state
    state.record(A, Outcome.GATEWAY_ERROR)
    newer = cluster(outlierDetection={"consecutive5xxErrors": 1}, loadBalancer={"simple": "RANDOM"})
    assert clusters.get(newer, 2) is state
    assert (state.cluster, state.version) == (newer, 2)
    assert state.outlier is not None
    assert state.outlier.is_ejected(A.key) is True
    other = Cluster(HOST, "v2", 9080, (C,), TrafficPolicy(), True)
    assert clusters.get(other, 2) is not state
    assert len(clusters.states()) == 2


def test_clusters_alternating_planes_keep_the_newest_settings() -> None:
    clusters = Clusters(FakeClock(), random.Random(1))
    v1 = cluster(retryBudget={"percent": 50})
    v2 = cluster(retryBudget={"percent": 10})
    state = clusters.get(v1, 1)
    assert clusters.get(v2, 2) is state
    budget = state.budget
    for _ in range(5):
        assert clusters.get(v1, 1) is state
        assert clusters.get(v2, 2) is state
    assert (state.cluster, state.version) == (v2, 2)
    assert state.budget is budget  # never rebuilt by the flip-flop
    assert budget is not None
    assert budget.percent == 10


def test_clusters_of_two_families_do_not_share_state() -> None:
    clusters = Clusters(FakeClock(), random.Random(1))
    http = Cluster(HOST, None, 9080, (A,), TrafficPolicy(), True, "http")
    grpc = Cluster(HOST, None, 9080, (B,), TrafficPolicy(), True, "grpc")
    assert clusters.get(http, 1) is not clusters.get(grpc, 1)
    assert len(clusters.states()) == 2
