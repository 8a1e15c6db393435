"""The RoutingTable compiled from a snapshot: routes per host, weighted targets, clusters."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from meshlib.core.call import Call
from meshlib.core.retry_policy import DEFAULT_RETRY
from meshlib.core.routing_table import HeaderOps, RoutingTable, Target
from meshlib.core.snapshot import compile_snapshot
from meshlib.policy import load_text
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
"""
DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v9, labels: {version: v9}}
"""


def workload(
    wid: str,
    address: str,
    *,
    service: str = "reviews",
    port: int = 9080,
    protocol: str = "http",
    ready: bool = True,
    **labels: str,
) -> WorkloadRegistration:
    return WorkloadRegistration(
        id=wid,
        service=service,
        labels=labels,
        endpoints=[AnnouncedEndpoint(address=address, port=port, protocol=protocol, ready=ready)],  # type: ignore[arg-type]
    )


def build(
    text: str,
    workloads: Sequence[WorkloadRegistration] = (),
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    family: str = "http",
) -> RoutingTable:
    resources = [item.resource for item in load_text(text)] if text.strip() else []
    snap = compile_snapshot(1, resources, workloads)
    return RoutingTable.build(snap, namespace, labels or {}, family)  # type: ignore[arg-type]


def call(path: str = "/", headers: dict[str, str] | None = None, method: str = "GET") -> Call:
    found = headers or {}
    return Call(method, "http", "reviews", 9080, path, "", found.get, authority="reviews:9080")


def target(host: str = REVIEWS, subset: str | None = None, port: int | None = None) -> Target:
    return Target(host, subset, port, 100)


# --- routes --------------------------------------------------------------------------


ORDERED = (
    VS
    + """
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: api
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""
)


def test_routes_are_kept_per_host_in_order() -> None:
    plane = build(ORDERED)
    assert list(plane.routes) == [REVIEWS]
    routes = plane.routes[REVIEWS].routes
    assert [r.name for r in routes] == ["jason", "api", "route-2"]
    assert [r.targets[0].subset for r in routes] == ["v2", "v9", "v1"]
    assert routes[0].targets[0].host == REVIEWS  # short host normalised in the VS namespace


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/api/x", {"end-user": "jason"}, "jason"),  # first match wins, even when a later one matches too
        ("/api/x", {}, "api"),
        ("/", {"end-user": "mary"}, "route-2"),
        ("/", {}, "route-2"),
    ],
)
def test_first_match_wins(path: str, headers: dict[str, str], expected: str) -> None:
    found = build(ORDERED).routes[REVIEWS].match(call(path, headers))
    assert found is not None
    assert found.name == expected


def test_no_route_matches() -> None:
    plane = build(VS + "  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /api}}]\n"
                  "    route: [{destination: {host: reviews}}]\n")  # fmt: skip
    assert plane.routes[REVIEWS].match(call("/web")) is None


def test_weighted_pick_follows_the_weights() -> None:
    plane = build(
        VS
        + """
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"""
    )
    route = plane.routes[REVIEWS].routes[0]
    assert route.cumulative == (80, 100)
    rng = random.Random(1234)
    counts = Counter(route.pick(rng).subset for _ in range(10_000))
    assert set(counts) == {"v1", "v2"}
    assert 7_800 <= counts["v1"] <= 8_200
    assert counts["v1"] + counts["v2"] == 10_000


def test_zero_weight_destination_is_never_picked() -> None:
    plane = build(
        VS
        + """
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - {destination: {host: reviews, subset: v2}, weight: 100}
"""
    )
    route = plane.routes[REVIEWS].routes[0]
    rng = random.Random(5)
    assert {route.pick(rng).subset for _ in range(2_000)} == {"v2"}


class Fixed(random.Random):
    """An rng whose every draw is one value, to hit the edges of the weight ranges."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("weights", "draw", "expected"),
    [
        ((0, 100), 0.0, "v2"),  # a zero weight owns no point, not even the first one
        ((80, 20), 0.0, "v1"),
        ((80, 20), 0.7999, "v1"),
        ((80, 20), 0.8, "v2"),  # 80.0 is the first point of the second range
        ((80, 20), 0.9999, "v2"),
        ((50, 0, 50), 0.5, "v3"),
    ],
)
def test_weight_ranges_are_half_open(weights: tuple[int, ...], draw: float, expected: str) -> None:
    routes = "".join(
        f"    - {{destination: {{host: reviews, subset: v{i + 1}}}, weight: {w}}}\n"
        for i, w in enumerate(weights)
    )
    plane = build(VS + "  hosts: [reviews]\n  http:\n  - route:\n" + routes)
    assert plane.routes[REVIEWS].routes[0].pick(Fixed(draw)).subset == expected


def test_single_destination_gets_weight_100() -> None:
    plane = build(VS + "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: ratings}}]\n")
    route = plane.routes[REVIEWS].routes[0]
    assert route.targets == (Target(RATINGS, None, None, 100),)
    assert route.cumulative == (100,)
    assert route.pick(random.Random(0)).host == RATINGS


def test_destination_port_is_kept() -> None:
    plane = build(
        VS
        + "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, port: {number: 9090}}}]\n"
    )
    assert plane.routes[REVIEWS].routes[0].targets[0].port == 9090


@pytest.mark.parametrize(
    ("gateways", "bound"),
    [
        ("[istio-system/ingress]", False),
        ("[istio-system/ingress, mesh]", True),
        ("[mesh]", True),
    ],
)
def test_virtual_service_bound_to_gateways_only_is_ignored(gateways: str, bound: bool) -> None:
    plane = build(
        VS
        + f"  hosts: [reviews]\n  gateways: {gateways}\n"
        + "  http:\n  - route: [{destination: {host: reviews}}]\n"
    )
    assert (REVIEWS in plane.routes) is bound


def test_routes_for_other_callers_are_dropped() -> None:
    text = (
        VS
        + """
  hosts: [reviews]
  http:
  - name: from-productpage
    match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: from-prod
    match: [{sourceNamespace: prod}]
    route: [{destination: {host: reviews, subset: v9}}]
  - name: rest
    route: [{destination: {host: reviews, subset: v1}}]
"""
    )
    assert [r.name for r in build(text, labels={"app": "productpage"}).routes[REVIEWS].routes] == [
        "from-productpage",
        "rest",
    ]
    assert [r.name for r in build(text, namespace="prod").routes[REVIEWS].routes] == ["from-prod", "rest"]
    assert [r.name for r in build(text, labels={"app": "ratings"}).routes[REVIEWS].routes] == ["rest"]


def test_prefixes_of_match_blocks_are_kept_for_rewrites() -> None:
    plane = build(
        VS
        + """
  hosts: [reviews]
  http:
  - match:
    - {uri: {prefix: /v1/}}
    - {uri: {exact: /old}}
    - {uri: {prefix: /Legacy}, ignoreUriCase: true}
    rewrite: {uri: /}
    route: [{destination: {host: reviews}}]
"""
    )
    route = plane.routes[REVIEWS].routes[0]
    # (prefix, ignoreUriCase): a case-insensitive prefix is kept lower-cased for the rewrite
    assert route.prefixes == (("/v1/", False), ("/legacy", True))
    assert route.rewrite is not None
    assert route.rewrite.uri == "/"


# --- default route and host resolution ------------------------------------------------


def test_default_route_uses_istio_default_retries() -> None:
    plane = build("", [workload("ratings-1", "10.0.0.5", service="ratings")])
    route = plane.default_route(RATINGS)
    assert route.name == "default"
    assert route.targets == (Target(RATINGS, None, None, 100),)
    assert route.timeout is None
    assert route.fault is None
    assert route.retry == DEFAULT_RETRY
    assert route.retry.attempts == 2
    assert route.retry.statuses == frozenset({503})
    assert route.retry.on_connect_failure is True
    assert route.retry.on_5xx is False
    assert route.matches(call("/anything")) is True
    assert plane.default_route(RATINGS) is route  # built once per host


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        ("reviews", "default", REVIEWS),
        ("reviews:9080", "default", REVIEWS),
        ("reviews.default", "prod", REVIEWS),
        ("reviews.default.svc", "prod", REVIEWS),
        (REVIEWS, "prod", REVIEWS),
        ("reviews", "prod", None),  # reviews.prod does not exist
        ("unknown.example.com", "default", None),
        ("unknown", "default", None),
    ],
)
def test_resolve(host: str, namespace: str, expected: str | None) -> None:
    plane = build("", [workload("reviews-1", "10.0.0.1")], namespace=namespace)
    assert plane.resolve(host) == expected
    assert plane.resolve(host) == expected  # and again from the cache


# --- clusters ----------------------------------------------------------------------------


def reviews_workloads() -> list[WorkloadRegistration]:
    return [
        workload("reviews-v1", "10.0.0.1", version="v1"),
        workload("reviews-v2", "10.0.0.2", version="v2"),
        workload("reviews-v2-down", "10.0.0.3", ready=False, version="v2"),
    ]


def test_cluster_filters_endpoints_by_subset_labels() -> None:
    plane = build(DR, reviews_workloads())
    assert [e.address for e in plane.cluster(target(subset="v1")).endpoints] == ["10.0.0.1"]
    assert [e.address for e in plane.cluster(target(subset="v2")).endpoints] == ["10.0.0.2"]
    assert [e.address for e in plane.cluster(target()).endpoints] == ["10.0.0.1", "10.0.0.2"]


def test_cluster_of_subset_without_endpoints_is_empty_but_known() -> None:
    plane = build(DR, reviews_workloads())
    for subset in ("v9", "undeclared"):
        cluster = plane.cluster(target(subset=subset))
        assert cluster.endpoints == ()
        assert cluster.known is True


def test_not_ready_endpoints_are_excluded() -> None:
    plane = build("", [workload("r-down", "10.0.0.9", ready=False), workload("r-up", "10.0.0.8")])
    assert [e.address for e in plane.cluster(target()).endpoints] == ["10.0.0.8"]


def test_cluster_is_built_once_per_host_subset_port() -> None:
    plane = build(DR, reviews_workloads())
    first = plane.cluster(target(subset="v1"), 9080)
    assert plane.cluster(target(subset="v1"), 9080) is first
    assert first.key == ("http", REVIEWS, "v1", 9080)
    assert plane.cluster(target(subset="v1", port=9443), 9080).key == ("http", REVIEWS, "v1", 9443)


def test_cluster_key_names_the_family() -> None:
    # One process may hold an http and a grpc RoutingTable: their clusters must not share state.
    http = build(DR, reviews_workloads()).cluster(target(subset="v1"), 9080)
    grpc = build(DR, reviews_workloads(), family="grpc").cluster(target(subset="v1"), 9080)
    assert (http.family, grpc.family) == ("http", "grpc")
    assert http.key != grpc.key
    assert grpc.key == ("grpc", REVIEWS, "v1", 9080)


@pytest.mark.parametrize(
    ("family", "ports"),
    [("http", [9080, 9443]), ("grpc", [9090])],
)
def test_family_selects_endpoint_protocols(family: str, ports: list[int]) -> None:
    workloads = [
        workload("r-http", "10.0.0.1", port=9080, protocol="http"),
        workload("r-https", "10.0.0.1", port=9443, protocol="https"),
        workload("r-grpc", "10.0.0.1", port=9090, protocol="grpc"),
        workload("r-tcp", "10.0.0.1", port=9091, protocol="tcp"),
    ]
    plane = build("", workloads, family=family)
    assert plane.family == family
    assert sorted(e.port for e in plane.cluster(target()).endpoints) == ports


SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing}
spec:
  hosts: [billing.internal]
  ports:
  - {number: 8080, name: http, protocol: HTTP, targetPort: 9080}
  - {number: 8081, name: grpc, protocol: GRPC}
  resolution: STATIC
  endpoints:
  - {address: 10.9.0.1, labels: {zone: a}}
  - {address: 10.9.0.2, ports: {http: 9999}}
"""


@pytest.mark.parametrize(
    ("request_port", "expected"),
    [
        (80, [("api.example.com", 80, "http")]),
        (443, [("api.example.com", 443, "https")]),
        (None, [("api.example.com", 80, "http"), ("api.example.com", 443, "https")]),
        (8443, []),
    ],
)
def test_service_entry_port_selected_by_service_port(
    request_port: int | None, expected: list[tuple[str, int, str]]
) -> None:
    plane = build(SERVICE_ENTRY)
    cluster = plane.cluster(target("api.example.com"), request_port)
    assert [(e.address, e.port, e.protocol) for e in cluster.endpoints] == expected
    assert cluster.known is True


def test_service_entry_target_port_and_endpoint_port_override() -> None:
    plane = build(SERVICE_ENTRY)
    http = plane.cluster(target("billing.internal", port=8080))
    assert [(e.address, e.port, e.service_port) for e in http.endpoints] == [
        ("10.9.0.1", 9080, 8080),
        ("10.9.0.2", 9999, 8080),
    ]
    assert plane.cluster(target("billing.internal", port=8081)).endpoints == ()  # grpc, http plane
    grpc_table = build(SERVICE_ENTRY, family="grpc")
    grpc = grpc_table.cluster(target("billing.internal", port=8081))
    assert [(e.address, e.port) for e in grpc.endpoints] == [("10.9.0.1", 8081), ("10.9.0.2", 8081)]


@pytest.mark.parametrize(
    ("host", "known"),
    [
        (REVIEWS, True),  # registry endpoints
        ("api.example.com", True),  # ServiceEntry
        (RATINGS, True),  # a DestinationRule only
        ("example.org", False),  # plain DNS
    ],
)
def test_known_hosts(host: str, known: bool) -> None:
    text = SERVICE_ENTRY + "---" + DR.replace("host: reviews", "host: ratings")
    plane = build(text, [workload("reviews-1", "10.0.0.1")])
    cluster = plane.cluster(target(host), 80)
    assert cluster.known is known


def test_cluster_takes_the_subset_traffic_policy() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
"""
    plane = build(text, reviews_workloads())
    whole = plane.cluster(target()).policy.load_balancer
    v1 = plane.cluster(target(subset="v1")).policy.load_balancer
    assert whole is not None
    assert v1 is not None
    assert (whole.simple, v1.simple) == ("ROUND_ROBIN", "RANDOM")
    assert plane.cluster(target("example.org")).policy.load_balancer is None


# --- what a route carries -------------------------------------------------------------


def test_fault_turns_retries_and_timeout_off() -> None:
    plane = build(
        VS
        + """
  hosts: [reviews]
  http:
  - name: faulty
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 25}}
      abort: {httpStatus: 418, percentage: {value: 10}}
    timeout: 5s
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: reviews}}]
  - name: plain
    timeout: 5s
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: reviews}}]
"""
    )
    faulty, plain = plane.routes[REVIEWS].routes
    assert faulty.retry.attempts == 0
    assert faulty.timeout is None
    assert faulty.fault is not None
    assert faulty.fault.delay == 2.0
    assert faulty.fault.delay_fraction == pytest.approx(0.25)
    assert faulty.fault.abort_status == 418
    assert faulty.fault.abort_fraction == pytest.approx(0.10)
    assert plain.fault is None
    assert plain.retry.attempts == 3
    assert plain.retry.on_5xx is True
    assert plain.timeout == 5.0


def test_fault_without_percentage_applies_to_no_request() -> None:
    plane = build(
        VS
        + """
  hosts: [reviews]
  http:
  - fault:
      delay: {fixedDelay: 1s}
      abort: {grpcStatus: UNAVAILABLE}
    route: [{destination: {host: reviews}}]
  - fault:
      delay: {fixedDelay: 1s, percent: 30}
    route: [{destination: {host: reviews}}]
"""
    )
    first, second = plane.routes[REVIEWS].routes
    assert first.fault is not None
    assert (first.fault.delay_fraction, first.fault.abort_fraction) == (0.0, 0.0)
    assert first.fault.abort_grpc == "UNAVAILABLE"
    assert second.fault is not None
    assert second.fault.delay_fraction == pytest.approx(0.30)  # the deprecated integer percent


def test_zero_timeout_means_no_timeout() -> None:
    plane = build(
        VS + "  hosts: [reviews]\n  http:\n  - timeout: 0s\n    route: [{destination: {host: reviews}}]\n"
    )
    assert plane.routes[REVIEWS].routes[0].timeout is None


def test_mirrors_and_their_shares() -> None:
    plane = build(
        VS
        + """
  hosts: [reviews]
  http:
  - name: all
    mirror: {host: shadow}
    route: [{destination: {host: reviews}}]
  - name: quarter
    mirror: {host: shadow, subset: v2}
    mirrorPercentage: {value: 25}
    route: [{destination: {host: reviews}}]
  - name: deprecated
    mirror: {host: shadow}
    mirrorPercent: 40
    route: [{destination: {host: reviews}}]
  - name: many
    mirrors:
    - destination: {host: shadow-a}
    - destination: {host: shadow-b.other}
      percentage: {value: 0}
    route: [{destination: {host: reviews}}]
  - name: none
    route: [{destination: {host: reviews}}]
"""
    )
    routes = {r.name: r for r in plane.routes[REVIEWS].routes}
    shadow = "shadow.default.svc.cluster.local"
    assert routes["all"].mirrors == ((Target(shadow, None, None, 100), 1.0),)
    assert routes["quarter"].mirrors == ((Target(shadow, "v2", None, 100), 0.25),)
    assert routes["deprecated"].mirrors == ((Target(shadow, None, None, 100), 0.40),)
    assert [(t.host, share) for t, share in routes["many"].mirrors] == [
        ("shadow-a.default.svc.cluster.local", 1.0),
        ("shadow-b.other", 0.0),
    ]
    assert routes["none"].mirrors == ()


def test_header_operations_are_lower_cased() -> None:
    plane = build(
        VS
        + """
  hosts: [reviews]
  http:
  - headers:
      request:
        set: {X-Env: prod}
        add: {X-Trace: "on"}
        remove: [X-Debug]
      response:
        remove: [Server]
    route:
    - destination: {host: reviews}
      headers:
        request: {set: {X-Subset: Any}}
        response: {add: {X-Served-By: Reviews}}
"""
    )
    route = plane.routes[REVIEWS].routes[0]
    assert route.request_ops == HeaderOps(
        set=(("x-env", "prod"),), add=(("x-trace", "on"),), remove=("x-debug",)
    )
    assert route.response_ops == HeaderOps(remove=("server",))
    assert route.targets[0].request_ops == HeaderOps(set=(("x-subset", "Any"),))  # values keep their case
    assert route.targets[0].response_ops == HeaderOps(add=(("x-served-by", "Reviews"),))


def test_no_header_operations_is_none() -> None:
    assert HeaderOps.build(None, None) is None
    route = build(VS + "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n")
    only = route.routes[REVIEWS].routes[0]
    assert (only.request_ops, only.response_ops, only.targets[0].request_ops) == (None, None, None)


@pytest.mark.parametrize(
    ("annotation", "retries", "expected"),
    [
        ('"true"', "", True),
        ('"True"', "", True),
        ('"true"', "    retries: {attempts: 4, retryOn: 5xx}\n", True),
        ('"false"', "", False),
        (None, "", False),
    ],
)
def test_non_idempotent_annotation(annotation: str | None, retries: str, expected: bool) -> None:
    meta = (
        f"metadata:\n  name: reviews\n  annotations: {{retry.meshlib.io/non-idempotent: {annotation}}}\n"
        if annotation is not None
        else "metadata: {name: reviews}\n"
    )
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        + meta
        + "spec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n"
        + retries
    )
    route = build(text).routes[REVIEWS].routes[0]
    assert route.retry.non_idempotent is expected
    assert route.retry.may_resend("POST", None, idempotency_key=False) is expected
