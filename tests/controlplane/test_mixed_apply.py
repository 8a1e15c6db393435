"""POST /v1/apply with kinds meshlib does not apply, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshlib.controlplane.server import ConfigServer
from tests.conftest import destination_rule, virtual_service

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "reviews-v1"},
    "spec": {"template": {"spec": {"containers": [{"name": "reviews", "image": "reviews:v1"}]}}},
}
GATEWAY = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "bookinfo-gateway", "namespace": "istio-system"},
    "spec": {"selector": {"istio": "ingressgateway"}},
}


@pytest.fixture
def http(server: ConfigServer) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        yield client


def apply(http: httpx.Client, resources: list[Any], **options: Any) -> httpx.Response:
    return http.post("/v1/apply", json={"resources": resources, **options})


def test_apply_stores_the_supported_resources_and_answers_the_skipped(http: httpx.Client) -> None:
    answer = apply(http, [DEPLOYMENT, virtual_service(), GATEWAY, destination_rule()])
    assert answer.status_code == 200
    body = answer.json()
    assert body["version"] == 1
    assert [(r["kind"], r["action"]) for r in body["results"]] == [
        ("VirtualService", "created"),
        ("DestinationRule", "created"),
    ]
    assert body["skipped"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "namespace": "default",
            "name": "reviews-v1",
            "reason": "deploy it with kubectl; meshlib does not run workloads",
            "source": None,
            "line": None,
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "namespace": "istio-system",
            "name": "bookinfo-gateway",
            "reason": (
                "meshlib has no ingress gateway; routes for mesh hosts apply, routes bound to gateways do not"
            ),
            "source": None,
            "line": None,
        },
    ]
    assert [i["kind"] for i in http.get("/v1/resources").json()["items"]] == [
        "DestinationRule",
        "VirtualService",
    ]


def test_only_skipped_kinds_change_nothing(http: httpx.Client) -> None:
    answer = apply(http, [DEPLOYMENT], namespace="staging")
    assert answer.status_code == 200
    assert answer.json()["version"] == 0
    assert answer.json()["results"] == []
    assert answer.json()["skipped"][0]["namespace"] == "staging"


def test_strict_refuses_the_whole_apply(http: httpx.Client) -> None:
    answer = apply(http, [virtual_service(), GATEWAY], strict=True)
    assert answer.status_code == 422
    [issue] = answer.json()["issues"]
    assert (issue["resource"], issue["path"]) == ("Gateway istio-system/bookinfo-gateway", "kind")
    assert issue["message"].startswith(
        "strict mode refuses kinds meshlib does not apply (meshlib has no ingress"
    )
    assert http.get("/v1/resources").json() == {"version": 0, "items": []}


@pytest.mark.parametrize(
    ("other", "path", "message"),
    [
        ({"kind": "Deployment", "metadata": {"name": "x"}}, "apiVersion", "required field is missing"),
        ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}}, "metadata.name", "required field"),
        (
            {"apiVersion": "networking.istio.io/v1", "kind": "Gatway", "metadata": {"name": "x"}},
            "kind",
            "Gateway",
        ),
    ],
)
def test_a_malformed_other_kind_or_an_invalid_supported_one_refuses_all(
    http: httpx.Client, other: dict[str, Any], path: str, message: str
) -> None:
    answer = apply(http, [virtual_service(), other, DEPLOYMENT])
    assert answer.status_code == 422
    [issue] = answer.json()["issues"]
    assert issue["path"] == path
    assert message in issue["message"]
    invalid = apply(http, [DEPLOYMENT, virtual_service(v1=10, v2=-10)])
    assert invalid.status_code == 422
    assert [i["path"] for i in invalid.json()["issues"]] == ["spec.http[0].route[1].weight"]
    assert http.get("/v1/resources").json() == {"version": 0, "items": []}


def test_dry_run_answers_the_skipped_and_stores_nothing(http: httpx.Client) -> None:
    body = apply(http, [GATEWAY, virtual_service()], dryRun=True).json()
    assert (body["dryRun"], body["version"]) == (True, 0)
    assert [s["kind"] for s in body["skipped"]] == ["Gateway"]
    assert http.get("/v1/resources").json()["items"] == []
