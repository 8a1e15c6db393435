"""gRPC status names and HTTP statuses, both ways, as Envoy maps them. Pure: names, no grpc."""

from __future__ import annotations

__all__ = ["grpc_status_for_http", "http_status_for_grpc"]

# A gRPC status as the HTTP status outlier detection and metrics count it (Envoy's
# Grpc::Utility::grpcToHttpStatus).
_HTTP = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# A local HTTP answer as the gRPC status a gRPC caller gets (Envoy's httpToGrpcStatus).
_GRPC = {
    400: "INTERNAL",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "UNIMPLEMENTED",
    429: "UNAVAILABLE",
    431: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}


def http_status_for_grpc(name: str) -> int:
    return _HTTP.get(name, 500)


def grpc_status_for_http(status: int) -> str:
    return _GRPC.get(status, "UNKNOWN")
