"""``meshlib.asgi.MeshMiddleware`` (it lives in ``meshlib.server.asgi``)."""

from .server.asgi import ASGIApp, MeshMiddleware

__all__ = ["ASGIApp", "MeshMiddleware"]
