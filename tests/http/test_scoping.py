"""Scoping as Istio resolves it, through real uvicorn backends: exportTo on VirtualService and
DestinationRule across namespaces, DestinationRule workloadSelector, and which namespace's
DestinationRule a caller uses (its own, then the host's, then the root namespace's)."""

from __future__ import annotations

import httpx
import pytest

from meshlib.http.errors import NoHealthyUpstreamError
from tests.http.conftest import Endpoints, backend_of, service_entry

URL = "http://reviews.default/"


def entry(backends: Endpoints) -> str:
    """The backends as reviews in namespace default, whatever namespace the caller is in (a
    static policy file puts documents without a namespace in the caller's)."""
    return service_entry(backends).replace(
        "metadata: {name: reviews}", "metadata: {name: reviews, namespace: default}"
    )


def vs(namespace: str = "default", export: str = "", subset: str = "v2") -> str:
    export_line = f"  exportTo: {export}\n" if export else ""
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {namespace}}}
spec:
  hosts: [reviews.default.svc.cluster.local]
{export_line}  http:
  - route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}}}]
"""


def dr(name: str, namespace: str, v2_version: str, export: str = "", selector: str = "") -> str:
    """A DestinationRule whose subset ``v2`` selects ``version: <v2_version>``: which rule a
    caller used shows in which backend answers."""
    lines = f"  exportTo: {export}\n" if export else ""
    lines += f"  workloadSelector: {{matchLabels: {selector}}}\n" if selector else ""
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: reviews.default.svc.cluster.local
{lines}  subsets:
  - {{name: v2, labels: {{version: {v2_version}}}}}
"""


def answer(mesh) -> httpx.Response:  # type: ignore[no-untyped-def]
    with mesh.http_client() as client:
        return client.get(URL)


def test_export_to_dot_keeps_a_virtual_service_in_its_namespace(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    routed = vs(export='["."]') + dr("reviews", "default", "v2")
    policy = entry(backends) + routed
    inside = make_mesh(policy, namespace="default")
    outside = make_mesh(policy, namespace="shop")
    assert all(backend_of(answer(inside)) == "v2-a" for _ in range(5))
    seen = {backend_of(answer(outside)) for _ in range(30)}
    assert "v1-a" in seen or "v1-b" in seen, "another namespace does not see the route to v2"


def test_export_to_names_namespaces_and_tilde_hides(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    named = entry(backends) + vs(export='["shop"]') + dr("reviews", "default", "v2", export='["*"]')
    assert backend_of(answer(make_mesh(named, namespace="shop"))) == "v2-a"
    hidden = entry(backends) + vs() + dr("reviews", "default", "v2", export='["~"]')
    # the route names subset v2, and no DestinationRule visible here defines it: no endpoints
    with pytest.raises(NoHealthyUpstreamError, match="subset v2"):
        answer(make_mesh(hidden, namespace="default"))


def test_the_callers_namespace_rule_wins_then_the_hosts_then_the_roots(
    backends: Endpoints, make_mesh
) -> None:  # type: ignore[no-untyped-def]
    rules = (
        dr("in-host-ns", "default", "v2")
        + dr("in-caller-ns", "shop", "v1")
        + dr("in-root", "istio-system", "v1")
    )
    policy = entry(backends) + vs(export='["*"]') + rules
    assert backend_of(answer(make_mesh(policy, namespace="shop"))).startswith("v1-"), "shop's own rule"
    assert backend_of(answer(make_mesh(policy, namespace="web"))) == "v2-a", "then the host's namespace"
    root_only = entry(backends) + vs(export='["*"]') + dr("in-root", "istio-system", "v2")
    assert backend_of(answer(make_mesh(root_only, namespace="web"))) == "v2-a", "then the root namespace"


def test_workload_selector_rules_apply_to_the_workloads_they_select(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    rules = dr("canary-callers", "default", "v2", selector="{app: canary}") + dr("everyone", "default", "v1")
    policy = entry(backends) + vs() + rules
    assert backend_of(answer(make_mesh(policy, labels={"app": "canary"}))) == "v2-a"
    assert backend_of(answer(make_mesh(policy, labels={"app": "other"}))).startswith("v1-")
