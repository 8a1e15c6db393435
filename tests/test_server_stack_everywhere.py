"""One server stack on every server: a filter that records each request (method, path,
verified peer, flags, status) sees the same records through ASGI (uvicorn), WSGI (cheroot),
grpc and grpc.aio, all serving mutual TLS with the mesh's identity; an expired deadline is
refused the same way (UT) without running the handler."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn

import meshlib
import meshlib.grpc
from meshlib import Mesh
from meshlib._net import bind
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.flags import flags_label
from meshlib.core.server_stack import Answer, Inbound, ServerNext
from meshlib.server.cheroot_server import MeshSSLAdapter, MeshWSGIServer
from meshlib.server.uvicorn_server import mesh_protocol_class
from tests.servers import wait_for

METHOD = "/test.Probe/Call"
EXPIRED = ("x-envoy-expected-rq-timeout-ms", "0")
FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"
Record = tuple[str, str, str, str, int]


@pytest.fixture
def meshes(tmp_path: Path) -> Iterator[tuple[Mesh, Mesh, list[Record], list[str]]]:
    """reviews (serving, with a recording filter) and frontend (calling), both with identities."""
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:
        reviews_token = admin.create_token("reviews")["token"]
        frontend_token = admin.create_token("frontend")["token"]
        reviews = Mesh("reviews", control_plane=server.url, token=reviews_token, data_dir=tmp_path / "r")
        frontend = Mesh("frontend", control_plane=server.url, token=frontend_token, data_dir=tmp_path / "f")
        records: list[Record] = []
        handled: list[str] = []

        def record(ex: Inbound, next: ServerNext) -> Any:
            answer: Answer = yield from next(ex)
            peer = str(ex.peer) if ex.peer is not None else "-"
            records.append((ex.call.method, ex.call.path, peer, flags_label(ex.flags), answer.status))
            return answer

        with reviews, frontend:
            reviews.server_stack = reviews.server_stack.insert_before("health", "record", record)
            yield reviews, frontend, records, handled


def _http_client(frontend: Mesh) -> httpx.Client:
    identity = frontend.workload_identity
    assert identity is not None
    return httpx.Client(verify=identity.client_context(), timeout=5)


def _grpc_channel(frontend: Mesh, port: int) -> grpc.Channel:
    identity = frontend.workload_identity
    assert identity is not None
    key, chain, roots = identity.pem()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )
    options = [("grpc.ssl_target_name_override", "reviews.default.svc")]
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


def _scenario_http(frontend: Mesh, port: int) -> list[int]:
    with _http_client(frontend) as client:
        url = f"https://127.0.0.1:{port}{METHOD}"
        return [client.post(url).status_code, client.post(url, headers=[EXPIRED]).status_code]


def _scenario_grpc(frontend: Mesh, port: int) -> list[str]:
    with _grpc_channel(frontend, port) as channel:
        call = channel.unary_unary(METHOD)
        codes = []
        for metadata in ((), (EXPIRED,)):
            try:
                call(b"x", metadata=metadata, timeout=5)
                codes.append("OK")
            except grpc.RpcError as error:
                codes.append(error.code().name)
        return codes


def _serve_asgi(reviews: Mesh, handled: list[str]) -> Iterator[int]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        handled.append(f"asgi {meshlib.current_peer()}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

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


def _serve_wsgi(reviews: Mesh, handled: list[str]) -> Iterator[int]:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        handled.append(f"wsgi {meshlib.current_peer()}")
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

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


def _grpc_handler(handled: list[str], kind: str) -> grpc.GenericRpcHandler:
    if kind == "grpc":

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            handled.append(f"grpc {meshlib.current_peer()}")
            return b"ok"

    else:

        async def call(request: bytes, context: Any) -> bytes:  # type: ignore[misc]
            handled.append(f"aio {meshlib.current_peer()}")
            return b"ok"

    return grpc.method_handlers_generic_handler(
        "test.Probe", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )


def _serve_grpc(reviews: Mesh, handled: list[str]) -> Iterator[int]:
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(4), interceptors=[meshlib.grpc.MeshServerInterceptor(reviews)]
    )
    server.add_generic_rpc_handlers((_grpc_handler(handled, "grpc"),))
    port = meshlib.grpc.listen(server, reviews, "127.0.0.1", 0).port
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def _serve_aio(reviews: Mesh, handled: list[str]) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[int, Any]:
        server = grpc.aio.server(interceptors=[meshlib.grpc.AioMeshServerInterceptor(reviews)])
        server.add_generic_rpc_handlers((_grpc_handler(handled, "aio"),))
        port = meshlib.grpc.listen(server, reviews, "127.0.0.1", 0).port
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


SERVERS = {"asgi": _serve_asgi, "wsgi": _serve_wsgi, "grpc": _serve_grpc, "aio": _serve_aio}


def test_every_server_runs_the_same_stack_with_the_verified_peer(meshes: Any) -> None:
    reviews, frontend, records, handled = meshes
    answers = {}
    for kind, serve in SERVERS.items():
        before = len(records)
        serving = serve(reviews, handled)
        port = next(serving)
        try:
            answers[kind] = (_scenario_http if kind in ("asgi", "wsgi") else _scenario_grpc)(frontend, port)
        finally:
            next(serving, None)
        assert records[before:] == [
            ("POST", METHOD, FRONTEND, "-", 200),
            ("POST", METHOD, FRONTEND, "UT", 504),
        ], kind
    assert answers == {
        "asgi": [200, 504],
        "wsgi": [200, 504],
        "grpc": ["OK", "DEADLINE_EXCEEDED"],
        "aio": ["OK", "DEADLINE_EXCEEDED"],
    }
    assert handled == [f"{kind} {FRONTEND}" for kind in SERVERS], (
        "the expired request never reached a handler"
    )
    fqdn = "reviews.default.svc.cluster.local"
    assert reviews.metrics.requests_total(fqdn, 200, flags="-", direction="inbound") == 4
    assert reviews.metrics.requests_total(fqdn, 504, flags="UT", direction="inbound") == 4
