"""Every call arity through mesh channels, sync and aio, against real gRPC servers: a weighted
split, metadata routing, ejection of a failing endpoint, and the retry rule for streams (a
request stream is sent once; a response stream is retried only before its first message)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import meshlib_grpc
import pytest
from grpc_backends import CHAT, STREAM, UPLOAD, GrpcBackend
from test_meshlib_grpc_channel import EJECT_AT_FIFTH, SPLIT_80_20, SUBSETS, entry, vs

from meshlib import Mesh

ARITIES = ["unary_stream", "stream_unary", "stream_stream"]
MODES = ["sync", "aio"]
METHODS = {"unary_stream": STREAM, "stream_unary": UPLOAD, "stream_stream": CHAT}
Backends = dict[str, tuple[GrpcBackend, int]]


def requests() -> Iterator[bytes]:
    yield from (b"a", b"b", b"c")


async def aio_requests() -> AsyncIterator[bytes]:
    for message in (b"a", b"b", b"c"):
        yield message


def answer_of(arity: str, got: Any) -> str:
    """Which backend answered, and that the whole exchange came through."""
    if arity == "stream_unary":
        name, _, count = got.decode().partition(":")
        assert count == "3", got
        return name
    messages = [m.decode() for m in got]
    assert len(messages) == 3, messages
    return messages[0].rsplit("-", 1)[0]


def run_calls(
    mesh: Mesh, mode: str, arity: str, n: int, metadata: tuple[tuple[str, str], ...] = ()
) -> list[str]:
    """``n`` calls of one arity; each result is the answering backend or ``error <CODE>``."""
    method = METHODS[arity]
    if mode == "sync":
        out = []
        with meshlib_grpc.channel(mesh, "reviews") as channel:
            call = getattr(channel, arity)(method)
            for _ in range(n):
                request: Any = b"x" if arity == "unary_stream" else requests()
                try:
                    got = call(request, timeout=5, metadata=metadata)
                    out.append(answer_of(arity, got if arity == "stream_unary" else list(got)))
                except grpc.RpcError as exc:
                    out.append(f"error {exc.code().name}")
        return out

    async def main() -> list[str]:
        gate = asyncio.Semaphore(16)
        async with meshlib_grpc.aio_channel(mesh, "reviews") as channel:
            call = getattr(channel, arity)(method)

            async def one() -> str:
                async with gate:
                    request: Any = b"x" if arity == "unary_stream" else aio_requests()
                    try:
                        reply = call(request, timeout=5, metadata=metadata)
                        got = await reply if arity == "stream_unary" else [m async for m in reply]
                        return answer_of(arity, got)
                    except grpc.RpcError as exc:
                        return f"error {exc.code().name}"

            return list(await asyncio.gather(*(one() for _ in range(n))))

    return asyncio.run(main())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arity", ARITIES)
def test_streams_split_80_20_within_3_points(
    backends: Backends, make_mesh: Callable[[str], Mesh], arity: str, mode: str
) -> None:
    mesh = make_mesh(
        entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: ROUND_ROBIN}") + SPLIT_80_20
    )
    results = run_calls(mesh, mode, arity, 2000)
    assert not [r for r in results if r.startswith("error")], Counter(results)
    v2 = sum(r.startswith("v2") for r in results)
    assert abs(v2 / 20 - 20) <= 3, f"v2 got {v2 / 20:.1f}%"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arity", ARITIES)
def test_streams_route_by_metadata(
    backends: Backends, make_mesh: Callable[[str], Mesh], arity: str, mode: str
) -> None:
    rule = vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
""")
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + rule)
    assert Counter(run_calls(mesh, mode, arity, 50, (("end-user", "jason"),))) == {"v2-a": 50}
    others = Counter(run_calls(mesh, mode, arity, 50))
    assert set(others) == {"v1-a", "v1-b"}, others
    assert sum(others.values()) == 50


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arity", ARITIES)
def test_a_failing_endpoint_is_ejected_by_stream_calls(
    backends: Backends, make_mesh: Callable[[str], Mesh], arity: str, mode: str
) -> None:
    broken = backends["v2-a"][0]
    broken.code = grpc.StatusCode.UNAVAILABLE
    mesh = make_mesh(entry(backends) + EJECT_AT_FIFTH)
    results = run_calls(mesh, mode, arity, 60) if mode == "sync" else []
    if mode == "aio":  # one at a time, so that the 5th failure is seen before the next pick
        for _ in range(60):
            results += run_calls(mesh, mode, arity, 1)
    assert broken.hits == 5, "ejected at its 5th consecutive UNAVAILABLE"
    # grpc.aio itself (a plain channel too) sometimes reports a server's abort during a
    # bidi call as INTERNAL "Internal error from Core" while it is still writing requests.
    failed = [r for r in results if r.startswith("error")]
    assert len(failed) == 5, Counter(results)
    assert set(failed) <= {"error UNAVAILABLE", "error INTERNAL"}, Counter(results)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arity", ["stream_unary", "stream_stream"])
def test_a_request_stream_is_sent_once_never_retried(
    backends: Backends, make_mesh: Callable[[str], Mesh], arity: str, mode: str
) -> None:
    dead = backends["v2-a"][0]
    dead.code = grpc.StatusCode.UNAVAILABLE
    route = vs(
        "  - route: [{destination: {host: reviews, subset: v2}}]\n"
        "    retries: {attempts: 3, retryOn: unavailable, backoff: 1ms}\n"
    )
    mesh = make_mesh(entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: RANDOM}") + route)
    assert run_calls(mesh, mode, arity, 10) == ["error UNAVAILABLE"] * 10
    assert dead.hits == 10, "its request messages were read once: the call cannot be replayed"


@pytest.mark.parametrize("mode", MODES)
def test_a_response_stream_with_30_percent_unavailable_is_retried_to_995_percent(
    backends: Backends, make_mesh: Callable[[str], Mesh], mode: str
) -> None:
    for name in ("v1-a", "v1-b"):
        backends[name][0].fail_rate = 0.3  # fails before the first message: retriable
    route = vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    retries: {attempts: 5, retryOn: unavailable, backoff: 1ms}\n"
    )
    mesh = make_mesh(
        entry(backends) + SUBSETS.format(policy="    loadBalancer: {simple: ROUND_ROBIN}") + route
    )
    results = run_calls(mesh, mode, "unary_stream", 1000)
    ok = sum(not r.startswith("error") for r in results)
    assert ok >= 995, Counter(results)
    hits = backends["v1-a"][0].hits + backends["v1-b"][0].hits
    assert 1000 < hits < 1600, "retries happened, about 0.43 per call"
