"""``aio_serve``: a ``grpc.aio`` server as a mesh workload, the twin of ``serve``.

The standard health service (its asyncio servicer) tied to readiness, mTLS with the mesh
identity when there is one (rotating credentials), registration once serving, and on
SIGTERM/SIGINT (or when ``stop`` is set): NOT_SERVING, the endpoint marked not ready, a
pause for clients to notice, in-flight calls finished (bounded), deregistration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from ..adapter import ServerLimits, grpc_server_options
from .server import AioMeshServerInterceptor, listen

__all__ = ["aio_serve"]

log = logging.getLogger("meshlib")


async def aio_serve(
    register: Callable[[grpc.aio.Server], None],
    *,
    mesh: Any,
    host: str = "127.0.0.1",
    port: int = 50051,
    drain_delay: float = 2.0,
    drain_timeout: float = 20.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    limits: ServerLimits | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or ``stop``, then drain. ``register(server)`` adds your
    servicers; ``ready`` (optional) is set once serving; ``limits`` as for ``serve``."""
    own_mesh = not mesh.started
    await asyncio.to_thread(mesh.start)  # waits for the first snapshot: not on the loop
    interceptor = AioMeshServerInterceptor(mesh)
    server = grpc.aio.server(
        interceptors=[interceptor], options=grpc_server_options(limits or ServerLimits())
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    endpoint = listen(server, mesh, host, port)
    interceptor.port = endpoint.port
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await asyncio.to_thread(mesh.announce, [endpoint])
    log.info("gRPC (aio) serving on %s:%d as %s", endpoint.address, endpoint.port, mesh.identity)
    stopping = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    handled: list[signal.Signals] = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, _on_signal, stopping, server)
            handled.append(sig)
    if ready is not None:
        ready.set()
    try:
        await stopping.wait()
        log.info("draining: NOT_SERVING, endpoint not ready; stopping in %.1fs", drain_delay)
        await health_servicer.enter_graceful_shutdown()
        mesh.draining = True
        await asyncio.to_thread(mesh.announce, [endpoint.model_copy(update={"ready": False})])
        await asyncio.sleep(drain_delay)
        await server.stop(drain_timeout)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(mesh.announce, [])
        if own_mesh:
            await asyncio.to_thread(mesh.close)


def _on_signal(stopping: asyncio.Event, server: grpc.aio.Server) -> None:
    if stopping.is_set():  # a second signal: stop now
        asyncio.get_running_loop().create_task(server.stop(0))
        return
    stopping.set()
