"""What a served port takes from a client before the application runs (serve_asgi and
serve_wsgi as real processes): Envoy's header limits, a header timeout that also closes
connections that send nothing, no second file descriptor per connection, and STRICT that
never serves plaintext."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from tests.reliability._dataplane import rss
from tests.servers import free_port, wait_for

SERVER = textwrap.dedent("""\
    import os
    import sys
    import meshlib

    kind, port, policy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if len(sys.argv) > 4:  # a config service and a bootstrap token: the port serves mTLS
        mesh = meshlib.Mesh(
            "reviews", control_plane=sys.argv[4], token=sys.argv[5], data_dir=os.environ["MESH_DATA_DIR"]
        )
    else:
        mesh = meshlib.Mesh("reviews", config=policy, data_dir=os.environ["MESH_DATA_DIR"])
    limits = meshlib.ServerLimits(header_timeout=2.0, idle_timeout=5.0)

    async def asgi_app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/slow":  # a streamed answer that takes longer than a head may
            import asyncio

            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(6):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.sleep(0.5)
            await send({"type": "http.response.body", "body": b"end"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def wsgi_app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    if kind == "asgi":
        meshlib.serve_asgi(asgi_app, mesh=mesh, port=port, limits=limits, drain_delay=0.1)
    else:
        meshlib.serve_wsgi(wsgi_app, mesh=mesh, port=port, limits=limits, drain_delay=0.1)
""")

PERMISSIVE = (  # no PeerAuthentication: the mesh default
    "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: none}\nspec:\n"
    "  {hosts: [none.example], location: MESH_EXTERNAL, resolution: DNS, ports: [{number: 80, name: http}]}\n"
)
STRICT = (
    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
    "metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n"
)


def start(kind: str, tmp_path: Path, policy: str, *mtls: str) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "policy.yaml").write_text(policy)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "server.py"), kind, str(port), str(tmp_path / "policy.yaml"), *mtls],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MESH_DATA_DIR": str(tmp_path / "data")},
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.communicate()[0]}")


@pytest.fixture(params=["asgi", "wsgi"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, int]]:
    proc, port = start(request.param, tmp_path, PERMISSIVE)
    try:
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(10)


def raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` on a new connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 2"):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def request(headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{k}: {v}" for k, v in [("Host", "reviews"), *headers, ("Connection", "close")]]
    return ("GET / HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def test_header_size_and_count_limits(served: tuple[int, int]) -> None:
    _, port = served
    assert status(raw(port, request([("x-big", "a" * 50_000)]))) == 200
    too_big = raw(port, request([("x-big", "a" * 70_000)]))
    assert status(too_big) == 431, too_big[:200]
    # Host and Connection are two of the hundred.
    assert status(raw(port, request([(f"x-h{i}", "1") for i in range(98)]))) == 200
    too_many = raw(port, request([(f"x-h{i}", "1") for i in range(99)]))
    assert status(too_many) == 431, too_many[:200]
    assert b"more than 100 header fields" in too_many


def test_a_64_mib_header_is_refused_without_being_read(served: tuple[int, int]) -> None:
    pid, port = served
    before = rss(pid)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\nx-big: ")
        chunk = b"a" * 65536
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: the rest is never read
        answer = sock.recv(65536)
    assert status(answer) == 431
    assert sent < 16 * 1024 * 1024, "the server stopped reading long before 64 MiB"
    assert rss(pid) - before < 16 * 1024 * 1024


def test_silent_connections_hold_one_descriptor_no_worker_and_are_closed(served: tuple[int, int]) -> None:
    pid, port = served
    assert_silence_is_cheap(pid, port, f"http://127.0.0.1:{port}/", None)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_silent_connections_on_an_mtls_port(secure_server: ConfigServer, tmp_path: Path, kind: str) -> None:
    """The port that serves mTLS and plaintext side by side decides on the first bytes it
    reads: no peek on a duplicate descriptor."""
    with ControlPlaneClient(secure_server.url, secure_server.admin_token) as admin:
        token = admin.create_token("reviews")["token"]
        client = admin.create_token("frontend")["token"]
    proc, port = start(kind, tmp_path, PERMISSIVE, secure_server.url, token)
    try:
        with Mesh("frontend", control_plane=secure_server.url, token=client, data_dir=tmp_path / "f") as mesh:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS)), 15)
            with mesh.http_client() as http:
                assert_silence_is_cheap(proc.pid, port, "http://reviews/", http)
    finally:
        proc.terminate()
        print(proc.communicate(timeout=10)[0])


def assert_silence_is_cheap(pid: int, port: int, url: str, client: httpx.Client | None) -> None:
    get = client.get if client is not None else httpx.get
    assert get(url, timeout=5).status_code == 200  # warm: pools and contexts exist
    baseline = _fds(pid)
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        # (38: the warm-up request's own connection may still have been open at the baseline)
        assert wait_for(lambda: _fds(pid) - baseline >= 38, 5), "the server accepted them all"
        held = _fds(pid) - baseline
        assert held <= 45, f"{held} descriptors for 40 connections (one each, no duplicate for a peek)"
        # The port still serves while they sit there (cheroot's 16 workers are not theirs).
        assert get(url, timeout=5, headers={"connection": "close"}).status_code == 200
        assert all(_open(sock) for sock in silent), "served while every silent connection was still open"
        for sock in silent:
            sock.settimeout(10)
            assert sock.recv(1) == b"", "the server closed the silent connection"
    finally:
        for sock in silent:
            sock.close()
    assert wait_for(lambda: _fds(pid) - baseline <= 3)


def _open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True


def test_the_head_deadline_runs_from_the_connection(served: tuple[int, int]) -> None:
    _, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        time.sleep(1.5)  # silent for most of the header timeout...
        sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n")  # ...then a head that never ends
        answer = sock.recv(65536)
        took = time.monotonic() - started
    assert status(answer) == 408
    # One 2 s deadline from the connection: 408 at 2 s (two deadlines would make it 3.5 s).
    assert took < 3.0, f"408 after {took:.1f}s"


def test_each_head_on_a_kept_alive_connection_gets_its_own_deadline(served: tuple[int, int]) -> None:
    """The next head's deadline counts from its first byte, not from the first head's: a head
    begun 1.2 s after the first request is cut at 2 s from then (3.2 s from the start), and a
    complete one sent in between those times is answered."""
    _, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
        answer = b""
        while b"ok" not in answer:
            answer += sock.recv(65536)
        time.sleep(1.2)
        begun = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n")  # ...and the rest of it 1.3 s later
        time.sleep(1.3)  # past the first head's 2 s: the second one's deadline still holds
        sock.sendall(b"\r\n")
        answer = b""
        while b"ok" not in answer:
            chunk = sock.recv(65536)
            assert chunk, "closed at the first head's deadline"
            answer += chunk
        assert status(answer) == 200
        sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n")  # a third head, never ended
        third = time.monotonic()
        answer = sock.recv(65536)
        took = time.monotonic() - third
    assert status(answer) == 408
    assert 1.7 < took < 3.0, f"408 {took:.1f}s after the third head began"
    assert begun - started > 2.0 - 1.2, "the second head began before the first head's deadline passed"


def test_crlf_between_requests_does_not_keep_a_connection(served: tuple[int, int]) -> None:
    _, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(15)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
        answer = b""
        while b"ok" not in answer:
            answer += sock.recv(65536)
        sock.sendall(b"\r\n")
        while sock.recv(65536):
            pass  # closed by the server (header or idle timeout), never held open
        # (recv returned b"": the connection ended; a timeout would have raised)


def test_a_pipelined_head_is_held_to_the_limit_too(served: tuple[int, int]) -> None:
    _, port = served
    small = b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n"
    big = b"GET / HTTP/1.1\r\nHost: reviews\r\nx-big: " + b"a" * 110_000 + b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(small + big)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    # The small one may be answered first (cheroot) or be cut with the connection (uvicorn
    # refuses as soon as the parser sees the oversized head); the big one never passes.
    assert answer.count(b"HTTP/1.1 200") <= 1
    assert b" 431 " in answer.rsplit(b"HTTP/1.1", 1)[-1][:6]
    assert b"larger than 60 KiB" in answer


def test_a_pipelined_head_does_not_cut_a_streamed_answer(tmp_path: Path) -> None:
    proc, port = start("asgi", tmp_path, PERMISSIVE)
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: reviews\r\n\r\nGET / HTTP/1.1\r\nHost: rev")
            answer = b""
            while not answer.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, f"the connection closed mid-answer: {answer[-80:]!r}"
                answer += chunk
        assert b"end" in answer, "the 3 s answer finished although the next head stalled"
    finally:
        proc.terminate()
        proc.wait(10)


def test_silent_connections_do_not_turn_keep_alive_off(served: tuple[int, int]) -> None:
    _, port = served
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        time.sleep(0.3)
        with httpx.Client() as client:
            answer = client.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert answer.headers.get("connection", "keep-alive").lower() != "close"
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_strict_refusal_does_not_wait_forever_for_a_head(kind: str, tmp_path: Path) -> None:
    proc, port = start(kind, tmp_path, STRICT)
    try:
        drips = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        started = time.monotonic()
        for sock in drips:
            sock.sendall(b"G")
            sock.settimeout(10)
        for sock in drips:
            while sock.recv(65536):
                pass
        took = time.monotonic() - started
        assert took < 6, f"held {took:.1f}s: a STRICT refusal reads a head for the header timeout only"
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert answer.status_code == 403
    finally:
        proc.terminate()
        proc.wait(10)


REVIEWS = "reviews.default.svc.cluster.local"


def test_a_head_that_stalls_gets_408(served: tuple[int, int]) -> None:
    _, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n")
        for _ in range(3):  # a byte now and then does not keep the head's deadline away
            time.sleep(0.3)
            sock.sendall(b"x")
        answer = sock.recv(65536)
    assert status(answer) == 408, answer[:200]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_strict_without_a_certificate_refuses_plaintext(kind: str, tmp_path: Path) -> None:
    proc, port = start(kind, tmp_path, STRICT)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert answer.status_code == 403
        assert "STRICT" in answer.text
        assert "no certificate" in answer.text
    finally:
        proc.terminate()
        proc.wait(10)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
