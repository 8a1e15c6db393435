"""Cross-resource checks (``meshctl analyze``): problems no single resource shows.

Pure: it reads resources and, when known, the registry; it returns findings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ..policy.resources import AuthorizationPolicy, DestinationRule, Resource, VirtualService
from ..policy.validate import format_path
from ..policy.virtual_service import Destination
from ..registry import WorkloadRegistration
from .hosts import normalize_host
from .snapshot import Snapshot, compile_snapshot

__all__ = ["CODES", "Finding", "analyze"]

Level = Literal["Error", "Warning", "Info"]

CODES: dict[str, tuple[Level, str]] = {
    "MESH0101": ("Error", "ReferencedSubsetNotFound"),
    "MESH0102": ("Info", "NoDestinationRule"),
    "MESH0103": ("Warning", "NoWorkloads"),
    "MESH0104": ("Warning", "ShadowedRoute"),
    "MESH0105": ("Warning", "DenyBypassedByPlaintext"),
    "MESH0106": ("Warning", "ConflictingVirtualServices"),
    "MESH0107": ("Warning", "ConflictingDestinationRules"),
    "MESH0108": ("Warning", "SubsetSelectsNothing"),
    "MESH0109": ("Info", "WeightsNotHundred"),
}


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    resource: str
    path: str
    message: str

    @property
    def level(self) -> Level:
        return CODES[self.code][0]

    @property
    def name(self) -> str:
        return CODES[self.code][1]

    def __str__(self) -> str:
        where = f" {self.path}:" if self.path else ""
        return f"{self.level} [{self.code}] ({self.resource}){where} {self.message}"


def analyze(
    resources: Sequence[Resource], workloads: Sequence[WorkloadRegistration] | None = None
) -> list[Finding]:
    """Findings, errors first. Without ``workloads`` the registry checks are skipped."""
    snap = compile_snapshot(0, resources, workloads or ())
    findings = [
        *_destinations(snap, resources, workloads is not None),
        *_shadowed(resources),
        *_relative_weights(resources),
        *_conflicts(snap, resources),
        *_deny_without_mtls(snap, resources),
    ]
    if workloads is not None:
        findings.extend(_empty_subsets(snap, resources))
    order = {"Error": 0, "Warning": 1, "Info": 2}
    return sorted(findings, key=lambda f: (order[f.level], f.resource, f.path))


def _route_destinations(vs: VirtualService) -> Iterator[tuple[tuple[str | int, ...], Destination]]:
    for i, route in enumerate(vs.spec.http):
        for j, dest in enumerate(route.route):
            yield ("spec", "http", i, "route", j, "destination"), dest.destination
        if route.mirror is not None:
            yield ("spec", "http", i, "mirror"), route.mirror
        for j, mirror in enumerate(route.mirrors):
            yield ("spec", "http", i, "mirrors", j, "destination"), mirror.destination
    for i, tls in enumerate(vs.spec.tls):
        for j, l4 in enumerate(tls.route):
            yield ("spec", "tls", i, "route", j, "destination"), l4.destination
    for i, tcp in enumerate(vs.spec.tcp):
        for j, l4 in enumerate(tcp.route):
            yield ("spec", "tcp", i, "route", j, "destination"), l4.destination


def _destinations(snap: Snapshot, resources: Sequence[Resource], registry: bool) -> Iterator[Finding]:
    reported: set[str] = set()
    for vs in resources:
        if not isinstance(vs, VirtualService):
            continue
        for path, dest in _route_destinations(vs):
            host = normalize_host(dest.host, vs.namespace)
            where = format_path(path)
            if dest.subset is not None and snap.subset(host, dest.subset) is None:
                yield Finding(
                    "MESH0101",
                    str(vs.key),
                    where,
                    f"subset {dest.subset!r} of host {host} is not defined in any DestinationRule",
                )
            if host in reported:
                continue
            reported.add(host)
            if snap.destination_rule(host) is None and dest.subset is None:
                yield Finding(
                    "MESH0102",
                    str(vs.key),
                    where,
                    f"host {host} has no DestinationRule (default load balancing, no limits)",
                )
            entry = snap.service_entry(host)
            passthrough = entry is not None and entry.spec.mode == "NONE"  # endpoints per request
            if registry and not passthrough and not snap.endpoints(host):
                yield Finding(
                    "MESH0103",
                    str(vs.key),
                    where,
                    f"host {host} has no workloads in the registry and no ServiceEntry endpoints",
                )


def _relative_weights(resources: Sequence[Resource]) -> Iterator[Finding]:
    """Weights are relative (current Istio), but a sum other than 100 is often a typo."""
    for vs in resources:
        if not isinstance(vs, VirtualService):
            continue
        for i, route in enumerate(vs.spec.http):
            total = sum(d.weight for d in route.route)
            if len(route.route) > 1 and total != 100:
                shares = ", ".join(f"{100 * d.weight / total:.4g}%" for d in route.route)
                yield Finding(
                    "MESH0109",
                    str(vs.key),
                    format_path(("spec", "http", i, "route")),
                    f"weights add up to {total}, not 100; they are relative, so the split is {shares}",
                )


def _shadowed(resources: Sequence[Resource]) -> Iterator[Finding]:
    for vs in resources:
        if not isinstance(vs, VirtualService):
            continue
        for i, route in enumerate(vs.spec.http[:-1]):
            if route.is_catch_all():
                for j in range(i + 1, len(vs.spec.http)):
                    yield Finding(
                        "MESH0104",
                        str(vs.key),
                        f"spec.http[{j}]",
                        f"route is never used: spec.http[{i}] before it matches every request",
                    )
                break


def _conflicts(snap: Snapshot, resources: Sequence[Resource]) -> Iterator[Finding]:
    for res in resources:
        if isinstance(res, VirtualService):
            for k, host in enumerate(res.spec.hosts):
                winner = snap.virtual_service(normalize_host(host, res.namespace))
                if winner is not None and winner.key != res.key and "*" not in host:
                    yield Finding(
                        "MESH0106",
                        str(res.key),
                        f"spec.hosts[{k}]",
                        f"host {host} is also routed by {winner.key}, which is older and wins",
                    )
        elif isinstance(res, DestinationRule):
            winner_dr = snap.destination_rule(normalize_host(res.spec.host, res.namespace))
            if winner_dr is not None and winner_dr.key != res.key:
                yield Finding(
                    "MESH0107",
                    str(res.key),
                    "spec.host",
                    f"host {res.spec.host} also has {winner_dr.key}, which is older and wins",
                )


def _deny_without_mtls(snap: Snapshot, resources: Sequence[Resource]) -> Iterator[Finding]:
    for policy in resources:
        if not isinstance(policy, AuthorizationPolicy) or policy.spec.action != "DENY":
            continue
        for i, rule in enumerate(policy.spec.rules):
            for j, source in enumerate(rule.from_):
                s = source.source
                if not (s.principals or s.not_principals or s.namespaces or s.not_namespaces):
                    continue
                labels = policy.spec.selector.match_labels if policy.spec.selector else {}
                mode = snap.security_for(policy.namespace, labels).mtls_mode
                if mode != "STRICT":
                    yield Finding(
                        "MESH0105",
                        str(policy.key),
                        f"spec.rules[{i}].from[{j}].source",
                        f"mTLS is {mode} here: plaintext requests carry no principal or namespace "
                        "and are not matched by this DENY; set PeerAuthentication STRICT",
                    )


def _empty_subsets(snap: Snapshot, resources: Sequence[Resource]) -> Iterator[Finding]:
    for rule in resources:
        if not isinstance(rule, DestinationRule):
            continue
        host = normalize_host(rule.spec.host, rule.namespace)
        if not snap.endpoints(host):
            continue  # reported once as MESH0103 where it is routed to
        for i, subset in enumerate(rule.spec.subsets):
            if not snap.endpoints(host, subset.name):
                labels = ",".join(f"{k}={v}" for k, v in subset.labels.items())
                yield Finding(
                    "MESH0108",
                    str(rule.key),
                    f"spec.subsets[{i}]",
                    f"subset {subset.name!r} ({labels}) selects none of the endpoints of {host}",
                )
