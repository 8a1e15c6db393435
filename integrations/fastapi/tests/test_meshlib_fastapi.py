"""meshlib-fastapi on a real uvicorn server: the README example, dependencies, lifespan."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import meshlib_fastapi
import pytest
from fastapi import FastAPI

import meshlib
from tests.servers import Backend, free_port, serve, service_entry_policy

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def ratings() -> Iterator[tuple[Backend, int]]:
    backend = Backend("ratings")
    with serve(backend) as port:
        yield backend, port


def test_the_readme_example_runs_as_written(tmp_path: Path, ratings: tuple[Backend, int]) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    script = tmp_path / "reviews.py"
    script.write_text(code.group(1))
    port = free_port()
    env = {
        **os.environ,
        "MESH_SERVICE": "reviews",
        "MESH_CONFIG": str(service_entry_policy(tmp_path / "policy", "ratings", ratings[1])),
        "MESH_DATA_DIR": str(tmp_path / "data"),
        "PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/reviews/7", headers={"x-envoy-expected-rq-timeout-ms": "2000"}
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, (
                    proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
                )
                time.sleep(0.1)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "id": 7,
            "caller": None,
            "ratings": {"name": "ratings", "path": "/ratings/7"},
        }
        _, _, headers = ratings[0].seen[-1]
        assert int(headers["x-envoy-expected-rq-timeout-ms"]) <= 2000, "the inbound deadline travelled on"
        assert httpx.get(f"http://127.0.0.1:{port}/.well-known/meshlib/ready").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_instrument_starts_and_stops_the_mesh_with_the_app(
    tmp_path: Path, ratings: tuple[Backend, int]
) -> None:
    app = FastAPI()
    mesh = meshlib.Mesh("reviews", config=service_entry_policy(tmp_path / "policy", "ratings", ratings[1]))
    assert meshlib_fastapi.instrument(app, mesh) is mesh

    @app.get("/")
    async def index(client: meshlib_fastapi.MeshClient, peer: meshlib_fastapi.Peer) -> dict[str, object]:
        upstream = await client.get("http://ratings/")
        return {
            "upstream": upstream.json()["name"],
            "peer": peer,
            "mesh": meshlib_fastapi.get_mesh is not None,
        }

    @app.get("/strict")
    async def strict(peer: meshlib_fastapi.RequiredPeer) -> dict[str, str]:
        return {"peer": str(peer)}

    assert not mesh.started
    with serve_app(app) as port:
        assert mesh.started
        assert mesh.ready
        assert httpx.get(f"http://127.0.0.1:{port}/").json() == {
            "upstream": "ratings",
            "peer": None,
            "mesh": True,
        }
        assert httpx.get(f"http://127.0.0.1:{port}/strict").status_code == 401
        assert (
            httpx.get(
                f"http://127.0.0.1:{port}/x", headers={"x-envoy-expected-rq-timeout-ms": "0"}
            ).status_code
            == 504
        )
    assert not mesh.started, "the app's shutdown stopped the mesh it started"


def serve_app(app: FastAPI):  # type: ignore[no-untyped-def]
    import contextlib
    import threading

    import uvicorn

    from meshlib._net import bind

    @contextlib.contextmanager
    def run() -> Iterator[int]:
        sock = bind("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
            thread.join(10)

    return run()
