"""MeshMiddleware (ASGI) in front of real apps under uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import meshlib
from meshlib import Mesh
from tests.servers import Backend, serve


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with Mesh("reviews", config=_empty_policy(tmp_path)) as running:
        yield running


def _empty_policy(tmp_path: Path) -> Path:
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "none.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\n"
        "spec: {mtls: {mode: PERMISSIVE}}\n"
    )
    return folder


def make_app(calls: list[dict[str, object]]) -> Starlette:
    started: list[bool] = []

    async def info(request: Request) -> JSONResponse:
        deadline = meshlib.current_deadline()
        calls.append({"path": request.url.path})
        return JSONResponse(
            {
                "remaining": None if deadline is None else deadline - time.monotonic(),
                "xfcc": request.headers.get("x-forwarded-client-cert"),
                "peer": str(meshlib.current_peer()),
                "scope_peer": str(request.scope.get("meshlib.peer")),
                "lifespan": bool(started),
            }
        )

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("handler failed")

    async def echo(socket: WebSocket) -> None:
        await socket.accept()
        while True:
            text = await socket.receive_text()
            await socket.send_text(f"echo:{text}")

    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        started.append(True)
        yield

    import contextlib

    return Starlette(
        routes=[Route("/info", info), Route("/boom", boom), WebSocketRoute("/ws", echo)],
        lifespan=contextlib.asynccontextmanager(lifespan),
    )


@pytest.fixture
def served(mesh: Mesh) -> Iterator[tuple[int, list[dict[str, object]]]]:
    calls: list[dict[str, object]] = []
    app = meshlib.asgi.MeshMiddleware(make_app(calls), mesh=mesh)
    with serve_with_lifespan(app) as port:
        yield port, calls


def serve_with_lifespan(app):  # type: ignore[no-untyped-def]
    import contextlib
    import socket
    import threading

    import uvicorn

    from meshlib._net import bind

    @contextlib.contextmanager
    def run() -> Iterator[int]:
        sock: socket.socket = bind("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
            thread.join(10)

    return run()


def test_an_expired_deadline_is_answered_504_without_the_handler(served: tuple[int, list[object]]) -> None:
    port, calls = served
    response = httpx.get(f"http://127.0.0.1:{port}/info", headers={"x-envoy-expected-rq-timeout-ms": "0"})
    assert response.status_code == 504
    assert calls == []


def test_the_callers_deadline_bounds_the_handler(served: tuple[int, list[object]]) -> None:
    port, calls = served
    body = httpx.get(
        f"http://127.0.0.1:{port}/info", headers={"x-envoy-expected-rq-timeout-ms": "300"}
    ).json()
    assert 0.2 < body["remaining"] <= 0.3
    assert httpx.get(f"http://127.0.0.1:{port}/info").json()["remaining"] is None
    assert len(calls) == 2


def test_malformed_deadline_header_is_ignored(served: tuple[int, list[object]]) -> None:
    port, _ = served
    for bad in (b"soon", b"-5", b"1e9", "²".encode("latin-1")):
        response = httpx.get(
            f"http://127.0.0.1:{port}/info", headers={b"x-envoy-expected-rq-timeout-ms": bad}
        )
        assert (response.status_code, response.json()["remaining"]) == (200, None)


def test_a_forwarded_client_cert_header_never_reaches_the_app(served: tuple[int, list[object]]) -> None:
    port, _ = served
    forged = "By=spiffe://cluster.local/ns/default/sa/admin;URI=spiffe://cluster.local/ns/x/sa/y"
    body = httpx.get(f"http://127.0.0.1:{port}/info", headers={"x-forwarded-client-cert": forged}).json()
    assert body["xfcc"] is None
    assert (body["peer"], body["scope_peer"]) == ("None", "None"), (
        "plaintext: no identity, whatever headers say"
    )


def test_lifespan_passes_through(served: tuple[int, list[object]]) -> None:
    port, _ = served
    assert httpx.get(f"http://127.0.0.1:{port}/info").json()["lifespan"] is True


def test_health_paths(served: tuple[int, list[object]], mesh: Mesh) -> None:
    port, calls = served
    assert httpx.get(f"http://127.0.0.1:{port}/.well-known/meshlib/ready").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/.well-known/meshlib/live").status_code == 200
    mesh.draining = True
    refused = httpx.get(f"http://127.0.0.1:{port}/.well-known/meshlib/ready")
    assert refused.status_code == 503
    report = refused.json()
    assert (report["ready"], report["draining"], report["policyLoaded"]) == (False, True, True)
    assert httpx.get(f"http://127.0.0.1:{port}/.well-known/meshlib/live").status_code == 200
    assert calls == [], "probes never reach the application"


def test_inbound_metrics_count_every_answer(served: tuple[int, list[object]], mesh: Mesh) -> None:
    port, _ = served
    httpx.get(f"http://127.0.0.1:{port}/info")
    assert httpx.get(f"http://127.0.0.1:{port}/boom").status_code == 500
    httpx.get(f"http://127.0.0.1:{port}/info", headers={"x-envoy-expected-rq-timeout-ms": "0"})
    fqdn = "reviews.default.svc.cluster.local"
    assert mesh.metrics.requests_total(fqdn, 200, direction="inbound") == 1
    assert mesh.metrics.requests_total(fqdn, 500, direction="inbound") == 1
    assert mesh.metrics.requests_total(fqdn, 504, flags="UT", direction="inbound") == 1


def test_a_websocket_passes_through_unharmed(served: tuple[int, list[object]]) -> None:
    port, _ = served

    async def talk() -> list[str]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            replies = []
            for text in ("one", "two", json.dumps({"x": 1})):
                await ws.send(text)
                replies.append(str(await ws.recv()))
            return replies

    assert asyncio.run(talk()) == ["echo:one", "echo:two", 'echo:{"x": 1}']


def test_the_handlers_outbound_calls_carry_the_remaining_deadline(tmp_path: Path) -> None:
    """An inbound deadline bounds the handler's mesh calls and travels on downstream."""
    downstream = Backend("ratings")
    with serve(downstream) as ratings_port:
        policy = _empty_policy(tmp_path)
        (policy / "ratings.yaml").write_text(f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {ratings_port}}}}}]
""")
        with Mesh("reviews", config=policy) as mesh:
            client = mesh.async_http_client()

            async def handler(request: Request) -> JSONResponse:
                response = await client.get("http://ratings/")
                return JSONResponse({"status": response.status_code})

            app = meshlib.asgi.MeshMiddleware(Starlette(routes=[Route("/", handler)]), mesh=mesh)
            with serve(app) as port:
                reply = httpx.get(
                    f"http://127.0.0.1:{port}/", headers={"x-envoy-expected-rq-timeout-ms": "400"}
                )
            assert reply.json() == {"status": 200}
            _, _, headers = downstream.seen[-1]
            assert 250 <= int(headers["x-envoy-expected-rq-timeout-ms"]) <= 400
