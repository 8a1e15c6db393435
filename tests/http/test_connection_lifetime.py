"""DestinationRule connectionPool limits on how long a connection serves: maxRequestsPerConnection,
idleTimeout, maxConnectionDuration, connectTimeout; counted by which client port each request of
a real uvicorn backend came from."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections import Counter

import httpx
import pytest

from meshlib import Mesh
from tests.http.conftest import Endpoints, route, rule, run_requests, service_entry

MODES = ["sync", "async"]


def call(mesh: Mesh, mode: str, pauses: list[float]) -> None:
    """One request, then one more after each pause; all must succeed."""
    if mode == "sync":
        with mesh.http_client() as client:
            client.get("http://reviews/").raise_for_status()
            for pause in pauses:
                time.sleep(pause)
                client.get("http://reviews/").raise_for_status()
        return

    async def main() -> None:
        async with mesh.async_http_client() as client:
            (await client.get("http://reviews/")).raise_for_status()
            for pause in pauses:
                await asyncio.sleep(pause)
                (await client.get("http://reviews/")).raise_for_status()

    asyncio.run(main())


def connections(backends: Endpoints) -> list[int]:
    """The client port of each request, in order."""
    return [c[1] for c in backends["v1-a"][0].clients if c is not None]


@pytest.mark.parametrize("mode", MODES)
def test_without_limits_one_connection_serves_every_request(
    backends: Endpoints, make_mesh, mode: str
) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(service_entry(backends, names=["v1-a"]))
    call(mesh, mode, [0.0] * 9)
    assert len(set(connections(backends))) == 1


@pytest.mark.parametrize("mode", MODES)
def test_max_requests_per_connection_opens_a_new_one_after_n(
    backends: Endpoints, make_mesh, mode: str
) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(
        service_entry(backends, names=["v1-a"])
        + rule("    connectionPool: {http: {maxRequestsPerConnection: 3}}\n")
    )
    call(mesh, mode, [0.0] * 9)
    ports = connections(backends)
    assert len(ports) == 10
    runs = [ports[i : i + 3] for i in range(0, 10, 3)]
    assert all(len(set(run)) == 1 for run in runs), f"3 requests per connection: {ports}"
    assert len(set(ports)) == 4, f"10 requests, 3 per connection: 4 connections ({ports})"


@pytest.mark.parametrize("mode", MODES)
def test_an_idle_connection_is_not_reused_past_the_idle_timeout(
    backends: Endpoints, make_mesh, mode: str
) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(
        service_entry(backends, names=["v1-a"]) + rule("    connectionPool: {http: {idleTimeout: 300ms}}\n")
    )
    call(mesh, mode, [0.0, 0.6, 0.0])
    first, second, third, fourth = connections(backends)
    assert first == second, "busy: reused"
    assert third != second, "idle for 0.6 s > 300 ms: a new connection"
    assert fourth == third


@pytest.mark.parametrize("mode", MODES)
def test_a_connection_retires_after_max_connection_duration(
    backends: Endpoints, make_mesh, mode: str
) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(
        service_entry(backends, names=["v1-a"])
        + rule("    connectionPool: {tcp: {maxConnectionDuration: 500ms}}\n")
    )
    call(mesh, mode, [0.1, 0.1, 0.5, 0.0])
    ports = connections(backends)
    assert ports[0] == ports[1] == ports[2], "within 500 ms of opening: reused"
    assert ports[3] != ports[2], "older than 500 ms: replaced"
    assert ports[4] == ports[3]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("route_timeout", [True, False])
def test_connect_timeout_comes_from_the_destination_rule(make_mesh, mode: str, route_timeout: bool) -> None:  # type: ignore[no-untyped-def]
    # A listener whose accept queue (backlog 0) is already full: further SYNs go unanswered,
    # so only a timeout ends a connect.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    unanswered: Endpoints = {"v1-a": (None, port)}  # type: ignore[dict-item]
    # With a route timeout the connect is bounded by both; without one (Istio's default) only
    # by connectTimeout: either way, 200 ms.
    vs = route("    retries: {attempts: 0}\n" + ("    timeout: 5s\n" if route_timeout else ""))
    try:
        mesh = make_mesh(
            service_entry(unanswered) + rule("    connectionPool: {tcp: {connectTimeout: 200ms}}\n") + vs
        )
        started = time.monotonic()
        (result,) = run_requests(mesh, mode, 1)
        elapsed = time.monotonic() - started
        assert isinstance(result, httpx.ConnectTimeout), repr(result)
        assert elapsed < 2.0, f"connectTimeout 200ms: {elapsed:.2f} s"
        assert mesh.metrics.requests_total(flags="UF") == 1
    finally:
        filler.close()
        listener.close()


def test_max_requests_per_connection_holds_under_concurrent_threads(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    """Many threads on one sync client: no connection ever serves more than the limit (the sync
    pool can hand a connection out just as another thread's response spends it)."""
    mesh = make_mesh(
        service_entry(backends, names=["v1-a"])
        + rule("    connectionPool: {http: {maxRequestsPerConnection: 3}}\n")
    )
    with mesh.http_client() as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.get("http://reviews/").status_code, range(240)))
    assert statuses == [200] * 240
    per_connection = Counter(connections(backends))
    assert sum(per_connection.values()) == 240
    assert max(per_connection.values()) <= 3, per_connection.most_common(3)
