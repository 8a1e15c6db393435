"""Hostile input on served ports (serve_asgi, serve_wsgi, meshlib.grpc.serve as real processes,
tests/reliability/_hostile_server.py): every malformed, oversized or slow request is answered
4xx as Envoy answers it, or its connection closed; and after each one the same server answers a
normal request within ``PROMPT``. Header size and count limits, silent connections and the head
deadline are in tests/test_served_limits.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.reliability._dataplane import REPLICA_POLICY, rss
from tests.servers import free_port, wait_for

SERVER = Path(__file__).with_name("_hostile_server.py")
HEADER_TIMEOUT, IDLE_TIMEOUT = 2.0, 3.0  # s, the servers' limits here
PROMPT = 1.0  # s: a normal request after a hostile one, on a shared 2-core machine


def start(kind: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text(REPLICA_POLICY)
    port = free_port()
    args = [kind, str(port), str(folder / "policy.yaml"), str(folder / "data"), str(HEADER_TIMEOUT)]
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), *args, str(IDLE_TIMEOUT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        assert proc.poll() is None, f"{kind} server exited: {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    assert wait_for(listening, 20), f"{kind} server did not start"
    return proc, port


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int, int]]:
    proc, port = start(request.param, tmp_path_factory.mktemp(request.param))
    try:
        yield request.param, port, proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a new connection; what comes back until one whole answer (by its
    Content-Length) or the close, and how long that took."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        started = time.monotonic()
        sock.sendall(data)
        return read_answer(sock), time.monotonic() - started


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
    except ConnectionResetError:
        pass
    return answer


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def assert_prompt(port: int) -> float:
    """A normal request on the same server: answered 200 within PROMPT."""
    answer, took = exchange(port, b"GET /normal HTTP/1.1\r\nHost: reviews\r\n\r\n", wait=PROMPT + 5)
    assert status(answer) == 200, answer[:200]
    assert answer.endswith(b"GET /normal 0"), answer[-200:]
    assert took < PROMPT, f"a normal request took {took:.2f} s after a hostile one"
    return took


def post(headers: bytes, body: bytes = b"", path: bytes = b"/") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: reviews\r\n" + headers + b"\r\n" + body


GET = b"GET / HTTP/1.1\r\nHost: reviews\r\n"
# name: (bytes, status from uvicorn, status from cheroot); Envoy's answer in the comment.
HOSTILE: dict[str, tuple[bytes, int, int]] = {
    # NUL bytes (Envoy: 400 at its codec)
    "nul-in-value": (GET + b"x-a: a\x00b\r\n\r\n", 400, 400),
    "nul-in-name": (GET + b"x\x00a: b\r\n\r\n", 400, 400),
    "nul-in-path": (b"GET /a\x00b HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    "nul-in-method": (b"G\x00T / HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    "percent-encoded-nul": (b"GET /a%00b HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    # control characters, broken field lines, obs-fold (Envoy: 400)
    "cr-in-value": (GET + b"x-a: a\rb\r\n\r\n", 400, 400),
    "del-in-value": (GET + b"x-a: a\x7fb\r\n\r\n", 400, 400),
    "obs-fold": (GET + b"x-a: a\r\n b\r\n\r\n", 400, 400),
    "space-before-colon": (GET + b"x-a : b\r\n\r\n", 400, 400),
    "empty-name": (GET + b": b\r\n\r\n", 400, 400),
    "bare-lf": (b"GET / HTTP/1.1\nHost: reviews\n\n", 400, 400),
    "garbage": (b"\x16\x03\x01\x02\x00garbage\xff\xfe\r\n\r\n", 400, 400),
    # broken percent-encoding (Envoy's path normalization: 400)
    "percent-zz": (b"GET /a%zz HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    "percent-truncated": (b"GET /a% HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    # bad methods (Envoy takes its list of known methods only: 400)
    "method-not-a-token": (b"G(T / HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    "unknown-method": (b"FOO / HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    "10-kb-method": (b"A" * 10_000 + b" / HTTP/1.1\r\nHost: reviews\r\n\r\n", 400, 400),
    # malformed Content-Length (Envoy: 400)
    "cl-negative": (post(b"Content-Length: -1\r\n"), 400, 400),
    "cl-not-a-number": (post(b"Content-Length: abc\r\n"), 400, 400),
    "cl-plus": (post(b"Content-Length: +3\r\n", b"abc"), 400, 400),
    "cl-empty": (post(b"Content-Length: \r\n"), 400, 400),
    "cl-list": (post(b"Content-Length: 3, 3\r\n", b"abc"), 400, 400),
    "cl-23-digits": (post(b"Content-Length: 99999999999999999999999\r\n", b"abc"), 400, 400),
    "cl-twice-same": (post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400, 400),
    "cl-twice-different": (post(b"Content-Length: 3\r\nContent-Length: 5\r\n", b"abcde"), 400, 400),
    # smuggling: CL+TE either order, TE name obfuscated, bad chunk framing (Envoy: 400)
    "cl-te": (
        post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        400,
        400,
    ),
    "te-cl": (
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        400,
        400,
    ),
    "te-space-before-colon": (post(b"Transfer-Encoding : chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"), 400, 400),
    "chunk-size-not-hex": (post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"), 400, 400),
    "chunk-size-80-bits": (
        post(b"Transfer-Encoding: chunked\r\n", b"f" * 20 + b"\r\nabc\r\n0\r\n\r\n"),
        400,
        400,
    ),
    "chunk-without-crlf": (post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcXY0\r\n\r\n"), 400, 400),
    # an unsupported transfer coding (Envoy: 501; uvicorn's parser: 400)
    "te-gzip": (post(b"Transfer-Encoding: gzip\r\n", b"abc"), 400, 501),
    # a request line beyond the head limit (Envoy: 431)
    "70-kb-path": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: reviews\r\n\r\n", 431, 431),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_requests_are_refused_and_the_server_stays_prompt(
    server: tuple[str, int, int], case: str
) -> None:
    kind, port, _ = server
    data, asgi_status, wsgi_status = HOSTILE[case]
    answer, took = exchange(port, data)
    expected = asgi_status if kind == "asgi" else wsgi_status
    assert status(answer) == expected, answer[:300]
    assert took < PROMPT, f"refused after {took:.2f} s"  # at once: no timeout waited for
    assert_prompt(port)


def test_a_body_the_app_leaves_unread_is_never_read_as_a_next_request(server: tuple[str, int, int]) -> None:
    """A chunked body that holds a request: it must not be answered as one (cheroot kept the
    connection with the body unread and parsed it as the next request)."""
    _, port, _ = server
    inner = b"GET /smuggled HTTP/1.1\r\nHost: reviews\r\n\r\n"
    data = post(b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner), b"/ignore")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(IDLE_TIMEOUT + HEADER_TIMEOUT + 5)
        sock.sendall(data)
        answer = read_answer(sock)
        then = read_answer(sock)  # until the server closes the connection, or a second answer
    assert status(answer) == 200, answer
    assert answer.endswith(b"POST /ignore 0")
    assert then == b"", then
    assert b"/smuggled" not in answer
    assert_prompt(port)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_64_mib_body_streams_through_without_being_held(server: tuple[str, int, int], framing: str) -> None:
    """No body limit (Envoy's too streams a body it does not buffer): the app reads 64 MiB in
    64 KiB pieces, the server never holds it (cheroot held each chunk whole: 570 MiB for one
    256 MiB chunk). One 64 MiB chunk, or a 64 MiB Content-Length."""
    _, port, pid = server
    size = 64 << 20
    before = rss(pid)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        if framing == "chunked":
            sock.sendall(post(b"Transfer-Encoding: chunked\r\n", b"%x\r\n" % size))
        else:
            sock.sendall(post(b"Content-Length: %d\r\n" % size))
        piece = b"a" * 65536
        for _ in range(size // len(piece)):
            sock.sendall(piece)
        if framing == "chunked":
            sock.sendall(b"\r\n0\r\n\r\n")
        answer = read_answer(sock)
    grew = rss(pid) - before
    print(f"\n{server[0]} {framing}: 64 MiB body, server RSS +{grew / 2**20:.1f} MiB")
    assert status(answer) == 200, answer[:200]
    assert answer.endswith(b"POST / %d" % size), answer[-200:]
    assert grew < 16 << 20
    assert_prompt(port)


def test_slowloris_heads_are_cut_at_the_head_deadline(server: tuple[str, int, int]) -> None:
    """20 connections drip a head a byte every 0.3 s: each gets 408 at the head deadline, never
    later, however long it keeps dripping. uvicorn answers a normal request promptly meanwhile;
    cheroot (16 worker threads, a dripping head holds one) answers it once they are cut."""
    kind, port, _ = server
    drips = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    started = time.monotonic()
    try:
        for sock in drips:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n")
            sock.setblocking(False)
        during: float | None = None
        cut: dict[int, float] = {}
        while len(cut) < len(drips) and time.monotonic() - started < HEADER_TIMEOUT + 5:
            if during is None and time.monotonic() - started > 0.5:
                during = assert_prompt(port) if kind == "asgi" else 0.0
            for i, sock in enumerate(drips):
                if i in cut:
                    continue
                try:
                    if sock.recv(65536):
                        cut[i] = time.monotonic() - started
                except BlockingIOError:
                    try:
                        sock.send(b"x")
                    except OSError:
                        cut[i] = time.monotonic() - started
                except OSError:
                    cut[i] = time.monotonic() - started
            time.sleep(0.3)
        after = assert_prompt(port)
    finally:
        for sock in drips:
            sock.close()
    print(
        f"\n{kind}: 20 dripping heads cut after {min(cut.values()):.2f}-{max(cut.values()):.2f} s; "
        f"a normal request took {after * 1000:.0f} ms after"
    )
    assert len(cut) == len(drips), "every dripping head was cut"
    assert max(cut.values()) < HEADER_TIMEOUT + 1.0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_stalled_body_gets_408_and_the_connection_closed(
    server: tuple[str, int, int], framing: str
) -> None:
    """Envoy's stream idle timeout: no body bytes for the idle timeout (uvicorn) or the
    socket timeout (cheroot: the header timeout) gives 408 (no answer had begun) and a close."""
    kind, port, _ = server
    limit = IDLE_TIMEOUT if kind == "asgi" else HEADER_TIMEOUT
    head = b"Transfer-Encoding: chunked\r\n" if framing == "chunked" else b"Content-Length: 100\r\n"
    body = b"3\r\nabc\r\n" if framing == "chunked" else b"abc"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(limit + 5)
        started = time.monotonic()
        sock.sendall(post(head, body))
        answer = read_answer(sock)
        took = time.monotonic() - started
        assert sock.recv(1) == b"", "closed after the 408"
    assert status(answer) == 408, answer[:200]
    assert limit - 0.1 < took < limit + 1.0, f"408 after {took:.2f} s"
    assert_prompt(port)


# --- gRPC -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start("grpc", tmp_path_factory.mktemp("grpc"))
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def grpc_prompt(port: int) -> float:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: Any = channel.unary_unary("/hostile.Test/Size")
        started = time.monotonic()
        assert call(b"abc", timeout=5) == b"3"
        took = time.monotonic() - started
    assert took < PROMPT, f"a normal call took {took:.2f} s"
    return took


JUST_UNDER = (4 << 20) - 1024


def test_grpc_an_oversized_message_is_resource_exhausted(grpc_server: int) -> None:
    """grpcio's 4 MiB receive limit, as Envoy's gRPC default."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_server}") as channel:
        call: Any = channel.unary_unary("/hostile.Test/Size")
        assert call(b"a" * JUST_UNDER, timeout=10) == str(JUST_UNDER).encode()
        with pytest.raises(grpc.RpcError) as refused:
            call(b"a" * (5 << 20), timeout=10)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    grpc_prompt(grpc_server)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http1"),
        pytest.param(b"\x00" * 4096, id="nul"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64, id="bad-frames"),
    ],
)
def test_grpc_garbage_on_the_port_closes_the_connection(grpc_server: int, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", grpc_server)) as sock:
        sock.settimeout(HEADER_TIMEOUT + 5)
        started = time.monotonic()
        sock.sendall(garbage)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        took = time.monotonic() - started
    assert took < HEADER_TIMEOUT + 1.0, f"held {took:.2f} s"
    grpc_prompt(grpc_server)
