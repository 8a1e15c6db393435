"""The compiled snapshot: every resource and endpoint at one version, indexed for lookups.

Building it is pure (no I/O) and it never changes afterwards; a new version is a new
Snapshot swapped in whole, so a request that started on one snapshot finishes on it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ..policy.base import PolicyTargetReference, WorkloadSelector, export_set
from ..policy.destination_rule import Subset, TrafficPolicy
from ..policy.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    RateLimit,
    RequestAuthentication,
    Resource,
    ServiceEntry,
    Telemetry,
    VirtualService,
)
from ..policy.security import AuthorizationPolicySpec, RequestAuthenticationSpec
from ..policy.service_entry import TLS_MODE_LABEL, WorkloadEntry
from ..registry import WorkloadRegistration, spiffe_id
from .authz import Authorizer, compile_authorizer
from .hosts import CLUSTER_DOMAIN, host_candidates, host_matches, normalize_host
from .telemetry_policy import NO_TELEMETRY_POLICY, TelemetryPolicy, resolve_telemetry

__all__ = [
    "ROOT_NAMESPACE",
    "Endpoint",
    "Snapshot",
    "WorkloadSecurity",
    "compile_snapshot",
    "entry_selects",
    "passthrough_endpoint",
    "telemetry_for",
]

ROOT_NAMESPACE = "istio-system"
"""Policies here apply mesh-wide, as in Istio's default root namespace."""

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
_EMPTY: Mapping[str, str] = MappingProxyType({})
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NO_ENTRIES: Mapping[str, tuple[ServiceEntry, ...]] = MappingProxyType({})


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
    tls: bool = False  # the endpoint serves mutual TLS with its mesh identity (auto mTLS uses it)
    dns: bool = False  # ``address`` is a name whose every address is an endpoint (resolution DNS)
    # Namespaces that see it (a ServiceEntry's exportTo; None: every namespace).
    export_to: frozenset[str] | None = field(default=None, compare=False)
    locality: str = ""  # region/zone/subzone ("": unknown), for locality load balancing
    # What outlier detection and load counts follow across snapshots (made once: it is
    # looked up several times per request).
    key: tuple[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in labels.items())

    def visible(self, namespace: str | None) -> bool:
        return namespace is None or self.export_to is None or namespace in self.export_to


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
    service_entries: Mapping[str, ServiceEntry]  # the oldest entry of each host (patterns too)
    wildcard_virtual_services: tuple[tuple[str, VirtualService], ...]  # most specific first
    _subsets: Mapping[tuple[str, str], Subset]
    _peer_authn: tuple[PeerAuthentication, ...]
    _authz: tuple[AuthorizationPolicy, ...]
    _request_authn: tuple[RequestAuthentication, ...]
    _rate_limits: tuple[RateLimit, ...]
    _telemetry: tuple[Telemetry, ...] = ()
    wildcard_service_entries: tuple[tuple[str, ServiceEntry], ...] = ()  # most specific first
    wildcard_destination_rules: tuple[tuple[str, DestinationRule], ...] = ()  # most specific first
    address_entries: tuple[tuple[Network, ServiceEntry], ...] = ()  # longest prefix first
    dns_names: frozenset[str] = frozenset()  # what resolution DNS endpoints need resolved
    _entries_by_host: Mapping[str, tuple[ServiceEntry, ...]] = field(default_factory=lambda: _NO_ENTRIES)
    # Every VirtualService per exact host and every DestinationRule (host pattern, rule), oldest
    # first, for the lookups that depend on the caller's namespace (exportTo, workloadSelector).
    _vs_by_host: Mapping[str, tuple[VirtualService, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    _all_rules: tuple[tuple[str, DestinationRule], ...] = ()
    _security_cache: dict[tuple[str, str, frozenset[tuple[str, str]]], WorkloadSecurity] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def empty(cls, trust_domain: str = CLUSTER_DOMAIN) -> Snapshot:
        return compile_snapshot(0, (), (), trust_domain=trust_domain)

    # --- client-side lookups -------------------------------------------------------

    def resolve_host(self, host: str, namespace: str, port: int | None = None) -> str | None:
        """The mesh service a requested host names, or None if it is not a mesh host.

        Most specific first: a host named exactly (by a VirtualService, DestinationRule,
        ServiceEntry or the registry); an IP in a ServiceEntry's ``addresses`` (a VIP before
        a CIDR, the longest prefix first): its first host; a wildcard VirtualService or
        ServiceEntry host: the host itself. Matches by address or wildcard take only the
        ServiceEntry's own ports (``port`` None: any): a pattern must not capture traffic
        the entry does not declare, which goes on as if there were no mesh."""
        candidates = host_candidates(host, namespace)
        for candidate in candidates:
            if (
                any(exported_to(vs, namespace) for vs in self._vs_by_host.get(candidate, ()))
                or any(p == candidate and exported_to(r, namespace) for p, r in self._all_rules)
                or self._exact_entry(candidate, namespace) is not None
                or any(e.visible(namespace) for e in self.endpoints_by_host.get(candidate, ()))
            ):
                return candidate
        if self.address_entries:
            address = _ip(host)
            if address is not None:
                for network, entry in self.address_entries:
                    if address in network and self.visible(entry, namespace) and _serves(entry, port):
                        return normalize_host(entry.spec.hosts[0], entry.namespace)
        for candidate in candidates:
            if self.virtual_service(candidate, namespace) is not None:
                return candidate
            covering = self._wildcard_entry(candidate, namespace)
            if covering is not None and _serves(covering, port):
                return candidate
        return None

    def service_entry(self, fqdn: str, namespace: str | None = None) -> ServiceEntry | None:
        """The ServiceEntry that declares a host for a workload of ``namespace`` (None: any):
        the oldest exported to it, naming the host exactly, else by the most specific wildcard."""
        found = self._exact_entry(fqdn, namespace)
        return found if found is not None else self._wildcard_entry(fqdn, namespace)

    @staticmethod
    def visible(entry: ServiceEntry, namespace: str | None) -> bool:
        """Istio's exportTo: unset or ``*`` every namespace, ``.`` its own, ``~`` none."""
        exported = _export_set(entry)
        return namespace is None or exported is None or namespace in exported

    def virtual_service(self, fqdn: str, namespace: str | None = None) -> VirtualService | None:
        """The VirtualService of a host (for a caller in ``namespace``: the oldest exported to
        it), else the most specific wildcard one."""
        if namespace is None:
            found = self.virtual_services.get(fqdn)
            return found if found is not None else self._wildcard_match(fqdn)
        for vs in self._vs_by_host.get(fqdn, ()):
            if exported_to(vs, namespace):
                return vs
        for pattern, vs in self.wildcard_virtual_services:
            if host_matches(pattern, fqdn) and exported_to(vs, namespace):
                return vs
        return None

    def destination_rule(
        self, fqdn: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> DestinationRule | None:
        """The rule for a host: its own, else the most specific wildcard rule covering it.

        For a caller in ``namespace`` (with ``labels``), Istio's lookup: rules in the caller's
        own namespace first (those whose workloadSelector selects it before those without
        one; a selector that does not select it rules the rule out), then the rules of the
        host's own namespace, then the root namespace's, each only if exported to the caller."""
        if namespace is None:
            found = self.destination_rules.get(fqdn)
            if found is None:
                for pattern, rule in self.wildcard_destination_rules:
                    if host_matches(pattern, fqdn):
                        return rule
            return found
        for scope in dict.fromkeys((namespace, self._host_namespace(fqdn), ROOT_NAMESPACE)):
            if scope is not None:
                found = self._rule_in(scope, fqdn, namespace, labels)
                if found is not None:
                    return found
        return None

    def _rule_in(
        self, scope: str, fqdn: str, namespace: str, labels: Mapping[str, str] | None
    ) -> DestinationRule | None:
        best: tuple[int, DestinationRule] | None = None
        for pattern, rule in self._all_rules:
            if rule.namespace != scope or not exported_to(rule, namespace):
                continue
            selector = rule.spec.workload_selector
            if selector is not None and (
                labels is None or scope not in (namespace, ROOT_NAMESPACE) or not selector.matches(labels)
            ):
                continue  # Istio: a selector selects workloads of its own namespace only
            if pattern != fqdn and not host_matches(pattern, fqdn):
                continue
            # exact host before wildcards (the longest first), a selecting rule before others
            rank = (0 if pattern == fqdn else 1 + 1000 - len(pattern)) * 2 + (selector is None)
            if best is None or rank < best[0]:
                best = (rank, rule)
        return best[1] if best is not None else None

    def _host_namespace(self, fqdn: str) -> str | None:
        """The namespace a host belongs to: ``name.<ns>.svc.<domain>``'s, or its ServiceEntry's."""
        labels = fqdn.split(".")
        if len(labels) >= 4 and labels[2] == "svc":
            return labels[1]
        entry = self.service_entries.get(fqdn)
        return entry.namespace if entry is not None else None

    def subset(
        self,
        fqdn: str,
        subset: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Subset | None:
        if namespace is None:
            return self._subsets.get((self._rule_host(fqdn), subset))
        rule = self.destination_rule(fqdn, namespace, labels)
        return next((s for s in rule.spec.subsets if s.name == subset), None) if rule is not None else None

    def traffic_policy(
        self,
        fqdn: str,
        subset: str | None = None,
        port: int | None = None,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> TrafficPolicy | None:
        """The DestinationRule policy for a host, with the subset's and port's settings laid over."""
        rule = self.destination_rule(fqdn, namespace, labels)
        if rule is None:
            return None
        policy = rule.spec.traffic_policy or TrafficPolicy()
        chosen = self.subset(fqdn, subset, namespace, labels) if subset is not None else None
        return policy.merged_with(chosen.traffic_policy if chosen is not None else None, port)

    def endpoints(
        self,
        fqdn: str,
        subset: str | None = None,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> tuple[Endpoint, ...]:
        """Endpoints of a host, narrowed to a subset's labels when one is named (and to those
        exported to ``namespace``, when given)."""
        found = self.endpoints_by_host.get(fqdn)
        if found is None:  # a host a wildcard entry covers has the entry's endpoints
            pattern = next(
                (
                    p
                    for p, e in self.wildcard_service_entries
                    if host_matches(p, fqdn) and self.visible(e, namespace)
                ),
                None,
            )
            found = self.endpoints_by_host.get(pattern, ()) if pattern is not None else ()
        if namespace is not None:
            found = tuple(e for e in found if e.visible(namespace))
        if subset is None:
            return found
        chosen = self.subset(fqdn, subset, namespace, labels)
        if chosen is None:
            return ()
        return tuple(e for e in found if e.matches(chosen.labels))

    def _rule_host(self, fqdn: str) -> str:
        if fqdn in self.destination_rules or not self.wildcard_destination_rules:
            return fqdn
        rule = self.destination_rule(fqdn)
        return normalize_host(rule.spec.host, rule.namespace) if rule is not None else fqdn

    def _wildcard_match(self, fqdn: str) -> VirtualService | None:
        for pattern, vs in self.wildcard_virtual_services:
            if host_matches(pattern, fqdn):
                return vs
        return None

    def _exact_entry(self, fqdn: str, namespace: str | None) -> ServiceEntry | None:
        for entry in self._entries_by_host.get(fqdn, ()):
            if self.visible(entry, namespace):
                return entry
        return None

    def _wildcard_entry(self, fqdn: str, namespace: str | None) -> ServiceEntry | None:
        for pattern, entry in self.wildcard_service_entries:
            if host_matches(pattern, fqdn) and self.visible(entry, namespace):
                return entry
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


def telemetry_for(snapshot: Snapshot, namespace: str, labels: Mapping[str, str]) -> TelemetryPolicy:
    """What the snapshot's Telemetry resources say for a workload (core/telemetry_policy.py)."""
    if not snapshot._telemetry:
        return NO_TELEMETRY_POLICY
    return resolve_telemetry(snapshot._telemetry, namespace, labels, ROOT_NAMESPACE)


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
    vs_by_host: dict[str, list[VirtualService]] = {}
    all_rules: list[tuple[str, DestinationRule]] = []
    wildcards: list[tuple[str, VirtualService]] = []
    rules: dict[str, DestinationRule] = {}
    wildcard_rules: list[tuple[str, DestinationRule]] = []
    subsets: dict[tuple[str, str], Subset] = {}
    entries: dict[str, list[ServiceEntry]] = {}
    wildcard_entries: list[tuple[str, ServiceEntry]] = []
    address_entries: list[tuple[Network, ServiceEntry]] = []
    selecting: list[ServiceEntry] = []
    endpoints: dict[str, list[Endpoint]] = {}
    for resource in ordered:
        if isinstance(resource, VirtualService):
            for host in resource.spec.hosts:
                fqdn = normalize_host(host, resource.namespace)
                if "*" in fqdn:
                    wildcards.append((fqdn, resource))
                else:
                    virtual_services.setdefault(fqdn, resource)
                    vs_by_host.setdefault(fqdn, []).append(resource)
        elif isinstance(resource, DestinationRule):
            fqdn = normalize_host(resource.spec.host, resource.namespace)
            all_rules.append((fqdn, resource))
            if fqdn not in rules:
                rules[fqdn] = resource
                if "*" in fqdn:
                    wildcard_rules.append((fqdn, resource))
                for subset in resource.spec.subsets:
                    subsets[(fqdn, subset.name)] = subset
        elif isinstance(resource, ServiceEntry):
            if resource.spec.workload_selector is not None:
                selecting.append(resource)
            for network in resource.spec.networks():
                address_entries.append((network, resource))
            for host in resource.spec.hosts:
                fqdn = normalize_host(host, resource.namespace)
                entries.setdefault(fqdn, []).append(resource)
                if "*" in fqdn:
                    wildcard_entries.append((fqdn, resource))
                endpoints.setdefault(fqdn, []).extend(_entry_endpoints(resource, fqdn, trust_domain))
    for workload in workloads:
        for entry in selecting:
            if entry_selects(entry, workload):
                for host in entry.spec.hosts:
                    fqdn = normalize_host(host, entry.namespace)
                    endpoints.setdefault(fqdn, []).extend(_selected(entry, fqdn, workload, trust_domain))
        fqdn = normalize_host(workload.service, workload.namespace)
        if fqdn in entries:
            continue  # a ServiceEntry's host: only its workloadSelector adds registered workloads
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
    wildcard_rules.sort(key=lambda pair: -len(pair[0]))
    wildcard_entries.sort(key=lambda pair: -len(pair[0]))
    address_entries.sort(key=lambda pair: -pair[0].prefixlen)  # stable: the oldest first among equals
    compiled = {h: tuple(e) for h, e in endpoints.items()}
    return Snapshot(
        version=version,
        resources=tuple(resources),
        workloads=tuple(workloads),
        trust_domain=trust_domain,
        virtual_services=MappingProxyType(virtual_services),
        destination_rules=MappingProxyType(rules),
        endpoints_by_host=MappingProxyType(compiled),
        service_entries=MappingProxyType({h: found[0] for h, found in entries.items()}),
        wildcard_virtual_services=tuple(wildcards),
        _subsets=MappingProxyType(subsets),
        _peer_authn=tuple(r for r in ordered if isinstance(r, PeerAuthentication)),
        _authz=tuple(r for r in ordered if isinstance(r, AuthorizationPolicy)),
        _request_authn=tuple(r for r in ordered if isinstance(r, RequestAuthentication)),
        _rate_limits=tuple(r for r in ordered if isinstance(r, RateLimit)),
        _telemetry=tuple(r for r in ordered if isinstance(r, Telemetry)),
        wildcard_service_entries=tuple(wildcard_entries),
        wildcard_destination_rules=tuple(wildcard_rules),
        address_entries=tuple(address_entries),
        dns_names=frozenset(e.address for group in compiled.values() for e in group if e.dns),
        _entries_by_host=MappingProxyType({h: tuple(found) for h, found in entries.items()}),
        _vs_by_host=MappingProxyType({h: tuple(found) for h, found in vs_by_host.items()}),
        _all_rules=tuple(all_rules),
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


def _selected(
    entry: ServiceEntry, fqdn: str, workload: WorkloadRegistration, trust_domain: str
) -> list[Endpoint]:
    """A selected workload's endpoints for each port of the entry: those it announces on the
    port's targetPort (else its number), as Istio sends to a selected pod's targetPort."""
    spec = entry.spec
    labels = MappingProxyType(workload.effective_labels())
    export = _export_set(entry)
    out = []
    for port in spec.ports:
        wanted = port.target_port or port.number
        for announced in workload.endpoints:
            if announced.port != wanted:
                continue
            out.append(
                Endpoint(
                    host=fqdn,
                    address=announced.address,
                    port=wanted,
                    labels=labels,
                    protocol=announced.protocol,
                    ready=announced.ready,
                    source=workload.id,
                    identity=workload.identity(trust_domain),
                    service_port=port.number,
                    tls=announced.tls and not spec.external,  # MESH_EXTERNAL: no auto mTLS (Istio)
                    export_to=export,
                    locality=workload.locality,
                )
            )
    return out


def _entry_endpoints(entry: ServiceEntry, fqdn: str, trust_domain: str) -> list[Endpoint]:
    """The endpoints an entry lists (resolution STATIC, DNS, DNS_ROUND_ROBIN); none for NONE
    (the routing table sends to the requested address) or a workloadSelector (the registry's)."""
    spec = entry.spec
    if spec.mode == "NONE" or spec.workload_selector is not None:
        return []
    source = f"ServiceEntry {entry.namespace}/{entry.name}"
    export = _export_set(entry)
    san = spec.subject_alt_names[0] if spec.subject_alt_names else None
    # DNS and no endpoints: the host itself is the name resolved.
    items: list[tuple[str, WorkloadEntry | None]] = [(i.address or fqdn, i) for i in spec.endpoints] or (
        [(fqdn, None)] if spec.mode in ("DNS", "DNS_ROUND_ROBIN") else []
    )
    out = []
    for address, item in items:
        labels = MappingProxyType(dict(item.labels)) if item is not None else _EMPTY
        account = item.service_account if item is not None else None
        identity = spiffe_id(trust_domain, entry.namespace, account) if account else san
        # Istio's auto mTLS toward a declared endpoint: only one labelled as serving Istio mTLS,
        # never toward MESH_EXTERNAL.
        tls = not spec.external and identity is not None and labels.get(TLS_MODE_LABEL) == "istio"
        for port in spec.ports:
            overrides = item.ports if item is not None else {}
            out.append(
                Endpoint(
                    host=fqdn,
                    address=address,
                    port=overrides.get(port.name, port.target_port or port.number),
                    labels=labels,
                    protocol=_protocol(port.protocol),
                    weight=(item.weight or 1) if item is not None else 1,
                    source=source,
                    identity=identity,
                    service_port=port.number,
                    tls=tls,
                    # STRICT_DNS: every address the name resolves to is an endpoint. LOGICAL_DNS
                    # (DNS_ROUND_ROBIN) keeps the name: connections follow it.
                    dns=spec.mode == "DNS" and _ip(address) is None,
                    export_to=export,
                    locality=(item.locality or "") if item is not None else "",
                )
            )
    return out


def passthrough_endpoint(
    entry: ServiceEntry, host: str, address: str, port: int | None, trust_domain: str
) -> Endpoint | None:
    """Resolution NONE: the original destination, ``address:port`` as the request names it,
    if ``port`` is one the entry declares (None otherwise: no endpoint)."""
    spec = entry.spec
    declared = next((p for p in spec.ports if p.number == port), None)
    if declared is None or port is None:
        return None
    return Endpoint(
        host=host,
        address=address,
        port=port,
        protocol=_protocol(declared.protocol),
        source=f"ServiceEntry {entry.namespace}/{entry.name}",
        identity=spec.subject_alt_names[0] if spec.subject_alt_names else None,
        service_port=port,
    )


def _export_set(entry: ServiceEntry) -> frozenset[str] | None:
    return export_set(entry.spec.export_to, entry.namespace)


def exported_to(resource: VirtualService | DestinationRule | ServiceEntry, namespace: str | None) -> bool:
    """Istio's exportTo: unset or ``*`` every namespace, ``.`` its own, names, ``~`` none."""
    if namespace is None or not resource.spec.export_to:
        return True
    exported = export_set(resource.spec.export_to, resource.namespace)
    return exported is None or namespace in exported


def _serves(entry: ServiceEntry, port: int | None) -> bool:
    return port is None or any(p.number == port for p in entry.spec.ports)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _protocol(name: str | None) -> str:
    """The endpoint protocol meshlib's clients select by. TLS is HTTPS to them: the
    application's own TLS goes to the endpoint and the server proves the requested host."""
    value = (name or "http").lower()
    return {"http2": "http", "grpc-web": "http", "tls": "https"}.get(value, value)
