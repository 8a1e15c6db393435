"""``meshlib.wsgi.MeshMiddleware`` (it lives in ``meshlib.server.wsgi``)."""

from .server.wsgi import MeshMiddleware, WSGIApp

__all__ = ["MeshMiddleware", "WSGIApp"]
