"""What one attempt is, decided before any byte leaves: mutual TLS or not (or a refusal),
the name a TLS server must prove, the rewritten path and authority, the header edits and
the time it has. Adapters carry the decision out; they decide nothing.

The rules are HTTP's and gRPC's alike (a gRPC call is a POST to ``/pkg.Service/Method``):
Envoy's ``add`` appends a header entry, ``set`` replaces every entry of the name,
``remove`` drops them. The destination's edits come first and the route's after them, so
a header both set takes the route's value: Envoy applies header mutations from the most
specific level (the weighted cluster, Istio's destination ``headers``) to the least (the
route, Istio's route ``headers``), and the last one written wins.
"""

from __future__ import annotations

import re
from typing import Protocol

from ..errors import CertificateUnavailableError
from ..policy.virtual_service import HTTPRewrite, re2_template
from .routing_table import HeaderOps, Route, Target
from .snapshot import Endpoint

__all__ = [
    "CONNECT_TIMEOUT",
    "MIRROR_TIMEOUT",
    "ORIGINATED",
    "CertificateState",
    "apply_header_ops",
    "needs_mtls",
    "rewrite_path",
    "shadow_authority",
]

CONNECT_TIMEOUT = 10.0  # Istio's default connectTimeout
ORIGINATED = frozenset(("SIMPLE", "MUTUAL"))  # tls modes where the DestinationRule's own TLS applies
_NOT_MESH_TLS = frozenset(("DISABLE", *ORIGINATED))
MIRROR_TIMEOUT = 5.0  # a mirrored copy never holds resources longer than this


class CertificateState(Protocol):
    """What the decision needs of this workload's identity (``WorkloadIdentity`` is one)."""

    def valid(self) -> bool: ...

    def unusable(self) -> str: ...


def needs_mtls(identity: CertificateState | None, tls_mode: str | None, endpoint: Endpoint | None) -> bool:
    """Speak mutual TLS to ``endpoint``? The DestinationRule's tls.mode decides when it is
    DISABLE or ISTIO_MUTUAL, and SIMPLE or MUTUAL mean the rule's own TLS instead (also toward
    a mesh endpoint, as in Istio); otherwise it is automatic: yes toward an endpoint that
    serves mTLS, from a workload that has a mesh identity.

    A workload with an identity never falls back to plaintext because its certificate is
    missing or expired (the request would cross the network in the clear and carry no
    identity): like Envoy, whose handshake would fail, it refuses
    (``CertificateUnavailableError``) and says why."""
    if tls_mode in _NOT_MESH_TLS or endpoint is None:
        return False  # endpoint None: the requested host as it is, not a mesh endpoint
    if endpoint.identity is None:
        if tls_mode == "ISTIO_MUTUAL":
            raise CertificateUnavailableError(
                f"DestinationRule tls.mode ISTIO_MUTUAL toward {endpoint.address}:{endpoint.port}, which has "
                "no mesh identity to verify: not sending in plaintext"
            )
        return False  # not a mesh workload: mesh mTLS does not apply
    if tls_mode != "ISTIO_MUTUAL" and (not endpoint.tls or identity is None):
        return False
    if identity is None:
        raise CertificateUnavailableError(
            f"DestinationRule tls.mode ISTIO_MUTUAL toward {endpoint.identity}, but this workload "
            "has no mesh identity (no bootstrap token): not sending in plaintext"
        )
    if not identity.valid():
        raise CertificateUnavailableError(
            f"mTLS to {endpoint.identity} needs this workload's certificate, and {identity.unusable()}: "
            "not sending in plaintext"
        )
    return True


def rewrite_path(
    path: str, query: str, rewrite: HTTPRewrite | None, prefixes: tuple[tuple[str, bool], ...] = ()
) -> str | None:
    """The request target (path and query) after a route's rewrite (``prefixes``: the uri
    prefixes its matches used, lower-cased with ignoreUriCase); None: unchanged."""
    if rewrite is None:
        return None
    if rewrite.uri_regex_rewrite is not None:
        spec = rewrite.uri_regex_rewrite
        path = re.sub(spec.match, re2_template(spec.rewrite), path)
    elif rewrite.uri is not None:
        prefix = next((p for p, fold in prefixes if (path.lower() if fold else path).startswith(p)), None)
        path = rewrite.uri + path[len(prefix) :] if prefix is not None else rewrite.uri
        if not path.startswith("/"):
            path = "/" + path
    else:
        return None  # an authority-only rewrite
    return f"{path}?{query}" if query else path


def request_ops(route: Route | None, target: Target) -> tuple[HeaderOps, ...]:
    """Header edits for the upstream request: the destination's, then the route's."""
    first = target.request_ops
    second = route.request_ops if route is not None else None
    if first is None:
        return () if second is None else (second,)
    return (first,) if second is None else (first, second)


def response_ops(route: Route | None, target: Target | None) -> tuple[HeaderOps, ...]:
    """Header edits for the answer the caller sees, in the same order."""
    first = target.response_ops if target is not None else None
    second = route.response_ops if route is not None else None
    if first is None:
        return () if second is None else (second,)
    return (first,) if second is None else (first, second)


def apply_header_ops(headers: list[tuple[str, str]], ops: tuple[HeaderOps, ...]) -> list[tuple[str, str]]:
    """Envoy's header edits on a list of (lower-case name, value): remove, set, then add.
    Returns a new list; the caller's stays as it was."""
    out = list(headers)
    for op in ops:
        drop = {*op.remove, *(name for name, _ in op.set)}
        if drop:
            out = [(k, v) for k, v in out if k not in drop]
        out.extend(op.set)
        out.extend(op.add)
    return out


def shadow_authority(authority: str) -> str:
    """Envoy's mark on a mirrored copy: ``reviews:9080`` -> ``reviews-shadow:9080`` (and
    ``[fd00::1]:9080`` -> ``[fd00::1]-shadow:9080``)."""
    if authority.startswith("["):
        address, bracket, rest = authority.partition("]")
        return address + bracket + "-shadow" + rest
    name, colon, port = authority.partition(":")
    return name + "-shadow" + colon + port
