"""Routing through real uvicorn backends: weights, header rules, rewrites, redirects, errors."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import httpx
import pytest

from meshlib.http.errors import NoHealthyUpstreamError, NoRouteError
from tests.http.conftest import SUBSETS, Endpoints, backend_of, run_requests, service_entry
from tests.http.conftest import virtual_service as vs

MODES = ["sync", "async"]


CANARY = vs("""\
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
""")


@pytest.mark.parametrize("mode", MODES)
def test_weighted_split_is_80_20_within_3_points(backends: Endpoints, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(service_entry(backends) + SUBSETS + CANARY)
    responses = run_requests(mesh, mode, 2000)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in responses)
    v2 = sum(backend_of(r).startswith("v2") for r in responses if isinstance(r, httpx.Response))
    assert abs(v2 / 2000 * 100 - 20) <= 3, f"v2 got {v2 / 20:.1f}%"
    # v1's share spreads over both v1 replicas
    assert backends["v1-a"][0].hits > 400
    assert backends["v1-b"][0].hits > 400


def test_relative_weights_3_and_1_split_75_25(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    """Current Istio: weights need not add up to 100; a destination gets weight / sum.
    2000 requests at 25% have a standard deviation of 0.97 points: 5 points is over 5."""
    relative = CANARY.replace("weight: 80", "weight: 3").replace("weight: 20", "weight: 1")
    mesh = make_mesh(service_entry(backends) + SUBSETS + relative)
    responses = run_requests(mesh, "sync", 2000)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in responses)
    v2 = sum(backend_of(r).startswith("v2") for r in responses if isinstance(r, httpx.Response))
    assert abs(v2 / 2000 * 100 - 25) <= 5, f"v2 got {v2 / 20:.1f}%"


@pytest.mark.parametrize("mode", MODES)
def test_header_rule_routes_every_request(backends: Endpoints, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(service_entry(backends) + SUBSETS + CANARY)
    jason = run_requests(mesh, mode, 200, headers={"end-user": "jason"})
    assert len(jason) == 200
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in jason)
    assert {backend_of(r) for r in jason if isinstance(r, httpx.Response)} == {"v2-a"}
    others = run_requests(mesh, mode, 200, headers={"end-user": "maria"})
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in others)
    spread = Counter(backend_of(r) for r in others if isinstance(r, httpx.Response))
    assert {"v1-a", "v1-b"} <= set(spread), "other users follow the 80/20 split: v1 serves most"
    assert spread["v1-a"] + spread["v1-b"] > spread["v2-a"]


def test_the_upstream_sees_the_original_host_and_path(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(service_entry(backends) + SUBSETS + CANARY)
    with mesh.http_client() as client:
        response = client.get("http://reviews/api/items?page=2", headers={"end-user": "jason"})
    assert response.json() == {"name": "v2-a", "path": "/api/items"}
    method, path, headers = backends["v2-a"][0].seen[-1]
    assert (method, path, headers["host"]) == ("GET", "/api/items?page=2", "reviews")


def test_short_fqdn_and_namespaced_hosts_reach_the_same_service(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(service_entry(backends) + SUBSETS + CANARY)
    with mesh.http_client() as client:
        for host in ("reviews", "reviews.default", "reviews.default.svc.cluster.local", "REVIEWS"):
            assert client.get(f"http://{host}/", headers={"end-user": "jason"}).headers["x-backend"] == "v2-a"


def test_a_host_outside_the_mesh_passes_through(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(service_entry(backends) + SUBSETS + CANARY)
    port = backends["v1-a"][1]
    with mesh.http_client() as client:
        assert client.get(f"http://127.0.0.1:{port}/direct").json()["path"] == "/direct"
    assert mesh.metrics.requests_total() == 0, "pass-through traffic is not mesh traffic"


def test_no_matching_route_is_a_no_route_error(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    only_jason = vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    route:
    - destination: {host: reviews, subset: v2}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + only_jason)
    with (
        mesh.http_client() as client,
        pytest.raises(NoRouteError, match=r"no route .* matches GET /x") as caught,
    ):
        client.get("http://reviews/x")
    assert isinstance(caught.value, httpx.RequestError)
    assert mesh.metrics.requests_total(flags="NR") == 1


def test_a_subset_without_endpoints_is_no_healthy_upstream(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    to_v3 = vs("""\
  - route:
    - destination: {host: reviews, subset: v3}
""")
    subsets = SUBSETS + "  - {name: v3, labels: {version: v3}}\n"
    mesh = make_mesh(service_entry(backends) + subsets + to_v3)
    with mesh.http_client() as client, pytest.raises(NoHealthyUpstreamError, match="subset v3") as caught:
        client.get("http://reviews/")
    assert isinstance(caught.value, httpx.ConnectError)


def test_rewrite_redirect_direct_response_and_header_edits(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    rules = vs("""\
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 308}
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 204}
  - match: [{uri: {prefix: /v1/}}]
    rewrite: {uri: /api/v1/, authority: reviews.internal}
    headers:
      request: {set: {x-mesh: "yes"}, remove: [x-secret]}
      response: {add: {x-served-by: mesh}}
    route:
    - destination: {host: reviews, subset: v2}
      headers: {request: {add: {x-subset: v2}}}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + rules)
    with mesh.http_client() as client:
        redirect = client.get("http://reviews/old/page?q=1")
        assert (redirect.status_code, redirect.headers["location"]) == (
            308,
            "http://reviews/new?q=1",
        )  # Envoy keeps the query
        assert client.get("http://reviews/health").status_code == 204
        response = client.get("http://reviews/v1/items", headers={"x-secret": "s3cret"})
    assert response.json()["path"] == "/api/v1/items"
    assert response.headers["x-served-by"] == "mesh"
    _, path, headers = backends["v2-a"][0].seen[-1]
    assert (path, headers["host"], headers["x-mesh"], headers["x-subset"]) == (
        "/api/v1/items",
        "reviews.internal",
        "yes",
        "v2",
    )
    assert "x-secret" not in headers


def test_rewrite_of_a_case_insensitive_prefix_keeps_the_rest_of_the_path(
    backends: Endpoints, make_mesh: Any
) -> None:
    rules = vs("""\
  - match: [{uri: {prefix: /API/}, ignoreUriCase: true}]
    rewrite: {uri: /v2/}
    route:
    - destination: {host: reviews, subset: v2}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + rules)
    with mesh.http_client() as client:
        for requested in ("/api/Items/7", "/Api/Items/7", "/API/Items/7"):
            response = client.get(f"http://reviews{requested}?page=2")
            assert response.status_code == 200
            assert response.json()["path"] == "/v2/Items/7"  # the rest keeps its own case
            assert backends["v2-a"][0].seen[-1][1] == "/v2/Items/7?page=2"


def test_routes_match_the_path_as_sent_percent_escapes_included(backends: Endpoints, make_mesh: Any) -> None:
    rules = vs("""\
  - match: [{uri: {exact: /files/a%2Fb}}]
    directResponse: {status: 200, body: {string: raw}}
  - match: [{uri: {exact: /files/a/b}}]
    directResponse: {status: 200, body: {string: decoded}}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + rules)
    with mesh.http_client() as client:
        assert client.get("http://reviews/files/a%2Fb").text == "raw"
        assert client.get("http://reviews/files/a/b").text == "decoded"
        with pytest.raises(NoRouteError, match=r"matches GET /files/x%20y$"):
            client.get("http://reviews/files/x%20y")


def test_direct_response_body_bytes_are_sent_decoded(backends: Endpoints, make_mesh: Any) -> None:
    raw = b"\x89PNG\r\n\x1a\n\x00\xff"
    rules = vs(f"""\
  - directResponse: {{status: 200, body: {{bytes: {base64.b64encode(raw).decode()}}}}}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + rules)
    with mesh.http_client() as client:
        response = client.get("http://reviews/logo.png")
    assert (response.status_code, response.content) == (200, raw)
    assert sum(backend.hits for backend, _ in backends.values()) == 0


DELEGATE = """\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-api, namespace: team}
spec:
  http:
  - name: v2
    match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]
  - name: outside
    match: [{uri: {prefix: /other}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]
  - route: [{destination: {host: reviews.default.svc.cluster.local, subset: v1}}]
"""


def test_delegate_routes_replace_the_root_route_inside_its_match(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    """The root hands /api to a VirtualService without hosts in another namespace. Its /api/v2
    route goes to v2; its route without a match takes the root's /api; its /other route is
    outside /api and is dropped (Istio), so /other falls to the root's next route."""
    root = vs("""\
  - name: api
    match: [{uri: {prefix: /api}}]
    headers: {response: {set: {x-root: api}}}
    delegate: {name: reviews-api, namespace: team}
  - directResponse: {status: 418, body: {string: fallback}}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + root + DELEGATE)
    with mesh.http_client() as client:
        v2 = client.get("http://reviews/api/v2/items")
        v1 = client.get("http://reviews/api/items")
        other = client.get("http://reviews/other")
    assert v2.status_code == 200
    assert backend_of(v2) == "v2-a"
    assert v1.status_code == 200
    assert backend_of(v1).startswith("v1-")
    assert v2.headers["x-root"] == "api", "the delegate route inherits the root's header edits"
    assert (other.status_code, other.text) == (418, "fallback")


def test_a_missing_delegate_drops_the_root_route(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    root = vs("""\
  - match: [{uri: {prefix: /api}}]
    delegate: {name: nobody, namespace: team}
  - directResponse: {status: 418, body: {string: fallback}}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + root)
    with mesh.http_client() as client:
        answer = client.get("http://reviews/api/items")
    assert (answer.status_code, answer.text) == (418, "fallback")


def test_sticky_cookie_with_ttl_is_made_up_set_and_then_followed(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    """Envoy: httpCookie with a ttl and a request without the cookie: a value is made up, the
    request hashed on it, and the answer sets it; the client's cookie jar then sends it and
    every later request lands on the same endpoint."""
    policy = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: session, path: /, ttl: 60s, attributes: [{name: SameSite, value: Lax}]}
"""
    mesh = make_mesh(service_entry(backends) + policy)
    landed: set[str] = set()
    with mesh.http_client() as client:
        first = client.get("http://reviews/")
        header = first.headers["set-cookie"]
        assert header.startswith('session="')
        assert header.endswith('"; Max-Age=60; Path=/; SameSite=Lax; HttpOnly')
        value = header.split('"')[1]
        assert all(c in "0123456789abcdef" for c in value), value
        assert len(value) == 16
        for _ in range(20):
            answer = client.get("http://reviews/")
            assert "set-cookie" not in answer.headers, "the cookie came back: nothing new to set"
            landed.add(backend_of(answer))
    assert landed == {backend_of(first)}, "every request followed the cookie to one endpoint"
    spread: set[str] = set()
    for _ in range(30):  # new clients get cookies of their own: 30 all on one of 3 is 3**-29
        with mesh.http_client() as fresh:
            spread.add(backend_of(fresh.get("http://reviews/")))
    assert len(spread) > 1


def test_sticky_cookie_with_ttl_0_is_a_session_cookie(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    policy = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 0s}}}
"""
    mesh = make_mesh(service_entry(backends) + policy)
    with mesh.http_client() as client:
        header = client.get("http://reviews/").headers["set-cookie"]
    assert header.endswith('"; HttpOnly')
    assert "Max-Age" not in header
