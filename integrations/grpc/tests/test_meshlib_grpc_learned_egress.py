"""gRPC channels of a workload that learns its egress hosts: the first call fetches the endpoints."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import meshlib_grpc
import pytest
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


def test_the_wait_for_a_new_host_counts_against_the_call_deadline(tmp_path: Path) -> None:
    backend = GrpcBackend("reviews-grpc")
    with (
        grpc_server(backend.handler()) as port,
        ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server,
        Mesh("reviews", control_plane=server.url, data_dir=tmp_path / "r") as reviews,
        Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "f", learn_egress=True) as mesh,
    ):
        reviews.announce([AnnouncedEndpoint(address="127.0.0.1", port=port, protocol="grpc")])
        assert mesh.learned_egress is not None
        mesh.learned_egress.wake = lambda: None  # the answer never comes: the call's 0.3 s runs out
        started = time.monotonic()
        with meshlib_grpc.channel(mesh, "reviews:50051") as channel, pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(UNARY)(b"x", timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5, "not the whole 2 s wait"
    assert backend.hits == 0
