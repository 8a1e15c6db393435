"""meshlib for FastAPI.

    app = FastAPI()
    mesh = meshlib_fastapi.instrument(app)          # Mesh.from_env() unless you pass one

    @app.get("/reviews/{id}")
    async def review(id: int, client: MeshClient, peer: Peer): ...

``instrument`` adds the mesh middleware and wraps the app's lifespan so that the mesh
starts with the app and stops with it. ``MeshClient`` is the mesh's ``httpx.AsyncClient``
(one per app); calls made with it while serving a request carry that request's deadline.
``Peer`` is the caller's verified identity (None for plaintext callers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request

import meshlib
from meshlib import Mesh, PeerIdentity

__all__ = ["MeshClient", "Peer", "RequiredPeer", "get_mesh", "instrument", "mesh_client", "peer_identity"]

_STATE_MESH = "meshlib_mesh"
_STATE_CLIENT = "meshlib_client"


def instrument(app: FastAPI, mesh: Mesh | None = None) -> Mesh:
    """Add the mesh middleware and tie the mesh (and its HTTP client) to the app's lifespan."""
    mesh = mesh or Mesh.from_env()
    app.add_middleware(meshlib.asgi.MeshMiddleware, mesh=mesh)
    setattr(app.state, _STATE_MESH, mesh)
    original: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        owned = not mesh.started
        if owned:
            await mesh.__aenter__()
        client = mesh.async_http_client()
        setattr(app.state, _STATE_CLIENT, client)
        try:
            async with original(application) as state:
                yield state
        finally:
            await client.aclose()
            if owned:
                await mesh.__aexit__(None, None, None)

    app.router.lifespan_context = lifespan
    return mesh


def get_mesh(request: Request) -> Mesh:
    mesh = getattr(request.app.state, _STATE_MESH, None)
    if not isinstance(mesh, Mesh):
        raise RuntimeError("meshlib_fastapi.instrument(app) was not called for this app")
    return mesh


def mesh_client(request: Request) -> httpx.AsyncClient:
    """The app's mesh HTTP client; requests made while serving carry the inbound deadline."""
    client = getattr(request.app.state, _STATE_CLIENT, None)
    if not isinstance(client, httpx.AsyncClient):
        raise RuntimeError("the mesh client exists while the app runs (its lifespan started it)")
    return client


def peer_identity(request: Request) -> PeerIdentity | None:
    """The caller's identity from its verified certificate; None for plaintext callers."""
    peer = request.scope.get("meshlib.peer")
    return peer if isinstance(peer, PeerIdentity) else None


def required_peer(request: Request) -> PeerIdentity:
    peer = peer_identity(request)
    if peer is None:
        raise HTTPException(status_code=401, detail="this endpoint needs a mesh identity (mTLS)")
    return peer


MeshClient = Annotated[httpx.AsyncClient, Depends(mesh_client)]
Peer = Annotated[PeerIdentity | None, Depends(peer_identity)]
RequiredPeer = Annotated[PeerIdentity, Depends(required_peer)]
