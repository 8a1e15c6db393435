"""The processes of ``sidecar_compare.py``: the backend apps and the load generators.

    python benchmarks/_sidecar_roles.py http-app plain PORT
    python benchmarks/_sidecar_roles.py http-app mesh SERVICE CONFIG_SERVICE DATA_DIR   (token: $MESH_TOKEN)
    python benchmarks/_sidecar_roles.py grpc-app plain|mesh ...                        (the same)
    python benchmarks/_sidecar_roles.py http-load plain | http-load mesh CONFIG_SERVICE DATA_DIR HOST
    python benchmarks/_sidecar_roles.py grpc-load plain | grpc-load mesh CONFIG_SERVICE DATA_DIR HOST

One app per protocol, served plainly (uvicorn with httptools; ``grpc.server`` with 16 threads)
or as a mesh workload (``meshlib.serve_asgi``; ``meshlib.grpc.serve``, 16 threads: mTLS per
PeerAuthentication, the server stack, metrics, tracing). A load generator answers commands
from the driver (``_bench.serve_commands``): ``run`` sends ``requests`` requests to ``target``
from ``concurrency`` callers (1: a sync client in a loop; more: that many asyncio tasks on one
async client), stopping early at ``seconds``, and replies with what it measured; ``probe``
sends one request to another ``path`` and replies with its status (the authorization check).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import serve_commands
from _results import pct

BODY = b'{"id": 42, "stars": 5}'
GRPC_METHOD = "/bench.Ratings/Get"
TIMEOUT = 10.0  # per request: a stuck request fails the round instead of hanging it


async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The backend app: a small JSON answer, as in server_throughput.py."""
    if scope["type"] != "http":
        return
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": BODY})


def grpc_register(server: Any) -> None:
    import grpc

    def get(request: bytes, context: Any) -> bytes:
        return BODY

    handlers = {"Get": grpc.unary_unary_rpc_method_handler(get)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Ratings", handlers),))


def tracer_provider() -> Any:
    """An OpenTelemetry SDK with a batch processor, so that the mesh's 1% sampled spans are
    really made and exported (to /dev/null), as in server_throughput.py."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=open(os.devnull, "w"))))  # noqa: SIM115
    return provider


def make_mesh(service: str, config_service: str, data_dir: str) -> Any:
    import meshlib

    return meshlib.Mesh(
        service,
        control_plane=config_service,
        token=os.environ["MESH_TOKEN"],
        data_dir=data_dir,
        tracer_provider=tracer_provider(),
        startup_timeout=30,
    )


def serve_app(protocol: str, mode: str, args: list[str]) -> None:
    if mode == "plain":
        port = int(args[0])
        if protocol == "http":
            import uvicorn

            uvicorn.run(http_app, host="127.0.0.1", port=port, log_level="warning", http="httptools")
            return
        import concurrent.futures

        import grpc

        server = grpc.server(concurrent.futures.ThreadPoolExecutor(16))
        grpc_register(server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return
    mesh = make_mesh(*args[:3])
    if protocol == "http":
        import meshlib

        meshlib.serve_asgi(http_app, mesh=mesh, port=0, drain_delay=0, drain_timeout=1)
    else:
        import meshlib.grpc

        meshlib.grpc.serve(grpc_register, mesh=mesh, port=0, threads=16, drain_delay=0, drain_timeout=1)


class Load:
    """One load generator: sync and async clients (or channels) per target, kept warm."""

    def __init__(self, protocol: str, mode: str, args: list[str]) -> None:
        self.protocol = protocol
        self.mesh = None
        self.loop = asyncio.new_event_loop()
        self.sync: dict[str, Callable[[], None]] = {}
        self.aio: dict[str, Callable[[], Awaitable[None]]] = {}
        self.closers: list[Callable[[], Any]] = []
        if mode == "mesh":
            config_service, data_dir, self.host = args[:3]
            self.mesh = make_mesh("frontend", config_service, data_dir).start()
            deadline = time.monotonic() + 30
            while not self.mesh.snapshot.endpoints(self.host):  # the server registers itself
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no endpoint of {self.host} after 30 s")
                time.sleep(0.05)

    def hello(self) -> dict[str, Any]:
        identity = self.mesh.identity if self.mesh is not None else None
        return {"ready": True, "identity": identity}

    def _http_callers(self, target: str) -> None:
        import httpx

        pool = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=60)
        if self.mesh is not None:
            client = self.mesh.http_client()
            aclient = self.loop.run_until_complete(self._made(self.mesh.async_http_client))
        else:  # the same pool as the mesh transport's (meshlib.http.transport._POOL)
            client = httpx.Client(limits=pool, timeout=TIMEOUT)
            aclient = self.loop.run_until_complete(
                self._made(lambda: httpx.AsyncClient(limits=pool, timeout=TIMEOUT))
            )

        def call() -> None:
            client.get(target).raise_for_status()

        async def acall() -> None:
            (await aclient.get(target)).raise_for_status()

        self.sync[target], self.aio[target] = call, acall
        self.closers += [client.close, lambda: self.loop.run_until_complete(aclient.aclose())]

    def _grpc_callers(self, target: str) -> None:
        import grpc

        if self.mesh is not None:
            import meshlib.grpc

            channel = meshlib.grpc.channel(self.mesh, target)
            achannel = self.loop.run_until_complete(
                self._made(lambda: meshlib.grpc.aio_channel(self.mesh, target))
            )
        else:
            channel = grpc.insecure_channel(target)
            achannel = self.loop.run_until_complete(self._made(lambda: grpc.aio.insecure_channel(target)))
        stub, astub = channel.unary_unary(GRPC_METHOD), achannel.unary_unary(GRPC_METHOD)

        def call() -> None:
            stub(b"x", timeout=TIMEOUT)

        async def acall() -> None:
            await astub(b"x", timeout=TIMEOUT)

        self.sync[target], self.aio[target] = call, acall
        self.closers += [channel.close, lambda: self.loop.run_until_complete(achannel.close())]

    def probe(self, target: str, path: str) -> dict[str, Any]:
        """One request to ``path`` of the target's service (not the one the load sends): its
        HTTP status, or its gRPC status name."""
        if self.protocol == "http":
            import httpx

            url = target.rstrip("/") + path
            if self.mesh is not None:
                with self.mesh.http_client() as client:
                    return {"answer": str(client.get(url).status_code)}
            with httpx.Client(timeout=TIMEOUT) as client:
                return {"answer": str(client.get(url).status_code)}
        import grpc

        if self.mesh is not None:
            import meshlib.grpc

            channel = meshlib.grpc.channel(self.mesh, target)
        else:
            channel = grpc.insecure_channel(target)
        try:
            channel.unary_unary(path)(b"x", timeout=TIMEOUT)
            return {"answer": "OK"}
        except grpc.RpcError as exc:
            return {"answer": exc.code().name}
        finally:
            channel.close()

    @staticmethod
    async def _made(factory: Callable[[], Any]) -> Any:
        return factory()  # made inside the running loop, which it then belongs to

    def run(self, target: str, concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
        if target not in self.sync:
            (self._http_callers if self.protocol == "http" else self._grpc_callers)(target)
        latencies: list[float] = []
        errors: list[str] = []
        cpu, start = time.process_time(), time.perf_counter()
        until = start + seconds
        if concurrency == 1:
            call = self.sync[target]
            for _ in range(requests):
                began = time.perf_counter()
                if began > until:
                    break
                try:
                    call()
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - began)
        else:
            self.loop.run_until_complete(
                self._run_async(self.aio[target], concurrency, requests, until, latencies, errors)
            )
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        return {
            "requests": len(latencies),
            "errors": len(errors),
            "first_error": errors[0][:300] if errors else None,
            "wall": wall,
            "cpu": cpu,
            "p50_ms": pct(latencies, 0.5) if latencies else float("nan"),
            "p99_ms": pct(latencies, 0.99) if latencies else float("nan"),
            "mesh_requests": self.mesh.metrics.requests_total() if self.mesh is not None else None,
        }

    @staticmethod
    async def _run_async(
        acall: Callable[[], Awaitable[None]],
        concurrency: int,
        requests: int,
        until: float,
        latencies: list[float],
        errors: list[str],
    ) -> None:
        issued = 0

        async def caller() -> None:
            nonlocal issued
            while issued < requests:
                issued += 1
                began = time.perf_counter()
                if began > until:
                    return
                try:
                    await acall()
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        if self.mesh is not None:
            self.mesh.close()
        self.loop.close()


def main() -> None:
    role, mode, *args = sys.argv[1:]
    protocol, kind = role.split("-")
    if kind == "app":
        serve_app(protocol, mode, args)
        return
    load = Load(protocol, mode, args)
    try:

        def handle(c: dict[str, Any]) -> dict[str, Any]:
            if c.get("op") == "probe":
                return load.probe(c["target"], c["path"])
            return load.run(c["target"], int(c["concurrency"]), int(c["requests"]), float(c["seconds"]))

        serve_commands(handle, load.hello())
    finally:
        load.close()


if __name__ == "__main__":
    main()
