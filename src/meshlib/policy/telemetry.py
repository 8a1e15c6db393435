"""telemetry.istio.io Telemetry: access logging and trace sampling by policy.

    apiVersion: telemetry.istio.io/v1
    kind: Telemetry
    metadata: {name: orders, namespace: shop}
    spec:
      selector: {matchLabels: {app: orders}}      # none: the namespace (the root namespace: the mesh)
      accessLogging:
      - providers: [{name: envoy}]                # Istio's built-in access log (here: JSON lines)
        match: {mode: SERVER}                     # CLIENT, SERVER or CLIENT_AND_SERVER (default)
        filter: {expression: "response.code >= 400"}
      tracing:
      - randomSamplingPercentage: 10
        disableSpanReporting: false

As Istio: a workload's Telemetry (selector) overrides its namespace's, which overrides the
root namespace's; among equals the oldest wins. Each of ``accessLogging`` and ``tracing`` is
taken from the most specific resource that sets it. What meshlib cannot honour is refused
here, with what to do instead: metric overrides, tracing providers and custom tags, CEL
filters beyond a comparison of ``response.code``, and targetRefs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import FieldPath, MeshModel, PolicyTargetReference, WorkloadSelector

__all__ = ["AccessLogging", "CodeFilter", "TelemetrySpec", "TracingRule", "parse_code_filter"]

Mode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]
ACCESS_LOG_PROVIDERS = ("envoy",)  # Istio's default provider name; meshlib's JSON access log
_FILTER = re.compile(r"^\s*response\.code\s*(>=|<=|==|!=|>|<)\s*(\d{1,3})\s*$")
CodeFilter = tuple[str, int]  # (operator, code)


def parse_code_filter(expression: str) -> CodeFilter | None:
    """``response.code >= 400`` and the other comparisons; None for anything else."""
    found = _FILTER.match(expression)
    return (found.group(1), int(found.group(2))) if found is not None else None


class ProviderRef(MeshModel):
    name: str = Field(min_length=1, max_length=253)


class TelemetryMatch(MeshModel):
    mode: Mode = "CLIENT_AND_SERVER"


class Filter(MeshModel):
    expression: str = Field(max_length=1024)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if parse_code_filter(self.expression) is None:
            yield (
                ("expression",),
                f"{self.expression!r}: meshlib evaluates only a comparison of response.code "
                "(e.g. 'response.code >= 400'), not full CEL; log everything and filter downstream",
            )


class AccessLogging(MeshModel):
    match: TelemetryMatch | None = None
    providers: tuple[ProviderRef, ...] = ()
    disabled: bool | None = None
    filter: Filter | None = None

    @property
    def mode(self) -> Mode:
        return self.match.mode if self.match is not None else "CLIENT_AND_SERVER"

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        for index, provider in enumerate(self.providers):
            if provider.name not in ACCESS_LOG_PROVIDERS:
                yield (
                    ("providers", index, "name"),
                    f"{provider.name!r}: meshlib has one access log provider, 'envoy' (JSON lines to "
                    "MESH_ACCESS_LOG, stdout by default); name it or leave providers out",
                )


class TracingRule(MeshModel):
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "providers": (
            "meshlib sends spans to the process's OpenTelemetry SDK (MESH_TRACING, or the "
            "application's own TracerProvider), not to named providers; leave providers out"
        ),
        "custom_tags": "custom span tags are not implemented; leave customTags out",
        "use_request_id_for_trace_sampling": (
            "meshlib samples at random, not by x-request-id; set it to false or leave it out"
        ),
    }

    match: TelemetryMatch | None = None
    providers: tuple[ProviderRef, ...] = ()
    random_sampling_percentage: float | None = Field(default=None, ge=0.0, le=100.0)
    disable_span_reporting: bool | None = None
    custom_tags: dict[str, Any] | None = None
    use_request_id_for_trace_sampling: bool | None = None
    enable_istio_tags: bool | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.match is not None and self.match.mode != "CLIENT_AND_SERVER":
            yield (
                ("match", "mode"),
                f"{self.match.mode}: meshlib samples and reports both sides of a workload alike; "
                "use CLIENT_AND_SERVER (or leave match out)",
            )
        if self.enable_istio_tags is False:
            yield (
                ("enableIstioTags",),
                "meshlib always adds Istio's span tags; set it to true or leave it out",
            )


class TelemetrySpec(MeshModel):
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "target_ref": "it selects gateways and waypoints, which meshlib does not have; use selector",
        "target_refs": "they select gateways and waypoints, which meshlib does not have; use selector",
        "metrics": (
            "metric overrides are not implemented: Istio's standard metrics are always reported "
            "(Prometheus endpoint, OpenTelemetry API); leave metrics out"
        ),
    }

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    tracing: tuple[TracingRule, ...] = ()
    access_logging: tuple[AccessLogging, ...] = ()
    metrics: tuple[dict[str, Any], ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if len(self.tracing) > 1:
            yield (("tracing",), "meshlib has one tracing configuration per workload; keep one entry")
