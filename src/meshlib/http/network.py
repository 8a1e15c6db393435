"""The network layer under the mesh's httpcore pools: exact attempt deadlines, and mutual
TLS peers that must prove the identity the registry gave them.

- Deadlines: httpcore applies a timeout to each read, so a server dripping bytes could
  keep an attempt alive far past its timeout. The driver puts the attempt's absolute
  deadline in a context variable; every connect, read and write here gets the time left,
  and none when it is gone — the same in the sync and the async driver.
- Identity: Python's ssl module verifies the chain (against the mesh roots) but knows
  nothing of SPIFFE IDs, and httpcore offers no hook after the handshake. ``start_tls``
  here checks the peer certificate's URI SAN before a byte of the request is written;
  under DestinationRule TLS origination, the rule's subjectAltNames in the same place.
- Trust: a pool keeps the ``SSLContext`` it was made with, but the mesh's client context
  is replaced when the trust bundle drops a root; ``start_tls`` asks the workload identity
  for the current one, so every new connection verifies against today's roots.
"""

from __future__ import annotations

import select
import ssl
import time
import typing
from collections.abc import Callable
from contextvars import ContextVar

import httpcore

from ..tls_origination import names_mismatch

__all__ = ["AsyncMeshBackend", "Lifetime", "MeshBackend", "attempt_deadline", "peer_spiffe_id"]

ContextSource = Callable[[], ssl.SSLContext]  # the live mTLS client context
attempt_deadline: ContextVar[float | None] = ContextVar("meshlib_attempt_deadline", default=None)


def peer_spiffe_id(ssl_object: typing.Any) -> str | None:
    """The SPIFFE ID in the verified peer certificate of a TLS connection, if any."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(True)  # positional: httpcore hands out _ssl._SSLSocket too
    if not der:
        return None
    from cryptography import x509  # once per mTLS connection; a plaintext mesh never loads it

    from ..ca.svid import spiffe_id_of

    return spiffe_id_of(x509.load_der_x509_certificate(der))


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """The per-operation timeout, shortened to what the attempt has left."""
    deadline = attempt_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the attempt's time ran out")
    return left if timeout is None else min(timeout, left)


def _check(stream: typing.Any, expected: str | None, names: tuple[str, ...] = ()) -> None:
    """The peer's SPIFFE ID (mesh mTLS), or one of the DestinationRule's subjectAltNames."""
    if names:
        ssl_object = stream.get_extra_info("ssl_object")
        mismatch = names_mismatch(ssl_object.getpeercert(True) if ssl_object is not None else None, names)
        if mismatch is not None:
            raise httpcore.ConnectError(
                f"the server certificate carries none of the DestinationRule's tls.subjectAltNames "
                f"({', '.join(names)}): {mismatch}"
            )
    if expected is None:
        return
    got = peer_spiffe_id(stream.get_extra_info("ssl_object"))
    if got != expected:
        raise httpcore.ConnectError(f"mTLS peer is {got or 'without a SPIFFE ID'}, expected {expected}")


def _readable(sock: typing.Any) -> bool:
    """Bytes to read on an idle connection's socket, or its end: the server closed it (or
    broke HTTP), and it must not carry another request. A socket that cannot be polled
    counts as closed, as in httpcore."""
    fd = sock.fileno() if sock is not None else -1
    if fd == -1:
        return True
    if not hasattr(select, "poll"):  # Windows, or eventlet's select: as httpcore does there
        return bool(select.select([fd], [], [], 0)[0])
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


class Lifetime:
    """How much longer a pooled connection may be reused (DestinationRule connectionPool:
    maxRequestsPerConnection, idleTimeout, maxConnectionDuration). A spent connection reports
    itself readable while idle, which is how httpcore learns that a server closed one: the
    pool then closes it instead of reusing it, as Envoy drains such a connection."""

    served = 0
    retire_at: float | None = None  # monotonic time from which it is not reused
    spent = False
    between = False  # a response came and no new request was written since

    def __init__(self) -> None:
        self.opened = time.monotonic()

    def used(self, per_connection: int, idle: float | None, lifetime: float | None) -> None:
        """One more response came over this connection (called only when a limit is set)."""
        self.served += 1
        self.between = True
        if per_connection and self.served >= per_connection:
            self.spent = True
            return
        ends = []
        if idle is not None:
            ends.append(time.monotonic() + idle)
        if lifetime is not None:
            ends.append(self.opened + lifetime)
        self.retire_at = min(ends) if ends else None

    def expired(self) -> bool:
        return self.spent or (self.retire_at is not None and time.monotonic() >= self.retire_at)

    def starting_request(self) -> None:
        """Before the first byte of a request on a connection that served one already. The sync
        pool can hand an idle connection to a request between its expiry check and its
        assignment (another thread's response ended in between); refused here, the pool
        tries the request again on another connection, as it does for a lost race."""
        self.between = False
        if self.expired():
            raise httpcore.ConnectionNotAvailable()


class _Stream(httpcore.NetworkStream, Lifetime):
    tail = b""  # the last bytes read: the adapter sees from them whether a body has all arrived

    def __init__(
        self,
        inner: httpcore.NetworkStream,
        expected: str | None,
        context: ContextSource | None = None,
        names: tuple[str, ...] = (),
    ) -> None:
        Lifetime.__init__(self)
        self._inner = inner
        self._expected = expected
        self._context = context
        self._names = names

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.tail = data = self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:  # h11 hands over b"" for an empty body and its end: nothing to send or time
            if self.between:
                self.starting_request()
            self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        if self._context is not None:
            ssl_context = self._context()
        stream = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        try:
            _check(stream, self._expected, self._names)
        except httpcore.ConnectError:
            stream.close()
            raise
        return _Stream(stream, None)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable" and self.expired():
            return True
        return self._inner.get_extra_info(info)


class MeshBackend(httpcore.NetworkBackend):
    def __init__(
        self, expected: str | None = None, context: ContextSource | None = None, names: tuple[str, ...] = ()
    ) -> None:
        self._inner = httpcore.SyncBackend()
        self._expected = expected
        self._context = context
        self._names = names

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _Stream(stream, self._expected, self._context, self._names)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("mesh endpoints are TCP")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream, Lifetime):
    tail = b""  # as _Stream's

    def __init__(
        self,
        inner: httpcore.AsyncNetworkStream,
        expected: str | None,
        context: ContextSource | None = None,
        names: tuple[str, ...] = (),
    ) -> None:
        Lifetime.__init__(self)
        self._inner = inner
        self._expected = expected
        self._context = context
        self._names = names

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.tail = data = await self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            if self.between:
                self.starting_request()
            await self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        if self._context is not None:
            ssl_context = self._context()
        stream = await self._inner.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)
        )
        try:
            _check(stream, self._expected, self._names)
        except httpcore.ConnectError:
            await stream.aclose()
            raise
        return _AsyncStream(stream, None)

    _socket: typing.Any = None

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":  # asked of each idle connection taken from the pool
            if self.expired():
                return True
            if self._socket is None:  # anyio builds a dict of attributes for each lookup: once
                self._socket = self._inner.get_extra_info("socket")
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


class AsyncMeshBackend(httpcore.AsyncNetworkBackend):
    def __init__(
        self, expected: str | None = None, context: ContextSource | None = None, names: tuple[str, ...] = ()
    ) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._expected = expected
        self._context = context
        self._names = names

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _AsyncStream(stream, self._expected, self._context, self._names)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("mesh endpoints are TCP")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
