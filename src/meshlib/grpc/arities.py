"""The four call arities of a channel, folded into one ``_callable`` (grpc's interceptor
example does the same), for the sync and the aio mesh channel alike."""

from __future__ import annotations

from typing import Any

from ..adapter import HeaderOps, apply_header_ops

__all__ = ["Arities", "edited_metadata"]


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
