"""What the sync and aio gRPC clients share: gRPC <-> the client stack, and the plain grpc
channels under a mesh channel. No I/O here.

A gRPC call is the stack's POST to ``/pkg.Service/Method``: the route's rewrite changes
that path (the method called upstream) and the authority; header edits change the
metadata sent, and the answer's initial metadata the caller sees.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc

from ..adapter import (
    Attempt,
    Call,
    ClientMesh,
    Exchange,
    Failure,
    HeaderOps,
    MeshError,
    Outcome,
    Reply,
    RoutingTable,
    TlsMaterial,
    TlsOriginations,
    TlsSettingsError,
    Waiting,
    apply_header_ops,
    current_deadline,
    http_status_for_grpc,
    outbound,
    response_ops,
    service_dns_name,
    system_root_certificates,
)

__all__ = [
    "Channels",
    "GrpcAdapter",
    "GrpcMesh",
    "MeshRpcError",
    "Metadata",
    "Spec",
    "http_status",
]

Metadata = Sequence[tuple[str, str | bytes]]
Secure = tuple[Any, str, int, int]  # credentials, name to verify, generation, TLS settings key
MAX_MIRRORS_IN_FLIGHT = 64  # per mesh channel, as for HTTP: beyond it copies are shed
RETIRE_AFTER = 60.0  # seconds a channel of a rotated-out certificate stays open for its calls

# A mesh failure (Envoy response flag) as the gRPC status a caller sees.
_FLAG_CODES = {
    "NR": grpc.StatusCode.UNIMPLEMENTED,
    "NC": grpc.StatusCode.UNAVAILABLE,
    "UH": grpc.StatusCode.UNAVAILABLE,
    "UO": grpc.StatusCode.UNAVAILABLE,
    "UT": grpc.StatusCode.DEADLINE_EXCEEDED,
    "URX": grpc.StatusCode.UNAVAILABLE,
}
_ARITIES = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def http_status(code: grpc.StatusCode) -> int:
    return http_status_for_grpc(code.name)


class GrpcMesh(ClientMesh, Protocol):
    """What the gRPC clients need of a Mesh: the client's, and the gRPC routing table."""

    @property
    def grpc_table(self) -> RoutingTable: ...


class MeshRpcError(MeshError, grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A call the mesh ended itself (no route, no healthy endpoint, overflow, timeout, fault,
    no certificate to speak mTLS with); ``flag`` is the Envoy response flag."""

    def __init__(self, code: grpc.StatusCode, details: str, flag: str = "") -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self.flag = flag

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


@dataclass(slots=True)
class Spec:
    """One call as the caller made it (rides on the exchange for the driver's sends)."""

    method: str
    request: Any
    metadata: Metadata | None
    streaming_in: bool
    streaming_out: bool
    serializers: tuple[Any, Any] = (None, None)  # request serializer, response deserializer
    with_call: bool = False

    @property
    def arity(self) -> str:
        return _ARITIES[(self.streaming_in, self.streaming_out)]


class _MetadataLookup:
    __slots__ = ("_map", "_metadata")

    def __init__(self, metadata: Metadata | None) -> None:
        self._metadata = metadata or ()
        self._map: dict[str, str] | None = None

    def __call__(self, name: str) -> str | None:
        if self._map is None:
            self._map = {}
            for key, value in self._metadata:
                if isinstance(value, str):
                    self._map.setdefault(key.lower(), value)
        return self._map.get(name)

    def __len__(self) -> int:
        return len(self._metadata)


def metadata_lookup(metadata: Metadata | None) -> Callable[[str], str | None]:
    """Header lookups over gRPC metadata (first value of a name, text values only)."""
    return _MetadataLookup(metadata)


class GrpcAdapter:
    """Exchanges from gRPC calls, what each decided attempt sends, and the caller's answer."""

    def __init__(self, mesh: GrpcMesh, target: str) -> None:
        self.mesh = mesh
        host, _, port = target.partition(":")
        self.host = host
        self.port = int(port) if port.isdigit() else None
        self._credentials: tuple[int, Any] | None = None  # (identity generation, channel credentials)

    def waiting(self) -> Waiting | None:
        """The first call to this host of a workload that learns its egress hosts: what to
        wait for before routing it (None: nothing, the common case)."""
        learned = self.mesh.learned_egress
        if learned is None:
            return None
        table = self.mesh.grpc_table
        return learned.wanted(table, self.host, table.resolve(self.host, self.port))

    def after_waiting(self, timeout: float | None, started: float) -> float | None:
        """The call's timeout once the wait for its host (``waiting``) that began at
        ``started`` is taken off; DEADLINE_EXCEEDED when nothing is left of it."""
        if timeout is None:
            return None
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            raise MeshRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded while waiting for the endpoints of {self.host}",
                "UT",
            )
        return left

    def exchange(self, spec: Spec, timeout: float | None) -> Exchange | None:
        """The call as the client stack sees it; None when the target is not a mesh service
        (the call then goes straight through)."""
        table = self.mesh.grpc_table
        fqdn = table.resolve(self.host, self.port)
        if fqdn is None:
            return None
        call = Call(
            method="POST",
            scheme="http",
            host=self.host,
            port=self.port,
            path=spec.method,
            query="",
            header=_MetadataLookup(spec.metadata),
            authority=self.host,
            protocol="grpc",
        )
        deadline = current_deadline()
        if timeout is not None:
            ends = time.monotonic() + timeout
            if deadline is None or ends < deadline:
                deadline = ends
        return outbound(
            self.mesh, call, table, fqdn, deadline=deadline, replayable=not spec.streaming_in, request=spec
        )

    def flow(self, ex: Exchange) -> Any:
        return self.mesh.client_stack_runner(ex)

    def credentials(self, attempt: Attempt) -> Secure | None:
        """TLS credentials for a decided attempt (mesh mTLS, or the DestinationRule's own TLS),
        the name its certificate must carry, the generation they were made from and the key
        of the rule's TLS settings (0: mesh mTLS); None for plaintext.

        grpcio checks host names, not SPIFFE URIs: the certificate's DNS SAN ``<sa>.<ns>.svc``
        (issued with every SVID) is what it verifies, via ``ssl_target_name_override``."""
        if attempt.tls is not None:
            return self._originated(attempt)
        if not attempt.mtls:
            return None
        endpoint = attempt.endpoint
        identity: Any = self.mesh.workload_identity
        assert endpoint is not None
        assert endpoint.identity is not None
        name = service_dns_name(endpoint.identity)
        if name is None:
            raise MeshRpcError(
                grpc.StatusCode.UNAVAILABLE, f"{endpoint.identity} is not a SPIFFE ID of this mesh", "UF"
            )
        generation = identity.generation
        made = self._credentials
        if made is None or made[0] != generation:  # once per certificate or bundle, not per call
            key, chain, roots = identity.pem()
            creds = grpc.ssl_channel_credentials(
                root_certificates=roots, private_key=key, certificate_chain=chain
            )
            made = self._credentials = (generation, creds)
        return made[1], name, generation, 0

    def _originated(self, attempt: Attempt) -> Secure:
        """DestinationRule TLS origination: grpcio sends ``name`` (the rule's sni, else the
        requested host) as SNI and verifies the certificate against it, with the rule's CA or
        the OS roots, presenting the client certificate in MUTUAL mode. What grpcio cannot do
        is refused, never skipped (``_unsupported``)."""
        tls = attempt.tls
        assert tls is not None
        name = attempt.server_name or self.host
        refusal = _unsupported(tls, name)
        if refusal is not None:
            raise MeshRpcError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.host}: DestinationRule tls.{refusal}; the call is not sent",
                "UF",
            )
        try:
            origin = CREDENTIALS.get(tls)
        except TlsSettingsError as error:
            raise MeshRpcError(grpc.StatusCode.UNAVAILABLE, f"{self.host}: {error}", "UF") from error
        return origin.current(), name, origin.generation, origin.key

    @staticmethod
    def metadata(spec: Spec, attempt: Attempt, ex: Exchange) -> Metadata | None:
        """What goes upstream: the caller's metadata with the attempt's header edits and the
        trace context."""
        traceparent = ex.traceparent
        if not attempt.headers and traceparent is None:
            return spec.metadata  # nothing to edit: pass it as it is
        pairs = _lowered(spec.metadata)
        if attempt.headers:
            pairs = apply_header_ops(pairs, attempt.headers)  # type: ignore[arg-type,assignment]
        if traceparent is not None:
            pairs = [(k, v) for k, v in pairs if k not in _TRACE_KEYS]
            pairs.append(("traceparent", traceparent))
            if ex.tracestate is not None:
                pairs.append(("tracestate", ex.tracestate))
            if ex.baggage is not None:
                pairs.append(("baggage", ex.baggage))
        return pairs  # type: ignore[return-value]

    @staticmethod
    def ok(response: Any) -> Outcome:
        return Outcome(status=200, grpc_status="OK", response=response)

    @staticmethod
    def unsendable(error: MeshRpcError) -> Outcome:
        """An attempt that could not open its channel: a connect failure, nothing was sent."""
        return Outcome(failure=Failure.CONNECT, grpc_status=error.code().name, error=error, local=True)

    @staticmethod
    def failed(error: grpc.RpcError) -> Outcome:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        return Outcome(status=http_status(code), grpc_status=code.name, response=None, error=error)

    @staticmethod
    def finish(ex: Exchange, reply: Reply) -> Any:
        """The response, or the RpcError the caller sees."""
        if reply.error is not None:
            raise MeshRpcError(
                _FLAG_CODES.get(reply.error, grpc.StatusCode.UNAVAILABLE),
                f"{ex.fqdn}: {reply.message}",
                reply.error,
            )
        if reply.synthetic is not None:
            name = reply.synthetic.grpc_status
            code = (
                grpc.StatusCode[name]
                if name
                else (
                    grpc.StatusCode.UNAVAILABLE if reply.synthetic.status >= 500 else grpc.StatusCode.UNKNOWN
                )
            )
            raise MeshRpcError(code, "fault filter abort", "FI")
        outcome = reply.outcome
        assert outcome is not None
        error = outcome.error
        if error is not None:
            if isinstance(error, MeshRpcError | grpc.RpcError):
                raise error
            raise MeshRpcError(grpc.StatusCode.UNAVAILABLE, f"{ex.fqdn}: {error}", "UF") from error
        return outcome.response

    @staticmethod
    def answer_metadata(ex: Exchange) -> tuple[HeaderOps, ...]:
        """Edits of the answer's initial metadata (route's, then the destination's)."""
        return response_ops(ex.route, ex.target)


def _unsupported(tls: Any, name: str) -> str | None:
    """The part of a rule's TLS grpcio's credentials cannot carry out (they verify the one
    name sent as SNI, against the roots given, and take nothing else), as ``field: why``."""
    if tls.insecure_skip_verify:
        return "insecureSkipVerify is not supported by gRPC clients (grpcio always verifies the server)"
    if tls.ca_crl:
        return "caCrl is not supported by gRPC clients (grpcio's credentials take no revocation list)"
    names = tls.subject_alt_names
    if names and name.lower() not in (n.lower() for n in names):
        return (
            f"subjectAltNames must include the SNI name {name} for gRPC clients (grpcio verifies "
            "the server certificate against that one name)"
        )
    return None


def _channel_credentials(tls: Any, material: TlsMaterial) -> grpc.ChannelCredentials:
    """grpcio's credentials from a rule's files (the OS roots without caCertificates)."""
    roots = material.ca if material.ca is not None else system_root_certificates()
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=material.key, certificate_chain=material.cert
    )


# Credentials of DestinationRule TLS origination, one per distinct settings, for every channel.
CREDENTIALS: TlsOriginations[grpc.ChannelCredentials] = TlsOriginations(_channel_credentials)


_TRACE_KEYS = frozenset(("traceparent", "tracestate"))


def _lowered(metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
    return [(k.lower(), v) for k, v in metadata or ()]


C = TypeVar("C")
# address, port, certificate generation, authority, DestinationRule TLS settings (0: none)
ChannelKey = tuple[str, int, int, str, int]


class Channels(Generic[C]):
    """The plain grpc channels under one mesh channel: one per endpoint, certificate
    generation (grpcio credentials are fixed, so a rotation brings a new channel), authority
    (a rewrite, or ``-shadow`` for mirrored copies) and DestinationRule TLS settings (a
    channel opened under one rule's TLS never carries a call under another's). Channels of a
    rotated-out certificate are closed later (``retire``): calls still running on them finish
    first."""

    def __init__(
        self,
        adapter: GrpcAdapter,
        target: str,
        options: list[tuple[str, Any]],
        insecure: Callable[[str, list[tuple[str, Any]]], C],
        secure: Callable[[str, Any, list[tuple[str, Any]]], C],
        retire: Callable[[C], None],
        lock: Any = None,
    ) -> None:
        self._adapter = adapter
        self._target = target
        self._options = options
        self._insecure = insecure
        self._secure = secure
        self._retire = retire
        self._lock = lock if lock is not None else contextlib.nullcontext()  # sync channels: threads
        self.open: dict[ChannelKey, C] = {}
        self._stubs: dict[tuple[int, str, str], Any] = {}

    def direct(self) -> C:
        """The target as it is (not a mesh service)."""
        return self._get(None, None, "")

    def get(self, attempt: Attempt) -> C:
        """The channel for a decided attempt (raises MeshRpcError when it cannot be opened)."""
        return self._get(attempt, self._adapter.credentials(attempt), attempt.authority or "")

    def _get(self, attempt: Attempt | None, secure: Secure | None, authority: str) -> C:
        endpoint = attempt.endpoint if attempt is not None else None
        generation, settings = (secure[2], secure[3]) if secure is not None else (-1, 0)
        if endpoint is None:
            key = (self._target, 0, generation, authority, settings)
            address = self._target
        else:
            key = (endpoint.address, endpoint.port, generation, authority, settings)
            address = f"{endpoint.address}:{endpoint.port}"
        channel = self.open.get(key)
        if channel is not None:
            return channel
        with self._lock:
            channel = self.open.get(key)
            if channel is not None:
                return channel
            options = list(self._options)
            if authority:
                options.append(("grpc.default_authority", authority))
            if secure is None:
                channel = self._insecure(address, options)
            else:
                options.append(("grpc.ssl_target_name_override", secure[1]))
                channel = self._secure(address, secure[0], options)
                for stale in [k for k in self.open if k[:2] == key[:2] and k[3:] == key[3:] and k != key]:
                    old = self.open.pop(stale)
                    self._stubs = {k: v for k, v in self._stubs.items() if k[0] != id(old)}
                    self._retire(old)
            self.open[key] = channel
        return channel

    def stub(self, channel: C, spec: Spec, path: str | None = None) -> Any:
        """The channel's multicallable for a method, made once (grpc registers the method path
        on each creation: several µs a call otherwise)."""
        method = path or spec.method
        key = (id(channel), spec.arity, method)
        stub = self._stubs.get(key)
        if stub is None:
            stub = getattr(channel, spec.arity)(
                method, request_serializer=spec.serializers[0], response_deserializer=spec.serializers[1]
            )
            with self._lock:
                self._stubs = {**self._stubs, key: stub}  # readers see the old map or the new
        return stub

    def take_all(self) -> list[C]:
        with self._lock:
            channels, self.open, self._stubs = list(self.open.values()), {}, {}
        return channels
