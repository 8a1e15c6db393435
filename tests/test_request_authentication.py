"""RequestAuthentication over real connections on the four servers: every way a JWT can be
wrong is a 401 (gRPC UNAUTHENTICATED) before the application runs; no token means no request
principal; a jwksUri is fetched in the background from a real HTTP server, and one that
hangs never stalls a request. The outputs for the application (token removed, payload and
claims as headers) are checked on the middleware directly."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import meshlib
from meshlib import Mesh
from tests.four_servers import SERVERS
from tests.servers import asgi_through_mesh
from tests.test_authorization import World, policy, world  # noqa: F401 - the module's servers

ISSUER = "https://issuer.example"
REMOTE = "https://remote.example"
HANGING = "https://hanging.example"
GRPC = "/test.Probe/Call"

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwk(public: Any, kid: str, algorithm: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(public))
    jwk["kid"] = kid
    return jwk


JWKS = json.dumps(
    {"keys": [_jwk(KEY.public_key(), "k1", RSAAlgorithm), _jwk(EC_KEY.public_key(), "e1", ECAlgorithm)]}
)


def token(
    issuer: str = ISSUER, key: Any = KEY, alg: str = "RS256", kid: str | None = "k1", **claims: Any
) -> str:
    now = int(time.time())
    payload = {"iss": issuer, "sub": "alice", "aud": "orders", "iat": now, "exp": now + 600, **claims}
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _unsigned(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "alice", "aud": "orders", "exp": now + 600, **claims}
    encode = lambda part: base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{encode({'alg': 'none', 'typ': 'JWT'})}.{encode(payload)}."


def _hs256_with_public_key() -> str:
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    header = {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    payload = {"iss": ISSUER, "sub": "alice", "aud": "orders", "exp": now + 600}
    import hashlib
    import hmac

    encode = lambda part: base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")  # noqa: E731
    signing = encode(header) + b"." + encode(payload)
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing, hashlib.sha256).digest()).rstrip(b"=")
    return (signing + b"." + signature).decode()


class _Jwks(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = REMOTE_JWKS.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


REMOTE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
REMOTE_JWKS = json.dumps({"keys": [_jwk(REMOTE_KEY.public_key(), "r1", RSAAlgorithm)]})


@pytest.fixture(scope="module")
def jwks_servers() -> Iterator[tuple[str, str]]:
    """A JWKS endpoint that answers, and one that accepts connections and never answers."""
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)
    try:
        yield f"http://127.0.0.1:{http.server_port}/jwks", f"http://127.0.0.1:{hanging.getsockname()[1]}/jwks"
    finally:
        http.shutdown()
        http.server_close()
        hanging.close()


def _request_authentication(remote: str, hanging: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    audiences: [orders]
    jwks: '{JWKS}'
  - issuer: {REMOTE}
    jwksUri: {remote}
  - issuer: {HANGING}
    jwksUri: {hanging}
    timeout: 0.5s
---
"""


@pytest.fixture
def jwt_world(world: World, jwks_servers: tuple[str, str]) -> World:  # noqa: F811
    world.policies(_request_authentication(*jwks_servers))
    return world


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


BAD_TOKENS = {
    "expired": lambda: token(exp=int(time.time()) - 3600),
    "not yet valid": lambda: token(nbf=int(time.time()) + 3600),
    "wrong issuer": lambda: token(issuer="https://evil.example"),
    "wrong audience": lambda: token(aud="billing"),
    "bad signature": lambda: token(key=OTHER_KEY),
    "alg none": _unsigned,
    "HS256 signed with the public key": _hs256_with_public_key,
    "unknown kid": lambda: token(kid="k9"),
    "garbage": lambda: "garbage",
    "EC key named for an RSA kid": lambda: token(key=EC_KEY, alg="ES256", kid="k1"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_every_bad_token_is_refused_on_every_server(jwt_world: World, case: str) -> None:
    bad = BAD_TOKENS[case]()
    got = [jwt_world.verdict(kind, "frontend", GRPC, _bearer(bad)) for kind in SERVERS]
    assert got == ["unauthenticated"] * 4, case


def test_good_tokens_and_no_token(jwt_world: World) -> None:
    good = [token(), token(key=EC_KEY, alg="ES256", kid="e1"), token(kid=None)]
    for kind in SERVERS:
        for value in good:
            assert jwt_world.verdict(kind, "frontend", GRPC, _bearer(value)) == "allow", kind
        assert jwt_world.verdict(kind, "frontend", GRPC) == "allow", f"{kind}: no token, no policy: allowed"
    status, body = jwt_world.http("asgi", "frontend", "/x", _bearer("garbage"))
    assert status == 401
    assert body == b"Jwt is not in the form of Header.Payload.Signature\n"


def test_request_principals_and_claims_in_policies(jwt_world: World, jwks_servers: tuple[str, str]) -> None:
    jwt_world.policies(
        _request_authentication(*jwks_servers)
        + policy("require-jwt", f'rules: [{{from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]}}]')
        + policy(
            "no-interns",
            """
action: DENY
rules: [{when: [{key: "request.auth.claims[role]", values: [intern]}]}]
""",
        )
    )
    for kind in SERVERS:
        assert jwt_world.verdict(kind, "frontend", GRPC) == "deny", f"{kind}: no token, no principal"
        assert jwt_world.verdict(kind, "frontend", GRPC, _bearer(token())) == "allow", kind
        assert jwt_world.verdict(kind, "frontend", GRPC, _bearer(token(role="intern"))) == "deny", kind


def test_jwks_uri_is_fetched_in_the_background_and_a_hanging_one_stalls_nothing(jwt_world: World) -> None:
    remote = token(issuer=REMOTE, key=REMOTE_KEY, kid="r1", aud="anything")
    deadline = time.monotonic() + 10
    while jwt_world.verdict("asgi", "frontend", "/x", _bearer(remote)) != "allow":
        assert time.monotonic() < deadline, "the jwksUri keys never arrived"
        time.sleep(0.1)
    for kind in SERVERS:
        assert jwt_world.verdict(kind, "frontend", GRPC, _bearer(remote)) == "allow", kind
    hanging = token(issuer=HANGING, kid="h1")
    for kind in SERVERS:
        started = time.monotonic()
        assert jwt_world.verdict(kind, "frontend", GRPC, _bearer(hanging)) == "unauthenticated", kind
        assert jwt_world.verdict(kind, "frontend", GRPC, _bearer(token())) == "allow", kind
        took = time.monotonic() - started
        assert took < 1.0, f"{kind}: {took:.2f}s: a request waited for the hanging JWKS (0.5 s timeout)"
    _, body = jwt_world.http("wsgi", "frontend", "/x", _bearer(hanging))
    assert body == b"Jwks remote fetch is failed\n"


OUTPUTS = f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{JWKS}'
    fromHeaders: [{{name: x-jwt, prefix: "Token "}}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}, {{header: x-level, claim: level}}]
  - issuer: {REMOTE}
    jwks: '{REMOTE_JWKS}'
    forwardOriginalToken: true
"""


@pytest.fixture(scope="module")
def outputs_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    config: Path = tmp_path_factory.mktemp("jwt") / "policy.yaml"
    config.write_text(OUTPUTS)
    with Mesh("reviews", config=config) as mesh:
        yield mesh


def _asgi(mesh: Mesh, headers: dict[str, str], query: str = "") -> tuple[int, dict[str, str]]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    status, scope = asgi_through_mesh(mesh, headers=raw, query=query.encode())
    return status, {k.decode(): v.decode() for k, v in scope.get("headers", [])}


def test_outputs_for_the_application(outputs_mesh: Mesh) -> None:
    status, seen = _asgi(outputs_mesh, {"X-Jwt": f"Token {token(level=3)}"})
    assert status == 200
    assert "x-jwt" not in seen, "the token is removed unless forwardOriginalToken"
    assert seen["x-sub"] == "alice"
    assert seen["x-level"] == "3"
    padded = seen["x-jwt-payload"] + "=" * (-len(seen["x-jwt-payload"]) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded))["sub"] == "alice"
    # Another place the rule names; a spoofed output header is replaced, not kept.
    status, seen = _asgi(outputs_mesh, {"X-Sub": "mallory"}, query=f"token={token()}")
    assert (status, seen["x-sub"]) == (200, "alice")
    status, seen = _asgi(outputs_mesh, {"Cookie": f"session={token()}; other=1"})
    assert (status, seen["x-sub"]) == (200, "alice")
    # Authorization: Bearer is the other rule's place (it names none): that rule's issuer
    # does not match, so the token fails there, as with Envoy's per-provider extraction.
    status, seen = _asgi(outputs_mesh, _bearer(token()))
    assert status == 401
    assert seen == {}
    remote = token(issuer=REMOTE, key=REMOTE_KEY, kid="r1")
    status, seen = _asgi(outputs_mesh, _bearer(remote))
    assert status == 200
    assert seen["authorization"] == f"Bearer {remote}", "forwardOriginalToken keeps it"


def test_a_wsgi_app_gets_the_same_outputs(outputs_mesh: Mesh) -> None:
    import io

    seen: dict[str, Any] = {}

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "reviews",
        "SERVER_PORT": "80",
        "HTTP_X_JWT": f"Token {token()}",
        "HTTP_X_SUB": "mallory",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    meshlib.wsgi.MeshMiddleware(app, outputs_mesh)(environ, lambda s, h, *_: statuses.append(s))
    assert statuses == ["200 OK"]
    assert "HTTP_X_JWT" not in seen
    assert seen["HTTP_X_SUB"] == "alice"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{issuer: https://a.example}", "set jwks or jwksUri"),
        ("{issuer: https://a.example, jwks: '{\"nokeys\": 1}'}", "not a JWKS document"),
        ("{issuer: https://a.example, jwksUri: ftp://a.example/k}", "not an http(s) URL"),
    ],
)
def test_rules_meshlib_cannot_enforce_are_refused(rule: str, message: str) -> None:
    from meshlib.errors import ConfigError
    from meshlib.policy.loader import load_text

    text = (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\n"
        f"spec:\n  jwtRules: [{rule}]\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_text(text, "ra.yaml")
    assert message in str(refused.value)
