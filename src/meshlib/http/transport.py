"""``MeshTransport`` and ``AsyncMeshTransport``: httpx transports that route through the mesh.

A request to a host the mesh does not know goes to the inner httpx transport untouched.
A mesh request runs the client stack; these drivers perform its actions: ``Send`` (one
attempt on the mesh's own httpcore pool; a small body is read so that the connection is
free and the per-try timeout covers it, a large or open-ended one is streamed to the
caller: see body.py), ``Sleep`` and ``Mirror`` (a copy sent in the
background, never awaited, shed when too many are already on their way).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import httpcore
import httpx

from ..core.exchange import Attempt, Exchange, Mirror, Outcome, Send
from ..core.routing_table import RoutingTable
from ..drivers import drive_client, drive_client_async
from ..errors import CertificateUnavailableError
from ..learned_egress import Waiting, wait_learned, wait_learned_async
from ..tls_origination import Origin
from .adapter import HttpAdapter, HttpMesh
from .body import AsyncStreamedBody, StreamedBody
from .network import AsyncMeshBackend, MeshBackend, attempt_deadline
from .pool import AsyncPool, Pool

__all__ = ["AsyncMeshTransport", "MeshTransport"]

MAX_MIRRORS_IN_FLIGHT = 64
MIRROR_WORKERS = 16
CLOSE_GRACE = 0.5  # closing a client waits this long at most for mirrors still on their way


_POOL: dict[str, Any] = {"max_connections": 1000, "max_keepalive_connections": 100, "keepalive_expiry": 60.0}


Origination = Origin[ssl.SSLContext] | None  # the DestinationRule's own TLS, if it applies


def _sync_pool(adapter: HttpAdapter, peer: str | None, origin: Origination) -> Pool:
    if origin is not None:  # new connections take the origin's latest context (rebuilt files)
        backend = MeshBackend(None, origin.current, origin.names)
        return Pool(ssl_context=origin.current(), network_backend=backend, **_POOL)
    backend = MeshBackend(peer, adapter.mtls_context if peer else None)
    return Pool(ssl_context=adapter.ssl_context(peer), network_backend=backend, **_POOL)


def _async_pool(adapter: HttpAdapter, peer: str | None, origin: Origination) -> AsyncPool:
    if origin is not None:
        backend = AsyncMeshBackend(None, origin.current, origin.names)
        return AsyncPool(ssl_context=origin.current(), network_backend=backend, **_POOL)
    backend = AsyncMeshBackend(peer, adapter.mtls_context if peer else None)
    return AsyncPool(ssl_context=adapter.ssl_context(peer), network_backend=backend, **_POOL)


# One pool per endpoint (and per identity or TLS server name it must prove, and per
# DestinationRule TLS settings it was opened under).
PoolKey = tuple[bytes, bytes, int, str | None, int]


def _key(request: httpcore.Request, peer: str | None, origin: Origination) -> PoolKey:
    """Connections are shared only between requests whose server must prove the same name:
    the SPIFFE ID over mTLS, the TLS server name (SNI) otherwise; and that want the same TLS
    settings (a connection verified with one rule's CA never carries another rule's request)."""
    url = request.url
    return (
        url.scheme,
        url.host,
        url.port or 0,
        peer or request.extensions.get("sni_hostname"),
        origin.key if origin is not None else 0,
    )


def _peer(send: Attempt) -> str | None:
    """The SPIFFE ID the endpoint must prove over mTLS (None: not mTLS)."""
    return send.endpoint.identity if send.mtls and send.endpoint is not None else None


P = TypeVar("P", Pool, AsyncPool)


class _Pools(Generic[P]):
    """One pool per endpoint, as Envoy keeps one per host (pool.py: and a request takes a
    connection in constant time, where httpcore's pool walked every connection it held).

    When a new snapshot arrives, pools of endpoints that left the mesh are retired: out of
    the map at once, closed once none of their connections is busy (a request still on its
    way finishes, as Envoy drains a removed host). So clients that live through many
    deployments do not collect pools and sockets of long-gone endpoints."""

    def __init__(self, make: Callable[[str | None, Origination], P]) -> None:
        self._make: Callable[[str | None, Origination], P] = make
        self._pools: dict[PoolKey, P] = {}
        self._endpoints: set[PoolKey] = set()  # pools of registry/ServiceEntry endpoints
        self._retired: list[P] = []
        self.version = -1  # the snapshot whose endpoints were last checked
        self._lock = threading.Lock()

    def get(self, request: httpcore.Request, peer: str | None, endpoint: bool, origin: Origination) -> P:
        key = _key(request, peer, origin)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    pool = self._pools[key] = self._make(peer, origin)
                    if endpoint:
                        self._endpoints.add(key)
        return pool

    def retire(self, plane: RoutingTable) -> list[P]:
        """Note ``plane``'s endpoints; the retired pools that can be closed now."""
        live = {
            (e.address.encode(), e.port) for group in plane.snapshot.endpoints_by_host.values() for e in group
        }
        with self._lock:
            self.version = plane.version
            for key in [k for k in self._endpoints if (k[1], k[2]) not in live]:
                self._endpoints.discard(key)
                self._retired.append(self._pools.pop(key))
            idle = [p for p in self._retired if all(c.is_idle() for c in p.connections)]
            self._retired = [p for p in self._retired if p not in idle]
        return idle

    def take_all(self) -> list[P]:
        with self._lock:
            pools: list[P] = list(self._pools.values())
            pools.extend(self._retired)
            self._pools, self._endpoints, self._retired = {}, set(), []
        return pools


class _Core(Generic[P]):
    """What the sync and the async transport share: pools, routing, the attempt's frame."""

    def __init__(self, mesh: HttpMesh, make: Callable[[HttpAdapter, str | None, Origination], P]) -> None:
        self._adapter = adapter = HttpAdapter(mesh)
        self._metrics = mesh.metrics
        self._pools: _Pools[P] = _Pools(lambda peer, origin: make(adapter, peer, origin))

    def _route(
        self, request: httpx.Request, learn: bool = True
    ) -> tuple[Exchange | None, list[P], Waiting | None]:
        """The exchange of a mesh request (None: not a mesh host) and pools to close now; or,
        the first time this workload calls the host (it learns its egress hosts), what to
        wait for before routing it."""
        adapter = self._adapter
        mesh = adapter.mesh
        table = mesh.http_table
        url = request.url
        fqdn = table.resolve(url.host, url.port or (443 if url.scheme == "https" else 80))
        learned = mesh.learned_egress
        if learned is not None and learn:
            waiting = learned.wanted(table, url.host, fqdn)
            if waiting is not None:
                return None, [], waiting
        retired = self._pools.retire(table) if table.version != self._pools.version else []
        return (adapter.exchange(request, table, fqdn) if fqdn is not None else None), retired, None


class _Attempt(Generic[P]):
    """One attempt's frame: bounded as a whole (the network layer gives every operation the
    time left: cheaper than asyncio.timeout, and the same in both drivers); any error in it
    becomes the attempt's outcome (or the caller's own error, raised)."""

    __slots__ = ("_body", "_core", "_deadline", "_ex", "_send", "_token", "outcome", "upstream")
    _core: _Core[P]
    upstream: httpcore.Request

    def __init__(
        self, core: _Core[P], ex: Exchange, send: Send, body: type[StreamedBody | AsyncStreamedBody]
    ) -> None:
        self._core = core
        self._ex = ex
        self._send = send
        self._body = body
        self._deadline = time.monotonic() + send.timeout if send.timeout is not None else None
        self.outcome: Outcome | None = None

    def __enter__(self) -> _Attempt[P]:
        self._token = attempt_deadline.set(self._deadline)
        try:
            self.upstream = self._core._adapter.upstream(self._ex.request, self._ex, self._send)
        except BaseException:
            attempt_deadline.reset(self._token)
            raise
        return self

    def pool(self) -> P:
        """The attempt's pool; inside the frame, since the DestinationRule's TLS files may be
        unusable (then nothing connects, and the error is the attempt's outcome)."""
        send = self._send
        origin = self._core._adapter.origination(send)
        return self._core._pools.get(self.upstream, _peer(send), send.endpoint is not None, origin)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        attempt_deadline.reset(self._token)
        if isinstance(error, Exception):
            self.outcome = self._core._adapter.failed(error, self._ex.request)
            return True
        return False

    def streamed(self, response: httpcore.Response) -> bool:
        """Is this answer handed over as it arrives (then it is the outcome already)?"""
        adapter, ex = self._core._adapter, self._ex
        adapter.served(ex, response)
        if not adapter.streams(ex, self._send, response):
            return False
        body = self._body(response, ex, ex.request, self._deadline)
        self.outcome = adapter.streamed(response, body)
        return True


def _connect_timeout(request: httpx.Request) -> float | None:
    """The request's connect timeout: waiting for a newly called host's endpoints is part of
    getting connected, and never takes longer."""
    timeout = request.extensions.get("timeout")
    value = timeout.get("connect") if isinstance(timeout, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _read(response: httpcore.Response) -> bytes:
    with contextlib.closing(response):
        return response.read()


async def _aread(response: httpcore.Response) -> bytes:
    try:
        return await response.aread()
    finally:
        await response.aclose()


class MeshTransport(_Core[Pool], httpx.BaseTransport):
    """For ``httpx.Client``: ``httpx.Client(transport=mesh.transport())``."""

    def __init__(self, mesh: HttpMesh, inner: httpx.BaseTransport | None = None) -> None:
        super().__init__(mesh, _sync_pool)
        self._inner = inner or httpx.HTTPTransport()
        self._mirrors: concurrent.futures.ThreadPoolExecutor | None = None
        self._mirroring: set[concurrent.futures.Future[None]] = set()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        ex, retired, waiting = self._route(request)
        if waiting is not None:
            wait_learned(waiting, _connect_timeout(request))
            ex, retired, _ = self._route(request, learn=False)
        for pool in retired:
            pool.close()
        if ex is None:
            return self._inner.handle_request(request)
        return self._adapter.finish(
            request, ex, drive_client(self._adapter.flow(ex), ex, self, self._metrics)
        )

    def send(self, ex: Exchange, send: Send) -> Outcome:
        with _Attempt(self, ex, send, StreamedBody) as attempt:
            response = attempt.pool().handle_request(attempt.upstream)
            if not attempt.streamed(response):
                attempt.outcome = HttpAdapter.response(response, _read(response))
        assert attempt.outcome is not None
        return attempt.outcome

    def mirror(self, ex: Exchange, copy: Mirror) -> None:
        request = ex.request
        if not isinstance(request.stream, httpx.ByteStream):
            return  # a streamed body can be read once only: it belongs to the real request
        upstream = self._adapter.upstream(request, ex, copy)
        try:
            origin = self._adapter.origination(copy)
        except CertificateUnavailableError:
            return  # its TLS cannot be set up: a copy is never sent without it
        with self._lock:
            if len(self._mirroring) >= MAX_MIRRORS_IN_FLIGHT:
                return  # shed copies rather than let them pile up behind a slow mirror
            if self._mirrors is None:
                self._mirrors = concurrent.futures.ThreadPoolExecutor(
                    MIRROR_WORKERS, thread_name_prefix="meshlib-mirror"
                )
            future = self._mirrors.submit(
                self._send_mirror, upstream, _peer(copy), copy.endpoint is not None, origin
            )
            self._mirroring.add(future)
        future.add_done_callback(self._mirror_done)

    def _send_mirror(
        self, copy: httpcore.Request, peer: str | None, endpoint: bool, origin: Origination
    ) -> None:
        with contextlib.suppress(Exception):  # a mirror's fate never reaches the caller
            _read(self._pools.get(copy, peer, endpoint, origin).handle_request(copy))

    def _mirror_done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._mirroring.discard(future)

    def close(self) -> None:
        if self._mirrors is not None:
            with self._lock:
                pending = set(self._mirroring)
            concurrent.futures.wait(pending, timeout=CLOSE_GRACE)
            self._mirrors.shutdown(wait=False, cancel_futures=True)
        for pool in self._pools.take_all():
            pool.close()
        self._inner.close()


def _under_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio, through anyio
        return False
    return True


class AsyncMeshTransport(_Core[AsyncPool], httpx.AsyncBaseTransport):
    """For ``httpx.AsyncClient``: ``httpx.AsyncClient(transport=mesh.async_transport())``."""

    def __init__(self, mesh: HttpMesh, inner: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(mesh, _async_pool)
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._mirrors: set[asyncio.Task[None]] = set()
        self._asyncio: bool | None = None  # running under asyncio (not trio)? known on first use

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._asyncio is None:
            self._asyncio = _under_asyncio()
        ex, retired, waiting = self._route(request)
        if waiting is not None:
            if self._asyncio:
                await wait_learned_async(waiting, _connect_timeout(request))
            else:  # trio: no asyncio future to await; a worker thread waits
                await anyio.to_thread.run_sync(wait_learned, waiting, _connect_timeout(request))
            ex, retired, _ = self._route(request, learn=False)
        for pool in retired:
            await pool.aclose()
        if ex is None:
            return await self._inner.handle_async_request(request)
        reply = await drive_client_async(self._adapter.mesh.client_stack_runner(ex), ex, self, self._metrics)
        return self._adapter.finish(request, ex, reply)

    async def send(self, ex: Exchange, send: Send) -> Outcome:
        with _Attempt(self, ex, send, AsyncStreamedBody) as attempt:
            response = await attempt.pool().handle_async_request(attempt.upstream)
            if not attempt.streamed(response):
                attempt.outcome = HttpAdapter.response(response, await _aread(response))
        assert attempt.outcome is not None
        return attempt.outcome

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def mirror(self, ex: Exchange, copy: Mirror) -> None:
        request = ex.request
        if not isinstance(request.stream, httpx.ByteStream) or len(self._mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            return
        if not self._asyncio:
            return  # under trio there is no loop to leave a background task on: no mirroring
        upstream = self._adapter.upstream(request, ex, copy)
        try:
            origin = self._adapter.origination(copy)
        except CertificateUnavailableError:
            return  # its TLS cannot be set up: a copy is never sent without it
        sending = self._send_mirror(upstream, _peer(copy), copy.endpoint is not None, origin)
        task = asyncio.get_running_loop().create_task(sending)
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _send_mirror(
        self, copy: httpcore.Request, peer: str | None, endpoint: bool, origin: Origination
    ) -> None:
        with contextlib.suppress(Exception):  # a mirror's fate never reaches the caller
            await _aread(await self._pools.get(copy, peer, endpoint, origin).handle_async_request(copy))

    async def aclose(self) -> None:
        if self._mirrors:
            await asyncio.wait(set(self._mirrors), timeout=CLOSE_GRACE)
        for task in list(self._mirrors):
            task.cancel()
        for pool in self._pools.take_all():
            await pool.aclose()
        await self._inner.aclose()
