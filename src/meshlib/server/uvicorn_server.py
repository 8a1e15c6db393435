"""uvicorn's connections for ``serve_asgi``: mTLS per PeerAuthentication on one port, and
Envoy's limits on what a client may send before the application runs.

Each connection's first bytes decide: 0x16 opens a TLS handshake, anything else is
plaintext. Then, by the mode the current snapshot gives this workload and port, TLS is
completed with the workload's live server context (client certificates verified against the
mesh roots), plaintext is served under PERMISSIVE and DISABLE, and refused under STRICT
with a short HTTP answer saying why — also when the workload has no certificate to offer,
so STRICT never serves plaintext. The bytes that decided are handed to the TLS layer or the
HTTP parser as they are: nothing is peeked, and no connection costs a second descriptor.

The verified peer's SPIFFE ID goes into the ASGI TLS extension of every request on that
connection (uvicorn does not fill it in), where the middleware turns it into
``meshlib.current_peer()``. Request heads are bounded by ``ServerLimits``: size and header
count (431) and the time they take to arrive (408, or a silent close if nothing came); a
request body that stops arriving for ``idle_timeout`` gets 408 and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..http.network import peer_spiffe_id
from ..mesh import Mesh
from .limits import ServerLimits

__all__ = ["STRICT_REFUSAL", "TLS_HANDSHAKE", "mesh_protocol_class", "mode_for", "strict_refusal"]

log = logging.getLogger("meshlib")

TLS_HANDSHAKE = 0x16


def strict_refusal(detail: str = "") -> bytes:
    """The answer to a plaintext request under STRICT (``detail``: why mTLS cannot happen)."""
    reason = (
        "mutual TLS required: this workload's PeerAuthentication is STRICT; plaintext is refused" + detail
    ).encode() + b"\n"
    return (
        b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n"
        + f"content-length: {len(reason)}\r\n\r\n".encode()
        + reason
    )


STRICT_REFUSAL = strict_refusal()
NO_CERTIFICATE = "; this workload has no certificate to offer yet"


def mode_for(mesh: Mesh, port: int) -> str:
    """This workload's PeerAuthentication mode on ``port``, from the current snapshot."""
    return mesh.snapshot.security_for(mesh.namespace, mesh.source_labels).mode_for_port(port)


def _answer(status: int, message: str) -> bytes:
    body = message.encode() + b"\n"
    return (
        STATUS_LINE[status]
        + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def limited_protocol_class(limits: ServerLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits`` on request heads."""
    too_big = f"request head larger than {limits.max_header_bytes // 1024} KiB"
    too_many = f"more than {limits.max_headers} header fields"

    class LimitedProtocol(HttpToolsProtocol):
        _head = 0  # bytes fed since the current head began (bounds what the parser buffers)
        _size = 0  # the current head's size as the parser reports it (exact, also when pipelined)
        _in_head = True  # between requests or reading a head (not a body)
        _heads = 0  # request heads completed on this connection
        _fields = 0
        _refused: str | None = None
        _timer: asyncio.TimerHandle | None = None
        _due: float | None = None  # when the head being waited for must be complete
        _body_timer: asyncio.TimerHandle | None = None  # while a request body is coming
        _heard = 0.0  # loop time of the last bytes received
        head_deadline: float | None = None  # set by the connection: the first head's deadline

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(self.head_deadline)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._body_done()
            super().connection_lost(exc)

        def _body_done(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _busy(self) -> bool:
            """Answering a request: a pipelined head's time counts from the answer's end."""
            cycle = self.cycle
            return cycle is not None and not cycle.response_complete

        # One timer per connection rather than one per request: disarming only clears the
        # due time, and a timer that fires early for a head armed since waits on until then.
        # (A timer armed and cancelled per keep-alive request cost 1.3-1.5 µs of the event
        # loop's time per request, measured in a tight loop; more between socket reads.)
        def _arm(self, deadline: float | None = None) -> None:
            if self._due is None and not self._busy():
                when = deadline if deadline is not None else self.loop.time() + limits.header_timeout
                self._due = when
                timer = self._timer
                if timer is None or timer.when() > when:
                    if timer is not None:
                        timer.cancel()
                    self._timer = self.loop.call_at(when, self._late)

        def _disarm(self) -> None:
            self._due = None

        def _late(self) -> None:
            self._timer = None
            due = self._due
            if due is None:  # no head is being waited for
                return
            if due > self.loop.time():  # armed again since the timer was set: wait on
                self._timer = self.loop.call_at(due, self._late)
                return
            self._due = None
            if self._head:
                self.transport.write(_answer(408, "request head not received in time"))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            self._heard = self.loop.time()
            self._feed(data)
            # A body that is still coming: watched for a stall (armed only now, so that a
            # request without a body, complete within one read, never makes a timer).
            if not self._in_head and self._body_timer is None and self._attached():
                self._body_timer = self.loop.call_at(self._heard + limits.idle_timeout, self._body_stalled)

        def _attached(self) -> bool:
            """Still this connection's protocol (not handed to a websocket), and open."""
            return self.transport.get_protocol() is self and not self.transport.is_closing()

        def _body_stalled(self) -> None:
            """No body bytes for ``idle_timeout`` (Envoy's stream idle timeout): 408 if no
            answer has begun, and close. Time the app leaves the body unread (reading paused
            by flow control, or a 100 Continue it has not asked for by reading) is not the
            client's stall and does not count."""
            self._body_timer = None
            if self._in_head or not self._attached():
                return
            now = self.loop.time()
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                self._heard = now  # the application's wait (a 100 Continue not sent yet too)
            if self._heard + limits.idle_timeout > now:
                self._body_timer = self.loop.call_at(self._heard + limits.idle_timeout, self._body_stalled)
                return
            log.info("closed a connection from %s: the request body stalled", self.client)
            if cycle is not None and not cycle.response_started:
                self.transport.write(_answer(408, "request body not received in time"))
            self.transport.close()

        def _feed(self, data: bytes) -> None:
            # Count what arrives while a head is being read; never feed the parser more than
            # one byte past the limit of one head (so it never buffers more than that).
            while data:
                if not self._in_head:
                    super().data_received(data)
                    return
                self._arm()  # also for bytes that start no message (CRLF between requests)
                room = limits.max_header_bytes - self._head
                if len(data) <= room:
                    self._head += len(data)
                    super().data_received(data)
                    return
                piece, data = data[: room + 1], data[room + 1 :]
                heads = self._heads
                self._head += len(piece)
                super().data_received(piece)
                if self.transport.is_closing():
                    return
                if self._heads == heads:  # the head is still not complete: too large
                    self._refuse(too_big)
                    return

        def _refuse(self, why: str) -> None:
            log.info("refused a request from %s: %s", self.client, why)
            self._disarm()
            self.transport.write(_answer(431, why))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            if self._refused is not None:  # a limit, reported through the parser's error
                self._refuse(self._refused)
            else:
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._fields = 0
            self._size = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._size += len(url) + 16  # with the method and the version
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._fields += 1
            self._size += len(name) + len(value) + 4
            if self._fields > limits.max_headers:
                self._refused = too_many
                raise ValueError(too_many)  # stops the parser; send_400_response answers 431
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._size > limits.max_header_bytes:  # a pipelined head counted exactly
                self._refused = too_big
                raise ValueError(too_big)
            self._disarm()
            self._in_head = False
            self._heads += 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_done()
            self._in_head = True
            self._head = 0
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._in_head and self._head:  # a pipelined head began meanwhile
                self._arm()

    return LimitedProtocol


def mesh_protocol_class(
    mesh: Mesh, port_of: Callable[[], int], limits: ServerLimits
) -> type[asyncio.Protocol]:
    """A uvicorn ``http`` protocol class bound to ``mesh`` (its identity and policy)."""
    inner_class = limited_protocol_class(limits)

    class MeshProtocol(asyncio.Protocol):
        """Stands in front of uvicorn's protocol until the first bytes decide what follows."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner: Any = inner_class(*args, **kwargs)
            self._loop = asyncio.get_running_loop()
            self._transport: asyncio.Transport | None = None
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self._transport = transport
            # One deadline for the first head, from the connection: nothing sent, a slow TLS
            # handshake and a slow head all count against it.
            self._deadline = self._loop.time() + limits.header_timeout
            self._inner.head_deadline = self._deadline
            self._timer = self._loop.call_at(self._deadline, transport.close)

        def data_received(self, data: bytes) -> None:
            transport = self._transport
            assert transport is not None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            identity = mesh.workload_identity
            mode = mode_for(mesh, port_of())
            if data[0] == TLS_HANDSHAKE and identity is not None and mode != "DISABLE":
                self._serve_tls(transport, identity.server_context(require_client_cert=True), data)
            elif mode == "STRICT":
                log.info("refused a plaintext connection: PeerAuthentication is STRICT")
                refusal = _Refusal(transport, NO_CERTIFICATE if identity is None else "")
                refusal.timer = self._loop.call_at(self._deadline, transport.close)
                transport.set_protocol(refusal)
                refusal.data_received(data)
            else:
                transport.set_protocol(self._inner)
                self._inner.connection_made(transport)
                self._inner.data_received(data)

        def _serve_tls(self, transport: asyncio.Transport, context: ssl.SSLContext, first: bytes) -> None:
            """What ``loop.start_tls`` does, with the bytes already read handed to the TLS layer."""
            waiter = self._loop.create_future()
            waiter.add_done_callback(_handshake_done)
            tls = sslproto.SSLProtocol(
                self._loop,
                _Handover(self._inner),
                context,
                waiter,
                server_side=True,
                ssl_handshake_timeout=max(0.1, self._deadline - self._loop.time()),  # type: ignore[arg-type]
            )
            transport.set_protocol(tls)
            tls.connection_made(transport)
            view = memoryview(first)
            while view:
                buffer = tls.get_buffer(len(view))
                size = min(len(buffer), len(view))
                buffer[:size] = view[:size]
                tls.buffer_updated(size)
                view = view[size:]

        def eof_received(self) -> bool | None:
            return None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:  # closed before sending a byte
                self._timer.cancel()
                self._timer = None

    return MeshProtocol


def _handshake_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.cancelled() and waiter.exception() is not None:
        log.info("mTLS handshake refused: %s", waiter.exception())


class _Handover(asyncio.Protocol):
    """The TLS layer's application protocol until the handshake ends: then uvicorn's takes
    the connection, with the verified peer in the ASGI TLS extension of every request."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        inner = self._inner
        inner.app = _with_tls(inner.app, transport.get_extra_info("ssl_object"))
        transport.set_protocol(inner)
        inner.connection_made(transport)


class _Refusal(asyncio.Protocol):
    """Answers a plaintext request under STRICT with the reason, then closes. It reads the
    request head first (closing with unread data would reset the connection, and the client
    would never see why), within the connection's head deadline (``timer`` closes it)."""

    def __init__(self, transport: asyncio.Transport, detail: str) -> None:
        self._transport = transport
        self._detail = detail
        self._tail = b""
        self._size = 0
        self.timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        window = self._tail + data
        self._size += len(data)
        if b"\r\n\r\n" in window or self._size > 65536:
            self._transport.write(strict_refusal(self._detail))
            self._transport.close()
        self._tail = window[-3:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


App = Callable[[Any, Any, Any], Awaitable[None]]


def _with_tls(app: App, ssl_object: ssl.SSLObject | None) -> App:
    """The ASGI TLS extension for every request of one connection; ``client_cert_chain``
    holds the verified client certificate (PEM), as the ASGI TLS extension defines it."""
    peer = peer_spiffe_id(ssl_object)
    der = ssl_object.getpeercert(True) if ssl_object is not None else None
    extension: dict[str, Any] = {
        "tls_version": {"TLSv1.2": 0x303, "TLSv1.3": 0x304}.get(ssl_object.version() or "")
        if ssl_object
        else None,
        "cipher_suite": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "server_cert": None,
        "meshlib.peer_spiffe_id": peer,
        "meshlib.sni": getattr(ssl_object, "meshlib_sni", None),
    }

    async def with_tls(scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = extension
        await app(scope, receive, send)

    return with_tls
