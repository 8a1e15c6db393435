"""One trace across three workloads: A (a sync httpx client) -> B (ASGI on uvicorn, whose
handler calls on with grpc.aio) -> C (a sync grpc server), all on mutual TLS with identities
from one config service, spans read from the SDK's in-memory exporter.

A samples every trace it starts; B and C sample nothing of their own, so their spans exist
only because they follow a verified caller's ``sampled`` flag. B answers A's first attempt
with a 503 and A retries: both attempts are spans, each with the server span it reached."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import meshlib
import meshlib.grpc
from meshlib import Mesh
from meshlib._net import bind
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.registry import AnnouncedEndpoint
from meshlib.server.uvicorn_server import mesh_protocol_class
from meshlib.settings import TelemetrySettings
from tests.servers import wait_for

METHOD = "/ratings.Ratings/Get"
RETRY_5XX = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "b", "namespace": "default"},
    "spec": {
        "hosts": ["b"],
        "http": [{"route": [{"destination": {"host": "b"}}], "retries": {"attempts": 2, "retryOn": "5xx"}}],
    },
}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def three(tmp_path: Path, exporter: InMemorySpanExporter) -> Iterator[tuple[Mesh, Mesh, Mesh]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:
        admin.apply([RETRY_5XX])

        def mesh(name: str, sampling: float) -> Mesh:
            return Mesh(
                name,
                control_plane=server.url,
                token=admin.create_token(name)["token"],
                data_dir=tmp_path / name,
                telemetry=TelemetrySettings(trace_sampling=sampling),
                tracer_provider=provider,
            )

        with mesh("a", 100.0) as a, mesh("b", 0.0) as b, mesh("c", 0.0) as c:
            yield a, b, c


def serve_b(b: Mesh, calls: list[int]) -> Iterator[int]:
    """B: the first request gets a 503; later ones call C over grpc.aio and answer its reply."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(1)
        if len(calls) == 1:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"warming up"})
            return
        async with meshlib.grpc.aio_channel(b, "c") as channel:
            reply = await channel.unary_unary(METHOD)(b"rating?", timeout=5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": reply})

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        meshlib.asgi.MeshMiddleware(app, b),
        http=mesh_protocol_class(b, lambda: port, meshlib.ServerLimits()),
        log_level="error",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


class _Ratings(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"5 stars")


def serve_c(c: Mesh) -> Iterator[int]:
    interceptor = meshlib.grpc.MeshServerInterceptor(c)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2), interceptors=[interceptor])
    server.add_generic_rpc_handlers((_Ratings(),))
    port = interceptor.port = meshlib.grpc.listen(server, c, "127.0.0.1", 0).port
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def _by_kind(spans: list[ReadableSpan], service: str, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind and s.name.startswith(f"{service}.default.svc")]


def test_one_trace_through_http_then_grpc_with_retry_attempts(three: Any, exporter: Any) -> None:
    a, b, c = three
    calls: list[int] = []
    b_serving, c_serving = serve_b(b, calls), serve_c(c)
    b_port, c_port = next(b_serving), next(c_serving)
    try:
        b.announce([AnnouncedEndpoint(address="127.0.0.1", port=b_port, tls=True)])
        c.announce([AnnouncedEndpoint(address="127.0.0.1", port=c_port, protocol="grpc", tls=True)])
        assert wait_for(lambda: bool(a.snapshot.endpoints("b.default.svc.cluster.local")))
        assert wait_for(lambda: bool(b.snapshot.endpoints("c.default.svc.cluster.local")))
        with a.http_client() as client:
            response = client.get("http://b/rate")
        assert (response.status_code, response.content) == (200, b"5 stars")
        assert len(calls) == 2, "the 503 was retried once"
    finally:
        next(b_serving, None)
        next(c_serving, None)
    spans = list(exporter.get_finished_spans())
    assert len({s.context.trace_id for s in spans}) == 1, "one trace"
    by_id = {s.context.span_id: s for s in spans}

    def parent(span: ReadableSpan) -> ReadableSpan | None:
        return by_id.get(span.parent.span_id) if span.parent is not None else None

    # A: one client span for the request, a child span per attempt.
    (a_request,) = [s for s in _by_kind(spans, "b", SpanKind.CLIENT) if "attempt" not in s.name]
    assert a_request.parent is None, "A started the trace"
    attempts = sorted(
        (s for s in _by_kind(spans, "b", SpanKind.CLIENT) if "attempt" in s.name),
        key=lambda s: s.attributes["meshlib.attempt"],  # type: ignore[index]
    )
    assert [s.attributes["http.status_code"] for s in attempts] == [503, 200]  # type: ignore[index]
    assert all(parent(s) is a_request for s in attempts)
    assert a_request.attributes["meshlib.attempts"] == 2  # type: ignore[index]
    # B: one server span per attempt, each under the attempt that reached it.
    b_servers = _by_kind(spans, "b", SpanKind.SERVER)
    assert sorted(s.attributes["http.status_code"] for s in b_servers) == [200, 503]  # type: ignore[index]
    for server_span in b_servers:
        attempt = parent(server_span)
        assert attempt is not None
        assert attempt in attempts
        assert attempt.attributes["http.status_code"] == server_span.attributes["http.status_code"]  # type: ignore[index]
        assert server_span.attributes["peer.principal"] == "spiffe://cluster.local/ns/default/sa/a"  # type: ignore[index]
    (b_ok,) = [s for s in b_servers if s.attributes["http.status_code"] == 200]  # type: ignore[index]
    # B -> C: the handler's own gRPC call continues B's server span (contextvars, async).
    (b_to_c,) = [s for s in _by_kind(spans, "c", SpanKind.CLIENT) if "attempt" not in s.name]
    assert parent(b_to_c) is b_ok
    (c_attempt,) = [s for s in _by_kind(spans, "c", SpanKind.CLIENT) if "attempt" in s.name]
    assert parent(c_attempt) is b_to_c
    (c_server,) = _by_kind(spans, "c", SpanKind.SERVER)
    assert parent(c_server) is c_attempt
    assert c_server.attributes["grpc.status_code"] == "OK"  # type: ignore[index]
    assert c_server.attributes["peer.principal"] == "spiffe://cluster.local/ns/default/sa/b"  # type: ignore[index]
    assert len(spans) == 8, "A: request + 2 attempts; B: 2 servers, request + attempt; C: server"


def test_unsampled_requests_make_no_span_but_carry_the_trace(three: Any, exporter: Any) -> None:
    """An unsampled trace from a verified caller is followed and propagated (flag 00): no
    workload records a span, and C still sees the trace id B was called with."""
    a, b, c = three
    calls: list[int] = [1]  # B's first-request 503 is spent: it calls C
    b_serving, c_serving = serve_b(b, calls), serve_c(c)
    b_port, c_port = next(b_serving), next(c_serving)
    seen: list[str] = []

    def record(ex: Any, next: Any) -> Any:
        seen.append(ex.call.header("traceparent") or "")
        return next(ex)

    c.server_stack = c.server_stack.insert_before("health", "record", record)
    try:
        c.announce([AnnouncedEndpoint(address="127.0.0.1", port=c_port, protocol="grpc", tls=True)])
        assert wait_for(lambda: bool(b.snapshot.endpoints("c.default.svc.cluster.local")))
        identity = a.workload_identity
        assert identity is not None
        unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        with httpx.Client(verify=identity.client_context(), timeout=5) as client:
            response = client.get(f"https://127.0.0.1:{b_port}/rate", headers={"traceparent": unsampled})
        assert response.status_code == 200
    finally:
        next(b_serving, None)
        next(c_serving, None)
    assert exporter.get_finished_spans() == (), "B followed A's unsampled flag, and C B's"
    assert seen == [unsampled], "C got the trace context B was called with"
