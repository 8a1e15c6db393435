"""Data-plane errors: each a MeshError and a subclass of the httpx exception a caller
would already catch, named after the Envoy response flag it stands for."""

from __future__ import annotations

import httpcore
import httpx

from ..core.retry_policy import Failure
from ..errors import CertificateUnavailableError, MeshError

__all__ = [
    "MeshRequestError",
    "MeshTimeoutError",
    "NoClusterError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "RetriesExhaustedError",
    "UpstreamOverflowError",
    "as_httpx_error",
    "failure_of",
]


class MeshRequestError(MeshError, httpx.RequestError):
    """A request the mesh could not carry out; ``flag`` is the Envoy response flag."""

    flag = ""


class NoRouteError(MeshRequestError):
    """NR: a VirtualService owns the host but none of its routes matches the request."""

    flag = "NR"


class NoClusterError(MeshRequestError, httpx.ConnectError):
    """NC: a route's destination host is not a mesh host, so there is nowhere to send."""

    flag = "NC"


class NoHealthyUpstreamError(MeshRequestError, httpx.ConnectError):
    """UH: the destination has no endpoint that is ready and not ejected."""

    flag = "UH"


class UpstreamOverflowError(MeshRequestError, httpx.PoolTimeout):
    """UO: the destination's connection pool limits are reached; refused without queueing."""

    flag = "UO"


class RetriesExhaustedError(MeshRequestError, httpx.TransportError):
    """URX: every allowed attempt failed, or the retry budget allowed no more."""

    flag = "URX"


class MeshTimeoutError(MeshRequestError, httpx.TimeoutException):
    """UT: the route timeout or the inbound deadline passed."""

    flag = "UT"


def failure_of(error: BaseException) -> Failure | None:
    """An httpcore error as a retry/outlier failure; None for errors that are the caller's own."""
    if isinstance(error, httpcore.ConnectError | httpcore.ConnectTimeout | httpcore.PoolTimeout):
        return Failure.CONNECT
    if isinstance(error, httpcore.TimeoutException | TimeoutError):
        return Failure.TIMEOUT
    if isinstance(error, httpcore.NetworkError | httpcore.RemoteProtocolError):
        return Failure.RESET
    return None


_HTTPX_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (TimeoutError, httpx.ReadTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (CertificateUnavailableError, httpx.ConnectError),  # refused before sending (UF)
)


def as_httpx_error(error: BaseException, request: httpx.Request) -> BaseException:
    """httpcore's exception as the httpx one a caller catches (most specific first)."""
    for core_type, httpx_type in _HTTPX_ERRORS:
        if isinstance(error, core_type):
            mapped = httpx_type(str(error) or type(error).__name__, request=request)
            mapped.__cause__ = error
            return mapped
    return error
