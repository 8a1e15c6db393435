"""What the data plane remembers about a cluster between requests and across snapshots.

A ``Cluster`` (from the DataPlane) is configuration and changes with every snapshot;
its ``ClusterState`` lives as long as the process: active request counts, outlier
ejections, the retry budget and the load balancer's position carry over when policy
or endpoints change, so a config push neither forgets an ejection nor resets counts.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .balancer import Balancer, build_balancer
from .dataplane import Cluster
from .outlier import Outcome, OutlierDetector
from .retry_budget import RetryBudget
from .snapshot import Endpoint

__all__ = ["ClusterState", "Clusters", "Limits"]

Clock = Callable[[], float]
_UNLIMITED = 1 << 32


@dataclass(frozen=True, slots=True)
class Limits:
    """connectionPool as Envoy enforces it: overflow is refused at once, never queued."""

    max_active: int = _UNLIMITED  # http2MaxRequests: requests in flight
    max_in_flight: int = _UNLIMITED  # maxConnections + http1MaxPendingRequests
    max_retries: int = _UNLIMITED  # maxRetries: retries in flight

    @staticmethod
    def from_cluster(cluster: Cluster) -> Limits:
        pool = cluster.policy.connection_pool
        if pool is None:
            return Limits()
        tcp, http = pool.tcp, pool.http
        connections = tcp.max_connections if tcp is not None and tcp.max_connections else None
        # Istio copies these only when above 0; 0 means "unset", as for the others.
        pending = (
            http.http1_max_pending_requests if http is not None and http.http1_max_pending_requests else None
        )
        active = http.http2_max_requests if http is not None and http.http2_max_requests else _UNLIMITED
        retries = http.max_retries if http is not None and http.max_retries else _UNLIMITED
        in_flight = _UNLIMITED
        if connections is not None:
            # Envoy's HTTP/1 pool: one request per connection, the rest wait in a pending
            # queue of http1MaxPendingRequests (unset: effectively unbounded).
            in_flight = connections + (pending if pending is not None else _UNLIMITED)
        return Limits(max_active=active, max_in_flight=in_flight, max_retries=retries)


@dataclass
class ClusterState:
    cluster: Cluster
    clock: Clock
    rng: random.Random
    active: dict[tuple[str, int], int] = field(default_factory=dict)
    in_flight: int = 0
    retries_in_flight: int = 0
    limits: Limits = field(default_factory=Limits)
    balancer: Balancer = field(init=False)
    outlier: OutlierDetector | None = field(init=False, default=None)
    budget: RetryBudget | None = field(init=False, default=None)  # only when the policy sets one
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._configure(self.cluster)

    def refresh(self, cluster: Cluster) -> None:
        """A new snapshot's view of this cluster: keep the state, take the new settings."""
        if cluster is self.cluster:
            return
        old, self.cluster = self.cluster, cluster
        self._configure(cluster, old)

    def _configure(self, cluster: Cluster, old: Cluster | None = None) -> None:
        policy = cluster.policy
        self.limits = Limits.from_cluster(cluster)
        if policy.retry_budget is None:
            self.budget = None  # Istio: no budget unless configured (maxRetries still applies)
        elif old is None or self.budget is None or policy.retry_budget != old.policy.retry_budget:
            self.budget = RetryBudget.from_policy(policy.retry_budget, self.clock)
        if (
            old is None
            or old.endpoints != cluster.endpoints
            or old.policy.load_balancer != policy.load_balancer
        ):
            self.balancer = build_balancer(policy.load_balancer, cluster.endpoints, self._active_of, self.rng)
        settings = policy.outlier_detection
        if settings is None:
            self.outlier = None
        elif self.outlier is None:
            self.outlier = OutlierDetector(settings, self.clock)
        else:
            self.outlier.update_settings(settings)
        if self.outlier is not None:
            self.outlier.set_endpoints([e.key for e in cluster.endpoints])

    def _active_of(self, endpoint: Endpoint) -> int:
        return self.active.get(endpoint.key, 0)

    # --- per attempt --------------------------------------------------------------------

    def pick(self, hash_key: bytes | None, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """An endpoint: not ejected, preferably not one already tried, chosen by the balancer."""
        endpoints: Sequence[Endpoint] = self.cluster.endpoints
        if self.outlier is not None:
            endpoints = self.outlier.healthy(endpoints, _key)
        if exclude and len(endpoints) > 1:
            fresh = tuple(e for e in endpoints if e not in exclude)
            endpoints = fresh or endpoints
        return self.balancer.pick(endpoints, hash_key)

    def admit(self, endpoint: Endpoint | None) -> bool:
        """Take an in-flight slot, or refuse (UO) when the pool limits are reached."""
        with self._lock:
            if self.in_flight >= self.limits.max_active or self.in_flight >= self.limits.max_in_flight:
                return False
            self.in_flight += 1
            if endpoint is not None:
                self.active[endpoint.key] = self.active.get(endpoint.key, 0) + 1
            return True

    def release(self, endpoint: Endpoint | None) -> None:
        with self._lock:
            self.in_flight -= 1
            if endpoint is not None:
                self.active[endpoint.key] -= 1

    def admit_retry(self) -> bool:
        with self._lock:
            if self.retries_in_flight >= self.limits.max_retries:
                return False
            self.retries_in_flight += 1
            return True

    def release_retry(self) -> None:
        with self._lock:
            self.retries_in_flight -= 1

    def record(self, endpoint: Endpoint | None, outcome: Outcome) -> None:
        if self.outlier is not None and endpoint is not None:
            self.outlier.record(endpoint.key, outcome)


def _key(endpoint: Endpoint) -> tuple[str, int]:
    return endpoint.key


class Clusters:
    """Every cluster's state in this process, shared by all clients of one Mesh."""

    def __init__(self, clock: Clock, rng: random.Random | None = None) -> None:
        self._states: dict[tuple[str, str | None, int | None], ClusterState] = {}
        self._lock = threading.Lock()
        self.clock = clock
        self.rng = rng or random.Random()

    def get(self, cluster: Cluster) -> ClusterState:
        state = self._states.get(cluster.key)
        if state is None:
            with self._lock:
                state = self._states.get(cluster.key)
                if state is None:
                    state = self._states[cluster.key] = ClusterState(cluster, self.clock, self.rng)
                    return state
        if state.cluster is not cluster:
            state.refresh(cluster)
        return state

    def states(self) -> list[ClusterState]:
        return list(self._states.values())
