"""meshlib_grpc's public surface is what __all__ says; this pins it so changes are deliberate."""

from __future__ import annotations

import meshlib_grpc

EXPECTED = [
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


def test_all_is_pinned_and_importable() -> None:
    assert sorted(meshlib_grpc.__all__) == sorted(EXPECTED)
    for name in meshlib_grpc.__all__:
        assert getattr(meshlib_grpc, name) is not None
