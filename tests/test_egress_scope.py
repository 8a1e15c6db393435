"""Egress hosts: Istio's Sidecar egress.hosts form, parsed and matched against registry hosts."""

from __future__ import annotations

import re

import pytest

from meshlib import ConfigError, Mesh
from meshlib.egress_scope import MAX_EGRESS_HOSTS, EgressScope, canonical_hosts, parse_egress_host
from meshlib.settings import MeshSettings

SVC = "svc.cluster.local"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("./reviews", f"shop/reviews.shop.{SVC}"),
        ("default/ratings", f"default/ratings.default.{SVC}"),
        ("*/api.example.com", "*/api.example.com"),
        ("prod/*", "prod/*"),
        ("*/*", "*/*"),
        ("./*.example.com", "shop/*.example.com"),
        (" ./Reviews. ", f"shop/reviews.shop.{SVC}"),
    ],
)
def test_entries_are_made_canonical(text: str, canonical: str) -> None:
    assert parse_egress_host(text, "shop") == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reviews", "is not namespace/dnsName"),
        ("/reviews", "is not namespace/dnsName"),
        ("./", "is not namespace/dnsName"),
        ("~/*", "'~' (import nothing) is not supported"),
        ("Shop/x", "invalid namespace 'Shop'"),
        ("*/reviews", "with '*/' write the full name"),
        ("./a.*.com", "invalid dnsName 'a.*.com'"),
        ("./*b.com", "'*' may only stand alone or as the left-most label"),
        ("./re_v", "invalid dnsName 're_v'"),
    ],
)
def test_bad_entries_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_egress_host(text, "shop")


def test_settings_refuse_a_bad_entry_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="MESH_EGRESS_HOSTS: 'reviews' is not namespace/dnsName"):
        MeshSettings.from_env({"MESH_SERVICE": "frontend", "MESH_EGRESS_HOSTS": "./ratings,reviews"})
    with pytest.raises(ConfigError, match=f"at most {MAX_EGRESS_HOSTS}"):
        Mesh("frontend", egress_hosts=[f"./s{n}" for n in range(MAX_EGRESS_HOSTS + 1)])
    long = [f"*/{'a' * 60}.{'b' * 60}.{'c' * 60}.s{n}.example.com" for n in range(200)]
    with pytest.raises(ConfigError, match="bytes in each watch; at most 32768"):
        Mesh("frontend", egress_hosts=long)
    settings = MeshSettings.from_env(
        {
            "MESH_SERVICE": "frontend",
            "MESH_NAMESPACE": "shop",
            "MESH_EGRESS_HOSTS": "./ratings, ./ratings,*/*.x.io",
        }
    )
    assert settings.egress_hosts == (f"shop/ratings.shop.{SVC}", "*/*.x.io")


def test_a_scope_admits_the_hosts_it_names() -> None:
    scope = EgressScope(
        canonical_hosts(["./reviews", "prod/*", "*/*.example.com", "*/db.data.svc.cluster.local"], "shop")
    )
    admitted = [
        ("shop", f"reviews.shop.{SVC}"),
        ("prod", f"anything.prod.{SVC}"),
        ("shop", "api.example.com"),
        ("other", "deep.api.example.com"),
        ("data", f"db.data.{SVC}"),
    ]
    refused = [
        ("shop", f"ratings.shop.{SVC}"),
        ("other", f"reviews.other.{SVC}"),
        ("shop", "example.com"),
        ("data", f"cache.data.{SVC}"),
    ]
    for pair in admitted:
        assert scope.admits(frozenset({pair})), pair
    for pair in refused:
        assert not scope.admits(frozenset({pair})), pair
    assert scope.admits(frozenset(refused[:1] + admitted[:1])), "one host in scope is enough"
    assert EgressScope(["*/*"]).admits(frozenset(refused))
