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
holds a worker), bounds the request head (size and field count: 431; time: 408), refuses
heads RFC 9112 says a server must refuse (400: see ``_CheckedLines``), and tells the
application the scheme the connection really has.
"""

from __future__ import annotations

import contextlib
import re
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


# RFC 9110 5.6.2: a field name is a token; 5.5: a field value holds no control but HTAB.
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")  # a chunk size: at most 2**64 - 1, as Envoy
# The methods Envoy's HTTP/1 codec takes (its default refuses others with 400), as uvicorn's.
_METHODS = frozenset(
    b"ACL BIND CHECKOUT CONNECT COPY DELETE GET HEAD LINK LOCK M-SEARCH MERGE MKACTIVITY "
    b"MKCALENDAR MKCOL MOVE NOTIFY OPTIONS PATCH POST PROPFIND PROPPATCH PURGE PUT REBIND "
    b"REPORT SEARCH SOURCE SUBSCRIBE TRACE UNBIND UNLINK UNLOCK UNSUBSCRIBE".split()
)
_PIECE = 65536  # the most of a request body read into memory at once


class _CheckedLines:
    """The head's field lines, each refused (ValueError: cheroot answers 400) where RFC 9112
    says a server must refuse it and Envoy's codec does: a name that is not a token (a space
    before the colon included), a NUL, CR or other control in a value, obsolete line folding,
    a Content-Length that is not one number below 10**18 (a second one too, as Envoy).
    cheroot took them all and handed them on. One regular expression a line: about 0.35 us."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.length = False
        self.chunked = False

    def readline(self, size: int | None = None) -> bytes:
        line: bytes = self._inner.readline(size)
        if _FIELD_LINE.fullmatch(line) is None:
            if line == b"\r\n" or not line.endswith(b"\r\n"):
                return line  # the end of the head, or cheroot's own refusal of it
            if line[:1] in (b" ", b"\t"):
                raise ValueError("Obsolete line folding is not accepted.")
            if _TOKEN.fullmatch(line.partition(b":")[0]) is None or b":" not in line:
                raise ValueError("Illegal header name.")
            raise ValueError("Illegal character in a header value.")
        colon = line.find(b":")
        if colon == 14 or colon == 17:  # the length of either name that frames the body
            name = line[:colon].lower()
            if name == b"content-length":
                value = line[colon + 1 : -2].strip(b" \t")
                if self.length or not value.isdigit() or len(value.lstrip(b"0")) > 18:
                    raise ValueError("Malformed Content-Length Header.")
                self.length = True
            elif name == b"transfer-encoding":
                self.chunked = True
        return line


class _StrictHeaderReader(server.HeaderReader):
    """cheroot's header reader on checked lines; then, against request smuggling (RFC 9112
    6.3, as Envoy): a Content-Length with a Transfer-Encoding is refused."""

    def __call__(self, rfile: Any, hdict: Any = None) -> Any:
        lines = _CheckedLines(rfile)
        found = super().__call__(lines, hdict)
        if lines.length and lines.chunked:
            raise ValueError("Both Content-Length and Transfer-Encoding.")
        return found


class _BadChunk(ValueError):
    pass


class _ChunkedBody(server.ChunkedRFile):
    """A chunked request body, read at most ``_PIECE`` bytes at a time (cheroot read each
    chunk whole into memory, however large it said it was: one 256 MiB chunk took 570 MiB),
    its framing errors raised as ``_BadChunk`` (answered 400; cheroot's answer was 500), and
    its trailer section read with the body (bounded like a head), so that the connection is
    at the next request once the application has read the body to its end."""

    def __init__(self, rfile: Any, maxlen: int, max_trailer: int) -> None:
        super().__init__(rfile, maxlen)
        self._left = 0  # bytes of the current chunk not read yet
        self._max_trailer = max_trailer
        self._trailer: list[bytes] = []
        self.broken: str | None = None

    def _fetch(self) -> None:
        try:
            self._next()
        except _BadChunk as exc:
            self.broken = str(exc)
            raise

    def _next(self) -> None:
        if self.closed:
            return
        rfile = self.rfile
        if not self._left:
            line = rfile.readline(_PIECE)
            size = line.partition(b";")[0].strip(b" \t\r\n")
            if not line.endswith(b"\r\n") or _HEX.fullmatch(size) is None:
                raise _BadChunk(f"Bad chunked transfer size: {line[:40]!r}")
            self.bytes_read += len(line)
            self._left = int(size, 16)
            if not self._left:
                self._read_trailer()
                self.closed = True
                return
        piece = rfile.read(min(self._left, _PIECE))
        if not piece:
            raise _BadChunk("The request body ended inside a chunk.")
        self._left -= len(piece)
        self.bytes_read += len(piece)
        if self.maxlen and self.bytes_read > self.maxlen:
            raise errors.MaxSizeExceeded("Request Entity Too Large", self.maxlen)
        self.buffer += piece
        if not self._left and rfile.read(2) != b"\r\n":
            raise _BadChunk("Bad chunked transfer coding (no CRLF after a chunk).")

    def _read_trailer(self) -> None:
        room = self._max_trailer
        while (line := self.rfile.readline(room + 1)) != b"\r\n":
            room -= len(line)
            if room < 0 or not line.endswith(b"\r\n"):
                raise _BadChunk("Bad or oversized trailer section.")
            self._trailer.append(line)

    def read_trailer_lines(self) -> Any:
        if not self.closed:
            raise ValueError("Cannot read trailers until the request body has been read.")
        yield from self._trailer

    def drain(self, most: int) -> None:
        """Read and drop up to ``most`` bytes of what the application left unread."""
        with contextlib.suppress(ValueError, OSError, errors.MaxSizeExceeded):
            while not self.closed and most > 0:
                most -= len(self.read(_PIECE))


def _request_class(limits: ServerLimits) -> type[server.HTTPRequest]:
    too_big = f"The request head is larger than {limits.max_header_bytes // 1024} KiB."
    too_many = f"The request has more than {limits.max_headers} header fields."

    class MeshRequest(server.HTTPRequest):
        header_reader = _StrictHeaderReader()

        def respond(self) -> None:
            """cheroot's, with a chunked body read as ``_ChunkedBody`` (its framing errors
            answered 400), and the connection kept only if that body was read to its end."""
            if not self.chunked_read:
                super().respond()
                return
            body = self.rfile = _ChunkedBody(
                self.conn.rfile, self.server.max_request_body_size, limits.max_header_bytes
            )
            try:
                self.server.gateway(self).respond()
            except Exception:
                if body.broken is None:
                    raise
                self.close_connection = True
                if not self.sent_headers:
                    self.simple_response("400 Bad Request", body.broken)
                return
            if self.ready:
                self.ensure_headers_sent()
            if self.chunked_write:
                self.conn.wfile.write(b"0\r\n\r\n")
            if not body.closed or body.broken is not None:
                self.close_connection = True  # what is left of the body is no next request

        def send_headers(self) -> None:
            # cheroot reads the rest of an unread Content-Length body here so that the
            # connection can be kept; the same for a chunked one, up to 1 MiB.
            body = self.rfile
            if isinstance(body, _ChunkedBody) and not body.closed and not self.close_connection:
                body.drain(1 << 20)
                self.close_connection = not body.closed or body.broken is not None
            super().send_headers()

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
                if self.method not in _METHODS:  # cheroot took any, a NUL or a space in it too
                    self.simple_response("400 Bad Request", "Unknown or malformed method.")
                    return
                self.scheme = b"https" if sock.tls else b"http"
                if not self.read_request_headers():  # type: ignore[no-untyped-call]
                    return
                if self.response_protocol != "HTTP/1.1" and b"Transfer-Encoding" in self.inheaders:
                    # RFC 9112 6.1: faulty framing (cheroot ignored it, and read the body as
                    # the next request on a kept-alive HTTP/1.0 connection).
                    self.simple_response("400 Bad Request", "Transfer-Encoding in an HTTP/1.0 request.")
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
