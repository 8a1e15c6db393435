"""The ``grpc.aio`` twins: ``AioMeshChannel`` and ``AioMeshServerInterceptor``.

The decisions are the same client and server stacks as the sync side (no copy of them
here); only the driver awaits: the chosen endpoint's own ``grpc.aio`` channel carries
each attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any

import grpc

from meshlib import Mesh
from meshlib.core.call import Call
from meshlib.core.deadline import _deadline
from meshlib.core.exchange import Exchange, Mirror, Outcome, Reply, Send, Sleep
from meshlib.core.routing_table import Cluster
from meshlib.core.server_stack import Inbound
from meshlib.core.snapshot import Endpoint
from meshlib.peer import _peer

from ._channel import RETIRE_AFTER
from ._common import (
    MAX_MIRRORS_IN_FLIGHT,
    MIRROR_TIMEOUT,
    ChannelKey,
    GrpcAdapter,
    MeshRpcError,
    Metadata,
    _MetadataLookup,
    channel_key,
    channel_settings,
    http_status,
    stale_keys,
)
from ._server import peer_of

__all__ = ["AioMeshChannel", "AioMeshServerInterceptor"]

_NO_DEADLINE = 10 * 365 * 24 * 3600.0
AioMirrorSend = Callable[[grpc.aio.Channel, Metadata | None], Coroutine[Any, Any, None]]
_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class AioMeshChannel(grpc.aio.Channel):
    def __init__(self, mesh: Mesh, target: str, options: list[tuple[str, Any]] | None = None) -> None:
        self._adapter = GrpcAdapter(mesh, target)
        self._target = target
        self._options = options or []
        self._channels: dict[ChannelKey, grpc.aio.Channel] = {}
        self._mirrors: set[asyncio.Task[None]] = set()  # mirrored calls on their way

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioCallable(self, method, request_serializer, response_deserializer, False, False)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioCallable(self, method, request_serializer, response_deserializer, False, True)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioCallable(self, method, request_serializer, response_deserializer, True, False)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioCallable(self, method, request_serializer, response_deserializer, True, True)

    async def close(self, grace: float | None = None) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
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

    def endpoint_channel(
        self, endpoint: Endpoint | None, cluster: Cluster | None = None, shadow: bool = False
    ) -> grpc.aio.Channel:
        secure = self._adapter.credentials(cluster, endpoint)
        key = channel_key(self._target, endpoint, secure, shadow)
        channel = self._channels.get(key)
        if channel is None:
            address, options = channel_settings(self._target, endpoint, secure, shadow, self._options)
            if secure is None:
                channel = grpc.aio.insecure_channel(address, options=options)
            else:
                channel = grpc.aio.secure_channel(address, secure[0], options=options)
                loop = asyncio.get_running_loop()
                for stale in stale_keys(self._channels, key):
                    old = self._channels.pop(stale)  # rotated out: closed once its calls are done
                    loop.call_later(RETIRE_AFTER, _close_later, loop, old)
            self._channels[key] = channel
        return channel

    def _mirror(self, ex: Exchange, action: Mirror, metadata: Metadata | None, send: AioMirrorSend) -> None:
        """Fire and forget: a task nobody awaits carries the copy; its fate is ignored."""
        if len(self._mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            return  # shed copies rather than let them pile up behind a slow mirror
        try:
            channel = self.endpoint_channel(action.endpoint, action.cluster, shadow=True)
        except MeshRpcError:
            return  # no certificate to send it with: never in plaintext
        task = asyncio.get_running_loop().create_task(send(channel, self._adapter.metadata(ex, metadata)))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def run(
        self,
        ex: Exchange,
        metadata: Metadata | None,
        invoke: Callable[[grpc.aio.Channel, float | None, Any], Awaitable[Outcome]],
        mirror: AioMirrorSend | None = None,
    ) -> Any:
        adapter = self._adapter
        flow = adapter.stack(ex)
        value: Any = None
        try:
            while True:
                action = flow.send(value)
                if isinstance(action, Send):
                    try:
                        channel = self.endpoint_channel(action.endpoint, ex.cluster)
                    except MeshRpcError as error:
                        value = adapter.unsendable(error)
                        continue
                    value = await invoke(channel, action.timeout, adapter.metadata(ex, metadata))
                elif isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                    value = None
                elif isinstance(action, Mirror):
                    if mirror is not None:
                        self._mirror(ex, action, metadata, mirror)
                    value = None
                else:  # pragma: no cover
                    raise TypeError(f"unknown action {action!r}")
        except StopIteration as done:
            reply: Reply = done.value
        except BaseException:
            flow.close()
            adapter.escaped(ex)
            raise
        return adapter.finish(ex, reply)


def _close_later(loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel) -> None:
    loop.create_task(channel.close())


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


class _AioCallable:
    def __init__(
        self,
        channel: AioMeshChannel,
        method: str,
        serializer: Any,
        deserializer: Any,
        streaming_in: bool,
        streaming_out: bool,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._in = streaming_in
        self._out = streaming_out
        self._stubs: dict[int, Any] = {}

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
        coroutine = self._call(request, timeout, metadata)
        return _Stream(coroutine) if self._out else _Awaitable(coroutine)

    async def _call(self, request: Any, timeout: float | None, metadata: Metadata | None) -> Any:  # noqa: ASYNC109 - grpc API
        channel = self._channel
        adapter = channel._adapter
        ex = adapter.exchange(self._method, metadata, timeout, replayable=not self._in)
        if ex is None:  # not a mesh service: straight through
            call = self._stub(channel.endpoint_channel(None))(request, timeout=timeout, metadata=metadata)
            return call if self._out else await call

        async def invoke(endpoint_channel: grpc.aio.Channel, limit: float | None, upstream: Any) -> Outcome:
            stub = self._stub(endpoint_channel)
            try:
                call = stub(request, timeout=limit, metadata=upstream)
                if not self._out:
                    return adapter.ok(await call)
                return adapter.ok(await _peeked(call))  # an error before the first message may be retried
            except grpc.RpcError as error:
                return adapter.failed(error)

        async def mirror(endpoint_channel: grpc.aio.Channel, upstream: Metadata | None) -> None:
            with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):  # never reaches the caller
                await self._stub(endpoint_channel)(request, timeout=MIRROR_TIMEOUT, metadata=upstream)

        # Only calls with one request message are copied (a request stream is read once).
        return await channel.run(ex, metadata, invoke, None if self._in or self._out else mirror)

    def _stub(self, endpoint_channel: grpc.aio.Channel) -> Any:
        stub = self._stubs.get(id(endpoint_channel))
        if stub is None:
            stub = getattr(endpoint_channel, _KINDS[(self._in, self._out)])(
                self._method, request_serializer=self._serializer, response_deserializer=self._deserializer
            )
            self._stubs[id(endpoint_channel)] = stub
        return stub


async def _peeked(call: Any) -> AsyncIterator[Any]:
    iterator = call.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        return _empty()
    return _chain(first, iterator)


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


class AioMeshServerInterceptor(grpc.aio.ServerInterceptor):
    """For ``grpc.aio.server``: the inbound gRPC deadline bounds the handler's mesh calls."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        changes = {
            k: self._wrap(getattr(handler, k), method, details.invocation_metadata, k.endswith("stream"))
            for k in kinds
            if getattr(handler, k) is not None
        }
        return handler._replace(**changes)

    def _wrap(self, behavior: Callable[..., Any], method: str, metadata: Any, streaming_out: bool) -> Any:
        mesh = self.mesh

        def begin(context: Any) -> Inbound:
            now = time.monotonic()
            call = Call(
                method="POST",
                scheme="http",
                host="",
                port=None,
                path=method,
                query="",
                header=_MetadataLookup(metadata),
                protocol="grpc",
            )
            ex = mesh.inbound(call, now)
            remaining = context.time_remaining()
            if remaining is not None and remaining < _NO_DEADLINE:
                ex.deadline = now + remaining
                _deadline.set(ex.deadline)  # this call's own task: no reset needed
            _peer.set(peer_of(context))
            return ex

        def done(ex: Inbound, context: Any) -> None:
            code = context.code() if hasattr(context, "code") else None
            status = http_status(code) if isinstance(code, grpc.StatusCode) else 200
            mesh.metrics.record("inbound", mesh.fqdn, status, "-", (time.monotonic() - ex.started) * 1000.0)

        if not streaming_out:

            async def unary(request: Any, context: Any) -> Any:
                ex = begin(context)
                try:
                    return await behavior(request, context)
                finally:
                    done(ex, context)

            return unary

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            ex = begin(context)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                done(ex, context)

        return stream
