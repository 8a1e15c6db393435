"""PeerAuthentication STRICT on every server: without a verified peer certificate nothing is
served in plaintext — not by a gRPC server (sync or aio) of a workload without an identity,
not by the ASGI/WSGI middleware on a server meshlib did not start — and a STRICT workload
without an identity is not ready and says why."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
import httpx
import pytest
import uvicorn

import meshlib
import meshlib.grpc
from meshlib import Mesh
from meshlib._net import bind
from tests.four_servers import grpc_handler
from tests.servers import wait_for

STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


@pytest.fixture
def strict_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A STRICT workload with no mesh identity (no token, static policy)."""
    config = tmp_path / "policy.yaml"
    config.write_text(STRICT)
    with Mesh("reviews", config=config, data_dir=tmp_path / "data") as mesh:
        yield mesh


def test_a_grpc_server_under_strict_refuses_a_plaintext_channel(strict_mesh: Mesh) -> None:
    handled: list[str] = []
    interceptor = meshlib.grpc.MeshServerInterceptor(strict_mesh)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2), interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc_handler(handled, "grpc"),))
    port = meshlib.grpc.listen(server, strict_mesh, "127.0.0.1", 0).port
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/test.Probe/Call")(b"x", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "mutual TLS required" in (refused.value.details() or "")
        assert handled == [], "the handler ran for a plaintext caller under STRICT"
    finally:
        server.stop(0).wait()


def test_a_grpc_aio_server_under_strict_refuses_a_plaintext_channel(strict_mesh: Mesh) -> None:
    handled: list[str] = []

    async def scenario() -> grpc.StatusCode:
        server = grpc.aio.server(interceptors=[meshlib.grpc.AioMeshServerInterceptor(strict_mesh)])
        server.add_generic_rpc_handlers((grpc_handler(handled, "aio"),))
        port = meshlib.grpc.listen(server, strict_mesh, "127.0.0.1", 0).port
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await channel.unary_unary("/test.Probe/Call")(b"x", timeout=5)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(0)

    assert asyncio.run(scenario()) == grpc.StatusCode.UNAUTHENTICATED
    assert handled == []


def _ok_asgi(seen: list[str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_the_asgi_middleware_on_a_plain_uvicorn_refuses_under_strict(strict_mesh: Mesh) -> None:
    seen: list[str] = []
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        meshlib.asgi.MeshMiddleware(_ok_asgi(seen), strict_mesh), log_level="error", lifespan="off"
    )
    server = uvicorn.Server(config)  # the user's own uvicorn: no mesh protocol, no mTLS
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/x", timeout=5)
        assert answer.status_code == 403
        assert "mutual TLS required" in answer.text
        assert "meshlib.serve_asgi" in answer.text
        assert seen == []
    finally:
        server.should_exit = True
        thread.join(10)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_wsgi_middleware_on_wsgiref_refuses_under_strict(strict_mesh: Mesh) -> None:
    seen: list[str] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = make_server("127.0.0.1", 0, meshlib.wsgi.MeshMiddleware(app, strict_mesh), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.server_port}/x", timeout=5)
        assert answer.status_code == 403
        assert "mutual TLS required" in answer.text
        assert seen == []
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_a_strict_workload_without_identity_is_not_ready_and_says_why(strict_mesh: Mesh) -> None:
    assert not strict_mesh.serving_ready()
    assert "STRICT" in (strict_mesh.unready_reason() or "")
    report = json.loads(strict_mesh.readiness_report(strict_mesh.serving_ready()))
    assert report["ready"] is False
    assert "no mesh identity" in report["reason"]


def test_permissive_without_identity_is_ready(tmp_path: Path) -> None:
    with Mesh("reviews", config=_write(tmp_path, STRICT.replace("STRICT", "PERMISSIVE"))) as mesh:
        assert mesh.serving_ready()
        assert mesh.unready_reason() is None


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path
