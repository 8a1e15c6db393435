"""Mirroring, fault injection, live config changes and registry endpoints, on real servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh, NoHealthyUpstreamError
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.registry import AnnouncedEndpoint
from tests.http.conftest import SUBSETS, Endpoints, backend_of, run_requests, service_entry
from tests.http.conftest import virtual_service as vs
from tests.servers import Backend, serve

MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
def test_mirrored_copies_arrive_and_the_caller_never_waits(backends: Endpoints, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    shadow = backends["v2-a"][0]
    shadow.gate = threading.Event()  # the mirror answers nothing until every call is back
    mirror = vs("""\
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + mirror)
    # A caller that waited for its copy would time out here (the mirror is held shut).
    responses = run_requests(mesh, mode, 10, concurrency=1, timeout=3.0)
    assert all(isinstance(r, httpx.Response) and backend_of(r).startswith("v1") for r in responses), responses
    shadow.gate.set()
    deadline = time.monotonic() + 5
    while shadow.hits < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shadow.hits == 10
    assert {headers["host"] for _, _, headers in shadow.seen} == {"reviews-shadow"}


def test_mirror_failures_never_reach_the_caller(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    backends["v2-a"][0].status = 500
    mirror = vs("""\
  - route:
    - destination: {host: reviews, subset: v1}
    mirrors:
    - destination: {host: reviews, subset: v2}
      percentage: {value: 50}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + mirror)
    responses = run_requests(mesh, "sync", 200)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in responses)
    time.sleep(0.3)
    assert 70 <= backends["v2-a"][0].hits <= 130, "about half were mirrored"


@pytest.mark.parametrize("mode", MODES)
def test_fault_delay_and_abort_rates_match_the_policy(backends: Endpoints, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    faults = vs("""\
  - fault:
      delay: {fixedDelay: 5ms, percentage: {value: 30}}
      abort: {httpStatus: 418, percentage: {value: 20}}
    route:
    - destination: {host: reviews, subset: v1}
""")
    mesh = make_mesh(service_entry(backends) + SUBSETS + faults)
    responses = run_requests(mesh, mode, 1000, concurrency=50)
    aborted = sum(isinstance(r, httpx.Response) and r.status_code == 418 for r in responses)
    assert abs(aborted / 10 - 20) <= 3, f"{aborted / 10:.1f}% aborted"
    snapshot = mesh.metrics.snapshot()
    delayed = sum(count for (_, _, _, flags), (count, _, _) in snapshot.items() if "DI" in flags)
    assert abs(delayed / 10 - 30) <= 3, f"{delayed / 10:.1f}% delayed"
    upstream = backends["v1-a"][0].hits + backends["v1-b"][0].hits
    assert upstream == 1000 - aborted, "aborted requests never reach the service"


@pytest.mark.parametrize("mode", MODES)
def test_config_change_under_200_rps_loses_no_request(
    backends: Endpoints, make_mesh, tmp_path: Path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    def split(v1: int, v2: int) -> str:
        return (
            service_entry(backends)
            + SUBSETS
            + vs(f"""\
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
""")
        )

    mesh = make_mesh(split(100, 0))
    policy = next(tmp_path.glob("policy-*.yaml"))

    async def main() -> list[httpx.Response | Exception]:
        results: list[httpx.Response | Exception] = []
        async with mesh.async_http_client() as client:

            async def one() -> None:
                try:
                    results.append(await client.get("http://reviews/"))
                except httpx.HTTPError as exc:
                    results.append(exc)

            tasks = []
            started = time.monotonic()
            for i in range(600):  # 200 requests/s for 3 s
                change(i)
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(max(0.0, started + (i + 1) / 200 - time.monotonic()))
            await asyncio.gather(*tasks)
        return results

    def change(i: int) -> None:
        if i == 200:
            policy.write_text(split(50, 50))
        if i == 400:
            policy.write_text(split(0, 100))

    def threaded() -> list[httpx.Response | Exception]:
        """The sync client, shared by worker threads, at the same pace."""
        with mesh.http_client() as client, concurrent.futures.ThreadPoolExecutor(16) as pool:

            def one() -> httpx.Response | Exception:
                try:
                    return client.get("http://reviews/")
                except httpx.HTTPError as exc:
                    return exc

            futures = []
            started = time.monotonic()
            for i in range(600):
                change(i)
                futures.append(pool.submit(one))
                time.sleep(max(0.0, started + (i + 1) / 200 - time.monotonic()))
            return [f.result(30) for f in futures]

    results = asyncio.run(main()) if mode == "async" else threaded()
    assert len(results) == 600
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), [
        r for r in results if not isinstance(r, httpx.Response)
    ][:3]
    assert mesh.version >= 3, "both changes were applied during the load"
    assert backend_of(results[-1]) == "v2-a"
    assert backends["v2-a"][0].hits > 150


def test_endpoints_from_the_registry(tmp_path: Path) -> None:
    """Backends announce themselves to a real config service; a client's mesh finds them."""
    with (
        serve(Backend("reg-v1")) as p1,
        serve(Backend("reg-v2")) as p2,
        ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        admin.apply(
            [
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "DestinationRule",
                    "metadata": {"name": "ratings"},
                    "spec": {
                        "host": "ratings",
                        "subsets": [
                            {"name": "v1", "labels": {"version": "v1"}},
                            {"name": "v2", "labels": {"version": "v2"}},
                        ],
                    },
                },
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualService",
                    "metadata": {"name": "ratings"},
                    "spec": {
                        "hosts": ["ratings"],
                        "http": [
                            {
                                "route": [
                                    {"destination": {"host": "ratings", "subset": "v1"}, "weight": 50},
                                    {"destination": {"host": "ratings", "subset": "v2"}, "weight": 50},
                                ]
                            }
                        ],
                    },
                },
            ]
        )
        with (
            Mesh(
                "ratings", labels={"version": "v1"}, control_plane=server.url, data_dir=tmp_path / "a"
            ) as r1,
            Mesh(
                "ratings", labels={"version": "v2"}, control_plane=server.url, data_dir=tmp_path / "b"
            ) as r2,
            Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "c") as frontend,
        ):
            r1.announce([AnnouncedEndpoint(address="127.0.0.1", port=p1)])
            r2.announce([AnnouncedEndpoint(address="127.0.0.1", port=p2)])
            deadline = time.monotonic() + 5
            while len(frontend.snapshot.endpoints("ratings.default.svc.cluster.local")) < 2:
                assert time.monotonic() < deadline, "registrations did not arrive"
                time.sleep(0.02)
            with frontend.http_client() as client:
                seen = {client.get("http://ratings/").headers["x-backend"] for _ in range(40)}
            assert seen == {"reg-v1", "reg-v2"}
            r2.announce([AnnouncedEndpoint(address="127.0.0.1", port=p2, ready=False)])
            while len(
                frontend.http_table.cluster(
                    frontend.http_table.routes["ratings.default.svc.cluster.local"].routes[0].targets[1]
                ).endpoints
            ):
                assert time.monotonic() < deadline + 5
                time.sleep(0.02)
            outcomes = []
            with frontend.http_client() as client:
                for _ in range(40):  # half the traffic still goes to v2, which has no ready endpoint
                    try:
                        outcomes.append(client.get("http://ratings/").headers["x-backend"])
                    except NoHealthyUpstreamError as exc:
                        outcomes.append("UH" if "subset v2" in str(exc) else str(exc))
            assert set(outcomes) == {"reg-v1", "UH"}


def mirrored_host_headers(mesh: Mesh, backends: Endpoints, host_header: str | None) -> tuple[str, str]:
    """The Host header the route's backend and the mirror's got for one request to reviews:9080."""
    shadow = backends["v2-a"][0]
    headers = {"host": host_header} if host_header is not None else None
    with mesh.http_client() as client:
        response = client.get("http://reviews:9080/mirrored", headers=headers)
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while shadow.hits < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert shadow.hits == 1
    primary = next(b for name, (b, _) in backends.items() if name.startswith("v1") and b.hits)
    return primary.seen[-1][2]["host"], shadow.seen[-1][2]["host"]


MIRROR_ON_9080 = vs("""\
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
""")


def test_a_mirror_keeps_the_port_of_the_host_header(backends: Endpoints, make_mesh) -> None:  # type: ignore[no-untyped-def]
    entry = service_entry(backends).replace("number: 80,", "number: 9080,")
    mesh = make_mesh(entry + SUBSETS + MIRROR_ON_9080)
    assert mirrored_host_headers(mesh, backends, None) == ("reviews:9080", "reviews-shadow:9080")


def test_a_mirror_of_an_ipv6_host_header_marks_the_host_not_the_address(
    backends: Endpoints, make_mesh
) -> None:  # type: ignore[no-untyped-def]
    entry = service_entry(backends).replace("number: 80,", "number: 9080,")
    mesh = make_mesh(entry + SUBSETS + MIRROR_ON_9080)
    assert mirrored_host_headers(mesh, backends, "[fd00::1]:9080") == (
        "[fd00::1]:9080",
        "[fd00::1]-shadow:9080",
    )
