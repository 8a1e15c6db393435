"""The four call arities of a channel, folded into one ``_callable`` (grpc's interceptor
example does the same), for the sync and the aio mesh channel alike."""

from __future__ import annotations

from typing import Any

from ..adapter import HeaderOps, apply_header_ops
from .adapter import Metadata, Spec

__all__ = ["Arities", "CallableBase", "edited_metadata"]


class Arities:
    def _callable(
        self, method: str, serializers: tuple[Any, Any], streaming_in: bool, streaming_out: bool
    ) -> Any:
        raise NotImplementedError

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._callable(method, (request_serializer, response_deserializer), False, False)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._callable(method, (request_serializer, response_deserializer), False, True)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._callable(method, (request_serializer, response_deserializer), True, False)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._callable(method, (request_serializer, response_deserializer), True, True)


def edited_metadata(metadata: Any, edits: tuple[HeaderOps, ...]) -> Any:
    """An answer's initial metadata with the route's response edits (as Envoy edits headers)."""
    if not edits:
        return metadata
    return tuple(apply_header_ops([(k.lower(), v) for k, v in metadata or ()], edits))


class CallableBase:
    """A mesh channel's multicallable for one method: what a call of it is (its ``Spec``)."""

    def __init__(
        self, channel: Any, method: str, serializers: tuple[Any, Any], streaming_in: bool, streaming_out: bool
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializers = serializers
        self._in = streaming_in
        self._out = streaming_out

    def _spec(self, request: Any, metadata: Metadata | None, with_call: bool = False) -> Spec:
        return Spec(self._method, request, metadata, self._in, self._out, self._serializers, with_call)
