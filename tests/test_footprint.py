"""A process pays only for the roles it uses: what a client-only workload imports, checked in a
fresh interpreter (benchmarks/footprint.py measures what that saves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer

SERVER_SIDE = (
    "uvicorn",
    "starlette",
    "cheroot",
    "httptools",
    "grpc",
    "jwt",
    "prometheus_client",
    "meshlib.controlplane",
    "meshlib.ca.authority",
    "meshlib.ca.tokens",
    "meshlib.server",
    "meshlib.asgi",
    "meshlib.wsgi",
    "meshlib.request_authn",
    "meshlib.cli",
)

CHILD = """
import json, sys
from meshlib import Mesh
mesh = Mesh("frontend", **json.loads(sys.argv[1])).start()
with mesh.http_client():
    pass
print(json.dumps({"version": mesh.version, "identity": mesh.workload_identity is not None,
                  "modules": sorted(sys.modules)}))
mesh.close()
"""


def _loaded(code: str, *args: str) -> list[str]:
    ran = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    return list(json.loads(ran.stdout.splitlines()[-1])["modules"])


def _heavy(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


def test_import_meshlib_loads_only_the_package_itself() -> None:
    modules = _loaded("import json, sys, meshlib; print(json.dumps({'modules': sorted(sys.modules)}))")
    assert sorted(m for m in modules if m.startswith("meshlib")) == [
        "meshlib",
        "meshlib._lazy",
        "meshlib._version",
        "meshlib.errors",
    ]
    assert _heavy(modules, ("pydantic", "httpx", "cryptography", "yaml", *SERVER_SIDE)) == []


def test_a_client_mesh_reading_files_loads_no_server_side_and_no_cryptography(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
        "spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n"
        "    retries: {attempts: 2, retryOn: connect-failure}\n"
    )
    options = {"config": str(policy), "data_dir": str(tmp_path / "data")}
    modules = _loaded(CHILD, json.dumps(options))
    assert "meshlib.core.client_stack" in modules  # the check below is of a working client
    assert _heavy(modules, (*SERVER_SIDE, "cryptography", "meshlib.workload_identity")) == []
    # Nor what only a workload watching a config service uses: the watcher, its retry library,
    # the watch protocol's models and the last-known-good copy.
    watching = ("tenacity", "meshlib.watcher", "meshlib.protocol", "meshlib.last_known_good")
    assert _heavy(modules, watching) == []


def test_a_watching_client_with_an_identity_loads_no_server_side(tmp_path: Path) -> None:
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:
        token = admin.create_token("frontend")["token"]
        options = {"control_plane": server.url, "token": token, "data_dir": str(tmp_path / "data")}
        ran = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(options)], capture_output=True, text=True, timeout=60
        )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout.splitlines()[-1])
    assert report["identity"] is True  # it does hold an X.509-SVID (cryptography comes with it)
    assert _heavy(report["modules"], SERVER_SIDE) == []
