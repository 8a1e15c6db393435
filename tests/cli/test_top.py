"""``meshctl top`` on a running mesh: a frontend calling two versions of reviews over mutual
TLS, some answers failing, and a caller outside the mesh; every workload reports its edges
to the config service and the table shows who calls whom. Also the edge API's guard: a
workload reports only for itself, and a bad report is refused and stores nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.metrics import BUCKETS_MS
from meshlib.registry import AnnouncedEndpoint
from meshlib.settings import TelemetrySettings
from tests.four_servers import serve_asgi
from tests.servers import wait_for

REVIEWS = "reviews.default.svc.cluster.local"
MIN_REQUESTS, OUTSIDE = 40, 10


def _mesh(server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path, name: str, **kw: Any) -> Mesh:
    return Mesh(
        name,
        control_plane=server.url,
        token=admin.create_token(name)["token"],
        telemetry=TelemetrySettings(edge_report_interval=0.5),
        **kw,
    )


@pytest.fixture
def running_mesh(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path
) -> Iterator[tuple[Mesh, list[int]]]:
    with (
        _mesh(server, admin, tmp_path, "frontend", data_dir=tmp_path / "f") as frontend,
        _mesh(server, admin, tmp_path, "reviews", labels={"version": "v1"}, data_dir=tmp_path / "1") as v1,
        _mesh(server, admin, tmp_path, "reviews", labels={"version": "v2"}, data_dir=tmp_path / "2") as v2,
    ):
        servers = [serve_asgi(v1, [], failing="/fail"), serve_asgi(v2, [], failing="/fail")]
        ports = [next(s) for s in servers]
        try:
            for mesh, port in zip((v1, v2), ports, strict=True):
                mesh.announce([AnnouncedEndpoint(address="127.0.0.1", port=port, tls=True)])
            assert wait_for(lambda: len(frontend.snapshot.endpoints(REVIEWS)) == 2)
            yield frontend, ports
        finally:
            for s in servers:
                next(s, None)


def _edges(ctl: Any) -> list[dict[str, Any]]:
    code, out, err = ctl("top", "-o", "json")
    assert code == 0, err
    edges: list[dict[str, Any]] = json.loads(out)["edges"]
    return edges


def test_top_shows_who_calls_whom(running_mesh: Any, ctl: Any) -> None:
    frontend, ports = running_mesh
    codes: list[int] = []
    seen_live = threading.Event()

    def traffic() -> None:  # every fourth request fails; runs until top saw it live
        deadline = time.monotonic() + 30
        with frontend.http_client() as client:
            while len(codes) < 2000 and time.monotonic() < deadline:
                if seen_live.is_set() and len(codes) >= MIN_REQUESTS:
                    return
                path = "fail" if len(codes) % 4 == 3 else "books"
                codes.append(client.get(f"http://reviews/{path}/{len(codes)}").status_code)
                time.sleep(0.005)

    sender = threading.Thread(target=traffic)
    sender.start()

    def live() -> bool:
        rows = [e for e in _edges(ctl) if e["source"] == "frontend" and e["rps"] > 0]
        return {e["destinationVersion"] for e in rows} == {"v1", "v2"} and all(
            e["p50Ms"] is not None and 0 < e["p50Ms"] <= e["p99Ms"] and e["errors"] > 0 for e in rows
        )

    try:
        assert wait_for(live, 20), _edges(ctl)
    finally:
        seen_live.set()
        sender.join(40)
    failing = codes.count(500)
    assert codes.count(200) + failing == len(codes) >= MIN_REQUESTS
    assert failing == len(codes) // 4
    for n in range(OUTSIDE):  # plaintext, from outside the mesh, to v1
        assert httpx.get(f"http://127.0.0.1:{ports[0]}/outside/{n}", timeout=5).status_code == 200

    def settled() -> bool:
        return sum(e["totalRequests"] for e in _edges(ctl)) == len(codes) + OUTSIDE

    assert wait_for(settled, 15), _edges(ctl)
    edges = _edges(ctl)
    mesh_edges = [e for e in edges if e["source"] == "frontend"]
    assert {e["destinationVersion"] for e in mesh_edges} == {"v1", "v2"}
    for e in mesh_edges:
        assert (e["sourceNamespace"], e["destination"], e["destinationWorkload"]) == (
            "default",
            REVIEWS,
            "reviews",
        )
        assert e["protocol"] == "http"
        assert e["reporters"] == 1
    assert sum(e["totalRequests"] for e in mesh_edges) == len(codes)
    assert sum(e["totalErrors"] for e in mesh_edges) == failing
    (outside,) = [e for e in edges if e["source"] == "unknown"]
    assert (outside["destination"], outside["destinationVersion"]) == (REVIEWS, "v1")
    assert (outside["totalRequests"], outside["totalErrors"]) == (OUTSIDE, 0)
    assert len(edges) == 3

    code, out, _ = ctl("top")  # not a terminal: one plain table
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "SOURCE",
        "DESTINATION",
        "VERSION",
        "PROTOCOL",
        "RPS",
        "ERRORS",
        "P50",
        "MS",
        "P99",
        "MS",
        "AGE",
    ]
    by_version = {line.split()[2]: line.split() for line in lines[1:] if line.startswith("frontend.default")}
    assert set(by_version) == {"v1", "v2"}
    assert all(row[1] == "reviews.default" for row in by_version.values())
    assert any(line.startswith("(outside the mesh)") for line in lines[1:])


def test_edge_reports_are_guarded(server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path) -> None:
    with _mesh(server, admin, tmp_path, "reviews", data_dir=tmp_path / "r") as reviews:
        url = f"{server.url}/v1/workloads/{reviews.workload_id}/edges"
        report = {
            "window": 1.0,
            "edges": [
                {
                    "reporter": "source",
                    "source": "reviews",
                    "sourceNamespace": "default",
                    "sourceVersion": "unknown",
                    "destination": "ratings.default.svc.cluster.local",
                    "destinationWorkload": "ratings",
                    "destinationVersion": "v1",
                    "protocol": "http",
                    "requests": 3,
                    "errors": 1,
                    "buckets": [0, 3] + [0] * (len(BUCKETS_MS) - 1),
                }
            ],
        }
        other = {"authorization": f"Bearer {admin.create_token('frontend')['token']}"}
        own = {"authorization": f"Bearer {admin.create_token('reviews')['token']}"}
        denied = httpx.post(url, json=report, headers=other)
        assert denied.status_code == 403, denied.text
        assert httpx.post(url, json=report).status_code == 401
        bad = {**report, "edges": [{**report["edges"][0], "errors": 4}]}  # type: ignore[dict-item]
        refused = httpx.post(url, json=bad, headers=own)
        assert refused.status_code == 400
        assert "4 errors out of 3 requests" in refused.text
        unknown = httpx.post(f"{server.url}/v1/workloads/nobody/edges", json=report, headers=own)
        assert unknown.status_code == 404
        assert admin.edges() == {"edges": []}, "nothing refused was stored"
        assert httpx.post(url, json=report, headers=own).status_code == 204
        (row,) = admin.edges()["edges"]
        assert (row["source"], row["destinationVersion"], row["totalRequests"], row["totalErrors"]) == (
            "reviews",
            "v1",
            3,
            1,
        )
