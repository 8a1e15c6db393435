"""Kinds meshlib does not apply, and why: Kubernetes objects and Istio's proxy-only kinds.

Users migrating from Istio apply the files they already run, and those mix VirtualServices
with Deployments, Services, Gateways and Sidecars. meshlib applies the kinds of
``resources.KINDS`` and reports every other resource as skipped, with a reason that tells
the user what to do instead, rather than refusing the whole file. Only a kind in an API
group meshlib applies (``networking.istio.io``, ...) that no table here names stays an
error: it is a typo, or an Istio kind this meshlib has not heard of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SkippedResource", "cluster_scoped", "skip_reason", "skipped_kinds", "split_api_version"]

_WORKLOAD = "deploy it with kubectl; meshlib does not run workloads"
_KUBERNETES = "apply it with kubectl; meshlib applies only mesh policy"
_NO_GATEWAY = "meshlib has no ingress gateway; routes for mesh hosts apply, routes bound to gateways do not"
_GATEWAY_API = (
    "the Kubernetes Gateway API is not implemented (meshlib has no gateway); "
    "write mesh routes as VirtualServices"
)
_REGISTRY = (
    "workloads register themselves with the config service (MESH_SERVICE, MESH_TOKEN); "
    "declare endpoints outside the mesh with a ServiceEntry"
)

# (API group, kind) -> reason; "" is Kubernetes' core group (apiVersion: v1).
_REASONS: dict[tuple[str, str], str] = {
    ("networking.istio.io", "Gateway"): _NO_GATEWAY,
    ("networking.istio.io", "Sidecar"): (
        "not applied as a resource: give its egress.hosts to the workload (MESH_EGRESS_HOSTS or "
        "Mesh(egress_hosts=...)), which then receives only their endpoints"
    ),
    ("networking.istio.io", "EnvoyFilter"): "no Envoy in-process: there is no Envoy configuration to patch",
    ("networking.istio.io", "WorkloadEntry"): _REGISTRY,
    ("networking.istio.io", "WorkloadGroup"): _REGISTRY,
    ("networking.istio.io", "ProxyConfig"): (
        "no proxy to configure: meshlib runs inside the process and reads MESH_* settings"
    ),
    ("extensions.istio.io", "WasmPlugin"): (
        "no Envoy in-process to load Wasm into; write the filter as ASGI/WSGI middleware"
    ),
    ("install.istio.io", "IstioOperator"): "Istio installation settings; meshlib is installed with pip",
    ("", "Service"): (
        "meshlib does not read Kubernetes Services: workloads register their endpoints with the "
        "config service; declare other services with a ServiceEntry"
    ),
    ("", "ServiceAccount"): (
        "meshlib identities come from bootstrap tokens (meshctl token create --service NAME), "
        "not from service accounts"
    ),
    ("", "Namespace"): "meshlib namespaces need no creating: a resource's metadata.namespace is enough",
    ("", "Endpoints"): _REGISTRY,
    ("discovery.k8s.io", "EndpointSlice"): _REGISTRY,
    ("networking.k8s.io", "Ingress"): _NO_GATEWAY,
    ("networking.k8s.io", "IngressClass"): _NO_GATEWAY,
    ("networking.k8s.io", "NetworkPolicy"): (
        "enforced by the cluster's network plugin, not by meshlib; meshlib's access control is "
        "AuthorizationPolicy"
    ),
    **{
        (group, kind): _WORKLOAD
        for group, kinds in (
            ("", ("Pod", "ReplicationController")),
            ("apps", ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")),
            ("batch", ("Job", "CronJob")),
            ("autoscaling", ("HorizontalPodAutoscaler",)),
            ("policy", ("PodDisruptionBudget",)),
        )
        for kind in kinds
    },
}

# Groups whose every kind is skipped with one reason.
_GROUP_REASONS = {
    "gateway.networking.k8s.io": _GATEWAY_API,
    "gateway.networking.x-k8s.io": _GATEWAY_API,
}

# Kinds without a namespace, named without one ("Namespace bookinfo").
_CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "GatewayClass",
    }
)


def split_api_version(api_version: str) -> tuple[str, str] | None:
    """``apps/v1`` -> ``("apps", "v1")``, ``v1`` -> ``("", "v1")``; None when malformed."""
    group, slash, version = api_version.rpartition("/")
    if not version or (slash and not group) or "/" in group or any(c.isspace() for c in api_version):
        return None
    return group, version


def skip_reason(group: str, kind: str, applied_groups: frozenset[str]) -> str | None:
    """Why a resource of ``kind`` in ``group`` is skipped; None when it must be refused instead
    (an unknown kind in a group meshlib applies)."""
    reason = _REASONS.get((group, kind)) or _GROUP_REASONS.get(group)
    if reason is not None:
        return reason
    if group in applied_groups:
        return None
    if group.endswith(".istio.io"):
        return f"not a kind meshlib applies ({group} is Istio's proxy configuration)"
    return _KUBERNETES


@dataclass(frozen=True, slots=True)
class SkippedResource:
    """A resource of a kind meshlib does not apply, reported instead of stored.

    ``namespace`` is None for cluster-scoped kinds; ``source`` and ``line`` are known when it
    was read from a file (the config service only sees what the client sends)."""

    api_version: str
    kind: str
    name: str
    namespace: str | None
    reason: str
    source: str | None = None
    line: int | None = None

    @property
    def label(self) -> str:
        """``Gateway istio-system/bookinfo-gateway``, or ``Namespace bookinfo``."""
        scope = "" if self.namespace is None else f"{self.namespace}/"
        return f"{self.kind} {scope}{self.name}"

    @property
    def refusal(self) -> str:
        """The message when strict mode (``--strict``) makes this resource an error."""
        return f"strict mode refuses kinds meshlib does not apply ({self.reason})"

    @property
    def where(self) -> str | None:
        """``file.yaml:12`` when it was read from a file."""
        if self.source is None:
            return None
        return f"{self.source}:{self.line}" if self.line else self.source

    def __str__(self) -> str:
        """``file.yaml:12: Gateway istio-system/bookinfo-gateway: meshlib has no ...``"""
        where = self.where
        return f"{where}: {self.label}: {self.reason}" if where else f"{self.label}: {self.reason}"

    def stub(self) -> dict[str, Any]:
        """What a client sends the config service in place of the document: enough to name
        it, nothing more (the document may be a Secret, or a large ConfigMap)."""
        metadata: dict[str, str] = {"name": self.name}
        if self.namespace is not None:
            metadata["namespace"] = self.namespace
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata}

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "reason": self.reason,
            "source": self.source,
            "line": self.line,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SkippedResource:
        """An entry of the config service's ``skipped`` answer (see ``to_json``)."""
        namespace, source, line = data.get("namespace"), data.get("source"), data.get("line")
        return cls(
            api_version=str(data["apiVersion"]),
            kind=str(data["kind"]),
            name=str(data["name"]),
            namespace=None if namespace is None else str(namespace),
            reason=str(data["reason"]),
            source=None if source is None else str(source),
            line=line if isinstance(line, int) else None,
        )


def cluster_scoped(kind: str) -> bool:
    """Whether a kind's objects live outside namespaces (and are named without one)."""
    return kind in _CLUSTER_SCOPED


def skipped_kinds(group: str) -> list[str]:
    """The kinds of ``group`` skipped by name (for "did you mean" hints)."""
    return [kind for g, kind in _REASONS if g == group]
