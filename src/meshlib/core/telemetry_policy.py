"""What the Telemetry resources say for one workload: access logging per side, trace
sampling and span reporting.

Istio's hierarchy: the root namespace's resources (no selector), then the workload's
namespace's (no selector), then those of its namespace whose selector matches it; a more
specific level overrides what a less specific one set, field by field; within a level the
oldest resource that sets a field decides. Per side, an access-logging entry for that side
(``CLIENT`` or ``SERVER``) wins over a ``CLIENT_AND_SERVER`` one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..policy.resources import Telemetry
from ..policy.telemetry import AccessLogging, CodeFilter, parse_code_filter

__all__ = ["NO_TELEMETRY_POLICY", "SideLog", "TelemetryPolicy", "code_passes", "resolve_telemetry"]


@dataclass(frozen=True, slots=True)
class SideLog:
    enabled: bool
    codes: CodeFilter | None = None  # log only answers whose code passes this comparison


@dataclass(frozen=True, slots=True)
class TelemetryPolicy:
    """None everywhere: no Telemetry resource decides it (the MESH_* settings do)."""

    client_log: SideLog | None = None
    server_log: SideLog | None = None
    sampling: float | None = None  # percent of new traces sampled
    report_spans: bool | None = None


NO_TELEMETRY_POLICY = TelemetryPolicy()


def code_passes(codes: CodeFilter, code: int) -> bool:
    operator, bound = codes
    if operator == ">=":
        return code >= bound
    if operator == ">":
        return code > bound
    if operator == "<=":
        return code <= bound
    if operator == "<":
        return code < bound
    if operator == "==":
        return code == bound
    return code != bound


def _side(entries: Sequence[AccessLogging], side: str) -> SideLog | None:
    chosen = next((e for e in entries if e.mode == side), None)
    if chosen is None:
        chosen = next((e for e in entries if e.mode == "CLIENT_AND_SERVER"), None)
    if chosen is None:
        return None
    codes = parse_code_filter(chosen.filter.expression) if chosen.filter is not None else None
    return SideLog(enabled=not chosen.disabled, codes=codes)


def resolve_telemetry(
    telemetries: Sequence[Telemetry], namespace: str, labels: Mapping[str, str], root_namespace: str
) -> TelemetryPolicy:
    """``telemetries``: oldest first."""

    def selects(t: Telemetry) -> bool:
        return t.spec.selector is not None and bool(t.spec.selector.match_labels)

    levels = (
        [t for t in telemetries if t.namespace == root_namespace and not selects(t)],
        [t for t in telemetries if t.namespace == namespace and not selects(t)],
        [
            t
            for t in telemetries
            if t.namespace == namespace
            and selects(t)
            and t.spec.selector is not None
            and t.spec.selector.matches(labels)
        ],
    )
    client = server = None
    sampling: float | None = None
    report: bool | None = None
    for level in levels:
        logging = next((t.spec.access_logging for t in level if t.spec.access_logging), None)
        if logging is not None:
            client = _side(logging, "CLIENT") or client
            server = _side(logging, "SERVER") or server
        rule = next((t.spec.tracing[0] for t in level if t.spec.tracing), None)
        if rule is not None:
            if rule.random_sampling_percentage is not None:
                sampling = rule.random_sampling_percentage
            if rule.disable_span_reporting is not None:
                report = not rule.disable_span_reporting
    return TelemetryPolicy(client, server, sampling, report)
