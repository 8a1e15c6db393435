"""Mesh channels against real gRPC servers: routing, balancing, retries, ejection, faults."""

from __future__ import annotations

from collections import Counter

import grpc
import meshlib_grpc
import pytest
from grpc_backends import STREAM, UNARY, GrpcBackend, grpc_service_entry, wait_for

from meshlib import Mesh

SUBSETS = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
{policy}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def vs(http: str) -> str:
    return (
        f"---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\n"
        f"spec:\n  hosts: [reviews]\n  http:\n{http}"
    )


def entry(backends: dict[str, tuple[GrpcBackend, int]]) -> str:
    return grpc_service_entry("reviews", {name: port for name, (_, port) in backends.items()})


def call_many(mesh: Mesh, n: int, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    out = []
    with meshlib_grpc.channel(mesh, "reviews") as channel:
        unary = channel.unary_unary(UNARY)
        for _ in range(n):
            try:
                out.append(unary(b"hi", timeout=5, metadata=metadata).decode())
            except grpc.RpcError as exc:
                out.append(f"error {exc.code().name}")
    return out


EJECT_AT_FIFTH = SUBSETS.format(
    policy="    loadBalancer: {simple: ROUND_ROBIN}\n"
    "    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s, "
    "maxEjectionPercent: 100}"
) + vs("  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 0}\n")
SPLIT_80_20 = vs("""\
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
""")


def test_weighted_split_within_3_points(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(
        entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: ROUND_ROBIN}") + SPLIT_80_20
    )
    results = call_many(mesh, 2000)
    assert not [r for r in results if r.startswith("error")]
    v2 = sum(r.startswith("v2") for r in results)
    assert abs(v2 / 20 - 20) <= 3, f"v2 got {v2 / 20:.1f}%"


def test_metadata_routes_every_call(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    rule = vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
""")
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + rule)
    assert set(call_many(mesh, 100, (("end-user", "jason"),))) == {"v2-a"}
    assert set(call_many(mesh, 100)) == {"v1-a", "v1-b"}


def test_a_failing_endpoint_is_ejected_at_its_fifth_error(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    broken = backends["v2-a"][0]
    broken.code = grpc.StatusCode.UNAVAILABLE
    mesh = make_mesh(entry(backends) + EJECT_AT_FIFTH)
    results = call_many(mesh, 60)
    assert broken.hits == 5
    assert Counter(results)["error UNAVAILABLE"] == 5


def test_retries_turn_30_percent_unavailable_into_995_percent_success(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    for name in ("v1-a", "v1-b"):
        backends[name][0].fail_rate = 0.3
    route = vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    retries: {attempts: 5, retryOn: unavailable, backoff: 1ms}\n"
    )
    mesh = make_mesh(
        entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: LEAST_REQUEST}") + route
    )
    results = call_many(mesh, 1000)
    ok = sum(not r.startswith("error") for r in results)
    assert ok >= 995, Counter(results)


def test_the_budget_bounds_attempts(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    dead = backends["v2-a"][0]
    dead.code = grpc.StatusCode.UNAVAILABLE
    route = vs(
        "  - route: [{destination: {host: reviews, subset: v2}}]\n"
        "    retries: {attempts: 10, retryOn: unavailable, backoff: 1ms}\n"
    )
    policy = "    retryBudget: {percent: 20, minRetryConcurrency: 3}"
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy=policy) + route)
    results = call_many(mesh, 300)
    assert set(results) == {"error UNAVAILABLE"}
    assert 300 <= dead.hits <= 300 * 1.2 + 3


def test_fault_abort_with_grpc_status_at_its_rate(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    route = vs("""\
  - fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 20}}}
    route: [{destination: {host: reviews, subset: v1}}]
""")
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + route)
    results = call_many(mesh, 1000)
    aborted = Counter(results)["error RESOURCE_EXHAUSTED"]
    assert abs(aborted / 10 - 20) <= 3
    assert backends["v1-a"][0].hits + backends["v1-b"][0].hits == 1000 - aborted


def test_a_stream_is_retried_before_its_first_message(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    flaky = backends["v1-a"][0]
    flaky.code = grpc.StatusCode.UNAVAILABLE
    route = vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    retries: {attempts: 3, retryOn: unavailable, backoff: 1ms}\n"
    )
    mesh = make_mesh(
        entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: ROUND_ROBIN}") + route
    )
    with meshlib_grpc.channel(mesh, "reviews") as channel:
        streams = [list(channel.unary_stream(STREAM)(b"x", timeout=5)) for _ in range(20)]
    assert all(s == [b"v1-b-0", b"v1-b-1", b"v1-b-2"] for s in streams)
    assert flaky.hits > 0, "half the first attempts went to the failing endpoint and were retried"


def test_a_deadline_travels_as_the_grpc_deadline(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}"))
    import meshlib

    with meshlib_grpc.channel(mesh, "reviews") as channel, meshlib.deadline(0.5):
        channel.unary_unary(UNARY)(b"x")
    seen = [r for b, _ in backends.values() for r in b.remaining]
    assert len(seen) == 1
    assert seen[0] is not None
    # grpc rounds the deadline on the wire and the server reads it on its own clock: a
    # fraction of a millisecond above 0.5 s has been seen.
    assert 0.3 < seen[0] <= 0.51


def test_a_target_outside_the_mesh_passes_through(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}"))
    port = backends["v2-a"][1]
    with meshlib_grpc.channel(mesh, f"127.0.0.1:{port}") as channel:
        assert channel.unary_unary(UNARY)(b"x", timeout=5) == b"v2-a"
    assert mesh.metrics.requests_total() == 0


MIRROR = vs(
    "  - route: [{destination: {host: reviews, subset: v1}}]\n"
    "    mirror: {host: reviews, subset: v2}\n"
    "    mirrorPercentage: {value: 100}\n"
)


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_unary_calls_are_mirrored_and_never_wait_for_the_copy(backends, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import time

    shadow = backends["v2-a"][0]
    shadow.delay = 0.5  # a slow mirror: the caller must not feel it
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + MIRROR)
    started = time.monotonic()
    if mode == "sync":
        with meshlib_grpc.channel(mesh, "reviews") as channel:
            answers = [channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(20)]
            elapsed = time.monotonic() - started
            streams = [list(channel.unary_stream(STREAM)(b"x", timeout=5)) for _ in range(5)]
            assert wait_for(lambda: shadow.hits >= 20), shadow.hits
    else:

        async def main() -> tuple[list[bytes], float, list[list[bytes]]]:
            async with meshlib_grpc.aio_channel(mesh, "reviews") as channel:
                got = [await channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(20)]
                took = time.monotonic() - started
                flows = [[m async for m in channel.unary_stream(STREAM)(b"x", timeout=5)] for _ in range(5)]
                for _ in range(500):  # the copies run as tasks on this loop
                    if shadow.hits >= 20:
                        break
                    await asyncio.sleep(0.02)
                return got, took, flows

        answers, elapsed, streams = asyncio.run(main())
    assert {a.decode() for a in answers} <= {"v1-a", "v1-b"}, "the caller got the primary's answers"
    assert elapsed < 5.0, f"20 calls took {elapsed:.1f}s: the caller waited for a 0.5 s mirror"
    assert shadow.hits == 20, "every unary call was copied once; response streams are not copied"
    assert all(len(s) == 3 for s in streams)


def test_with_call_returns_the_answering_attempts_call(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    flaky = backends["v1-a"][0]
    flaky.code = grpc.StatusCode.UNAVAILABLE
    route = vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    retries: {attempts: 3, retryOn: unavailable, backoff: 1ms}\n"
    )
    policy = "    loadBalancer: {simple: ROUND_ROBIN}"
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy=policy) + route)
    with meshlib_grpc.channel(mesh, "reviews") as channel:
        unary = channel.unary_unary(UNARY)
        answers = [unary.with_call(b"x", timeout=5) for _ in range(6)]
        with pytest.raises(TypeError, match="streams"):
            channel.unary_stream(STREAM).with_call(b"x")
    assert {response for response, _ in answers} == {b"v1-b"}, "retried past the failing endpoint"
    assert all(call.code() == grpc.StatusCode.OK for _, call in answers)
    assert flaky.hits > 0


def test_future_runs_the_call_in_the_callers_context(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    import threading

    import meshlib

    broken = backends["v2-a"][0]
    broken.code = grpc.StatusCode.PERMISSION_DENIED
    rule = vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
""")
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + rule)
    with meshlib_grpc.channel(mesh, "reviews") as channel:
        unary = channel.unary_unary(UNARY)
        done = threading.Event()
        with meshlib.deadline(0.5):
            ok = unary.future(b"x", timeout=5)
        ok.add_done_callback(lambda f: done.set() if f.result() else None)
        assert ok.result(5) in (b"v1-a", b"v1-b")
        assert done.wait(5), "the done callback ran with the future"
        assert ok.done()
        assert not ok.cancelled()
        refused = unary.future(b"x", timeout=5, metadata=(("end-user", "jason"),))
        error = refused.exception(5)
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError):
            refused.result()
    seen = [r for b, _ in backends.values() for r in b.remaining]
    assert seen[0] is not None
    assert 0.3 < seen[0] <= 0.51, "the deadline being served travelled with the future"


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_fault_delay_at_its_rate_and_for_its_length(backends, make_mesh, mode: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import time

    route = vs("""\
  - fault: {delay: {fixedDelay: 5ms, percentage: {value: 30}}}
    route: [{destination: {host: reviews, subset: v1}}]
""")
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + route)
    took: list[float] = []
    if mode == "sync":
        with meshlib_grpc.channel(mesh, "reviews") as channel:
            unary = channel.unary_unary(UNARY)
            for _ in range(1000):
                started = time.monotonic()
                unary(b"x", timeout=5)
                took.append(time.monotonic() - started)
    else:

        async def main() -> None:
            async with meshlib_grpc.aio_channel(mesh, "reviews") as channel:
                unary = channel.unary_unary(UNARY)
                for _ in range(1000):
                    started = time.monotonic()
                    await unary(b"x", timeout=5)
                    took.append(time.monotonic() - started)

        asyncio.run(main())
    snapshot = mesh.metrics.snapshot()
    delayed = sum(count for (_, _, _, flags), (count, _, _) in snapshot.items() if "DI" in flags)
    assert abs(delayed / 10 - 30) <= 3, f"{delayed / 10:.1f}% delayed"
    slow = sum(t >= 0.005 for t in took)
    assert slow >= delayed, "every delayed call took at least the 5 ms delay"
    assert slow <= delayed + 100, (
        f"{slow} calls took 5 ms or more, {delayed} were delayed: the rest are quick"
    )
    assert backends["v1-a"][0].hits + backends["v1-b"][0].hits == 1000, "a delay still sends the call"


def test_future_timeout_runs_from_the_call_and_the_future_answers_call_questions(  # type: ignore[no-untyped-def]
    backends, make_mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshlib.grpc.sync_channel as channel_module

    monkeypatch.setattr(channel_module, "FUTURE_WORKERS", 2)
    backends["v2-a"][0].delay = 0.3
    route = vs("  - route: [{destination: {host: reviews, subset: v2}}]\n    retries: {attempts: 0}\n")
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + route)
    channel = meshlib_grpc.channel(mesh, "reviews")
    with channel:
        unary = channel.unary_unary(UNARY)
        # 4 calls of 0.3 s on 2 workers: the last 2 wait 0.3 s in the queue, which their 0.5 s
        # timeout counts, as grpcio's would (given the full 0.5 s again, they would pass).
        futures = [unary.future(b"x", timeout=0.5) for _ in range(4)]
        codes = [f.code() for f in futures]
        assert codes[:2] == [grpc.StatusCode.OK] * 2
        assert codes[2:] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
        assert futures[3].details()
        assert futures[0].details() is None
        assert futures[0].result() == b"v2-a"
    with pytest.raises(ValueError, match="closed channel"):
        unary.future(b"x", timeout=1)


REWRITE_AND_EDIT = vs("""\
  - match: [{uri: {prefix: /test.Legacy/}}]
    rewrite: {uri: /test.Echo/, authority: reviews.internal}
    headers:
      request: {set: {x-mesh: "yes"}, add: {x-extra: one}, remove: [x-secret]}
      response: {add: {x-served-by: mesh}}
    route:
    - destination: {host: reviews, subset: v2}
      headers: {request: {add: {x-subset: v2}}}
""")


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_rewrite_and_metadata_edits_mean_for_grpc_what_they_mean_for_http(  # type: ignore[no-untyped-def]
    backends, make_mesh, mode: str
) -> None:
    """The route's rewrite changes the method called upstream (``:path``) and the authority;
    request edits change the metadata sent (``add`` appends an entry, as Envoy does), answer
    edits the initial metadata the caller sees."""
    import asyncio

    mesh = make_mesh(
        entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + REWRITE_AND_EDIT
    )
    metadata = (("x-secret", "s3cret"), ("x-extra", "zero"))
    if mode == "sync":
        with meshlib_grpc.channel(mesh, "reviews") as channel:
            response, call = channel.unary_unary("/test.Legacy/Unary").with_call(
                b"x", metadata=metadata, timeout=5
            )
            assert dict(call.initial_metadata())["x-served-by"] == "mesh"
    else:  # ``await`` gives the response only: the answer's metadata is not the caller's to see

        async def main() -> bytes:
            async with meshlib_grpc.aio_channel(mesh, "reviews") as channel:
                return await channel.unary_unary("/test.Legacy/Unary")(b"x", metadata=metadata, timeout=5)

        response = asyncio.run(main())
    assert response == b"v2-a", "the legacy method name reached /test.Echo/Unary on v2"
    seen = backends["v2-a"][0].metadata[-1]
    assert (seen["x-mesh"], seen["x-subset"]) == ("yes", "v2")
    assert "x-secret" not in seen


def test_an_appended_metadata_entry_keeps_the_callers_own(backends, make_mesh) -> None:  # type: ignore[no-untyped-def]
    seen_all: list[list[tuple[str, str]]] = []

    def record(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen_all.append([(k, v) for k, v in context.invocation_metadata() if k == "x-extra"])
        return b"ok"

    from grpc_backends import grpc_server

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(record)}
    )
    with grpc_server(handler) as port:
        mesh = make_mesh(
            grpc_service_entry("reviews", {"v2-a": port})
            + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}")
            + REWRITE_AND_EDIT
        )
        with meshlib_grpc.channel(mesh, "reviews") as channel:
            channel.unary_unary("/test.Legacy/Unary")(b"x", metadata=(("x-extra", "zero"),), timeout=5)
    assert seen_all == [[("x-extra", "zero"), ("x-extra", "one")]]
