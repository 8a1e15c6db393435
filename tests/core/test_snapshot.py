"""The compiled snapshot: pure to build, indexed for lookups, read-only afterwards."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from meshlib.core.snapshot import ROOT_NAMESPACE, Endpoint, Snapshot, compile_snapshot
from meshlib.policy import Resource, load_paths, parse_resource
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy"
REVIEWS = "reviews.default.svc.cluster.local"
PAYMENTS = "payments.internal.example.com"

_API = {
    "VirtualService": "networking.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1",
    "ServiceEntry": "networking.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "AuthorizationPolicy": "security.istio.io/v1",
    "RequestAuthentication": "security.istio.io/v1",
}


def res(kind: str, name: str, spec: dict[str, Any], ns: str = "default", created: str | None = None) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created is not None:
        meta["creationTimestamp"] = created
    resource, problems = parse_resource(
        {"apiVersion": _API[kind], "kind": kind, "metadata": meta, "spec": spec}
    )
    assert problems == [], problems
    return resource


def vs(name: str, *hosts: str, ns: str = "default", created: str | None = None, to: str = "reviews") -> Any:
    spec = {"hosts": list(hosts), "http": [{"route": [{"destination": {"host": to}}]}]}
    return res("VirtualService", name, spec, ns, created)


def workload(
    wid: str, service: str, address: str, ns: str = "default", **labels: str
) -> WorkloadRegistration:
    return WorkloadRegistration(
        id=wid,
        service=service,
        namespace=ns,
        labels=labels,
        endpoints=[AnnouncedEndpoint(address=address, port=9080)],
    )


@pytest.fixture(scope="module")
def examples() -> list[Resource]:
    return [item.resource for item in load_paths([EXAMPLES])]


@pytest.fixture(scope="module")
def bookinfo(examples: list[Resource]) -> Snapshot:
    workloads = [
        workload("reviews-v1-a", "reviews", "10.1.0.1", version="v1"),
        workload("reviews-v2-a", "reviews", "10.1.0.2", version="v2"),
        workload("reviews-v3-a", "reviews", "10.1.0.3", version="v3"),
        workload("reviews-v3-b", "reviews", "10.1.0.4", version="v3"),
    ]
    return compile_snapshot(7, examples, workloads)


# --- purity --------------------------------------------------------------------------


def test_compile_is_pure_and_repeatable(examples: list[Resource]) -> None:
    before = [r.manifest() for r in examples]
    resources = list(examples)
    first = compile_snapshot(3, resources, trust_domain="corp.example")
    second = compile_snapshot(3, resources, trust_domain="corp.example")
    assert first == second
    assert first is not second
    assert resources == examples
    assert [r.manifest() for r in examples] == before
    assert (first.version, first.trust_domain) == (3, "corp.example")
    assert first.resources == tuple(examples)


def test_snapshot_does_not_follow_changes_to_its_inputs(examples: list[Resource]) -> None:
    resources = list(examples)
    workloads = [workload("reviews-v1-a", "reviews", "10.1.0.1", version="v1")]
    snap = compile_snapshot(1, resources, workloads)
    resources.clear()
    workloads.clear()
    assert snap.virtual_service(REVIEWS) is not None
    assert len(snap.endpoints(REVIEWS)) == 1
    assert len(snap.resources) == len(examples)


def test_empty_snapshot() -> None:
    empty = Snapshot.empty()
    assert empty.version == 0
    assert empty.resolve_host("reviews", "default") is None
    assert empty.virtual_service(REVIEWS) is None
    assert empty.traffic_policy(REVIEWS) is None
    assert empty.endpoints(REVIEWS) == ()
    assert empty.security_for("default", {"app": "reviews"}).mtls_mode == "PERMISSIVE"


# --- hosts -> VirtualService ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        ("reviews", "default", REVIEWS),
        ("reviews:9080", "default", REVIEWS),
        ("REVIEWS", "default", REVIEWS),
        ("reviews.default", "prod", REVIEWS),
        ("reviews.default.svc", "prod", REVIEWS),
        (REVIEWS, "prod", REVIEWS),
        ("reviews", "prod", None),  # a short name means the caller's own namespace
        ("ratings", "default", "ratings.default.svc.cluster.local"),  # VS written as an FQDN
        ("payments.internal.example.com", "default", PAYMENTS),  # only a ServiceEntry
        ("httpbin.org:443", "default", "httpbin.org"),
        ("details", "default", None),
        ("example.org", "default", None),
    ],
)
def test_resolve_host(bookinfo: Snapshot, host: str, namespace: str, expected: str | None) -> None:
    assert bookinfo.resolve_host(host, namespace) == expected


def test_short_and_fqdn_hosts_find_the_same_virtual_service(bookinfo: Snapshot) -> None:
    found = bookinfo.virtual_service(bookinfo.resolve_host("reviews", "default"))
    assert found is not None
    assert found.name == "reviews"
    assert bookinfo.virtual_service(bookinfo.resolve_host(REVIEWS, "istio-system")) is found
    ratings = bookinfo.virtual_service(bookinfo.resolve_host("ratings", "default"))
    assert ratings is not None
    assert ratings.name == "ratings"


def test_host_known_only_from_registry_or_destination_rule() -> None:
    snap = compile_snapshot(
        1,
        [res("DestinationRule", "details", {"host": "details"}, ns="shop")],
        [workload("orders-1", "orders", "10.2.0.1", ns="shop")],
    )
    assert snap.resolve_host("orders", "shop") == "orders.shop.svc.cluster.local"
    assert snap.resolve_host("details.shop", "default") == "details.shop.svc.cluster.local"
    assert snap.virtual_service("orders.shop.svc.cluster.local") is None


def test_dotted_names_in_resources_are_literal() -> None:
    snap = compile_snapshot(1, [vs("odd", "reviews.default")])
    assert list(snap.virtual_services) == ["reviews.default"]
    assert snap.resolve_host("reviews", "default") is None
    assert snap.resolve_host("reviews.default", "prod") == "reviews.default"


def test_wildcard_virtual_service() -> None:
    wide = vs("wide", "*.example.com", to="edge.example.com")
    narrow = vs("narrow", "*.eu.example.com", to="eu-edge.example.com")
    exact = vs("exact", "api.example.com", to="api.example.com")
    snap = compile_snapshot(1, [wide, narrow, exact])
    assert snap.resolve_host("shop.example.com", "default") == "shop.example.com"
    assert snap.virtual_service("shop.example.com") is wide
    assert snap.virtual_service("a.b.example.com") is wide
    assert snap.virtual_service("shop.eu.example.com") is narrow
    assert snap.virtual_service("api.example.com") is exact
    assert snap.virtual_service("example.com") is None
    assert snap.resolve_host("example.org", "default") is None


def test_catch_all_virtual_service() -> None:
    everything = vs("everything", "*", to="egress.example.com")
    snap = compile_snapshot(1, [everything])
    assert snap.virtual_service("anything.example.org") is everything
    assert snap.resolve_host("anything.example.org", "default") == "anything.example.org"


@pytest.mark.parametrize("newest_first", [True, False])
def test_oldest_virtual_service_wins_a_host(newest_first: bool) -> None:
    old = vs("old", "reviews", created="2024-03-01T10:00:00Z")
    new = vs("new", "reviews.default.svc.cluster.local", created="2024-03-02T09:00:00Z")
    snap = compile_snapshot(1, [new, old] if newest_first else [old, new])
    assert snap.virtual_service(REVIEWS) is old


def test_without_timestamps_the_name_decides_as_in_istio() -> None:
    # Istio orders conflicting resources by creation time, then name, then namespace.
    alpha, beta = vs("alpha", "reviews"), vs("beta", "reviews")
    assert compile_snapshot(1, [alpha, beta]).virtual_service(REVIEWS) is alpha
    assert compile_snapshot(1, [beta, alpha]).virtual_service(REVIEWS) is alpha


def test_oldest_destination_rule_wins_a_host() -> None:
    old = res(
        "DestinationRule",
        "old",
        {"host": "reviews", "subsets": [{"name": "v1"}]},
        created="2024-01-01T00:00:00Z",
    )
    new = res(
        "DestinationRule",
        "new",
        {"host": REVIEWS, "subsets": [{"name": "v9"}]},
        created="2024-06-01T00:00:00Z",
    )
    snap = compile_snapshot(1, [new, old])
    assert snap.destination_rule(REVIEWS) is old
    assert snap.subset(REVIEWS, "v1") is not None
    assert snap.subset(REVIEWS, "v9") is None


def test_short_host_in_another_namespace_is_another_service() -> None:
    mine = vs("reviews", "reviews", ns="default")
    theirs = vs("reviews", "reviews", ns="prod")
    snap = compile_snapshot(1, [mine, theirs])
    assert snap.virtual_service(REVIEWS) is mine
    assert snap.virtual_service("reviews.prod.svc.cluster.local") is theirs


# --- DestinationRule: traffic policy -------------------------------------------------


def test_traffic_policy_without_subset_is_the_rule_level_policy(bookinfo: Snapshot) -> None:
    policy = bookinfo.traffic_policy(REVIEWS)
    assert policy == bookinfo.destination_rule(REVIEWS).spec.traffic_policy
    assert bookinfo.traffic_policy(REVIEWS, "v1") == policy  # v1 sets no policy of its own
    assert bookinfo.traffic_policy(REVIEWS, "no-such-subset") == policy
    assert bookinfo.traffic_policy("details.default.svc.cluster.local") is None


def test_subset_policy_replaces_each_top_level_field_it_sets(bookinfo: Snapshot) -> None:
    policy = bookinfo.traffic_policy(REVIEWS, "v3")
    # Set by the subset: replaced whole, nothing inherited inside them.
    assert policy.load_balancer.simple is None
    assert policy.load_balancer.consistent_hash.http_header_name == "x-user-id"
    assert policy.outlier_detection.consecutive_5xx_errors == 2
    assert policy.outlier_detection.base_ejection_time == 90.0
    assert policy.outlier_detection.max_ejection_percent is None
    # Not set by the subset: inherited from the rule.
    assert policy.connection_pool.tcp.max_connections == 100
    assert policy.tls.mode == "ISTIO_MUTUAL"
    assert policy.retry_budget.percent == 20.0


def test_port_level_settings_replace_the_fields_they_set(bookinfo: Snapshot) -> None:
    policy = bookinfo.traffic_policy(REVIEWS, port=9080)
    assert policy.connection_pool.http.http2_max_requests == 500
    assert policy.connection_pool.tcp is None  # connectionPool replaced whole
    assert bookinfo.traffic_policy(REVIEWS, port=9081) == bookinfo.traffic_policy(REVIEWS)


def _layered_rule() -> Any:
    return res(
        "DestinationRule",
        "reviews",
        {
            "host": "reviews",
            "trafficPolicy": {
                "loadBalancer": {"simple": "LEAST_REQUEST"},
                "outlierDetection": {"consecutive5xxErrors": 7},
                "tls": {"mode": "ISTIO_MUTUAL"},
                "portLevelSettings": [
                    {"port": {"number": 9080}, "loadBalancer": {"simple": "ROUND_ROBIN"}},
                ],
            },
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                },
                {
                    "name": "v3",
                    "labels": {"version": "v3"},
                    "trafficPolicy": {
                        "connectionPool": {"tcp": {"maxConnections": 5}},
                        "portLevelSettings": [
                            {"port": {"number": 9080}, "connectionPool": {"tcp": {"maxConnections": 1}}},
                        ],
                    },
                },
            ],
        },
    )


def test_subset_port_level_settings_apply_on_their_port() -> None:
    snap = compile_snapshot(1, [_layered_rule()])
    assert snap.traffic_policy(REVIEWS, "v3", port=9080).connection_pool.tcp.max_connections == 1
    assert snap.traffic_policy(REVIEWS, "v3", port=9443).connection_pool.tcp.max_connections == 5
    assert snap.traffic_policy(REVIEWS, "v1", port=9080).load_balancer.simple == "ROUND_ROBIN"
    assert snap.traffic_policy(REVIEWS, "v1", port=9443).load_balancer.simple == "LEAST_REQUEST"


# Istio (DestinationRule reference, TrafficPolicy.portLevelSettings): "Traffic settings specified at
# the destination-level will not be inherited when overridden by port-level settings, i.e. default
# values will be applied to fields omitted in port-level traffic policies."
def test_port_level_settings_do_not_inherit_rule_level_fields() -> None:
    policy = compile_snapshot(1, [_layered_rule()]).traffic_policy(REVIEWS, port=9080)
    assert policy.load_balancer.simple == "ROUND_ROBIN"
    assert policy.outlier_detection is None
    assert policy.tls is None


# Istio (pilot MergeSubsetTrafficPolicy): the rule's port-level policy is resolved first, then the
# subset's settings override it, so a subset's load balancer beats the rule's per-port one.
def test_subset_setting_overrides_rule_port_level_setting() -> None:
    policy = compile_snapshot(1, [_layered_rule()]).traffic_policy(REVIEWS, "v2", port=9080)
    assert policy.load_balancer.simple == "RANDOM"


# --- endpoints -----------------------------------------------------------------------


def test_service_entry_endpoints_per_port_with_labels_and_port_overrides(bookinfo: Snapshot) -> None:
    found = bookinfo.endpoints(PAYMENTS)
    assert [(e.address, e.port, e.protocol, e.weight) for e in found] == [
        ("10.0.12.4", 8080, "http", 1),
        ("10.0.12.4", 9090, "grpc", 1),
        ("10.0.12.5", 8443, "http", 2),  # endpoint.ports["http"] overrides the service port
        ("10.0.12.5", 9090, "grpc", 2),
    ]
    assert dict(found[0].labels) == {"version": "v1", "zone": "eu-west-1a"}
    assert dict(found[2].labels) == {"version": "v2", "zone": "eu-west-1b"}
    assert {e.source for e in found} == {"ServiceEntry default/payments-vms"}
    assert {e.identity for e in found} == {None}
    assert all(e.host == PAYMENTS for e in found)


def test_service_entry_target_port_and_every_host() -> None:
    entry = res(
        "ServiceEntry",
        "legacy",
        {
            "hosts": ["legacy.example.com", "legacy-alias.example.com"],
            "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "targetPort": 8080}],
            "endpoints": [{"address": "192.0.2.10"}],
        },
    )
    snap = compile_snapshot(1, [entry])
    for host in ("legacy.example.com", "legacy-alias.example.com"):
        assert [(e.host, e.address, e.port) for e in snap.endpoints(host)] == [(host, "192.0.2.10", 8080)]
        assert snap.service_entries[host] is entry


def test_dns_service_entry_without_endpoints_resolves_the_host(bookinfo: Snapshot) -> None:
    [endpoint] = bookinfo.endpoints("httpbin.org")
    assert (endpoint.address, endpoint.port, endpoint.protocol) == ("httpbin.org", 443, "https")


def test_service_entry_endpoints_filtered_by_subset() -> None:
    examples = load_paths([EXAMPLES / "external-services.yaml"])
    rule = res(
        "DestinationRule",
        "payments",
        {
            "host": PAYMENTS,
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "b", "labels": {"zone": "eu-west-1b"}},
            ],
        },
    )
    snap = compile_snapshot(1, [*(i.resource for i in examples), rule])
    assert {e.address for e in snap.endpoints(PAYMENTS, "v1")} == {"10.0.12.4"}
    assert {e.address for e in snap.endpoints(PAYMENTS, "b")} == {"10.0.12.5"}
    assert snap.endpoints(PAYMENTS, "v7") == ()


def test_registry_endpoints(bookinfo: Snapshot) -> None:
    found = bookinfo.endpoints(REVIEWS)
    assert [(e.address, e.port, e.source) for e in found] == [
        ("10.1.0.1", 9080, "reviews-v1-a"),
        ("10.1.0.2", 9080, "reviews-v2-a"),
        ("10.1.0.3", 9080, "reviews-v3-a"),
        ("10.1.0.4", 9080, "reviews-v3-b"),
    ]
    assert dict(found[0].labels) == {"app": "reviews", "version": "v1"}
    assert found[0].identity == "spiffe://cluster.local/ns/default/sa/reviews"
    assert (found[0].protocol, found[0].ready, found[0].host) == ("http", True, REVIEWS)


@pytest.mark.parametrize(
    ("subset", "addresses"),
    [
        (None, {"10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"}),
        ("v1", {"10.1.0.1"}),
        ("v3", {"10.1.0.3", "10.1.0.4"}),
    ],
)
def test_registry_endpoints_filtered_by_subset(
    bookinfo: Snapshot, subset: str | None, addresses: set[str]
) -> None:
    assert {e.address for e in bookinfo.endpoints(REVIEWS, subset)} == addresses


def test_registry_endpoint_details() -> None:
    registration = WorkloadRegistration(
        id="orders-1",
        service="orders",
        namespace="shop",
        labels={"app": "orders-api", "version": "v2"},
        endpoints=[
            AnnouncedEndpoint(address="10.3.0.1", port=8080),
            AnnouncedEndpoint(address="10.3.0.1", port=50051, protocol="grpc", ready=False),
        ],
    )
    snap = compile_snapshot(1, [], [registration], trust_domain="corp.example")
    found = snap.endpoints("orders.shop.svc.cluster.local")
    assert [(e.port, e.protocol, e.ready) for e in found] == [(8080, "http", True), (50051, "grpc", False)]
    assert dict(found[0].labels) == {"app": "orders-api", "version": "v2"}  # own `app` label kept
    assert found[0].identity == "spiffe://corp.example/ns/shop/sa/orders"
    assert snap.endpoints("orders.default.svc.cluster.local") == ()


def test_the_registry_cannot_add_endpoints_to_a_service_entry_host() -> None:
    """A ServiceEntry declares its host's endpoints: a registration for the same name is not
    one of them (else anyone who may register could take the declared service's traffic)."""
    entry = res(
        "ServiceEntry",
        "reviews-vm",
        {
            "hosts": ["reviews"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 9080, "name": "http"}],
            "endpoints": [{"address": "192.0.2.1", "labels": {"version": "v1"}}],
        },
    )
    snap = compile_snapshot(1, [entry], [workload("reviews-v1-a", "reviews", "10.1.0.1", version="v1")])
    assert {(e.address, e.source) for e in snap.endpoints(REVIEWS, None)} == {
        ("192.0.2.1", "ServiceEntry default/reviews-vm"),
    }


def test_a_service_entry_workload_selector_takes_the_registered_workloads_it_selects() -> None:
    entry = res(
        "ServiceEntry",
        "reviews",
        {
            "hosts": ["reviews"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 9080, "name": "http"}],
            "workloadSelector": {"labels": {"version": "v1"}},
        },
    )
    registry = [
        workload("reviews-v1-a", "reviews", "10.1.0.1", version="v1"),
        workload("reviews-v2-a", "reviews", "10.1.0.2", version="v2"),
    ]
    snap = compile_snapshot(1, [entry], registry)
    assert {(e.address, e.source) for e in snap.endpoints(REVIEWS, None)} == {("10.1.0.1", "reviews-v1-a")}


def test_endpoint_matches() -> None:
    endpoint = Endpoint(
        host=REVIEWS, address="10.1.0.1", port=9080, labels={"app": "reviews", "version": "v1"}
    )
    assert endpoint.matches({})
    assert endpoint.matches({"version": "v1"})
    assert not endpoint.matches({"version": "v2"})
    assert not endpoint.matches({"zone": "a"})


# --- security: PeerAuthentication ----------------------------------------------------


def pa(name: str, mode: str | None, ns: str = "default", created: str | None = None, **selector: str) -> Any:
    spec: dict[str, Any] = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return res("PeerAuthentication", name, spec, ns, created)


MESH_STRICT = pa("default", "STRICT", ns=ROOT_NAMESPACE)


@pytest.mark.parametrize(
    ("policies", "namespace", "labels", "mode"),
    [
        pytest.param([], "default", {"app": "reviews"}, "PERMISSIVE", id="no-policy-is-permissive"),
        pytest.param([MESH_STRICT], "default", {"app": "reviews"}, "STRICT", id="mesh-wide"),
        pytest.param([MESH_STRICT], "prod", {}, "STRICT", id="mesh-wide-other-namespace"),
        pytest.param(
            [MESH_STRICT, pa("legacy", "PERMISSIVE", ns="legacy")],
            "legacy",
            {},
            "PERMISSIVE",
            id="namespace-beats-mesh",
        ),
        pytest.param(
            [MESH_STRICT, pa("legacy", "PERMISSIVE", ns="legacy")],
            "default",
            {},
            "STRICT",
            id="namespace-is-local",
        ),
        pytest.param(
            [MESH_STRICT, pa("ns", "PERMISSIVE"), pa("ratings", "DISABLE", app="ratings")],
            "default",
            {"app": "ratings", "version": "v1"},
            "DISABLE",
            id="workload-beats-namespace",
        ),
        pytest.param(
            [MESH_STRICT, pa("ns", "PERMISSIVE"), pa("ratings", "DISABLE", app="ratings")],
            "default",
            {"app": "reviews"},
            "PERMISSIVE",
            id="selector-not-matching",
        ),
        pytest.param(
            [MESH_STRICT, pa("ratings", "DISABLE", app="ratings")],
            "prod",
            {"app": "ratings"},
            "STRICT",
            id="workload-policy-is-namespace-local",
        ),
        pytest.param(
            [MESH_STRICT, pa("root-selector", "DISABLE", ns=ROOT_NAMESPACE, app="ratings")],
            "default",
            {"app": "ratings"},
            "STRICT",
            id="root-namespace-selector-is-not-mesh-wide",
        ),
        pytest.param(
            [MESH_STRICT, pa("ns", "UNSET"), pa("ratings", None, app="ratings")],
            "default",
            {"app": "ratings"},
            "STRICT",
            id="unset-inherits-through-levels",
        ),
        pytest.param([pa("ns", "UNSET")], "default", {}, "PERMISSIVE", id="unset-without-parent"),
        pytest.param(
            [pa("ns", "DISABLE"), pa("w", "UNSET", app="x")],
            "default",
            {"app": "x"},
            "DISABLE",
            id="unset-workload",
        ),
        pytest.param(
            [
                pa("newer", "DISABLE", created="2024-02-01T00:00:00Z"),
                pa("older", "STRICT", created="2024-01-01T00:00:00Z"),
            ],
            "default",
            {},
            "STRICT",
            id="oldest-wins-at-one-level",
        ),
    ],
)
def test_peer_authentication_mode(
    policies: list[Any], namespace: str, labels: dict[str, str], mode: str
) -> None:
    security = compile_snapshot(1, policies).security_for(namespace, labels)
    assert security.mtls_mode == mode
    assert security.mode_for_port(8080) == mode


def test_port_level_mtls(bookinfo: Snapshot) -> None:
    security = bookinfo.security_for("default", {"app": "ratings", "version": "v1"})
    assert security.mtls_mode == "STRICT"  # UNSET on the workload, STRICT from the mesh
    assert dict(security.port_mtls) == {9090: "PERMISSIVE", 8081: "DISABLE"}
    assert security.mode_for_port(9090) == "PERMISSIVE"
    assert security.mode_for_port(8081) == "DISABLE"
    assert security.mode_for_port(9080) == "STRICT"
    assert security.mode_for_port(None) == "STRICT"
    assert dict(bookinfo.security_for("default", {"app": "reviews"}).port_mtls) == {}


def test_port_level_unset_inherits_the_workload_mode() -> None:
    policy = res(
        "PeerAuthentication",
        "w",
        {
            "selector": {"matchLabels": {"app": "x"}},
            "mtls": {"mode": "DISABLE"},
            "portLevelMtls": {8080: {"mode": "UNSET"}},
        },
    )
    security = compile_snapshot(1, [MESH_STRICT, policy]).security_for("default", {"app": "x"})
    assert security.mode_for_port(8080) == "DISABLE"


# --- security: AuthorizationPolicy and RequestAuthentication --------------------------


def authz(name: str, action: str, ns: str = "default", **selector: str) -> Any:
    spec: dict[str, Any] = {"action": action, "rules": [{}]}
    if action == "CUSTOM":
        spec["provider"] = {"name": "opa"}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return res("AuthorizationPolicy", name, spec, ns)


def test_authorization_policies_grouped_by_action() -> None:
    policies = [
        authz("allow-ns", "ALLOW"),
        authz("deny-reviews", "DENY", app="reviews"),
        authz("deny-ratings", "DENY", app="ratings"),
        authz("audit-mesh", "AUDIT", ns=ROOT_NAMESPACE),
        authz("deny-mesh-reviews", "DENY", ns=ROOT_NAMESPACE, app="reviews"),
        authz("custom", "CUSTOM"),
        authz("allow-prod", "ALLOW", ns="prod"),
    ]
    security = compile_snapshot(1, policies).security_for("default", {"app": "reviews", "version": "v2"})
    assert [p.name for p in security.allow] == ["allow-ns"]
    assert [p.name for p in security.deny] == ["deny-mesh-reviews", "deny-reviews"]  # by name
    assert [p.name for p in security.audit] == ["audit-mesh"]
    assert [p.name for p in security.custom] == ["custom"]
    other = compile_snapshot(1, policies).security_for("prod", {"app": "ratings"})
    assert [p.name for p in other.allow] == ["allow-prod"]
    assert [p.name for p in other.deny] == []
    assert [p.name for p in other.audit] == ["audit-mesh"]


def test_sample_authorization_policies(bookinfo: Snapshot) -> None:
    reviews = bookinfo.security_for("default", {"app": "reviews"})
    assert [p.name for p in reviews.allow] == ["reviews-viewer"]
    assert [p.name for p in reviews.deny] == ["deny-foreign-writes"]
    productpage = bookinfo.security_for("default", {"app": "productpage"})
    assert [p.name for p in productpage.allow] == []
    assert [p.name for p in productpage.deny] == ["deny-foreign-writes"]


def test_request_authentication_by_selector(bookinfo: Snapshot) -> None:
    mesh_wide = res(
        "RequestAuthentication",
        "mesh",
        {"jwtRules": [{"issuer": "https://mesh.example.com", "jwksUri": "https://mesh.example.com/jwks"}]},
        ROOT_NAMESPACE,
    )
    ns_rules = {"jwtRules": [{"issuer": "https://ns.example.com", "jwksUri": "https://ns.example.com/jwks"}]}
    ns_wide = res("RequestAuthentication", "ns", ns_rules, "prod")
    snap = compile_snapshot(2, [*bookinfo.resources, mesh_wide, ns_wide])

    def names(namespace: str, labels: dict[str, str]) -> list[str]:
        return [r.name for r in snap.security_for(namespace, labels).request_authentication]

    assert names("default", {"app": "productpage"}) == ["mesh", "productpage-jwt"]  # by name
    assert names("default", {"app": "reviews"}) == ["mesh"]
    assert names("prod", {"app": "productpage"}) == ["mesh", "ns"]


def test_security_is_resolved_once_per_workload_shape(bookinfo: Snapshot) -> None:
    first = bookinfo.security_for("default", {"app": "ratings", "version": "v1"})
    assert bookinfo.security_for("default", {"version": "v1", "app": "ratings"}) is first
    assert bookinfo.security_for("prod", {"app": "ratings", "version": "v1"}) is not first


# --- immutability --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["virtual_services", "destination_rules", "endpoints_by_host", "service_entries"]
)
def test_indexes_are_read_only(bookinfo: Snapshot, name: str) -> None:
    index = getattr(bookinfo, name)
    key = next(iter(index))
    with pytest.raises(TypeError):
        index[key] = None
    with pytest.raises(TypeError):
        del index[key]
    assert key in index


def test_snapshot_and_endpoints_are_frozen(bookinfo: Snapshot) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        bookinfo.version = 8  # type: ignore[misc]
    assert isinstance(bookinfo.resources, tuple)
    assert isinstance(bookinfo.endpoints_by_host[REVIEWS], tuple)
    endpoint = bookinfo.endpoints(REVIEWS)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        endpoint.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        endpoint.labels["version"] = "v9"  # type: ignore[index]
    security = bookinfo.security_for("default", {"app": "ratings"})
    with pytest.raises(TypeError):
        security.port_mtls[9090] = "STRICT"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        security.mtls_mode = "DISABLE"  # type: ignore[misc]
    assert bookinfo.version == 7
