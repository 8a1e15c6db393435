"""meshlib for gRPC: mesh channels, a server interceptor and a mesh server.

channel = meshlib_grpc.channel(mesh, "reviews:50051")     # a grpc.Channel; stubs work as usual
stub = ReviewsStub(channel)

meshlib_grpc.serve(lambda server: add_ReviewsServicer_to_server(Reviews(), server), mesh=mesh)
await meshlib_grpc.aio_serve(lambda server: add_ReviewsServicer_to_server(Reviews(), server), mesh=mesh)
"""

from __future__ import annotations

from typing import Any

from meshlib import Mesh

from ._aio import AioMeshChannel, AioMeshServerInterceptor
from ._aio_server import aio_serve
from ._channel import MeshChannel
from ._common import MeshRpcError
from ._server import MeshServerInterceptor, serve

__all__ = [
    "AioMeshChannel",
    "AioMeshServerInterceptor",
    "MeshChannel",
    "MeshRpcError",
    "MeshServerInterceptor",
    "aio_channel",
    "aio_serve",
    "channel",
    "serve",
]


def channel(mesh: Mesh, target: str, options: list[tuple[str, Any]] | None = None) -> MeshChannel:
    """A channel to a mesh service (``reviews``, ``reviews:50051``): every call is routed,
    balanced, retried and bounded by the mesh's policy. Other targets pass through."""
    return MeshChannel(mesh, target, options)


def aio_channel(mesh: Mesh, target: str, options: list[tuple[str, Any]] | None = None) -> AioMeshChannel:
    """The ``grpc.aio`` twin of :func:`channel`: ``await stub.Method(request)`` as usual."""
    return AioMeshChannel(mesh, target, options)
