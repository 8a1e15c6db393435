"""The policy models, checked against the sample YAML in examples/policy/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from meshlib.policy import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    RequestAuthentication,
    Resource,
    ResourceKey,
    ServiceEntry,
    VirtualService,
    load_paths,
    parse_resource,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy"


@pytest.fixture(scope="module")
def samples() -> dict[ResourceKey, Resource]:
    return {item.resource.key: item.resource for item in load_paths([EXAMPLES])}


def sample(samples: dict[ResourceKey, Resource], kind: type[Resource], name: str, ns: str = "default") -> Any:
    resource = samples[ResourceKey(kind.KIND, ns, name)]
    assert isinstance(resource, kind)
    return resource


def test_every_sample_file_loads(samples: dict[ResourceKey, Resource]) -> None:
    assert sorted(map(str, samples)) == [
        "AuthorizationPolicy default/deny-foreign-writes",
        "AuthorizationPolicy default/reviews-viewer",
        "DestinationRule default/ratings",
        "DestinationRule default/reviews",
        "PeerAuthentication default/ratings-ports",
        "PeerAuthentication istio-system/default",
        "RequestAuthentication default/productpage-jwt",
        "ServiceEntry default/httpbin-external",
        "ServiceEntry default/payments-vms",
        "VirtualService default/ratings",
        "VirtualService default/reviews",
    ]


# --- VirtualService ------------------------------------------------------------------


def test_virtual_service_header_rule(samples: dict[ResourceKey, Resource]) -> None:
    vs = sample(samples, VirtualService, "reviews")
    assert vs.spec.hosts == ("reviews",)
    first = vs.spec.http[0]
    assert first.name == "jason-sees-v2"
    user = first.match[0].headers["end-user"]
    assert (user.kind, user.exact) == ("exact", "jason")
    assert [(r.destination.host, r.destination.subset, r.weight) for r in first.route] == [
        ("reviews", "v2", 0)
    ]
    assert not first.is_catch_all()


def test_virtual_service_weighted_split_timeout_and_retries(samples: dict[ResourceKey, Resource]) -> None:
    canary = sample(samples, VirtualService, "reviews").spec.http[1]
    assert [(r.destination.subset, r.weight) for r in canary.route] == [("v1", 80), ("v3", 20)]
    assert canary.route[1].headers.response.set == {"x-canary": "true"}
    assert canary.timeout == 2.0
    assert canary.retries.attempts == 3
    assert canary.retries.per_try_timeout == pytest.approx(0.5)
    assert canary.retries.retry_on == "5xx,connect-failure,refused-stream"
    assert canary.is_catch_all()


def test_virtual_service_fault_injection(samples: dict[ResourceKey, Resource]) -> None:
    vs = sample(samples, VirtualService, "ratings")
    assert vs.spec.hosts == ("ratings.default.svc.cluster.local",)
    fault = vs.spec.http[0].fault
    assert fault.delay.fixed_delay == 7.0
    assert fault.delay.exponential_delay is None
    assert fault.delay.percentage.value == 100.0
    assert fault.abort.http_status == 503
    assert fault.abort.percentage.value == 10.0
    assert vs.spec.http[1].fault is None


# --- DestinationRule -----------------------------------------------------------------


def test_destination_rule_traffic_policy(samples: dict[ResourceKey, Resource]) -> None:
    dr = sample(samples, DestinationRule, "reviews")
    assert dr.spec.host == "reviews.default.svc.cluster.local"
    policy = dr.spec.traffic_policy
    assert policy.load_balancer.simple == "LEAST_REQUEST"
    assert policy.connection_pool.tcp.max_connections == 100
    assert policy.connection_pool.tcp.connect_timeout == pytest.approx(0.25)
    assert policy.connection_pool.http.http1_max_pending_requests == 50
    assert policy.connection_pool.http.http2_max_requests == 200
    assert policy.connection_pool.http.max_requests_per_connection == 10
    assert policy.connection_pool.http.idle_timeout == 60.0
    outlier = policy.outlier_detection
    assert outlier.consecutive_5xx_errors == 5
    assert (outlier.interval, outlier.base_ejection_time, outlier.max_ejection_percent) == (10.0, 30.0, 50)
    assert policy.retry_budget.percent == 20.0
    assert policy.retry_budget.min_retry_concurrency == 3
    assert policy.tls.mode == "ISTIO_MUTUAL"
    [port] = policy.port_level_settings
    assert port.port.number == 9080
    assert port.connection_pool.http.http2_max_requests == 500


def test_destination_rule_subsets(samples: dict[ResourceKey, Resource]) -> None:
    subsets = sample(samples, DestinationRule, "reviews").spec.subsets
    assert [(s.name, s.labels) for s in subsets] == [
        ("v1", {"version": "v1"}),
        ("v2", {"version": "v2"}),
        ("v3", {"version": "v3"}),
    ]
    assert subsets[0].traffic_policy is None
    v3 = subsets[2].traffic_policy
    assert v3.load_balancer.consistent_hash.http_header_name == "x-user-id"
    assert v3.load_balancer.simple is None
    assert v3.outlier_detection.consecutive_5xx_errors == 2
    assert v3.outlier_detection.base_ejection_time == 90.0  # "1m30s"


# --- ServiceEntry --------------------------------------------------------------------


def test_service_entry_static_endpoints(samples: dict[ResourceKey, Resource]) -> None:
    se = sample(samples, ServiceEntry, "payments-vms")
    assert se.spec.hosts == ("payments.internal.example.com",)
    assert (se.spec.location, se.spec.resolution) == ("MESH_INTERNAL", "STATIC")
    assert [(p.number, p.name, p.protocol) for p in se.spec.ports] == [
        (8080, "http", "HTTP"),
        (9090, "grpc", "GRPC"),
    ]
    first, second = se.spec.endpoints
    assert (first.address, first.labels, first.ports, first.weight) == (
        "10.0.12.4",
        {"version": "v1", "zone": "eu-west-1a"},
        {},
        None,
    )
    assert (second.address, second.ports, second.weight) == ("10.0.12.5", {"http": 8443}, 2)
    assert second.labels["version"] == "v2"


def test_service_entry_dns(samples: dict[ResourceKey, Resource]) -> None:
    se = sample(samples, ServiceEntry, "httpbin-external")
    assert (se.spec.location, se.spec.resolution, se.spec.endpoints) == ("MESH_EXTERNAL", "DNS", ())
    assert [(p.number, p.name) for p in se.spec.ports] == [(443, "https")]


# --- security.istio.io ---------------------------------------------------------------


def test_peer_authentication_mesh_wide(samples: dict[ResourceKey, Resource]) -> None:
    pa = sample(samples, PeerAuthentication, "default", ns="istio-system")
    assert pa.namespace == "istio-system"
    assert pa.spec.selector is None
    assert pa.spec.mtls.mode == "STRICT"
    assert pa.spec.port_level_mtls == {}


def test_peer_authentication_port_level(samples: dict[ResourceKey, Resource]) -> None:
    pa = sample(samples, PeerAuthentication, "ratings-ports")
    assert pa.spec.selector.match_labels == {"app": "ratings"}
    assert pa.spec.mtls.mode == "UNSET"
    assert {port: m.mode for port, m in pa.spec.port_level_mtls.items()} == {
        9090: "PERMISSIVE",
        8081: "DISABLE",
    }


def test_authorization_policy_allow_rule(samples: dict[ResourceKey, Resource]) -> None:
    ap = sample(samples, AuthorizationPolicy, "reviews-viewer")
    assert ap.spec.action == "ALLOW"
    assert ap.spec.selector.match_labels == {"app": "reviews"}
    [rule] = ap.spec.rules
    assert rule.from_[0].source.principals == ("cluster.local/ns/default/sa/productpage",)
    assert rule.to[0].operation.methods == ("GET", "HEAD")
    assert rule.to[0].operation.paths == ("/reviews/*",)
    assert [(c.key, c.values, c.not_values) for c in rule.when] == [
        ("request.auth.claims[iss]", ("https://accounts.example.com",), ())
    ]


def test_authorization_policy_deny_rule(samples: dict[ResourceKey, Resource]) -> None:
    ap = sample(samples, AuthorizationPolicy, "deny-foreign-writes")
    assert ap.spec.action == "DENY"
    assert ap.spec.selector is None
    [rule] = ap.spec.rules
    assert rule.from_[0].source.not_namespaces == ("default", "istio-system")
    assert rule.to[0].operation.methods == ("POST", "PUT", "PATCH", "DELETE")
    assert rule.when == ()


def test_authorization_policy_action_defaults_to_allow() -> None:
    data = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x"}}
    ap, problems = parse_resource(data)
    assert problems == []
    assert ap.spec.action == "ALLOW"
    assert ap.spec.rules == ()


def test_request_authentication_jwt_rules(samples: dict[ResourceKey, Resource]) -> None:
    ra = sample(samples, RequestAuthentication, "productpage-jwt")
    assert ra.spec.selector.match_labels == {"app": "productpage"}
    [rule] = ra.spec.jwt_rules
    assert rule.issuer == "https://accounts.example.com"
    assert rule.jwks_uri == "https://accounts.example.com/.well-known/jwks.json"
    assert rule.jwks is None
    assert rule.audiences == ("bookinfo",)
    assert [(h.name, h.prefix) for h in rule.from_headers] == [("Authorization", "Bearer "), ("x-jwt", None)]
    assert rule.forward_original_token is True
    assert [(c.header, c.claim) for c in rule.output_claim_to_headers] == [("x-user-id", "sub")]


# --- apiVersion ----------------------------------------------------------------------

_SPECS: dict[str, dict[str, Any]] = {
    "VirtualService": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
    "DestinationRule": {"host": "reviews"},
    "ServiceEntry": {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "https"}]},
    "PeerAuthentication": {"mtls": {"mode": "STRICT"}},
    "AuthorizationPolicy": {"action": "DENY", "rules": [{}]},
    "RequestAuthentication": {
        "jwtRules": [{"issuer": "https://issuer.example.com", "jwksUri": "https://issuer.example.com/jwks"}]
    },
}
_GROUPS = {
    "VirtualService": "networking.istio.io",
    "DestinationRule": "networking.istio.io",
    "ServiceEntry": "networking.istio.io",
    "PeerAuthentication": "security.istio.io",
    "AuthorizationPolicy": "security.istio.io",
    "RequestAuthentication": "security.istio.io",
}


def _minimal(kind: str, api_version: str, **meta: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x", **meta}, "spec": _SPECS[kind]}


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
@pytest.mark.parametrize("kind", sorted(_SPECS))
def test_api_versions_accepted(kind: str, version: str) -> None:
    resource, problems = parse_resource(_minimal(kind, f"{_GROUPS[kind]}/{version}"))
    assert problems == []
    assert resource is not None
    assert (resource.kind, resource.api_version) == (kind, f"{_GROUPS[kind]}/{version}")


@pytest.mark.parametrize(
    ("kind", "api_version"),
    [
        ("VirtualService", "networking.istio.io/v2"),
        ("VirtualService", "security.istio.io/v1"),
        ("VirtualService", "v1"),
        ("PeerAuthentication", "networking.istio.io/v1"),
        ("AuthorizationPolicy", "security.istio.io/v1alpha1"),
    ],
)
def test_api_versions_rejected(kind: str, api_version: str) -> None:
    resource, problems = parse_resource(_minimal(kind, api_version))
    assert resource is None
    [(path, message)] = problems
    assert path == ("apiVersion",)
    assert f"unsupported apiVersion {api_version!r} for {kind}" in message
    assert f"{_GROUPS[kind]}/v1beta1" in message


def test_namespace_defaults_to_the_load_namespace() -> None:
    resource, _ = parse_resource(_minimal("DestinationRule", "networking.istio.io/v1"), "prod")
    assert resource.namespace == "prod"
    assert resource.key == ResourceKey("DestinationRule", "prod", "x")
    written, _ = parse_resource(
        _minimal("DestinationRule", "networking.istio.io/v1", namespace="team-a"), "prod"
    )
    assert written.namespace == "team-a"


def test_kubernetes_status_is_ignored() -> None:
    data = {**_minimal("DestinationRule", "networking.istio.io/v1"), "status": {"observedGeneration": 3}}
    resource, problems = parse_resource(data)
    assert problems == []
    assert "status" not in resource.manifest()


# --- round trip and immutability -----------------------------------------------------


def test_manifest_round_trip_is_lossless(samples: dict[ResourceKey, Resource]) -> None:
    for resource in samples.values():
        again, problems = parse_resource(resource.manifest())
        assert problems == []
        assert again == resource, resource.key


def test_manifest_writes_durations_in_istio_form(samples: dict[ResourceKey, Resource]) -> None:
    dr = sample(samples, DestinationRule, "reviews").manifest()["spec"]
    assert dr["trafficPolicy"]["connectionPool"]["tcp"]["connectTimeout"] == "250ms"
    assert dr["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"] == "1m"
    assert dr["trafficPolicy"]["outlierDetection"]["interval"] == "10s"
    assert dr["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 5
    assert dr["subsets"][2]["trafficPolicy"]["outlierDetection"]["baseEjectionTime"] == "90s"
    canary = sample(samples, VirtualService, "reviews").manifest()["spec"]["http"][1]
    assert canary["timeout"] == "2s"
    assert canary["retries"] == {
        "attempts": 3,
        "perTryTimeout": "500ms",
        "retryOn": "5xx,connect-failure,refused-stream",
    }
    delay = sample(samples, VirtualService, "ratings").manifest()["spec"]["http"][0]["fault"]["delay"]
    assert delay["fixedDelay"] == "7s"


def test_manifest_uses_wire_names(samples: dict[ResourceKey, Resource]) -> None:
    manifest = sample(samples, AuthorizationPolicy, "reviews-viewer").manifest()
    assert manifest["apiVersion"] == "security.istio.io/v1"
    rule = manifest["spec"]["rules"][0]
    assert "from" in rule
    assert "from_" not in rule
    pa = sample(samples, PeerAuthentication, "ratings-ports").manifest()
    assert pa["spec"]["portLevelMtls"] == {"9090": {"mode": "PERMISSIVE"}, "8081": {"mode": "DISABLE"}}


def test_manifest_writes_only_fields_that_were_set(samples: dict[ResourceKey, Resource]) -> None:
    route = sample(samples, VirtualService, "reviews").manifest()["spec"]["http"][0]
    assert set(route) == {"name", "match", "route"}
    assert route["route"] == [{"destination": {"host": "reviews", "subset": "v2"}}]


def test_from_accepts_the_yaml_key() -> None:
    data = _minimal("AuthorizationPolicy", "security.istio.io/v1")
    data["spec"] = {"rules": [{"from": [{"source": {"namespaces": ["prod"]}}]}]}
    ap, problems = parse_resource(data)
    assert problems == []
    assert ap.spec.rules[0].from_[0].source.namespaces == ("prod",)


def test_models_are_frozen(samples: dict[ResourceKey, Resource]) -> None:
    vs = sample(samples, VirtualService, "reviews")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        vs.metadata.name = "other"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        vs.spec.http[1].route[0].weight = 50
    dr = sample(samples, DestinationRule, "reviews")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        dr.spec.traffic_policy.outlier_detection.interval = 1.0
    assert vs.spec.http[1].route[0].weight == 80
    assert vs.metadata.name == "reviews"


@pytest.mark.parametrize(
    ("kind", "api", "spec", "path", "fragment"),
    [
        (
            "PeerAuthentication",
            "security.istio.io/v1",
            {"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {}},
            ("spec", "portLevelMtls"),
            "needs at least one port",
        ),
        (
            "RequestAuthentication",
            "security.istio.io/v1",
            {"targetRef": {"group": "", "kind": "Service", "name": "foo", "namespace": "bar"}},
            ("spec", "targetRef", "namespace"),
            "'bar' is another namespace",
        ),
        (
            "AuthorizationPolicy",
            "security.istio.io/v1",
            {"targetRefs": [{"kind": "Service", "name": "foo", "namespace": "bar"}]},
            ("spec", "targetRefs", 0, "namespace"),
            "'bar' is another namespace",
        ),
    ],
)
def test_what_istio_refuses_is_refused(
    kind: str, api: str, spec: dict[str, Any], path: tuple[str | int, ...], fragment: str
) -> None:
    """From Istio's own negative CRD test data (../shared/istio-corpus/negative/)."""
    data = {**_minimal(kind, api), "spec": spec}
    resource, problems = parse_resource(data)
    assert resource is None
    assert any(p == path and fragment in message for p, message in problems), problems
    same_namespace = {**spec}
    for key in ("targetRef", "targetRefs"):
        if key in spec:
            refs = spec[key] if isinstance(spec[key], list) else [spec[key]]
            fixed = [{**ref, "namespace": "default"} for ref in refs]
            same_namespace[key] = fixed if isinstance(spec[key], list) else fixed[0]
            assert parse_resource({**data, "spec": same_namespace})[1] == []
