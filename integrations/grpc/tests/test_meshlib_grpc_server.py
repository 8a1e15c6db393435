"""The server side: interceptor (deadline, metrics) and serve() as real processes (drain, health)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import meshlib_grpc
import pytest
from grpc_backends import UNARY, GrpcBackend, grpc_server, grpc_service_entry, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshlib
from meshlib import Mesh
from meshlib.controlplane.server import ConfigServer

REVIEWS = "reviews.default.svc.cluster.local"


def test_the_inbound_deadline_bounds_the_handlers_outbound_calls(tmp_path: Path) -> None:
    reviews = GrpcBackend("reviews")
    with grpc_server(reviews.handler()) as reviews_port:
        policy = tmp_path / "policy.yaml"
        policy.write_text(grpc_service_entry("reviews", {"v1-a": reviews_port}))
        with Mesh("frontend", config=policy) as mesh:
            channel = meshlib_grpc.channel(mesh, "reviews")
            seen: list[float | None] = []

            def front(request: bytes, context: grpc.ServicerContext) -> bytes:
                deadline = meshlib.current_deadline()
                seen.append(None if deadline is None else deadline - time.monotonic())
                return channel.unary_unary(UNARY)(b"x")

            handler = grpc.method_handlers_generic_handler(
                "test.Front", {"Call": grpc.unary_unary_rpc_method_handler(front)}
            )
            interceptors = [meshlib_grpc.MeshServerInterceptor(mesh)]
            with (
                grpc_server(handler, interceptors=interceptors) as port,
                grpc.insecure_channel(f"127.0.0.1:{port}") as plain,
            ):
                assert plain.unary_unary("/test.Front/Call")(b"x", timeout=0.6) == b"reviews"
                assert plain.unary_unary("/test.Front/Call")(b"x") == b"reviews"
            channel.close()
            assert seen[0] is not None
            # gRPC core keeps deadlines in whole milliseconds, rounded up on the client and
            # counted from a millisecond clock on the server: its time_remaining() exceeds the
            # caller's timeout in most calls (measured: 370 of 500 calls with timeout=0.6, by
            # up to 0.84 ms). Two milliseconds is that rounding, on both sides.
            assert 0.3 < seen[0] <= 0.6 + 0.002
            assert seen[1] is None
            assert reviews.remaining[0] is not None
            assert reviews.remaining[0] <= 0.65, (
                "the outbound call carried the inbound deadline (grpc rounds up)"
            )
            assert reviews.remaining[1] is not None
            assert reviews.remaining[1] > 1e9, "no deadline in, none out (grpc reports ~9.2e18 s)"
            assert mesh.metrics.requests_total(direction="inbound") == 2


REPLICA = textwrap.dedent("""\
    import asyncio, os, sys
    import grpc
    import meshlib, meshlib_grpc

    name, control_plane, data_dir = sys.argv[1:4]
    mesh = meshlib.Mesh("reviews", labels={"version": name}, control_plane=control_plane, data_dir=data_dir)

    def unary(request, context):
        return name.encode()

    async def aio_unary(request, context):
        return name.encode()

    def register(server):
        handler = aio_unary if os.environ["KIND"] == "aio" else unary
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(handler)}),))

    if os.environ["KIND"] == "aio":
        asyncio.run(meshlib_grpc.aio_serve(register, mesh=mesh, port=0, drain_delay=1.0))
    else:
        meshlib_grpc.serve(register, mesh=mesh, port=0, drain_delay=1.0)
    print("drained and stopped", flush=True)
""")


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_drain_under_100_calls_per_second_fails_no_call(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KIND": kind}
    with ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server:
        replicas = {
            name: subprocess.Popen(
                [sys.executable, str(script), name, server.url, str(tmp_path / name)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in ("a", "b")
        }
        try:
            with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "frontend") as mesh:
                assert wait_for(lambda: len(mesh.grpc_table.snapshot.endpoints(REVIEWS)) == 2)
                (a,) = [e for e in mesh.snapshot.endpoints(REVIEWS) if e.labels["version"] == "a"]
                health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"{a.address}:{a.port}"))
                assert (
                    health.Check(health_pb2.HealthCheckRequest()).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
                outcomes: list[str] = []
                statuses: list[int] = []

                def load() -> None:
                    with meshlib_grpc.channel(mesh, "reviews") as channel:
                        unary = channel.unary_unary(UNARY)
                        started = time.monotonic()
                        for i in range(400):
                            try:
                                outcomes.append(unary(b"x", timeout=5).decode())
                            except grpc.RpcError as exc:
                                outcomes.append(f"error {exc.code().name} {exc.details()}")
                            time.sleep(max(0.0, started + (i + 1) / 100 - time.monotonic()))

                worker = threading.Thread(target=load)
                worker.start()
                time.sleep(1.0)
                replicas["a"].send_signal(signal.SIGTERM)
                time.sleep(0.3)
                try:
                    statuses.append(health.Check(health_pb2.HealthCheckRequest()).status)
                except grpc.RpcError:
                    statuses.append(-1)
                worker.join(30)
                counts = Counter(outcomes)
                assert len(outcomes) == 400
                assert [o for o in outcomes if o.startswith("error")] == [], counts
                assert counts["a"] > 20
                assert outcomes[-50:] == ["b"] * 50
                assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING], "NOT_SERVING while draining"
                assert replicas["a"].wait(15) == 0
                assert wait_for(
                    lambda: [e.labels["version"] for e in mesh.snapshot.endpoints(REVIEWS)] == ["b"]
                )
        finally:
            for proc in replicas.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)


def test_served_ports_bound_metadata_and_close_silent_connections(tmp_path: Path) -> None:
    """aio_serve (and serve, with the same options) as Envoy bounds a port: 60 KiB of metadata,
    and a connection that sends nothing is closed after the header timeout."""
    import asyncio
    import socket

    policy = tmp_path / "policy.yaml"
    policy.write_text(grpc_service_entry("elsewhere", {"v1-a": 1}))
    mesh = Mesh("reviews", config=policy, data_dir=tmp_path / "wl")

    async def unary(request: bytes, context: object) -> bytes:
        return b"reviews"

    handler = grpc.method_handlers_generic_handler(
        UNARY.split("/")[1], {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    port = _free_port()
    serving = loop.create_task(
        meshlib_grpc.aio_serve(
            lambda server: server.add_generic_rpc_handlers((handler,)),
            mesh=mesh,
            port=port,
            drain_delay=0.0,
            ready=ready,
            stop=stop,
            limits=meshlib.ServerLimits(header_timeout=0.5),
        )
    )
    thread = threading.Thread(target=loop.run_until_complete, args=(serving,), daemon=True)
    thread.start()
    try:
        assert wait_for(ready.is_set, 10)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            call = plain.unary_unary(UNARY)
            assert call(b"x", metadata=[("x-big", "a" * 50_000)], timeout=5) == b"reviews"
            with pytest.raises(grpc.RpcError) as caught:
                call(b"x", metadata=[("x-big", "a" * 70_000)], timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        silent = socket.create_connection(("127.0.0.1", port))
        silent.settimeout(5)
        started = time.monotonic()
        while silent.recv(4096):
            pass  # the server's SETTINGS frame, then its close
        assert time.monotonic() - started < 3.0
        silent.close()
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _inbound_bytes(mesh: Mesh) -> tuple[float, float]:
    """(request bytes, response bytes) summed over the mesh's inbound series."""
    series = [s for key, s in mesh.metrics.series() if key[0] == "inbound"]
    return sum(s.request_bytes for s in series), sum(s.response_bytes for s in series)


def test_served_grpc_calls_count_their_messages_bytes_as_sent_on_the_wire(tmp_path: Path) -> None:
    """istio_request_bytes / istio_response_bytes on a gRPC server: each message is its
    5-byte gRPC prefix plus its body, streams message by message."""
    from grpc_backends import CHAT, STREAM, UPLOAD

    reviews = GrpcBackend("reviews")
    with Mesh("reviews", data_dir=tmp_path / "reviews") as mesh:
        interceptors = [meshlib_grpc.MeshServerInterceptor(mesh)]
        with (
            grpc_server(reviews.handler(), interceptors=interceptors) as port,
            grpc.insecure_channel(f"127.0.0.1:{port}") as plain,
        ):
            assert plain.unary_unary(UNARY)(b"hello") == b"reviews"
            assert _inbound_bytes(mesh) == (5 + 5, 5 + 7)
            assert list(plain.unary_stream(STREAM)(b"x")) == [b"reviews-0", b"reviews-1", b"reviews-2"]
            assert _inbound_bytes(mesh) == (10 + 5 + 1, 12 + 3 * (5 + 9))
            assert plain.stream_unary(UPLOAD)(iter([b"a", b"bc"])) == b"reviews:2"
            assert _inbound_bytes(mesh) == (16 + (5 + 1) + (5 + 2), 54 + 5 + 9)
            assert list(plain.stream_stream(CHAT)(iter([b"q", b"rs"]))) == [b"reviews-q", b"reviews-rs"]
            assert _inbound_bytes(mesh) == (29 + (5 + 1) + (5 + 2), 68 + (5 + 9) + (5 + 10))


def test_aio_served_grpc_calls_count_their_messages_bytes(tmp_path: Path) -> None:
    import asyncio

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"reviews"

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        for i in range(2):
            yield f"r{i}".encode()

    async def upload(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        return b"%d" % len([m async for m in requests])

    async def main(mesh: Mesh) -> None:
        server = grpc.aio.server(interceptors=[meshlib_grpc.AioMeshServerInterceptor(mesh)])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Echo",
                    {
                        "Unary": grpc.unary_unary_rpc_method_handler(unary),
                        "Stream": grpc.unary_stream_rpc_method_handler(stream),
                        "Upload": grpc.stream_unary_rpc_method_handler(upload),
                    },
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await channel.unary_unary("/test.Echo/Unary")(b"abc") == b"reviews"
                got = [m async for m in channel.unary_stream("/test.Echo/Stream")(b"")]
                assert got == [b"r0", b"r1"]
                assert await channel.stream_unary("/test.Echo/Upload")(iter([b"ab", b"c"])) == b"2"
        finally:
            await server.stop(0)

    with Mesh("reviews", data_dir=tmp_path / "reviews") as mesh:
        asyncio.run(main(mesh))
        assert _inbound_bytes(mesh) == (5 + 3 + 5 + 0 + (5 + 2) + (5 + 1), 5 + 7 + 2 * (5 + 2) + (5 + 1))


def test_one_wrapped_handler_serves_every_call_with_that_calls_own_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshlib.grpc.server as server_module

    made: list[str] = []
    wrap = server_module._wrapped_handler

    def counted(*args: Any) -> Any:
        made.append(args[2])
        return wrap(*args)

    monkeypatch.setattr(server_module, "_wrapped_handler", counted)
    policy = tmp_path / "policy.yaml"
    policy.write_text(grpc_service_entry("other", {"v1": 9}))
    with Mesh("reviews", config=policy) as mesh:
        seen: list[float | None] = []

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            deadline = meshlib.current_deadline()
            seen.append(None if deadline is None else deadline - time.monotonic())
            return b"ok"

        handler = grpc.method_handlers_generic_handler(
            "test.Once", {"Call": grpc.unary_unary_rpc_method_handler(call)}
        )
        interceptors = [meshlib_grpc.MeshServerInterceptor(mesh)]
        with (
            grpc_server(handler, interceptors=interceptors) as port,
            grpc.insecure_channel(f"127.0.0.1:{port}") as plain,
        ):
            stub = plain.unary_unary("/test.Once/Call")
            assert stub(b"x", metadata=(("x-envoy-expected-rq-timeout-ms", "400"),)) == b"ok"
            assert stub(b"x") == b"ok"
            assert stub(b"x", metadata=(("x-envoy-expected-rq-timeout-ms", "2000"),)) == b"ok"
    assert made == ["/test.Once/Call"], "wrapped once, on the first call"
    assert seen[0] is not None
    assert 0.2 < seen[0] <= 0.4
    assert seen[1] is None, "the second call's own metadata: no deadline"
    assert seen[2] is not None
    assert 1.5 < seen[2] <= 2.0
