"""What the sync and async httpx transports share: httpx <-> the client stack, no I/O.

The drivers (transport.py) only run the stack's generator, performing each action
with blocking or awaitable I/O; everything else is here, written once.
"""

from __future__ import annotations

import ssl
import time
import typing

import httpcore
import httpx

from ..core.attempt import response_ops
from ..core.call import Call, RawHeaders
from ..core.deadline import DEADLINE_HEADER, current_deadline, format_timeout_ms
from ..core.exchange import Attempt, Exchange, Outcome, Reply, Send
from ..core.retry_policy import Failure
from ..core.routing_table import HeaderOps, RoutingTable
from ..core.stack import Flow
from ..drivers import ClientMesh, outbound, workload_identity_of
from ..errors import CertificateUnavailableError
from ..tls_origination import Origin, TlsOriginations, client_context
from .body import AsyncStreamedBody, StreamedBody
from .errors import (
    MeshTimeoutError,
    NoClusterError,
    NoHealthyUpstreamError,
    NoRouteError,
    RetriesExhaustedError,
    UpstreamOverflowError,
    as_httpx_error,
    failure_of,
)
from .network import Lifetime

__all__ = ["HttpAdapter", "HttpMesh"]


class HttpMesh(ClientMesh, typing.Protocol):
    """What the HTTP transports need of a Mesh: the client's, and the HTTP routing table."""

    @property
    def http_table(self) -> RoutingTable: ...


_ERRORS: dict[str, type[httpx.RequestError]] = {
    "NR": NoRouteError,
    "NC": NoClusterError,
    "UH": NoHealthyUpstreamError,
    "UO": UpstreamOverflowError,
    "UT": MeshTimeoutError,
    "URX": RetriesExhaustedError,
}
_DEADLINE_HEADER = DEADLINE_HEADER.encode()
# SSL contexts of DestinationRule TLS origination, one per distinct settings, shared by every
# client of the process (a context is never changed once built, only replaced).
CONTEXTS: TlsOriginations[ssl.SSLContext] = TlsOriginations(client_context)
STREAM_ABOVE = 64 * 1024  # bodies up to this size (Content-Length) are read inside the attempt
_CHUNKED_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body (without trailers)


class HttpAdapter:
    """httpx <-> the client stack: the exchange from an httpx.Request, the httpcore request
    of a decided attempt, the httpx answer (or error) of the reply."""

    def __init__(self, mesh: HttpMesh) -> None:
        self.mesh = mesh
        self._default_ssl: ssl.SSLContext | None = None

    def table(self) -> RoutingTable:
        return self.mesh.http_table

    def exchange(self, request: httpx.Request, table: RoutingTable, fqdn: str) -> Exchange:
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
        return outbound(
            self.mesh,
            call,
            table,
            fqdn,
            deadline=current_deadline(),
            replayable=isinstance(request.stream, httpx.ByteStream),
            request=request,
        )

    def flow(self, ex: Exchange) -> Flow[Reply]:
        return self.mesh.client_stack_runner(ex)

    def ssl_context(self, peer: str | None) -> ssl.SSLContext:
        """The mesh's client context for mTLS pools; plain httpx verification otherwise."""
        identity = workload_identity_of(self.mesh)
        if peer is not None and identity is not None:
            return identity.client_context()
        if self._default_ssl is None:
            self._default_ssl = httpx.create_ssl_context()  # costs ~20 ms: made once, on first use
        return self._default_ssl

    @staticmethod
    def origination(send: Attempt) -> Origin[ssl.SSLContext] | None:
        """The DestinationRule's own TLS for this attempt (None: not originated), its context
        built once per distinct settings. Raises TlsSettingsError, before any connection is
        opened, when a file it names cannot be used."""
        tls = send.tls
        return None if tls is None else CONTEXTS.get(tls)

    def mtls_context(self) -> ssl.SSLContext:
        """The workload identity's client context as it is now (it is replaced when a root
        leaves the trust bundle); asked at every new mTLS connection."""
        identity = workload_identity_of(self.mesh)
        return identity.client_context() if identity is not None else self.ssl_context(None)

    @staticmethod
    def upstream(request: httpx.Request, ex: Exchange, send: Attempt) -> httpcore.Request:
        """The request as the decided attempt sends it: re-addressed, rewritten, headers edited.

        Built for httpcore directly: an httpx.Request would parse the URL and copy the
        headers again per attempt (about 30 µs, more than half the mesh's own cost)."""
        endpoint = send.endpoint
        url = request.url
        extensions = request.extensions
        if send.path is not None:
            target_path = send.path.encode()
        else:  # as sent (httpcore's request-target extension, if the caller set one)
            target_path = extensions.get("target") or url.raw_path
        headers = request.headers.raw  # a fresh list on every access: ours to edit
        if send.authority is not None:
            _set(headers, b"host", send.authority.encode())
        for ops in send.headers:
            _apply_raw(headers, ops)
        if ex.deadline is not None:
            remaining = format_timeout_ms(max(0.0, ex.deadline - time.monotonic()))
            _set(headers, _DEADLINE_HEADER, remaining.encode())
        if ex.traceparent is not None:
            _set(headers, b"traceparent", ex.traceparent.encode())
            if ex.tracestate is not None:
                _set(headers, b"tracestate", ex.tracestate.encode())
            else:
                _drop(headers, b"tracestate")  # invalid, or of a traceparent that was not valid
            if ex.baggage is not None:
                _set(headers, b"baggage", ex.baggage.encode())
        if endpoint is not None:
            tls = send.mtls or send.tls is not None or endpoint.protocol == "https"
            core_url = httpcore.URL(
                scheme=b"https" if tls else url.raw_scheme,
                host=endpoint.address.encode(),
                port=endpoint.port,
                target=target_path,
            )
        elif send.tls is not None:  # TLS originated to the host as requested, on its port (80 for http://)
            core_url = httpcore.URL(scheme=b"https", host=url.raw_host, port=ex.call.port, target=target_path)
        else:
            core_url = httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=target_path
            )
        extensions = {
            **extensions,
            "timeout": _timeouts(send.timeout, extensions.get("timeout"), send.connect_timeout),
        }
        if send.server_name is not None:
            extensions["sni_hostname"] = send.server_name
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
        outcome = Outcome(
            status=core.status, response=response, grpc_status=_grpc_status(core), body_size=len(content)
        )
        if core.status in (429, 503):
            _read_rate_limit(core, outcome)
        return outcome

    @staticmethod
    def streams(ex: Exchange, send: Send, core: httpcore.Response) -> bool:
        """Hand this body to the caller as it arrives? Yes for a large or open-ended one
        (no Content-Length: chunked downloads, server-sent events) unless the stack could
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
        return not send.retriable(core.status, _grpc_status(core))

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
        if isinstance(error, CertificateUnavailableError):  # refused before connecting (UF)
            return Outcome(failure=Failure.CONNECT, error=error, local=True)
        failure = failure_of(error)
        if failure is None:
            raise as_httpx_error(error, request)
        return Outcome(failure=failure, error=error)

    @staticmethod
    def finish(request: httpx.Request, ex: Exchange, reply: Reply) -> httpx.Response:
        """The reply as the caller sees it: a response, or a mesh error named after its flag."""
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
        route, target = ex.route, ex.target
        if (route is not None and route.response_ops) or (target is not None and target.response_ops):
            for ops in response_ops(route, target):
                response.headers = _apply(response.headers, ops)
        if ex.set_cookie is not None:
            response.headers = _apply(response.headers, HeaderOps(add=(("set-cookie", ex.set_cookie),)))
        return response


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


def _drop(headers: list[tuple[bytes, bytes]], name: bytes) -> None:
    size = len(name)
    for key, _ in headers:
        if len(key) == size and key.lower() == name:
            headers[:] = [(k, v) for k, v in headers if k.lower() != name]
            return


def _apply_raw(headers: list[tuple[bytes, bytes]], ops: HeaderOps) -> None:
    """Envoy's header edits on a raw header list (names compared case-insensitively): remove,
    set (replaces every entry of the name), add (appends one more entry)."""
    if ops.remove:
        gone = {name.encode() for name in ops.remove}
        headers[:] = [(k, v) for k, v in headers if k.lower() not in gone]
    for name, value in ops.set:
        _set(headers, name.encode(), value.encode())
    for name, value in ops.add:
        headers.append((name.encode(), value.encode()))


def _apply(headers: httpx.Headers, ops: HeaderOps) -> httpx.Headers:
    """The same on an answer's headers (a new Headers when an entry is added)."""
    for name in ops.remove:
        headers.pop(name, None)
    for name, value in ops.set:
        headers[name] = value
    if not ops.add:
        return headers
    return httpx.Headers([*headers.raw, *((n.encode(), v.encode()) for n, v in ops.add)])


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


def _read_rate_limit(core: httpcore.Response, outcome: Outcome) -> None:
    """Retry-After in seconds (its HTTP-date form is not used by meshes: ignored) and Envoy's
    x-envoy-ratelimited, for the retry filter."""
    for name, value in core.headers:
        lower = name.lower()
        if lower == b"retry-after":
            text = value.decode("latin-1").strip()
            outcome.retry_after = float(text) if text.isdigit() else None
        elif lower == b"x-envoy-ratelimited":
            outcome.ratelimited = True


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
