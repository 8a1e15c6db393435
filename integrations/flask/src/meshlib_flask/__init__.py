"""meshlib for Flask: the ``init_app`` extension.

    mesh_ext = MeshExtension()
    mesh_ext.init_app(app)                 # or MeshExtension(app, mesh=...)

    @app.get("/reviews/<int:review_id>")
    def review(review_id):
        g.mesh_peer                        # the caller's verified identity, or None
        meshlib_flask.client().get("http://ratings/...")   # carries this request's deadline

``init_app`` wraps ``app.wsgi_app`` in the mesh's WSGI middleware, starts the mesh (when it
was not started yet) and stops it at interpreter exit. The client is one thread-safe
``httpx.Client`` per app: what makes a call "request-scoped" (the inbound deadline, the
trace) travels in context variables that the middleware sets for the serving thread.
"""

from __future__ import annotations

import atexit
from typing import Any

import httpx
from flask import Flask, current_app, g

import meshlib
from meshlib import Mesh

__all__ = ["MeshExtension", "client", "current_mesh"]

_KEY = "meshlib"


class MeshExtension:
    def __init__(self, app: Flask | None = None, mesh: Mesh | None = None) -> None:
        self.mesh = mesh
        if app is not None:
            self.init_app(app, mesh)

    def init_app(self, app: Flask, mesh: Mesh | None = None) -> Mesh:
        mesh = mesh or self.mesh or Mesh.from_env()
        if not mesh.started:
            mesh.start()
            atexit.register(mesh.close)
        app.wsgi_app = meshlib.wsgi.MeshMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
        state = _State(mesh)
        app.extensions[_KEY] = state

        @app.before_request
        def _peer_on_g() -> None:
            g.mesh_peer = meshlib.current_peer()

        return mesh


class _State:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = self.mesh.http_client()
            atexit.register(self._client.close)
        return self._client


def _state() -> _State:
    state: Any = current_app.extensions.get(_KEY)
    if not isinstance(state, _State):
        raise RuntimeError("MeshExtension.init_app(app) was not called for this app")
    return state


def current_mesh() -> Mesh:
    """The app's ``meshlib.Mesh``."""
    return _state().mesh


def client() -> httpx.Client:
    """The app's mesh HTTP client; calls made while serving carry the inbound deadline."""
    return _state().client
