"""What a served port accepts from a client before the application runs: Envoy's defaults.

Every mesh server (``serve_asgi``, ``serve_wsgi``, the gRPC servers) enforces these, so a
client that reaches the port cannot make the process hold megabytes of headers or keep
connections (and their file descriptors) open by sending nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerLimits", "grpc_server_options"]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int = 60 * 1024
    """The request line and headers together; more is answered 431 (Envoy: max_request_headers_kb)."""
    max_headers: int = 100
    """Header fields per request; more is answered 431 (Envoy: max_headers_count)."""
    header_timeout: float = 10.0
    """Seconds for a whole request head to arrive, counted from the connection (or, on a
    kept-alive connection, from the request's first byte); a connection that sends nothing
    is closed after this, one that stalls mid-head gets 408."""
    idle_timeout: float = 60.0
    """Seconds a kept-alive connection may sit with no request before the server closes it
    (uvicorn's keep-alive timeout, gRPC's max_connection_idle; cheroot has one timeout for
    everything, ``header_timeout``)."""

    def __post_init__(self) -> None:
        if (
            self.max_header_bytes < 1024
            or self.max_headers < 1
            or not self.header_timeout > 0
            or not self.idle_timeout > 0
        ):
            raise ValueError(f"unusable server limits: {self}")


def grpc_server_options(limits: ServerLimits) -> list[tuple[str, int]]:
    """The same limits for grpcio servers (``grpc.server(options=...)``). HTTP/2 metadata is
    bounded by size (HPACK), which also bounds the count."""
    return [
        ("grpc.max_metadata_size", limits.max_header_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_header_bytes),
        # Until the HTTP/2 preface (and, with mTLS, the handshake) is in: a silent connection.
        ("grpc.server_handshake_timeout_ms", round(limits.header_timeout * 1000)),
        ("grpc.max_connection_idle_ms", round(limits.idle_timeout * 1000)),
    ]
