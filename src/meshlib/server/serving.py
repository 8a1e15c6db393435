"""``serve_asgi`` and ``serve_wsgi``: run an application as a mesh workload.

Both: wrap the app in the mesh middleware, listen, then register the endpoint (with the
mesh's labels) once ready. On SIGTERM or SIGINT they drain: mark the endpoint not ready,
wait ``drain_delay`` so that every client's snapshot stops picking it, stop accepting,
let in-flight requests finish (at most ``drain_timeout``), deregister, and return.
Health: ``/.well-known/meshlib/ready`` (503 while draining or without policy) and
``/.well-known/meshlib/live`` on the same port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from .._net import advertise_address, bind
from ..mesh import Mesh
from ..registry import AnnouncedEndpoint
from .asgi import ASGIApp
from .asgi import MeshMiddleware as AsgiMiddleware
from .limits import ServerLimits
from .uvicorn_server import mesh_protocol_class
from .wsgi import MeshMiddleware as WsgiMiddleware
from .wsgi import WSGIApp

__all__ = ["advertise_address", "serve_asgi", "serve_wsgi"]

log = logging.getLogger("meshlib")


def _asgi_wrapped(app: Any) -> bool:
    """Already behind the mesh middleware (itself, or added with Starlette's add_middleware)?"""
    if isinstance(app, AsgiMiddleware):
        return True
    return any(getattr(m, "cls", None) is AsgiMiddleware for m in getattr(app, "user_middleware", ()))


def _wsgi_wrapped(app: Any) -> bool:
    """Already behind the mesh middleware (itself, or Flask's ``app.wsgi_app``)?"""
    return isinstance(app, WsgiMiddleware) or isinstance(getattr(app, "wsgi_app", None), WsgiMiddleware)


class _Drain:
    """The drain sequence shared by both servers; ``stop`` ends the serving loop."""

    def __init__(self, mesh: Mesh, endpoint: AnnouncedEndpoint, delay: float) -> None:
        self.mesh = mesh
        self.endpoint = endpoint
        self.delay = delay
        self.started = threading.Event()

    def announce_ready(self) -> None:
        self.mesh.announce([self.endpoint])
        log.info("serving on %s:%d as %s", self.endpoint.address, self.endpoint.port, self.mesh.identity)

    def begin(self) -> bool:
        """Mark not ready and tell the registry; False when a drain had begun already."""
        if self.started.is_set():
            return False
        self.started.set()
        self.mesh.draining = True
        log.info("draining: endpoint marked not ready; stopping in %.1fs", self.delay)
        self.mesh.announce([self.endpoint.model_copy(update={"ready": False})])
        return True

    def finish(self) -> None:
        self.mesh.announce([])  # deregister the endpoint; the Mesh itself may live on


class _DrainingUvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: _Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._drain.announce_ready)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain.started.is_set() or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._run_drain()))  # type: ignore[union-attr]

    async def _run_drain(self) -> None:
        if await asyncio.to_thread(self._drain.begin):
            await asyncio.sleep(self._drain.delay)
            self.should_exit = True

    def drain(self) -> None:
        """Begin a graceful drain from any thread (what SIGTERM does)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._run_drain()))  # type: ignore[union-attr]


def serve_asgi(
    app: ASGIApp,
    *,
    mesh: Mesh,
    host: str = "127.0.0.1",
    port: int = 8080,
    drain_delay: float = 2.0,
    drain_timeout: float = 20.0,
    wrap: bool = True,
    log_level: str = "warning",
    limits: ServerLimits | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve an ASGI app with uvicorn as a mesh workload until SIGTERM/SIGINT, then drain.
    ``limits`` bound what a client may send before the app runs (Envoy's defaults)."""
    if wrap and not _asgi_wrapped(app):
        app = AsgiMiddleware(app, mesh)
    own_mesh = not mesh.started
    mesh.start()
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    tls = mesh.workload_identity is not None
    drain = _Drain(
        mesh,
        AnnouncedEndpoint(address=advertise_address(host), port=bound, protocol="http", tls=tls),
        drain_delay,
    )
    # mTLS per PeerAuthentication on this one port, with the workload's rotating identity,
    # and the limits on request heads.
    limits = limits or ServerLimits()
    uvicorn_options["http"] = mesh_protocol_class(mesh, lambda: bound, limits)
    uvicorn_options.setdefault("timeout_keep_alive", max(1, round(limits.idle_timeout)))
    config = uvicorn.Config(
        app, log_level=log_level, timeout_graceful_shutdown=max(1, round(drain_timeout)), **uvicorn_options
    )
    server = _DrainingUvicorn(config, drain)
    try:
        server.run(sockets=[sock])
    finally:
        drain.finish()
        if own_mesh:
            mesh.close()


def serve_wsgi(
    app: WSGIApp,
    *,
    mesh: Mesh,
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int = 16,
    drain_delay: float = 2.0,
    drain_timeout: float = 20.0,
    wrap: bool = True,
    limits: ServerLimits | None = None,
) -> None:
    """Serve a WSGI app with cheroot (threaded) as a mesh workload until SIGTERM/SIGINT, then drain.
    ``limits`` bound what a client may send before the app runs (Envoy's defaults)."""
    from .cheroot_server import MeshSSLAdapter, MeshWSGIServer

    if wrap and not _wsgi_wrapped(app):
        app = WsgiMiddleware(app, mesh)
    own_mesh = not mesh.started
    mesh.start()
    server = MeshWSGIServer(
        (host, port),
        app,
        numthreads=threads,
        request_queue_size=1024,  # cheroot's 5 leaves bursts of new connections waiting seconds
        shutdown_timeout=max(1, round(drain_timeout)),
        limits=limits or ServerLimits(),
    )
    server.prepare()  # binds; with port 0 the kernel picks
    bound = server.bind_addr[1] if isinstance(server.bind_addr, tuple) else port
    tls = mesh.workload_identity is not None
    limits = limits or ServerLimits()
    server.ssl_adapter = MeshSSLAdapter(mesh, bound, limits.header_timeout)  # mTLS per PeerAuthentication
    drain = _Drain(
        mesh,
        AnnouncedEndpoint(address=advertise_address(host), port=bound, protocol="http", tls=tls),
        drain_delay,
    )

    def drain_then_stop() -> None:
        if drain.begin():
            time.sleep(drain.delay)
            server.stop()  # stops accepting; waits for in-flight requests up to shutdown_timeout

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if drain.started.is_set():
            server.stop()
        else:
            threading.Thread(target=drain_then_stop, name="meshlib-drain", daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        drain.announce_ready()
        server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        drain.finish()
        if own_mesh:
            mesh.close()
