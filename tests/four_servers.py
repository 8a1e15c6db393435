"""The four servers meshlib runs an application on (uvicorn for ASGI, cheroot for WSGI, grpc,
grpc.aio), each serving mutual TLS with a mesh's identity on a free port of 127.0.0.1, and the
clients that call them with another mesh's identity. ``serve_*`` are generators: the first
``next`` starts the server and gives its port, the second stops it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import uvicorn

import meshlib
import meshlib.grpc
from meshlib import Mesh
from meshlib._net import bind
from meshlib.registry import AnnouncedEndpoint
from meshlib.server.cheroot_server import MeshSSLAdapter, MeshWSGIServer
from meshlib.server.uvicorn_server import mesh_protocol_class
from tests.servers import wait_for


def http_client(frontend: Mesh) -> httpx.Client:
    identity = frontend.workload_identity
    assert identity is not None
    return httpx.Client(verify=identity.client_context(), timeout=5)


def grpc_channel(frontend: Mesh, port: int) -> grpc.Channel:
    identity = frontend.workload_identity
    assert identity is not None
    key, chain, roots = identity.pem()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )
    options = [("grpc.ssl_target_name_override", "reviews.default.svc")]
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


@contextlib.contextmanager
def served_to(caller: Mesh, server: Mesh, failing: str | None = None) -> Iterator[int]:
    """``server`` on uvicorn over mTLS (see serve_asgi), announced, and known to ``caller``."""
    serving = serve_asgi(server, [], failing=failing)
    port = next(serving)
    try:
        server.announce([AnnouncedEndpoint(address="127.0.0.1", port=port, tls=True)])
        assert wait_for(lambda: bool(caller.snapshot.endpoints(server.fqdn)))
        yield port
    finally:
        next(serving, None)


def serve_asgi(reviews: Mesh, handled: list[str], failing: str | None = None) -> Iterator[int]:
    """Answers 200 with the path it saw; 500 for paths under ``failing``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        handled.append(f"asgi {meshlib.current_peer()}")
        seen = scope["path"].encode()  # the path it saw
        headers = [(b"content-length", str(len(seen)).encode())]
        status = 500 if failing is not None and scope["path"].startswith(failing) else 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": seen})

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    protocol = mesh_protocol_class(reviews, lambda: port, meshlib.ServerLimits())
    config = uvicorn.Config(
        meshlib.asgi.MeshMiddleware(app, reviews), http=protocol, log_level="error", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def serve_wsgi(reviews: Mesh, handled: list[str]) -> Iterator[int]:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        handled.append(f"wsgi {meshlib.current_peer()}")
        seen = environ["PATH_INFO"].encode("latin-1")  # the path it saw
        start_response("200 OK", [("Content-Length", str(len(seen)))])
        return [seen]

    server = MeshWSGIServer(
        ("127.0.0.1", 0), meshlib.wsgi.MeshMiddleware(app, reviews), limits=meshlib.ServerLimits()
    )
    server.prepare()
    port = server.bind_addr[1]
    server.ssl_adapter = MeshSSLAdapter(reviews, port)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.stop()
        thread.join(10)


def grpc_handler(handled: list[str], kind: str) -> grpc.GenericRpcHandler:
    if kind == "grpc":

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            handled.append(f"grpc {meshlib.current_peer()}")
            return b"ok"

    else:

        async def call(request: bytes, context: Any) -> bytes:  # type: ignore[misc]
            handled.append(f"aio {meshlib.current_peer()}")
            return b"ok"

    return _AnyMethod(grpc.unary_unary_rpc_method_handler(call))


NOT_SERVED = "/Nothing"
"""gRPC methods whose names end so are not served (grpc's UNIMPLEMENTED); every other one is."""


class _AnyMethod(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Serves every method name with one handler (authorization tests call many), except those
    ending in ``NOT_SERVED``."""

    def __init__(self, handler: grpc.RpcMethodHandler) -> None:
        self.handler = handler

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return None if details.method.endswith(NOT_SERVED) else self.handler


def serve_grpc(reviews: Mesh, handled: list[str]) -> Iterator[int]:
    interceptor = meshlib.grpc.MeshServerInterceptor(reviews)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc_handler(handled, "grpc"),))
    port = interceptor.port = meshlib.grpc.listen(server, reviews, "127.0.0.1", 0).port
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def serve_aio(reviews: Mesh, handled: list[str]) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[int, Any]:
        interceptor = meshlib.grpc.AioMeshServerInterceptor(reviews)
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((grpc_handler(handled, "aio"),))
        port = interceptor.port = meshlib.grpc.listen(server, reviews, "127.0.0.1", 0).port
        await server.start()
        return port, server

    port, server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


SERVERS = {"asgi": serve_asgi, "wsgi": serve_wsgi, "grpc": serve_grpc, "aio": serve_aio}
