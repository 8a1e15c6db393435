"""The compiled snapshot: every resource and endpoint at one version, indexed for lookups.

Building it is pure (no I/O) and it never changes afterwards; a new version is a new
Snapshot swapped in whole, so a request that started on one snapshot finishes on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ..policy.base import PolicyTargetReference, WorkloadSelector
from ..policy.destination_rule import Subset, TrafficPolicy
from ..policy.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    RateLimit,
    RequestAuthentication,
    Resource,
    ServiceEntry,
    VirtualService,
)
from ..policy.security import AuthorizationPolicySpec, RequestAuthenticationSpec
from ..registry import WorkloadRegistration
from .authz import Authorizer, compile_authorizer
from .hosts import CLUSTER_DOMAIN, host_candidates, host_matches, normalize_host

__all__ = [
    "ROOT_NAMESPACE",
    "Endpoint",
    "Snapshot",
    "WorkloadSecurity",
    "compile_snapshot",
    "entry_selects",
]

ROOT_NAMESPACE = "istio-system"
"""Policies here apply mesh-wide, as in Istio's default root namespace."""

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place a service can be reached, from the registry or a ServiceEntry."""

    host: str
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False)
    protocol: str = "http"
    ready: bool = True
    weight: int = 1
    source: str = ""  # workload id, or "ServiceEntry ns/name"
    identity: str | None = None  # SPIFFE ID of a mesh workload; None for external endpoints
    service_port: int | None = None  # the ServiceEntry port this endpoint serves, if any
    tls: bool = False  # the endpoint serves mutual TLS with its mesh identity
    locality: str = ""  # region/zone/subzone ("": unknown), for locality load balancing
    # What outlier detection and load counts follow across snapshots (made once: it is
    # looked up several times per request).
    key: tuple[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in labels.items())


@dataclass(frozen=True, slots=True)
class WorkloadSecurity:
    """The security policies that apply to one workload, resolved as Istio does."""

    mtls_mode: MtlsMode
    port_mtls: Mapping[int, MtlsMode]
    allow: tuple[AuthorizationPolicy, ...]
    deny: tuple[AuthorizationPolicy, ...]
    audit: tuple[AuthorizationPolicy, ...]
    custom: tuple[AuthorizationPolicy, ...]
    request_authentication: tuple[RequestAuthentication, ...]
    authorizer: Authorizer | None = None  # the policies above, compiled; None: no policy applies
    rate_limits: tuple[RateLimit, ...] = ()

    def mode_for_port(self, port: int | None) -> MtlsMode:
        return self.port_mtls.get(port, self.mtls_mode) if port is not None else self.mtls_mode


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All policy and endpoints at ``version``; lookups are dictionary hits."""

    version: int
    resources: tuple[Resource, ...]
    workloads: tuple[WorkloadRegistration, ...]
    trust_domain: str
    virtual_services: Mapping[str, VirtualService]
    destination_rules: Mapping[str, DestinationRule]
    endpoints_by_host: Mapping[str, tuple[Endpoint, ...]]
    service_entries: Mapping[str, ServiceEntry]
    wildcard_virtual_services: tuple[tuple[str, VirtualService], ...]  # most specific first
    _subsets: Mapping[tuple[str, str], Subset]
    _peer_authn: tuple[PeerAuthentication, ...]
    _authz: tuple[AuthorizationPolicy, ...]
    _request_authn: tuple[RequestAuthentication, ...]
    _rate_limits: tuple[RateLimit, ...]
    _security_cache: dict[tuple[str, str, frozenset[tuple[str, str]]], WorkloadSecurity] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def empty(cls, trust_domain: str = CLUSTER_DOMAIN) -> Snapshot:
        return compile_snapshot(0, (), (), trust_domain=trust_domain)

    # --- client-side lookups -------------------------------------------------------

    def resolve_host(self, host: str, namespace: str) -> str | None:
        """The mesh service a requested host names, or None if it is not a mesh host."""
        for candidate in host_candidates(host, namespace):
            if (
                candidate in self.virtual_services
                or candidate in self.endpoints_by_host
                or candidate in self.destination_rules
                or candidate in self.service_entries
            ):
                return candidate
        for candidate in host_candidates(host, namespace):
            if self._wildcard_match(candidate) is not None:
                return candidate
        return None

    def virtual_service(self, fqdn: str) -> VirtualService | None:
        found = self.virtual_services.get(fqdn)
        return found if found is not None else self._wildcard_match(fqdn)

    def destination_rule(self, fqdn: str) -> DestinationRule | None:
        return self.destination_rules.get(fqdn)

    def subset(self, fqdn: str, subset: str) -> Subset | None:
        return self._subsets.get((fqdn, subset))

    def traffic_policy(
        self, fqdn: str, subset: str | None = None, port: int | None = None
    ) -> TrafficPolicy | None:
        """The DestinationRule policy for a host, with the subset's and port's settings laid over."""
        rule = self.destination_rules.get(fqdn)
        if rule is None:
            return None
        policy = rule.spec.traffic_policy or TrafficPolicy()
        chosen = self._subsets.get((fqdn, subset)) if subset is not None else None
        return policy.merged_with(chosen.traffic_policy if chosen is not None else None, port)

    def endpoints(self, fqdn: str, subset: str | None = None) -> tuple[Endpoint, ...]:
        """Endpoints of a host, narrowed to a subset's labels when one is named."""
        found = self.endpoints_by_host.get(fqdn, ())
        if subset is None:
            return found
        chosen = self._subsets.get((fqdn, subset))
        if chosen is None:
            return ()
        return tuple(e for e in found if e.matches(chosen.labels))

    def _wildcard_match(self, fqdn: str) -> VirtualService | None:
        for pattern, vs in self.wildcard_virtual_services:
            if host_matches(pattern, fqdn):
                return vs
        return None

    # --- server-side lookups -------------------------------------------------------

    def security_for(
        self, namespace: str, labels: Mapping[str, str], service: str | None = None
    ) -> WorkloadSecurity:
        """Peer authentication mode and the authorization/authentication policies for a workload
        (``service``: the name targetRefs name it by; by default its ``app`` label)."""
        name = service if service is not None else labels.get("app", "")
        key = (namespace, name, frozenset(labels.items()))
        cached = self._security_cache.get(key)
        if cached is None:
            cached = self._security_cache[key] = _resolve_security(self, namespace, labels, name)
        return cached


def _applies(
    selector: WorkloadSelector | None,
    refs: tuple[PolicyTargetReference, ...],
    policy_ns: str,
    namespace: str,
    labels: Mapping[str, str],
    service: str,
) -> bool:
    """Istio's scope: the workload's namespace or the root namespace, narrowed by a selector;
    a targetRef names a Service of the policy's own namespace."""
    if refs:
        return policy_ns == namespace and any(
            r.name == service and r.namespace in ("", policy_ns) for r in refs
        )
    if policy_ns not in (namespace, ROOT_NAMESPACE):
        return False
    return selector is None or selector.matches(labels)


def _targets(spec: AuthorizationPolicySpec | RequestAuthenticationSpec) -> tuple[PolicyTargetReference, ...]:
    return (spec.target_ref, *spec.target_refs) if spec.target_ref is not None else spec.target_refs


def _resolve_security(
    snap: Snapshot, namespace: str, labels: Mapping[str, str], service: str
) -> WorkloadSecurity:
    # Istio: the narrowest PeerAuthentication wins (workload > namespace > mesh); UNSET
    # inherits from the next level up, and the mesh default is PERMISSIVE.
    mesh = [p for p in snap._peer_authn if p.namespace == ROOT_NAMESPACE and not _selects(p)]
    ns_wide = [p for p in snap._peer_authn if p.namespace == namespace and not _selects(p)]
    workload = [
        p
        for p in snap._peer_authn
        if p.namespace == namespace
        and _selects(p)
        and p.spec.selector is not None
        and p.spec.selector.matches(labels)
    ]
    mode: MtlsMode = "PERMISSIVE"
    port_modes: dict[int, MtlsMode] = {}
    for level in (mesh, ns_wide, workload):
        if not level:
            continue
        chosen = level[0]  # oldest first, as Istio breaks ties
        if chosen.spec.mtls is not None and chosen.spec.mtls.mode != "UNSET":
            mode = chosen.spec.mtls.mode
        if level is workload:
            for port, setting in chosen.spec.port_level_mtls.items():
                port_modes[port] = mode if setting.mode == "UNSET" else setting.mode
    authz = [
        p
        for p in snap._authz
        if _applies(p.spec.selector, _targets(p.spec), p.namespace, namespace, labels, service)
    ]
    return WorkloadSecurity(
        mtls_mode=mode,
        port_mtls=MappingProxyType(port_modes),
        allow=tuple(p for p in authz if p.spec.action == "ALLOW"),
        deny=tuple(p for p in authz if p.spec.action == "DENY"),
        audit=tuple(p for p in authz if p.spec.action == "AUDIT"),
        custom=tuple(p for p in authz if p.spec.action == "CUSTOM"),
        request_authentication=tuple(
            r
            for r in snap._request_authn
            if _applies(r.spec.selector, _targets(r.spec), r.namespace, namespace, labels, service)
        ),
        authorizer=compile_authorizer(authz),
        rate_limits=tuple(
            r
            for r in snap._rate_limits
            if _applies(r.spec.selector, (), r.namespace, namespace, labels, service)
        ),
    )


def _selects(policy: PeerAuthentication) -> bool:
    return policy.spec.selector is not None and bool(policy.spec.selector.match_labels)


def _age_order(resources: Iterable[Resource]) -> list[Resource]:
    """Oldest first, then by name and namespace: Istio's order for resolving conflicts."""
    return sorted(resources, key=lambda r: (r.metadata.creation_timestamp or "", r.name, r.namespace))


def compile_snapshot(
    version: int,
    resources: Sequence[Resource],
    workloads: Sequence[WorkloadRegistration] = (),
    *,
    trust_domain: str = CLUSTER_DOMAIN,
) -> Snapshot:
    """Index resources and registry entries for per-request lookups. Pure."""
    ordered = _age_order(resources)
    virtual_services: dict[str, VirtualService] = {}
    wildcards: list[tuple[str, VirtualService]] = []
    rules: dict[str, DestinationRule] = {}
    subsets: dict[tuple[str, str], Subset] = {}
    entries: dict[str, ServiceEntry] = {}
    endpoints: dict[str, list[Endpoint]] = {}
    for resource in ordered:
        if isinstance(resource, VirtualService):
            for host in resource.spec.hosts:
                fqdn = normalize_host(host, resource.namespace)
                if "*" in fqdn:
                    wildcards.append((fqdn, resource))
                else:
                    virtual_services.setdefault(fqdn, resource)
        elif isinstance(resource, DestinationRule):
            fqdn = normalize_host(resource.spec.host, resource.namespace)
            if fqdn not in rules:
                rules[fqdn] = resource
                for subset in resource.spec.subsets:
                    subsets[(fqdn, subset.name)] = subset
        elif isinstance(resource, ServiceEntry):
            for host in resource.spec.hosts:
                fqdn = normalize_host(host, resource.namespace)
                entries.setdefault(fqdn, resource)
                endpoints.setdefault(fqdn, []).extend(_entry_endpoints(resource, fqdn))
    for workload in workloads:
        fqdn = normalize_host(workload.service, workload.namespace)
        entry = entries.get(fqdn)
        if entry is not None and not entry_selects(entry, workload):
            continue  # a ServiceEntry's host: the registry cannot add endpoints to it
        labels = MappingProxyType(workload.effective_labels())
        for announced in workload.endpoints:
            endpoints.setdefault(fqdn, []).append(
                Endpoint(
                    host=fqdn,
                    address=announced.address,
                    port=announced.port,
                    labels=labels,
                    protocol=announced.protocol,
                    ready=announced.ready,
                    source=workload.id,
                    identity=workload.identity(trust_domain),
                    tls=announced.tls,
                    locality=workload.locality,
                )
            )
    # Most specific wildcard first: *.bar.example.com before *.example.com before *.
    wildcards.sort(key=lambda pair: -len(pair[0]))
    return Snapshot(
        version=version,
        resources=tuple(resources),
        workloads=tuple(workloads),
        trust_domain=trust_domain,
        virtual_services=MappingProxyType(virtual_services),
        destination_rules=MappingProxyType(rules),
        endpoints_by_host=MappingProxyType({h: tuple(e) for h, e in endpoints.items()}),
        service_entries=MappingProxyType(entries),
        wildcard_virtual_services=tuple(wildcards),
        _subsets=MappingProxyType(subsets),
        _peer_authn=tuple(r for r in ordered if isinstance(r, PeerAuthentication)),
        _authz=tuple(r for r in ordered if isinstance(r, AuthorizationPolicy)),
        _request_authn=tuple(r for r in ordered if isinstance(r, RequestAuthentication)),
        _rate_limits=tuple(r for r in ordered if isinstance(r, RateLimit)),
    )


def entry_selects(entry: ServiceEntry, registration: WorkloadRegistration) -> bool:
    """Does a ServiceEntry take this registered workload's endpoints? Only through its
    workloadSelector, in its own namespace, as Istio's ServiceEntry selects workloads; a
    registration can never claim a host a ServiceEntry declares otherwise."""
    selector = entry.spec.workload_selector
    if selector is None or entry.namespace != registration.namespace:
        return False
    labels = registration.effective_labels()
    return all(labels.get(k) == v for k, v in selector.labels.items())


def _entry_endpoints(entry: ServiceEntry, fqdn: str) -> list[Endpoint]:
    spec = entry.spec
    if spec.resolution in ("DNS", "DNS_ROUND_ROBIN") and not spec.endpoints:
        # No endpoints: the host itself is resolved by DNS at connection time.
        return [
            Endpoint(
                host=fqdn,
                address=fqdn,
                port=p.target_port or p.number,
                protocol=_protocol(p.protocol),
                source=f"ServiceEntry {entry.namespace}/{entry.name}",
                service_port=p.number,
            )
            for p in spec.ports
        ]
    out = []
    for item in spec.endpoints:
        labels = MappingProxyType(dict(item.labels))
        for port in spec.ports:
            out.append(
                Endpoint(
                    host=fqdn,
                    address=item.address or fqdn,
                    port=item.ports.get(port.name, port.target_port or port.number),
                    labels=labels,
                    protocol=_protocol(port.protocol),
                    weight=item.weight or 1,
                    source=f"ServiceEntry {entry.namespace}/{entry.name}",
                    service_port=port.number,
                )
            )
    return out


def _protocol(name: str | None) -> str:
    value = (name or "http").lower()
    return {"http2": "http", "grpc-web": "http", "tls": "tcp", "mongo": "tcp"}.get(value, value)
