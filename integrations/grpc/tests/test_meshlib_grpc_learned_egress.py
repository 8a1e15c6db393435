"""gRPC channels of a workload that learns its egress hosts: the first call fetches the endpoints."""

from __future__ import annotations

from pathlib import Path

import meshlib_grpc
from grpc_backends import UNARY, GrpcBackend, grpc_server, wait_for

from meshlib import Mesh
from meshlib.controlplane.server import ConfigServer
from meshlib.registry import AnnouncedEndpoint

REVIEWS = "reviews.default.svc.cluster.local"


async def test_sync_and_aio_channels_learn_the_host_on_their_first_call(tmp_path: Path) -> None:
    backend = GrpcBackend("reviews-grpc")
    with (
        grpc_server(backend.handler()) as port,
        ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server,
        Mesh("reviews", control_plane=server.url, data_dir=tmp_path / "r") as reviews,
        Mesh("ratings", control_plane=server.url, data_dir=tmp_path / "t") as other,
    ):
        reviews.announce([AnnouncedEndpoint(address="127.0.0.1", port=port, protocol="grpc")])
        assert wait_for(lambda: len(other.snapshot.endpoints(REVIEWS)) == 1)
        with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "f", learn_egress=True) as mesh:
            assert mesh.snapshot.endpoints(REVIEWS) == ()
            with meshlib_grpc.channel(mesh, "reviews:50051") as channel:
                assert channel.unary_unary(UNARY)(b"x", timeout=5) == b"reviews-grpc"
            assert len(mesh.grpc_table.snapshot.endpoints(REVIEWS)) == 1
        with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "g", learn_egress=True) as mesh:
            assert mesh.snapshot.endpoints(REVIEWS) == ()
            async with meshlib_grpc.aio_channel(mesh, "reviews:50051") as aio:
                assert await aio.unary_unary(UNARY)(b"x", timeout=5) == b"reviews-grpc"
            assert mesh.learned_egress is not None
            assert mesh.learned_egress.hosts() == [f"*/{REVIEWS}"]
    assert backend.hits == 2
