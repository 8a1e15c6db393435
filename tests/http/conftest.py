"""Fixtures for the HTTP data plane: real uvicorn backends and a Mesh in static mode."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from tests.servers import Backend, serve

Endpoints = dict[str, tuple[Backend, int]]


@pytest.fixture
def backends() -> Iterator[Endpoints]:
    """reviews v1 (two replicas) and v2 (one), each a real uvicorn server on 127.0.0.1."""
    with ExitStack() as stack:
        found: Endpoints = {}
        for name in ("v1-a", "v1-b", "v2-a"):
            backend = Backend(name)
            found[name] = (backend, stack.enter_context(serve(backend)))
        yield found


def service_entry(endpoints: Endpoints, host: str = "reviews", names: Sequence[str] | None = None) -> str:
    """A ServiceEntry declaring the backends, labelled version=v1/v2 by their names."""
    chosen = names if names is not None else list(endpoints)
    items = "\n".join(
        f"  - {{address: 127.0.0.1, ports: {{http: {endpoints[n][1]}}}, "
        f"labels: {{version: {n.split('-')[0]}}}}}"
        for n in chosen
    )
    return (
        textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: {host}}}
        spec:
          hosts: [{host}]
          location: MESH_INTERNAL
          resolution: STATIC
          ports: [{{number: 80, name: http, protocol: HTTP}}]
          endpoints:
        """)
        + items
        + "\n"
    )


def rule(traffic_policy: str) -> str:
    """A DestinationRule for reviews: ``traffic_policy`` (indented four spaces) and subsets v1/v2."""
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
{traffic_policy}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def virtual_service(http: str) -> str:
    """A VirtualService for reviews whose ``http`` routes are given as YAML (indented two spaces)."""
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
{http}"""


def route(extra: str = "", subset: str | None = None) -> str:
    """A VirtualService for reviews with one route; ``extra`` adds lines (indented four spaces) to it."""
    destination = "{host: reviews" + (f", subset: {subset}" if subset else "") + "}"
    return virtual_service(f"  - route:\n    - destination: {destination}\n{extra}")


SUBSETS = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


@pytest.fixture
def make_mesh(tmp_path: Path) -> Iterator[Callable[..., Mesh]]:
    """Start a Mesh (service frontend) on a policy file written from the given YAML."""
    meshes: list[Mesh] = []

    def start(policy: str, **options: Any) -> Mesh:
        path = tmp_path / f"policy-{len(meshes)}.yaml"
        path.write_text(policy)
        mesh = Mesh("frontend", config=path, static_poll_interval=0.05, **options).start()
        # Seeded: rate checks (weights, faults, mirrors) allow ±3 points, about 2 standard
        # deviations at 1,000 samples; an unseeded run would fail a few times in a hundred.
        mesh.rng.seed(20261122)
        meshes.append(mesh)
        return mesh

    yield start
    for mesh in meshes:
        mesh.close()


def backend_of(response: httpx.Response) -> str:
    return response.headers["x-backend"]


def run_requests(
    mesh: Mesh,
    mode: str,
    count: int,
    url: str = "http://reviews/api",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    concurrency: int = 16,
    **client_options: Any,
) -> list[httpx.Response | Exception]:
    """``count`` requests through the mesh, sync (one by one) or async (``concurrency`` at once)."""
    if mode == "sync":
        out: list[httpx.Response | Exception] = []
        with mesh.http_client(**client_options) as client:
            for _ in range(count):
                try:
                    out.append(client.request(method, url, headers=headers))
                except httpx.HTTPError as exc:
                    out.append(exc)
        return out

    async def main() -> list[httpx.Response | Exception]:
        gate = asyncio.Semaphore(concurrency)
        async with mesh.async_http_client(**client_options) as client:

            async def one() -> httpx.Response | Exception:
                async with gate:
                    try:
                        return await client.request(method, url, headers=headers)
                    except httpx.HTTPError as exc:
                        return exc

            return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(main())
