"""``frontend``: a FastAPI service, the app's front door, calling ``orders`` through the mesh.

    MESH_SERVICE=frontend MESH_LABELS=app=frontend MESH_CONTROL_PLANE=... python frontend.py

``GET /order/<item>`` places an order (orders answers which version served it); the caller's
``end-user`` header travels on, so the VirtualService can send a test user to orders v2.
``GET /quote`` is cheap and rate limited (policy/rate-limit.yaml).
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from meshlib_fastapi import MeshClient, instrument

import meshlib

app = FastAPI()
mesh = instrument(app, meshlib.Mesh.from_env())


@app.get("/order/{item}")
async def order(item: str, client: MeshClient, end_user: str | None = Header(default=None)) -> JSONResponse:
    headers = {"end-user": end_user} if end_user else {}
    try:
        answer = await client.get(f"http://orders/orders/{item}", headers=headers)
    except meshlib.MeshRequestError as exc:  # no healthy upstream, retries exhausted...: as Envoy, a 503
        return JSONResponse({"frontend": "ok", "orders": {"error": f"{exc.flag} {exc}"}}, status_code=503)
    try:
        body = answer.json()
    except ValueError:  # a mesh answer (503 no healthy upstream, 403 denied...) is plain text
        body = {"error": answer.text.strip()}
    return JSONResponse({"frontend": "ok", "orders": body}, status_code=answer.status_code)


@app.get("/quote")
async def quote() -> dict[str, int]:
    return {"price": 42}


if __name__ == "__main__":
    meshlib.serve_asgi(app, mesh=mesh, port=int(os.environ.get("PORT", "8080")))
