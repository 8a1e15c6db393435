"""Mutual TLS for uvicorn, per PeerAuthentication: STRICT, PERMISSIVE or DISABLE on one port.

uvicorn is given a protocol class that looks at the first byte of each connection before
anything reads it (MSG_PEEK on a duplicate of the socket): 0x16 opens a TLS handshake,
anything else is plaintext. Then, by the mode the current snapshot gives this workload
and port: TLS is upgraded with the workload's live server context (client certificates
verified against the mesh roots); plaintext is served under PERMISSIVE and DISABLE, and
refused under STRICT with a short HTTP answer saying why. The verified peer's SPIFFE ID is
put into the ASGI TLS extension of every request on that connection (neither uvicorn nor
hypercorn fills it in), where the middleware turns it into ``meshlib.current_peer()``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from .http.tls import peer_spiffe_id
from .mesh import Mesh

__all__ = ["STRICT_REFUSAL", "TLS_HANDSHAKE", "mesh_protocol_class", "mode_for"]

log = logging.getLogger("meshlib")

TLS_HANDSHAKE = 0x16
_REASON = b"mutual TLS required: this workload's PeerAuthentication is STRICT; plaintext is refused\n"
STRICT_REFUSAL = (
    b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    + f"content-length: {len(_REASON)}\r\n\r\n".encode()
    + _REASON
)


def mode_for(mesh: Mesh, port: int) -> str:
    """This workload's PeerAuthentication mode on ``port``, from the current snapshot."""
    return mesh.snapshot.security_for(mesh.namespace, mesh.source_labels).mode_for_port(port)


def _base_protocol() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def mesh_protocol_class(mesh: Mesh, port_of: Callable[[], int]) -> type[asyncio.Protocol]:
    """A uvicorn ``http`` protocol class bound to ``mesh`` (its identity and policy)."""
    base = _base_protocol()

    class MeshProtocol(asyncio.Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner: Any = base(*args, **kwargs)
            self._loop = asyncio.get_running_loop()
            self._transport: asyncio.Transport | None = None
            self._plain = False

        # -- deciding ------------------------------------------------------------------

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self._transport = transport
            transport.pause_reading()
            raw = transport.get_extra_info("socket")
            self._peeker = raw.dup() if raw is not None else None  # peeking never consumes
            if self._peeker is None:
                self._serve_plain()
                return
            self._loop.add_reader(self._peeker.fileno(), self._peek)

        def _peek(self) -> None:
            assert self._peeker is not None
            assert self._transport is not None
            self._loop.remove_reader(self._peeker.fileno())
            try:
                first = self._peeker.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                self._loop.add_reader(self._peeker.fileno(), self._peek)
                return
            except OSError:
                first = b""
            self._peeker.close()
            self._peeker = None
            if not first:
                self._transport.close()
                return
            identity = mesh.workload_identity
            mode = mode_for(mesh, port_of())
            if first[0] == TLS_HANDSHAKE and identity is not None and mode != "DISABLE":
                self._loop.create_task(self._serve_tls(identity.server_context(require_client_cert=True)))
            elif mode == "STRICT":
                log.info("refused a plaintext connection: PeerAuthentication is STRICT")
                # Read the request before answering: closing with unread data would reset the
                # connection, and the client would never see why.
                self._transport.set_protocol(_Refusal(self._transport))
                self._transport.resume_reading()
            else:
                self._serve_plain()

        def _serve_plain(self) -> None:
            assert self._transport is not None
            self._plain = True
            self._inner.connection_made(self._transport)
            self._transport.resume_reading()

        async def _serve_tls(self, context: ssl.SSLContext) -> None:
            transport = self._transport
            assert transport is not None
            # Application data can arrive in the same turn the handshake ends, before uvicorn's
            # protocol is attached: a shim holds it and hands it over in order.
            shim = _Holding()
            try:
                upgraded = await self._loop.start_tls(
                    transport, shim, context, server_side=True, ssl_handshake_timeout=10.0
                )
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                log.info("mTLS handshake refused: %s", exc)
                transport.close()
                return
            if upgraded is None:  # pragma: no cover - the peer went away mid-handshake
                return
            self._inner.app = _with_tls(self._inner.app, upgraded.get_extra_info("ssl_object"))
            upgraded.set_protocol(self._inner)
            self._inner.connection_made(upgraded)
            shim.hand_over(self._inner)

        # -- plaintext: everything goes to uvicorn's protocol --------------------------

        def data_received(self, data: bytes) -> None:
            self._inner.data_received(data)

        def eof_received(self) -> bool | None:
            result: bool | None = self._inner.eof_received() if self._plain else None
            return result

        def connection_lost(self, exc: Exception | None) -> None:
            if self._peeker is not None:
                self._loop.remove_reader(self._peeker.fileno())
                self._peeker.close()
                self._peeker = None
            if self._plain:
                self._inner.connection_lost(exc)

        def pause_writing(self) -> None:
            self._inner.pause_writing()

        def resume_writing(self) -> None:
            self._inner.resume_writing()

    return MeshProtocol


class _Holding(asyncio.Protocol):
    """Keeps what arrives on a fresh TLS connection until the HTTP protocol takes over."""

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self._data.append(data)

    def eof_received(self) -> bool | None:
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def hand_over(self, protocol: Any) -> None:
        for chunk in self._data:
            protocol.data_received(chunk)
        if self._eof:
            protocol.eof_received()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])


class _Refusal(asyncio.Protocol):
    """Answers a plaintext request under STRICT with the reason, then closes."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._seen = b""

    def data_received(self, data: bytes) -> None:
        self._seen = (self._seen + data)[-4:]
        if b"\r\n\r\n" in self._seen or (len(data) >= 4 and data.endswith(b"\r\n\r\n")):
            self._transport.write(STRICT_REFUSAL)
            self._transport.close()


App = Callable[[Any, Any, Any], Awaitable[None]]


def _with_tls(app: App, ssl_object: ssl.SSLObject | None) -> App:
    """The ASGI TLS extension for every request of one connection."""
    peer = peer_spiffe_id(ssl_object)
    extension: dict[str, Any] = {
        "tls_version": {"TLSv1.2": 0x303, "TLSv1.3": 0x304}.get(ssl_object.version() or "")
        if ssl_object
        else None,
        "cipher_suite": None,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "server_cert": None,
        "meshlib.peer_spiffe_id": peer,
    }

    async def with_tls(scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = extension
        await app(scope, receive, send)

    return with_tls
