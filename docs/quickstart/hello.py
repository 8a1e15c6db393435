"""``hello``: the quickstart's service. v1 and v2 are this file started with another label.

    MESH_SERVICE=hello MESH_LABELS=version=v1 MESH_CONTROL_PLANE=... MESH_TOKEN=... python hello.py

Answers ``hello from v1 to spiffe://cluster.local/ns/default/sa/caller``: its version, and the
caller's identity as its verified mTLS certificate proves it.
"""

from __future__ import annotations

import os
from typing import Any

import meshlib

mesh = meshlib.Mesh.from_env()
VERSION = mesh.settings.labels.get("version", "unversioned")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = f"hello from {VERSION} to {meshlib.current_peer()}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    # Port 0: any free port; the workload registers the one it got with the config service.
    meshlib.serve_asgi(app, mesh=mesh, port=int(os.environ.get("PORT", "0")))
