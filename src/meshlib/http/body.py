"""Response bodies handed to the caller as they arrive (downloads, server-sent events).

Small bodies are read inside the attempt (the connection goes back to the pool at once and
the per-try timeout covers them); a large or open-ended one is streamed instead. The
stream keeps the attempt's pool slot until it is closed (least-request and the pool limits
count it, as Envoy counts an open stream), every read is bounded by what the attempt had
left, and the request is counted in the metrics when the body ends, with its full duration
and a UT flag when time ran out midway. Errors are the httpx ones a caller catches.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextvars import Token

import httpcore
import httpx

from ..core.exchange import Exchange, Outcome
from ..core.flags import UT
from .errors import MeshTimeoutError, as_httpx_error
from .network import attempt_deadline

__all__ = ["AsyncStreamedBody", "StreamedBody"]


class _Body:
    def __init__(
        self, core: httpcore.Response, ex: Exchange, request: httpx.Request, deadline: float | None
    ) -> None:
        self._core = core
        self._ex = ex
        self._request = request
        self._deadline = deadline
        self.outcome: Outcome | None = None  # set by the adapter: ended (slot, metrics) on close
        self._closed = False
        self._token: Token[float | None] | None = None

    # ``with self:`` around one read: bounded by the attempt's deadline (set per read, so it
    # never leaks into the caller's code between chunks); its errors become the caller's
    # httpx errors. A plain class protocol: contextlib's generator costs ~2 µs per read more.
    def __enter__(self) -> None:
        self._token = attempt_deadline.set(self._deadline)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if self._token is not None:
            attempt_deadline.reset(self._token)
        if isinstance(error, Exception):
            raise self._error(error) from error

    def _error(self, error: Exception) -> Exception:
        deadline = self._deadline
        timed_out = isinstance(error, httpcore.TimeoutException | TimeoutError)
        if timed_out and deadline is not None and time.monotonic() >= deadline - 0.001:
            if UT not in self._ex.flags:
                self._ex.flags.append(UT)
            mapped: Exception = MeshTimeoutError(
                f"{self._ex.fqdn}: the response body did not finish within the route timeout or deadline",
                request=self._request,
            )
            mapped.__cause__ = error
            return mapped
        converted = as_httpx_error(error, self._request)
        return converted if isinstance(converted, Exception) else error

    def _done(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.outcome is not None:
            self.outcome.end()


class StreamedBody(_Body, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        chunks = self._core.iter_stream()
        while True:
            with self:
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        try:
            self._core.close()
        finally:
            self._done()


class AsyncStreamedBody(_Body, httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._core.aiter_stream()
        while True:
            with self:
                chunk = await anext(chunks, None)
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._core.aclose()
        finally:
            self._done()
