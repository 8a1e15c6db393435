"""The config service under stress, with real processes: killed with SIGKILL under load,
applies at a high rate while workloads watch, and a version one workload cannot use."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlib import Mesh
from meshlib.policy.resources import ResourceKey
from tests.conftest import destination_rule, virtual_service
from tests.reliability._controlplane import (
    FRONTEND_ID,
    REVIEWS,
    STRICT,
    Check,
    ConfigProcess,
    Traffic,
    WorkloadProcess,
    meshctl,
    readiness,
    status_rows,
    synced,
)
from tests.servers import wait_for


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ConfigProcess]:
    """``meshctl serve`` on its own process, STRICT mTLS mesh-wide."""
    running = ConfigProcess(tmp_path / "cp").start()
    try:
        with running.admin() as admin:
            admin.apply([STRICT])
        yield running
    finally:
        running.stop()


def timeout_route(seconds: int) -> dict[str, Any]:
    """A VirtualService for reviews that changes nothing but its timeout: a harmless new version."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": {
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews"}}], "timeout": f"{seconds}s"}],
        },
    }


@pytest.mark.parametrize(
    ("outage", "rate"),
    [pytest.param(5.0, 40.0, id="5s"), pytest.param(60.0, 5.0, id="60s", marks=pytest.mark.full)],
)
def test_config_service_killed_under_load_fails_no_request(
    service: ConfigProcess, tmp_path: Path, outage: float, rate: float
) -> None:
    admin = service.admin()
    reviews = WorkloadProcess(
        "reviews", service.url, admin.create_token("reviews")["token"], tmp_path / "reviews"
    )
    reviews.start()
    token = admin.create_token("frontend")["token"]
    try:
        with Mesh("frontend", control_plane=service.url, token=token, data_dir=tmp_path / "frontend") as mesh:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS)), 30), reviews.log
            assert wait_for(lambda: synced(admin, 2), 15), admin.workloads()
            before = mesh.version
            with Traffic(mesh, "http://reviews/", rate, limit=int(rate * (outage + 60))) as traffic:
                assert wait_for(lambda: traffic.ok() >= rate, 10), traffic.failures[:5]
                service.kill()
                killed = time.monotonic()

                # While it is down: the CLI cannot say anything (it asks the service)...
                status = meshctl("status", server=service.url, token=service.admin_token)
                assert status.returncode == 1
                assert f"cannot reach the config service at {service.url}" in status.stderr
                # ...each workload says it itself: serving, on its last version, not connected.
                assert wait_for(lambda: mesh.health()["connected"] is False, 10), mesh.health()
                health = mesh.health()
                assert (health["ready"], health["version"], health["source"]) == (
                    True,
                    before,
                    "control-plane",
                )
                assert service.url in health["lastError"]
                assert wait_for(lambda: readiness(mesh)["connected"] is False, 10)
                probe = readiness(mesh)
                assert (probe["status"], probe["ready"], probe["version"]) == (200, True, before), probe

                time.sleep(max(0.0, killed + outage - time.monotonic()))  # the outage itself
                restarted = time.monotonic()
                during = traffic.sent_between(killed, restarted)
                service.start()
                version = admin.apply([timeout_route(30)])["version"]
                assert wait_for(lambda: synced(admin, 2, at_least=version), 30), admin.workloads()
                resumed = time.monotonic() - restarted
                assert mesh.version >= version
                assert wait_for(lambda: traffic.ok() >= traffic.sent_between(0, restarted) + rate, 10)
            assert traffic.failures == [], traffic.failures[:5]
            assert during >= rate * outage / 2, f"only {during} requests were sent during the outage"
            status = meshctl("status", server=service.url, token=service.admin_token)
            rows = status_rows(status.stdout)
            assert len(rows) == 2, status.stdout
            assert all("SYNCED v" in row and "CONNECTED" in row for row in rows.values()), status.stdout
            print(
                f"outage {outage:.0f}s: {len(traffic.outcomes)} requests ({during} while down), "
                f"0 failed; every workload ACKed v{version} {resumed:.1f}s after the restart"
            )
    finally:
        reviews.stop()
        admin.close()


@pytest.mark.parametrize(
    ("per_second", "seconds"),
    [pytest.param(20, 3, id="20/s-3s"), pytest.param(50, 10, id="50/s-10s", marks=pytest.mark.full)],
)
def test_applies_at_a_high_rate_every_workload_ends_on_the_last_version(
    service: ConfigProcess, tmp_path: Path, per_second: int, seconds: int
) -> None:
    admin = service.admin()
    admin.apply([destination_rule(), virtual_service(v1=50, v2=50)])
    servers = [
        WorkloadProcess(
            "reviews",
            service.url,
            admin.create_token("reviews")["token"],
            tmp_path / f"reviews-{v}",
            labels=f"version={v}",
        ).start()
        for v in ("v1", "v2")
    ]
    frontend_token, ratings_token = (
        admin.create_token("frontend")["token"],
        admin.create_token("ratings")["token"],
    )
    try:
        with (
            Mesh(
                "frontend", control_plane=service.url, token=frontend_token, data_dir=tmp_path / "frontend"
            ) as mesh,
            Mesh("ratings", control_plane=service.url, token=ratings_token, data_dir=tmp_path / "ratings"),
        ):
            assert wait_for(lambda: len(mesh.snapshot.endpoints(REVIEWS)) == 2, 30), [s.log for s in servers]
            assert wait_for(lambda: synced(admin, 4), 15), admin.workloads()
            count = per_second * seconds
            versions: list[int] = []
            started = applied = time.monotonic()
            with Traffic(mesh, "http://reviews/", 50, limit=50 * (seconds + 30)) as traffic:
                for i in range(count):
                    last = i == count - 1
                    weight = 100 if last else 1 + i % 99  # never 0 before the last: both subsets stay in use
                    result = admin.apply([virtual_service(v1=weight, v2=100 - weight)])
                    assert [r["action"] for r in result["results"]] == ["configured"], result
                    versions.append(result["version"])
                    applied = time.monotonic()
                    if not last:
                        time.sleep(max(0.0, started + (i + 1) / per_second - applied))
                elapsed = applied - started
                assert wait_for(lambda: synced(admin, 4, at_least=versions[-1]), 30), admin.workloads()
                converged = time.monotonic() - applied
                # On the last version: v1 takes everything (traffic sent once the frontend has it).
                assert mesh.version >= versions[-1]
                settled = time.monotonic()
                assert wait_for(lambda: sum(1 for sent, _ in traffic.outcomes if sent > settled) >= 25, 10)
            assert traffic.failures == [], traffic.failures[:5]
            late = [
                b["version"]
                for (sent, _), b in zip(traffic.outcomes, traffic.bodies, strict=True)
                if sent > settled
            ]
            assert len(late) >= 25, late
            assert set(late) == {"v1"}, f"after the last version: {late}"
            assert versions == sorted(set(versions)), "every apply made a new, higher version"
            assert elapsed < 2 * seconds, f"{count} applies took {elapsed:.1f}s: not the rate asked for"
            print(
                f"{count} applies in {elapsed:.1f}s ({count / elapsed:.0f}/s), "
                f"{len(traffic.outcomes)} requests, 0 failed; "
                f"4 workloads ACKed v{versions[-1]} {converged:.2f}s after the last apply"
            )
    finally:
        for each in servers:
            each.stop()
        admin.close()


# The last commit before the Telemetry kind (b472e7a): a meshlib release that does not know it,
# as a workload not yet upgraded runs it (docs/operations.md#upgrades).
BEFORE_TELEMETRY = "b472e7a^"
RATINGS = "ratings.default.svc.cluster.local"
TELEMETRY = {
    "apiVersion": "telemetry.istio.io/v1",
    "kind": "Telemetry",
    "metadata": {"name": "mesh-default", "namespace": "istio-system"},
    "spec": {
        "accessLogging": [
            {"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 500"}}
        ]
    },
}


@pytest.fixture(scope="module")
def old_meshlib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``src/`` of meshlib at BEFORE_TELEMETRY, from this clone's history."""
    repo = Path(__file__).resolve().parents[2]
    target = tmp_path_factory.mktemp("meshlib-before-telemetry")
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", BEFORE_TELEMETRY, "src"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"{BEFORE_TELEMETRY} is not in this clone's history: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "src"


def answered_by(service: str) -> Check:
    def check(body: dict[str, Any]) -> str | None:
        if body.get("service") == service and body.get("peer") == FRONTEND_ID:
            return None
        return f"unexpected answer {body}"

    return check


def config_versions(traffic: Traffic, start: float, end: float) -> list[int]:
    """The policy versions the server answered on, for requests sent between start and end."""
    pairs = zip(traffic.outcomes, traffic.bodies, strict=True)  # every request succeeded
    return [body["configVersion"] for (sent, _), body in pairs if start <= sent < end]


def test_a_version_one_workload_cannot_use_is_nacked_with_the_reason_and_the_rest_carry_on(
    service: ConfigProcess, tmp_path: Path, old_meshlib: Path
) -> None:
    admin = service.admin()
    reviews = WorkloadProcess(
        "reviews", service.url, admin.create_token("reviews")["token"], tmp_path / "reviews"
    )
    ratings = WorkloadProcess(  # not upgraded yet: a meshlib that does not know Telemetry
        "ratings",
        service.url,
        admin.create_token("ratings")["token"],
        tmp_path / "ratings",
        pythonpath=old_meshlib,
    )
    reviews.start()
    ratings.start()
    token = admin.create_token("frontend")["token"]
    try:
        with Mesh("frontend", control_plane=service.url, token=token, data_dir=tmp_path / "frontend") as mesh:
            assert wait_for(
                lambda: bool(mesh.snapshot.endpoints(REVIEWS) and mesh.snapshot.endpoints(RATINGS)), 30
            ), reviews.log + ratings.log
            assert wait_for(lambda: synced(admin, 3), 15), admin.workloads()
            good = mesh.version
            ids = {w["registration"]["service"]: w["registration"]["id"] for w in admin.workloads()["items"]}
            with (
                Traffic(mesh, "http://reviews/", 20, limit=2000) as to_reviews,
                Traffic(mesh, "http://ratings/", 20, limit=2000, check=answered_by("ratings")) as to_ratings,
            ):
                refused = admin.apply([TELEMETRY])["version"]

                def nacked() -> bool:
                    items = {w["registration"]["service"]: w for w in admin.workloads()["items"]}
                    version = items["ratings"]["nackVersion"]
                    return (
                        version is not None
                        and version >= refused
                        and all(items[s]["ackedVersion"] == version for s in ("reviews", "frontend"))
                    )

                assert wait_for(nacked, 15), admin.workloads()
                nack_seen = time.monotonic()
                # meshctl status, run against the service: the reason on the NACKing row only.
                status = meshctl("status", server=service.url, token=service.admin_token)
                rows = status_rows(status.stdout)
                reason = "Telemetry istio-system/mesh-default: kind: Telemetry is not"  # 60 characters shown
                assert f"NACK v{refused}: {reason}" in rows[ids["ratings"]], status.stdout
                assert all("SYNCED v" in rows[ids[s]] for s in ("reviews", "frontend")), status.stdout
                whole = meshctl("status", "-o", "json", server=service.url, token=service.admin_token)
                (entry,) = [
                    w for w in json.loads(whole.stdout)["items"] if w["registration"]["service"] == "ratings"
                ]
                assert "kind: Telemetry is not a kind meshlib applies" in entry["nackReason"], entry
                assert entry["ackedVersion"] == good, "the registry keeps the last version it took"
                assert "rejected config version" in ratings.log

                # The NACKing workload serves on its last good version, still watching.
                probe = readiness(mesh, "ratings")
                assert (probe["status"], probe["ready"], probe["version"], probe["connected"]) == (
                    200,
                    True,
                    good,
                    True,
                )
                assert wait_for(lambda: to_ratings.sent_between(nack_seen, time.monotonic()) >= 20, 10)
                # A later version without the Telemetry is taken: the NACK clears.
                removed = time.monotonic()
                gone = admin.delete(ResourceKey("Telemetry", "istio-system", "mesh-default"))["version"]
                assert wait_for(lambda: synced(admin, 3, at_least=gone), 15), admin.workloads()
                assert readiness(mesh, "ratings")["version"] >= gone
            assert to_reviews.failures == [], to_reviews.failures[:5]
            assert to_ratings.failures == [], to_ratings.failures[:5]
            on_ratings = config_versions(to_ratings, nack_seen, removed)
            on_reviews = config_versions(to_reviews, nack_seen, removed)
            assert len(on_ratings) >= 20, on_ratings
            assert set(on_ratings) == {good}, f"ratings ran {set(on_ratings)} while it NACKed"
            assert on_reviews, "reviews was called meanwhile"
            assert min(on_reviews) >= refused, f"reviews ran {set(on_reviews)} meanwhile"
            print(
                f"ratings (meshlib {BEFORE_TELEMETRY}) NACKed v{refused} and served "
                f"{len(on_ratings)} requests on v{good}; reviews and frontend on v{refused}; "
                f"{len(to_reviews.outcomes) + len(to_ratings.outcomes)} requests, 0 failed"
            )
    finally:
        reviews.stop()
        ratings.stop()
        admin.close()
