"""gRPC with the mesh identity: mTLS between real processes, verified peer, rotation under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import meshlib_grpc
import pytest
from grpc_backends import wait_for

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer

REVIEWS = "reviews.default.svc.cluster.local"
FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"

REPLICA = textwrap.dedent("""\
    import os, sys, json
    import grpc
    import meshlib, meshlib_grpc

    mesh = meshlib.Mesh("reviews", control_plane=sys.argv[1], token=os.environ["TOKEN"], data_dir=sys.argv[2],
                        certificate_ttl=float(os.environ.get("CERT_TTL", "0")) or None)

    def unary(request, context):
        peer = meshlib.current_peer()
        serial = mesh.workload_identity.certificate.serial_number
        return json.dumps({"peer": str(peer) if peer else None, "serial": serial}).encode()

    async def aio_unary(request, context):
        return unary(request, context)

    aio = os.environ.get("KIND") == "aio"

    def register(server):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(aio_unary if aio else unary)}),))

    if aio:
        import asyncio
        asyncio.run(meshlib_grpc.aio_serve(register, mesh=mesh, port=0, drain_delay=0.2))
    else:
        meshlib_grpc.serve(register, mesh=mesh, port=0, drain_delay=0.2)
""")


@pytest.fixture
def mesh_ca(tmp_path: Path) -> Iterator[tuple[ConfigServer, ControlPlaneClient]]:
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:
        yield server, admin


def start(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path, ttl: float = 0, kind: str = "sync"
) -> subprocess.Popen[str]:
    script = tmp_path / "reviews.py"
    script.write_text(REPLICA)
    env = {
        **os.environ,
        "TOKEN": admin.create_token("reviews")["token"],
        "CERT_TTL": str(ttl),
        "PYTHONUNBUFFERED": "1",
        "KIND": kind,
    }
    return subprocess.Popen(
        [sys.executable, str(script), server.url, str(tmp_path / "reviews")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    return proc.stdout.read() if proc.stdout else ""


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_grpc_calls_are_mtls_with_the_callers_verified_identity(mesh_ca, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    import json

    server, admin = mesh_ca
    proc = start(server, admin, tmp_path, kind=kind)
    try:
        token = admin.create_token("frontend")["token"]
        with Mesh("frontend", control_plane=server.url, token=token, data_dir=tmp_path / "f") as mesh:
            assert wait_for(lambda: bool(mesh.grpc_table.snapshot.endpoints(REVIEWS))), stop(proc)
            (endpoint,) = mesh.snapshot.endpoints(REVIEWS)
            assert endpoint.tls
            with meshlib_grpc.channel(mesh, "reviews") as channel:
                body = json.loads(channel.unary_unary("/test.Echo/Unary")(b"x", timeout=5))
            assert body["peer"] == FRONTEND
            with (
                grpc.insecure_channel(f"{endpoint.address}:{endpoint.port}") as plain,
                pytest.raises(grpc.RpcError),
            ):
                plain.unary_unary("/test.Echo/Unary")(b"x", timeout=2)
    finally:
        stop(proc)


def test_each_caller_is_told_apart_when_calls_alternate(mesh_ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The server parses each client certificate once and keeps the identity by the whole
    certificate: two callers taking turns on one server are each seen as themselves."""
    import json

    server, admin = mesh_ca
    proc = start(server, admin, tmp_path)
    try:
        meshes = {
            name: Mesh(
                name,
                control_plane=server.url,
                token=admin.create_token(name)["token"],
                data_dir=tmp_path / name,
            ).start()
            for name in ("frontend", "checkout")
        }
        try:
            for mesh in meshes.values():
                assert wait_for(lambda mesh=mesh: bool(mesh.grpc_table.snapshot.endpoints(REVIEWS))), stop(
                    proc
                )
            channels = {name: meshlib_grpc.channel(mesh, "reviews") for name, mesh in meshes.items()}
            seen = [
                (name, json.loads(channels[name].unary_unary("/test.Echo/Unary")(b"x", timeout=5))["peer"])
                for _ in range(5)
                for name in ("frontend", "checkout")
            ]
            for channel in channels.values():
                channel.close()
        finally:
            for mesh in meshes.values():
                mesh.close()
        assert seen == [
            (name, f"spiffe://cluster.local/ns/default/sa/{name}")
            for _ in range(5)
            for name in ("frontend", "checkout")
        ]
    finally:
        stop(proc)


def test_grpc_rotation_under_200_calls_per_second_fails_no_call(mesh_ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    server, admin = mesh_ca
    proc = start(server, admin, tmp_path, ttl=3.0)
    try:
        token = admin.create_token("frontend")["token"]
        with Mesh(
            "frontend", control_plane=server.url, token=token, data_dir=tmp_path / "f", certificate_ttl=3.0
        ) as mesh:
            assert wait_for(lambda: bool(mesh.grpc_table.snapshot.endpoints(REVIEWS))), stop(proc)
            identity = mesh.workload_identity
            assert identity is not None
            first = identity.generation
            outcomes: list[str] = []
            serials: set[int] = set()

            def load() -> None:
                with meshlib_grpc.channel(mesh, "reviews") as channel:
                    unary = channel.unary_unary("/test.Echo/Unary")
                    started = time.monotonic()
                    for i in range(1200):  # 200 calls/s for 6 s
                        try:
                            body = json.loads(unary(b"x", timeout=5))
                            outcomes.append("ok" if body["peer"] == FRONTEND else f"peer {body['peer']}")
                            serials.add(body["serial"])
                        except grpc.RpcError as exc:
                            outcomes.append(f"{exc.code().name}: {exc.details()}")
                        time.sleep(max(0.0, started + (i + 1) / 200 - time.monotonic()))

            worker = threading.Thread(target=load)
            worker.start()
            worker.join(60)
            assert len(outcomes) == 1200
            assert [o for o in outcomes if o != "ok"] == []
            assert identity.generation > first, "the client certificate rotated"
            assert len(serials) >= 2, "the server certificate rotated"
    finally:
        stop(proc)


def test_an_expired_client_certificate_fails_the_call_instead_of_going_plaintext(
    mesh_ca, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The CA is gone and the caller's certificate expired: calls toward an mTLS endpoint fail
    with UNAVAILABLE naming the reason (sync and aio); nothing is sent in plaintext."""
    import asyncio

    server, admin = mesh_ca
    proc = start(server, admin, tmp_path)
    try:
        token = admin.create_token("frontend")["token"]
        options = {"token": token, "data_dir": tmp_path / "f", "certificate_ttl": 2.0}
        with Mesh("frontend", control_plane=server.url, **options) as mesh:  # type: ignore[arg-type]
            identity = mesh.workload_identity
            assert identity is not None
            assert wait_for(lambda: bool(mesh.grpc_table.snapshot.endpoints(REVIEWS))), stop(proc)
            with meshlib_grpc.channel(mesh, "reviews") as channel:
                assert channel.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
                server.stop()  # no renewal from here on
                assert wait_for(lambda: not identity.valid(), 10)
                with pytest.raises(grpc.RpcError) as refused:
                    channel.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not sending in plaintext" in refused.value.details()
            assert "certificate expired at" in refused.value.details()

            async def aio_call() -> grpc.RpcError:
                async with meshlib_grpc.aio_channel(mesh, "reviews") as aio:
                    with pytest.raises(grpc.RpcError) as caught:
                        await aio.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
                    return caught.value

            error = asyncio.run(aio_call())
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "not sending in plaintext" in error.details()
    finally:
        stop(proc)
