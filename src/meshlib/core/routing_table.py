"""The data plane's view of one snapshot for one workload: compiled routes and clusters.

Built once per snapshot, off the request path; a request takes the RoutingTable once and
uses it throughout. Routes that cannot apply to this caller (other gateways, other
``sourceLabels`` or ``sourceNamespace``) are dropped here, so the request path only
evaluates what it can match at run time.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..names import is_srv_name
from ..policy.destination_rule import TrafficPolicy
from ..policy.resources import ResourceKey, VirtualService
from ..policy.virtual_service import (
    Destination,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    Headers,
    HTTPDirectResponse,
    HTTPRedirect,
    HTTPRewrite,
    HTTPRoute,
)
from .call import Call
from .delegation import merge_delegate_route
from .dns import Record
from .hosts import host_matches, normalize_host
from .matching import Predicate, compile_matches
from .retry_policy import RetryPolicy, compile_retry_policy
from .snapshot import Endpoint, Snapshot, exported_to, passthrough_endpoint

__all__ = ["Cluster", "HeaderOps", "HostRoutes", "Resolved", "Route", "RoutingTable", "Target"]

NON_IDEMPOTENT_ANNOTATION = "retry.meshlib.io/non-idempotent"
Family = Literal["http", "grpc"]
Resolved = Mapping[str, tuple[Record, ...]]
"""DNS name -> the addresses (or SRV targets) it resolved to (no entry: not yet)."""
_NOTHING_RESOLVED: Resolved = {}
_MAX_CACHED = 10_000  # hosts come from callers: caches keyed by them stay bounded


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """set / add / remove, names lower-cased, ready to apply to a header map."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @staticmethod
    def build(*sources: HeaderOperations | None) -> HeaderOps | None:
        ops = [s for s in sources if s is not None]
        if not ops:
            return None
        return HeaderOps(
            set=tuple((k.lower(), v) for o in ops for k, v in o.set.items()),
            add=tuple((k.lower(), v) for o in ops for k, v in o.add.items()),
            remove=tuple(k.lower() for o in ops for k in o.remove),
        )


def _ops(headers: Headers | None, which: str) -> HeaderOperations | None:
    return getattr(headers, which) if headers is not None else None


@dataclass(frozen=True, slots=True)
class Target:
    """One weighted destination of a route."""

    host: str
    subset: str | None
    port: int | None
    weight: int
    request_ops: HeaderOps | None = None
    response_ops: HeaderOps | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    delay: float | None
    delay_fraction: float
    abort_status: int | None
    abort_grpc: str | None
    abort_fraction: float

    @staticmethod
    def build(delay: FaultDelay | None, abort: FaultAbort | None) -> Fault:
        def fraction(percentage: object, percent: int | None) -> float:
            value = getattr(percentage, "value", None)
            if value is not None:
                return float(value) / 100.0
            return (percent or 0) / 100.0  # Istio: no percentage means no request

        return Fault(
            delay=delay.fixed_delay if delay is not None else None,
            delay_fraction=fraction(delay.percentage, delay.percent) if delay is not None else 0.0,
            abort_status=abort.http_status if abort is not None else None,
            abort_grpc=abort.grpc_status if abort is not None else None,
            abort_fraction=fraction(abort.percentage, None) if abort is not None else 0.0,
        )


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTPRoute, compiled: matching, weighted targets and everything applied on the way."""

    name: str
    matches: Predicate
    targets: tuple[Target, ...]
    cumulative: tuple[int, ...]
    retry: RetryPolicy
    timeout: float | None = None
    fault: Fault | None = None
    mirrors: tuple[tuple[Target, float], ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    rewrite: HTTPRewrite | None = None
    # uri prefixes of the match blocks (lower-cased with ignoreUriCase), for prefix rewrites
    prefixes: tuple[tuple[str, bool], ...] = ()
    request_ops: HeaderOps | None = None
    response_ops: HeaderOps | None = None

    def pick(self, rng: random.Random) -> Target:
        """A target by weight (one target: always it)."""
        if len(self.targets) == 1:
            return self.targets[0]
        point = rng.random() * self.cumulative[-1]
        return self.targets[bisect.bisect_right(self.cumulative, point)]


@dataclass(frozen=True, slots=True)
class HostRoutes:
    """The ordered routes of the VirtualService that owns a host; the first match wins."""

    host: str
    routes: tuple[Route, ...]

    def match(self, call: Call) -> Route | None:
        for route in self.routes:
            if route.matches(call):
                return route
        return None


@dataclass(frozen=True, slots=True)
class Cluster:
    """Where one (host, subset, port) leads: its endpoints and its traffic policy."""

    host: str
    subset: str | None
    port: int | None
    endpoints: tuple[Endpoint, ...]
    policy: TrafficPolicy
    known: bool  # a mesh host (registry, ServiceEntry or DestinationRule) rather than plain DNS
    family: str = "http"
    # Resolution NONE: the cluster of one original destination (``host`` is that address),
    # so outlier detection and pool limits count per original address.
    passthrough: bool = False
    generation: int = 0  # of the DNS answers its endpoints were expanded from

    @property
    def key(self) -> tuple[str, str, str | None, int | None]:
        return (self.family, self.host, self.subset, self.port)

    @property
    def stat_name(self) -> str:
        """Envoy's name for the cluster, as Istio's stats carry it:
        ``outbound|9080|v1|reviews.ns.svc.cluster.local``."""
        return f"outbound|{self.port or ''}|{self.subset or ''}|{self.host}"


def _always(_: Call) -> bool:
    return True


@dataclass
class RoutingTable:
    """Routes and clusters of one snapshot as seen by one workload (namespace + labels)."""

    snapshot: Snapshot
    namespace: str
    labels: Mapping[str, str]
    family: Family = "http"
    resolved: Resolved = field(default_factory=lambda: _NOTHING_RESOLVED, repr=False)
    generation: int = 0  # of ``resolved``: a table rebuilt for new DNS answers has a higher one
    routes: dict[str, HostRoutes] = field(default_factory=dict)
    _resolved_hosts: dict[tuple[str, int | None], str | None] = field(default_factory=dict, repr=False)
    _wildcards: list[tuple[str, HostRoutes]] = field(default_factory=list, repr=False)
    _defaults: dict[str, Route] = field(default_factory=dict, repr=False)
    _clusters: dict[tuple[str, str | None, int | None], Cluster] = field(default_factory=dict, repr=False)
    _originals: dict[tuple[str, str | None, int | None, str], Cluster] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def build(
        cls,
        snapshot: Snapshot,
        namespace: str,
        labels: Mapping[str, str],
        family: Family = "http",
        resolved: Resolved | None = None,
        generation: int = 0,
    ) -> RoutingTable:
        """``resolved``: DNS answers for the snapshot's resolution DNS names (from the
        background resolver; a name not in it yet is connected to by name)."""
        plane = cls(snapshot, namespace, dict(labels), family, resolved or _NOTHING_RESOLVED, generation)
        compiled: dict[ResourceKey, HostRoutes | None] = {}
        # exportTo: per host, the oldest VirtualService exported to this workload's namespace.
        owners = [
            (host, vs)
            for host in snapshot._vs_by_host
            if (vs := snapshot.virtual_service(host, namespace)) is not None
        ]
        owners += [(p, vs) for p, vs in snapshot.wildcard_virtual_services if exported_to(vs, namespace)]
        delegates = {
            (r.namespace, r.name): r
            for r in snapshot.resources
            if isinstance(r, VirtualService) and not r.spec.hosts
        }
        for host, vs in owners:
            if vs.key not in compiled:
                compiled[vs.key] = _compile_vs(vs, host, namespace, labels, delegates)
            found = compiled[vs.key]
            if found is None:
                continue
            if "*" in host:
                plane._wildcards.append((host, found))
            else:
                plane.routes[host] = found
        return plane

    def host_routes(self, fqdn: str) -> HostRoutes | None:
        """The routes that own a host: its own VirtualService, else the most specific wildcard."""
        found = self.routes.get(fqdn)
        if found is None and self._wildcards:
            for pattern, routes in self._wildcards:
                if host_matches(pattern, fqdn):
                    return routes
        return found

    @property
    def version(self) -> int:
        return self.snapshot.version

    def resolve(self, host: str, port: int | None = None) -> str | None:
        """The mesh host a requested host (and port, when known) names, or None: not a mesh
        host, pass it through."""
        key = (host, port)
        try:
            return self._resolved_hosts[key]
        except KeyError:
            pass
        found = self.snapshot.resolve_host(host, self.namespace, port)
        if len(self._resolved_hosts) < _MAX_CACHED:
            self._resolved_hosts[key] = found
        return found

    def default_route(self, fqdn: str) -> Route:
        """A host without a VirtualService: straight to itself, with Istio's default retries."""
        route = self._defaults.get(fqdn)
        if route is None:
            target = Target(fqdn, None, None, 100)
            route = self._defaults[fqdn] = Route(
                name="default",
                matches=_always,
                targets=(target,),
                cumulative=(100,),
                retry=compile_retry_policy(None),
            )
        return route

    def cluster(
        self, target: Target, request_port: int | None = None, original: str | None = None
    ) -> Cluster:
        """Where a target leads on a port. ``original``: the host the request named, which a
        resolution NONE service sends to (Envoy's ORIGINAL_DST cluster)."""
        port = target.port or request_port
        key = (target.host, target.subset, port)
        found = self._clusters.get(key)
        if found is None:
            found = self._clusters[key] = self._build_cluster(target.host, target.subset, port)
        if found.passthrough and original is not None:
            return self._original(found, original)
        return found

    def _original(self, template: Cluster, original: str) -> Cluster:
        key = (template.host, template.subset, template.port, original)
        found = self._originals.get(key)
        if found is None:
            entry = self.snapshot.service_entry(template.host, self.namespace)
            assert entry is not None
            endpoint = passthrough_endpoint(
                entry, template.host, original, template.port, self.snapshot.trust_domain
            )
            endpoints = (endpoint,) if endpoint is not None and endpoint.protocol in self._wanted() else ()
            found = dataclasses.replace(template, host=original, endpoints=endpoints)
            if len(self._originals) < _MAX_CACHED:
                self._originals[key] = found
        return found

    def _wanted(self) -> tuple[str, ...]:
        return ("grpc",) if self.family == "grpc" else ("http", "https")

    def _build_cluster(self, host: str, subset: str | None, port: int | None) -> Cluster:
        snap = self.snapshot
        policy = snap.traffic_policy(host, subset, port, self.namespace, self.labels) or TrafficPolicy()
        entry = snap.service_entry(host, self.namespace)
        if entry is not None and entry.spec.mode == "NONE":
            # Endpoints come per request: the original destination (see ``cluster``).
            return Cluster(host, subset, port, (), policy, True, self.family, passthrough=True)
        wanted = self._wanted()
        usable = tuple(
            e
            for e in self._expand(snap.endpoints(host, subset, self.namespace, self.labels))
            if e.ready and e.protocol in wanted
        )
        # A ServiceEntry with several ports: the request's port picks. A request on a default
        # port (80/443: no port in its URL) to a service with none of those takes any port.
        endpoints = tuple(e for e in usable if port is None or e.service_port in (None, port))
        if not endpoints and port in (80, 443):
            endpoints = usable
        known = (
            entry is not None
            or host in snap.endpoints_by_host
            or snap.destination_rule(host, self.namespace, self.labels) is not None
        )
        return Cluster(host, subset, port, endpoints, policy, known, self.family, generation=self.generation)

    def _expand(self, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """Resolution DNS (Envoy STRICT_DNS): each name becomes one endpoint per address it
        resolved to, each with the name's weight and labels; an SRV name one per address of
        each target, on the target's port, with its weight times the name's. A name not
        resolved yet stays as it is (connected to by name, through the system resolver; an
        SRV name has no endpoints until then); one that resolved to nothing has none."""
        if not any(e.dns for e in endpoints):
            return endpoints
        out: list[Endpoint] = []
        for endpoint in endpoints:
            records = self.resolved.get(endpoint.address) if endpoint.dns else None
            if records is None:
                if not (endpoint.dns and is_srv_name(endpoint.address)):
                    out.append(endpoint)
                continue
            for record in records:
                if isinstance(record, str):
                    out.append(dataclasses.replace(endpoint, address=record, dns=False))
                else:
                    out.append(
                        dataclasses.replace(
                            endpoint,
                            address=record.address,
                            port=record.port,
                            weight=endpoint.weight * record.weight,
                            dns=False,
                        )
                    )
        return tuple(out)


def _target(dest: Destination, weight: int, headers: Headers | None, vs_namespace: str) -> Target:
    return Target(
        host=normalize_host(dest.host, vs_namespace),
        subset=dest.subset,
        port=dest.port.number if dest.port is not None else None,
        weight=weight,
        request_ops=HeaderOps.build(_ops(headers, "request")),
        response_ops=HeaderOps.build(_ops(headers, "response")),
    )


def _compile_vs(
    vs: VirtualService,
    host: str,
    namespace: str,
    labels: Mapping[str, str],
    delegates: Mapping[tuple[str, str], VirtualService],
) -> HostRoutes | None:
    if not vs.spec.applies_to_mesh():
        return None  # bound to gateways only, not to sidecars
    non_idempotent = vs.metadata.annotations.get(NON_IDEMPOTENT_ANNOTATION, "").lower() == "true"
    routes = tuple(
        r
        for i, (spec, spec_namespace) in enumerate(_expand_delegates(vs, delegates))
        if (r := _compile_route(spec, i, spec_namespace, namespace, labels, non_idempotent)) is not None
    )
    return HostRoutes(host, routes)


def _expand_delegates(
    vs: VirtualService, delegates: Mapping[tuple[str, str], VirtualService]
) -> list[tuple[HTTPRoute, str]]:
    """The routes in order, a delegating route replaced by its delegate's merged routes
    (each with the namespace its destinations are read in). See delegation.py."""
    out: list[tuple[HTTPRoute, str]] = []
    for spec in vs.spec.http:
        if spec.delegate is None:
            out.append((spec, vs.namespace))
            continue
        child = delegates.get((spec.delegate.namespace or vs.namespace, spec.delegate.name))
        if child is None or not exported_to(child, vs.namespace):
            continue  # Istio: a delegate not found (or not exported to the root) drops the route
        for child_route in child.spec.http:
            merged = merge_delegate_route(spec, child_route)
            if merged is not None:
                out.append((merged, child.namespace))
    return out


def _compile_route(
    spec: HTTPRoute,
    index: int,
    vs_namespace: str,
    namespace: str,
    labels: Mapping[str, str],
    non_idempotent: bool,
) -> Route | None:
    matches = compile_matches(spec.match, namespace, labels)
    if matches is None:
        return None
    single = len(spec.route) == 1
    targets = tuple(
        _target(d.destination, 100 if single else d.weight, d.headers, vs_namespace) for d in spec.route
    )
    cumulative: list[int] = []
    running = 0
    for t in targets:
        running += t.weight
        cumulative.append(running)
    mirrors: list[tuple[Target, float]] = []
    if spec.mirror is not None:
        share = (
            spec.mirror_percentage.value
            if spec.mirror_percentage is not None
            else (spec.mirror_percent if spec.mirror_percent is not None else 100.0)
        )
        mirrors.append((_target(spec.mirror, 100, None, vs_namespace), share / 100.0))
    for mirror in spec.mirrors:
        share = mirror.percentage.value if mirror.percentage is not None else 100.0
        mirrors.append((_target(mirror.destination, 100, None, vs_namespace), share / 100.0))
    fault = Fault.build(spec.fault.delay, spec.fault.abort) if spec.fault is not None else None
    return Route(
        name=spec.name or f"route-{index}",
        matches=matches,
        targets=targets,
        cumulative=tuple(cumulative),
        # Istio: with a fault on the route, retries and timeouts are off.
        retry=compile_retry_policy(spec.retries, non_idempotent=non_idempotent)
        if fault is None
        else RetryPolicy(attempts=0),
        timeout=(spec.timeout or None) if fault is None else None,
        fault=fault,
        mirrors=tuple(mirrors),
        redirect=spec.redirect,
        direct_response=spec.direct_response,
        rewrite=spec.rewrite,
        prefixes=tuple(
            (m.uri.prefix.lower() if m.ignore_uri_case else m.uri.prefix, m.ignore_uri_case)
            for m in spec.match
            if m.uri is not None and m.uri.prefix is not None
        ),
        request_ops=HeaderOps.build(_ops(spec.headers, "request")),
        response_ops=HeaderOps.build(_ops(spec.headers, "response")),
    )
