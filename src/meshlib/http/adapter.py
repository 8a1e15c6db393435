"""What the sync and async httpx transports share: httpx <-> the client stack, no I/O.

The drivers (transport.py) only run the stack's generator, performing each action
with blocking or awaitable I/O; everything else is here, written once.
"""

from __future__ import annotations

import re
import ssl
import time
import typing
from typing import TYPE_CHECKING

import httpcore
import httpx

from ..core.call import Call, RawHeaders
from ..core.client_stack import retriable
from ..core.cluster_state import Limits
from ..core.deadline import DEADLINE_HEADER, current_deadline, format_timeout_ms
from ..core.exchange import Exchange, Mirror, Outcome, Reply, Send, record_outbound
from ..core.retry_policy import Failure
from ..core.routing_table import Cluster, HeaderOps, RoutingTable
from ..core.snapshot import Endpoint
from ..errors import CertificateUnavailableError
from ..policy.virtual_service import re2_template
from ..workload_identity import outbound_mtls
from .body import AsyncStreamedBody, StreamedBody
from .errors import (
    MeshTimeoutError,
    NoHealthyUpstreamError,
    NoRouteError,
    RetriesExhaustedError,
    UpstreamOverflowError,
)
from .network import Lifetime

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
_DEADLINE_HEADER = DEADLINE_HEADER.encode()
MIRROR_TIMEOUT = 5.0  # a copy never holds a connection longer than this
STREAM_ABOVE = 64 * 1024  # bodies up to this size (Content-Length) are read inside the attempt
_CHUNKED_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body (without trailers)


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
)


def as_httpx_error(error: BaseException, request: httpx.Request) -> BaseException:
    """httpcore's exception as the httpx one a caller catches (most specific first)."""
    for core_type, httpx_type in _HTTPX_ERRORS:
        if isinstance(error, core_type):
            mapped = httpx_type(str(error) or type(error).__name__, request=request)
            mapped.__cause__ = error
            return mapped
    return error


class HttpAdapter:
    """Builds the exchange from an httpx.Request and the upstream requests from Send actions."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.stack = mesh.client_stack_runner
        self._default_ssl: ssl.SSLContext | None = None

    def plane(self) -> RoutingTable:
        return self.mesh.http_table

    def exchange(self, request: httpx.Request, plane: RoutingTable, fqdn: str) -> Exchange:
        url = request.url
        scheme = url.scheme
        path, _, query = url.raw_path.partition(b"?")  # as sent: %2F stays %2F
        call = Call(
            method=request.method,
            scheme=scheme,
            host=url.host,
            port=url.port or (443 if scheme == "https" else 80),  # picks the ServiceEntry port
            path=path.decode("ascii", "replace"),
            query=query.decode("ascii", "replace"),
            header=RawHeaders(request.headers.raw),
            authority=url.netloc.decode("ascii"),  # what httpx put in the Host header
        )
        mesh = self.mesh
        return Exchange(
            call=call,
            plane=plane,
            clusters=mesh.clusters,
            rng=mesh.rng,
            clock=time.monotonic,
            fqdn=fqdn,
            source=mesh.workload_id,
            started=time.monotonic(),
            deadline=current_deadline(),
            replayable=isinstance(request.stream, httpx.ByteStream),
        )

    def ssl_context(self, peer: str | None) -> ssl.SSLContext:
        """The mesh's client context for mTLS pools; plain httpx verification otherwise."""
        identity = self.mesh.workload_identity
        if peer is not None and identity is not None:
            return identity.client_context()
        if self._default_ssl is None:
            self._default_ssl = httpx.create_ssl_context()  # costs ~20 ms: made once, on first use
        return self._default_ssl

    def mtls_context(self) -> ssl.SSLContext:
        """The workload identity's client context as it is now (it is replaced when a root
        leaves the trust bundle); asked at every new mTLS connection."""
        identity = self.mesh.workload_identity
        return identity.client_context() if identity is not None else self.ssl_context(None)

    def use_mtls(self, cluster: Cluster | None, endpoint: Endpoint | None) -> bool:
        """Mutual TLS toward this endpoint? (``outbound_mtls`` has the rule.) No valid
        certificate where one is needed is a connection failure (UF) that names the reason:
        the request is never sent in plaintext instead."""
        tls = cluster.policy.tls if cluster is not None else None
        try:
            return outbound_mtls(self.mesh.workload_identity, tls.mode if tls is not None else None, endpoint)
        except CertificateUnavailableError as exc:
            raise _NoCertificate(str(exc)) from exc

    def upstream(
        self,
        request: httpx.Request,
        ex: Exchange,
        send: Send | Mirror,
        mirror: bool = False,
        mtls: bool = False,
    ) -> httpcore.Request:
        """The request as it leaves for one endpoint: rewritten, re-addressed, headers edited.

        Built for httpcore directly: an httpx.Request would parse the URL and copy the
        headers again per attempt (about 30 µs, more than half the mesh's own cost)."""
        endpoint = send.endpoint
        route = ex.route
        url = request.url
        extensions = request.extensions
        target_path = extensions.get("target") or url.raw_path  # httpcore's request-target override
        headers = request.headers.raw  # a fresh list on every access: ours to edit
        if route is not None and route.rewrite is not None:
            target_path = _rewrite_path(target_path.decode("ascii"), route.rewrite, route.prefixes).encode()
            if route.rewrite.authority:
                _set(headers, b"host", route.rewrite.authority.encode())
        if route is not None and route.request_ops is not None:
            _apply_raw(headers, route.request_ops)
        if send.target.request_ops is not None:
            _apply_raw(headers, send.target.request_ops)
        if mirror:
            host = next((v for k, v in headers if k.lower() == b"host"), url.raw_host)
            _set(headers, b"host", shadow_host(host))
        if ex.deadline is not None:
            remaining = format_timeout_ms(max(0.0, ex.deadline - time.monotonic()))
            _set(headers, _DEADLINE_HEADER, remaining.encode())
        sni: str | None = None
        if endpoint is not None:
            scheme = b"https" if mtls or endpoint.protocol == "https" else url.raw_scheme
            core_url = httpcore.URL(
                scheme=scheme, host=endpoint.address.encode(), port=endpoint.port, target=target_path
            )
            if scheme == b"https" and not mtls:
                # TLS proves the host the application asked for (or the DestinationRule's sni),
                # never the endpoint's address: a registry entry pointing a name at some
                # address cannot borrow that address's certificate.
                cluster = ex.cluster if isinstance(send, Send) else send.cluster
                tls = cluster.policy.tls if cluster is not None else None
                sni = tls.sni if tls is not None and tls.sni else url.host
        else:
            core_url = httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=target_path
            )
        if isinstance(send, Send):
            timeout = send.timeout
            limits = ex.state.limits(ex.cluster) if ex.state is not None and ex.cluster is not None else None
        else:
            timeout = MIRROR_TIMEOUT
            limits = Limits.from_cluster(send.cluster) if send.cluster is not None else None
        connect = (limits.connect_timeout if limits is not None else None) or _CONNECT_TIMEOUT
        extensions = {**extensions, "timeout": _timeouts(timeout, extensions.get("timeout"), connect)}
        if sni is not None:
            extensions["sni_hostname"] = sni
        return _UpstreamRequest(request.method.encode(), core_url, headers, request.stream, extensions)

    @staticmethod
    def served(ex: Exchange, core: httpcore.Response) -> None:
        """Count a response against its connection's lifetime limits, when the policy sets any."""
        state, cluster = ex.state, ex.cluster
        if state is None or cluster is None:
            return
        limits = state.limits(cluster)
        if limits.shapes_connections:
            stream = core.extensions.get("network_stream")
            if isinstance(stream, Lifetime):
                stream.used(
                    limits.requests_per_connection, limits.idle_timeout, limits.max_connection_duration
                )

    @staticmethod
    def response(core: httpcore.Response, content: bytes) -> Outcome:
        """An attempt's answer (body already read, so the connection is back in the pool)."""
        response = httpx.Response(
            core.status, headers=core.headers, stream=httpx.ByteStream(content), extensions=core.extensions
        )
        return Outcome(status=core.status, response=response, grpc_status=_grpc_status(core))

    @staticmethod
    def streams(ex: Exchange, core: httpcore.Response) -> bool:
        """Hand this body to the caller as it arrives? Yes for a large or open-ended one
        (no Content-Length: chunked downloads, server-sent events) unless the route could
        retry the answer: then it is read whole, as every small body is. A chunked body
        whose last chunk is already in (the last bytes read from the connection end the
        message) is small and whole: it is read at once too."""
        if core.status in (204, 304) or ex.call.method == "HEAD":
            return False
        for name, value in core.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                if value.isdigit() and int(value) <= STREAM_ABOVE:
                    return False
                break
        else:
            stream = core.extensions.get("network_stream")
            if getattr(stream, "tail", b"").endswith(_CHUNKED_END):
                return False
        route = ex.route
        if route is None:
            return True
        probe = Outcome(status=core.status, grpc_status=_grpc_status(core))
        return not retriable(route.retry, probe)

    @staticmethod
    def streamed(core: httpcore.Response, body: StreamedBody | AsyncStreamedBody) -> Outcome:
        """An attempt's answer whose body is still arriving (``streams`` said so)."""
        response = httpx.Response(core.status, headers=core.headers, stream=body, extensions=core.extensions)
        outcome = Outcome(
            status=core.status, response=response, grpc_status=_grpc_status(core), streaming=True
        )
        body.outcome = outcome
        return outcome

    @staticmethod
    def failed(error: BaseException, request: httpx.Request) -> Outcome:
        failure = failure_of(error)
        if failure is None:
            raise as_httpx_error(error, request)
        return Outcome(failure=failure, error=error, local=isinstance(error, _NoCertificate))

    def finish(self, request: httpx.Request, ex: Exchange, reply: Reply) -> httpx.Response:
        """The reply as the caller sees it: a response, or a mesh error named after its flag."""
        if reply.outcome is None or not reply.outcome.streaming:
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
                error = as_httpx_error(outcome.error, request)
                if "URX" in ex.flags:
                    raise _exhausted(type(error))(
                        f"{ex.fqdn}: {ex.attempts} attempt(s) failed; last: {error}", request=request
                    ) from error
                raise error
            response = outcome.response
            if outcome.streaming:  # counted when the body ends, with its whole duration
                response.stream.on_close = lambda: self._record(ex, reply)
        route, target = ex.route, ex.target
        if route is not None and route.response_ops is not None:
            _apply(response.headers, route.response_ops)
        if target is not None and target.response_ops is not None:
            _apply(response.headers, target.response_ops)
        return response

    def escaped(self, ex: Exchange) -> None:
        """An error escaped the stack (a body that failed to stream, a cancelled call): count it."""
        record_outbound(self.mesh.metrics, ex, None)

    def _record(self, ex: Exchange, reply: Reply) -> None:
        record_outbound(self.mesh.metrics, ex, reply)


class _NoCertificate(httpcore.ConnectError):
    """mTLS is needed and this workload holds no valid certificate: nothing was sent."""


class _UpstreamRequest(httpcore.Request):
    """An httpcore.Request from parts that are valid already (an httpx.Request's method,
    headers and stream, a URL built here): httpcore's constructor would check every header
    and the stream again with typing-ABC isinstance calls, ~2 µs per attempt (measured)."""

    def __init__(
        self,
        method: bytes,
        url: httpcore.URL,
        headers: list[tuple[bytes, bytes]],
        stream: typing.Any,
        extensions: dict[str, typing.Any],
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.stream = stream
        self.extensions = extensions


_NO_TIMEOUTS: dict[str, float | None] = {}


def _timeouts(
    limit: float | None, own: dict[str, float | None] | None, connect_limit: float
) -> dict[str, float | None]:
    """Per phase, the tighter of the caller's own httpx timeout and the attempt's limit (None:
    no limit); connecting is bounded by the DestinationRule's connectTimeout (Istio's 10 s
    by default) in any case."""
    own = own or _NO_TIMEOUTS
    connect, read, write, pool = own.get("connect"), own.get("read"), own.get("write"), own.get("pool")
    first = connect_limit if limit is None else min(limit, connect_limit)
    return {
        "connect": first if connect is None else min(first, connect),
        "read": _tighter(limit, read),
        "write": _tighter(limit, write),
        "pool": _tighter(limit, pool),
    }


def _tighter(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _set(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    size = len(name)
    for key, _ in headers:
        if len(key) == size and key.lower() == name:  # rare: replace every copy
            headers[:] = [(k, v) for k, v in headers if k.lower() != name]
            break
    headers.append((name, value))


def _apply_raw(headers: list[tuple[bytes, bytes]], ops: HeaderOps) -> None:
    """Istio's header operations on a raw header list (names compared case-insensitively)."""
    if ops.remove:
        gone = {name.encode() for name in ops.remove}
        headers[:] = [(k, v) for k, v in headers if k.lower() not in gone]
    for name, value in ops.set:
        _set(headers, name.encode(), value.encode())
    for name, value in ops.add:
        key = name.encode()
        existing = next((v for k, v in headers if k.lower() == key), None)
        _set(headers, key, value.encode() if existing is None else existing + b"," + value.encode())


def _apply(headers: httpx.Headers, ops: HeaderOps) -> None:
    for name in ops.remove:
        headers.pop(name, None)
    for name, value in ops.set:
        headers[name] = value
    for name, value in ops.add:
        existing = headers.get(name)
        headers[name] = value if existing is None else f"{existing},{value}"


def shadow_host(host: bytes) -> bytes:
    """Envoy's mark on a mirrored copy: ``reviews:9080`` -> ``reviews-shadow:9080`` (and
    ``[fd00::1]:9080`` -> ``[fd00::1]-shadow:9080``)."""
    if host.startswith(b"["):
        address, bracket, rest = host.partition(b"]")
        return address + bracket + b"-shadow" + rest
    name, colon, port = host.partition(b":")
    return name + b"-shadow" + colon + port


_EXHAUSTED: dict[type[BaseException], type[httpx.RequestError]] = {}


def _exhausted(base: type[BaseException]) -> type[httpx.RequestError]:
    """RetriesExhaustedError that is also the last attempt's own httpx error type, so that
    ``except httpx.TimeoutException`` still catches retries that all timed out."""
    found = _EXHAUSTED.get(base)
    if found is None:
        if not issubclass(base, httpx.TransportError) or issubclass(base, RetriesExhaustedError):
            return RetriesExhaustedError
        found = _EXHAUSTED[base] = type(f"RetriesExhausted{base.__name__}", (RetriesExhaustedError, base), {})
    return found


def _rewrite_path(raw: str, rewrite: object, prefixes: tuple[tuple[str, bool], ...]) -> str:
    from ..policy.virtual_service import HTTPRewrite

    assert isinstance(rewrite, HTTPRewrite)
    path, sep, query = raw.partition("?")
    if rewrite.uri_regex_rewrite is not None:
        spec = rewrite.uri_regex_rewrite
        path = re.sub(spec.match, re2_template(spec.rewrite), path)
    elif rewrite.uri is not None:
        prefix = next((p for p, fold in prefixes if (path.lower() if fold else path).startswith(p)), None)
        path = rewrite.uri + path[len(prefix) :] if prefix is not None else rewrite.uri
        if not path.startswith("/"):
            path = "/" + path
    return path + sep + query


def _grpc_status(core: httpcore.Response) -> str | None:
    if core.status != 200:
        return None
    for name, value in core.headers:
        if len(name) == 11 and name.lower() == b"grpc-status":  # the length first: no lower() per header
            return _GRPC_NAMES.get(value.decode("latin-1"))
    return None


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
