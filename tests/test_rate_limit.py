"""RateLimit (policy.meshlib.io/v1): Envoy's local token buckets on the four servers, per
workload and per source principal; 429 with Retry-After (gRPC RESOURCE_EXHAUSTED), flag RL;
buckets survive unrelated config changes; a mesh client retrying ``envoy-ratelimited``
waits for the Retry-After the server gave."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import meshlib
from meshlib import Mesh
from meshlib._net import bind
from meshlib.core.rate_limit import Bucket, compile_rate_limiter
from meshlib.errors import ConfigError
from meshlib.policy.loader import load_text
from tests.four_servers import SERVERS
from tests.servers import wait_for
from tests.test_authorization import World, world  # noqa: F401 - the module's servers

GRPC = "/test.Probe/Call"


def rate_limit(name: str, spec: str) -> str:
    indented = "\n".join("  " + line for line in spec.strip().splitlines())
    head = f"apiVersion: policy.meshlib.io/v1\nkind: RateLimit\nmetadata: {{name: {name}}}\n"
    return f"{head}spec:\n{indented}\n---\n"


def test_a_bucket_fills_in_steps_up_to_its_size() -> None:
    bucket = Bucket(maximum=2, per_fill=1, interval=1.0, now=100.0)
    assert bucket.take(100.0) is None
    assert bucket.take(100.1) is None
    assert bucket.take(100.2) == pytest.approx(0.8)  # empty: the next fill is at 101
    assert bucket.take(100.99) == pytest.approx(0.01)
    assert bucket.take(101.0) is None  # one token filled
    assert bucket.take(101.5) == pytest.approx(0.5)
    assert bucket.take(110.0) is None  # nine fills, capped at two tokens
    assert bucket.take(110.0) is None
    assert bucket.take(110.0) is not None


def _limits(text: str) -> list[Any]:
    return [item.resource for item in load_text(text)]


def test_unchanged_limits_keep_their_buckets_across_snapshots() -> None:
    spec = "limits: [{tokenBucket: {maxTokens: 1, fillInterval: 1h}}]"
    first = compile_rate_limiter(_limits(rate_limit("a", spec)), None)
    assert first is not None
    again = compile_rate_limiter(_limits(rate_limit("a", spec)), first)
    assert again is not None
    assert again.limits[0] is first.limits[0]
    changed = compile_rate_limiter(_limits(rate_limit("a", spec.replace("1h", "2h"))), first)
    assert changed is not None
    assert changed.limits[0] is not first.limits[0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("limits: []", "at least 1 item"),
        ("limits: [{tokenBucket: {maxTokens: 0, fillInterval: 1s}}]", "maxTokens: must be >= 1"),
        ("limits: [{tokenBucket: {maxTokens: 5, fillInterval: 10ms}}]", "at least 50ms"),
        ("limits: [{per: client, tokenBucket: {maxTokens: 5, fillInterval: 1s}}]", "per"),
        ("limits: [{match: {}, tokenBucket: {maxTokens: 5, fillInterval: 1s}}]", "empty operation"),
        ("limits: [{tokenBucket: {maxTokens: 5, fillInterval: 1s}, burst: 3}]", "burst"),
    ],
)
def test_invalid_limits_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_text(rate_limit("bad", spec), "rl.yaml")
    assert message in str(refused.value)


def test_limits_per_source_principal_on_every_server(world: World) -> None:  # noqa: F811
    for index, kind in enumerate(SERVERS):
        # A new name per server: new buckets (the four servers share the workload's limits).
        world.policies(
            rate_limit(
                f"per-caller-{index}",
                "limits: [{per: sourcePrincipal, tokenBucket: {maxTokens: 2, fillInterval: 1h}}]",
            )
        )
        got = [world.verdict(kind, "frontend", GRPC) for _ in range(3)]
        expected_refusal = "429" if kind in ("asgi", "wsgi") else "RESOURCE_EXHAUSTED"
        assert got == ["allow", "allow", expected_refusal], kind
        assert world.verdict(kind, "ratings", GRPC) == "allow", f"{kind}: ratings has its own bucket"
    status, body = world.http("asgi", "frontend", "/x")
    assert (status, body) == (429, b"local_rate_limited\n")
    assert world.reviews.metrics.rate_limited()["default/per-caller-3"] >= 1
    fqdn = "reviews.default.svc.cluster.local"
    assert world.reviews.metrics.requests_total(fqdn, 429, flags="RL", direction="inbound") >= 3


def test_a_limit_on_a_route_only(world: World) -> None:  # noqa: F811
    world.policies(
        rate_limit(
            "uploads",
            'limits: [{match: {paths: ["/upload*"], methods: [POST]}, '
            "tokenBucket: {maxTokens: 1, fillInterval: 1h}}]",
        )
    )
    assert world.http("wsgi", "frontend", "/upload", method="POST")[0] == 200
    assert world.http("wsgi", "frontend", "/upload/2", method="POST")[0] == 429
    assert world.http("wsgi", "frontend", "/upload", method="GET")[0] == 200
    assert world.http("wsgi", "frontend", "/other", method="POST")[0] == 200


def test_the_answer_says_when_to_come_back(world: World) -> None:  # noqa: F811
    world.policies(rate_limit("slow", "limits: [{tokenBucket: {maxTokens: 1, fillInterval: 30s}}]"))
    world.http("asgi", "frontend", "/x")
    sock_status, _ = world.http("asgi", "frontend", "/x")
    assert sock_status == 429
    with httpx.Client(verify=world.callers["frontend"].workload_identity.client_context()) as client:  # type: ignore[union-attr]
        answer = client.get(f"https://127.0.0.1:{world.ports['asgi']}/x")
    assert answer.status_code == 429
    assert 25 <= int(answer.headers["retry-after"]) <= 30
    assert answer.headers["x-envoy-ratelimited"] == "true"


@pytest.fixture
def limited_backend(tmp_path: Path) -> Iterator[tuple[int, list[float]]]:
    """A workload allowing one request a second (static policy, plain HTTP under PERMISSIVE)."""
    policy = tmp_path / "server.yaml"
    policy.write_text(
        rate_limit("one-per-second", "limits: [{tokenBucket: {maxTokens: 1, fillInterval: 1s}}]")
    )
    hits: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        hits.append(time.monotonic())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with Mesh("limited", config=policy) as mesh:
        sock = bind("127.0.0.1", 0)
        config = uvicorn.Config(meshlib.asgi.MeshMiddleware(app, mesh), log_level="error", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        assert wait_for(lambda: server.started, 10)
        try:
            yield sock.getsockname()[1], hits
        finally:
            server.should_exit = True
            thread.join(10)


def test_a_mesh_client_retries_after_the_retry_after(
    tmp_path: Path, limited_backend: tuple[int, list[float]]
) -> None:
    port, hits = limited_backend
    client_policy = tmp_path / "client.yaml"
    client_policy.write_text(f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: limited}}
spec:
  hosts: [limited.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: limited}}
spec:
  hosts: [limited.example]
  http:
  - route: [{{destination: {{host: limited.example}}}}]
    retries: {{attempts: 2, retryOn: envoy-ratelimited}}
""")
    with Mesh("frontend", config=client_policy) as mesh, mesh.http_client() as client:
        assert client.get("http://limited.example/").status_code == 200
        started = time.monotonic()
        answer = client.get("http://limited.example/")
        took = time.monotonic() - started
    assert answer.status_code == 200, "the rate-limited answer was retried after its Retry-After"
    assert took >= 0.9, f"retried after {took:.2f}s: sooner than the Retry-After (1 s)"
    assert len(hits) == 2
