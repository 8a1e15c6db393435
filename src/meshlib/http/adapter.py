"""What the sync and async httpx transports share: httpx <-> the client stack, no I/O.

The drivers (transport.py) only run the stack's generator, performing each action
with blocking or awaitable I/O; everything else is here, written once.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import httpx

from ..core.call import Call
from ..core.dataplane import DataPlane, HeaderOps
from ..core.deadline import DEADLINE_HEADER, current_deadline, format_timeout_ms
from ..core.exchange import Exchange, Outcome, Reply, Send
from ..core.retry_policy import Failure
from .errors import (
    MeshTimeoutError,
    NoHealthyUpstreamError,
    NoRouteError,
    RetriesExhaustedError,
    UpstreamOverflowError,
)

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["HttpAdapter"]

_ERRORS: dict[str, type[httpx.RequestError]] = {
    "NR": NoRouteError,
    "UH": NoHealthyUpstreamError,
    "UO": UpstreamOverflowError,
    "UT": MeshTimeoutError,
    "URX": RetriesExhaustedError,
}
_CONNECT_TIMEOUT = 10.0  # Istio's default connectTimeout


def failure_of(error: BaseException) -> Failure | None:
    """An httpx error as a retry/outlier failure; None for errors that are the caller's own."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Failure.CONNECT
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return Failure.TIMEOUT
    if isinstance(error, httpx.NetworkError | httpx.RemoteProtocolError):
        return Failure.RESET
    return None


class HttpAdapter:
    """Builds the exchange from an httpx.Request and the upstream requests from Send actions."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.stack = mesh.client_stack_runner

    def plane(self) -> DataPlane:
        return self.mesh.http_plane

    def exchange(self, request: httpx.Request, plane: DataPlane, fqdn: str) -> Exchange:
        url = request.url
        headers = request.headers
        call = Call(
            method=request.method,
            scheme=url.scheme,
            host=url.host,
            port=url.port,
            path=url.path,
            query=url.query.decode("ascii", "replace"),
            header=headers.get,
            authority=headers.get("host", url.host),
        )
        mesh = self.mesh
        ex = Exchange(
            call=call,
            plane=plane,
            clusters=mesh.clusters,
            rng=mesh.rng,
            clock=time.monotonic,
            fqdn=fqdn,
            source=mesh.workload_id,
            started=time.monotonic(),
            deadline=current_deadline(),
        )
        ex.idempotency_key = "idempotency-key" in headers
        return ex

    def upstream_request(
        self, request: httpx.Request, ex: Exchange, send: Send | object, mirror: bool = False
    ) -> httpx.Request:
        """The request as it leaves for one endpoint: rewritten, re-addressed, headers edited."""
        endpoint = getattr(send, "endpoint", None)
        target = getattr(send, "target")  # noqa: B009 - Send and Mirror both carry one
        route = ex.route
        url = request.url
        path = url.raw_path.decode("ascii")
        headers = request.headers.copy()
        if route is not None and route.rewrite is not None:
            path = _rewrite_path(path, route.rewrite, route.prefixes)
            if route.rewrite.authority:
                headers["host"] = route.rewrite.authority
        if route is not None and route.request_ops is not None:
            _apply(headers, route.request_ops)
        if target.request_ops is not None:
            _apply(headers, target.request_ops)
        if mirror:
            headers["host"] = headers.get("host", url.host) + "-shadow"  # as Envoy marks copies
        timeout = getattr(send, "timeout", None)
        if ex.deadline is not None:
            headers[DEADLINE_HEADER] = format_timeout_ms(max(0.0, ex.deadline - time.monotonic()))
        if endpoint is not None:
            scheme = "https" if endpoint.protocol == "https" else url.scheme
            new_url = url.copy_with(
                scheme=scheme, host=endpoint.address, port=endpoint.port, raw_path=path.encode()
            )
        else:
            new_url = url.copy_with(raw_path=path.encode())
        extensions = dict(request.extensions)
        if timeout is not None:
            extensions["timeout"] = {
                "connect": min(timeout, _CONNECT_TIMEOUT),
                "read": timeout,
                "write": timeout,
                "pool": timeout,
            }
        return httpx.Request(
            request.method, new_url, headers=headers, stream=request.stream, extensions=extensions
        )

    @staticmethod
    def outcome(response: httpx.Response) -> Outcome:
        grpc = response.headers.get("grpc-status")
        return Outcome(
            status=response.status_code,
            response=response,
            grpc_status=_GRPC_NAMES.get(grpc) if grpc is not None else None,
        )

    @staticmethod
    def failed(error: BaseException) -> Outcome:
        failure = failure_of(error)
        if failure is None:
            raise error
        return Outcome(failure=failure, error=error)

    def finish(self, request: httpx.Request, ex: Exchange, reply: Reply) -> httpx.Response:
        """The reply as the caller sees it: a response, or a mesh error named after its flag."""
        self._record(ex, reply)
        if reply.error is not None:
            raise _ERRORS[reply.error](f"{ex.fqdn}: {reply.message}", request=request)
        if reply.synthetic is not None:
            synthetic = reply.synthetic
            response = httpx.Response(
                synthetic.status, headers=list(synthetic.headers), content=synthetic.body, request=request
            )
        else:
            outcome = reply.outcome
            assert outcome is not None
            if outcome.error is not None:
                if "URX" in ex.flags:
                    raise RetriesExhaustedError(
                        f"{ex.fqdn}: {ex.attempts} attempt(s) failed; last: {outcome.error}", request=request
                    ) from outcome.error
                raise outcome.error
            response = outcome.response
        route, target = ex.route, ex.target
        if route is not None and route.response_ops is not None:
            _apply(response.headers, route.response_ops)
        if target is not None and target.response_ops is not None:
            _apply(response.headers, target.response_ops)
        return response

    def _record(self, ex: Exchange, reply: Reply) -> None:
        if reply.synthetic is not None:
            code = reply.synthetic.status
        elif reply.outcome is not None and reply.outcome.status is not None:
            code = reply.outcome.status
        else:
            code = 0
        elapsed = (time.monotonic() - ex.started) * 1000.0
        self.mesh.metrics.record("outbound", ex.fqdn, code, ",".join(ex.flags) or "-", elapsed)


def _apply(headers: httpx.Headers, ops: HeaderOps) -> None:
    for name in ops.remove:
        headers.pop(name, None)
    for name, value in ops.set:
        headers[name] = value
    for name, value in ops.add:
        existing = headers.get(name)
        headers[name] = value if existing is None else f"{existing},{value}"


def _rewrite_path(raw: str, rewrite: object, prefixes: tuple[str, ...]) -> str:
    from ..policy.virtual_service import HTTPRewrite

    assert isinstance(rewrite, HTTPRewrite)
    path, sep, query = raw.partition("?")
    if rewrite.uri_regex_rewrite is not None:
        spec = rewrite.uri_regex_rewrite
        path = re.sub(spec.match, spec.rewrite, path)  # \1 groups, as RE2 writes them
    elif rewrite.uri is not None:
        prefix = next((p for p in prefixes if path.startswith(p)), None)
        path = rewrite.uri + path[len(prefix) :] if prefix is not None else rewrite.uri
        if not path.startswith("/"):
            path = "/" + path
    return path + sep + query


_GRPC_NAMES = {
    "0": "OK",
    "1": "CANCELLED",
    "2": "UNKNOWN",
    "3": "INVALID_ARGUMENT",
    "4": "DEADLINE_EXCEEDED",
    "5": "NOT_FOUND",
    "6": "ALREADY_EXISTS",
    "7": "PERMISSION_DENIED",
    "8": "RESOURCE_EXHAUSTED",
    "9": "FAILED_PRECONDITION",
    "10": "ABORTED",
    "11": "OUT_OF_RANGE",
    "12": "UNIMPLEMENTED",
    "13": "INTERNAL",
    "14": "UNAVAILABLE",
    "15": "DATA_LOSS",
    "16": "UNAUTHENTICATED",
}
