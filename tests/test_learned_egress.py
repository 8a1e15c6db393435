"""Egress hosts learned from traffic: a workload gets the endpoints of what it calls, on the first call."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from meshlib import Mesh, learned_egress
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.routing_table import RoutingTable
from meshlib.core.snapshot import Snapshot
from meshlib.learned_egress import LearnedEgress
from meshlib.registry import AnnouncedEndpoint
from tests.conftest import virtual_service
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


def test_a_host_outside_the_mesh_is_asked_for_once_then_passes_through(
    server: ConfigServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "meshlib")
    outside = Backend("outside")
    with serve(outside) as port, learner(server, tmp_path) as mesh, mesh.http_client() as client:
        assert client.get(f"http://localhost:{port}/").headers["x-backend"] == "outside"
        assert mesh.learned_egress is not None
        hosts = mesh.learned_egress.hosts()
        assert hosts == ["*/localhost.default.svc.cluster.local"]
        learned = [m for m in caplog.messages if m.startswith("learned egress hosts")]
        assert len(learned) == 1
        for _ in range(3):
            assert client.get(f"http://localhost:{port}/").status_code == 200
        assert mesh.learned_egress.hosts() == hosts
        assert [m for m in caplog.messages if m.startswith("learned egress hosts")] == learned
        assert [m for m in caplog.messages if NO_WAIT in m] == []
        assert outside.hits == 4


def test_with_the_config_service_gone_a_first_call_waits_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(learned_egress, "LEARN_TIMEOUT", 0.3)
    caplog.set_level(logging.WARNING, "meshlib")
    outside = Backend("outside")
    with ExitStack() as stack:
        port = stack.enter_context(serve(outside))
        server = stack.enter_context(ConfigServer(tmp_path / "cp", insecure_open_registry=True))
        mesh = stack.enter_context(learner(server, tmp_path))
        server.stop()
        with mesh.http_client() as client:
            assert client.get(f"http://localhost:{port}/").headers["x-backend"] == "outside"
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


def test_more_hosts_than_a_watch_names_switch_to_the_whole_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learned_egress, "MAX_EGRESS_HOSTS", 3)
    learned = LearnedEgress([f"*/{RATINGS}"], "default")
    woken: list[int] = []
    learned.wake = lambda: woken.append(1)
    table = RoutingTable.build(Snapshot.empty("cluster.local"), "default", {"app": "frontend"})
    first = learned.wanted(table, "a.example.com", None)
    second = learned.wanted(table, "b.example.com", None)
    assert first is not None
    assert second is not None
    assert first is not second
    assert learned.wanted(table, "a.example.com", None) is None, "looked at once per version"
    assert learned.hosts() == [f"*/{RATINGS}", "*/a.example.com", "*/b.example.com"]
    learned.covered(["*/a.example.com"])
    assert first.done()
    assert not second.done()
    assert not learned.whole_registry
    third = learned.wanted(table, "c.example.com", None)
    assert learned.whole_registry
    assert learned.hosts() is None
    assert third is not None
    assert not third.done()
    assert learned.wanted(table, "d.example.com", None) is None, "the whole registry: nothing to ask"
    learned.covered(None)
    assert second.done()
    assert third.done()
    assert woken == [1, 1, 1]


def test_concurrent_first_calls_wait_for_the_same_answer() -> None:
    learned = LearnedEgress([], "default")
    table = RoutingTable.build(Snapshot.empty("cluster.local"), "default", {"app": "frontend"})
    first = learned.wanted(table, "reviews", None)
    # Another request to the same host (or another name of it) before the answer came.
    learned._seen.clear()
    again = learned.wanted(table, "reviews.default", None)
    assert first is not None
    assert again is not None
    assert learned.hosts() == [f"*/{REVIEWS}", "*/reviews.default"]
    learned.covered([f"*/{REVIEWS}", "*/reviews.default"])
    assert first.done()
    assert again.done()
    assert learned.wanted(table, "1.2.3.4", None) is None, "an address is no name the registry serves"


def test_a_call_from_a_snapshot_listener_does_not_hold_the_watcher(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshlib")
    outside = Backend("outside")
    with serve(outside) as port, learner(server, tmp_path) as mesh, mesh.http_client() as client:
        answers: list[int] = []
        mesh.add_listener(lambda _: answers.append(client.get(f"http://localhost:{port}/").status_code))
        version = admin.apply([virtual_service()])["version"]
        assert mesh.wait_for_version(version, timeout=5.0)
        assert wait_for(lambda: answers[:1] == [200])
        assert mesh.learned_egress is not None
        assert mesh.learned_egress.hosts() == ["*/localhost.default.svc.cluster.local"]
    assert [m for m in caplog.messages if NO_WAIT in m] == []
