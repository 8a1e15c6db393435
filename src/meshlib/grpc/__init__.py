"""meshlib for gRPC (``pip install meshlib[grpc]``; the ``meshlib-grpc`` package is the
entry point): mesh channels for ``grpc`` and ``grpc.aio``, server interceptors, servers.

    channel = meshlib.grpc.channel(mesh, "reviews:50051")    # a grpc.Channel; stubs work as usual
    meshlib.grpc.serve(lambda server: add_ReviewsServicer_to_server(Reviews(), server), mesh=mesh)

Built on ``meshlib.adapter`` only, as any other adapter would be.
"""

from __future__ import annotations

from typing import Any

from .adapter import GrpcMesh, MeshRpcError
from .aio_channel import AioMeshChannel
from .aio_server import aio_serve
from .server import (
    AioMeshServerInterceptor,
    MeshServerInterceptor,
    listen,
    peer_of,
    serve,
    server_credentials,
)
from .sync_channel import MeshChannel

__all__ = [
    "AioMeshChannel",
    "AioMeshServerInterceptor",
    "MeshChannel",
    "MeshRpcError",
    "MeshServerInterceptor",
    "aio_channel",
    "aio_serve",
    "channel",
    "listen",
    "peer_of",
    "serve",
    "server_credentials",
]


def channel(mesh: GrpcMesh, target: str, options: list[tuple[str, Any]] | None = None) -> MeshChannel:
    """A channel to a mesh service (``reviews``, ``reviews:50051``): every call is routed,
    balanced, retried and bounded by the mesh's policy. Other targets pass through."""
    return MeshChannel(mesh, target, options)


def aio_channel(mesh: GrpcMesh, target: str, options: list[tuple[str, Any]] | None = None) -> AioMeshChannel:
    """The ``grpc.aio`` twin of :func:`channel`: ``await stub.Method(request)`` as usual."""
    return AioMeshChannel(mesh, target, options)
