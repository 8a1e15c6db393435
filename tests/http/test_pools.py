"""Connection pools follow the endpoints: a pool of an endpoint that left the mesh is
closed when the client next sees a snapshot, so a long-lived client keeps no sockets to
long-gone endpoints."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psutil
import pytest

from meshlib import Mesh
from tests.http.conftest import Endpoints, service_entry


def connected(port: int) -> bool:
    """This process holds an open client connection to 127.0.0.1:``port``."""
    return any(
        c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port
        for c in psutil.Process().net_connections(kind="tcp")
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_pool_of_a_departed_endpoint_is_closed(backends: Endpoints, tmp_path: Path, mode: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(service_entry(backends, names=["v1-a", "v1-b"]))
    staying, leaving = backends["v1-a"][1], backends["v1-b"][1]
    with Mesh("frontend", config=policy, static_poll_interval=0.05) as mesh:

        def depart() -> None:
            version = mesh.version
            policy.write_text(service_entry(backends, names=["v1-a"]))
            deadline = time.monotonic() + 10
            while mesh.version == version and time.monotonic() < deadline:
                time.sleep(0.02)
            assert mesh.version != version, "the new policy was not loaded"

        if mode == "sync":
            with mesh.http_client() as client:
                for _ in range(20):
                    client.get("http://reviews/api").raise_for_status()
                assert connected(staying)
                assert connected(leaving), "both endpoints were called and their connections kept alive"
                depart()
                assert client.get("http://reviews/api").headers["x-backend"] == "v1-a"
                assert not connected(leaving), "the departed endpoint's pool was closed"
                assert connected(staying), "the pool of an endpoint that stays is kept"
        else:

            async def main() -> None:
                async with mesh.async_http_client() as client:
                    for _ in range(20):
                        (await client.get("http://reviews/api")).raise_for_status()
                    assert connected(staying)
                    assert connected(leaving)
                    await asyncio.to_thread(depart)
                    assert (await client.get("http://reviews/api")).headers["x-backend"] == "v1-a"
                    assert not connected(leaving)
                    assert connected(staying)

            asyncio.run(main())


def test_a_request_in_flight_to_a_departed_endpoint_finishes(backends: Endpoints, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(service_entry(backends, names=["v1-b"]))
    backends["v1-b"][0].delay = 1.0
    with Mesh("frontend", config=policy, static_poll_interval=0.05) as mesh:

        def depart() -> None:
            version = mesh.version
            policy.write_text(service_entry(backends, names=["v1-a"]))
            deadline = time.monotonic() + 10
            while mesh.version == version and time.monotonic() < deadline:
                time.sleep(0.02)

        async def main() -> httpx.Response:
            async with mesh.async_http_client(timeout=10) as client:
                slow = asyncio.create_task(client.get("http://reviews/api"))
                await asyncio.sleep(0.3)  # the slow request is on its way
                await asyncio.to_thread(depart)
                # This request sees the new snapshot and retires v1-b's pool.
                assert (await client.get("http://reviews/api")).headers["x-backend"] == "v1-a"
                return await slow

        answer = asyncio.run(main())
    assert answer.headers["x-backend"] == "v1-b", "the retired pool let its request finish"
