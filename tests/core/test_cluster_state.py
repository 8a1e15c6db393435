"""Cluster state: connection pool limits, and what survives a new snapshot's Cluster."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshlib.core.balancer import LeastRequest, RoundRobin
from meshlib.core.cluster_state import Clusters, ClusterState, Limits
from meshlib.core.dataplane import Cluster
from meshlib.core.outlier import Outcome
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


def state_of(found: Cluster, clock: FakeClock | None = None) -> ClusterState:
    return ClusterState(found, clock or FakeClock(), random.Random(3))


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
    state = state_of(
        cluster(connectionPool={"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}})
    )
    assert state.admit(A) is True
    assert state.admit(B) is True
    assert state.admit(A) is False
    assert (state.in_flight, state.active) == (2, {A.key: 1, B.key: 1})
    state.release(A)
    assert (state.in_flight, state.active) == (1, {A.key: 0, B.key: 1})
    assert state.admit(None) is True  # a request to the host as it is takes a slot too
    assert state.admit(A) is False
    state.release(None)
    assert state.in_flight == 1


def test_max_active_requests() -> None:
    state = state_of(cluster(connectionPool={"http": {"http2MaxRequests": 1}}))
    assert [state.admit(A), state.admit(B)] == [True, False]


def test_admit_retry_limits_retries_in_flight() -> None:
    state = state_of(cluster(connectionPool={"http": {"maxRetries": 1}}))
    assert state.admit_retry() is True
    assert state.admit_retry() is False
    state.release_retry()
    assert state.retries_in_flight == 0
    assert state.admit_retry() is True


# --- picking -----------------------------------------------------------------------------


def test_pick_prefers_endpoints_not_tried() -> None:
    state = state_of(cluster((A, B, C)))
    for _ in range(50):
        assert state.pick(None, (A, B)) == C
    assert {state.pick(None, (A, B, C)) for _ in range(200)} == {A, B, C}  # all tried: any
    single = state_of(cluster((A,)))
    assert single.pick(None, (A,)) == A


def test_pick_skips_ejected_endpoints() -> None:
    state = state_of(cluster((A, B), outlierDetection={"consecutive5xxErrors": 2}))
    state.record(A, Outcome.GATEWAY_ERROR)
    assert A in {state.pick(None) for _ in range(200)}
    state.record(A, Outcome.GATEWAY_ERROR)
    assert {state.pick(None) for _ in range(200)} == {B}


# --- refresh -----------------------------------------------------------------------------


def test_refresh_keeps_outlier_state_and_active_counts() -> None:
    clock = FakeClock()
    old = cluster((A, B), outlierDetection={"consecutive5xxErrors": 2, "baseEjectionTime": "30s"})
    state = state_of(old, clock)
    detector = state.outlier
    assert detector is not None
    state.record(A, Outcome.GATEWAY_ERROR)
    state.record(A, Outcome.GATEWAY_ERROR)
    assert state.admit(B) is True
    new = cluster(
        (A, B),
        outlierDetection={"consecutive5xxErrors": 3, "baseEjectionTime": "30s"},
        loadBalancer={"simple": "ROUND_ROBIN"},
    )
    state.refresh(new)
    assert state.cluster is new
    assert state.outlier is detector
    assert detector.is_ejected(A.key) is True
    assert {state.pick(None) for _ in range(100)} == {B}
    assert (state.in_flight, state.active) == (1, {B.key: 1})
    assert isinstance(state.balancer, RoundRobin)
    state.release(B)
    assert (state.in_flight, state.active) == (0, {B.key: 0})
    clock.now += 30.0
    assert {state.pick(None) for _ in range(100)} == {A, B}  # back after its ejection time


def test_refresh_with_new_endpoints_rebuilds_the_balancer_and_keeps_counts() -> None:
    state = state_of(cluster((A, B)))
    before = state.balancer
    assert state.admit(A) is True
    state.refresh(cluster((A, B)))  # equal endpoints, equal policy: nothing to rebuild
    assert state.balancer is before
    state.refresh(cluster((A, C)))
    assert state.balancer is not before
    assert isinstance(state.balancer, LeastRequest)
    assert state.active == {A.key: 1}
    # Least request on the new balancer still sees A busy: the other one always wins.
    assert {state.pick(None) for _ in range(200)} == {C}
    state.release(A)
    assert state.in_flight == 0
    assert {state.pick(None) for _ in range(200)} == {A, C}


def test_refresh_with_the_same_cluster_object_changes_nothing() -> None:
    found = cluster()
    state = state_of(found)
    balancer, limits = state.balancer, state.limits
    state.refresh(found)
    assert (state.balancer, state.limits) == (balancer, limits)


def test_refresh_takes_new_limits() -> None:
    state = state_of(cluster(connectionPool={"http": {"http2MaxRequests": 1}}))
    assert state.admit(A) is True
    assert state.admit(B) is False
    state.refresh(cluster(connectionPool={"http": {"http2MaxRequests": 2}}))
    assert state.limits.max_active == 2
    assert state.admit(B) is True  # the request in flight still counts: 2 of 2
    assert state.admit(A) is False


def test_outlier_detection_removed_and_added_again() -> None:
    state = state_of(cluster(outlierDetection={"consecutive5xxErrors": 1}))
    state.record(A, Outcome.GATEWAY_ERROR)
    state.refresh(cluster())
    assert state.outlier is None
    assert {state.pick(None) for _ in range(100)} == {A, B}
    state.refresh(cluster(outlierDetection={"consecutive5xxErrors": 1}))
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
    state.refresh(cluster((A, C), retryBudget={"percent": 50, "minRetryConcurrency": 1}))
    assert state.budget is budget
    assert budget.balance() == 2
    state.refresh(cluster((A, C), retryBudget={"percent": 20, "minRetryConcurrency": 1}))
    assert state.budget is not budget
    assert state.budget is not None
    assert state.budget.percent == 20
    state.refresh(cluster((A, C)))
    assert state.budget is None


# --- Clusters ------------------------------------------------------------------------------


def test_clusters_share_state_per_key_and_refresh_it() -> None:
    clock = FakeClock()
    clusters = Clusters(clock, random.Random(1))
    first = cluster(outlierDetection={"consecutive5xxErrors": 1})
    state = clusters.get(first)
    assert clusters.get(first) is state
    state.record(A, Outcome.GATEWAY_ERROR)
    newer = cluster(outlierDetection={"consecutive5xxErrors": 1}, loadBalancer={"simple": "RANDOM"})
    assert clusters.get(newer) is state
    assert state.cluster is newer
    assert state.outlier is not None
    assert state.outlier.is_ejected(A.key) is True
    other = Cluster(HOST, "v2", 9080, (C,), TrafficPolicy(), True)
    assert clusters.get(other) is not state
    assert len(clusters.states()) == 2
