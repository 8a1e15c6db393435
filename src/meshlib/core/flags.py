"""Envoy response flags, recorded per request for access logs and metrics."""

from __future__ import annotations

__all__ = ["DI", "FI", "NC", "NR", "RBAC", "RL", "UAEX", "UC", "UF", "UH", "UO", "URX", "UT"]

UH = "UH"  # no healthy upstream endpoint
UF = "UF"  # upstream connection failure
UO = "UO"  # upstream overflow: connection pool limits (circuit breaking)
URX = "URX"  # retries exhausted: attempt limit or retry budget reached
NR = "NR"  # no route matched
NC = "NC"  # no cluster: a route's destination host is not a mesh host
DI = "DI"  # request delayed by fault injection
FI = "FI"  # request aborted by fault injection
UT = "UT"  # upstream request timeout
UC = "UC"  # upstream connection terminated (reset after the request was sent)
RL = "RL"  # rate limited locally
UAEX = "UAEX"  # refused by an external (CUSTOM) authorization provider
RBAC = "RBAC"  # refused by an AuthorizationPolicy (Envoy: response code details rbac_access_denied)


def flags_label(flags: list[str]) -> str:
    """The flags as access logs and metrics write them: ``UF,URX``, or ``-`` for none."""
    return ",".join(flags) if flags else "-"
