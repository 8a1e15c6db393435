"""Response bodies streamed through the mesh: server-sent events arrive as they are sent,
large downloads come in pieces, an open stream holds its pool slot until it is closed,
and a body cut midway or running past the route timeout is an httpx error."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib._net import bind
from meshlib.http.errors import MeshTimeoutError, UpstreamOverflowError
from tests.servers import serve

BIG = 1024 * 1024
EVENTS = 5
GAP = 0.2  # seconds between two events


class Streams:
    """One ASGI app, a path per behaviour; ``hits`` counts requests per path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.hits[path] = self.hits.get(path, 0) + 1

        async def start(status: int = 200, length: int | None = None) -> None:
            headers = [(b"content-type", b"application/octet-stream")]
            if length is not None:
                headers.append((b"content-length", str(length).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        if path == "/events":  # chunked, open-ended: server-sent events
            await start()
            for i in range(EVENTS):
                await body(f"data: {i}\n\n".encode())
                await asyncio.sleep(GAP)
            await body(b"", more=False)
        elif path == "/big":  # a download with its length
            await start(length=BIG)
            for _ in range(16):
                await body(b"x" * (BIG // 16))
            await body(b"", more=False)
        elif path == "/cut":  # promises 1 MiB, sends 100 KiB, then the server fails
            await start(length=BIG)
            await body(b"y" * 100_000)
            await asyncio.sleep(0.05)
            raise RuntimeError("the backend died mid-body")
        elif path == "/flaky":  # a long 503 first (chunked), then a long 200
            if self.hits[path] == 1:
                await start(503)
                await body(b"e" * 100_000)
            else:
                await start()
                await body(b"z" * 100_000)
            await body(b"", more=False)
        else:
            await start(404, 0)
            await body(b"", more=False)


@pytest.fixture
def streams(make_mesh) -> Iterator[Callable[[str], tuple[Mesh, Streams]]]:  # type: ignore[no-untyped-def]
    with ExitStack() as stack:

        def start(policy: str) -> tuple[Mesh, Streams]:
            app = Streams()
            port = stack.enter_context(serve(app))
            entry = (
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: files}\n"
                "spec:\n  hosts: [files]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
                "  ports: [{number: 80, name: http}]\n"
                f"  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
            )
            return make_mesh(entry + policy), app

        yield start


def routes(spec: str) -> str:
    return (
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: files}\n"
        f"spec:\n  hosts: [files]\n  http:\n  - route: [{{destination: {{host: files}}}}]\n{spec}"
    )


def pool_of_one() -> str:
    return (
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: files}\n"
        "spec:\n  host: files\n  trafficPolicy:\n    connectionPool: {http: {http2MaxRequests: 1}}\n"
    )


def read_stream(mesh: Mesh, mode: str, path: str) -> tuple[list[bytes], list[float]]:
    """GET ``path`` with ``client.stream``; the chunks and when each arrived."""
    if mode == "sync":
        with mesh.http_client(timeout=10) as client:
            started = time.monotonic()
            with client.stream("GET", f"http://files{path}") as response:
                response.raise_for_status()
                pairs = [(c, time.monotonic() - started) for c in response.iter_bytes()]
    else:

        async def main() -> list[tuple[bytes, float]]:
            async with mesh.async_http_client(timeout=10) as client:
                started = time.monotonic()
                async with client.stream("GET", f"http://files{path}") as response:
                    response.raise_for_status()
                    return [(c, time.monotonic() - started) async for c in response.aiter_bytes()]

        pairs = asyncio.run(main())
    return [c for c, _ in pairs], [t for _, t in pairs]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_server_sent_events_arrive_as_they_are_sent(streams, mode: str) -> None:  # type: ignore[no-untyped-def]
    mesh, _ = streams(routes("    timeout: 5s\n"))
    chunks, times = read_stream(mesh, mode, "/events")
    assert b"".join(chunks) == b"".join(f"data: {i}\n\n".encode() for i in range(EVENTS))
    assert len(chunks) == EVENTS
    assert times[0] < 0.5 * (EVENTS - 1) * GAP, f"the first event waited for the whole body: {times}"
    assert times[-1] - times[0] >= 0.7 * (EVENTS - 1) * GAP, times
    assert mesh.metrics.requests_total(service="files.default.svc.cluster.local", code=200) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_large_download_arrives_in_pieces(streams, mode: str) -> None:  # type: ignore[no-untyped-def]
    mesh, _ = streams("")
    chunks, _ = read_stream(mesh, mode, "/big")
    assert sum(len(c) for c in chunks) == BIG
    assert len(chunks) > 1
    # A plain get() reads the same stream to the end.
    with mesh.http_client() as client:
        assert client.get("http://files/big").content == b"x" * BIG


def test_an_open_stream_holds_its_pool_slot_until_closed(streams) -> None:  # type: ignore[no-untyped-def]
    mesh, _ = streams(pool_of_one())
    with mesh.http_client(timeout=10) as client:
        with client.stream("GET", "http://files/events") as response:
            assert next(response.iter_bytes()) == b"data: 0\n\n"
            with pytest.raises(UpstreamOverflowError):
                client.get("http://files/big")
        assert len(client.get("http://files/big").content) == BIG, "closing the stream freed the slot"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_body_cut_midway_is_an_httpx_error_and_frees_the_slot(streams, mode: str) -> None:  # type: ignore[no-untyped-def]
    mesh, _ = streams(pool_of_one())
    if mode == "sync":
        with mesh.http_client(timeout=10) as client:
            with pytest.raises(httpx.TransportError) as caught:
                client.get("http://files/cut")
            after = client.get("http://files/big")
    else:

        async def main() -> tuple[pytest.ExceptionInfo[httpx.TransportError], httpx.Response]:
            async with mesh.async_http_client(timeout=10) as client:
                with pytest.raises(httpx.TransportError) as caught:
                    await client.get("http://files/cut")
                return caught, await client.get("http://files/big")

        caught, after = asyncio.run(main())
    assert isinstance(caught.value, httpx.RemoteProtocolError | httpx.ReadError), caught.value
    assert after.status_code == 200
    assert mesh.metrics.requests_total(code=200) == 2, "the cut request is counted when its body ends"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_running_past_the_route_timeout_is_cut(streams, mode: str) -> None:  # type: ignore[no-untyped-def]
    mesh, _ = streams(routes("    timeout: 0.5s\n"))
    started = time.monotonic()
    with pytest.raises(MeshTimeoutError, match="did not finish within the route timeout"):
        read_stream(mesh, mode, "/events")
    assert 0.4 < time.monotonic() - started < 1.0
    assert mesh.metrics.requests_total(flags="UT") == 1


def test_an_answer_the_route_retries_is_read_whole_and_retried(streams) -> None:  # type: ignore[no-untyped-def]
    mesh, app = streams(routes("    retries: {attempts: 2, retryOn: 5xx}\n"))
    with mesh.http_client() as client:
        response = client.get("http://files/flaky")
    assert response.status_code == 200
    assert response.content == b"z" * 100_000
    assert app.hits["/flaky"] == 2


WHOLE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
)


@contextlib.contextmanager
def one_write_server() -> Iterator[int]:
    """A raw HTTP/1.1 server that writes each whole chunked response in one send, so the
    client reads the head and the last chunk together (uvicorn writes them apart, and
    whether they arrive together depends on timing)."""
    listener = bind("127.0.0.1", 0)
    listener.listen(16)
    listener.settimeout(0.2)
    done = threading.Event()

    def connection(sock: socket.socket) -> None:
        with sock:
            sock.settimeout(10)
            seen = b""
            while not done.is_set():
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                seen += data
                while b"\r\n\r\n" in seen:
                    _, seen = seen.split(b"\r\n\r\n", 1)
                    sock.sendall(WHOLE)

    def accept() -> None:
        while not done.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=connection, args=(sock,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        acceptor.join(5)
        listener.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_small_chunked_body_already_in_is_read_whole(make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Its last chunk came with the headers: reading it cannot wait, so the attempt reads it
    and frees the slot at once (the cheap path), even while the caller holds the response."""
    with one_write_server() as port:
        entry = (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: files}\n"
            "spec:\n  hosts: [files]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
            "  ports: [{number: 80, name: http}]\n"
            f"  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
        )
        mesh = make_mesh(entry + pool_of_one())
        if mode == "sync":
            with mesh.http_client(timeout=10) as client, client.stream("GET", "http://files/") as held:
                assert held.status_code == 200
                assert client.get("http://files/").text == "ok", "read in the attempt: the slot is free"
        else:

            async def main() -> None:
                async with (
                    mesh.async_http_client(timeout=10) as client,
                    client.stream("GET", "http://files/") as held,
                ):
                    assert held.status_code == 200
                    assert (await client.get("http://files/")).text == "ok"

            asyncio.run(main())
