"""serve_asgi / serve_wsgi as real processes: registration, readiness, graceful drain on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh
from meshlib.controlplane.server import ConfigServer
from tests.servers import wait_for

REVIEWS = "reviews.default.svc.cluster.local"

REPLICA = textwrap.dedent("""\
    import sys
    import meshlib

    kind, name, control_plane, data_dir = sys.argv[1:5]
    mesh = meshlib.Mesh("reviews", labels={"version": name}, control_plane=control_plane, data_dir=data_dir)

    async def asgi_app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-replica", name.encode())]})
        await send({"type": "http.response.body", "body": name.encode()})

    def wsgi_app(environ, start_response):
        start_response("200 OK", [("x-replica", name), ("Content-Length", str(len(name)))])
        return [name.encode()]

    if kind == "asgi":
        meshlib.serve_asgi(asgi_app, mesh=mesh, port=0, drain_delay=1.0)
    else:
        meshlib.serve_wsgi(wsgi_app, mesh=mesh, port=0, drain_delay=1.0)
    print("drained and stopped", flush=True)
""")


def start_replica(kind: str, name: str, url: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), kind, name, url, str(tmp_path / name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_drain_under_100_rps_fails_no_request(kind: str, tmp_path: Path) -> None:
    with ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server:
        replicas = {name: start_replica(kind, name, server.url, tmp_path) for name in ("a", "b")}
        try:
            with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "frontend") as mesh:
                assert wait_for(lambda: len([e for e in mesh.snapshot.endpoints(REVIEWS) if e.ready]) == 2), (
                    "both replicas registered"
                )
                labels = sorted(e.labels["version"] for e in mesh.snapshot.endpoints(REVIEWS))
                assert labels == ["a", "b"]
                outcomes: list[str] = []

                def load() -> None:
                    with mesh.http_client() as client:
                        started = time.monotonic()
                        for i in range(400):  # 100 requests/s for 4 s
                            try:
                                outcomes.append(client.get("http://reviews/").headers["x-replica"])
                            except httpx.HTTPError as exc:
                                outcomes.append(f"error: {exc!r}")
                            time.sleep(max(0.0, started + (i + 1) / 100 - time.monotonic()))

                worker = threading.Thread(target=load)
                worker.start()
                time.sleep(1.0)
                replicas["a"].send_signal(signal.SIGTERM)
                worker.join(30)
                counts = Counter(outcomes)
                assert len(outcomes) == 400
                assert [o for o in outcomes if o.startswith("error")] == [], counts
                assert counts["a"] > 20, "a served until it drained"
                assert outcomes[-50:] == ["b"] * 50, "after the drain only b is picked"
                assert replicas["a"].wait(15) == 0
                assert "drained and stopped" in (replicas["a"].stdout.read() if replicas["a"].stdout else "")
                assert wait_for(
                    lambda: [e.labels["version"] for e in mesh.snapshot.endpoints(REVIEWS)] == ["b"]
                )
        finally:
            for proc in replicas.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)


def test_readiness_turns_off_during_the_drain(tmp_path: Path) -> None:
    with ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server:
        proc = start_replica("asgi", "a", server.url, tmp_path)
        try:
            with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "frontend") as mesh:
                assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS)))
                (endpoint,) = mesh.snapshot.endpoints(REVIEWS)
                ready = f"http://{endpoint.address}:{endpoint.port}/.well-known/meshlib/ready"
                assert httpx.get(ready).status_code == 200
                proc.send_signal(signal.SIGTERM)
                assert wait_for(lambda: httpx.get(ready).status_code == 503, timeout=1.0)
                assert wait_for(lambda: not mesh.snapshot.endpoints(REVIEWS)[0].ready, timeout=1.0)
                assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_serve_does_not_wrap_an_app_twice(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from flask import Flask

    import meshlib
    from meshlib.server.serving import _asgi_wrapped, _wsgi_wrapped

    mesh = Mesh("reviews", config=tmp_path)
    fastapi_app = FastAPI()
    assert not _asgi_wrapped(fastapi_app)
    fastapi_app.add_middleware(meshlib.asgi.MeshMiddleware, mesh=mesh)
    assert _asgi_wrapped(fastapi_app)
    flask_app = Flask(__name__)
    assert not _wsgi_wrapped(flask_app)
    flask_app.wsgi_app = meshlib.wsgi.MeshMiddleware(flask_app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
    assert _wsgi_wrapped(flask_app)
