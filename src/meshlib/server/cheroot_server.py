"""cheroot for ``serve_wsgi``: mTLS per PeerAuthentication on one port, and Envoy's limits
on what a client may send before the application runs.

cheroot hands every accepted socket to its SSL adapter on the thread that accepts, before
anything is read; a peek or a handshake there would let one silent client stall every
accept. So ``MeshSSLAdapter`` only wraps the socket in a ``_Deferred`` that decides on its
first read, in a worker thread: a TLS handshake is completed with the workload's live server
context (the verified peer's SPIFFE ID goes into the environ), plaintext is served under
PERMISSIVE and DISABLE, and answered with the reason and dropped under STRICT (also when
the workload has no certificate: STRICT never serves plaintext).

``MeshWSGIServer`` keeps a new connection out of the worker threads until it has sent
something (a connection that sends nothing is closed after the header timeout and never
holds a worker), bounds the request head (size and field count: 431; time: 408), and tells
the application the scheme the connection really has.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from typing import Any

from cheroot import errors, server, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from ..http.network import peer_spiffe_id
from ..mesh import Mesh
from .limits import ServerLimits
from .uvicorn_server import NO_CERTIFICATE, TLS_HANDSHAKE, mode_for, strict_refusal

__all__ = ["MeshSSLAdapter", "MeshWSGIServer"]


class MeshSSLAdapter(BuiltinSSLAdapter):
    def __init__(self, mesh: Mesh, port: int, header_timeout: float = 10.0) -> None:
        # BuiltinSSLAdapter.__init__ wants certificate files; the mesh's context is live instead.
        self.mesh = mesh
        self.port = port
        self.header_timeout = header_timeout
        self.certificate = self.private_key = self.certificate_chain = None
        self.ciphers = None
        self.private_key_password = None
        self._server_env: dict[str, str] = {}  # SSL_SERVER_* entries: not needed by meshlib
        self.context = None

    def wrap(self, sock: socket.socket) -> tuple[Any, dict[str, Any]]:
        environ: dict[str, Any] = {}  # filled when the first read decides
        return _Deferred(sock, self, environ), environ

    def decide(self, sock: socket.socket, environ: dict[str, Any]) -> socket.socket:
        """TLS, plaintext or refusal, by the first byte and the port's mode; in a worker thread."""
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            raise errors.FatalSSLAlert(*exc.args) from exc
        if not first:
            raise errors.FatalSSLAlert("the client closed the connection before sending anything")
        with contextlib.suppress(OSError):
            environ["meshlib.local_ip"] = sock.getsockname()[0]
        identity = self.mesh.workload_identity
        mode = mode_for(self.mesh, self.port)
        if first[0] == TLS_HANDSHAKE and identity is not None and mode != "DISABLE":
            context = identity.server_context(require_client_cert=True)
            try:
                wrapped = context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                raise errors.FatalSSLAlert(f"mTLS handshake refused: {exc}") from exc
            environ.update(self.get_environ(wrapped))  # type: ignore[no-untyped-call]
            environ["meshlib.peer_spiffe_id"] = peer_spiffe_id(wrapped)
            environ["meshlib.sni"] = getattr(wrapped, "meshlib_sni", None)
            return wrapped
        if mode == "STRICT":
            _read_head(sock, time.monotonic() + self.header_timeout)
            sock.sendall(strict_refusal(NO_CERTIFICATE if identity is None else ""))
            raise errors.FatalSSLAlert("plaintext refused: PeerAuthentication is STRICT")
        return sock


class _Deferred:
    """An accepted socket whose kind (TLS or plaintext) its first read decides. Until the
    request head is in, reads also stop at ``head_deadline``."""

    def __init__(self, raw: socket.socket, adapter: MeshSSLAdapter, environ: dict[str, Any]) -> None:
        self._raw = raw
        self._sock: socket.socket | None = None
        self._adapter = adapter
        self._environ = environ
        self.head_deadline: float | None = None

    @property
    def tls(self) -> bool:
        return isinstance(self._sock, ssl.SSLSocket)

    def _decided(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            if self._failed:
                raise errors.FatalSSLAlert("this connection's first bytes were refused already")
            try:
                sock = self._sock = self._adapter.decide(self._raw, self._environ)
            except BaseException:
                self._failed = True  # a failed handshake closed (or detached) the socket
                raise
        return sock

    _failed = False

    def shutdown(self, how: int) -> None:
        if not self._failed:
            (self._sock if self._sock is not None else self._raw).shutdown(how)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._raw.close()

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        sock = self._decided()
        deadline = self.head_deadline
        if deadline is None:
            return sock.recv_into(buffer, nbytes, flags)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")  # cheroot answers 408 to this message
        base = sock.gettimeout()
        sock.settimeout(left if base is None else min(base, left))
        try:
            return sock.recv_into(buffer, nbytes, flags)
        finally:
            sock.settimeout(base)

    def recv(self, size: int, flags: int = 0) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[: self.recv_into(buffer, size, flags)])

    def send(self, data: Any, flags: int = 0) -> int:
        return self._decided().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._decided().sendall(data, flags)

    def __getattr__(self, name: str) -> Any:  # fileno, close, shutdown, settimeout, ...
        return getattr(self._sock if self._sock is not None else self._raw, name)


def _read_head(sock: socket.socket, deadline: float, limit: int = 65536) -> None:
    """Read the request head (so that closing does not reset the connection under the
    answer), for no longer than the head deadline."""
    seen = b""
    while b"\r\n\r\n" not in seen and len(seen) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            sock.settimeout(left)
            chunk = sock.recv(4096)
        except OSError:
            return
        if not chunk:
            return
        seen += chunk


class _CountingReader:
    """The head's reader: refuses a head with more lines than the field limit allows."""

    def __init__(self, inner: Any, max_lines: int) -> None:
        self._inner = inner
        self._left = max_lines

    def readline(self, size: int | None = None) -> bytes:
        self._left -= 1
        if self._left < 0:
            raise _TooManyFields
        line: bytes = self._inner.readline(size)
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TooManyFields(errors.MaxSizeExceeded):
    pass


def _request_class(limits: ServerLimits) -> type[server.HTTPRequest]:
    too_big = f"The request head is larger than {limits.max_header_bytes // 1024} KiB."
    too_many = f"The request has more than {limits.max_headers} header fields."

    class MeshRequest(server.HTTPRequest):
        def parse_request(self) -> None:
            """cheroot's, with the head's time bounded and its limits answered 431."""
            conn, sock = self.conn, self.conn.socket
            # The first head counts from the accept (a silent wait in the selector included),
            # later ones from when the connection became readable again.
            start = conn.accepted if not conn.heads else time.monotonic()
            conn.heads += 1
            sock.head_deadline = start + limits.header_timeout
            # The request line, the fields and the blank line.
            self.rfile = _CountingReader(
                server.SizeCheckWrapper(self.conn.rfile, self.server.max_request_header_size),
                limits.max_headers + 2,
            )
            try:
                if not self.read_request_line():  # type: ignore[no-untyped-call]
                    return
                self.scheme = b"https" if sock.tls else b"http"
                if not self.read_request_headers():  # type: ignore[no-untyped-call]
                    return
            except _TooManyFields:
                self.simple_response("431 Request Header Fields Too Large", too_many)
                return
            except errors.MaxSizeExceeded:
                self.simple_response("431 Request Header Fields Too Large", too_big)
                return
            finally:
                sock.head_deadline = None
            self.ready = True

    return MeshRequest


class MeshWSGIServer(wsgi.Server):
    """cheroot's WSGI server with the mesh's connections (see the module docstring)."""

    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_request_header_size = limits.max_header_bytes
        self.timeout = limits.header_timeout  # socket inactivity, and how long a silent connection waits
        # cheroot's default of 10 kept-alive connections counts those still waiting to send
        # a first byte: ten silent clients would turn keep-alive off for everyone.
        self.keep_alive_conn_limit = 1024
        request_class = _request_class(limits)

        class MeshConnection(server.HTTPConnection):
            RequestHandlerClass = request_class
            waited = False  # has it been readable once (and so left the selector)?
            heads = 0  # request heads begun on this connection

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.accepted = time.monotonic()

        self.ConnectionClass = MeshConnection

    def process_conn(self, conn: Any) -> None:
        # A new connection waits in cheroot's selector, like a kept-alive one, until it sends
        # something: silence never occupies a worker thread, and the selector closes it
        # after ``timeout``.
        if not conn.waited:
            conn.waited = True
            self._connections.put(conn)  # type: ignore[attr-defined]
            return
        super().process_conn(conn)
