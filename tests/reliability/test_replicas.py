"""Replicas that die, hang or slow down under load from a mesh client, each replica a real
process (tests/reliability/_replica.py under serve_asgi): what retries, per-try timeouts,
outlier detection and the balancer make of it, measured on every request."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from meshlib.http.errors import MeshRequestError
from tests.reliability._dataplane import (
    Held,
    Replicas,
    Result,
    client_mesh,
    closed_load,
    events,
    latencies,
    paced_load,
    percentile,
    reviews_policy,
    timed,
    timed_sync,
)

# --- kill -9 under load ----------------------------------------------------------------

KILL_RETRIES = "{attempts: 3, perTryTimeout: 1s, retryOn: 'connect-failure,reset,503', backoff: 5ms}"
KILL_POLICY = """\
loadBalancer: {simple: ROUND_ROBIN}
outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
"""
RECOVERY = 2.0  # s: the contract: no attempt fails later than this after a kill


def kill_under_load(tmp_path: Path, rate: int, seconds: float, kills: dict[float, str]) -> None:
    """``rate`` requests/s for ``seconds`` to three replicas answering in 20 ms (so that some
    are in flight when one dies), ``kill -9`` of the replica named at each time (s)."""
    with Replicas(tmp_path, {"a": "slow=0.02", "b": "slow=0.02", "c": "slow=0.02"}) as replicas:
        policy = reviews_policy(replicas.ports, retries=KILL_RETRIES, traffic_policy=KILL_POLICY)
        with client_mesh(tmp_path, policy) as mesh:
            killed: dict[str, float] = {}

            def kill(name: str) -> None:
                killed[name] = time.monotonic()
                replicas.kill(name)

            async def main() -> tuple[list[Result], list[tuple[float, int]], list[float]]:
                async with mesh.async_http_client(timeout=10) as client:
                    warm = await closed_load(client, 30, 6)  # keep-alive connections to all three
                    assert Counter(r.replica for r in warm) == {"a": 10, "b": 10, "c": 10}
                    load = await paced_load(
                        client,
                        rate,
                        round(rate * seconds),
                        at={t: (lambda name=name: kill(name)) for t, name in kills.items()},
                        watch=lambda: events(mesh, "retries"),
                    )
                    return load.results, load.watched, load.lag

            results, watched, lag = asyncio.run(main())
            retries = events(mesh, "retries")
            failed = [r for r in results if not r.ok]
            retried_at = [b[0] for a, b in itertools.pairwise(watched) if b[1] > a[1]]
            in_flight = {
                name: sum(r.started < t < r.started + r.took for r in results) for name, t in killed.items()
            }
            settled = {
                name: max((t for t in retried_at if k <= t <= k + RECOVERY), default=k) - k
                for name, k in killed.items()
            }
            print(
                f"\n{len(results)} requests at {rate}/s (p99 lag {percentile(lag, 0.99) * 1000:.1f} ms), "
                f"{len(failed)} failed; {retries} attempts retried; in flight at each kill {in_flight}; "
                f"last retry after each kill (s) {settled}; {events(mesh, 'outlier_ejections')} ejections; "
                + latencies(results)
            )
            # Every attempt that hit a dead replica was a connect failure or a reset, both
            # retried on a replica not tried yet (retryIgnorePreviousHosts): none could fail.
            assert failed == [], Counter(repr(r.error) if r.error else r.status for r in failed)
            assert set(killed) == set(kills.values())
            # The kill was felt: ejection takes three consecutive failures, each one retried.
            assert retries >= 3 * len(kills)
            assert events(mesh, "outlier_ejections") == len(kills)
            # ...and stopped: every retry within RECOVERY of a kill, none after.
            late = [t for t in retried_at if not any(k <= t <= k + RECOVERY for k in killed.values())]
            assert late == [], (
                f"attempts still failing {[round(t - min(killed.values()), 2) for t in late]} s in"
            )
            # Failures are seen at once (a refused connect, a reset), never waited for.
            assert max(r.took for r in results) < 1.0, "no request waited for the 1 s per-try timeout"
            for name, t in killed.items():
                assert not any(r.replica == name and r.started > t for r in results), f"{name} answered dead"
            survivors = set(replicas.ports) - set(killed)
            assert {r.replica for r in results[-rate:]} == survivors


def test_kill_9_of_one_replica_of_three_under_200_rps_fails_no_request(tmp_path: Path) -> None:
    kill_under_load(tmp_path, 200, 3.0, {1.0: "a"})


@pytest.mark.full
def test_kill_9_of_two_replicas_of_three_under_200_rps_for_15s(tmp_path: Path) -> None:
    kill_under_load(tmp_path, 200, 15.0, {3.0: "a", 9.0: "b"})


# --- a hung replica --------------------------------------------------------------------

PER_TRY = 0.3  # s, as HUNG_RETRIES says
HUNG_RETRIES = "{attempts: 2, perTryTimeout: 300ms, retryOn: 'reset,connect-failure', backoff: 5ms}"
BACKOFF_MAX = 0.05  # s: Envoy's cap, ten times the 5 ms base
NORMAL = 0.5  # s: a generous bound on one normal answer on a shared 2-core machine


@pytest.mark.parametrize(("mode", "count"), [("async", 60), ("sync", 16)])
def test_a_hung_replica_costs_one_per_try_timeout_and_a_retry_elsewhere(
    tmp_path: Path, mode: str, count: int
) -> None:
    hung_replica(tmp_path, mode, count)


@pytest.mark.full
@pytest.mark.parametrize(("mode", "count"), [("async", 900), ("sync", 100)])
def test_a_hung_replica_under_longer_load(tmp_path: Path, mode: str, count: int) -> None:
    hung_replica(tmp_path, mode, count)


def hung_replica(tmp_path: Path, mode: str, count: int) -> None:
    """c accepts and reads every request and never answers; no outlier detection, so round
    robin keeps sending it a share of first attempts."""
    with Replicas(tmp_path, {"a": "ok", "b": "ok", "c": "hang"}) as replicas:
        policy = reviews_policy(
            replicas.ports, retries=HUNG_RETRIES, traffic_policy="loadBalancer: {simple: ROUND_ROBIN}"
        )
        with client_mesh(tmp_path, policy) as mesh:
            if mode == "async":

                async def main() -> list[Result]:
                    async with mesh.async_http_client(timeout=10) as client:
                        return await closed_load(client, count, 6)

                results = asyncio.run(main())
            else:
                with mesh.http_client(timeout=10) as client:
                    results = [timed_sync(client) for _ in range(count)]
            hits = replicas.hits("c")
            retries = events(mesh, "retries")
        took = sorted((r.took for r in results), reverse=True)
        normal = took[hits:]
        print(
            f"\n{mode}: {count} requests, {hits} reached the hung replica, {retries} retries; slowest "
            f"{took[0] * 1000:.0f} ms, fastest retried {took[hits - 1] * 1000:.0f} ms, "
            f"p50 {percentile(normal, 0.5) * 1000:.0f} ms"
        )
        assert [r for r in results if not r.ok] == []
        assert Counter(r.replica for r in results).keys() == {"a", "b"}
        assert hits >= count // 6, "round robin sent the hung replica its share"
        assert retries == hits, "each request that reached it: one per-try timeout, one retry"
        # The `hits` slowest requests are those: each waited the whole per-try timeout (not
        # less), then at most the back-off and one normal answer.
        assert took[hits - 1] >= PER_TRY
        assert took[0] < PER_TRY + BACKOFF_MAX + NORMAL, f"slowest {took[0]:.3f} s"


# --- a slow replica: LEAST_REQUEST against ROUND_ROBIN ----------------------------------

SLOW = 0.2  # s: the slow replica's answer time; the others answer at once


@pytest.mark.parametrize(
    ("rounds", "batch"),
    [pytest.param(3, 60, id="quick"), pytest.param(5, 300, marks=pytest.mark.full, id="long")],
)
def test_least_request_steers_around_a_slow_replica(tmp_path: Path, rounds: int, batch: int) -> None:
    """Both balancers on the same replicas in one run, in alternating batches of the same
    closed-loop load (6 requests in flight), so machine noise falls on both alike."""
    with Replicas(tmp_path, {"a": "ok", "b": "ok", "c": f"slow={SLOW}"}) as replicas:
        meshes = {
            lb: client_mesh(
                tmp_path / lb,
                reviews_policy(
                    replicas.ports, retries="{attempts: 0}", traffic_policy=f"loadBalancer: {{simple: {lb}}}"
                ),
            )
            for lb in ("ROUND_ROBIN", "LEAST_REQUEST")
        }
        with meshes["ROUND_ROBIN"] as rr, meshes["LEAST_REQUEST"] as lr:

            async def main() -> dict[str, list[Result]]:
                out: dict[str, list[Result]] = {"ROUND_ROBIN": [], "LEAST_REQUEST": []}
                async with (
                    rr.async_http_client(timeout=10) as rr_client,
                    lr.async_http_client(timeout=10) as lr_client,
                ):
                    for _ in range(rounds):
                        out["ROUND_ROBIN"] += await closed_load(rr_client, batch, 6)
                        out["LEAST_REQUEST"] += await closed_load(lr_client, batch, 6)
                return out

            results = asyncio.run(main())
    share = {lb: sum(r.replica == "c" for r in found) / len(found) for lb, found in results.items()}
    mean = {lb: sum(r.took for r in found) / len(found) for lb, found in results.items()}
    p90 = {lb: percentile([r.took for r in found], 0.90) for lb, found in results.items()}
    p99 = {lb: percentile([r.took for r in found], 0.99) for lb, found in results.items()}
    print(
        "\n"
        + "\n".join(
            f"{lb}: {share[lb]:.1%} to the slow replica, mean {mean[lb] * 1000:.1f} ms, "
            f"p90 {p90[lb] * 1000:.1f} ms, p99 {p99[lb] * 1000:.1f} ms"
            for lb in results
        )
    )
    assert all(r.ok for found in results.values() for r in found)
    assert abs(share["ROUND_ROBIN"] - 1 / 3) < 0.01, "round robin: a third, whatever the speed"
    assert p90["ROUND_ROBIN"] >= SLOW, "so a third of its requests wait for the slow one"
    # Power of two choices evens out requests in flight, not answer times: with as many in
    # flight on each replica, the slow one serves about fast / (2 x SLOW) of the requests, a
    # few per cent here (more when the machine is busy and the fast answers slow down too).
    # So p99 may still be the slow answer under both; the share, p90 and mean show the gain.
    assert share["LEAST_REQUEST"] < share["ROUND_ROBIN"] / 3
    assert p90["LEAST_REQUEST"] < SLOW / 2
    assert mean["LEAST_REQUEST"] < mean["ROUND_ROBIN"] / 2


# --- every replica down ----------------------------------------------------------------

DOWN_RETRIES = "{attempts: 2, retryOn: 'connect-failure,reset,503'}"  # Envoy's 25 ms back-off base
DOWN_POLICY = """\
loadBalancer: {simple: ROUND_ROBIN}
outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}
"""
FAIL_FAST = 1.0  # s: three refused connects and two back-offs of at most 250 ms each
RECOVER = 5.0  # s: a's ejection (1 s, growing by 1 s with each ejection in the outage) runs out


def test_every_replica_down_fails_fast_leaks_nothing_and_recovers(tmp_path: Path) -> None:
    with Replicas(tmp_path, {"a": "ok", "b": "ok", "c": "ok"}) as replicas:
        ports = set(replicas.ports.values())
        policy = reviews_policy(replicas.ports, retries=DOWN_RETRIES, traffic_policy=DOWN_POLICY)
        with client_mesh(tmp_path, policy) as mesh, mesh.http_client(timeout=10) as sync_client:

            async def main() -> None:
                async with mesh.async_http_client(timeout=10) as client:
                    warm = await closed_load(client, 30, 6)
                    warm += [timed_sync(sync_client) for _ in range(6)]
                    assert all(r.ok for r in warm)
                    before, tasks = Held.now(ports), len(asyncio.all_tasks())
                    for name in replicas.ports:
                        replicas.kill(name)
                    # One by one first: round robin tries a, b, c twice, which ejects all three.
                    failures = [timed_sync(sync_client) for _ in range(50)]
                    first = [type(r.error).__name__ for r in failures[:3]]
                    assert first == ["RetriesExhaustedConnectError"] * 2 + ["NoHealthyUpstreamError"], first
                    assert all("3 attempt(s) failed" in str(r.error) for r in failures[:2])
                    failures += await closed_load(client, 200, 20)
                    failures += [timed_sync(sync_client) for _ in range(50)]
                    after, tasks_after = Held.now(ports), len(asyncio.all_tasks())
                    kinds = Counter(type(r.error).__name__ for r in failures)
                    slowest = max(r.took for r in failures)
                    print(
                        f"\nall down: {dict(kinds)}, slowest failure {slowest * 1000:.0f} ms; "
                        f"held {before} -> {after}, asyncio tasks {tasks} -> {tasks_after}"
                    )
                    # Retries exhausted on refused connects (URX) until every replica is ejected,
                    # then no healthy upstream (UH), decided without a connect; both are the
                    # httpx.ConnectError callers already catch, and name the service.
                    assert kinds.keys() <= {"RetriesExhaustedConnectError", "NoHealthyUpstreamError"}, kinds
                    assert all(isinstance(r.error, MeshRequestError) for r in failures)
                    assert all(isinstance(r.error, httpx.ConnectError) for r in failures)
                    assert all("reviews.default.svc.cluster.local" in str(r.error) for r in failures)
                    assert slowest < FAIL_FAST
                    # Nothing grows with the failures: no thread, task, descriptor or socket.
                    assert after.threads <= before.threads
                    assert tasks_after <= tasks
                    assert after.fds <= before.fds
                    assert after.sockets <= before.sockets
                    # One replica comes back: served again once its ejection has run out.
                    replicas.restart("a")
                    back = time.monotonic()
                    recovered: Result | None = None
                    while time.monotonic() < back + RECOVER:
                        attempt = await timed(client)
                        if attempt.ok:
                            recovered = attempt
                            break
                        await asyncio.sleep(0.02)
                    assert recovered is not None, f"not served {RECOVER} s after a replica came back"
                    steady = await closed_load(client, 60, 6)
                    print(
                        f"served again {recovered.started - back:.2f} s after a came back; then "
                        f"{Counter(r.replica or type(r.error).__name__ for r in steady)}"
                    )
                    assert all(r.ok and r.replica == "a" for r in steady)

            asyncio.run(main())
        assert Held.now(ports).sockets == 0, "closing the clients closed every connection"
