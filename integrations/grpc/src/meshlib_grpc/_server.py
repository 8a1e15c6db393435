"""The server side: an interceptor running the mesh's inbound stack, and ``serve``.

``MeshServerInterceptor`` (for ``grpc.server``): the caller's gRPC deadline bounds the
handler's outbound mesh calls (an already-expired call is refused with DEADLINE_EXCEEDED
without running the handler), inbound metrics, peer identity hook. ``serve`` runs a
``grpc.server`` as a mesh workload: the standard health service tied to readiness,
registration when serving, and on SIGTERM: NOT_SERVING, endpoint marked not ready, a pause
for clients to notice, in-flight calls finished (bounded), deregistration.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from meshlib import Mesh, PeerIdentity
from meshlib.ca.svid import spiffe_id_of
from meshlib.core.call import Call
from meshlib.core.deadline import _deadline
from meshlib.core.flags import flags_label
from meshlib.core.server_stack import Answer, Handle, Inbound
from meshlib.peer import _peer
from meshlib.registry import AnnouncedEndpoint
from meshlib.server.limits import ServerLimits, grpc_server_options
from meshlib.server.serving import advertise_address

from ._common import _MetadataLookup, http_status

__all__ = ["MeshServerInterceptor", "listen", "peer_of", "serve", "server_credentials"]

log = logging.getLogger("meshlib")
_NO_DEADLINE = 10 * 365 * 24 * 3600.0


class MeshServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        metadata = details.invocation_metadata
        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        changes = {
            kind: self._wrap(getattr(handler, kind), method, metadata, kind.endswith("stream"))
            for kind in kinds
            if getattr(handler, kind) is not None
        }
        return handler._replace(**changes)

    def _wrap(
        self, behavior: Callable[..., Any], method: str, metadata: Any, streaming_out: bool
    ) -> Callable[..., Any]:
        mesh = self.mesh

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            now = time.monotonic()
            call = Call(
                method="POST",
                scheme="http",
                host="",
                port=None,
                path=method,
                query="",
                header=_MetadataLookup(metadata),
                protocol="grpc",
            )
            ex = mesh.inbound(call, now)
            remaining: float | None = context.time_remaining()
            if remaining is not None and remaining > _NO_DEADLINE:
                remaining = None  # grpc reports "no deadline" as ~9.2e18 s
            if remaining is not None:
                ex.deadline = now + remaining
            if remaining is not None and remaining <= 0:
                mesh.metrics.record("inbound", mesh.fqdn, 504, "UT", 0.0)
                context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call was handled"
                )
            flow = mesh.server_stack_runner(ex)
            try:
                action = flow.send(None)
                assert isinstance(action, Handle)
            except StopIteration as done:
                answer: Answer = done.value
                context.abort(grpc.StatusCode.UNAVAILABLE, answer.body.decode(errors="replace").strip())
            scope = contextvars.copy_context()
            if ex.deadline is not None:
                scope.run(_deadline.set, ex.deadline)
            scope.run(_peer.set, peer_of(context))
            if not streaming_out:
                try:
                    return scope.run(behavior, request, context)
                finally:
                    _record(mesh, ex, context)
            return _in_scope(scope, scope.run(behavior, request, context), lambda: _record(mesh, ex, context))

        return wrapped


def _in_scope(scope: contextvars.Context, stream: Iterator[Any], done: Callable[[], None]) -> Iterator[Any]:
    """A response stream whose every step runs with the call's deadline set."""
    try:
        while True:
            try:
                item = scope.run(next, stream)
            except StopIteration:
                return
            yield item
    finally:
        done()


def _record(mesh: Mesh, ex: Inbound, context: grpc.ServicerContext) -> None:
    code = context.code() if hasattr(context, "code") else None
    status = http_status(code) if isinstance(code, grpc.StatusCode) else 200
    mesh.metrics.record(
        "inbound", mesh.fqdn, status, flags_label(ex.flags), (time.monotonic() - ex.started) * 1000.0
    )


def server_credentials(mesh: Mesh) -> grpc.ServerCredentials | None:
    """mTLS with the workload's identity, following its rotation (grpcio asks for a new
    configuration before each handshake; a new certificate is handed over when there is one).
    gRPC serves TLS or plaintext per port, not both: with an identity the port is mTLS-only."""
    identity = mesh.workload_identity
    if identity is None:
        return None
    seen = {"generation": identity.generation}

    def configuration() -> Any:
        key, chain, roots = identity.pem()
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def fetch() -> Any:
        if identity.generation == seen["generation"]:
            return None
        seen["generation"] = identity.generation
        return configuration()

    return grpc.dynamic_ssl_server_credentials(configuration(), fetch, require_client_authentication=True)


def peer_of(context: Any) -> PeerIdentity | None:
    """The caller's identity from the verified client certificate of the call's TLS connection."""
    try:
        auth = context.auth_context()
    except Exception:
        return None
    for pem in auth.get("x509_pem_cert", ()):
        spiffe = spiffe_id_of(x509.load_pem_x509_certificate(pem))
        if spiffe is not None:
            return PeerIdentity.parse(spiffe)
    return None


def listen(server: grpc.Server | grpc.aio.Server, mesh: Mesh, host: str, port: int) -> AnnouncedEndpoint:
    """Add the port (mTLS with the mesh identity when there is one); the endpoint to announce."""
    credentials = server_credentials(mesh)
    if credentials is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    return AnnouncedEndpoint(
        address=advertise_address(host), port=bound, protocol="grpc", tls=credentials is not None
    )


def serve(
    register: Callable[[grpc.Server], None],
    *,
    mesh: Mesh,
    host: str = "127.0.0.1",
    port: int = 50051,
    threads: int = 16,
    drain_delay: float = 2.0,
    drain_timeout: float = 20.0,
    ready: threading.Event | None = None,
    limits: ServerLimits | None = None,
) -> None:
    """Run a gRPC server as a mesh workload until SIGTERM/SIGINT, then drain.

    ``register(server)`` adds your servicers. ``ready`` (optional) is set once serving.
    ``limits`` bound metadata size and the time a silent or idle connection is kept."""
    own_mesh = not mesh.started
    mesh.start()
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads),
        interceptors=[MeshServerInterceptor(mesh)],
        options=grpc_server_options(limits or ServerLimits()),
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    endpoint = listen(server, mesh, host, port)
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    mesh.announce([endpoint])
    log.info("gRPC serving on %s:%d as %s", endpoint.address, endpoint.port, mesh.identity)
    stopping = threading.Event()

    def drain(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            server.stop(0)
            return
        stopping.set()

    previous = {sig: signal.signal(sig, drain) for sig in (signal.SIGTERM, signal.SIGINT)}
    if ready is not None:
        ready.set()
    try:
        while not stopping.wait(0.2):
            pass
        log.info("draining: NOT_SERVING, endpoint not ready; stopping in %.1fs", drain_delay)
        health_servicer.enter_graceful_shutdown()
        mesh.draining = True
        mesh.announce([endpoint.model_copy(update={"ready": False})])
        time.sleep(drain_delay)
        server.stop(drain_timeout).wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        mesh.announce([])
        if own_mesh:
            mesh.close()
