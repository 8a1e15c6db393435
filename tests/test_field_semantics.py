"""Enforced policy fields that no other test pinned down: each test here fails if meshlib
ignored the field it names (tests/policy/field_tests.py maps every enforced field to a test).

Built on the other tests' harnesses: the in-memory client stack (tests/core/test_client_stack.py),
the authorization engine (tests/core/test_authz.py), real uvicorn backends
(tests/http/conftest.py) and the JWT helpers of tests/test_request_authentication.py."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshlib import Mesh
from meshlib.core.cluster_state import Clusters
from meshlib.core.exchange import Send, Synthetic
from meshlib.core.locality import Locality
from meshlib.core.rate_limit import compile_rate_limiter
from meshlib.core.snapshot import compile_snapshot
from meshlib.errors import ConfigError
from meshlib.peer import PeerIdentity
from meshlib.policy.loader import load_text
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration
from meshlib.request_authn import JwksCache, compile_authenticator
from tests.core.test_authz import View, _allowed, _call
from tests.core.test_client_stack import DR_SUBSETS, OK, RUN, UNAVAILABLE, address, workload
from tests.core.test_client_stack import Mesh as StackMesh
from tests.core.test_client_stack import vs as stack_vs
from tests.core.test_slow_start import share_of_c
from tests.http.conftest import (
    SUBSETS,
    Endpoints,
    backend_of,
    backends,  # noqa: F401 - a fixture
    make_mesh,  # noqa: F401 - a fixture
    rule,
    service_entry,
)
from tests.http.conftest import virtual_service as http_vs
from tests.http.test_connection_lifetime import call, connections
from tests.servers import asgi_through_mesh
from tests.test_rate_limit import rate_limit
from tests.test_request_authentication import ISSUER, JWKS, OTHER_KEY, REMOTE_JWKS, token

# --- VirtualService ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redirect", "location"),
    [
        # FROM_PROTOCOL_DEFAULT: the scheme's default port, so none in the Location.
        ("{uri: /new, derivePort: FROM_PROTOCOL_DEFAULT}", "http://reviews/new"),
        ("{scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}", "https://reviews/old"),
        # FROM_REQUEST_PORT: the request's port, also under a new authority that has none.
        ("{authority: other.example, derivePort: FROM_REQUEST_PORT}", "http://other.example:9080/old"),
    ],
)
def test_redirect_derive_port(redirect: str, location: str) -> None:
    mesh = StackMesh(stack_vs(f"  - redirect: {redirect}\n"))
    reply, actions, _ = mesh.run(path="/old", port=9080)
    assert actions == []
    assert reply.synthetic == Synthetic(301, headers=(("location", location),))


def _in(wid: str, address: str, locality: str) -> WorkloadRegistration:
    return WorkloadRegistration(
        id=wid,
        service="reviews",
        locality=locality,
        endpoints=[AnnouncedEndpoint(address=address, port=9080)],
    )


LOCAL = {"10.0.0.1", "10.0.0.2"}
LOCAL_AND_REMOTE = [
    _in("local-a", "10.0.0.1", "us-east/zone-a/rack-1"),
    _in("local-b", "10.0.0.2", "us-east/zone-a/rack-1"),
    _in("remote", "10.0.9.1", "us-west/zone-a/rack-1"),
]


@pytest.mark.parametrize("remote_localities", [True, False])
def test_retry_remote_localities_moves_the_retry_to_another_locality(remote_localities: bool) -> None:
    """Traffic stays in the caller's locality while it is healthy; a retry goes to the other
    endpoint there, unless retryRemoteLocalities sends it to another locality."""
    option = ", retryRemoteLocalities: true" if remote_localities else ""
    mesh = StackMesh(
        stack_vs(
            f"  - retries: {{attempts: 1, retryOn: 5xx{option}}}\n"
            "    route: [{destination: {host: reviews}}]\n"
        ),
        DR_SUBSETS + "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 100}\n",
        workloads=LOCAL_AND_REMOTE,
    )
    mesh.clusters = Clusters(mesh.clock, random.Random(7), locality=Locality.parse("us-east/zone-a/rack-1"))
    for seed in range(20):
        _, actions, _ = mesh.run(UNAVAILABLE, OK, seed=seed)
        first, second = (a.endpoint.address for a in actions if isinstance(a, Send) and a.endpoint)
        assert first in LOCAL, "the first attempt stays in the caller's locality"
        if remote_localities:
            assert second == "10.0.9.1"
        else:
            assert second in LOCAL - {first}


def test_a_destinations_response_headers_edit_the_answers_it_gives(
    backends: Endpoints,  # noqa: F811
    make_mesh: Any,  # noqa: F811
) -> None:
    """route[].headers.response: each destination's own edits, on the answers that came from it."""
    split = http_vs("""\
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers: {response: {set: {content-type: text/plain}, add: {x-picked: one}}}
    - destination: {host: reviews, subset: v2}
      weight: 50
      headers: {response: {remove: [content-type], add: {x-picked: two}}}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + split)
    with mesh.http_client() as client:
        answers = [client.get("http://reviews/") for _ in range(30)]
    assert {backend_of(answer)[:2] for answer in answers} == {"v1", "v2"}
    for answer in answers:
        if backend_of(answer).startswith("v1"):
            assert (answer.headers["x-picked"], answer.headers["content-type"]) == ("one", "text/plain")
        else:
            assert answer.headers["x-picked"] == "two"
            assert "content-type" not in answer.headers


@pytest.mark.parametrize("kind", ["VirtualService", "DestinationRule"])
def test_export_to_follows_istios_validation(kind: str) -> None:
    body = (
        "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n"
        if kind == "VirtualService"
        else "  host: reviews\n"
    )

    def document(export_to: str) -> str:
        return (
            f"apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: reviews}}\n"
            f"spec:\n{body}  exportTo: {export_to}\n"
        )

    for accepted in ("['*']", "['.']", "[prod, '.']", "['~']"):
        (loaded,) = load_text(document(accepted))
        assert loaded.resource.spec.export_to
    for refused_value, message in (
        ("['*', '.']", "'*' and '~' cannot be combined"),
        ("[prod, prod]", "duplicate entries in exportTo"),
        ("[Prod]", "exportTo namespace"),
    ):
        with pytest.raises(ConfigError) as refused:
            load_text(document(refused_value), "policy.yaml")
        assert message in str(refused.value)


# --- DestinationRule ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tcp_idle_timeout_retires_an_idle_connection(
    backends: Endpoints,  # noqa: F811
    make_mesh: Any,  # noqa: F811
    mode: str,
) -> None:
    """Without http.idleTimeout, tcp.idleTimeout bounds how long a connection may sit idle."""
    mesh = make_mesh(
        service_entry(backends, names=["v1-a"]) + rule("    connectionPool: {tcp: {idleTimeout: 300ms}}\n")
    )
    call(mesh, mode, [0.0, 0.6, 0.0])
    first, second, third, fourth = connections(backends)
    assert first == second, "busy: reused"
    assert third != second, "idle for 0.6 s > 300 ms: a new connection"
    assert fourth == third


@pytest.mark.parametrize("policy", ["DEFAULT", "DO_NOT_UPGRADE"])
def test_h2_upgrade_policy_takes_what_meshlib_does_and_refuses_upgrade(policy: str) -> None:
    def document(value: str) -> str:
        return (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n"
            "spec:\n  host: reviews\n  trafficPolicy:\n"
            f"    connectionPool: {{http: {{h2UpgradePolicy: {value}}}}}\n"
        )

    (loaded,) = load_text(document(policy))
    assert loaded.resource.spec.traffic_policy.connection_pool.http.h2_upgrade_policy == policy
    with pytest.raises(ConfigError) as refused:
        load_text(document("UPGRADE"), "policy.yaml")
    assert "h2UpgradePolicy: UPGRADE is not supported by meshlib" in str(refused.value)


# portLevelSettings: the settings of one port (9080); a request on another port (9081) to the
# same endpoints keeps the rule's own (Istio: port-level settings replace the rule's for that port).
NO_RETRIES = stack_vs("  - retries: {attempts: 0}\n    route: [{destination: {host: reviews}}]\n")


def _on_port_9080(settings: str, rule_level: str = "") -> str:
    return (
        DR_SUBSETS
        + "  trafficPolicy:\n"
        + rule_level
        + "    portLevelSettings:\n    - port: {number: 9080}\n"
        + "".join(f"      {line}\n" for line in settings.splitlines())
    )


def test_port_level_outlier_detection_ejects_on_its_port_only() -> None:
    mesh = StackMesh(
        NO_RETRIES,
        _on_port_9080("outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s}"),
        workloads=[workload("bad", "10.0.0.1"), workload("good", "10.0.0.2")],
    )

    def bad_hits(port: int) -> int:
        hits = 0
        for _ in range(20):
            _, actions = mesh.drive(
                mesh.exchange(port=port), lambda send: UNAVAILABLE if address(send) == "10.0.0.1" else OK
            )
            hits += address(actions[0]) == "10.0.0.1"
        return hits

    assert bad_hits(9080) == 1, "ejected at its first 503 on port 9080"
    assert bad_hits(9081) >= 5, "the rule sets no outlier detection: never ejected on port 9081"


def test_port_level_load_balancer_is_the_ports_own() -> None:
    mesh = StackMesh(
        _on_port_9080(
            "loadBalancer: {consistentHash: {httpHeaderName: x-user}}",
            rule_level="    loadBalancer: {simple: ROUND_ROBIN}\n",
        )
    )

    def picked(port: int) -> set[str | None]:
        return {address(mesh.run(OK, port=port, headers={"x-user": "alice"})[1][0]) for _ in range(12)}

    assert len(picked(9080)) == 1, "hashed on x-user: one endpoint for alice"
    assert picked(9081) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}, "round robin"


def test_port_level_connection_pool_limits_its_port_only() -> None:
    mesh = StackMesh(_on_port_9080("connectionPool: {http: {http2MaxRequests: 1}}"))
    for port, limited in ((9080, True), (9081, False)):
        flow = RUN(mesh.exchange(port=port))
        assert isinstance(flow.send(None), Send)  # in flight, holding a slot
        reply, actions, _ = mesh.run(OK, port=port)
        if limited:
            assert (actions, reply.error) == ([], "UO")
        else:
            assert (len(actions), reply.outcome) == (1, OK)
        with pytest.raises(StopIteration):
            flow.send(OK)


def test_warmup_minimum_percent_is_where_a_joining_endpoint_starts() -> None:
    """50%, not Envoy's default 10%: the joining endpoint C weighs 0.5 against A's and B's 1,
    and keeps that floor while the ramp is below it."""
    warmup: dict[str, object] = {"warmup": {"duration": "100s", "minimumPercent": 50}}
    assert share_of_c(warmup, 0.0) == pytest.approx(0.5 / 2.5, abs=0.01)
    assert share_of_c(warmup, 30.0) == pytest.approx(0.5 / 2.5, abs=0.01)
    assert share_of_c(warmup, 80.0) == pytest.approx(0.8 / 2.8, abs=0.01)


def test_warmup_aggression_bends_the_ramp_of_a_joining_endpoint() -> None:
    """aggression 2: at a quarter of the window the weight is 0.25 ** (1/2) = 0.5 (linear: 0.25)."""
    warmup: dict[str, object] = {"warmup": {"duration": "100s", "aggression": 2}}
    assert share_of_c(warmup, 25.0) == pytest.approx(0.5 / 2.5, abs=0.01)
    assert share_of_c(warmup, 64.0) == pytest.approx(0.8 / 2.8, abs=0.01)


def _always_failing(mesh: StackMesh, requests: int) -> list[int]:
    """Attempts per request, each attempt answered 503."""
    counts = []
    for _ in range(requests):
        _, actions = mesh.drive(mesh.exchange(), lambda send: UNAVAILABLE)
        counts.append(sum(isinstance(a, Send) for a in actions))
    return counts


ONE_RETRY = stack_vs(
    "  - retries: {attempts: 1, retryOn: 5xx}\n    route: [{destination: {host: reviews}}]\n"
)


def test_retry_budget_percent_is_the_share_of_requests_retried() -> None:
    """Retries allowed: minRetryConcurrency (1) + 50% of the requests so far, less those taken.
    Istio's default 20% would allow three retries in ten requests, not six."""
    mesh = StackMesh(
        ONE_RETRY, DR_SUBSETS + "  trafficPolicy:\n    retryBudget: {percent: 50, minRetryConcurrency: 1}\n"
    )
    assert _always_failing(mesh, 10) == [2, 2, 1, 2, 1, 2, 1, 2, 1, 2]


def test_retry_budget_interval_is_the_window_retries_are_counted_in() -> None:
    mesh = StackMesh(
        ONE_RETRY,
        DR_SUBSETS + "  trafficPolicy:\n"
        "    retryBudget: {percent: 0, minRetryConcurrency: 1, budgetInterval: 2s}\n",
    )
    assert _always_failing(mesh, 2) == [2, 1], "one retry in the window, then none"
    mesh.clock.now += 2.5  # the first retry has left the 2 s window (the default 10 s would keep it)
    assert _always_failing(mesh, 2) == [2, 1]
    mesh.clock.now += 1.0
    assert _always_failing(mesh, 1) == [1], "the second retry is still in the window"


# --- AuthorizationPolicy -------------------------------------------------------------------


def _peer(namespace: str, account: str) -> PeerIdentity:
    return PeerIdentity.parse(f"spiffe://cluster.local/ns/{namespace}/sa/{account}")


def test_not_service_accounts() -> None:
    spec = 'rules: [{from: [{source: {notServiceAccounts: ["sleep", "prod/api"]}}]}]'
    assert not _allowed(spec, View(_call(), peer=_peer("default", "sleep")))  # the policy's namespace
    assert not _allowed(spec, View(_call(), peer=_peer("prod", "api")))
    assert _allowed(spec, View(_call(), peer=_peer("prod", "sleep")))
    assert _allowed(spec, View(_call(), peer=_peer("default", "api")))
    assert _allowed(spec, View(_call()))  # no peer: no service account, so none of those


def test_not_ip_blocks() -> None:
    spec = 'rules: [{from: [{source: {notIpBlocks: ["10.0.0.0/8", "fd00::/8"]}}]}]'
    assert not _allowed(spec, View(_call(), source_ip="10.1.2.3"))
    assert not _allowed(spec, View(_call(), source_ip="fd00::7"))
    assert _allowed(spec, View(_call(), source_ip="192.168.1.1"))


def test_remote_ip_blocks_are_the_connections_address() -> None:
    """No trusted proxies (Istio's default numTrustedProxies 0): the remote address is the
    connection's, and X-Forwarded-For is not believed."""
    spec = 'rules: [{from: [{source: {remoteIpBlocks: ["192.168.0.0/16"]}}]}]'
    assert _allowed(spec, View(_call(), source_ip="192.168.1.1"))
    assert not _allowed(spec, View(_call(), source_ip="10.1.1.1"))
    forwarded = _call(headers={"X-Forwarded-For": "192.168.1.1"})
    assert not _allowed(spec, View(forwarded, source_ip="10.1.1.1"))


def test_not_remote_ip_blocks() -> None:
    spec = 'action: DENY\nrules: [{from: [{source: {notRemoteIpBlocks: ["127.0.0.0/8"]}}]}]'
    assert _allowed(spec, View(_call(), source_ip="127.0.0.1"))
    assert not _allowed(spec, View(_call(), source_ip="10.1.1.1"))


def test_not_hosts() -> None:
    spec = 'rules: [{to: [{operation: {notHosts: ["evil.example", "*.internal"]}}]}]'
    for host in ("evil.example", "Evil.Example:8080", "db.internal"):
        assert not _allowed(spec, View(_call(headers={"Host": host}))), host
    assert _allowed(spec, View(_call(headers={"Host": "reviews.default.svc.cluster.local"})))


def test_ports_and_not_ports() -> None:
    only = 'rules: [{to: [{operation: {ports: ["8080"]}}]}]'
    assert _allowed(only, View(_call(port=8080)))
    assert not _allowed(only, View(_call(port=9090)))
    deny_others = 'action: DENY\nrules: [{to: [{operation: {notPorts: ["8080"]}}]}]'
    assert _allowed(deny_others, View(_call(port=8080)))
    assert not _allowed(deny_others, View(_call(port=9090)))


def test_methods_and_not_methods() -> None:
    reads = "rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]"
    assert _allowed(reads, View(_call(method="HEAD")))
    assert not _allowed(reads, View(_call(method="PUT")))
    deny_writes = "action: DENY\nrules: [{to: [{operation: {notMethods: [GET]}}]}]"
    assert _allowed(deny_writes, View(_call(method="GET")))
    assert not _allowed(deny_writes, View(_call(method="POST")))


def test_not_paths() -> None:
    spec = 'rules: [{to: [{operation: {notPaths: ["/admin*", "/internal/{**}"]}}]}]'
    assert _allowed(spec, View(_call("/api/items")))
    for path in ("/admin", "/admin/users", "/internal/a/b"):
        assert not _allowed(spec, View(_call(path))), path


def _deny_by_target_ref(target_ref: str, namespace: str = "default") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: p, namespace: {namespace}}}\n"
        f"spec:\n  targetRef: {target_ref}\n  action: DENY\n  rules: [{{}}]\n"
    )


def _denied(text: str, service: str, namespace: str = "default") -> bool:
    snapshot = compile_snapshot(1, [item.resource for item in load_text(text)])
    authorizer = snapshot.security_for(namespace, {"app": service}).authorizer
    return authorizer is not None and authorizer.denied_by(View(_call())) is not None


def test_target_ref_names_a_service_of_the_policys_namespace() -> None:
    named = _deny_by_target_ref('{group: "", kind: Service, name: reviews}')
    assert _denied(named, "reviews")
    assert not _denied(named, "ratings")
    assert not _denied(named, "reviews", namespace="prod")  # a Service of the policy's namespace
    own = _deny_by_target_ref("{group: core, kind: Service, name: reviews, namespace: default}")
    assert _denied(own, "reviews")
    assert not _denied(own, "ratings")
    with pytest.raises(ConfigError) as refused:  # Istio refuses a reference into another namespace
        load_text(_deny_by_target_ref("{kind: Service, name: reviews, namespace: prod}"), "policy.yaml")
    assert "spec.targetRef.namespace: 'prod' is another namespace" in str(refused.value)


@pytest.mark.parametrize(
    "target_ref",
    [
        '{group: "", kind: Gateway, name: reviews}',
        "{group: gateway.networking.k8s.io, kind: Service, name: reviews}",
    ],
)
def test_target_ref_kind_and_group_must_be_a_core_service(target_ref: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_text(_deny_by_target_ref(target_ref), "policy.yaml")
    assert "spec.targetRef.kind: targetRef" in str(refused.value)
    assert "is not supported: meshlib has no gateways or waypoints" in str(refused.value)


def test_custom_action_asks_the_provider_the_policy_names(tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext}\n"
        "spec:\n  action: CUSTOM\n  provider: {name: ext-authz}\n  rules: [{}]\n"
    )
    asked: list[str] = []

    def provider(name: str, verdict: bool) -> Any:
        def check(_: object) -> bool:
            asked.append(name)
            return verdict

        return check

    with Mesh("reviews", config=config) as mesh:
        mesh.authorization_providers["other"] = provider("other", True)
        assert asgi_through_mesh(mesh)[0] == 403, "another provider is never asked: fails closed"
        mesh.authorization_providers["ext-authz"] = provider("ext-authz", False)
        assert asgi_through_mesh(mesh)[0] == 403
        mesh.authorization_providers["ext-authz"] = provider("ext-authz", True)
        assert asgi_through_mesh(mesh)[0] == 200
    assert asked == ["ext-authz", "ext-authz"]


# --- RequestAuthentication -----------------------------------------------------------------


class _SlowJwks(BaseHTTPRequestHandler):
    """A JWKS endpoint that takes 1 s to answer."""

    def do_GET(self) -> None:
        time.sleep(1.0)
        body = REMOTE_JWKS.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_jwks() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowJwks)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks"
    finally:
        server.shutdown()
        server.server_close()


def test_jwks_fetch_timeout_bounds_each_fetch(slow_jwks: str) -> None:
    """The rule's timeout is the fetch's: 300 ms is too short for a JWKS that takes 1 s, so
    its keys never arrive; Istio's default (5 s) waits for them."""

    def rule_for(issuer: str, timeout: str) -> str:
        return (
            f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {issuer}}}\n"
            f"spec:\n  jwtRules:\n  - issuer: https://{issuer}.example\n    jwksUri: {slow_jwks}?{issuer}\n"
            + timeout
        )

    short = load_text(rule_for("short", "    timeout: 300ms\n"))[0].resource
    default = load_text(rule_for("default", ""))[0].resource
    short_cache, default_cache = JwksCache(), JwksCache()

    async def main() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        for resource, cache in ((short, short_cache), (default, default_cache)):
            _, uris = compile_authenticator([resource], cache)
            cache.want(uris, loop)
        for _ in range(50):  # at most 2.5 s for the 1 s answer
            if default_cache.keys(f"{slow_jwks}?default") is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        found = (short_cache.keys(f"{slow_jwks}?short"), default_cache.keys(f"{slow_jwks}?default"))
        for cache in (short_cache, default_cache):
            cache.want({}, loop)
        await asyncio.sleep(0)  # the fetch tasks are cancelled
        return found

    short_keys, default_keys = asyncio.run(main())
    assert default_keys, "the default timeout waits for a JWKS that takes 1 s"
    assert short_keys is None, "each fetch gave up after 300 ms"


@pytest.mark.parametrize(
    "target",
    [
        'targetRef: {kind: Service, group: "", name: reviews}',
        "targetRefs: [{kind: Service, name: ratings}, {kind: Service, name: reviews, namespace: default}]",
    ],
)
def test_request_authentication_target_refs_name_the_services_it_applies_to(
    tmp_path: Path, target: str
) -> None:
    """A token no key of the rule signed is refused (401) where the rule applies: on the Service
    its targetRef names, in the policy's namespace; elsewhere it is not looked at."""
    config = tmp_path / "policy.yaml"
    config.write_text(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        "metadata: {name: jwt, namespace: default}\n"
        f"spec:\n  {target}\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{JWKS}'\n"
    )
    forged = [(b"authorization", f"Bearer {token(key=OTHER_KEY)}".encode())]
    cases = (("reviews", "default", 401), ("details", "default", 200), ("reviews", "prod", 200))
    for service, namespace, status in cases:
        with Mesh(service, namespace=namespace, config=config) as mesh:
            assert asgi_through_mesh(mesh, headers=forged)[0] == status, f"{namespace}/{service}"


def test_space_delimited_claims_are_matched_word_by_word(tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(
        f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{JWKS}'
    spaceDelimitedClaims: [roles]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: editors}}
spec:
  rules: [{{when: [{{key: "request.auth.claims[roles]", values: [editor]}}]}}]
"""
    )

    def status(roles: str) -> int:
        headers = [(b"authorization", f"Bearer {token(roles=roles)}".encode())]
        return asgi_through_mesh(mesh, headers=headers)[0]

    with Mesh("reviews", config=config) as mesh:
        assert status("viewer editor") == 200
        assert status("editor") == 200
        assert status("viewer editors") == 403
        assert status("viewer") == 403


# --- RateLimit -----------------------------------------------------------------------------


def test_tokens_per_fill_is_what_each_fill_adds() -> None:
    spec = "limits: [{tokenBucket: {maxTokens: 4, tokensPerFill: 1, fillInterval: 1s}}]"
    limiter = compile_rate_limiter([item.resource for item in load_text(rate_limit("one", spec))], None)
    assert limiter is not None
    view = View(_call())

    def taken(now: float) -> int:
        count = 0
        while limiter.check(view, now) is None:
            count += 1
            assert count <= 4
        return count

    assert taken(100.0) == 4  # the bucket starts full
    assert taken(101.0) == 1  # one fill: one token, not maxTokens
    assert taken(103.5) == 2  # two more fills
    assert taken(200.0) == 4  # never above maxTokens


def test_rate_limit_selector_limits_the_workloads_it_selects(tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(
        rate_limit(
            "reviews-v1",
            "selector: {matchLabels: {app: reviews, version: v1}}\n"
            "limits: [{tokenBucket: {maxTokens: 1, fillInterval: 1h}}]",
        )
    )
    for service, version, limited in (
        ("reviews", "v1", True),
        ("reviews", "v2", False),
        ("ratings", "v1", False),
    ):
        with Mesh(service, labels={"version": version}, config=config) as mesh:
            statuses = [asgi_through_mesh(mesh)[0] for _ in range(3)]
        assert statuses == ([200, 429, 429] if limited else [200, 200, 200]), (service, version)
