"""Failures through real uvicorn backends: ejection, retries, budgets, limits, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import httpx
import pytest

import meshlib
from meshlib.http.errors import MeshTimeoutError, UpstreamOverflowError
from meshlib.telemetry.prometheus import scrape
from tests.http.conftest import SUBSETS, Endpoints, backend_of, route, rule, run_requests, service_entry

MODES = ["sync", "async"]


NO_RETRIES = "    retries: {attempts: 0}\n"


def events(mesh: meshlib.Mesh, kind: str) -> dict[str, int]:
    """The mesh's own counter ``kind`` (meshlib_events), by Envoy cluster name."""
    return {subject: n for (k, subject), n in mesh.metrics.counters().items() if k == kind}


@pytest.mark.parametrize("mode", MODES)
def test_failing_endpoint_is_ejected_at_its_fifth_503_and_returns(
    backends: Endpoints, make_mesh, mode: str
) -> None:  # type: ignore[no-untyped-def]
    policy = rule("""\
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}
""")
    broken = backends["v2-a"][0]
    broken.status = 503
    mesh = make_mesh(service_entry(backends) + policy + route(NO_RETRIES))
    first = run_requests(mesh, mode, 60, concurrency=1)
    assert broken.hits == 5, "ejected at once on its 5th consecutive 503, not later"
    assert sum(isinstance(r, httpx.Response) and r.status_code == 503 for r in first) == 5
    assert events(mesh, "outlier_ejections") == {"outbound|80||reviews.default.svc.cluster.local": 1}
    scraped = scrape(mesh.metrics_registry).decode()
    labels = 'kind="outlier_ejections",subject="outbound|80||reviews.default.svc.cluster.local"'
    assert f"meshlib_events_total{{{labels}}} 1.0" in scraped
    time.sleep(1.1)  # baseEjectionTime × 1
    broken.status = 200
    after = run_requests(mesh, mode, 30, concurrency=1)
    assert broken.hits > 5, "back in rotation after the ejection time"
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in after)


def test_a_success_in_between_resets_the_count(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    policy = rule("""\
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
""")
    flaky = backends["v2-a"][0]
    mesh = make_mesh(service_entry(backends, names=["v2-a"]) + policy + route(NO_RETRIES))
    with mesh.http_client() as client:
        for _ in range(3):
            flaky.status = 503
            statuses = [client.get("http://reviews/").status_code for _ in range(4)]
            flaky.status = 200
            statuses.append(client.get("http://reviews/").status_code)
            assert statuses == [503, 503, 503, 503, 200]
    assert flaky.hits == 15, "never ejected: no five 503s in a row"


@pytest.mark.parametrize("mode", MODES)
def test_retries_turn_30_percent_failures_into_995_percent_success(
    backends: Endpoints, make_mesh, mode: str
) -> None:  # type: ignore[no-untyped-def]
    for name in ("v1-a", "v1-b"):
        backends[name][0].fail_rate = 0.3
    retries = "    retries: {attempts: 5, perTryTimeout: 2s, retryOn: 5xx, backoff: 1ms}\n"
    mesh = make_mesh(service_entry(backends) + SUBSETS + route(retries, subset="v1"))
    responses = run_requests(mesh, mode, 1000)
    ok = sum(isinstance(r, httpx.Response) and r.status_code == 200 for r in responses)
    others = Counter(
        repr(r) if isinstance(r, Exception) else r.status_code
        for r in responses
        if not (isinstance(r, httpx.Response) and r.status_code == 200)
    )
    assert ok / 1000 >= 0.995, f"{ok}/1000 succeeded; the others: {others}"
    hits = backends["v1-a"][0].hits + backends["v1-b"][0].hits
    assert 1000 < hits < 1000 * 1.6, "retries happened, about 0.43 per request"
    assert events(mesh, "retries") == {"outbound|80|v1|reviews.default.svc.cluster.local": hits - 1000}


@pytest.mark.parametrize("mode", MODES)
def test_retry_budget_bounds_attempts_under_a_backend_that_always_fails(
    backends: Endpoints, make_mesh, mode: str
) -> None:  # type: ignore[no-untyped-def]
    dead = backends["v2-a"][0]
    dead.status = 503
    policy = rule("    retryBudget: {percent: 20, minRetryConcurrency: 3}\n")
    retries = "    retries: {attempts: 10, retryOn: 5xx}\n"
    mesh = make_mesh(service_entry(backends) + policy + route(retries, subset="v2"))
    responses = run_requests(mesh, mode, 300)
    assert all(isinstance(r, httpx.Response) and r.status_code == 503 for r in responses)
    assert 300 <= dead.hits <= 300 * 1.2 + 3, f"{dead.hits} attempts for 300 requests"
    assert mesh.metrics.requests_total(flags="URX") > 250
    cluster = "outbound|80|v2|reviews.default.svc.cluster.local"
    assert events(mesh, "retries") == {cluster: dead.hits - 300}
    assert events(mesh, "retry_budget_exhausted")[cluster] > 250


def test_post_is_not_resent_after_it_may_have_reached_the_server(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    dead = backends["v2-a"][0]
    dead.status = 503
    retries = "    retries: {attempts: 3, retryOn: 5xx}\n"
    mesh = make_mesh(service_entry(backends) + SUBSETS + route(retries, subset="v2"))
    with mesh.http_client() as client:
        assert client.post("http://reviews/orders", content=b"{}").status_code == 503
        assert dead.hits == 1, "a 503 after sending: the POST may have been processed"
        client.post("http://reviews/orders", content=b"{}", headers={"idempotency-key": "k1"})
        assert dead.hits == 1 + 4, "an Idempotency-Key makes it safe to resend"


def test_connect_failures_are_retried_on_another_endpoint_even_for_post(
    backends: Endpoints, make_mesh
) -> None:  # type: ignore[no-untyped-def]
    closed = {"v1-a": backends["v1-a"], "gone-x": (backends["v1-a"][0], 9)}  # port 9: nothing listens
    entry = service_entry(closed).replace("version: gone", "version: v1")
    mesh = make_mesh(entry + SUBSETS + route("    retries: {attempts: 2, retryOn: connect-failure}\n"))
    with mesh.http_client() as client:
        for _ in range(20):
            assert client.post("http://reviews/", content=b"x").status_code == 200


@pytest.mark.parametrize("mode", MODES)
def test_consistent_hash_sends_a_key_to_one_endpoint(backends: Endpoints, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    policy = rule("    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n")
    mesh = make_mesh(service_entry(backends) + policy + route(NO_RETRIES))
    owners: dict[str, set[str]] = {}
    for user in range(30):
        responses = run_requests(mesh, mode, 5, headers={"x-user": f"user-{user}"}, concurrency=5)
        owners[f"user-{user}"] = {backend_of(r) for r in responses if isinstance(r, httpx.Response)}
    assert all(len(found) == 1 for found in owners.values()), owners
    assert len(set().union(*owners.values())) == 3, "keys spread over every endpoint"


def test_pool_overflow_fails_fast_async(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    slow = backends["v2-a"][0]
    slow.delay = 0.5
    policy = rule("    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}\n")
    mesh = make_mesh(service_entry(backends) + policy + route(NO_RETRIES, subset="v2"))

    async def main() -> list[tuple[float, object]]:
        async with mesh.async_http_client() as client:

            async def one() -> tuple[float, object]:
                started = time.monotonic()
                try:
                    result: object = await client.get("http://reviews/")
                except httpx.HTTPError as exc:
                    result = exc
                return time.monotonic() - started, result

            return list(await asyncio.gather(*(one() for _ in range(10))))

    results = asyncio.run(main())
    refused = [(t, r) for t, r in results if isinstance(r, UpstreamOverflowError)]
    served = [(t, r) for t, r in results if isinstance(r, httpx.Response)]
    assert (len(served), len(refused)) == (2, 8)
    assert all(t < 0.2 for t, _ in refused), "overflow is refused at once, never queued"
    assert all(isinstance(r, httpx.PoolTimeout) for _, r in refused)
    assert mesh.metrics.requests_total(flags="UO") == 8
    assert events(mesh, "pool_overflow") == {"outbound|80|v2|reviews.default.svc.cluster.local": 8}


def test_pool_overflow_fails_fast_sync(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    slow = backends["v2-a"][0]
    slow.delay = 0.5
    policy = rule("    connectionPool: {http: {http2MaxRequests: 2}}\n")
    mesh = make_mesh(service_entry(backends) + policy + route(NO_RETRIES, subset="v2"))
    outcomes: list[str] = []
    with mesh.http_client() as client:
        refusals: list[float] = []

        def one() -> None:
            started = time.monotonic()
            try:
                client.get("http://reviews/")
                outcomes.append("ok")
            except UpstreamOverflowError:
                refusals.append(time.monotonic() - started)
                outcomes.append("UO")

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert Counter(outcomes) == {"ok": 2, "UO": 4}
    assert max(refusals) < 0.3, f"overflow fails fast, never waits for the 0.5 s requests: {refusals}"


@pytest.mark.parametrize("mode", MODES)
def test_route_timeout_is_a_mesh_timeout(backends: Endpoints, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    backends["v2-a"][0].delay = 1.0
    mesh = make_mesh(service_entry(backends) + SUBSETS + route("    timeout: 200ms\n", subset="v2"))
    started = time.monotonic()
    (result,) = run_requests(mesh, mode, 1)
    assert isinstance(result, httpx.TimeoutException), result
    assert time.monotonic() - started < 0.8
    assert mesh.metrics.requests_total(flags="UT") == 1


def test_inbound_deadline_bounds_the_call_and_travels_downstream(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(service_entry(backends) + SUBSETS + route(subset="v2"))
    slow = backends["v2-a"][0]
    with mesh.http_client() as client:
        with meshlib.deadline(0.5):
            client.get("http://reviews/")
        _, _, headers = slow.seen[-1]
        assert 300 <= int(headers["x-envoy-expected-rq-timeout-ms"]) <= 500
        slow.delay = 1.0
        started = time.monotonic()
        with meshlib.deadline(0.3), pytest.raises(MeshTimeoutError):
            client.get("http://reviews/")
        assert time.monotonic() - started < 0.8


@pytest.mark.parametrize("ignore_previous", [None, False])
def test_retry_ignore_previous_hosts_false_lets_a_retry_go_back_to_the_failed_endpoint(
    backends: Endpoints, make_mesh, ignore_previous: bool | None
) -> None:  # type: ignore[no-untyped-def]
    """One endpoint always answers 503, the other 200, picked at random, one retry each.
    Istio's default (true) moves the retry to the endpoint not yet tried: nothing fails.
    With false, a quarter of the requests try the broken one twice: of 200 requests, none
    failing would have a probability of 0.75**200 (1e-25)."""
    backends["v1-a"][0].status = 503
    option = "" if ignore_previous is None else f", retryIgnorePreviousHosts: {str(ignore_previous).lower()}"
    retries = f"    retries: {{attempts: 1, retryOn: 5xx, backoff: 1ms{option}}}\n"
    policy = rule("    loadBalancer: {simple: RANDOM}\n")
    mesh = make_mesh(service_entry(backends, names=["v1-a", "v1-b"]) + policy + route(retries))
    responses = run_requests(mesh, "sync", 200, concurrency=1)
    failed = sum(not (isinstance(r, httpx.Response) and r.status_code == 200) for r in responses)
    if ignore_previous is None:
        assert failed == 0, "the retry always went to the other endpoint"
    else:
        assert 20 <= failed <= 90, f"{failed}/200 failed twice on the broken endpoint (expected about 50)"


def _local_and_remote(backends: Endpoints) -> str:
    """reviews with v1-a and v1-b in the caller's zone and v2-a in another region."""
    local, remote = "us-east/zone-a/rack-1", "us-west/zone-a/rack-1"
    where = {"v1-a": local, "v1-b": local, "v2-a": remote}
    items = "\n".join(
        f"  - {{address: 127.0.0.1, ports: {{http: {port}}}, locality: {where[name]}}}"
        for name, (_, port) in backends.items()
    )
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{items}
"""


def test_locality_failover_when_the_local_zones_endpoints_are_ejected(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    """Istio's default locality failover (outlier detection on): traffic stays in the caller's
    zone while it is healthy, and moves to the other region once both local endpoints are
    ejected; no request is lost on the way, retries take the failing ones."""
    policy = rule("""\
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
""")
    retries = "    retries: {attempts: 3, retryOn: 5xx, backoff: 1ms}\n"
    mesh = make_mesh(_local_and_remote(backends) + policy + route(retries), locality="us-east/zone-a/rack-1")
    healthy = run_requests(mesh, "sync", 40, concurrency=1)
    assert all(backend_of(r) in ("v1-a", "v1-b") for r in healthy if isinstance(r, httpx.Response))
    assert backends["v2-a"][0].hits == 0, "nothing leaves the zone while it is healthy"
    for name in ("v1-a", "v1-b"):
        backends[name][0].status = 503
    failing = run_requests(mesh, "sync", 40, concurrency=1)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in failing)
    assert {backend_of(r) for r in failing if isinstance(r, httpx.Response)} == {"v2-a"}
    assert backends["v1-a"][0].hits + backends["v1-b"][0].hits <= 40 + 2, "ejected at their first 503"
