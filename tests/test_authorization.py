"""AuthorizationPolicy over real connections on every server meshlib serves on (uvicorn for
ASGI, cheroot for WSGI, grpc, grpc.aio), each serving mutual TLS with an identity from the
real CA. Callers: frontend and ratings (mesh identities), and a plaintext caller where the
server takes plaintext (PERMISSIVE, HTTP servers only: a gRPC port with an identity is
mTLS-only). HTTP requests go out on raw sockets so the target is exactly what is written
(no client tidies ``/./admin``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.authz import AuthorizationCheck
from meshlib.policy.resources import ResourceKey
from tests.four_servers import NOT_SERVED, SERVERS, grpc_channel

FRONTEND = "cluster.local/ns/default/sa/frontend"
RATINGS = "cluster.local/ns/default/sa/ratings"
HTTP_KINDS = ("asgi", "wsgi")


class World:
    """reviews serving on all four servers; frontend and ratings calling."""

    def __init__(self, admin: ControlPlaneClient, reviews: Mesh, callers: dict[str, Mesh]) -> None:
        self.admin = admin
        self.reviews = reviews
        self.callers = callers
        self.ports: dict[str, int] = {}
        self.applied: list[ResourceKey] = []
        self._channels: dict[tuple[str, str], grpc.Channel] = {}

    def policies(self, text: str) -> None:
        """Replace every policy of the previous case by these (YAML documents), then wait."""
        version = 0
        for key in self.applied:
            version = self.admin.delete(key)["version"]
        manifests = [m for m in yaml.safe_load_all(text) if m]
        self.applied = [
            ResourceKey(m["kind"], m["metadata"].get("namespace", "default"), m["metadata"]["name"])
            for m in manifests
        ]
        if manifests:
            version = self.admin.apply(manifests)["version"]
        assert self.reviews.wait_for_version(version, 10), "the policy never reached the server"

    def http(
        self,
        kind: str,
        caller: str | None,
        target: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> tuple[int, bytes]:
        """One request with ``target`` exactly as written; the status and the body."""
        lines = [f"{method} {target} HTTP/1.1", "Connection: close"]
        fields = {"Host": "reviews.default.svc.cluster.local", **(headers or {})}
        lines += [f"{k}: {v}" for k, v in fields.items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock = socket.create_connection(("127.0.0.1", self.ports[kind]), timeout=10)
        if caller is not None:
            identity = self.callers[caller].workload_identity
            assert identity is not None
            sock = identity.client_context().wrap_socket(sock)
        with sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def grpc(self, kind: str, caller: str, method: str, metadata: dict[str, str] | None = None) -> str:
        key = (kind, caller)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = grpc_channel(self.callers[caller], self.ports[kind])
        try:
            channel.unary_unary(method)(b"x", metadata=tuple((metadata or {}).items()), timeout=10)
        except grpc.RpcError as error:
            return str(error.code().name)
        return "OK"

    def verdict(
        self,
        kind: str,
        caller: str | None,
        path: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> str:
        """allow / deny (or what else came back), the same words for HTTP and gRPC."""
        if kind in HTTP_KINDS:
            status, _ = self.http(kind, caller, path, headers, method)
            return {200: "allow", 403: "deny", 401: "unauthenticated"}.get(status, str(status))
        assert caller is not None
        code = self.grpc(kind, caller, path, {k.lower(): v for k, v in (headers or {}).items()})
        return {"OK": "allow", "PERMISSION_DENIED": "deny", "UNAUTHENTICATED": "unauthenticated"}.get(
            code, code
        )

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("authz")
    with ConfigServer(tmp / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:
        meshes = {
            name: Mesh(
                name, control_plane=server.url, token=admin.create_token(name)["token"], data_dir=tmp / name
            )
            for name in ("reviews", "frontend", "ratings")
        }
        for mesh in meshes.values():
            mesh.start()
        reviews = meshes.pop("reviews")
        world = World(admin, reviews, meshes)
        running = []
        try:
            for kind, serve in SERVERS.items():
                serving = serve(reviews, [])
                world.ports[kind] = next(serving)
                running.append(serving)
            yield world
        finally:
            world.close()
            for serving in running:
                next(serving, None)
            for mesh in (reviews, *meshes.values()):
                mesh.close()


def policy(name: str, spec: str, namespace: str = "default") -> str:
    indented = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{indented}\n---\n"
    )


GRPC = "/test.Probe/Call"

# (case, policies, [(caller, path or gRPC method, headers, expected verdict)], servers)
# Istio's documented examples and the shapes around them.
CASES: list[tuple[str, str, list[tuple[str | None, str, dict[str, str], str]], tuple[str, ...]]] = [
    (
        "no policy: everything allowed",
        "",
        [("frontend", GRPC, {}, "allow"), ("ratings", GRPC, {}, "allow")],
        tuple(SERVERS),
    ),
    (
        "deny-all: DENY rules [{}]",
        policy("deny-all", "action: DENY\nrules: [{}]"),
        [("frontend", GRPC, {}, "deny"), ("ratings", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "allow-nothing: spec {}",
        policy("allow-nothing", "{}"),
        [("frontend", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "allow-all: ALLOW rules [{}]",
        policy("allow-all", "rules: [{}]"),
        [("frontend", GRPC, {}, "allow")],
        tuple(SERVERS),
    ),
    (
        "ALLOW by principal and path prefix",
        policy(
            "frontend-only",
            f"""
action: ALLOW
rules:
- from: [{{source: {{principals: ["{FRONTEND}"]}}}}]
  to: [{{operation: {{methods: [POST, GET], paths: ["/test.Probe/*"]}}}}]
""",
        ),
        [
            ("frontend", GRPC, {}, "allow"),
            ("ratings", GRPC, {}, "deny"),
            ("frontend", "/other.Svc/Call", {}, "deny"),
        ],
        tuple(SERVERS),
    ),
    (
        "DENY notPrincipals",
        policy(
            "only-frontend",
            f"""
action: DENY
rules: [{{from: [{{source: {{notPrincipals: ["{FRONTEND}"]}}}}]}}]
""",
        ),
        [("frontend", GRPC, {}, "allow"), ("ratings", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "ALLOW serviceAccounts and namespaces",
        policy(
            "by-account",
            """
rules:
- from: [{source: {serviceAccounts: ["default/ratings"]}}]
- from: [{source: {namespaces: ["prod"]}}]
""",
        ),
        [("ratings", GRPC, {}, "allow"), ("frontend", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "DENY on a header (gRPC metadata)",
        policy(
            "bad-token",
            """
action: DENY
rules: [{when: [{key: "request.headers[x-token]", values: ["bad*"]}]}]
""",
        ),
        [
            ("frontend", GRPC, {"X-Token": "bad-one"}, "deny"),
            ("frontend", GRPC, {"X-Token": "good"}, "allow"),
            ("frontend", GRPC, {}, "allow"),
        ],
        tuple(SERVERS),
    ),
    (
        "when source.ip / remote.ip CIDRs",
        policy(
            "from-loopback",
            """
rules: [{when: [{key: source.ip, values: ["127.0.0.0/8"]}, {key: remote.ip, notValues: ["10.0.0.0/8"]}]}]
""",
        ),
        [("frontend", GRPC, {}, "allow")],
        tuple(SERVERS),
    ),
    (
        "ipBlocks elsewhere: denied",
        policy("from-ten", "rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]"),
        [("frontend", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "ALLOW source.principal in when",
        policy(
            "when-principal",
            f"""
rules: [{{when: [{{key: source.principal, values: ["{RATINGS}"]}}]}}]
""",
        ),
        [("ratings", GRPC, {}, "allow"), ("frontend", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "AUDIT decides nothing",
        policy("audit-all", "action: AUDIT\nrules: [{}]"),
        [("frontend", GRPC, {}, "allow")],
        tuple(SERVERS),
    ),
    (
        "DENY beats ALLOW",
        policy("allow-all", "rules: [{}]")
        + policy(
            "deny-ratings",
            f"""
action: DENY
rules: [{{from: [{{source: {{principals: ["{RATINGS}"]}}}}]}}]
""",
        ),
        [("frontend", GRPC, {}, "allow"), ("ratings", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "root namespace: mesh-wide",
        policy("mesh-deny", "action: DENY\nrules: [{}]", namespace="istio-system"),
        [("frontend", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "another namespace: not ours",
        policy("prod-deny", "action: DENY\nrules: [{}]", namespace="prod"),
        [("frontend", GRPC, {}, "allow")],
        tuple(SERVERS),
    ),
    (
        "selector that does not select us",
        policy(
            "ratings-deny",
            """
selector: {matchLabels: {app: ratings}}
action: DENY
rules: [{}]
""",
        ),
        [("frontend", GRPC, {}, "allow")],
        tuple(SERVERS),
    ),
    (
        "targetRef to our Service",
        policy(
            "target-us",
            """
targetRefs: [{kind: Service, group: "", name: reviews}]
action: DENY
rules: [{}]
""",
        ),
        [("frontend", GRPC, {}, "deny")],
        tuple(SERVERS),
    ),
    (
        "targetRef to another Service",
        policy(
            "target-them",
            """
targetRefs: [{kind: Service, group: "", name: ratings}]
action: DENY
rules: [{}]
""",
        ),
        [("frontend", GRPC, {}, "allow")],
        tuple(SERVERS),
    ),
    # HTTP-only shapes: hosts (grpcio does not expose :authority to servers), methods, raw paths.
    (
        "hosts: case-insensitive, with or without port",
        policy(
            "by-host",
            """
rules: [{to: [{operation: {hosts: ["reviews.default.svc.cluster.local"]}}]}]
""",
        ),
        [
            ("frontend", "/x", {"Host": "Reviews.Default.SVC.cluster.local:9080"}, "allow"),
            ("frontend", "/x", {"Host": "evil.example"}, "deny"),
        ],
        HTTP_KINDS,
    ),
    (
        "path templates",
        policy(
            "templates",
            """
rules: [{to: [{operation: {paths: ["/api/{*}/items", "/files/{**}"]}}]}]
""",
        ),
        [
            ("frontend", "/api/a/items", {}, "allow"),
            ("frontend", "/api/a/b/items", {}, "deny"),
            ("frontend", "/api//items", {}, "deny"),
            ("frontend", "/files/a/b/c.txt", {}, "allow"),
            ("frontend", "/api/a/items?x=1", {}, "allow"),
        ],
        HTTP_KINDS,
    ),
    (
        "exact path ignores the query (CVE-2020-8595)",
        policy(
            "exact",
            """
action: DENY
rules: [{to: [{operation: {paths: ["/admin"]}}]}]
""",
        ),
        [("frontend", "/admin?x=1", {}, "deny"), ("frontend", "/admin/", {}, "allow")],
        HTTP_KINDS,
    ),
    (
        "plaintext never satisfies principals (PERMISSIVE)",
        policy(
            "any-principal",
            """
rules: [{from: [{source: {principals: ["*"]}}]}]
""",
        ),
        [(None, "/x", {}, "deny"), ("frontend", "/x", {}, "allow")],
        HTTP_KINDS,
    ),
    (
        "plaintext always satisfies notPrincipals / notNamespaces in a DENY",
        policy(
            "deny-strangers",
            f"""
action: DENY
rules:
- from: [{{source: {{notPrincipals: ["{FRONTEND}", "{RATINGS}"]}}}}]
- from: [{{source: {{notNamespaces: ["default"]}}}}]
""",
        ),
        [(None, "/x", {}, "deny"), ("frontend", "/x", {}, "allow")],
        HTTP_KINDS,
    ),
    (
        "methods",
        policy("get-only", "rules: [{to: [{operation: {methods: [GET]}}]}]"),
        [("frontend", "/x", {}, "allow")],
        HTTP_KINDS,
    ),
]

# Each must be denied by a DENY on /admin*: Istio's bypass classes (CVE-2019-9901 dot
# segments, CVE-2021-31920 escaped slashes and backslashes, CVE-2021-39156 fragments).
BYPASSES = [
    "/admin",
    "/admin/users",
    "//admin",
    "///admin/x",
    "/./admin",
    "/x/../admin",
    "/x/%2e%2e/admin",
    "/%2e/admin",
    "/%61dmin",
    "/%61%64min",
    "/x%2F..%2Fadmin",
    "/x%5C..%5Cadmin",
    "/x\\..\\admin",
    "/admin#x",
    "/admin?x",
    "/x/.%2e/admin",
    "/a/b/../../admin/",
]


@pytest.mark.parametrize(("case", "policies", "requests", "kinds"), CASES, ids=[c[0] for c in CASES])
def test_istio_examples_on_every_server(
    world: World,
    case: str,
    policies: str,
    requests: list[tuple[str | None, str, dict[str, str], str]],
    kinds: tuple[str, ...],
) -> None:
    world.policies(policies)
    got = {
        kind: [world.verdict(kind, caller, path, headers) for caller, path, headers, _ in requests]
        for kind in kinds
    }
    expected = [verdict for *_, verdict in requests]
    assert got == dict.fromkeys(kinds, expected), case


def test_path_bypasses_are_denied_and_the_application_sees_the_normalized_path(world: World) -> None:
    world.policies(policy("deny-admin", 'action: DENY\nrules: [{to: [{operation: {paths: ["/admin*"]}}]}]'))
    # cheroot itself refuses two of them before any application runs.
    by_cheroot = {"//admin": b"Absolute URI not allowed", "/admin#x": b"Illegal #fragment"}
    for kind in HTTP_KINDS:
        for target in BYPASSES:
            status, body = world.http(kind, "frontend", target)
            if kind == "wsgi" and target in by_cheroot:
                assert (status, body.startswith(by_cheroot[target])) == (400, True), target
            else:
                assert (status, body) == (403, b"RBAC: access denied\n"), f"{kind} {target!r}"
        # Not under /admin once normalized: served, and the application sees that same path.
        for target, seen in [
            ("/x/./y//z", b"/x/y/z"),
            ("/%61pi/../info", b"/info"),
            ("/a%2Fb", b"/a/b"),
            ("/ADMIN", b"/ADMIN"),
            ("/admi", b"/admi"),
            ("/x/%252e%252e/admin", b"/x/%2e%2e/admin"),
        ]:
            status, body = world.http(kind, "frontend", target)
            assert (status, body) == (200, seen), f"{kind} {target!r}"


def test_unnormalizable_paths_get_400_before_any_policy(world: World) -> None:
    world.policies(policy("allow-all", "rules: [{}]"))
    for kind in HTTP_KINDS:
        for target in ("/a%00b", "/a%4", "/a%zzb", "/a%1fb"):
            status, body = world.http(kind, "frontend", target)
            assert status == 400, f"{kind} {target!r}: {status} {body!r}"
            assert b"bad request path" in body


def test_custom_provider_is_asked_and_fails_closed(world: World) -> None:
    asked: list[AuthorizationCheck] = []

    def provider(check: AuthorizationCheck) -> bool:
        asked.append(check)
        return check.call.header("x-ext") != "deny"

    world.reviews.authorization_providers["ext"] = provider
    try:
        world.policies(policy("ext", "action: CUSTOM\nprovider: {name: ext}\nrules: [{}]"))
        for kind in SERVERS:
            assert world.verdict(kind, "frontend", GRPC) == "allow", kind
            assert world.verdict(kind, "frontend", GRPC, {"X-Ext": "deny"}) == "deny", kind
        assert {c.policy for c in asked} == {"default/ext"}
        assert {str(c.peer) for c in asked} == {f"spiffe://{FRONTEND}"}
        # A provider that raises, or none under that name: denied (Envoy fails closed by default).
        world.reviews.authorization_providers["ext"] = lambda check: 1 / 0  # type: ignore[arg-type,misc]
        assert [world.verdict(kind, "frontend", GRPC) for kind in SERVERS] == ["deny"] * 4
        del world.reviews.authorization_providers["ext"]
        assert [world.verdict(kind, "frontend", GRPC) for kind in SERVERS] == ["deny"] * 4
    finally:
        world.reviews.authorization_providers.pop("ext", None)


def test_async_provider_on_asyncio_servers(world: World) -> None:
    async def provider(check: AuthorizationCheck) -> bool:
        return check.call.header("x-ext") == "yes"

    world.reviews.authorization_providers["ext"] = provider
    try:
        world.policies(policy("ext", "action: CUSTOM\nprovider: {name: ext}\nrules: [{}]"))
        for kind in ("asgi", "aio"):
            assert world.verdict(kind, "frontend", GRPC, {"X-Ext": "yes"}) == "allow", kind
            assert world.verdict(kind, "frontend", GRPC, {"X-Ext": "no"}) == "deny", kind
        # Blocking servers cannot await it: denied, and said in the log.
        assert world.verdict("wsgi", "frontend", GRPC, {"X-Ext": "yes"}) == "deny"
        assert world.verdict("grpc", "frontend", GRPC, {"X-Ext": "yes"}) == "deny"
    finally:
        world.reviews.authorization_providers.pop("ext", None)


def test_a_denial_is_generic_named_in_metrics_and_flagged(world: World) -> None:
    world.policies(policy("deny-all", "action: DENY\nrules: [{}]"))
    before = world.reviews.metrics.denials().get("default/deny-all", 0)
    status, body = world.http("asgi", "frontend", "/x")
    assert (status, body) == (403, b"RBAC: access denied\n")
    assert world.grpc("grpc", "frontend", GRPC) == "PERMISSION_DENIED"
    assert world.reviews.metrics.denials()["default/deny-all"] == before + 2
    fqdn = "reviews.default.svc.cluster.local"
    assert world.reviews.metrics.requests_total(fqdn, 403, flags="RBAC", direction="inbound") >= 2
    world.reviews.reveal_denials = True
    try:
        status, body = world.http("wsgi", "frontend", "/x")
        assert (status, body) == (403, b"RBAC: access denied (denied by default/deny-all)\n")
    finally:
        world.reviews.reveal_denials = False
    world.policies(policy("allow-nothing", "{}"))
    _, body = world.http("asgi", "frontend", "/x")
    assert body == b"RBAC: access denied\n"
    assert world.reviews.metrics.denials().get("none", 0) >= 1


def test_probes_answer_whatever_the_policy(world: World) -> None:
    world.policies(policy("deny-all", "action: DENY\nrules: [{}]"))
    for kind in HTTP_KINDS:
        assert world.http(kind, "frontend", "/.well-known/meshlib/live")[0] == 200


def test_a_policy_change_applies_to_the_next_request(world: World) -> None:
    world.policies(policy("allow-all", "rules: [{}]"))
    assert world.verdict("aio", "frontend", GRPC) == "allow"
    started = time.monotonic()
    world.policies(policy("deny-all", "action: DENY\nrules: [{}]"))
    assert world.verdict("aio", "frontend", GRPC) == "deny"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("kind", ["grpc", "aio"])
def test_a_grpc_method_nothing_serves_is_refused_by_policy_before_unimplemented(
    world: World, kind: str
) -> None:
    # Behind Envoy's RBAC a refused caller is denied whatever the method: it cannot learn which
    # methods the server has. Allowed, the call gets grpc's own UNIMPLEMENTED; both are counted.
    missing = f"/test.Probe{NOT_SERVED}"
    fqdn = "reviews.default.svc.cluster.local"
    world.policies(policy("frontend-only", f"rules: [{{from: [{{source: {{principals: [{FRONTEND}]}}}}]}}]"))
    before = world.reviews.metrics.requests_total(fqdn, 403, flags="RBAC", direction="inbound")
    assert world.grpc(kind, "ratings", missing) == "PERMISSION_DENIED"
    assert world.grpc(kind, "ratings", GRPC) == "PERMISSION_DENIED"
    assert world.reviews.metrics.requests_total(fqdn, 403, flags="RBAC", direction="inbound") == before + 2
    unimplemented = world.reviews.metrics.requests_total(fqdn, direction="inbound")
    assert world.grpc(kind, "frontend", missing) == "UNIMPLEMENTED"
    assert world.reviews.metrics.requests_total(fqdn, direction="inbound") == unimplemented + 1
    streaming = world._channels[(kind, "frontend")].stream_stream(missing)
    with pytest.raises(grpc.RpcError) as raised:  # a streaming call: the same answer
        list(streaming(iter([b"a", b"b"]), timeout=10))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details() == "Method not found!"
    assert world.grpc(kind, "frontend", GRPC) == "OK"  # the method that exists is served as before
