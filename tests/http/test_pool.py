"""The mesh's own per-endpoint connection pools (meshlib.http.pool), sync and async, against
real uvicorn servers: reuse, limits, waiting, timeouts, cancellation, failures and sweeps."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import psutil
import pytest

from meshlib.http.network import AsyncMeshBackend, MeshBackend
from meshlib.http.pool import SWEEP_EVERY, AsyncPool, Pool
from tests.servers import Backend, free_port, serve

DEFAULTS = {"max_connections": 100, "max_keepalive_connections": 100, "keepalive_expiry": 60.0}


def async_pool(**limits: Any) -> AsyncPool:
    settings: dict[str, Any] = {**DEFAULTS, **limits}
    return AsyncPool(ssl_context=None, network_backend=AsyncMeshBackend(), **settings)


def sync_pool(**limits: Any) -> Pool:
    settings: dict[str, Any] = {**DEFAULTS, **limits}
    return Pool(ssl_context=None, network_backend=MeshBackend(), **settings)


def request(port: int, path: str = "/", pool_timeout: float | None = None) -> httpcore.Request:
    return httpcore.Request(
        "GET",
        f"http://127.0.0.1:{port}{path}",
        headers=[(b"host", b"reviews")],
        extensions={"timeout": {"pool": pool_timeout, "connect": 5, "read": 5, "write": 5}},
    )


def open_to(port: int) -> int:
    """This process's established client connections to 127.0.0.1:``port``."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port
    )


@pytest.fixture
def backend() -> Iterator[tuple[Backend, int]]:
    app = Backend("v1")
    with serve(app) as port:
        yield app, port


async def get(pool: AsyncPool, port: int, pool_timeout: float | None = None) -> bytes:
    response = await pool.handle_async_request(request(port, pool_timeout=pool_timeout))
    try:
        assert response.status == 200
        return await response.aread()
    finally:
        await response.aclose()


def test_concurrent_requests_reuse_connections(backend: tuple[Backend, int]) -> None:
    app, port = backend

    async def main() -> None:
        pool = async_pool()
        for _ in range(5):
            await asyncio.gather(*(get(pool, port) for _ in range(16)))
        assert len(pool.connections) <= 16
        assert all(c.is_idle() for c in pool.connections), "every response closed: every connection idle"
        assert len({c for c in app.clients}) == len(pool.connections), "no connection was opened twice"
        await pool.aclose()
        assert pool.connections == []

    asyncio.run(main())
    assert app.hits == 80
    assert open_to(port) == 0, "closing the pool closed its sockets"


def test_surplus_idle_connections_are_closed(backend: tuple[Backend, int]) -> None:
    app, port = backend

    async def main() -> None:
        pool = async_pool(max_keepalive_connections=2)
        app.delay = 0.2  # all 8 in flight at once: 8 connections
        await asyncio.gather(*(get(pool, port) for _ in range(8)))
        assert len({c for c in app.clients}) == 8
        assert len(pool.connections) == 2
        assert open_to(port) == 2, "the six beyond max_keepalive_connections were closed"
        await pool.aclose()

    asyncio.run(main())


def test_at_max_connections_requests_wait_for_one_to_come_back(backend: tuple[Backend, int]) -> None:
    app, port = backend

    async def main() -> None:
        pool = async_pool(max_connections=2)
        app.delay = 0.05
        bodies = await asyncio.gather(*(get(pool, port) for _ in range(10)))
        assert all(b'"v1"' in body for body in bodies)
        assert len({c for c in app.clients}) == 2, "never more than two connections"
        await pool.aclose()

    asyncio.run(main())


def test_waiting_past_the_pool_timeout_fails_and_the_pool_recovers(backend: tuple[Backend, int]) -> None:
    app, port = backend
    app.gate = threading.Event()

    async def main() -> None:
        pool = async_pool(max_connections=1)
        held = asyncio.create_task(get(pool, port))
        await asyncio.to_thread(lambda: time.sleep(0.2))  # held is on the only connection
        began = time.monotonic()
        with pytest.raises(httpcore.PoolTimeout):
            await get(pool, port, pool_timeout=0.2)
        assert 0.15 < time.monotonic() - began < 2
        app.gate.set()
        assert b'"v1"' in await held
        assert b'"v1"' in await get(pool, port, pool_timeout=1), "the timed-out waiter left no trace"
        await pool.aclose()

    asyncio.run(main())


def test_a_waiting_request_is_not_starved_by_a_busy_task(backend: tuple[Backend, int]) -> None:
    """First come, first served: a task that sends request after request on the only
    connection does not take it back ahead of a request already waiting for it."""
    _, port = backend

    async def main() -> None:
        pool = async_pool(max_connections=1)
        stop = time.monotonic() + 1.5
        served = 0

        async def busy() -> None:
            nonlocal served
            while time.monotonic() < stop:
                await get(pool, port)
                served += 1

        task = asyncio.create_task(busy())
        await asyncio.sleep(0.05)
        began = time.monotonic()
        assert b'"v1"' in await get(pool, port, pool_timeout=1.0)
        assert time.monotonic() - began < 0.5
        await task
        assert served > 10
        await pool.aclose()

    asyncio.run(main())


def test_a_cancelled_waiter_passes_its_turn_on(backend: tuple[Backend, int]) -> None:
    app, port = backend
    app.gate = threading.Event()

    async def main() -> None:
        pool = async_pool(max_connections=1)
        held = asyncio.create_task(get(pool, port))
        await asyncio.to_thread(lambda: time.sleep(0.2))
        cancelled = asyncio.create_task(get(pool, port))
        waiting = asyncio.create_task(get(pool, port, pool_timeout=5))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        app.gate.set()
        assert b'"v1"' in await held
        assert b'"v1"' in await waiting, "the request behind the cancelled one got the connection"
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await pool.aclose()

    asyncio.run(main())


def test_a_failed_connect_frees_its_slot() -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        pool = async_pool(max_connections=1)
        for _ in range(2):  # the second one would wait for the slot (then PoolTimeout) had it leaked
            with pytest.raises(httpcore.ConnectError):
                await get(pool, port, pool_timeout=0.5)
        assert pool.connections == []
        await pool.aclose()

    asyncio.run(main())


Closing = tuple[int, list[int]]


@pytest.fixture
def closes_after_each_answer() -> Iterator[Closing]:
    """A server that answers one request per connection (keep-alive promised) and then
    closes it: the client's idle connection turns readable (EOF). Yields the port and the
    number of connections accepted so far."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted = [0]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted[0] += 1
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_connection_its_server_closed_is_not_reused(closes_after_each_answer: Closing) -> None:
    port, accepted = closes_after_each_answer

    async def main() -> None:
        pool = async_pool()
        for _ in range(3):
            response = await pool.handle_async_request(request(port))
            assert await response.aread() == b"ok"
            await response.aclose()
            await asyncio.to_thread(lambda: time.sleep(0.15))  # the server has closed it by now
        assert accepted[0] == 3, "each request on a new connection, none failed on a closed one"
        await pool.aclose()

    asyncio.run(main())

    pool = sync_pool()
    for _ in range(2):
        response = pool.handle_request(request(port))
        assert response.read() == b"ok"
        response.close()
        time.sleep(0.15)
    assert accepted[0] == 5
    pool.close()


def test_connections_past_their_keep_alive_are_swept(backend: tuple[Backend, int]) -> None:
    app, port = backend

    async def main() -> None:
        pool = async_pool(keepalive_expiry=0.2)
        app.delay = 0.1
        await asyncio.gather(*(get(pool, port) for _ in range(4)))
        assert open_to(port) == 4
        app.delay = 0
        await asyncio.to_thread(lambda: time.sleep(SWEEP_EVERY + 0.3))
        await get(pool, port)
        assert len(pool.connections) == 1
        assert open_to(port) == 1, "the three idle past their keep-alive were closed at the sweep"
        await pool.aclose()

    asyncio.run(main())


def test_sync_pool_under_threads(backend: tuple[Backend, int]) -> None:
    app, port = backend
    pool = sync_pool(max_connections=4)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            for _ in range(25):
                response = pool.handle_request(request(port, pool_timeout=10))
                try:
                    assert response.status == 200
                    assert b'"v1"' in response.read()
                finally:
                    response.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert app.hits == 200
    assert len({c for c in app.clients}) <= 4, "never more than max_connections"
    assert all(c.is_idle() for c in pool.connections)
    pool.close()
    assert open_to(port) == 0


def test_sync_pool_timeout_and_failed_connect(backend: tuple[Backend, int]) -> None:
    app, port = backend
    app.gate = threading.Event()
    pool = sync_pool(max_connections=1)
    held: list[bytes] = []

    def hold() -> None:
        response = pool.handle_request(request(port))
        held.append(response.read())
        response.close()

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.2)
    with pytest.raises(httpcore.PoolTimeout):
        pool.handle_request(request(port, pool_timeout=0.2))
    app.gate.set()
    thread.join(10)
    assert held
    assert b'"v1"' in held[0]
    response = pool.handle_request(request(port, pool_timeout=1))
    assert response.read()
    response.close()
    pool.close()

    closed = sync_pool(max_connections=1)
    dead = free_port()
    for _ in range(2):
        with pytest.raises(httpcore.ConnectError):
            closed.handle_request(request(dead, pool_timeout=0.5))
    closed.close()
