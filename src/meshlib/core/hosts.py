"""Service host names: short (``reviews``) and Kubernetes-style FQDNs name one service.

Istio's rule for resources: a name without dots is expanded with the namespace of
the resource that mentions it (``reviews`` in namespace ``default`` means
``reviews.default.svc.cluster.local``); a name with dots is taken as written.
A client asking for a host gets Kubernetes DNS search behaviour on top:
``reviews``, ``reviews.prod`` and ``reviews.prod.svc`` all find the service.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["CLUSTER_DOMAIN", "host_candidates", "host_matches", "normalize_host", "short_name"]

CLUSTER_DOMAIN = "cluster.local"


def _clean(host: str) -> str:
    name = host.strip().lower()
    if name.startswith("["):  # [v6]:port
        return name.split("]", 1)[0] + "]"
    if name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name.rstrip(".")


@lru_cache(maxsize=4096)
def normalize_host(host: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """The canonical form of a host written in a resource: lower-case, no port, FQDN."""
    name = _clean(host)
    if "." in name or ":" in name or name.startswith("[") or name == "*":
        return name
    return f"{name}.{namespace}.svc.{domain}"


@lru_cache(maxsize=4096)
def host_candidates(host: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> tuple[str, ...]:
    """Names to look up, most specific first, for a host a client sends a request to."""
    name = _clean(host)
    if "." not in name:
        return (normalize_host(name, namespace, domain), name)
    labels = name.split(".")
    if len(labels) == 2:
        return (name, f"{name}.svc.{domain}")
    if len(labels) == 3 and labels[2] == "svc":
        return (name, f"{name}.{domain}")
    return (name,)


def host_matches(pattern: str, host: str) -> bool:
    """Whether a resource host (``*``, ``*.example.com``, ``*foo.com`` or exact) covers a host.

    A wildcard stands for at least one character, as in Envoy's domain matching:
    ``*.example.com`` covers ``a.example.com`` but not ``example.com``, and the partial
    wildcard ``*foo.com`` (which Istio accepts) covers ``barfoo.com``."""
    if pattern == "*" or pattern == host:
        return True
    return pattern.startswith("*") and len(host) >= len(pattern) and host.endswith(pattern[1:])


def short_name(fqdn: str, domain: str = CLUSTER_DOMAIN) -> str:
    """``reviews.default.svc.cluster.local`` -> ``reviews``; other names unchanged."""
    suffix = f".svc.{domain}"
    if fqdn.endswith(suffix):
        return fqdn[: -len(suffix)].split(".", 1)[0]
    return fqdn
