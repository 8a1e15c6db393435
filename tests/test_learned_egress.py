"""Egress hosts learned from traffic: a workload gets the endpoints of what it calls, on the first call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh, learned_egress
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.routing_table import RoutingTable
from meshlib.core.snapshot import Snapshot
from meshlib.learned_egress import LearnedEgress
from meshlib.registry import AnnouncedEndpoint
from tests.conftest import destination_rule
from tests.servers import Backend, serve, wait_for

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
NO_WAIT = "no snapshot with a newly called host came"


@pytest.fixture
def registered(server: ConfigServer, tmp_path: Path) -> Iterator[dict[str, Backend]]:
    """reviews and ratings, each one real HTTP server announced in the registry."""
    with ExitStack() as stack:
        backends = {}
        for name in ("reviews", "ratings"):
            backend = backends[name] = Backend(name)
            port = stack.enter_context(serve(backend))
            mesh = stack.enter_context(Mesh(name, control_plane=server.url, data_dir=tmp_path / name))
            mesh.announce([AnnouncedEndpoint(address="127.0.0.1", port=port)])
        watcher = stack.enter_context(Mesh("watcher", control_plane=server.url, data_dir=tmp_path / "w"))
        assert wait_for(lambda: all(watcher.snapshot.endpoints(h) for h in (REVIEWS, RATINGS)))
        yield backends


def learner(server: ConfigServer, tmp_path: Path) -> Mesh:
    return Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "f", learn_egress=True)


def test_the_first_call_learns_the_host_and_is_served(
    server: ConfigServer, registered: dict[str, Backend], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshlib")
    with learner(server, tmp_path) as mesh, mesh.http_client() as client:
        assert mesh.snapshot.endpoints(REVIEWS) == ()  # the registry has both; it holds neither
        assert mesh.snapshot.endpoints(RATINGS) == ()
        response = client.get("http://reviews/first")
        assert (response.status_code, response.headers["x-backend"]) == (200, "reviews")
        assert [e.address for e in mesh.snapshot.endpoints(REVIEWS)] == ["127.0.0.1"]
        assert mesh.snapshot.endpoints(RATINGS) == ()
        assert mesh.learned_egress is not None
        assert mesh.learned_egress.hosts() == [f"*/{REVIEWS}"]
        assert [r.headers["x-backend"] for r in (client.get("http://reviews/") for _ in range(3))] == [
            "reviews"
        ] * 3
    assert [m for m in caplog.messages if NO_WAIT in m] == []


async def test_an_async_call_learns_every_destination_of_the_virtual_service(
    server: ConfigServer, admin: ControlPlaneClient, registered: dict[str, Backend], tmp_path: Path
) -> None:
    admin.apply(
        [
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "reviews"},
                "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "ratings"}}]}]},
            }
        ]
    )
    async with learner(server, tmp_path) as mesh, mesh.async_http_client() as client:
        assert mesh.snapshot.virtual_service(REVIEWS) is not None  # policy comes whole
        response = await client.get("http://reviews/")
        assert (response.status_code, response.headers["x-backend"]) == (200, "ratings")
        assert mesh.learned_egress is not None
        assert sorted(mesh.learned_egress.hosts() or ()) == [f"*/{RATINGS}", f"*/{REVIEWS}"]
        assert len(mesh.snapshot.endpoints(RATINGS)) == 1


def test_a_learned_host_keeps_its_endpoints_current_and_others_stay_out(
    server: ConfigServer, registered: dict[str, Backend], tmp_path: Path
) -> None:
    with (
        learner(server, tmp_path) as mesh,
        mesh.http_client() as client,
        serve(Backend("reviews-2")) as second,
        Mesh("reviews", control_plane=server.url, data_dir=tmp_path / "r2") as another,
    ):
        assert client.get("http://reviews/").status_code == 200
        version = mesh.version
        another.announce([AnnouncedEndpoint(address="127.0.0.1", port=second)])
        assert wait_for(lambda: len(mesh.snapshot.endpoints(REVIEWS)) == 2)
        assert mesh.version > version
        seen = {client.get("http://reviews/").headers["x-backend"] for _ in range(30)}
        assert seen == {"reviews", "reviews-2"}
        assert mesh.snapshot.endpoints(RATINGS) == ()


def test_a_host_outside_the_mesh_goes_out_at_once_and_is_never_asked_for(
    server: ConfigServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "meshlib")
    outside = Backend("outside")
    with serve(outside) as port, learner(server, tmp_path) as mesh, mesh.http_client() as client:
        version = mesh.version
        for _ in range(3):
            assert client.get(f"http://localhost:{port}/").headers["x-backend"] == "outside"
        assert mesh.learned_egress is not None
        assert mesh.learned_egress.hosts() == []
        assert [m for m in caplog.messages if m.startswith("learned egress hosts")] == []
        assert mesh.version == version
        assert outside.hits == 3


def test_concurrent_first_calls_all_wait_and_are_served(
    server: ConfigServer, registered: dict[str, Backend], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshlib")
    with learner(server, tmp_path) as mesh, mesh.http_client() as client:
        start = threading.Barrier(8)

        def call(name: str) -> str:
            start.wait(5)
            try:
                return client.get(f"http://{name}/").headers["x-backend"]
            except httpx.HTTPError as exc:
                return repr(exc)

        # Two hosts learned within moments of each other: each new one ends the watch again.
        names = ["reviews", "ratings"] * 4
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, names))
        assert answers == names
    assert [m for m in caplog.messages if NO_WAIT in m] == []


async def test_concurrent_async_first_calls_all_wait_and_are_served(
    server: ConfigServer, registered: dict[str, Backend], tmp_path: Path
) -> None:
    async with learner(server, tmp_path) as mesh, mesh.async_http_client() as client:
        answers = await asyncio.gather(*(client.get("http://reviews/") for _ in range(8)))
        assert [a.headers["x-backend"] for a in answers] == ["reviews"] * 8


def test_with_the_config_service_gone_a_first_call_does_not_wait(
    tmp_path: Path, registered: dict[str, Backend], server: ConfigServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshlib")
    with learner(server, tmp_path) as mesh, mesh.http_client() as client:
        server.stop()
        assert wait_for(lambda: mesh.health()["connected"] is False)
        with pytest.raises(httpx.ConnectError):  # no endpoints: as if there were no mesh
            client.get("http://reviews/")
        assert mesh.learned_egress is not None
        assert mesh.learned_egress.hosts() == [f"*/{REVIEWS}"], "the next watch asks for it"
    assert [m for m in caplog.messages if NO_WAIT in m] == []


def test_an_answer_that_does_not_come_is_waited_for_a_bounded_time(
    server: ConfigServer,
    registered: dict[str, Backend],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(learned_egress, "LEARN_TIMEOUT", 0.3)
    caplog.set_level(logging.WARNING, "meshlib")
    with learner(server, tmp_path) as mesh, mesh.http_client() as client:
        assert mesh.learned_egress is not None
        mesh.learned_egress.wake = lambda: None  # the watcher never hears of the new host
        with pytest.raises(httpx.ConnectError):
            client.get("http://reviews/")
    assert [m for m in caplog.messages if NO_WAIT in m] == [
        "no snapshot with a newly called host came within 0.3s; going on without"
    ]


def test_env_turns_learning_on_and_only_with_a_config_service() -> None:
    env = {"MESH_SERVICE": "frontend", "MESH_CONTROL_PLANE": "http://127.0.0.1:9", "MESH_EGRESS_LEARN": "1"}
    assert Mesh.from_env(env).learned_egress is not None
    assert Mesh.from_env({**env, "MESH_EGRESS_LEARN": "0"}).learned_egress is None
    static = {"MESH_SERVICE": "frontend", "MESH_EGRESS_LEARN": "true"}
    assert Mesh.from_env(static).learned_egress is None, "no config service: nothing to learn from"
    with pytest.raises(Exception, match="MESH_EGRESS_LEARN"):
        Mesh.from_env({**env, "MESH_EGRESS_LEARN": "maybe"})


def _learner(declared: list[str] | None = None) -> tuple[LearnedEgress, RoutingTable]:
    learned = LearnedEgress(declared or [], "default")
    learned.connected = True
    return learned, RoutingTable.build(Snapshot.empty("cluster.local"), "default", {"app": "frontend"})


def test_more_hosts_than_a_watch_names_switch_to_the_whole_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learned_egress, "MAX_EGRESS_HOSTS", 3)
    learned, table = _learner([f"*/{RATINGS}"])
    woken: list[int] = []
    learned.wake = lambda: woken.append(1)
    first = learned.wanted(table, "a.shop", None)
    second = learned.wanted(table, "b.shop", None)
    assert first is not None
    assert second is not None
    assert first is not second
    assert learned.hosts() == [f"*/{RATINGS}", "*/a.shop.svc.cluster.local", "*/b.shop.svc.cluster.local"]
    learned.covered(["*/a.shop.svc.cluster.local"])
    assert first.done()
    assert not second.done()
    assert learned.wanted(table, "a.shop", None) is None, "covered: nothing to wait for"
    assert not learned.whole_registry
    third = learned.wanted(table, "c.shop", None)
    assert learned.whole_registry
    assert learned.hosts() is None
    assert third is not None
    assert not third.done()
    assert learned.wanted(table, "d.shop", None) is None, "the whole registry: nothing to ask"
    learned.covered(None)
    assert second.done()
    assert third.done()
    assert woken == [1, 1, 1]


def test_a_call_before_the_answer_waits_for_the_same_one() -> None:
    learned, table = _learner()
    first = learned.wanted(table, "reviews", None)
    assert first is not None
    assert learned.wanted(table, "reviews", None) is first, "not seen until covered"
    again = learned.wanted(table, "reviews.default", None)  # another name of the same service
    assert again is first
    assert learned.hosts() == [f"*/{REVIEWS}"]
    learned.covered([f"*/{REVIEWS}"])
    assert first.done()
    assert learned.wanted(table, "reviews", None) is None
    assert learned.wanted(table, "1.2.3.4", None) is None, "an address is no service name"
    assert learned.wanted(table, "api.example.com", None) is None, "outside the mesh"
    assert learned.hosts() == [f"*/{REVIEWS}"]


def test_declared_wildcards_cover_what_they_name() -> None:
    learned, table = _learner(["payments/*", "*/*.example.com"])
    assert learned.wanted(table, "reviews.payments", None) is None
    assert learned.hosts() == ["payments/*", "*/*.example.com"]
    assert learned.wanted(table, "ratings.shop", None) is not None
    assert learned.hosts() == ["payments/*", "*/*.example.com", "*/ratings.shop.svc.cluster.local"]


def test_nothing_waits_while_disconnected_or_after_close() -> None:
    learned, table = _learner()
    learned.connected = False
    assert learned.wanted(table, "reviews", None) is None
    assert learned.hosts() == [f"*/{REVIEWS}"], "learned: the next watch asks for it"
    learned.connected = True
    pending = learned.wanted(table, "ratings", None)
    assert pending is not None
    learned.close()
    assert pending.done()
    assert learned.wanted(table, "details", None) is None


def test_a_call_from_a_snapshot_listener_does_not_hold_the_watcher(
    server: ConfigServer,
    admin: ControlPlaneClient,
    registered: dict[str, Backend],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "meshlib")
    with learner(server, tmp_path) as mesh, mesh.http_client() as client:
        answers: list[str] = []

        def listener(_: object) -> None:
            try:
                answers.append(client.get("http://reviews/").headers["x-backend"])
            except httpx.HTTPError as exc:
                answers.append(type(exc).__name__)

        mesh.add_listener(listener)
        version = admin.apply([destination_rule("details", "details")])["version"]
        assert mesh.wait_for_version(version, timeout=5.0)
        # On the watcher's thread the first call cannot wait for the watcher: it goes on
        # without endpoints; the watcher then fetches them, and the next swap's call is served.
        assert wait_for(lambda: "reviews" in answers)
        assert answers[0] == "ConnectError"
    assert [m for m in caplog.messages if NO_WAIT in m] == []


def test_a_cluster_made_before_its_host_was_learned_takes_the_endpoints_of_the_rescoped_snapshot(
    server: ConfigServer,
    admin: ControlPlaneClient,
    registered: dict[str, Backend],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rescope installs another snapshot at the same version: the clusters made on the first
    (with no endpoints, the call having gone on without them) must take the new one's endpoints
    into outlier detection, not wait for the next version."""
    admin.apply(
        [
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "reviews"},
                "spec": {
                    "host": "reviews",
                    "trafficPolicy": {
                        "outlierDetection": {
                            "consecutive5xxErrors": 2,
                            "interval": "1s",
                            "baseEjectionTime": "30s",
                            "maxEjectionPercent": 100,
                        }
                    },
                },
            }
        ]
    )
    monkeypatch.setattr(learned_egress, "LEARN_TIMEOUT", 0.2)
    with learner(server, tmp_path) as mesh, mesh.http_client() as client:
        learned = mesh.learned_egress
        assert learned is not None
        assert learned.wake is not None
        wake, learned.wake = learned.wake, lambda: None  # the first call goes on without endpoints
        with pytest.raises(httpx.ConnectError):
            client.get("http://reviews/")
        version = mesh.version
        learned.wake = wake
        wake()
        assert wait_for(lambda: len(mesh.snapshot.endpoints(REVIEWS)) == 1)
        assert mesh.version == version, "a rescope: the same version, another snapshot"
        reviews = registered["reviews"]
        reviews.status = 503
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append(str(client.get("http://reviews/").status_code))
            except httpx.ConnectError as exc:
                outcomes.append(type(exc).__name__)
        assert reviews.hits == 2, "ejected at its second 503 (a retry): then no healthy upstream"
        assert outcomes == ["NoHealthyUpstreamError"] * 4, "the first: after its retry found none"
        ejections = {s: n for (k, s), n in mesh.metrics.counters().items() if k == "outlier_ejections"}
        assert list(ejections.values()) == [1]
