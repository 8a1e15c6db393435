"""Mesh against a real config service: watch, ACK/NACK, last-known-good, failover, static mode."""

from __future__ import annotations

import copy
import dataclasses
import json
import stat
import time
from pathlib import Path
from typing import Any

import certifi
import pytest

from meshlib import ConfigError, Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.last_known_good import LKG_FILE
from meshlib.registry import AnnouncedEndpoint
from tests.conftest import destination_rule, virtual_service
from tests.servers import wait_for

REVIEWS = "reviews.default.svc.cluster.local"


def weights(mesh: Mesh) -> list[int]:
    vs = mesh.snapshot.virtual_service(REVIEWS)
    assert vs is not None
    return [d.weight for d in vs.spec.http[0].route]


def test_apply_reaches_a_watching_mesh_within_a_second(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path
) -> None:
    admin.apply([virtual_service(), destination_rule()])
    with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
        assert (mesh.version, mesh.source, mesh.ready) == (1, "control-plane", True)
        assert weights(mesh) == [80, 20]
        started = time.monotonic()
        version = admin.apply([virtual_service(v1=30, v2=70)])["version"]
        assert mesh.wait_for_version(version, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert weights(mesh) == [30, 70]
        assert wait_for(lambda: admin.workloads()["items"][0]["ackedVersion"] == version)
        (item,) = admin.workloads()["items"]
        assert item["identity"] == "spiffe://cluster.local/ns/default/sa/frontend"
        assert item["connected"] is True


async def test_async_context_manager_sees_new_versions(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path
) -> None:
    async with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
        assert mesh.version == 0
        version = admin.apply([virtual_service()])["version"]
        assert mesh.wait_for_version(version, timeout=1.0)
        assert weights(mesh) == [80, 20]
    assert admin.workloads()["items"] == [], "closing deregisters"


def test_last_known_good_is_private_and_used_when_the_service_is_down(tmp_path: Path) -> None:
    data = tmp_path / "wl"
    with (
        ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        admin.apply([virtual_service(v1=60, v2=40)])
        with Mesh("frontend", control_plane=server.url, data_dir=data) as mesh:
            assert mesh.version == 1
        url = server.url
    assert stat.S_IMODE((data / LKG_FILE).stat().st_mode) == 0o600
    started = time.monotonic()
    with Mesh("frontend", control_plane=url, data_dir=data, startup_timeout=2.0) as offline:
        assert time.monotonic() - started < 3.0
        assert (offline.source, offline.version, offline.ready) == ("last-known-good", 1, True)
        assert weights(offline) == [60, 40]
        health = offline.health()
        assert health["connected"] is False
        assert url in health["lastError"]


def test_without_service_or_copy_the_mesh_starts_not_ready(tmp_path: Path) -> None:
    with Mesh("frontend", control_plane="http://127.0.0.1:9", data_dir=tmp_path, startup_timeout=1.0) as mesh:
        assert (mesh.source, mesh.ready, mesh.version) == ("none", False, 0)
        assert mesh.snapshot.virtual_service(REVIEWS) is None


def test_mesh_reconnects_after_the_service_restarts(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    first = ConfigServer(data, insecure_open_registry=True).start()
    port = first.port
    with Mesh("frontend", control_plane=first.url, data_dir=tmp_path / "wl") as mesh:
        first.stop()
        time.sleep(0.3)
        with (
            ConfigServer(data, port=port, insecure_open_registry=True) as second,
            ControlPlaneClient(second.url, second.admin_token) as admin,
        ):
            version = admin.apply([virtual_service()])["version"]
            assert mesh.wait_for_version(version, timeout=10.0), mesh.health()
            assert mesh.health()["connected"] is True
            assert wait_for(
                lambda: [w["registration"]["id"] for w in admin.workloads()["items"]] == [mesh.workload_id]
            )


def test_failover_to_the_next_config_service(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path
) -> None:
    admin.apply([virtual_service()])
    dead = "http://127.0.0.1:9"
    with Mesh(
        "frontend", control_plane=[dead, server.url], data_dir=tmp_path / "wl", startup_timeout=1.0
    ) as mesh:
        assert mesh.wait_for_version(1, timeout=10.0), mesh.health()
        assert mesh.health()["controlPlane"] == server.url


def test_announced_endpoints_reach_other_workloads(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path
) -> None:
    admin.apply([destination_rule()])
    with (
        Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "a") as client,
        Mesh(
            "reviews", labels={"version": "v2"}, control_plane=server.url, data_dir=tmp_path / "b"
        ) as backend,
    ):
        backend.announce([AnnouncedEndpoint(address="127.0.0.1", port=9080)])
        assert wait_for(lambda: len(client.snapshot.endpoints(REVIEWS)) == 1)
        (endpoint,) = client.snapshot.endpoints(REVIEWS, "v2")
        assert (endpoint.address, endpoint.port, endpoint.identity) == (
            "127.0.0.1",
            9080,
            "spiffe://cluster.local/ns/default/sa/reviews",
        )
        assert client.snapshot.endpoints(REVIEWS, "v1") == ()
    assert wait_for(lambda: admin.workloads()["items"] == [])


def test_a_workload_with_egress_hosts_receives_only_their_endpoints(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path
) -> None:
    ratings_host = "ratings.default.svc.cluster.local"
    with (
        Mesh(
            "frontend", control_plane=server.url, data_dir=tmp_path / "f", egress_hosts=["./reviews"]
        ) as client,
        Mesh("reviews", control_plane=server.url, data_dir=tmp_path / "r") as reviews,
        Mesh("ratings", control_plane=server.url, data_dir=tmp_path / "t") as ratings,
    ):
        reviews.announce([AnnouncedEndpoint(address="127.0.0.1", port=9080)])
        assert wait_for(lambda: len(client.snapshot.endpoints(REVIEWS)) == 1)
        ratings.announce([AnnouncedEndpoint(address="127.0.0.1", port=9090)])
        assert wait_for(lambda: len(reviews.snapshot.endpoints(ratings_host)) == 1)

        def frontend() -> dict[str, Any]:
            listing = admin.workloads()
            (item,) = [i for i in listing["items"] if i["registration"]["service"] == "frontend"]
            return {**item, "current": listing["version"]}

        # Not sent, not even woken: it stays at its version and is as current as one that acked.
        assert wait_for(lambda: frontend()["syncedVersion"] == frontend()["current"])
        assert frontend()["ackedVersion"] < frontend()["current"]
        assert client.snapshot.endpoints(ratings_host) == ()
        reviews.announce(
            [
                AnnouncedEndpoint(address="127.0.0.1", port=9080),
                AnnouncedEndpoint(address="127.0.0.1", port=9081),
            ]
        )
        assert wait_for(lambda: len(client.snapshot.endpoints(REVIEWS)) == 2)
        assert client.version == admin.workloads()["version"]
        assert client.snapshot.endpoints(ratings_host) == ()


def test_a_snapshot_the_workload_cannot_use_is_nacked_and_the_old_one_kept(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path
) -> None:
    admin.apply([virtual_service()])
    with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
        assert mesh.version == 1
        # Simulate a newer config service serving a field this meshlib does not know.
        state = server.state
        assert state is not None
        item = state.resources()[0]
        manifest = copy.deepcopy(item.manifest)
        manifest["spec"]["http"][0]["sessionPersistence"] = {"type": "COOKIE"}
        # A stored item is never changed in place: the snapshot encodes each item once.
        state._resources[item.key] = dataclasses.replace(item, manifest=manifest)
        admin.apply([destination_rule()])  # a real change: version 2 goes out with both
        assert wait_for(lambda: admin.workloads()["items"][0]["nackVersion"] == 2)
        (item_view,) = admin.workloads()["items"]
        assert "unknown field 'sessionPersistence'" in item_view["nackReason"]
        assert mesh.version == 1, "the rejected version is not applied"
        assert weights(mesh) == [80, 20]


def test_static_mode_reads_and_reloads_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(virtual_service()))
    with Mesh("frontend", config=policy, static_poll_interval=0.05) as mesh:
        assert (mesh.source, mesh.version) == ("static", 1)
        assert weights(mesh) == [80, 20]
        policy.write_text(json.dumps(virtual_service(v1=10, v2=90)))
        assert mesh.wait_for_version(2, timeout=3.0)
        assert weights(mesh) == [10, 90]
        policy.write_text("spec: [unclosed")
        time.sleep(0.5)
        assert (mesh.version, weights(mesh)) == (2, [10, 90]), "an invalid edit keeps the current config"
        assert "kept the current config" in caplog.text


def test_static_mode_applies_a_mixed_file_and_logs_what_it_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = tmp_path / "bookinfo.yaml"
    gateway = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bookinfo-gateway}\nspec: {}\n"
    )
    policy.write_text(gateway + "---\n" + json.dumps(virtual_service()))
    caplog.set_level("INFO", logger="meshlib")
    with Mesh("frontend", config=policy) as mesh:
        assert weights(mesh) == [80, 20]
    assert (
        f"skipped: {policy}:1: Gateway default/bookinfo-gateway: meshlib has no ingress gateway"
        in caplog.text
    )


def test_static_mode_refuses_invalid_policy_at_start(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(virtual_service(v1=10, v2=-10)))
    with pytest.raises(ConfigError, match=r"policy.yaml:1: VirtualService default/reviews"):
        Mesh("frontend", config=policy).start()


def test_from_env_reads_every_mesh_variable(tmp_path: Path) -> None:
    mesh = Mesh.from_env(
        {
            "MESH_SERVICE": "orders",
            "MESH_NAMESPACE": "shop",
            "MESH_LABELS": "version=v2, zone=a",
            "MESH_CONTROL_PLANE": "http://10.0.0.1:15010, http://10.0.0.2:15010/",
            "MESH_TOKEN": "t0ken",
            "MESH_DATA_DIR": str(tmp_path),
            "MESH_TRUST_DOMAIN": "example.org",
        }
    )
    s = mesh.settings
    assert (s.service, s.namespace, dict(s.labels)) == ("orders", "shop", {"version": "v2", "zone": "a"})
    assert s.control_plane == ("http://10.0.0.1:15010", "http://10.0.0.2:15010")
    assert (s.token, s.data_dir, s.trust_domain) == ("t0ken", tmp_path, "example.org")
    assert mesh.identity == "spiffe://example.org/ns/shop/sa/orders"
    assert "t0ken" not in repr(s)


def test_from_env_passes_the_control_plane_ca_on(tmp_path: Path) -> None:
    env = {"MESH_SERVICE": "orders", "MESH_CONTROL_PLANE": "https://10.0.0.1:15010"}
    mesh = Mesh.from_env({**env, "MESH_CONTROL_PLANE_CA": certifi.where()})
    assert mesh.settings.control_plane_ca == Path(certifi.where())
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ConfigError, match=r"MESH_CONTROL_PLANE_CA: .*no-such-ca.pem: not a readable PEM"):
        Mesh.from_env({**env, "MESH_CONTROL_PLANE_CA": str(missing)})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MESH_SERVICE is required"),
        ({"MESH_SERVICE": "Orders"}, "MESH_SERVICE: invalid name 'Orders'"),
        ({"MESH_SERVICE": "orders", "MESH_LABELS": "version"}, "MESH_LABELS: 'version' is not key=value"),
        ({"MESH_SERVICE": "orders", "MESH_CONTROL_PLANE": "10.0.0.1:15010"}, "is not an http(s) URL"),
    ],
)
def test_from_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Mesh.from_env(env)
    assert message in str(caught.value)
