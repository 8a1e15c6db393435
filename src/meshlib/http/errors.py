"""Data-plane errors: each a MeshError and a subclass of the httpx exception a caller
would already catch, named after the Envoy response flag it stands for."""

from __future__ import annotations

import httpx

from ..errors import MeshError

__all__ = [
    "MeshRequestError",
    "MeshTimeoutError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "RetriesExhaustedError",
    "UpstreamOverflowError",
]


class MeshRequestError(MeshError, httpx.RequestError):
    """A request the mesh could not carry out; ``flag`` is the Envoy response flag."""

    flag = ""


class NoRouteError(MeshRequestError):
    """NR: a VirtualService owns the host but none of its routes matches the request."""

    flag = "NR"


class NoHealthyUpstreamError(MeshError, httpx.ConnectError):
    """UH: the destination has no endpoint that is ready and not ejected."""

    flag = "UH"


class UpstreamOverflowError(MeshError, httpx.PoolTimeout):
    """UO: the destination's connection pool limits are reached; refused without queueing."""

    flag = "UO"


class RetriesExhaustedError(MeshError, httpx.TransportError):
    """URX: every allowed attempt failed, or the retry budget allowed no more."""

    flag = "URX"


class MeshTimeoutError(MeshError, httpx.TimeoutException):
    """UT: the route timeout or the inbound deadline passed."""

    flag = "UT"
