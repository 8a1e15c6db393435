"""MeshMiddleware (WSGI) in front of a real WSGI app under cheroot on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cheroot import wsgi

import meshlib
from meshlib import Mesh
from tests.test_asgi import _empty_policy


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (chunk for chunk in (b"abc", b"defgh"))  # produced as the server iterates
    if environ["PATH_INFO"] == "/boom":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"boom"]
    deadline = meshlib.current_deadline()
    calls.append(environ["PATH_INFO"])
    body = json.dumps(
        {
            "remaining": None if deadline is None else deadline - time.monotonic(),
            "xfcc": environ.get("HTTP_X_FORWARDED_CLIENT_CERT"),
            "peer": str(meshlib.current_peer()),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


calls: list[str] = []


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Mesh]]:
    calls.clear()
    with Mesh("reviews", config=_empty_policy(tmp_path)) as mesh:
        server = wsgi.Server(("127.0.0.1", 0), meshlib.wsgi.MeshMiddleware(app, mesh=mesh), numthreads=4)
        server.prepare()
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        try:
            yield server.bind_addr[1], mesh
        finally:
            server.stop()
            thread.join(10)


def test_expired_deadline_is_504_without_the_app(served: tuple[int, Mesh]) -> None:
    port, _ = served
    response = httpx.get(f"http://127.0.0.1:{port}/x", headers={"x-envoy-expected-rq-timeout-ms": "0"})
    assert response.status_code == 504
    assert calls == []


def test_deadline_bounds_the_app_and_xfcc_is_removed(served: tuple[int, Mesh]) -> None:
    port, _ = served
    body = httpx.get(
        f"http://127.0.0.1:{port}/x",
        headers={"x-envoy-expected-rq-timeout-ms": "300", "x-forwarded-client-cert": "By=spiffe://evil"},
    ).json()
    assert 0.2 < body["remaining"] <= 0.3
    assert (body["xfcc"], body["peer"]) == (None, "None")


def test_health_and_metrics(served: tuple[int, Mesh]) -> None:
    port, mesh = served
    assert httpx.get(f"http://127.0.0.1:{port}/.well-known/meshlib/ready").status_code == 200
    mesh.draining = True
    refused = httpx.get(f"http://127.0.0.1:{port}/.well-known/meshlib/ready")
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["ready"] is False, "the body's verdict is the probe's"
    assert httpx.get(f"http://127.0.0.1:{port}/boom").status_code == 500
    assert mesh.metrics.requests_total("reviews.default.svc.cluster.local", 500, direction="inbound") == 1
    assert mesh.metrics.requests_total(direction="inbound") == 3


def test_response_bytes_are_counted_whole_and_streamed(served: tuple[int, Mesh]) -> None:
    port, mesh = served
    assert httpx.get(f"http://127.0.0.1:{port}/boom").content == b"boom"
    assert httpx.get(f"http://127.0.0.1:{port}/stream").content == b"abcdefgh"
    sizes = {
        code: series.response_bytes
        for (direction, _service, code, _flags, _labels, _grpc), series in mesh.metrics.series()
        if direction == "inbound"
    }
    assert sizes == {500: 4, 200: 8}  # istio_response_bytes on the server side
