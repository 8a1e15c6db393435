"""``AioMeshChannel``: the ``grpc.aio`` twin of ``MeshChannel`` (the same stack, the same
decisions; only the driver awaits).

One grpcio behaviour is corrected here, where the mesh knows better: when the server ends
a call while a request-stream message is still being written, grpc.aio may replace the
server's status with its own INTERNAL "Internal error from Core" (the failed write
overwrites the status that already arrived). The first status the call reported is kept
(a done callback sees it before the overwrite) and is what the caller gets, what retries
and outlier detection see.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator
from typing import Any

import grpc

from ..adapter import Exchange, Mirror, Outcome, Send, drive_client_async, wait_learned_async
from .adapter import (
    MAX_MIRRORS_IN_FLIGHT,
    RETIRE_AFTER,
    Channels,
    GrpcAdapter,
    GrpcMesh,
    MeshRpcError,
    Metadata,
    Spec,
)
from .arities import Arities, CallableBase

__all__ = ["AioMeshChannel"]

_CORE_INTERNAL = "Internal error from Core"


class AioMeshChannel(Arities, grpc.aio.Channel):
    def __init__(self, mesh: GrpcMesh, target: str, options: list[tuple[str, Any]] | None = None) -> None:
        self.adapter = adapter = GrpcAdapter(mesh, target)
        self._metrics = mesh.metrics
        self.channels: Channels[grpc.aio.Channel] = Channels(
            adapter,
            target,
            options or [],
            lambda address, opts: grpc.aio.insecure_channel(address, options=opts),
            lambda address, creds, opts: grpc.aio.secure_channel(address, creds, options=opts),
            _retire_later,
        )
        self._mirrors: set[asyncio.Task[None]] = set()  # mirrored calls on their way

    def _callable(
        self, method: str, serializers: tuple[Any, Any], streaming_in: bool, streaming_out: bool
    ) -> Any:
        return _AioCallable(self, method, serializers, streaming_in, streaming_out)

    async def close(self, grace: float | None = None) -> None:
        for channel in self.channels.take_all():
            await channel.close(grace)

    async def __aenter__(self) -> AioMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await asyncio.Event().wait()  # a mesh channel's state does not change

    async def channel_ready(self) -> None:
        return None

    # --- the client driver's I/O ------------------------------------------------------

    async def run(self, spec: Spec, timeout: float | None) -> Any:  # noqa: ASYNC109 - grpc API
        adapter = self.adapter
        waiting = adapter.waiting()
        if waiting is not None:  # the first call to this host: its endpoints come first
            started = time.monotonic()
            await wait_learned_async(waiting, timeout)
            timeout = adapter.after_waiting(timeout, started)  # the wait is part of the call
        ex = adapter.exchange(spec, timeout)
        if ex is None:  # not a mesh service: straight through
            call = self.channels.stub(self.channels.direct(), spec)(
                spec.request, timeout=timeout, metadata=spec.metadata
            )
            return call if spec.streaming_out else await call
        reply = await drive_client_async(adapter.flow(ex), ex, self, self._metrics)
        return adapter.finish(ex, reply)

    async def send(self, ex: Exchange, send: Send) -> Outcome:
        spec: Spec = ex.request
        adapter = self.adapter
        try:
            channel = self.channels.get(send)
        except MeshRpcError as error:
            return adapter.unsendable(error)
        call = self.channels.stub(channel, spec, send.path)(
            spec.request, timeout=send.timeout, metadata=adapter.metadata(spec, send, ex)
        )
        statuses = _Statuses(call) if spec.streaming_in else None
        try:
            if not spec.streaming_out:
                return adapter.ok(await call)
            return adapter.ok(
                await _peeked(call, statuses)
            )  # an error before the first message may be retried
        except grpc.RpcError as error:
            return adapter.failed(await _server_status(error, statuses))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def mirror(self, ex: Exchange, copy: Mirror) -> None:
        """Fire and forget: a task nobody awaits carries the copy; its fate is ignored."""
        spec: Spec = ex.request
        if spec.streaming_in or spec.streaming_out or len(self._mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            return  # one request message only (a stream is read once); shed when too many
        try:
            stub = self.channels.stub(self.channels.get(copy), spec, copy.path)
        except MeshRpcError:
            return  # no certificate to send it with: never in plaintext
        metadata = self.adapter.metadata(spec, copy, ex)
        task = asyncio.get_running_loop().create_task(
            _quietly(stub(spec.request, timeout=copy.timeout, metadata=metadata))
        )
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)


async def _quietly(call: Awaitable[Any]) -> None:
    with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):  # never reaches the caller
        await call


def _retire_later(channel: grpc.aio.Channel) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(RETIRE_AFTER, lambda: loop.create_task(channel.close()))


class _Statuses:
    """Every status a call reports, in order (grpc.aio calls its done callbacks each time)."""

    def __init__(self, call: Any) -> None:
        self.seen: list[tuple[grpc.StatusCode, str]] = []
        self.changed = asyncio.Event()
        call.add_done_callback(self._done)

    def _done(self, call: Any) -> None:
        code, details = _at_once(call.code()), _at_once(call.details())
        if code is not None:
            self.seen.append((code, details or ""))
            self.changed.set()

    def server_status(self) -> tuple[grpc.StatusCode, str] | None:
        for code, details in self.seen:
            if not (code is grpc.StatusCode.INTERNAL and details == _CORE_INTERNAL):
                return code, details
        return None


def _at_once(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The value of a coroutine that completes without suspending (a finished call's status);
    None if it would have to wait."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    return None


async def _server_status(error: grpc.RpcError, statuses: _Statuses | None) -> grpc.RpcError:
    """The server's own status instead of grpc.aio's INTERNAL after a failed stream write."""
    if statuses is None or error.code() is not grpc.StatusCode.INTERNAL or error.details() != _CORE_INTERNAL:
        return error
    found = statuses.server_status()
    if found is None:  # the write failed first: the server's status may still be on its way
        statuses.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(statuses.changed.wait(), 0.2)
        found = statuses.server_status()
    if found is None:
        return error
    debug = getattr(error, "debug_error_string", lambda: None)()
    return grpc.aio.AioRpcError(found[0], grpc.aio.Metadata(), grpc.aio.Metadata(), found[1], debug)


class _Awaitable:
    """What a unary-response call returns: ``await`` it."""

    def __init__(self, coroutine: Awaitable[Any]) -> None:
        self._coroutine = coroutine

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coroutine.__await__()


class _Stream:
    """What a stream-response call returns: ``async for`` over it."""

    def __init__(self, opening: Awaitable[AsyncIterator[Any]]) -> None:
        self._opening = opening
        self._iterator: AsyncIterator[Any] | None = None

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = await self._opening
        return await self._iterator.__anext__()


class _AioCallable(CallableBase):
    _channel: AioMeshChannel

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        coroutine = self._channel.run(self._spec(request, metadata), timeout)
        return _Stream(coroutine) if self._out else _Awaitable(coroutine)


async def _peeked(call: Any, statuses: _Statuses | None) -> AsyncIterator[Any]:
    iterator = call.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        return _empty()
    return _chain(first, iterator, statuses)


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


async def _chain(first: Any, rest: AsyncIterator[Any], statuses: _Statuses | None) -> AsyncIterator[Any]:
    yield first
    try:
        async for item in rest:
            yield item
    except grpc.RpcError as error:
        raise await _server_status(error, statuses) from None
