"""The same metrics through the OpenTelemetry metrics API: an SDK MeterProvider with an
in-memory reader, two workloads sharing it, real requests over mTLS between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from tests.four_servers import served_to

A_ID = "spiffe://cluster.local/ns/default/sa/frontend"
REVIEWS = "reviews.default.svc.cluster.local"


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            assert scope.scope.name == "meshlib"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_requests_and_gauges_reach_an_otel_sdk(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:

        def mesh(name: str) -> Mesh:
            token = admin.create_token(name)["token"]
            return Mesh(
                name, control_plane=server.url, token=token, data_dir=tmp_path / name, meter_provider=provider
            )

        with mesh("frontend") as frontend, mesh("reviews") as reviews:
            with served_to(frontend, reviews, failing="/broken"), frontend.http_client() as client:
                assert [client.get("http://reviews/books/1").status_code for _ in range(3)] == [200] * 3
                assert client.get("http://reviews/broken").status_code == 500
            points = _points(reader)
            requests = {
                (p.attributes["reporter"], p.attributes["response_code"]): p.value
                for p in points["istio_requests"]
                if p.attributes["destination_service"] == REVIEWS
            }
            assert requests == {("source", "200"): 3, ("source", "500"): 1, ("destination", "200"): 3,
                                ("destination", "500"): 1}  # fmt: skip
            inbound = next(p for p in points["istio_requests"] if p.attributes["reporter"] == "destination")
            assert inbound.attributes["source_principal"] == A_ID
            assert inbound.attributes["connection_security_policy"] == "mutual_tls"
            expiry = {p.attributes["workload"]: p.value for p in points["meshlib_certificate_expiry_seconds"]}
            assert set(expiry) == {"frontend", "reviews"}
            assert min(expiry.values()) > 0
            versions = {p.attributes["workload"]: p.value for p in points["meshlib_config_version"]}
            assert versions == {"frontend": frontend.version, "reviews": reviews.version}
        # closed meshes are no longer observed
        assert "meshlib_config_version" not in _points(reader)
