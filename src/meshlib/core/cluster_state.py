"""What the data plane remembers about a cluster between requests and across snapshots.

A ``Cluster`` (from the RoutingTable) is configuration and changes with every snapshot;
its ``ClusterState`` lives as long as the process: active request counts, outlier
ejections, the retry budget and the load balancer's position carry over when policy
or endpoints change, so a config push neither forgets an ejection nor resets counts.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .balancer import Balancer, build_balancer
from .locality import Locality, LocalityPlan, plan_localities
from .outlier import Outcome, OutlierDetector
from .retry_budget import RetryBudget
from .routing_table import Cluster
from .slow_start import slow_start_of
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
    # How long a connection may serve (the adapter retires it from reuse past any of these):
    requests_per_connection: int = 0  # maxRequestsPerConnection (0: unlimited)
    idle_timeout: float | None = None  # http.idleTimeout (else tcp.idleTimeout): idle this long
    max_connection_duration: float | None = None  # tcp.maxConnectionDuration: since it opened
    connect_timeout: float | None = None  # tcp.connectTimeout (None: Istio's default, 10 s)

    shapes_connections: bool = False  # any of the three above: responses are counted per connection

    @staticmethod
    def from_cluster(cluster: Cluster) -> Limits:
        pool = cluster.policy.connection_pool
        if pool is None:
            return Limits()
        tcp, http = pool.tcp, pool.http
        per_connection = http.max_requests_per_connection or 0 if http is not None else 0
        idle = http.idle_timeout if http is not None else None
        if idle is None:  # http's own setting wins, 0s (off) included
            idle = tcp.idle_timeout if tcp is not None else None
        lifetime = tcp.max_connection_duration if tcp is not None else None
        connect = tcp.connect_timeout if tcp is not None else None
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
        return Limits(
            max_active=active,
            max_in_flight=in_flight,
            max_retries=retries,
            requests_per_connection=per_connection,
            idle_timeout=idle or None,
            max_connection_duration=lifetime or None,
            connect_timeout=connect or None,
            shapes_connections=bool(per_connection or idle or lifetime),
        )


@dataclass
class ClusterState:
    """Shared by every request to one cluster, whatever snapshot each started on.

    Settings that must not flip back and forth (outlier detection, retry budget) follow the
    newest snapshot only. Endpoints, the balancer and the pool limits a request uses come
    from *its own* snapshot's Cluster: a request never mixes two configurations."""

    cluster: Cluster
    clock: Clock
    rng: random.Random
    version: int = -1
    locality: Locality = field(default_factory=Locality)  # the caller's (this process's)
    labels: Mapping[str, str] = field(default_factory=dict)  # the caller's, for failoverPriority
    active: dict[tuple[str, int], int] = field(default_factory=dict)
    in_flight: int = 0
    retries_in_flight: int = 0
    outlier: OutlierDetector | None = field(init=False, default=None)
    budget: RetryBudget | None = field(init=False, default=None)  # only when the policy sets one
    _balancers: dict[tuple[object, ...], Balancer] = field(default_factory=dict, repr=False)
    _last_balancer: tuple[Cluster, Balancer] | None = field(default=None, repr=False)
    _limits: tuple[Cluster, Limits] | None = field(default=None, repr=False)
    _plan: tuple[Cluster, LocalityPlan | None] | None = field(default=None, repr=False)
    # Slow start: when each endpoint that joined after the first Cluster was first seen.
    _born: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)
    _members: frozenset[tuple[str, int]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._configure(self.cluster)

    def refresh(self, cluster: Cluster, version: int) -> None:
        """Take the settings of a newer snapshot's Cluster; an older one changes nothing. Within
        one snapshot, a Cluster of newer DNS answers (higher ``generation``) is newer."""
        if cluster is self.cluster or (version, cluster.generation) <= (
            self.version,
            self.cluster.generation,
        ):
            return
        with self._lock:
            if (version, cluster.generation) <= (self.version, self.cluster.generation):
                return
            old, self.cluster, self.version = self.cluster, cluster, version
            self._configure(cluster, old)

    def _configure(self, cluster: Cluster, old: Cluster | None = None) -> None:
        policy = cluster.policy
        if policy.retry_budget is None:
            self.budget = None  # Istio: no budget unless configured (maxRetries still applies)
        elif old is None or self.budget is None or policy.retry_budget != old.policy.retry_budget:
            self.budget = RetryBudget.from_policy(policy.retry_budget, self.clock)
        settings = policy.outlier_detection
        if settings is None:
            self.outlier = None
        elif self.outlier is None:
            self.outlier = OutlierDetector(settings, self.clock)
        else:
            self.outlier.update_settings(settings)
        if self.outlier is not None:
            self.outlier.set_endpoints([e.key for e in cluster.endpoints])
        members = frozenset(e.key for e in cluster.endpoints)
        if self._members is not None:  # the first endpoints are not warmed up (Envoy)
            now = self.clock()
            self._born = {k: t for k, t in self._born.items() if k in members}
            self._born.update((k, now) for k in members - self._members)
        self._members = members

    def balancer(self, cluster: Cluster) -> Balancer:
        """The balancer for a cluster's endpoints and settings, built once and kept while in use
        (a Maglev table costs tens of ms: never rebuilt per request, nor per snapshot flip)."""
        last = self._last_balancer
        if last is not None and last[0] is cluster:
            return last[1]  # the common case: one lookup by identity, no hashing
        lb = cluster.policy.load_balancer
        key = (cluster.endpoints, lb.model_dump_json() if lb is not None else None)  # dicts inside: JSON
        found = self._balancers.get(key)
        if found is None:
            found = build_balancer(lb, cluster.endpoints, self._active_of, self.rng)
            with self._lock:
                if len(self._balancers) >= 4:  # the current few configurations are enough
                    self._balancers.pop(next(iter(self._balancers)))
                self._balancers[key] = found
        self._last_balancer = (cluster, found)
        return found

    def limits(self, cluster: Cluster) -> Limits:
        cached = self._limits
        if cached is not None and cached[0] is cluster:
            return cached[1]
        limits = Limits.from_cluster(cluster)
        self._limits = (cluster, limits)
        return limits

    def locality_plan(self, cluster: Cluster) -> LocalityPlan | None:
        """Locality priorities (or distribute shares) for a cluster, planned once per Cluster."""
        cached = self._plan
        if cached is not None and cached[0] is cluster:
            return cached[1]
        lb = cluster.policy.load_balancer
        plan = plan_localities(
            cluster.endpoints,
            self.locality,
            self.labels,
            lb.locality_lb_setting if lb is not None else None,
            cluster.policy.outlier_detection is not None,
        )
        self._plan = (cluster, plan)
        return plan

    def _active_of(self, endpoint: Endpoint) -> int:
        return self.active.get(endpoint.key, 0)

    # --- per attempt --------------------------------------------------------------------

    def pick(
        self,
        cluster: Cluster,
        hash_key: bytes | None,
        exclude: Sequence[Endpoint] = (),
        other_locality: Sequence[Endpoint] = (),
    ) -> Endpoint | None:
        """An endpoint of ``cluster``: not ejected, in the locality priority traffic goes to,
        preferably not one already tried. ``other_locality``: endpoints already tried whose
        priorities a retry leaves (retryRemoteLocalities)."""
        endpoints: Sequence[Endpoint] = cluster.endpoints
        if self.outlier is not None:
            endpoints = self.outlier.healthy(endpoints, _key)
        plan = self.locality_plan(cluster) if self.locality.region else None  # no __bool__ call
        if plan is not None:
            avoid = {level for e in other_locality if (level := plan.level_of(e)) is not None}
            endpoints = plan.choose(endpoints, self.rng, avoid)
        if exclude and len(endpoints) > 1:
            fresh = tuple(e for e in endpoints if e not in exclude)
            endpoints = fresh or endpoints
        if self._born:
            warm = slow_start_of(cluster.policy.load_balancer)
            weighted = warm.weighted(endpoints, self._born, self.clock()) if warm is not None else None
            if weighted is not None:
                picked = self.balancer(cluster).pick(weighted, hash_key)
                return None if picked is None else next(e for e in endpoints if e.key == picked.key)
        return self.balancer(cluster).pick(endpoints, hash_key)

    def admit(self, cluster: Cluster, endpoint: Endpoint | None) -> bool:
        """Take an in-flight slot, or refuse (UO) when the pool limits are reached."""
        limits = self.limits(cluster)
        with self._lock:
            if self.in_flight >= limits.max_active or self.in_flight >= limits.max_in_flight:
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

    def admit_retry(self, cluster: Cluster) -> bool:
        limits = self.limits(cluster)
        with self._lock:
            if self.retries_in_flight >= limits.max_retries:
                return False
            self.retries_in_flight += 1
            return True

    def release_retry(self) -> None:
        with self._lock:
            self.retries_in_flight -= 1

    def record(self, endpoint: Endpoint | None, outcome: Outcome) -> bool:
        """Feed outlier detection; True when this outcome ejected the endpoint."""
        if self.outlier is not None and endpoint is not None:
            return self.outlier.record(endpoint.key, outcome)
        return False


def _key(endpoint: Endpoint) -> tuple[str, int]:
    return endpoint.key


class Clusters:
    """Every cluster's state in this process, shared by all clients of one Mesh."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random | None = None,
        *,
        locality: Locality | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self._states: dict[tuple[str, str, str | None, int | None], ClusterState] = {}
        self.locality = locality or Locality()
        self.labels = dict(labels or {})
        self._lock = threading.Lock()
        self.clock = clock
        self.rng = rng or random.Random()
        self.current_version: int | None = None  # the snapshot the Mesh holds now

    def get(self, cluster: Cluster, version: int) -> ClusterState:
        """The state of a cluster, updated to ``version``'s settings if that is the newest."""
        state = self._states.get(cluster.key)
        if state is None:
            with self._lock:
                state = self._states.get(cluster.key)
                if state is None:
                    state = self._states[cluster.key] = ClusterState(
                        cluster, self.clock, self.rng, version, self.locality, self.labels
                    )
                    return state
        if state.cluster is not cluster:
            if version == self.current_version and version < state.version:
                state.version = -1  # numbering restarted (a fresh config store): the current rules
            state.refresh(cluster, version)
        return state

    def states(self) -> list[ClusterState]:
        return list(self._states.values())
