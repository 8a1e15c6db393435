"""meshlib-flask on a real WSGI server: the README example, g.mesh_peer, the client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import meshlib_flask
from cheroot import wsgi
from flask import Flask, g

import meshlib
from tests.servers import Backend, free_port, serve, service_entry_policy

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    ratings = Backend("ratings")
    with serve(ratings) as ratings_port:
        code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
        assert code is not None
        script = tmp_path / "details.py"
        script.write_text(code.group(1))
        port = free_port()
        env = {
            **os.environ,
            "MESH_SERVICE": "details",
            "PORT": str(port),
            "MESH_CONFIG": str(service_entry_policy(tmp_path / "policy", "ratings", ratings_port)),
            "MESH_DATA_DIR": str(tmp_path / "data"),
        }
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    response = httpx.get(
                        f"http://127.0.0.1:{port}/details/3",
                        headers={"x-envoy-expected-rq-timeout-ms": "1500"},
                    )
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    assert proc.poll() is None
                    time.sleep(0.1)
            assert response.status_code == 200, response.text
            assert response.json() == {
                "id": 3,
                "caller": None,
                "ratings": {"name": "ratings", "path": "/ratings/3"},
            }
            _, _, headers = ratings.seen[-1]
            assert int(headers["x-envoy-expected-rq-timeout-ms"]) <= 1500
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0


def test_extension_wires_peer_client_and_middleware(tmp_path: Path) -> None:
    ratings = Backend("ratings")
    with serve(ratings) as ratings_port:
        mesh = meshlib.Mesh(
            "details", config=service_entry_policy(tmp_path / "policy", "ratings", ratings_port)
        )
        app = Flask(__name__)
        ext = meshlib_flask.MeshExtension(app, mesh=mesh)
        assert ext.mesh is mesh
        assert mesh.started

        @app.get("/")
        def index() -> dict[str, object]:
            upstream = meshlib_flask.client().get("http://ratings/")
            return {
                "peer": g.mesh_peer,
                "upstream": upstream.json()["name"],
                "same": meshlib_flask.current_mesh() is mesh,
            }

        server = wsgi.Server(("127.0.0.1", 0), app, numthreads=4)
        server.prepare()
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        try:
            port = server.bind_addr[1]
            assert httpx.get(f"http://127.0.0.1:{port}/").json() == {
                "peer": None,
                "upstream": "ratings",
                "same": True,
            }
            expired = httpx.get(f"http://127.0.0.1:{port}/", headers={"x-envoy-expected-rq-timeout-ms": "0"})
            assert expired.status_code == 504
            assert mesh.metrics.requests_total(direction="inbound") == 2, "wrapped once"
        finally:
            server.stop()
            thread.join(10)
            mesh.close()
