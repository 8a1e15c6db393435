"""telemetry.istio.io Telemetry: access logging per side with a code filter, trace sampling
and span reporting, by policy, on two workloads over mTLS; Istio's hierarchy; what meshlib
cannot honour refused with what to do instead."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.telemetry_policy import SideLog, TelemetryPolicy, resolve_telemetry
from meshlib.errors import ConfigError
from meshlib.policy.loader import load_text
from meshlib.policy.resources import ResourceKey, Telemetry
from meshlib.telemetry.access_log import AccessLog
from tests.four_servers import served_to

REVIEWS = "reviews.default.svc.cluster.local"


def telemetry(name: str, spec: str, namespace: str = "default") -> str:
    indented = "\n".join("  " + line for line in spec.strip().splitlines())
    head = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
    head += f"metadata: {{name: {name}, namespace: {namespace}}}\n"
    return f"{head}spec:\n{indented}\n---\n"


def _resources(text: str) -> list[Telemetry]:
    found = [item.resource for item in load_text(text)]
    assert all(isinstance(r, Telemetry) for r in found)
    return found  # type: ignore[return-value]


def test_workload_overrides_namespace_overrides_root_field_by_field() -> None:
    text = (
        telemetry("mesh", "tracing: [{randomSamplingPercentage: 5}]\naccessLogging: [{}]", "istio-system")
        + telemetry("ns", "accessLogging: [{match: {mode: CLIENT}, disabled: true}]")
        + telemetry(
            "reviews",
            "selector: {matchLabels: {app: reviews}}\n"
            "tracing: [{disableSpanReporting: true}]\n"
            "accessLogging: [{match: {mode: SERVER}, filter: {expression: 'response.code >= 500'}}]",
        )
        + telemetry("other-ns", "tracing: [{randomSamplingPercentage: 90}]", "shop")
    )
    found = _resources(text)
    reviews = resolve_telemetry(found, "default", {"app": "reviews"}, "istio-system")
    assert reviews == TelemetryPolicy(
        client_log=SideLog(False),  # the namespace's CLIENT entry over the mesh's both-sides one
        server_log=SideLog(True, (">=", 500)),  # the workload's own
        sampling=5.0,  # inherited from the root namespace: the workload's entry does not set it
        report_spans=False,
    )
    frontend = resolve_telemetry(found, "default", {"app": "frontend"}, "istio-system")
    assert frontend == TelemetryPolicy(SideLog(False), SideLog(True), 5.0, None)
    assert resolve_telemetry(found, "shop", {"app": "x"}, "istio-system").sampling == 90.0


@pytest.mark.parametrize(
    ("spec", "path", "says"),
    [
        ("tracing: [{providers: [{name: zipkin}]}]", "spec.tracing[0].providers", "OpenTelemetry"),
        ("tracing: [{match: {mode: CLIENT}}]", "spec.tracing[0].match.mode", "CLIENT_AND_SERVER"),
        ("tracing: [{customTags: {a: {literal: {value: b}}}}]", "spec.tracing[0].customTags",
         "not implemented"),
        ("tracing: [{useRequestIdForTraceSampling: true}]", "spec.tracing[0].useRequestIdForTraceSampling",
         "x-request-id"),
        ("tracing: [{enableIstioTags: false}]", "spec.tracing[0].enableIstioTags", "always adds"),
        ("tracing: [{randomSamplingPercentage: 101}]", "randomSamplingPercentage", "100"),
        ("tracing: [{}, {}]", "spec.tracing", "one entry"),
        ("accessLogging: [{providers: [{name: otel}]}]", "spec.accessLogging[0].providers[0].name",
         "'envoy'"),
        ("accessLogging: [{filter: {expression: 'request.path == \"/x\"'}}]",
         "spec.accessLogging[0].filter.expression", "response.code"),
        ("metrics: [{overrides: [{disabled: true}]}]", "spec.metrics", "metric overrides"),
        ("targetRefs: [{kind: Gateway, name: g}]", "spec.targetRefs", "use selector"),
    ],
)  # fmt: skip
def test_what_meshlib_cannot_honour_is_refused(spec: str, path: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(telemetry("t", spec), source="telemetry.yaml")
    message = str(caught.value)
    assert path in message
    assert says in message
    assert "telemetry.yaml" in message


def test_access_logs_and_tracing_follow_the_policy_on_both_sides(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    logged = {"frontend": io.StringIO(), "reviews": io.StringIO()}
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:

        def mesh(name: str) -> Mesh:
            token = admin.create_token(name)["token"]
            made = Mesh(
                name,
                control_plane=server.url,
                token=token,
                data_dir=tmp_path / name,
                tracer_provider=provider,
            )
            made.telemetry.access_log = AccessLog(logged[name])
            return made

        with (
            mesh("frontend") as frontend,
            mesh("reviews") as reviews,
            served_to(frontend, reviews, failing="/broken"),
        ):
            applied: list[ResourceKey] = []

            def apply(text: str) -> None:
                """These Telemetry resources instead of the previous ones."""
                for key in applied:
                    admin.delete(key)
                manifests = [m for m in yaml.safe_load_all(text) if m]
                applied[:] = [
                    ResourceKey("Telemetry", m["metadata"]["namespace"], m["metadata"]["name"])
                    for m in manifests
                ]
                version = admin.apply(manifests)["version"]
                assert frontend.wait_for_version(version, 10)
                assert reviews.wait_for_version(version, 10)
                for buffer in logged.values():
                    buffer.seek(0)
                    buffer.truncate()
                exporter.clear()

            def send(client: Any) -> None:
                assert [client.get("http://reviews/books/1").status_code for _ in range(3)] == [200] * 3
                assert client.get("http://reviews/broken").status_code == 500

            def lines(name: str) -> list[Any]:
                return [json.loads(line) for line in logged[name].getvalue().splitlines()]

            with frontend.http_client() as client:
                apply(
                    telemetry("mesh", "tracing: [{randomSamplingPercentage: 100}]", "istio-system")
                    + telemetry("ns", "accessLogging: [{match: {mode: CLIENT}, disabled: true}]")
                    + telemetry(
                        "reviews",
                        "selector: {matchLabels: {app: reviews}}\n"
                        "accessLogging: [{match: {mode: SERVER}, providers: [{name: envoy}],\n"
                        "  filter: {expression: 'response.code >= 400'}}]",
                    )
                )
                send(client)
                assert lines("frontend") == []  # the namespace turned the client side off
                served = lines("reviews")
                assert [(e["direction"], e["response_code"]) for e in served] == [("inbound", 500)]
                kinds = sorted(span.kind.name for span in exporter.get_finished_spans())
                # 100% sampling by policy (the default is 1%): each request, both sides
                assert kinds.count("SERVER") == 4
                assert kinds.count("CLIENT") >= 4

                unreported = "tracing: [{randomSamplingPercentage: 100, disableSpanReporting: true}]"
                apply(telemetry("mesh", unreported, "istio-system"))
                send(client)
                assert exporter.get_finished_spans() == ()  # sampled, but not reported
                # no resource decides logging any more: the workloads' own settings again
                assert len(lines("frontend")) == 4
                assert len(lines("reviews")) == 4
                assert frontend.telemetry.tracing is not None
                assert frontend.telemetry.tracing.sampling == 100.0

                apply(telemetry("mesh", "accessLogging: [{disabled: true}]", "istio-system"))
                send(client)
                assert lines("frontend") == lines("reviews") == []
                assert frontend.telemetry.tracing.sampling == 1.0  # back to MESH_TRACE_SAMPLING's default
