"""The /v1 wire contract shared by the config service and its clients (Mesh, meshctl)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from .core.hosts import CLUSTER_DOMAIN
from .core.metrics import BUCKETS_MS
from .core.snapshot import Snapshot, compile_snapshot
from .egress_scope import MAX_EGRESS_HOSTS, parse_egress_host
from .errors import ConfigError, ConfigIssue
from .policy.base import MeshModel
from .policy.discovered_endpoints import with_instances
from .policy.discovery import consul_target
from .policy.resources import Resource, ServiceEntry
from .policy.srv_endpoints import srv_lookups_missing
from .policy.validate import format_path, parse_resource, resource_label
from .registry import WorkloadRegistration

__all__ = [
    "DEFAULT_PORT",
    "EPOCH_HEADER",
    "MAX_BODY_BYTES",
    "MAX_EDGES",
    "MAX_JSON_DEPTH",
    "MAX_REGISTRATION_BYTES",
    "MAX_WATCH_WAIT",
    "ApplyRequest",
    "Edge",
    "EdgeReport",
    "Nack",
    "WatchRequest",
    "WorkloadRegistration",
    "decode_snapshot",
]

DEFAULT_PORT = 15010
EPOCH_HEADER = "meshlib-epoch"
"""Names the history of the snapshot a watch answer holds (WatchRequest.epoch)."""
MAX_WATCH_WAIT = 60.0
"""Longest a watch request is held open; clients wait a little longer than they ask for."""
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_REGISTRATION_BYTES = 64 * 1024  # a registration or a watch request (32 endpoints fit in 8 KiB)
MAX_JSON_DEPTH = 64  # policy nests about 12 deep; 100,000 levels would exhaust the parser's stack


class ApplyRequest(MeshModel):
    """Resources to store at one new version. Kinds meshlib does not apply are answered as
    skipped (or, with ``strict``, refused with the rest)."""

    resources: list[Any] = Field(max_length=10_000)
    namespace: str = "default"
    dry_run: bool = False
    strict: bool = False


_VERSION = Field(default=-1, ge=-1, le=2**63 - 1)  # what SQLite's INTEGER holds


class Nack(MeshModel):
    version: int = Field(ge=0, le=2**63 - 1)
    reason: str = Field(max_length=10_000)

    @field_validator("reason")
    @classmethod
    def _text(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the reason is not valid text (a lone surrogate)") from None
        return value


MAX_EDGES = 512  # per report: a workload calling more services than that reports its busiest
_NAME = Field(max_length=253)
_COUNT = Field(ge=0, le=2**53)


class Edge(MeshModel):
    """Requests on one edge of the service graph during one report window: who called whom
    (``reporter`` source: this workload called ``destination``; destination: a caller outside
    the mesh called this workload), how many failed, and their durations in Istio's buckets."""

    reporter: Literal["source", "destination"]
    source: str = _NAME  # workload name (``unknown``: outside the mesh)
    source_namespace: str = _NAME
    source_version: str = _NAME
    destination: str = _NAME  # the destination service (host)
    destination_workload: str = _NAME
    destination_version: str = _NAME
    protocol: str = Field(max_length=16)
    requests: int = _COUNT
    errors: int = _COUNT  # 5xx, no answer, or a gRPC status other than OK
    buckets: list[int] = Field(min_length=len(BUCKETS_MS) + 1, max_length=len(BUCKETS_MS) + 1)

    @model_validator(mode="after")
    def _counts(self) -> Edge:
        if self.errors > self.requests:
            raise ValueError(f"{self.errors} errors out of {self.requests} requests")
        if any(n < 0 for n in self.buckets) or sum(self.buckets) != self.requests:
            raise ValueError(f"the buckets must count the {self.requests} requests, once each")
        return self


class EdgeReport(MeshModel):
    """What a workload sends every report interval (``POST /v1/workloads/{id}/edges``)."""

    window: float = Field(gt=0.0, le=3600.0)  # seconds the counts cover
    edges: list[Edge] = Field(max_length=MAX_EDGES)


class WatchRequest(MeshModel):
    """Long poll: answered at once when the service's version differs from ``version``,
    otherwise when it changes or after ``wait`` seconds (204). Carries ACK/NACK."""

    version: int = _VERSION
    wait: float = Field(default=30.0, ge=0.0, le=MAX_WATCH_WAIT)
    workload: str | None = Field(default=None, max_length=253)
    ack: int | None = Field(default=None, ge=0, le=2**63 - 1)
    nack: Nack | None = None
    # Answer with what changed since ``version`` (meshlib.snapshot_delta) when possible.
    delta: bool = False
    # The epoch of the config service that served the snapshot held (its ``meshlib-epoch``
    # response header): a delta is made only within one epoch.
    epoch: str | None = Field(default=None, max_length=64)
    # Egress hosts (meshlib.egress_scope, canonical): only their registry entries, and no
    # answer for a change to any other's.
    hosts: list[str] | None = Field(default=None, max_length=MAX_EGRESS_HOSTS)

    @field_validator("hosts")
    @classmethod
    def _canonical_hosts(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or ():
            if entry.startswith("./") or parse_egress_host(entry, "default") != entry:
                raise ValueError(f"egress host {entry!r} is not canonical: namespace or '*', '/', FQDN")
        return value


def _with_discovered(resources: list[Resource], discovered: Any) -> list[Resource]:
    """ServiceEntries annotated with a discovery source get the instances the config service
    found (``discovered``: one record per Consul service); without a record, none yet."""
    found: dict[tuple[str, str], list[Any]] = {}
    for record in discovered if isinstance(discovered, list) else ():
        if isinstance(record, dict) and record.get("source") == "consul":
            instances = record.get("instances")
            key = (str(record.get("service")), str(record.get("datacenter") or ""))
            found[key] = instances if isinstance(instances, list) else []
    out: list[Resource] = []
    for resource in resources:
        target = (
            consul_target(resource.metadata.annotations, resource.spec.hosts)
            if isinstance(resource, ServiceEntry)
            else None
        )
        if isinstance(resource, ServiceEntry) and target is not None:
            resource = with_instances(resource, found.get((target.service, target.datacenter), []))
        out.append(resource)
    return out


def decode_snapshot(payload: Any) -> Snapshot:
    """A snapshot payload (from the watch API or a last-known-good file) compiled for use.

    Raises ConfigError naming each resource this process cannot use: the reason a
    workload sends back in its NACK.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("version"), int):
        raise ConfigError("snapshot payload has no integer version")
    issues: list[ConfigIssue] = []
    resources: list[Resource] = []
    for index, manifest in enumerate(payload.get("resources") or []):
        resource, problems = parse_resource(manifest)
        label = resource_label(manifest) or f"resources[{index}]"
        issues.extend(ConfigIssue(m, resource=label, path=format_path(p)) for p, m in problems)
        if resource is not None:
            resources.append(resource)
    workloads: list[WorkloadRegistration] = []
    for index, data in enumerate(payload.get("workloads") or []):
        try:
            workloads.append(WorkloadRegistration.model_validate(data))
        except ValidationError as exc:
            issues.append(
                ConfigIssue(
                    f"invalid registry entry: {exc.error_count()} error(s)", resource=f"workloads[{index}]"
                )
            )
    issues.extend(srv_lookups_missing(resources))
    if issues:
        raise ConfigError(issues)
    return compile_snapshot(
        payload["version"],
        _with_discovered(resources, payload.get("discovered")),
        workloads,
        trust_domain=str(payload.get("trustDomain") or CLUSTER_DOMAIN),
    )
