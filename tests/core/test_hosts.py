"""Host names: short and Kubernetes-style FQDNs name one service; dots in resources are literal."""

from __future__ import annotations

import pytest

from meshlib.core.hosts import CLUSTER_DOMAIN, host_candidates, host_matches, normalize_host, short_name


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        # A short name is expanded with the namespace of the resource that mentions it.
        ("reviews", "default", "reviews.default.svc.cluster.local"),
        ("reviews", "prod", "reviews.prod.svc.cluster.local"),
        ("Reviews", "default", "reviews.default.svc.cluster.local"),
        ("  reviews  ", "default", "reviews.default.svc.cluster.local"),
        ("reviews:9080", "default", "reviews.default.svc.cluster.local"),
        # A name with any dot is taken as written (Istio does not expand `reviews.prod`).
        ("reviews.prod", "default", "reviews.prod"),
        ("reviews.prod.svc", "default", "reviews.prod.svc"),
        ("reviews.default.svc.cluster.local", "prod", "reviews.default.svc.cluster.local"),
        ("Reviews.Default.SVC.Cluster.Local", "prod", "reviews.default.svc.cluster.local"),
        ("reviews.default.svc.cluster.local.", "prod", "reviews.default.svc.cluster.local"),
        ("reviews.default.svc.cluster.local:9080", "prod", "reviews.default.svc.cluster.local"),
        ("api.example.com", "default", "api.example.com"),
        ("API.Example.com:443", "default", "api.example.com"),
        # A trailing root dot goes whether or not a port follows it.
        ("api.example.com.:443", "default", "api.example.com"),
        ("reviews.:9080", "default", "reviews.default.svc.cluster.local"),
        # Wildcards and addresses are kept.
        ("*", "default", "*"),
        ("*.example.com", "default", "*.example.com"),
        ("10.0.0.7", "default", "10.0.0.7"),
        ("10.0.0.7:8080", "default", "10.0.0.7"),
        ("[::1]:8080", "default", "[::1]"),
        ("::1", "default", "::1"),
    ],
)
def test_normalize_host(host: str, namespace: str, expected: str) -> None:
    assert normalize_host(host, namespace) == expected


def test_normalize_host_other_cluster_domain() -> None:
    assert normalize_host("reviews", "prod", "corp.internal") == "reviews.prod.svc.corp.internal"
    assert normalize_host("reviews.prod", "prod", "corp.internal") == "reviews.prod"


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        # What a client sends: Kubernetes DNS search rules find the service.
        ("reviews", "default", ("reviews.default.svc.cluster.local", "reviews")),
        ("reviews:9080", "prod", ("reviews.prod.svc.cluster.local", "reviews")),
        ("reviews.prod", "default", ("reviews.prod", "reviews.prod.svc.cluster.local")),
        ("reviews.prod.svc", "default", ("reviews.prod.svc", "reviews.prod.svc.cluster.local")),
        ("reviews.prod.svc.cluster.local", "default", ("reviews.prod.svc.cluster.local",)),
        ("REVIEWS.PROD.SVC.CLUSTER.LOCAL.", "default", ("reviews.prod.svc.cluster.local",)),
        ("api.example.com", "default", ("api.example.com",)),
        ("api.example.com:443", "default", ("api.example.com",)),
        ("reviews.:9080", "default", ("reviews.default.svc.cluster.local", "reviews")),
    ],
)
def test_host_candidates(host: str, namespace: str, expected: tuple[str, ...]) -> None:
    assert host_candidates(host, namespace) == expected


@pytest.mark.parametrize(("host", "namespace"), [("reviews", "default"), ("reviews.default", "prod")])
def test_short_and_fqdn_names_reach_the_same_service(host: str, namespace: str) -> None:
    written = normalize_host("reviews", "default")
    assert written in host_candidates(host, namespace)
    assert written in host_candidates(written, "anything")


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*", "reviews.default.svc.cluster.local", True),
        ("*", "api.example.com", True),
        ("reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local", True),
        ("reviews.default.svc.cluster.local", "reviews.prod.svc.cluster.local", False),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "api.example.org", False),
        ("*.default.svc.cluster.local", "reviews.default.svc.cluster.local", True),
        ("*.default.svc.cluster.local", "reviews.prod.svc.cluster.local", False),
        ("api.example.com", "*.example.com", False),
    ],
)
def test_host_matches(pattern: str, host: str, expected: bool) -> None:
    assert host_matches(pattern, host) is expected


@pytest.mark.parametrize(
    ("fqdn", "expected"),
    [
        ("reviews.default.svc.cluster.local", "reviews"),
        ("reviews.prod.svc.cluster.local", "reviews"),
        ("reviews.prod", "reviews.prod"),
        ("api.example.com", "api.example.com"),
        ("reviews", "reviews"),
        ("reviews.default.svc.other.domain", "reviews.default.svc.other.domain"),
    ],
)
def test_short_name(fqdn: str, expected: str) -> None:
    assert short_name(fqdn) == expected


def test_short_name_other_cluster_domain() -> None:
    assert short_name("reviews.prod.svc.corp.internal", "corp.internal") == "reviews"
    assert short_name("reviews.prod.svc.cluster.local", "corp.internal") == "reviews.prod.svc.cluster.local"
    assert CLUSTER_DOMAIN == "cluster.local"


@pytest.mark.parametrize("name", ["reviews", "ratings", "details"])
def test_short_name_inverts_normalize(name: str) -> None:
    assert short_name(normalize_host(name, "bookinfo")) == name
