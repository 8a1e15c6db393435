"""Egress hosts: the services a workload calls, in Istio's Sidecar ``egress.hosts`` form.

A workload that declares them (``Mesh(egress_hosts=...)`` or ``MESH_EGRESS_HOSTS``) receives
from the registry only the endpoints of those hosts, and is not woken when any other service's
endpoints change. Policy (VirtualServices, DestinationRules, security policy, ...) still comes
whole: it is small, and a workload's own security policy is part of it.

Each entry is ``namespace/dnsName``, as in Istio: ``namespace`` is a namespace, ``.`` (the
workload's own) or ``*`` (any); ``dnsName`` is ``*`` (every host of that namespace), a
wildcard ``*.example.com`` or a host. A short host in a named namespace is taken as that
namespace's service (``shop/orders`` is ``orders.shop.svc.cluster.local``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from .core.hosts import normalize_host
from .names import check_dns_label, check_host

__all__ = ["MAX_EGRESS_HOSTS", "EgressScope", "Hosts", "canonical_hosts", "parse_egress_host"]

MAX_EGRESS_HOSTS = 256
MAX_EGRESS_BYTES = 32 * 1024  # a watch request is at most 64 KiB (protocol.MAX_REGISTRATION_BYTES)

# A registry entry serves these: (namespace, FQDN) pairs.
Hosts = frozenset[tuple[str, str]]


@lru_cache(maxsize=4096)  # the config service checks the entries of every watch request
def parse_egress_host(text: str, namespace: str) -> str:
    """One egress host in the canonical form the config service matches (``ns/dnsName``,
    ``ns`` a namespace or ``*``). Raises ValueError saying what is wrong."""
    entry = text.strip()
    scope, slash, dns = entry.partition("/")
    if not slash or not scope or not dns:
        raise ValueError(f"{text!r} is not namespace/dnsName (e.g. ./reviews, */api.example.com, shop/*)")
    if scope == "~":
        raise ValueError(f"{text!r}: '~' (import nothing) is not supported; leave the entry out")
    if scope == ".":
        scope = namespace
    if scope != "*":
        try:
            check_dns_label(scope, "namespace")
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    dns = dns.lower().rstrip(".")
    if dns != "*":
        try:
            check_host(dns, "dnsName", ip=False)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        if "*" in dns.removeprefix("*."):
            raise ValueError(f"{text!r}: '*' may only stand alone or as the left-most label (*.example.com)")
        if "." not in dns and scope == "*":
            raise ValueError(f"{text!r}: with '*/' write the full name ({dns}.<namespace>.svc.cluster.local)")
        if not dns.startswith("*."):
            dns = normalize_host(dns, scope)
    return f"{scope}/{dns}"


class EgressScope:
    """What a watch with egress hosts receives of the registry (canonical entries)."""

    __slots__ = ("_any", "_exact", "_suffixes")

    def __init__(self, hosts: Iterable[str]) -> None:
        self._exact: set[tuple[str, str]] = set()
        self._any: set[str] = set()  # namespaces every host of which is in scope ("*" too)
        self._suffixes: list[tuple[str, str]] = []
        for entry in hosts:
            scope, _, dns = entry.partition("/")
            if dns == "*":
                self._any.add(scope)
            elif dns.startswith("*."):
                self._suffixes.append((scope, dns[1:]))
            else:
                self._exact.add((scope, dns))

    def admits(self, hosts: Hosts) -> bool:
        """Is a registry entry serving ``hosts`` in this scope?"""
        if "*" in self._any:
            return True
        for namespace, fqdn in hosts:
            if (
                namespace in self._any
                or (namespace, fqdn) in self._exact
                or ("*", fqdn) in self._exact
                or any(s in ("*", namespace) and fqdn.endswith(suffix) for s, suffix in self._suffixes)
            ):
                return True
        return False


def canonical_hosts(hosts: Sequence[str], namespace: str) -> tuple[str, ...]:
    """Every entry parsed (ValueError on the first bad one), duplicates dropped, in order."""
    if len(hosts) > MAX_EGRESS_HOSTS:
        raise ValueError(f"{len(hosts)} egress hosts; at most {MAX_EGRESS_HOSTS}")
    canonical = tuple(dict.fromkeys(parse_egress_host(h, namespace) for h in hosts))
    size = sum(len(h) + 3 for h in canonical)  # as JSON in every watch request
    if size > MAX_EGRESS_BYTES:
        raise ValueError(f"egress hosts take {size} bytes in each watch; at most {MAX_EGRESS_BYTES}")
    return canonical
