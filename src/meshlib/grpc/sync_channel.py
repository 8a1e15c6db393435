"""``MeshChannel``: a ``grpc.Channel`` whose target is a mesh service; each call is routed.

Per call: the client stack decides (VirtualService route on the method path and the
metadata, weighted subsets, balancing, retries on gRPC status codes, per-try timeout,
budget, outlier detection, faults, deadline, mTLS, rewrites, metadata edits); the chosen
endpoint's own plain grpc channel carries it. All four arities. A response stream is
retried only before its first message; request streams are never resent.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..adapter import Exchange, Mirror, Outcome, Send, drive_client, wait_learned
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
from .arities import Arities, CallableBase, edited_metadata

__all__ = ["CallFuture", "MeshChannel"]

FUTURE_WORKERS = 32  # calls made with future() that may run at once per mesh channel


class MeshChannel(Arities, grpc.Channel):  # type: ignore[misc]
    def __init__(self, mesh: GrpcMesh, target: str, options: list[tuple[str, Any]] | None = None) -> None:
        self.adapter = adapter = GrpcAdapter(mesh, target)
        self._metrics = mesh.metrics
        self._lock = threading.Lock()
        self.channels: Channels[grpc.Channel] = Channels(
            adapter,
            target,
            options or [],
            lambda address, opts: grpc.insecure_channel(address, options=opts),
            lambda address, creds, opts: grpc.secure_channel(address, creds, options=opts),
            _retire_later,
            self._lock,
        )
        self._mirroring = 0  # mirrored calls on their way
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None  # for future()
        self._closed = False

    def _callable(
        self, method: str, serializers: tuple[Any, Any], streaming_in: bool, streaming_out: bool
    ) -> Any:
        return _Callable(self, method, serializers, streaming_in, streaming_out)

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
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False, cancel_futures=True)
        for channel in self.channels.take_all():
            channel.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the client driver's I/O ------------------------------------------------------

    def run(self, spec: Spec, timeout: float | None) -> Any:
        adapter = self.adapter
        waiting = adapter.waiting()
        if waiting is not None:  # the first call to this host: its endpoints come first
            started = time.monotonic()
            wait_learned(waiting, timeout)
            timeout = adapter.after_waiting(timeout, started)  # the wait is part of the call
        ex = adapter.exchange(spec, timeout)
        if ex is None:  # not a mesh service: straight through
            stub = self.channels.stub(self.channels.direct(), spec)
            return (stub.with_call if spec.with_call else stub)(
                spec.request, timeout=timeout, metadata=spec.metadata
            )
        reply = drive_client(adapter.flow(ex), ex, self, self._metrics)
        return _answered(ex, spec, adapter.finish(ex, reply))

    def send(self, ex: Exchange, send: Send) -> Outcome:
        spec: Spec = ex.request
        adapter = self.adapter
        try:
            channel = self.channels.get(send)
        except MeshRpcError as error:
            return adapter.unsendable(error)
        stub = self.channels.stub(channel, spec, send.path)
        metadata = adapter.metadata(spec, send, ex)
        try:
            if spec.with_call:  # (response, the grpc.Call of the attempt that answered)
                return adapter.ok(stub.with_call(spec.request, timeout=send.timeout, metadata=metadata))
            if not spec.streaming_out:
                return adapter.ok(stub(spec.request, timeout=send.timeout, metadata=metadata))
            call = stub(spec.request, timeout=send.timeout, metadata=metadata)
            return adapter.ok(_ResponseStream(call))  # an error before the first message may be retried
        except grpc.RpcError as error:
            return adapter.failed(error)

    def mirror(self, ex: Exchange, copy: Mirror) -> None:
        """Fire and forget, for calls with one request message (a request stream is read
        once): grpc's own threads carry the copy; nobody waits for it."""
        spec: Spec = ex.request
        if spec.streaming_in or spec.streaming_out:
            return
        with self._lock:
            if self._mirroring >= MAX_MIRRORS_IN_FLIGHT:
                return  # shed copies rather than let them pile up behind a slow mirror
            self._mirroring += 1
        try:
            stub = self.channels.stub(self.channels.get(copy), spec, copy.path)
            future = stub.future(
                spec.request, timeout=copy.timeout, metadata=self.adapter.metadata(spec, copy, ex)
            )
        except Exception:
            self._mirror_done(None)
            return
        future.add_done_callback(self._mirror_done)

    def _mirror_done(self, future: object) -> None:
        with self._lock:
            self._mirroring -= 1


def _retire_later(channel: grpc.Channel) -> None:
    """Closing a grpc channel cancels its calls: a rotated-out one is closed later."""
    timer = threading.Timer(RETIRE_AFTER, channel.close)
    timer.daemon = True
    timer.start()


def _answered(ex: Exchange, spec: Spec, result: Any) -> Any:
    """The caller's answer, with the route's edits of the answer's initial metadata."""
    ops = GrpcAdapter.answer_metadata(ex)
    if isinstance(result, _ResponseStream):
        result.edits = ops
        return result
    if spec.with_call and ops:
        response, call = result
        return response, _EditedCall(call, ops)
    return result


class _Callable(
    grpc.UnaryUnaryMultiCallable,
    grpc.UnaryStreamMultiCallable,  # type: ignore[misc]
    grpc.StreamUnaryMultiCallable,
    grpc.StreamStreamMultiCallable,
    CallableBase,
):
    _channel: MeshChannel

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._channel.run(self._spec(request, metadata), timeout)

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
        return self._channel.run(self._spec(request, metadata, with_call=True), timeout)

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
        return self._channel.run(self._spec(request, metadata), left)

    def _unary_response(self, what: str) -> None:
        if self._out:
            raise TypeError(f"{what}() is for calls with one response message; {self._method} streams")


class _ResponseStream(grpc.Call):  # type: ignore[misc]
    """A response stream whose first message is read at once (a failure before it counts
    for retries), then the rest; the call's questions go to the attempt that answered."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.edits: tuple[Any, ...] = ()
        try:
            self._first: list[Any] = [next(call)]
        except StopIteration:
            self._first = []

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._first:
            return self._first.pop()
        return next(self._call)

    def initial_metadata(self) -> Any:
        return edited_metadata(self._call.initial_metadata(), self.edits)

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> Any:
        return self._call.code()

    def details(self) -> str:
        return str(self._call.details())

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> Any:
        return self._call.time_remaining()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_callback(self, callback: Any) -> bool:
        return bool(self._call.add_callback(callback))


class _EditedCall:
    """The answering attempt's ``grpc.Call``, with the route's edits of its initial metadata."""

    def __init__(self, call: Any, edits: tuple[Any, ...]) -> None:
        self._call = call
        self._edits = edits

    def initial_metadata(self) -> Any:
        return edited_metadata(self._call.initial_metadata(), self._edits)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


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
