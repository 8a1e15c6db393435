"""The AuthorizationPolicy engine on its own (what real connections cannot reach yet: the
JWT attributes) and validation: every field either enforced or refused with a reason."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshlib.core.authz import RequestAuth
from meshlib.core.call import Call
from meshlib.core.snapshot import compile_snapshot
from meshlib.errors import ConfigError
from meshlib.peer import PeerIdentity
from meshlib.policy.loader import load_text


@dataclass
class View:
    call: Call
    peer: PeerIdentity | None = None
    source_ip: str | None = "127.0.0.1"
    destination_ip: str | None = "127.0.0.1"
    sni: str | None = None
    request_auth: RequestAuth | None = None


def _call(
    path: str = "/", method: str = "GET", headers: dict[str, str] | None = None, port: int = 8080
) -> Call:
    found = {k.lower(): v for k, v in (headers or {}).items()}
    return Call(method=method, scheme="http", host="", port=port, path=path, query="", header=found.get)


def _authorizer(spec: str):  # type: ignore[no-untyped-def]
    text = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n"
        + "\n".join("  " + line for line in spec.strip().splitlines())
    )
    snapshot = compile_snapshot(1, [item.resource for item in load_text(text)])
    authorizer = snapshot.security_for("default", {"app": "reviews"}).authorizer
    assert authorizer is not None
    return authorizer


def _allowed(spec: str, view: View) -> bool:
    return _authorizer(spec).denied_by(view) is None


JWT = RequestAuth(
    principal="https://issuer.example/alice",
    audiences=("orders", "billing"),
    presenter="frontend-app",
    claims={
        "iss": "https://issuer.example",
        "sub": "alice",
        "groups": ["dev", "ops"],
        "org": {"team": "core"},
        "admin": True,
        "level": 3,
    },
)


@pytest.mark.parametrize(
    ("when", "auth", "allowed"),
    [
        ('{key: request.auth.principal, values: ["https://issuer.example/*"]}', JWT, True),
        ('{key: request.auth.principal, values: ["*"]}', None, False),
        ('{key: request.auth.audiences, values: ["billing"]}', JWT, True),
        ('{key: request.auth.audiences, values: ["shipping"]}', JWT, False),
        ('{key: request.auth.presenter, values: ["frontend-app"]}', JWT, True),
        ('{key: "request.auth.claims[groups]", values: ["ops"]}', JWT, True),
        ('{key: "request.auth.claims[groups]", notValues: ["ops"]}', JWT, False),
        ('{key: "request.auth.claims[org][team]", values: ["core"]}', JWT, True),
        ('{key: "request.auth.claims[org][team]", values: ["edge"]}', JWT, False),
        ('{key: "request.auth.claims[admin]", values: ["true"]}', JWT, True),
        ('{key: "request.auth.claims[level]", values: ["3"]}', JWT, True),
        ('{key: "request.auth.claims[missing]", values: ["*"]}', JWT, False),
        ('{key: "request.auth.claims[missing]", notValues: ["x"]}', JWT, True),
        ('{key: "request.auth.claims[groups]", values: ["dev"]}', None, False),
    ],
)
def test_jwt_attributes_in_when(when: str, auth: RequestAuth | None, allowed: bool) -> None:
    assert _allowed(f"rules: [{{when: [{when}]}}]", View(_call(), request_auth=auth)) is allowed


def test_request_principals_and_their_not_form() -> None:
    spec = 'rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]}]'
    assert _allowed(spec, View(_call(), request_auth=JWT))
    assert not _allowed(spec, View(_call()))  # no token: no request principal
    deny = 'action: DENY\nrules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]'
    assert not _allowed(deny, View(_call()))  # Istio's "require a JWT"
    assert _allowed(deny, View(_call(), request_auth=JWT))


def test_destination_port_ip_and_sni() -> None:
    spec = """rules: [{when: [{key: destination.port, values: ["8080"]},
  {key: destination.ip, values: ["127.0.0.0/8"]}, {key: connection.sni, values: ["*.svc.cluster.local"]}]}]"""
    view = View(_call(port=8080), sni="reviews.default.svc.cluster.local")
    assert _allowed(spec, view)
    assert not _allowed(spec, View(_call(port=9090), sni="reviews.default.svc.cluster.local"))
    assert not _allowed(spec, View(_call(port=8080)))  # no SNI
    assert _allowed('rules: [{to: [{operation: {notPorts: ["9090"]}}]}]', View(_call(port=8080)))


def test_ipv6_and_mapped_addresses() -> None:
    spec = 'rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8", "fd00::/8"]}}]}]'
    assert _allowed(spec, View(_call(), source_ip="::ffff:10.1.2.3"))
    assert _allowed(spec, View(_call(), source_ip="fd00::1"))
    assert not _allowed(spec, View(_call(), source_ip="192.168.1.1"))
    assert not _allowed(spec, View(_call(), source_ip=None))


def test_a_decision_allocates_nothing_it_does_not_need() -> None:
    authorizer = _authorizer('rules: [{to: [{operation: {paths: ["/api/*"], methods: ["GET"]}}]}]')
    view = View(_call("/api/x"))
    assert authorizer.denied_by(view) is None
    assert authorizer.denied_by(View(_call("/other"))) == ""


REFUSED = [
    ("rules: [{when: [{key: request.color, values: [red]}]}]", "unknown condition key"),
    (
        'rules: [{when: [{key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: [x]}]}]',
        "experimental",
    ),
    ("rules: [{when: [{key: source.ip, values: [not-an-ip]}]}]", "not an IP"),
    ("rules: [{when: [{key: destination.port, values: [http]}]}]", "not a port"),
    ("rules: [{from: [{source: {}}]}]", "empty source"),
    ("rules: [{to: [{operation: {}}]}]", "empty operation"),
    ('rules: [{to: [{operation: {paths: ["/a*b"]}}]}]', "only alone, as a prefix"),
    ('rules: [{to: [{operation: {paths: ["/a/{*}x"]}}]}]', "whole path segment"),
    ('rules: [{to: [{operation: {paths: ["/{**}/{**}"]}}]}]', "only one"),
    ('rules: [{to: [{operation: {paths: ["/a/{*}/b*"]}}]}]', "cannot also use"),
    ('rules: [{to: [{operation: {ports: ["0"]}}]}]', "not a port"),
    ('rules: [{from: [{source: {serviceAccounts: ["a/b/c"]}}]}]', "<namespace>/<serviceaccount>"),
    ('rules: [{from: [{source: {ipBlocks: ["300.1.1.1"]}}]}]', "not an IP"),
    ('rules: [{from: [{source: {principals: [""]}}]}]', "empty value"),
    ("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\nrules: [{}]", "no gateways"),
    ("action: CUSTOM\nrules: [{}]", "needs a provider"),
]


@pytest.mark.parametrize(("spec", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_validation_refuses_with_a_reason(spec: str, message: str) -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n"
        + "\n".join("  " + line for line in spec.splitlines())
    )
    with pytest.raises(ConfigError) as refused:
        load_text(text, "policy.yaml")
    assert message in str(refused.value)
    assert "policy.yaml" in str(refused.value)


def test_documented_when_keys_are_accepted() -> None:
    for key in (
        "request.headers[x-user]",
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "request.auth.claims[iss]",
        "request.auth.claims[a][b]",
        "destination.ip",
        "destination.port",
        "connection.sni",
    ):
        value = "10.0.0.1" if key.endswith(".ip") else "80" if key.endswith("port") else "x"
        _authorizer(f'rules: [{{when: [{{key: "{key}", values: ["{value}"]}}]}}]')


def test_service_accounts_without_a_namespace_and_trust_domains() -> None:
    peer = PeerIdentity.parse("spiffe://cluster.local/ns/default/sa/sleep")
    other = PeerIdentity.parse("spiffe://cluster.local/ns/prod/sa/sleep")
    spec = 'rules: [{from: [{source: {serviceAccounts: ["sleep"]}}]}]'  # the policy's namespace
    assert _allowed(spec, View(_call(), peer=peer))
    assert not _allowed(spec, View(_call(), peer=other))
    domains = 'rules: [{from: [{source: {trustDomains: ["cluster.*"], notTrustDomains: ["cluster.evil"]}}]}]'
    assert _allowed(domains, View(_call(), peer=peer))
    assert not _allowed(domains, View(_call(), peer=PeerIdentity.parse("spiffe://cluster.evil/ns/a/sa/b")))
    assert not _allowed(domains, View(_call()))
    when = 'rules: [{when: [{key: source.trustDomain, values: ["cluster.local"]}]}]'
    assert _allowed(when, View(_call(), peer=peer))
    assert not _allowed(when, View(_call()))


def test_a_double_star_template_in_the_middle() -> None:
    spec = 'rules: [{to: [{operation: {paths: ["/{**}/path/template", "/files/{**}"]}}]}]'
    assert _allowed(spec, View(_call("/a/b/path/template")))
    assert not _allowed(spec, View(_call("/path/template")))
    assert _allowed(spec, View(_call("/files/")))
    assert _allowed(spec, View(_call("/files/a/b")))
