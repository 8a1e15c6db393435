"""``MeshChannel``: a ``grpc.Channel`` whose target is a mesh service; each call is routed.

Per call: the client stack decides (VirtualService route on the method path and the
metadata, weighted subsets, balancing, retries on gRPC status codes, per-try timeout,
budget, outlier detection, faults, deadline); the chosen endpoint's own plain grpc channel
carries it. All four arities. A response stream is retried only before its first message;
request streams are never resent.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from meshlib import Mesh
from meshlib.core.exchange import Exchange, Mirror, Outcome, Reply, Send, Sleep
from meshlib.core.routing_table import Cluster
from meshlib.core.snapshot import Endpoint

from ._common import (
    MAX_MIRRORS_IN_FLIGHT,
    MIRROR_TIMEOUT,
    ChannelKey,
    GrpcAdapter,
    MeshRpcError,
    Metadata,
    channel_key,
    channel_settings,
    stale_keys,
)

__all__ = ["MeshChannel"]

FUTURE_WORKERS = 32  # calls made with future() that may run at once per mesh channel
RETIRE_AFTER = 60.0  # seconds a channel of a rotated-out certificate stays open for its calls
Invoke = Callable[[grpc.Channel, float | None, list[tuple[str, str | bytes]]], Outcome]
MirrorSend = Callable[[grpc.Channel, Metadata | None], grpc.Future]


class MeshChannel(grpc.Channel):  # type: ignore[misc]
    def __init__(self, mesh: Mesh, target: str, options: list[tuple[str, Any]] | None = None) -> None:
        self._adapter = GrpcAdapter(mesh, target)
        self._target = target
        self._options = options or []
        self._channels: dict[ChannelKey, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._mirroring = 0  # mirrored calls on their way
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None  # for future()
        self._closed = False

    # --- the grpc.Channel interface ---------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryUnaryMultiCallable:
        return _Callable(
            self, method, request_serializer, response_deserializer, streaming_in=False, streaming_out=False
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryStreamMultiCallable:
        return _Callable(
            self, method, request_serializer, response_deserializer, streaming_in=False, streaming_out=True
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamUnaryMultiCallable:
        return _Callable(
            self, method, request_serializer, response_deserializer, streaming_in=True, streaming_out=False
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamStreamMultiCallable:
        return _Callable(
            self, method, request_serializer, response_deserializer, streaming_in=True, streaming_out=True
        )

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        return None

    def unsubscribe(self, callback: Any) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any) -> grpc.Future:
        """Run ``fn`` on this channel's worker threads (made on first use) in the caller's context."""
        with self._lock:
            if self._closed:
                raise ValueError("Cannot invoke RPC on closed channel!")  # grpcio's words
            if self._workers is None:
                self._workers = concurrent.futures.ThreadPoolExecutor(
                    FUTURE_WORKERS, thread_name_prefix="meshlib-grpc-future"
                )
            workers = self._workers
        return CallFuture(workers.submit(contextvars.copy_context().run, fn, *args))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False, cancel_futures=True)
        for channel in channels:
            channel.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- per endpoint -----------------------------------------------------------------

    def endpoint_channel(
        self, endpoint: Endpoint | None, cluster: Cluster | None = None, shadow: bool = False
    ) -> grpc.Channel:
        """One channel per endpoint (and per certificate generation when it speaks mTLS:
        grpcio credentials are fixed, so a rotation brings a new channel); mirrored copies
        go on their own, whose authority is marked ``-shadow`` as Envoy marks them."""
        secure = self._adapter.credentials(cluster, endpoint)
        key = channel_key(self._target, endpoint, secure, shadow)
        channel = self._channels.get(key)
        if channel is None:
            with self._lock:
                channel = self._channels.get(key)
                if channel is None:
                    address, options = channel_settings(self._target, endpoint, secure, shadow, self._options)
                    if secure is None:
                        channel = grpc.insecure_channel(address, options=options)
                    else:
                        channel = grpc.secure_channel(address, secure[0], options=options)
                        self._retire(key)
                    self._channels[key] = channel
        return channel

    def _retire(self, key: ChannelKey) -> None:
        """Close the channels of older certificate generations for this endpoint, later: calls
        still running on them finish first (closing a grpc channel cancels its calls)."""
        for stale in stale_keys(self._channels, key):
            timer = threading.Timer(RETIRE_AFTER, self._channels.pop(stale).close)
            timer.daemon = True
            timer.start()

    def _mirror(self, ex: Exchange, action: Mirror, metadata: Metadata | None, send: MirrorSend) -> None:
        """Fire and forget: grpc's own threads carry the copy; nobody waits for it."""
        with self._lock:
            if self._mirroring >= MAX_MIRRORS_IN_FLIGHT:
                return  # shed copies rather than let them pile up behind a slow mirror
            self._mirroring += 1
        try:
            channel = self.endpoint_channel(action.endpoint, action.cluster, shadow=True)
            future = send(channel, self._adapter.metadata(ex, metadata))
        except Exception:
            self._mirror_done(None)
            return
        future.add_done_callback(self._mirror_done)

    def _mirror_done(self, future: object) -> None:
        with self._lock:
            self._mirroring -= 1

    def run(
        self, ex: Exchange, metadata: Metadata | None, invoke: Invoke, mirror: MirrorSend | None = None
    ) -> Any:
        adapter = self._adapter
        flow = adapter.stack(ex)
        value: Any = None
        try:
            while True:
                action = flow.send(value)
                if isinstance(action, Send):
                    upstream = adapter.metadata(ex, metadata)
                    try:
                        channel = self.endpoint_channel(action.endpoint, ex.cluster)
                    except MeshRpcError as error:
                        value = adapter.unsendable(error)
                        continue
                    value = invoke(channel, action.timeout, upstream)
                elif isinstance(action, Sleep):
                    time.sleep(action.seconds)
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


class _Callable(
    grpc.UnaryUnaryMultiCallable,
    grpc.UnaryStreamMultiCallable,  # type: ignore[misc]
    grpc.StreamUnaryMultiCallable,
    grpc.StreamStreamMultiCallable,
):
    def __init__(
        self,
        channel: MeshChannel,
        method: str,
        serializer: Any,
        deserializer: Any,
        *,
        streaming_in: bool,
        streaming_out: bool,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._in = streaming_in
        self._out = streaming_out
        self._stubs: dict[int, Any] = {}  # endpoint channels live as long as the mesh channel

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._run(request, timeout, metadata, with_call=False)

    def _run(self, request: Any, timeout: float | None, metadata: Metadata | None, with_call: bool) -> Any:
        channel = self._channel
        adapter = channel._adapter
        ex = adapter.exchange(self._method, metadata, timeout, replayable=not self._in)
        if ex is None:  # not a mesh service: straight through
            stub = self._stub(channel.endpoint_channel(None))
            return (stub.with_call if with_call else stub)(request, timeout=timeout, metadata=metadata)

        def invoke(
            endpoint_channel: grpc.Channel, limit: float | None, upstream: list[tuple[str, str | bytes]]
        ) -> Outcome:
            stub = self._stub(endpoint_channel)
            try:
                if with_call:  # (response, the grpc.Call of the attempt that answered)
                    return adapter.ok(stub.with_call(request, timeout=limit, metadata=upstream))
                if not self._out:
                    return adapter.ok(stub(request, timeout=limit, metadata=upstream))
                stream = stub(request, timeout=limit, metadata=upstream)
                return adapter.ok(_peeked(stream))  # an error before the first message may be retried
            except grpc.RpcError as error:
                return adapter.failed(error)

        def mirror(endpoint_channel: grpc.Channel, upstream: Metadata | None) -> grpc.Future:
            future: grpc.Future = self._stub(endpoint_channel).future(
                request, timeout=MIRROR_TIMEOUT, metadata=upstream
            )
            return future

        # Only calls with one request message are copied (a request stream is read once).
        return channel.run(ex, metadata, invoke, None if self._in or self._out else mirror)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """(response, call) as grpcio's ``with_call``: the call of the attempt that answered
        carries its trailing metadata and status."""
        self._unary_response("with_call")
        return self._run(request, timeout, metadata, with_call=True)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The call on the mesh channel's worker threads, as a ``grpc.Future``; the caller's
        context (a deadline being served) goes with it."""
        self._unary_response("future")
        # The timeout runs from now, as grpcio's does, not from when a worker takes the call.
        due = time.monotonic() + timeout if timeout is not None else None
        return self._channel.submit(self._run_by, request, due, metadata)

    def _run_by(self, request: Any, due: float | None, metadata: Metadata | None) -> Any:
        left = None if due is None else due - time.monotonic()
        if left is not None and left <= 0:
            raise MeshRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{self._method}: deadline passed in the queue"
            )
        return self._run(request, left, metadata, with_call=False)

    def _unary_response(self, what: str) -> None:
        if self._out:
            raise TypeError(f"{what}() is for calls with one response message; {self._method} streams")

    def _stub(self, endpoint_channel: grpc.Channel) -> Any:
        """The endpoint channel's multicallable for this method, made once (grpc registers the
        method path on each creation: several µs a call otherwise)."""
        stub = self._stubs.get(id(endpoint_channel))
        if stub is not None:
            return stub
        kind = {
            (False, False): "unary_unary",
            (False, True): "unary_stream",
            (True, False): "stream_unary",
            (True, True): "stream_stream",
        }[(self._in, self._out)]
        stub = getattr(endpoint_channel, kind)(
            self._method, request_serializer=self._serializer, response_deserializer=self._deserializer
        )
        self._stubs[id(endpoint_channel)] = stub
        return stub


def _peeked(stream: Iterator[Any]) -> Iterator[Any]:
    """Read the first message now (so a failure before it counts for retries), then go on."""
    try:
        first = next(stream)
    except StopIteration:
        return iter(())
    return itertools.chain((first,), stream)


class CallFuture(grpc.Future):  # type: ignore[misc]
    """A ``concurrent.futures.Future`` of a mesh call, behind grpc's Future interface, with the
    ``grpc.Call`` questions a caller asks of the finished call (they wait for it to finish).
    ``cancel`` stops a call only before a worker takes it up."""

    def __init__(self, inner: concurrent.futures.Future[Any]) -> None:
        self._inner = inner

    def cancel(self) -> bool:
        return self._inner.cancel()  # only a call that has not started yet can be cancelled

    def cancelled(self) -> bool:
        return self._inner.cancelled()

    def running(self) -> bool:
        return self._inner.running()

    def done(self) -> bool:
        return self._inner.done()

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._inner.result(timeout)
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        except concurrent.futures.CancelledError:
            raise grpc.FutureCancelledError() from None

    def exception(self, timeout: float | None = None) -> Exception | None:
        try:
            error = self._inner.exception(timeout)
            if error is None or isinstance(error, Exception):
                return error
            raise error  # KeyboardInterrupt and the like are not a call's outcome
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        except concurrent.futures.CancelledError:
            raise grpc.FutureCancelledError() from None

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return error.__traceback__ if error is not None else None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._inner.add_done_callback(lambda _: fn(self))

    def code(self) -> grpc.StatusCode:
        error = self._finished()
        return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.OK

    def details(self) -> str | None:
        error = self._finished()
        return error.details() if isinstance(error, grpc.Call) else None

    def trailing_metadata(self) -> Any:
        error = self._finished()
        return error.trailing_metadata() if isinstance(error, grpc.Call) else None

    def _finished(self) -> Exception | None:
        try:
            return self.exception()
        except grpc.FutureCancelledError:
            return MeshRpcError(grpc.StatusCode.CANCELLED, "cancelled before it started")
