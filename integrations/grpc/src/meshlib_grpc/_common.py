"""What the sync and aio gRPC adapters share: gRPC <-> the mesh's client stack, no I/O."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from meshlib import Mesh
from meshlib.ca.svid import service_dns_name
from meshlib.core.call import Call
from meshlib.core.deadline import current_deadline
from meshlib.core.exchange import Exchange, Outcome, Reply, record_outbound
from meshlib.core.retry_policy import Failure
from meshlib.core.routing_table import Cluster
from meshlib.core.snapshot import Endpoint
from meshlib.errors import CertificateUnavailableError
from meshlib.http.adapter import shadow_host
from meshlib.workload_identity import outbound_mtls

__all__ = ["GrpcAdapter", "MeshRpcError", "channel_key", "channel_settings", "http_status", "stale_keys"]

Metadata = Sequence[tuple[str, str | bytes]]

# gRPC status -> the HTTP status Envoy uses for it (outlier detection, metrics).
_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# A mesh failure (Envoy response flag) as the gRPC status a caller sees.
_FLAG_CODES = {
    "NR": grpc.StatusCode.UNIMPLEMENTED,
    "UH": grpc.StatusCode.UNAVAILABLE,
    "UO": grpc.StatusCode.UNAVAILABLE,
    "UT": grpc.StatusCode.DEADLINE_EXCEEDED,
    "URX": grpc.StatusCode.UNAVAILABLE,
}


MAX_MIRRORS_IN_FLIGHT = 64  # per mesh channel, as for HTTP: beyond it copies are shed
MIRROR_TIMEOUT = 5.0  # a mirrored call never holds resources longer than this
ChannelKey = tuple[str, int, int, bool]  # address, port, certificate generation, shadow


def channel_key(
    target: str, endpoint: Endpoint | None, secure: tuple[Any, str, int] | None, shadow: bool
) -> ChannelKey:
    generation = secure[2] if secure is not None else -1
    if endpoint is None:
        return (target, 0, generation, shadow)
    return (endpoint.address, endpoint.port, generation, shadow)


def channel_settings(
    target: str,
    endpoint: Endpoint | None,
    secure: tuple[Any, str, int] | None,
    shadow: bool,
    options: list[tuple[str, Any]],
) -> tuple[str, list[tuple[str, Any]]]:
    """Address and options of an endpoint's channel: the name its certificate must carry
    under mTLS, and Envoy's ``-shadow`` authority for mirrored copies."""
    address = f"{endpoint.address}:{endpoint.port}" if endpoint is not None else target
    extra: list[tuple[str, Any]] = []
    if secure is not None:
        extra.append(("grpc.ssl_target_name_override", secure[1]))
    if shadow:
        extra.append(("grpc.default_authority", shadow_host(target.encode()).decode()))
    return address, [*options, *extra] if extra else options


def stale_keys(channels: Mapping[ChannelKey, Any], key: ChannelKey) -> list[ChannelKey]:
    """Channels of the same endpoint (and kind) made for an older certificate generation."""
    return [k for k in channels if k[:2] == key[:2] and k[3] == key[3] and k != key]


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP.get(code, 500)


class MeshRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A call the mesh ended itself (no route, no healthy endpoint, overflow, timeout, fault)."""

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


class GrpcAdapter:
    """Builds exchanges from gRPC calls and turns replies into results or RpcErrors."""

    def __init__(self, mesh: Mesh, target: str) -> None:
        self.mesh = mesh
        host, _, port = target.partition(":")
        self.host = host
        self.port = int(port) if port.isdigit() else None
        self.stack = mesh.client_stack_runner
        self._credentials: tuple[int, Any] | None = None  # (identity generation, channel credentials)

    def exchange(
        self, method: str, metadata: Metadata | None, timeout: float | None, replayable: bool
    ) -> Exchange | None:
        """The call as the client stack sees it; None when the target is not a mesh service
        (the call then goes straight through)."""
        plane = self.mesh.grpc_table
        fqdn = plane.resolve(self.host)
        if fqdn is None:
            return None
        call = Call(
            method="POST",
            scheme="http",
            host=self.host,
            port=self.port,
            path=method,
            query="",
            header=_MetadataLookup(metadata),
            authority=self.host,
            protocol="grpc",
        )
        now = time.monotonic()
        deadline = current_deadline()
        if timeout is not None and (deadline is None or now + timeout < deadline):
            deadline = now + timeout
        mesh = self.mesh
        return Exchange(
            call=call,
            plane=plane,
            clusters=mesh.clusters,
            rng=mesh.rng,
            clock=time.monotonic,
            fqdn=fqdn,
            source=mesh.workload_id,
            started=now,
            deadline=deadline,
            replayable=replayable,
        )

    def credentials(self, cluster: Cluster | None, endpoint: Endpoint | None) -> tuple[Any, str, int] | None:
        """mTLS credentials toward an endpoint, the name its certificate must carry, and the
        identity generation they were made from; None for plaintext. The rule is the HTTP
        side's: DestinationRule tls.mode, else automatic when the endpoint serves mTLS.

        grpcio checks host names, not SPIFFE URIs: the certificate's DNS SAN ``<sa>.<ns>.svc``
        (issued with every SVID) is what it verifies, via ``ssl_target_name_override``."""
        identity = self.mesh.workload_identity
        tls = cluster.policy.tls if cluster is not None else None
        try:
            wanted = outbound_mtls(identity, tls.mode if tls is not None else None, endpoint)
        except CertificateUnavailableError as exc:
            raise MeshRpcError(grpc.StatusCode.UNAVAILABLE, str(exc), "UF") from exc
        if not wanted:
            return None
        assert identity is not None
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
        return made[1], name, generation

    @staticmethod
    def ok(response: Any) -> Outcome:
        return Outcome(status=200, grpc_status="OK", response=response)

    @staticmethod
    def unsendable(error: MeshRpcError) -> Outcome:
        """An attempt that could not open its channel (no certificate for mTLS): a connect failure."""
        return Outcome(failure=Failure.CONNECT, grpc_status=error.code().name, error=error, local=True)

    @staticmethod
    def failed(error: grpc.RpcError) -> Outcome:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        return Outcome(status=http_status(code), grpc_status=code.name, response=None, error=error)

    def finish(self, ex: Exchange, reply: Reply) -> Any:
        """The response, or the RpcError the caller sees."""
        self._record(ex, reply)
        if reply.error is not None:
            raise MeshRpcError(
                _FLAG_CODES.get(reply.error, grpc.StatusCode.UNAVAILABLE),
                f"{ex.fqdn}: {reply.message}",
                reply.error,
            )
        if reply.synthetic is not None:
            code = (
                grpc.StatusCode[reply.synthetic.grpc_status]
                if reply.synthetic.grpc_status
                else (
                    grpc.StatusCode.UNAVAILABLE if reply.synthetic.status >= 500 else grpc.StatusCode.UNKNOWN
                )
            )
            raise MeshRpcError(code, "fault filter abort", "FI")
        outcome = reply.outcome
        assert outcome is not None
        if outcome.error is not None:
            raise outcome.error
        return outcome.response

    def metadata(self, ex: Exchange, metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
        """What goes upstream: the caller's metadata plus route/target header edits."""
        route, target = ex.route, ex.target
        if (route is None or route.request_ops is None) and (target is None or target.request_ops is None):
            return metadata  # type: ignore[return-value]  # nothing to edit: pass it as it is
        out = list(metadata or ())
        for ops in (route.request_ops if route else None, target.request_ops if target else None):
            if ops is None:
                continue
            drop = set(ops.remove) | {k for k, _ in ops.set}
            out = [(k, v) for k, v in out if k.lower() not in drop]
            out.extend(ops.set)
            out.extend(ops.add)
        return out

    def escaped(self, ex: Exchange) -> None:
        """An error escaped the stack (a body that failed to stream, a cancelled call): count it."""
        record_outbound(self.mesh.metrics, ex, None)

    def _record(self, ex: Exchange, reply: Reply) -> None:
        record_outbound(self.mesh.metrics, ex, reply)
