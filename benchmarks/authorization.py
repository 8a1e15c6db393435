"""Authorization cost: one decision over 20 AuthorizationPolicies, and the ASGI middleware
with those policies against the same middleware with none.

Method: in-process (no sockets). The 20 policies are the shapes Istio users write — DENY on
paths, headers, principals and IP blocks that do not match, ALLOW rules by principal,
method, path prefix and templates, the matching one last — so every policy is evaluated.
A decision is timed against an empty loop of the same length; the middleware in rounds
alternating with the policy-free middleware; medians over rounds.

    .venv/bin/python benchmarks/authorization.py [--decisions 50000] [--requests 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section
from server_middleware import SCOPE, asgi_app, asgi_round

import meshlib
from meshlib.core.call import Call, RawHeaders
from meshlib.core.server_stack import Inbound
from meshlib.peer import PeerIdentity

PEER = PeerIdentity.parse("spiffe://cluster.local/ns/default/sa/frontend")


def policies() -> str:
    docs = []
    for i in range(10):
        rule = [
            f'{{to: [{{operation: {{paths: ["/admin{i}*"]}}}}]}}',
            f'{{when: [{{key: "request.headers[x-block-{i}]", values: ["*"]}}]}}',
            f'{{from: [{{source: {{principals: ["cluster.local/ns/evil/sa/bot{i}"]}}}}]}}',
            f'{{from: [{{source: {{ipBlocks: ["10.{i}.0.0/16"]}}}}]}}',
            f'{{to: [{{operation: {{methods: ["DELETE"], paths: ["/api/{i}/{{*}}"]}}}}]}}',
        ][i % 5]
        docs.append(_policy(f"deny-{i}", f"action: DENY\n  rules: [{rule}]"))
    for i in range(9):
        docs.append(
            _policy(
                f"allow-{i}",
                f"""rules:
  - from: [{{source: {{principals: ["cluster.local/ns/other/sa/s{i}"]}}}}]
    to: [{{operation: {{methods: ["GET"], paths: ["/svc{i}/*"]}}}}]""",
            )
        )
    docs.append(
        _policy(
            "allow-frontend",
            """rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}]
    to: [{operation: {methods: ["GET", "HEAD"], paths: ["/api/*"]}}]""",
        )
    )
    return "---\n".join(docs)


def _policy(name: str, spec: str) -> str:
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\n"
        f"spec:\n  {spec}\n"
    )


def _inbound(mesh: meshlib.Mesh) -> Inbound:
    call = Call("GET", "http", "127.0.0.1", 8080, "/api/reviews/42", "page=2", RawHeaders(SCOPE["headers"]))
    inbound = mesh.inbound(call, time.monotonic(), PEER)
    inbound.source_ip = "127.0.0.1"
    return inbound


TLS = {"tls": {"meshlib.peer_spiffe_id": str(PEER)}}


def _verified(app: Any) -> Any:
    """As meshlib's uvicorn protocol hands over a request from a verified mTLS peer."""

    async def with_peer(scope: Any, receive: Any, send: Any) -> None:
        scope["extensions"] = TLS
        await app(scope, receive, send)

    return with_peer


def _noop(_: object) -> None:
    return None


def decision_rounds(mesh: meshlib.Mesh, decisions: int, rounds: int) -> tuple[float, float]:
    authorizer = mesh.security.authorizer
    assert authorizer is not None
    inbound = _inbound(mesh)
    assert authorizer.denied_by(inbound) is None, "the request must be allowed by the last policy"
    costs, bases = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(decisions):
            _noop(inbound)
        base = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(decisions):
            authorizer.denied_by(inbound)
        costs.append((time.perf_counter() - started - base) / decisions * 1e6)
        bases.append(base / decisions * 1e6)
    return statistics.median(costs), statistics.median(bases)


def jwt_rounds(verifications: int, rounds: int) -> dict[str, float]:
    """µs per verification of one token with a cached key (RS256 2048-bit, ES256), and the cost
    of looking for a token that is not there."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    from meshlib.core.call import Call as _Call
    from meshlib.policy.loader import load_text
    from meshlib.request_authn import JwksCache, compile_authenticator

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, key, algorithm in (("r", rsa_key, RSAAlgorithm), ("e", ec_key, ECAlgorithm)):
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        jwk["kid"] = kid
        keys.append(jwk)
    text = (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\n"
        "spec:\n  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [orders]\n"
        f"    jwks: '{json.dumps({'keys': keys})}'\n"
    )
    resources = [item.resource for item in load_text(text)]
    authenticate, _ = compile_authenticator(resources, JwksCache())  # type: ignore[arg-type]
    assert authenticate is not None
    now = int(time.time())
    signers = {"RS256": (rsa_key, "r"), "ES256": (ec_key, "e")}
    results = {}
    with meshlib.Mesh("reviews") as mesh:

        def per_call(tokens: list[str | None], cold: bool) -> float:
            calls = [
                _Call("GET", "http", "", 8080, "/", "", ({"authorization": f"Bearer {t}"} if t else {}).get)
                for t in tokens
            ]
            samples = []
            for _ in range(rounds):
                if cold:
                    authenticate._verified.clear()  # type: ignore[attr-defined]
                started = time.process_time()
                for call in calls:
                    assert authenticate(mesh.inbound(call, 0.0)) is None
                samples.append((time.process_time() - started) / len(calls) * 1e6)
            return statistics.median(samples)

        base = {"iss": "https://issuer.example", "sub": "alice", "aud": "orders", "exp": now + 3600}
        for alg, (key, kid) in signers.items():
            distinct = [
                jwt.encode(
                    {**base, "jti": str(i)},
                    key,
                    algorithm=alg,
                    headers={"kid": kid},
                )
                for i in range(verifications)
            ]
            results[f"{alg}, each token new (signature checked)"] = per_call(list(distinct), cold=True)
            results[f"{alg}, the same token again (verified-token cache)"] = per_call(
                [distinct[0]] * 2000, cold=False
            )
        results["no token"] = per_call([None] * 2000, cold=False)
    return results


def run(decisions: int, requests: int, rounds: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "policies.yaml"
        config.write_text(policies())
        with meshlib.Mesh("reviews", config=config) as guarded, meshlib.Mesh("reviews") as open_mesh:
            assert guarded.security.authorizer is not None
            count = len(guarded.security.allow) + len(guarded.security.deny)
            decision, loop = decision_rounds(guarded, decisions, rounds)
            plain = _verified(meshlib.asgi.MeshMiddleware(asgi_app, mesh=open_mesh))
            with_policies = _verified(meshlib.asgi.MeshMiddleware(asgi_app, mesh=guarded))
            samples: dict[str, list[float]] = {"no policy": [], f"{count} policies": []}

            async def rounds_() -> None:
                await asgi_round(with_policies, 2000)
                for _ in range(rounds):
                    samples["no policy"].append(await asgi_round(plain, requests))
                    samples[f"{count} policies"].append(await asgi_round(with_policies, requests))

            asyncio.run(rounds_())
            denials = guarded.metrics.denials()
    assert not denials, f"the benchmark request was denied: {denials}"
    verify = jwt_rounds(300, rounds)
    med = {k: statistics.median(v) for k, v in samples.items()}
    added = [b - a for a, b in zip(samples["no policy"], samples[f"{count} policies"], strict=True)]
    return "\n".join(
        [
            "Command: `.venv/bin/python benchmarks/authorization.py "
            f"--decisions {decisions} --requests {requests} --rounds {rounds}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"One decision over {count} policies (10 DENY that do not match, 10 ALLOW, the matching one "
            f"last), net of an empty loop ({loop:.3f} µs): **{decision:.2f} µs** "
            f"(median of {rounds} rounds of {decisions}). Target: under 10 µs.",
            "",
            "| ASGI middleware | CPU µs/request (median of rounds) |",
            "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in med.items()],
            "",
            f"Added to a request by the {count} policies (median of paired rounds): "
            f"**{statistics.median(added):.1f} µs**.",
            "",
            "RequestAuthentication, one verification with the key cached (PyJWT over cryptography, "
            "CPU µs per request, median of rounds; the request's Inbound built in the same loop):",
            "",
            "| token | µs |",
            "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in verify.items()],
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=50000)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    body = run(args.decisions, args.requests, args.rounds)
    print(body)
    write_section("Authorization (20 AuthorizationPolicies)", body)


if __name__ == "__main__":
    main()
