"""The gRPC server side: interceptors that run the mesh's server stack, and ``serve``.

``MeshServerInterceptor`` (``grpc.server``) and ``AioMeshServerInterceptor``
(``grpc.aio.server``) run every call through the same server stack as the ASGI and WSGI
middleware: the caller's gRPC deadline bounds the handler's outbound mesh calls and an
already-expired call is refused with DEADLINE_EXCEEDED without running the handler; the
verified peer (``meshlib.current_peer()``); flags and inbound metrics recorded the same way.
``serve`` runs a ``grpc.server`` as a mesh workload: the standard health service tied to
readiness, registration when serving, and on SIGTERM: NOT_SERVING, endpoint marked not
ready, a pause for clients to notice, in-flight calls finished (bounded), deregistration.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from ..adapter import (
    AnnouncedEndpoint,
    Answer,
    AsyncInboundRequest,
    Call,
    InboundRequest,
    PeerIdentity,
    ServerLimits,
    ServingMesh,
    advertise_address,
    edited_headers,
    grpc_server_options,
    grpc_status_for_http,
    spiffe_id_of,
)
from .adapter import Metadata, http_status, metadata_lookup

__all__ = [
    "AioMeshServerInterceptor",
    "MeshServerInterceptor",
    "listen",
    "peer_of",
    "serve",
    "server_credentials",
]

log = logging.getLogger("meshlib")
_NO_DEADLINE = 10 * 365 * 24 * 3600.0
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _inbound(
    kind: type[InboundRequest], mesh: ServingMesh, method: str, context: Any, port: int | None
) -> Any:
    metadata: Metadata | None = context.invocation_metadata()
    call = Call(
        method="POST",  # as Istio sees every gRPC call: POST to /package.Service/Method
        scheme="http",
        host="",
        port=port,
        path=method,
        query="",
        header=metadata_lookup(metadata),
        protocol="grpc",
    )
    remaining: float | None = context.time_remaining()
    if remaining is not None and remaining > _NO_DEADLINE:
        remaining = None  # grpc reports "no deadline" as ~9.2e18 s
    return kind(mesh, call, peer_of(context), timeout=remaining, source_ip=peer_address(context))


def peer_address(context: Any) -> str | None:
    """The caller's IP from grpc's peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    try:
        peer: str = context.peer()
    except Exception:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


class _EditedContext:
    """The handler's context with the metadata the server stack edited (a verified JWT)."""

    def __init__(self, context: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._context = context
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _for_handler(context: Any, inbound: InboundRequest) -> Any:
    edits = inbound.ex.header_edits
    if not edits:
        return context
    pairs = [(str(k), v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]
    return _EditedContext(context, tuple(edited_headers(pairs, edits)))


def _refusal(answer: Answer) -> tuple[grpc.StatusCode, str]:
    """A local answer of the server stack as the gRPC status the caller gets."""
    code = grpc.StatusCode[answer.grpc_status or grpc_status_for_http(answer.status)]
    return code, answer.body.decode(errors="replace").strip()


def _status(context: Any, raised: bool, inbound: InboundRequest) -> int:
    """The HTTP status the call ended with (for the stack's filters and the metrics); its
    gRPC status goes to the metrics and the span."""
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        inbound.ex.grpc_status = code.name
        return http_status(code)
    inbound.ex.grpc_status = "UNKNOWN" if raised else "OK"
    return 500 if raised else 200


def _wire_size(message: Any, serializer: Callable[[Any], bytes] | None) -> int | None:
    """Bytes one message takes on the wire: gRPC's 5-byte length prefix and the serialized
    message (a protobuf message's ByteSize, no second serialization); None for a stream (an
    iterator: counted message by message as it is read)."""
    size = getattr(message, "ByteSize", None)
    if size is not None:
        return 5 + int(size())
    if isinstance(message, bytes | bytearray | memoryview):
        return 5 + len(message)
    if serializer is not None and not hasattr(message, "__next__") and not hasattr(message, "__anext__"):
        return 5 + len(serializer(message))  # another message type: serialized once more to count it
    return None


def _count_requests(request: Any, ex: Any) -> Any:
    """Count the request's bytes into ``ex.request_bytes``: one message now, a stream of them
    (an iterator, sync or async) as the handler reads it."""
    size = _wire_size(request, None)
    if size is not None:
        ex.request_bytes = size
        return request
    ex.request_bytes = 0
    if hasattr(request, "__anext__"):
        return _counted_async(request, ex)
    if hasattr(request, "__next__"):
        return _counted(request, ex)
    return request


def _counted(requests: Iterator[Any], ex: Any) -> Iterator[Any]:
    for message in requests:
        ex.request_bytes += _wire_size(message, None) or 0
        yield message


async def _counted_async(requests: AsyncIterator[Any], ex: Any) -> AsyncIterator[Any]:
    async for message in requests:
        ex.request_bytes += _wire_size(message, None) or 0
        yield message


def _wrap_sync(
    mesh: ServingMesh,
    behavior: Callable[..., Any],
    method: str,
    streaming_out: bool,
    port: int | None,
    serializer: Callable[[Any], bytes] | None = None,
) -> Any:
    """A handler that blocks (grpc.server, or a sync handler on grpc.aio.server)."""

    def unary(request: Any, context: Any) -> Any:
        inbound = _inbound(InboundRequest, mesh, method, context, port)
        request = _count_requests(request, inbound.ex)
        answer = inbound.admit()
        if answer is not None:
            context.abort(*_refusal(answer))
        try:
            with inbound.scope():
                result = behavior(request, _for_handler(context, inbound))
        except BaseException:
            inbound.end(_status(context, True, inbound))
            raise
        inbound.ex.response_bytes = _wire_size(result, serializer) or 0
        inbound.end(_status(context, False, inbound))
        return result

    def stream(request: Any, context: Any) -> Iterator[Any]:
        inbound = _inbound(InboundRequest, mesh, method, context, port)
        request = _count_requests(request, inbound.ex)
        answer = inbound.admit()
        if answer is not None:
            context.abort(*_refusal(answer))
        scope = inbound.context()  # every step of the stream runs in the call's scope
        raised = True
        try:
            responses = scope.run(behavior, request, _for_handler(context, inbound))
            while True:
                try:
                    item = scope.run(next, responses)
                except StopIteration:
                    raised = False
                    return
                inbound.ex.response_bytes += _wire_size(item, serializer) or 0
                yield item
        finally:
            inbound.end(_status(context, raised, inbound))

    return stream if streaming_out else unary


def _wrap_async(
    mesh: ServingMesh,
    behavior: Callable[..., Any],
    method: str,
    port: int | None,
    serializer: Callable[[Any], bytes] | None = None,
) -> Any:
    """A coroutine or async-generator handler on grpc.aio.server."""

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            inbound = _inbound(AsyncInboundRequest, mesh, method, context, port)
            request = _count_requests(request, inbound.ex)
            answer = await inbound.admit_async()
            if answer is not None:
                await context.abort(*_refusal(answer))
            raised = True
            try:
                with inbound.scope():  # this call's own task: the scope covers every step
                    async for item in behavior(request, _for_handler(context, inbound)):
                        inbound.ex.response_bytes += _wire_size(item, serializer) or 0
                        yield item
                raised = False
            finally:
                inbound.end(_status(context, raised, inbound))

        return stream

    async def unary(request: Any, context: Any) -> Any:
        inbound = _inbound(AsyncInboundRequest, mesh, method, context, port)
        request = _count_requests(request, inbound.ex)
        answer = await inbound.admit_async()
        if answer is not None:
            await context.abort(*_refusal(answer))
        try:
            with inbound.scope():
                result = await behavior(request, _for_handler(context, inbound))
        except BaseException:
            inbound.end(_status(context, True, inbound))
            raise
        inbound.ex.response_bytes = _wire_size(result, serializer) or 0
        inbound.end(_status(context, False, inbound))
        return result

    return unary


def _wrapped_handler(mesh: ServingMesh, handler: Any, method: str, port: int | None) -> Any:
    changes = {}
    for kind in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        if inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior):
            changes[kind] = _wrap_async(mesh, behavior, method, port, handler.response_serializer)
        else:
            streaming = kind.endswith("stream")
            serializer = handler.response_serializer
            changes[kind] = _wrap_sync(mesh, behavior, method, streaming, port, serializer)
    return handler._replace(**changes)


MAX_WRAPPED = 1024  # handlers kept wrapped per interceptor (a catch-all handler sees any method name)


class _Wrapped:
    """The mesh's handler for each of the application's, made once. grpc hands over the same
    handler object for a method on every call; wrapping it anew each time (inspect checks,
    closures, a new namedtuple) was the gRPC server's largest meshlib cost per call (py-spy:
    11 µs at concurrency 64, RESULTS.md). The wrappers read everything of the call (its
    metadata, peer, deadline) from the call's context, so one serves every call."""

    def __init__(self, mesh: ServingMesh, port: int | None) -> None:
        self._mesh = mesh
        self.port = port
        self._made: dict[tuple[int, str], tuple[Any, Any]] = {}

    def __call__(self, handler: Any, method: str) -> Any:
        key = (id(handler), method)
        made = self._made.get(key)
        if made is not None and made[0] is handler:  # kept alive here: its id cannot be reused
            return made[1]
        wrapped = _wrapped_handler(self._mesh, handler, method, self.port)
        if len(self._made) >= MAX_WRAPPED:
            self._made.clear()
        self._made[key] = (handler, wrapped)
        return wrapped


class _Interception:
    """What both interceptors hold: the mesh, the port and the wrapped handlers."""

    def __init__(self, mesh: ServingMesh, port: int | None = None) -> None:
        self.mesh = mesh
        self._wrapped = _Wrapped(mesh, port)

    @property
    def port(self) -> int | None:
        return self._wrapped.port

    @port.setter
    def port(self, port: int | None) -> None:  # known once the server listens: wrap afresh
        self._wrapped = _Wrapped(self.mesh, port)

    def not_found(self, handler: Any, method: str) -> Any:
        """A method nothing serves: the stack runs first, then grpc's own UNIMPLEMENTED. So a
        caller the policy refuses is refused whatever the method, and cannot tell which methods
        exist (Envoy's RBAC, in front of the server, answers such calls the same way); the call
        is counted and traced as any other. Not kept among the wrapped handlers: any method
        name may come."""
        return _wrapped_handler(self.mesh, handler, method, self.port)


def _method_not_found(requests: Any, context: Any) -> Iterator[Any]:
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    context.set_details("Method not found!")  # grpc core's words for an unknown method
    return iter(())


async def _method_not_found_async(requests: Any, context: Any) -> AsyncIterator[Any]:
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    context.set_details("Method not found!")
    return
    yield  # an async generator


# Raw bytes in and out, streaming both ways: whatever kind of call the client made, its frames
# are the same on the wire, and nothing of them is read.
_NOT_FOUND: Any = grpc.stream_stream_rpc_method_handler(_method_not_found)
_NOT_FOUND_ASYNC: Any = grpc.stream_stream_rpc_method_handler(_method_not_found_async)


class MeshServerInterceptor(_Interception, grpc.ServerInterceptor):  # type: ignore[misc]
    """For ``grpc.server``: every call through the mesh's server stack. ``port``: the port it
    serves (AuthorizationPolicy ``ports`` and port-level PeerAuthentication; grpc does not say
    which port a call came in on, so a server with several ports matches none of them)."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return self.not_found(_NOT_FOUND, details.method)
        return self._wrapped(handler, details.method)


class AioMeshServerInterceptor(_Interception, grpc.aio.ServerInterceptor):
    """For ``grpc.aio.server``: the same, for coroutine and plain handlers alike."""

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return self.not_found(_NOT_FOUND_ASYNC, details.method)
        return self._wrapped(handler, details.method)


def peer_of(context: Any) -> PeerIdentity | None:
    """The caller's identity from the verified client certificate of the call's TLS connection."""
    try:
        auth = context.auth_context()
    except Exception:
        return None
    for pem in auth.get("x509_pem_cert", ()):
        peer = _identity_in_pem(pem)
        if peer is not None:
            return peer
    return None


@functools.lru_cache(maxsize=1024)
def _identity_in_pem(pem: bytes) -> PeerIdentity | None:
    """The identity in one verified client certificate. grpcio hands the certificate over as
    PEM on every call; parsing it each time cost ~20 µs per call (py-spy, RESULTS.md), so it is
    parsed once per certificate. The key is the whole certificate, so a rotated or different
    certificate is parsed afresh; PeerIdentity is immutable and safe to share."""
    spiffe = spiffe_id_of(x509.load_pem_x509_certificate(pem))
    return PeerIdentity.parse(spiffe) if spiffe is not None else None


def server_credentials(mesh: Any) -> grpc.ServerCredentials | None:
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


def listen(server: grpc.Server | grpc.aio.Server, mesh: Any, host: str, port: int) -> AnnouncedEndpoint:
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
    mesh: Any,
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
    interceptor = MeshServerInterceptor(mesh)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads),
        interceptors=[interceptor],
        options=grpc_server_options(limits or ServerLimits()),
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    endpoint = listen(server, mesh, host, port)
    interceptor.port = endpoint.port
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
