"""Streamed request bodies, the caller's own timeouts and exhausted retries, on real servers."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from meshlib import Mesh, MeshError
from meshlib.http.errors import MeshTimeoutError, RetriesExhaustedError
from tests.http.conftest import SUBSETS, Endpoints, run_requests, service_entry
from tests.http.conftest import route as one_route
from tests.servers import free_port

MODES = ["sync", "async"]


def route(extra: str, subset: str = "v2") -> str:
    return one_route(extra, subset)


class Boom(Exception):
    """The caller's body failed while it was being sent (a file vanished, say)."""


def failing_body() -> Iterator[bytes]:
    yield b"first chunk"
    raise Boom("the file went away")


async def failing_async_body() -> AsyncIterator[bytes]:
    yield b"first chunk"
    raise Boom("the file went away")


def one_shot_body() -> Iterator[bytes]:
    yield b"a streamed "
    yield b"body"


async def one_shot_async_body() -> AsyncIterator[bytes]:
    yield b"a streamed "
    yield b"body"


def slots(mesh: Mesh) -> tuple[int, int]:
    """Pool slots and retry slots held, over every cluster of the mesh."""
    states = mesh.clusters.states()
    return sum(s.in_flight for s in states), sum(s.retries_in_flight for s in states)


# --- a body that fails while it is sent --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_body_failing_mid_send_gives_every_slot_back_at_once(
    backends: Endpoints, make_mesh: Any, mode: str
) -> None:
    # Two v1 endpoints, one with nothing listening: a request that starts there fails to
    # connect (the body is not read yet) and is retried, holding a maxRetries slot, on the
    # live one, where its body then fails.
    endpoints = {"v1-a": backends["v1-a"], "v1-gone": (backends["v1-a"][0], free_port())}
    rule = SUBSETS.replace(
        "  host: reviews\n", "  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n"
    )
    retries = "    retries: {attempts: 3, retryOn: connect-failure}\n"
    mesh = make_mesh(service_entry(endpoints) + rule + route(retries, subset="v1"))
    kept: list[Any] = []  # tracebacks keep the driver's frames (and its generator) alive
    gc.disable()  # slots must come back by the driver closing the stack, not by collection
    try:
        if mode == "sync":
            with mesh.http_client() as client:
                for _ in range(4):
                    with pytest.raises(Boom) as caught:
                        client.put("http://reviews/upload", content=failing_body())
                    kept.append(caught)
                    assert slots(mesh) == (0, 0)
        else:

            async def main() -> None:
                async with mesh.async_http_client() as client:
                    for _ in range(4):
                        with pytest.raises(Boom) as caught:
                            await client.put("http://reviews/upload", content=failing_async_body())
                        kept.append(caught)
                        assert slots(mesh) == (0, 0)

            asyncio.run(main())
    finally:
        gc.enable()
    assert len(kept) == 4
    # Round robin alternates the first pick: some requests failed while holding a retry slot.
    assert mesh.metrics.requests_total(flags="UF") >= 1
    assert mesh.metrics.requests_total(code=0) == 4  # each escaped request is counted once
    assert backends["v1-a"][0].hits <= 4


@pytest.mark.parametrize("mode", MODES)
def test_a_one_shot_streamed_body_is_not_resent_after_a_503(
    backends: Endpoints, make_mesh: Any, mode: str
) -> None:
    dead = backends["v2-a"][0]
    dead.status = 503
    mesh = make_mesh(service_entry(backends) + SUBSETS + route("    retries: {attempts: 3, retryOn: 5xx}\n"))
    if mode == "sync":
        with mesh.http_client() as client:
            streamed = client.put("http://reviews/upload", content=one_shot_body())
            assert (streamed.status_code, dead.hits) == (503, 1)
            replayable = client.put("http://reviews/upload", content=b"a streamed body")
    else:

        async def main() -> tuple[httpx.Response, httpx.Response]:
            async with mesh.async_http_client() as client:
                first = await client.put("http://reviews/upload", content=one_shot_async_body())
                assert (first.status_code, dead.hits) == (503, 1)
                return first, await client.put("http://reviews/upload", content=b"a streamed body")

        streamed, replayable = asyncio.run(main())
    assert streamed.status_code == 503  # the backend's answer, not httpx.StreamConsumed
    assert replayable.status_code == 503
    assert dead.hits == 1 + 4, "bytes can be sent again: the original and three retries"
    assert slots(mesh) == (0, 0)


# --- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_callers_tighter_timeout_wins_over_the_routes(
    backends: Endpoints, make_mesh: Any, mode: str
) -> None:
    slow = backends["v2-a"][0]
    slow.delay = 2.0
    mesh = make_mesh(service_entry(backends) + SUBSETS + route("    timeout: 5s\n"))
    started = time.monotonic()
    (result,) = run_requests(mesh, mode, 1, timeout=0.3)
    elapsed = time.monotonic() - started
    assert isinstance(result, httpx.ReadTimeout), result
    assert not isinstance(result, MeshTimeoutError)  # the caller's own timeout, not the route's
    assert 0.25 <= elapsed < 1.2, f"took {elapsed:.2f}s"
    assert slow.hits == 1
    assert mesh.metrics.requests_total(flags="UT") == 0


@pytest.mark.parametrize("mode", MODES)
def test_the_routes_tighter_timeout_wins_over_the_callers(
    backends: Endpoints, make_mesh: Any, mode: str
) -> None:
    backends["v2-a"][0].delay = 2.0
    mesh = make_mesh(service_entry(backends) + SUBSETS + route("    timeout: 300ms\n"))
    started = time.monotonic()
    (result,) = run_requests(mesh, mode, 1, timeout=10.0)
    elapsed = time.monotonic() - started
    assert isinstance(result, MeshTimeoutError), result
    assert 0.25 <= elapsed < 1.2, f"took {elapsed:.2f}s"


@pytest.mark.parametrize("mode", MODES)
def test_retries_that_all_time_out_raise_a_timeout_that_is_retries_exhausted(
    backends: Endpoints, make_mesh: Any, mode: str
) -> None:
    slow = backends["v2-a"][0]
    slow.delay = 1.0
    retries = "    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: '5xx,reset', backoff: 1ms}\n"
    mesh = make_mesh(service_entry(backends) + SUBSETS + route(retries))
    (result,) = run_requests(mesh, mode, 1)
    assert isinstance(result, RetriesExhaustedError), result
    assert isinstance(result, httpx.TimeoutException)  # `except httpx.TimeoutException` catches it
    assert isinstance(result, httpx.ReadTimeout)
    assert isinstance(result, MeshError)
    assert not isinstance(result, MeshTimeoutError)  # no route timeout passed: URX, not UT
    assert "3 attempt(s) failed" in str(result)
    assert isinstance(result.__cause__, httpx.ReadTimeout)
    assert slow.hits == 3
    assert mesh.metrics.requests_total(flags="URX") == 1
    assert slots(mesh) == (0, 0)


async def dripping(scope: Any, receive: Any, send: Any) -> None:
    """A server that sends one byte every 0.2 s for 3 s: each read is quick, the whole is not."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-backend", b"drip")]})
    for _ in range(15):
        await send({"type": "http.response.body", "body": b".", "more_body": True})
        await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dripping_response_is_cut_at_the_route_timeout(make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    from tests.servers import serve

    with serve(dripping) as port:
        entry = (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: drip}\n"
            "spec:\n  hosts: [drip]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
            "  ports: [{number: 80, name: http}]\n"
            f"  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: drip}\n"
            "spec:\n  hosts: [drip]\n  http:\n  - route: [{destination: {host: drip}}]\n"
            "    timeout: 1s\n    retries: {attempts: 0}\n"
        )
        mesh = make_mesh(entry)
        started = time.monotonic()
        (result,) = run_requests(mesh, mode, 1, url="http://drip/")
        elapsed = time.monotonic() - started
    assert isinstance(result, MeshTimeoutError), result
    assert 0.9 < elapsed < 1.6, f"cut after {elapsed:.2f}s, not at the 1 s route timeout"
