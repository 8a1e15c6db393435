"""grpc.aio mesh channels and the aio server interceptor, against real gRPC servers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import meshlib_grpc
from grpc_backends import STREAM, UNARY, GrpcBackend, grpc_server, grpc_service_entry
from test_meshlib_grpc_channel import SUBSETS, vs

import meshlib
from meshlib import Mesh


def start_mesh(
    tmp_path: Path, backends: dict[str, tuple[GrpcBackend, int]], policy: str, extra: str = ""
) -> Mesh:
    path = tmp_path / "policy.yaml"
    entry = grpc_service_entry("reviews", {name: port for name, (_, port) in backends.items()})
    path.write_text(entry + SUBSETS.format(policy=policy) + extra)
    mesh = Mesh("frontend", config=path).start()
    mesh.rng.seed(20261122)
    return mesh


async def calls(
    mesh: Mesh, n: int, metadata: tuple[tuple[str, str], ...] = (), concurrency: int = 20
) -> list[str]:
    gate = asyncio.Semaphore(concurrency)
    async with meshlib_grpc.aio_channel(mesh, "reviews") as channel:
        unary = channel.unary_unary(UNARY)

        async def one() -> str:
            async with gate:
                try:
                    return (await unary(b"hi", timeout=5, metadata=metadata)).decode()
                except grpc.RpcError as exc:
                    return f"error {exc.code().name}"

        return list(await asyncio.gather(*(one() for _ in range(n))))


def test_aio_weighted_split_and_metadata_routing(backends, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rules = vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
""")
    mesh = start_mesh(tmp_path, backends, "    loadBalancer: {simple: LEAST_REQUEST}", rules)
    try:
        results = asyncio.run(calls(mesh, 2000))
        assert not [r for r in results if r.startswith("error")]
        v2 = sum(r.startswith("v2") for r in results)
        assert abs(v2 / 20 - 20) <= 3, f"v2 got {v2 / 20:.1f}%"
        assert set(asyncio.run(calls(mesh, 100, (("end-user", "jason"),)))) == {"v2-a"}
    finally:
        mesh.close()


def test_aio_retries_turn_30_percent_unavailable_into_995_percent(backends, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name in ("v1-a", "v1-b"):
        backends[name][0].fail_rate = 0.3
    rules = vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    retries: {attempts: 5, retryOn: unavailable, backoff: 1ms}\n"
    )
    mesh = start_mesh(tmp_path, backends, "    loadBalancer: {simple: LEAST_REQUEST}", rules)
    try:
        results = asyncio.run(calls(mesh, 1000, concurrency=10))
        assert sum(not r.startswith("error") for r in results) >= 995, Counter(results)
    finally:
        mesh.close()


def test_aio_budget_bounds_attempts(backends, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backends["v2-a"][0].code = grpc.StatusCode.UNAVAILABLE
    rules = vs(
        "  - route: [{destination: {host: reviews, subset: v2}}]\n"
        "    retries: {attempts: 10, retryOn: unavailable, backoff: 1ms}\n"
    )
    mesh = start_mesh(tmp_path, backends, "    retryBudget: {percent: 20, minRetryConcurrency: 3}", rules)
    try:
        results = asyncio.run(calls(mesh, 300, concurrency=10))
        assert set(results) == {"error UNAVAILABLE"}
        assert 300 <= backends["v2-a"][0].hits <= 300 * 1.2 + 3
    finally:
        mesh.close()


def test_aio_stream_retried_before_the_first_message(backends, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backends["v1-a"][0].code = grpc.StatusCode.UNAVAILABLE
    rules = vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    retries: {attempts: 3, retryOn: unavailable, backoff: 1ms}\n"
    )
    mesh = start_mesh(tmp_path, backends, "    loadBalancer: {simple: ROUND_ROBIN}", rules)

    async def main() -> list[list[bytes]]:
        async with meshlib_grpc.aio_channel(mesh, "reviews") as channel:
            stream = channel.unary_stream(STREAM)
            return [[item async for item in stream(b"x", timeout=5)] for _ in range(10)]

    try:
        assert asyncio.run(main()) == [[b"v1-b-0", b"v1-b-1", b"v1-b-2"]] * 10
        assert backends["v1-a"][0].hits > 0
    finally:
        mesh.close()


def test_aio_interceptor_passes_the_inbound_deadline_on(tmp_path: Path) -> None:
    reviews = GrpcBackend("reviews")
    with grpc_server(reviews.handler()) as reviews_port:
        policy = tmp_path / "policy.yaml"
        policy.write_text(grpc_service_entry("reviews", {"v1-a": reviews_port}))
        with Mesh("frontend", config=policy) as mesh:

            async def main() -> tuple[bytes, float | None]:
                channel = meshlib_grpc.aio_channel(mesh, "reviews")
                seen: list[float | None] = []

                async def front(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    deadline = meshlib.current_deadline()
                    seen.append(None if deadline is None else deadline - time.monotonic())
                    return bytes(await channel.unary_unary(UNARY)(b"x"))

                server = grpc.aio.server(interceptors=[meshlib_grpc.AioMeshServerInterceptor(mesh)])
                server.add_generic_rpc_handlers(
                    (
                        grpc.method_handlers_generic_handler(
                            "test.Front", {"Call": grpc.unary_unary_rpc_method_handler(front)}
                        ),
                    )
                )
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                try:
                    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
                        answer = await plain.unary_unary("/test.Front/Call")(b"x", timeout=0.6)
                finally:
                    await server.stop(0)
                    await channel.close()
                return answer, seen[0]

            answer, seen = asyncio.run(main())
        assert answer == b"reviews"
        assert seen is not None
        # grpc rounds the deadline on the wire and the server reads it on its own clock: a
        # fraction of a millisecond above 0.6 s has been seen (as in the sync twin).
        assert 0.3 < seen <= 0.61
        assert reviews.remaining[0] is not None
        assert reviews.remaining[0] <= 0.65


def test_aio_ejection_and_faults(backends, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broken = backends["v2-a"][0]
    broken.code = grpc.StatusCode.UNAVAILABLE
    policy = (
        "    loadBalancer: {simple: ROUND_ROBIN}\n"
        "    outlierDetection: {consecutive5xxErrors: 5, interval: 1s,\n"
        "      baseEjectionTime: 30s, maxEjectionPercent: 100}"
    )
    rules = vs("""\
  - match: [{headers: {chaos: {exact: "on"}}}]
    fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 20}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 0}
""")
    mesh = start_mesh(tmp_path, backends, policy, rules)
    try:
        results = asyncio.run(calls(mesh, 60, concurrency=1))
        assert broken.hits == 5, "ejected at its 5th consecutive UNAVAILABLE"
        assert Counter(results)["error UNAVAILABLE"] == 5
        chaos = asyncio.run(calls(mesh, 1000, (("chaos", "on"),)))
        aborted = Counter(chaos)["error RESOURCE_EXHAUSTED"]
        assert abs(aborted / 10 - 20) <= 3, f"{aborted / 10:.1f}% aborted"
    finally:
        mesh.close()


def test_aio_streams_follow_the_weights(backends, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rules = vs("""\
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
""")
    mesh = start_mesh(tmp_path, backends, "    loadBalancer: {simple: RANDOM}", rules)

    async def main() -> list[bytes]:
        async with meshlib_grpc.aio_channel(mesh, "reviews") as channel:
            stream = channel.unary_stream(STREAM)
            return [(await stream(b"x", timeout=5).__anext__()) for _ in range(2000)]

    try:
        firsts = asyncio.run(main())
        v2 = sum(f.startswith(b"v2") for f in firsts)
        assert abs(v2 / 20 - 20) <= 3, f"v2 got {v2 / 20:.1f}%"
    finally:
        mesh.close()
