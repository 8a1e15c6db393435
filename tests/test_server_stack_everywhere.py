"""One server stack on every server: a filter that records each request (method, path,
verified peer, flags, status) sees the same records through ASGI (uvicorn), WSGI (cheroot),
grpc and grpc.aio, all serving mutual TLS with the mesh's identity; an expired deadline is
refused the same way (UT) without running the handler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.flags import flags_label
from meshlib.core.server_stack import Answer, Inbound, ServerNext
from tests.four_servers import SERVERS, grpc_channel, http_client

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


def _scenario_http(frontend: Mesh, port: int) -> list[int]:
    with http_client(frontend) as client:
        url = f"https://127.0.0.1:{port}{METHOD}"
        return [client.post(url).status_code, client.post(url, headers=[EXPIRED]).status_code]


def _scenario_grpc(frontend: Mesh, port: int) -> list[str]:
    with grpc_channel(frontend, port) as channel:
        call = channel.unary_unary(METHOD)
        codes = []
        for metadata in ((), (EXPIRED,)):
            try:
                call(b"x", metadata=metadata, timeout=5)
                codes.append("OK")
            except grpc.RpcError as error:
                codes.append(error.code().name)
        return codes


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
