"""Istio's metrics with Istio's labels, scraped over HTTP from both Prometheus endpoints (the
opt-in port and the serving port's path, which mesh peers may not read unless named), and
the JSON access log: a line per request, both sides, no credentials."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.server_stack import METRICS_PATH
from meshlib.registry import AnnouncedEndpoint
from meshlib.settings import TelemetrySettings
from meshlib.telemetry.access_log import AccessLog
from tests.four_servers import serve_asgi
from tests.servers import wait_for

A_ID = "spiffe://cluster.local/ns/default/sa/frontend"
R_ID = "spiffe://cluster.local/ns/default/sa/reviews"
REVIEWS = "reviews.default.svc.cluster.local"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Mesh, Mesh]]:
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:

        def mesh(name: str, **settings: Any) -> Mesh:
            return Mesh(
                name,
                control_plane=server.url,
                token=admin.create_token(name)["token"],
                data_dir=tmp_path / name,
                labels={"version": "v2"} if name == "reviews" else None,
                telemetry=TelemetrySettings(**settings),
            )

        with (
            mesh("frontend", metrics_port=0) as frontend,
            mesh("reviews", metrics_path=True) as reviews,
        ):
            yield frontend, reviews


def _samples(text: str, name: str) -> list[dict[str, str]]:
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.append({**sample.labels, "value": str(sample.value)})
    return found


def test_istio_metrics_on_both_sides_scraped_over_http(pair: Any) -> None:
    frontend, reviews = pair
    logged = io.StringIO()
    frontend.telemetry.access_log = AccessLog(logged)
    reviews.telemetry.access_log = AccessLog(logged)
    serving = serve_asgi(reviews, [])
    port = next(serving)
    try:
        reviews.announce([AnnouncedEndpoint(address="127.0.0.1", port=port, tls=True)])
        assert wait_for(lambda: bool(frontend.snapshot.endpoints(REVIEWS)))
        with frontend.http_client() as client:
            for _ in range(3):
                assert (
                    client.get(
                        "http://reviews/books/1?access_token=secret",
                        headers={"authorization": "Bearer secret", "cookie": "session=secret"},
                    ).status_code
                    == 200
                )
            # A mesh peer may not scrape the serving port: its metrics are for scrapers.
            denied = client.get(f"http://reviews{METRICS_PATH}")
            assert denied.status_code == 403
            reviews.metrics_principals.add(A_ID)
            assert client.get(f"http://reviews{METRICS_PATH}").status_code == 200
        plain = httpx.get(f"http://127.0.0.1:{port}{METRICS_PATH}", timeout=5)
    finally:
        next(serving, None)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain")
    server_side = [
        s
        for s in _samples(plain.text, "istio_requests_total")
        if s["response_code"] == "200" and s["source_principal"] == A_ID
    ]
    assert len(server_side) == 1
    (inbound,) = server_side
    assert inbound["value"] == "4.0", "3 requests and the allowed scrape (a local answer is counted too)"
    assert inbound["reporter"] == "destination"
    served_bytes = [
        s
        for s in _samples(plain.text, "istio_response_bytes_sum")
        if s["response_code"] == "200" and s["source_principal"] == A_ID
    ]
    assert [s["value"] for s in served_bytes] == ["24.0"], "3 bodies of '/books/1' (the scrape is local)"
    assert inbound["source_workload"] == "frontend"
    assert inbound["destination_service"] == REVIEWS
    assert inbound["destination_version"] == "v2"
    assert inbound["destination_principal"] == R_ID
    assert inbound["connection_security_policy"] == "mutual_tls"
    assert inbound["response_flags"] == "-"
    assert inbound["request_protocol"] == "http"
    # The client side, from the frontend's own metrics port.
    server = frontend._metrics_server
    scraped = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).text
    outbound = [s for s in _samples(scraped, "istio_requests_total") if s["response_code"] == "200"]
    assert {s["destination_service"] for s in outbound} == {REVIEWS}
    sources = {
        (s["reporter"], s["source_workload"], s["source_principal"], s["destination_version"])
        for s in outbound
    }
    assert sources == {("source", "frontend", A_ID, "v2")}
    assert sum(float(s["value"]) for s in outbound) == 4.0, "3 requests and the allowed scrape"
    buckets = [
        s for s in _samples(scraped, "istio_request_duration_milliseconds_bucket") if s["le"] == "+Inf"
    ]
    assert sum(float(s["value"]) for s in buckets if s["response_code"] == "200") == 4.0
    assert _samples(scraped, "istio_response_bytes_sum"), "response sizes are counted"
    assert _samples(scraped, "meshlib_config_version")[0]["value"] != "-1.0"
    assert float(_samples(scraped, "meshlib_certificate_expiry_seconds")[0]["value"]) > 0
    # Access log: a JSON line per request on each side, no credential anywhere.
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    assert "secret" not in logged.getvalue()
    outbound_lines = [e for e in lines if e["direction"] == "outbound" and e["path"] == "/books/1"]
    inbound_lines = [e for e in lines if e["direction"] == "inbound" and e["path"] == "/books/1"]
    assert len(outbound_lines) == len(inbound_lines) == 3
    first = outbound_lines[0]
    assert first["response_code"] == 200
    assert first["upstream_host"] == f"127.0.0.1:{port}"
    assert first["upstream_peer"] == R_ID
    assert first["attempts"] == 1
    assert len(first["trace_id"]) == 32
    assert inbound_lines[0]["downstream_peer"] == A_ID
    assert {e["trace_id"] for e in inbound_lines} == {e["trace_id"] for e in outbound_lines}, (
        "both sides log the same trace id per request"
    )


def test_access_log_sampling_keeps_that_share() -> None:
    import random

    out = io.StringIO()
    log = AccessLog(out, sampling=10.0, rng=random.Random(7))
    kept = sum(log.sampled() for _ in range(10_000))
    assert 800 < kept < 1200
    assert AccessLog(out, sampling=0.0).sampled() is False
    with pytest.raises(ValueError, match="percentage"):
        AccessLog(out, sampling=101)
