"""Mutual TLS in one file: the config service (which is also the CA), a STRICT mesh, and two
workloads that get their identities from bootstrap tokens.

    python examples/mtls_quickstart.py

What it shows: `reviews` (a separate process, served by `meshlib.serve_asgi`) sees the
caller's SPIFFE ID from its verified client certificate; a plaintext caller is refused and
told why; the registry shows each workload's certificate expiry and issuer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import meshlib
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer

STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "istio-system"},
    "spec": {"mtls": {"mode": "STRICT"}},
}
REVIEWS = "reviews.default.svc.cluster.local"


async def reviews_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = f"reviews saw {meshlib.current_peer()}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def serve_reviews(control_plane: str, data_dir: str) -> None:
    """The `reviews` workload: its own process, as in production."""
    mesh = meshlib.Mesh(
        "reviews", control_plane=control_plane, token=os.environ["MESH_TOKEN"], data_dir=data_dir
    )
    meshlib.serve_asgi(reviews_app, mesh=mesh, port=0, drain_delay=0.2)


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        ConfigServer(Path(tmp) / "config-service") as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        admin.apply([STRICT])
        reviews_token = admin.create_token("reviews")["token"]  # in real life: meshctl token create
        # The token goes in the environment (MESH_TOKEN), never on a command line others can read.
        replica = subprocess.Popen(  # noqa: S603 - this very file, with our own arguments
            [sys.executable, __file__, "--reviews", server.url, str(Path(tmp) / "reviews")],
            env={**os.environ, "MESH_TOKEN": reviews_token},
        )
        try:
            frontend_token = admin.create_token("frontend")["token"]
            with meshlib.Mesh(
                "frontend", control_plane=server.url, token=frontend_token, data_dir=Path(tmp) / "frontend"
            ) as mesh:
                deadline = time.monotonic() + 30
                while not mesh.snapshot.endpoints(REVIEWS):
                    if time.monotonic() > deadline:
                        raise SystemExit("reviews did not come up")
                    time.sleep(0.05)
                with mesh.http_client() as client:
                    print(client.get("http://reviews/").text.strip())
                (endpoint,) = mesh.snapshot.endpoints(REVIEWS)
                refused = httpx.get(f"http://{endpoint.address}:{endpoint.port}/")
                print(f"plaintext caller: {refused.status_code} {refused.text.strip()}")
                for item in admin.workloads()["items"]:
                    found = item["registration"]
                    print(
                        f"{found['service']}: certificate expires {found['certificateExpires']}, "
                        f"issuer {found['certificateIssuer']}"
                    )
        finally:
            replica.send_signal(signal.SIGTERM)
            replica.wait(20)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--reviews":
        serve_reviews(sys.argv[2], sys.argv[3])
    else:
        main()
