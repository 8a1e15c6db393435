"""meshlib for gRPC: mesh channels, server interceptors and a mesh server.

channel = meshlib_grpc.channel(mesh, "reviews:50051")     # a grpc.Channel; stubs work as usual
stub = ReviewsStub(channel)

meshlib_grpc.serve(lambda server: add_ReviewsServicer_to_server(Reviews(), server), mesh=mesh)
await meshlib_grpc.aio_serve(lambda server: add_ReviewsServicer_to_server(Reviews(), server), mesh=mesh)

The entry-point package: the machinery lives in ``meshlib.grpc`` (OpenTelemetry contrib's
shape: framework packages are thin shims over the generic adapters in core).
"""

from meshlib.grpc import (
    AioMeshChannel,
    AioMeshServerInterceptor,
    MeshChannel,
    MeshRpcError,
    MeshServerInterceptor,
    aio_channel,
    aio_serve,
    channel,
    serve,
)

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
