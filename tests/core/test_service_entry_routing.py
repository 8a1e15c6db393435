"""ServiceEntry in the pure core: which host a request names, and where its cluster leads."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshlib.core.cluster_state import Clusters
from meshlib.core.hosts import host_matches
from meshlib.core.routing_table import RoutingTable, Target
from meshlib.core.snapshot import compile_snapshot
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration
from tests.core.test_snapshot import res

HTTP = {"number": 80, "name": "http", "protocol": "HTTP"}


def se(name: str, ns: str = "default", **spec: Any) -> Any:
    spec.setdefault("ports", [HTTP])
    return res("ServiceEntry", name, spec, ns)


def dr(name: str, host: str, **traffic: Any) -> Any:
    spec: dict[str, Any] = {"host": host, "trafficPolicy": traffic}
    if "subsets" in traffic:
        spec["subsets"] = traffic.pop("subsets")
    return res("DestinationRule", name, spec)


def table(*resources: Any, workloads: Any = (), ns: str = "default", **options: Any) -> RoutingTable:
    return RoutingTable.build(compile_snapshot(1, resources, workloads), ns, {"app": "frontend"}, **options)


def cluster_of(plane: RoutingTable, host: str, port: int | None = 80, original: str | None = None) -> Any:
    return plane.cluster(Target(host, None, None, 100), port, original)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*foo.com", "barfoo.com", True),  # Istio's partial wildcard
        ("*foo.com", "foo.com", False),  # the wildcard stands for at least one character
        ("*", "anything", True),
    ],
)
def test_host_matches(pattern: str, host: str, expected: bool) -> None:
    assert host_matches(pattern, host) is expected


# --- which service a request names ------------------------------------------------------


def test_the_most_specific_wildcard_entry_wins_and_only_on_its_ports() -> None:
    snap = compile_snapshot(
        1,
        [
            se("wide", hosts=["*.example.com"], resolution="NONE", ports=[{"number": 8080, "name": "http"}]),
            se("eu", hosts=["*.eu.example.com"], resolution="NONE"),
        ],
    )
    assert snap.resolve_host("shop.eu.example.com", "default", 80) == "shop.eu.example.com"
    assert snap.service_entry("shop.eu.example.com").name == "eu"
    assert snap.service_entry("shop.example.com").name == "wide"
    assert snap.resolve_host("shop.example.com", "default", 8080) == "shop.example.com"
    assert snap.resolve_host("shop.example.com", "default", 80) is None, "not a port the entry declares"
    assert snap.resolve_host("example.com", "default", 8080) is None


def test_addresses_vip_before_cidr_longest_prefix_first_exact_host_first() -> None:
    snap = compile_snapshot(
        1,
        [
            se("net", hosts=["net.internal"], resolution="NONE", addresses=["10.0.0.0/8"]),
            se("sub", hosts=["sub.internal"], resolution="NONE", addresses=["10.1.0.0/16"]),
            se(
                "vip",
                hosts=["vip.internal"],
                resolution="STATIC",
                addresses=["10.1.2.3"],
                endpoints=[{"address": "192.0.2.1"}],
            ),
            se("literal", hosts=["10.1.2.4"], resolution="STATIC", endpoints=[{"address": "192.0.2.2"}]),
        ],
    )
    assert snap.resolve_host("10.1.2.3", "default", 80) == "vip.internal"
    assert snap.resolve_host("10.1.9.9", "default", 80) == "sub.internal"
    assert snap.resolve_host("10.9.9.9", "default", 80) == "net.internal"
    assert snap.resolve_host("10.1.2.4", "default", 80) == "10.1.2.4", "a host named exactly comes first"
    assert snap.resolve_host("10.9.9.9", "default", 5432) is None
    assert snap.resolve_host("11.0.0.1", "default", 80) is None


@pytest.mark.parametrize(
    ("export_to", "visible_in"),
    [
        ([], {"default", "prod", "other"}),
        (["*"], {"default", "prod", "other"}),
        (["."], {"default"}),
        (["prod"], {"prod"}),
        ([".", "prod"], {"default", "prod"}),
        (["~"], set()),
    ],
)
def test_export_to_decides_which_namespaces_see_the_entry(export_to: list[str], visible_in: set[str]) -> None:
    entry = se(
        "api",
        hosts=["api.example.com"],
        resolution="STATIC",
        exportTo=export_to,
        endpoints=[{"address": "192.0.2.1"}],
    )
    snap = compile_snapshot(1, [entry])
    for ns in ("default", "prod", "other"):
        assert (snap.resolve_host("api.example.com", ns, 80) is not None) is (ns in visible_in), ns
        plane = RoutingTable.build(snap, ns, {})
        assert bool(cluster_of(plane, "api.example.com").endpoints) is (ns in visible_in), ns


# --- resolution NONE: one cluster per original destination --------------------------------


def test_resolution_none_sends_to_the_original_destination_per_requested_host() -> None:
    plane = table(
        se(
            "wild",
            hosts=["*.example.com"],
            resolution="NONE",
            ports=[HTTP, {"number": 8443, "name": "https", "protocol": "TLS"}],
        ),
        dr("wild", "*.example.com", loadBalancer={"simple": "RANDOM"}),
    )
    template = cluster_of(plane, "*.example.com")
    assert template.passthrough
    assert template.endpoints == ()
    a = cluster_of(plane, "a.example.com", 80, "a.example.com")
    (endpoint,) = a.endpoints
    assert (a.host, endpoint.address, endpoint.port, endpoint.protocol) == (
        "a.example.com",
        "a.example.com",
        80,
        "http",
    )
    assert a.policy.load_balancer.simple == "RANDOM", "the wildcard DestinationRule applies"
    # The route's destination may be the pattern itself: the request's own host is the destination.
    b = cluster_of(plane, "*.example.com", 80, "b.example.com")
    assert b.endpoints[0].key == ("b.example.com", 80)
    assert a.key != b.key, "outlier detection and counters are kept per original address"
    assert cluster_of(plane, "a.example.com", 8443, "a.example.com").endpoints[0].protocol == "https"
    assert cluster_of(plane, "a.example.com", 9999, "a.example.com").endpoints == (), "an undeclared port"
    assert cluster_of(plane, "a.example.com", 80, "a.example.com") is a, "built once"


def test_resolution_none_for_grpc_needs_a_grpc_port() -> None:
    entry = se(
        "wild",
        hosts=["*.example.com"],
        resolution="NONE",
        ports=[{"number": 50051, "name": "grpc", "protocol": "GRPC"}],
    )
    http = table(entry)
    grpc = table(entry, family="grpc")
    assert cluster_of(http, "a.example.com", 50051, "a.example.com").endpoints == ()
    assert cluster_of(grpc, "a.example.com", 50051, "a.example.com").endpoints[0].protocol == "grpc"


# --- DNS and DNS_ROUND_ROBIN -----------------------------------------------------------


def test_dns_endpoints_expand_to_every_address_and_dns_round_robin_keeps_the_name() -> None:
    strict = se(
        "strict",
        hosts=["strict.example.com"],
        resolution="DNS",
        endpoints=[{"address": "pool.example.com", "weight": 2}],
    )
    logical = se(
        "logical",
        hosts=["logical.example.com"],
        resolution="DNS_ROUND_ROBIN",
        endpoints=[{"address": "pool.example.com"}],
    )
    bare = se("bare", hosts=["bare.example.com"], resolution="DNS")
    snap = compile_snapshot(1, [strict, logical, bare])
    assert snap.dns_names == {"pool.example.com", "bare.example.com"}, "LOGICAL_DNS names are not expanded"
    before = RoutingTable.build(snap, "default", {})
    assert [e.address for e in cluster_of(before, "strict.example.com").endpoints] == ["pool.example.com"]
    resolved = {"pool.example.com": ("192.0.2.1", "192.0.2.2"), "bare.example.com": ()}
    after = RoutingTable.build(snap, "default", {}, resolved=resolved, generation=3)
    expanded = cluster_of(after, "strict.example.com")
    assert [(e.address, e.weight) for e in expanded.endpoints] == [("192.0.2.1", 2), ("192.0.2.2", 2)]
    assert expanded.generation == 3
    assert [e.address for e in cluster_of(after, "logical.example.com").endpoints] == ["pool.example.com"]
    assert cluster_of(after, "bare.example.com").endpoints == (), "a name that does not exist: no endpoints"


def test_new_dns_answers_reach_outlier_detection_within_one_snapshot() -> None:
    strict = se(
        "strict", hosts=["strict.example.com"], resolution="DNS", endpoints=[{"address": "pool.example.com"}]
    )
    rule = dr("strict", "strict.example.com", outlierDetection={"consecutive5xxErrors": 1})
    snap = compile_snapshot(1, [strict, rule])
    clusters = Clusters(lambda: 0.0, random.Random(1))
    old = cluster_of(
        RoutingTable.build(snap, "default", {}, resolved={"pool.example.com": ("192.0.2.1",)}, generation=1),
        "strict.example.com",
    )
    new = cluster_of(
        RoutingTable.build(snap, "default", {}, resolved={"pool.example.com": ("192.0.2.9",)}, generation=2),
        "strict.example.com",
    )
    state = clusters.get(old, 1)
    assert clusters.get(new, 1) is state
    assert state.cluster is new, "the newer answers win within the same snapshot version"
    clusters.get(old, 1)  # a request still on the older table changes nothing back
    assert state.cluster is new
    assert state.outlier is not None
    assert state.outlier.healthy(new.endpoints, lambda e: e.key) == new.endpoints


# --- workloadSelector and identities -----------------------------------------------------


def registration(
    wid: str, service: str, address: str, port: int, ns: str = "default", **labels: str
) -> WorkloadRegistration:
    return WorkloadRegistration(
        id=wid,
        service=service,
        namespace=ns,
        labels=labels,
        endpoints=[AnnouncedEndpoint(address=address, port=port, tls=True)],
    )


@pytest.mark.parametrize(("location", "tls"), [("MESH_INTERNAL", True), ("MESH_EXTERNAL", False)])
def test_a_workload_selector_takes_each_port_from_its_target_port(location: str, tls: bool) -> None:
    entry = se(
        "details",
        hosts=["details.bookinfo.com"],
        resolution="STATIC",
        location=location,
        ports=[{"number": 80, "name": "http", "targetPort": 9080}],
        workloadSelector={"labels": {"app": "details-vm"}},
    )
    workloads = [
        registration("vm-1", "details-vm", "10.0.0.1", 9080),
        registration("vm-2", "details-vm", "10.0.0.2", 7000),  # not on the target port
        registration("vm-3", "details-vm", "10.0.0.3", 9080, ns="other"),  # not the entry's namespace
        registration("web", "web", "10.0.0.4", 9080),  # labels do not match
    ]
    snap = compile_snapshot(1, [entry], workloads)
    (endpoint,) = snap.endpoints("details.bookinfo.com")
    assert (endpoint.address, endpoint.port, endpoint.service_port, endpoint.source) == (
        "10.0.0.1",
        9080,
        80,
        "vm-1",
    )
    assert endpoint.identity == "spiffe://cluster.local/ns/default/sa/details-vm"
    assert endpoint.tls is tls, "MESH_EXTERNAL: no automatic mesh mTLS, as in Istio"
    assert snap.endpoints("details-vm.default.svc.cluster.local")[0].address == "10.0.0.1", (
        "its own service too"
    )


def test_endpoint_identity_from_service_account_or_subject_alt_name() -> None:
    internal = se(
        "db",
        hosts=["db.example.com"],
        resolution="STATIC",
        location="MESH_INTERNAL",
        endpoints=[
            {
                "address": "192.0.2.1",
                "serviceAccount": "db",
                "labels": {"security.istio.io/tlsMode": "istio"},
            },
            {"address": "192.0.2.2", "serviceAccount": "db"},
        ],
    )
    pinned = se(
        "api",
        hosts=["api.example.com"],
        resolution="STATIC",
        endpoints=[{"address": "192.0.2.3"}],
        subjectAltNames=["spiffe://corp/ns/api/sa/api"],
    )
    snap = compile_snapshot(1, [internal, pinned], trust_domain="corp")
    first, second = snap.endpoints("db.example.com")
    assert (first.identity, first.tls) == ("spiffe://corp/ns/default/sa/db", True)
    assert (second.identity, second.tls) == ("spiffe://corp/ns/default/sa/db", False), (
        "no tlsMode label: no auto mTLS"
    )
    (api,) = snap.endpoints("api.example.com")
    assert (api.identity, api.tls) == ("spiffe://corp/ns/api/sa/api", False), "MESH_EXTERNAL (the default)"


def test_a_wildcard_destination_rule_covers_the_hosts_it_matches() -> None:
    entry = se(
        "eu",
        hosts=["*.eu.example.com"],
        resolution="STATIC",
        endpoints=[
            {"address": "192.0.2.1", "labels": {"v": "1"}},
            {"address": "192.0.2.2", "labels": {"v": "2"}},
        ],
    )
    rule = dr(
        "eu",
        "*.eu.example.com",
        loadBalancer={"simple": "ROUND_ROBIN"},
        subsets=[{"name": "one", "labels": {"v": "1"}}],
    )
    snap = compile_snapshot(1, [entry, rule])
    assert snap.traffic_policy("shop.eu.example.com").load_balancer.simple == "ROUND_ROBIN"
    assert [e.address for e in snap.endpoints("shop.eu.example.com", "one")] == ["192.0.2.1"]
    assert snap.traffic_policy("shop.us.example.com") is None
