"""Real gRPC servers on 127.0.0.1 for the tests, with raw-bytes methods (no protobuf stubs)."""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

SERVICE = "test.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
UPLOAD = f"/{SERVICE}/Upload"  # stream-unary: answers "<name>:<messages read>"
CHAT = f"/{SERVICE}/Chat"  # stream-stream: answers "<name>-<message>" to each message


@dataclass
class GrpcBackend:
    name: str
    code: grpc.StatusCode | None = None  # answer every call with this error
    fail_rate: float = 0.0  # answer this share of calls with UNAVAILABLE
    delay: float = 0.0
    hits: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    remaining: list[float | None] = field(default_factory=list)
    rng: random.Random = field(init=False, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # Seeded by name: replicas sharing a seed fail in lockstep, so a retry moving to the
        # next replica would draw the same number and failures would not be independent.
        self.rng = random.Random(f"grpc-backend-{self.name}")

    def _enter(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.hits += 1
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
            self.remaining.append(context.time_remaining())
            fail = self.fail_rate and self.rng.random() < self.fail_rate
        if self.delay:
            time.sleep(self.delay)
        if self.code is not None:
            context.abort(self.code, f"{self.name} says {self.code.name}")
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is flaky")

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter(context)
        return self.name.encode()

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter(context)
        for i in range(3):
            yield f"{self.name}-{i}".encode()

    def upload(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._enter(context)
        return f"{self.name}:{sum(1 for _ in requests)}".encode()

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter(context)
        for message in requests:
            yield f"{self.name}-".encode() + message

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
                "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            },
        )


@contextmanager
def grpc_server(*handlers: Any, interceptors: list[Any] | None = None) -> Iterator[int]:
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=16), interceptors=interceptors or []
    )
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def grpc_service_entry(host: str, ports: dict[str, int]) -> str:
    """A ServiceEntry for gRPC endpoints named like ``v1-a`` (label version=v1)."""
    items = "\n".join(
        f"  - {{address: 127.0.0.1, ports: {{grpc: {port}}}, labels: {{version: {name.split('-')[0]}}}}}"
        for name, port in ports.items()
    )
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {host}}}\n"
        f"spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
        "  ports: [{number: 50051, name: grpc, protocol: GRPC}]\n  endpoints:\n" + items + "\n"
    )


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (bounded: never hangs a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False
