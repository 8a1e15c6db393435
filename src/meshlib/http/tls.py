"""Mutual TLS to mesh endpoints: the server must prove the identity the registry gave it.

Python's ssl module verifies the chain (against the mesh roots) but knows nothing of
SPIFFE IDs, and httpcore offers no hook after the handshake. A network backend that wraps
httpcore's own checks the peer certificate's URI SAN right after ``start_tls`` — before a
single byte of the request is written — and refuses the connection otherwise.
"""

from __future__ import annotations

import ssl
import typing

import httpcore
from cryptography import x509

from ..ca.svid import spiffe_id_of

__all__ = ["AsyncVerifyingBackend", "VerifyingBackend", "peer_spiffe_id"]


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SPIFFE ID in the verified peer certificate of a TLS connection, if any."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(True)  # positional: httpcore hands out _ssl._SSLSocket too
    if not der:
        return None
    return spiffe_id_of(x509.load_der_x509_certificate(der))


def _check(stream: httpcore.NetworkStream | httpcore.AsyncNetworkStream, expected: str) -> None:
    got = peer_spiffe_id(stream.get_extra_info("ssl_object"))
    if got != expected:
        raise httpcore.ConnectError(f"mTLS peer is {got or 'without a SPIFFE ID'}, expected {expected}")


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, expected: str) -> None:
        self._inner = inner
        self._expected = expected

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            _check(stream, self._expected)
        except httpcore.ConnectError:
            stream.close()
            raise
        return stream

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class VerifyingBackend(httpcore.NetworkBackend):
    def __init__(self, expected: str) -> None:
        self._inner = httpcore.SyncBackend()
        self._expected = expected

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options), self._expected
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("mesh endpoints are TCP")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, expected: str) -> None:
        self._inner = inner
        self._expected = expected

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            _check(stream, self._expected)
        except httpcore.ConnectError:
            await stream.aclose()
            raise
        return stream

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class AsyncVerifyingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, expected: str) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._expected = expected

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncStream(stream, self._expected)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("mesh endpoints are TCP")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
