"""Three config-service processes on one etcd; one killed with SIGKILL while workloads watch it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.registry import AnnouncedEndpoint
from tests.conftest import virtual_service
from tests.etcd import running_etcd
from tests.servers import free_port, wait_for

SERVICES = ("frontend", "reviews", "ratings")
LEASE_TTL = 5  # the replicas' etcd leases (s): a dead replica's workloads go this long after it


class Replica:
    """``meshctl serve --store etcd://...`` in its own process."""

    def __init__(self, data_dir: Path, etcd: str) -> None:
        self.data_dir, self.etcd = data_dir, etcd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        command = [sys.executable, "-m", "meshlib", "serve", "--store", self.etcd]
        command += ["--port", str(self.port), "--data-dir", str(self.data_dir), "--workload-ttl", "30"]
        command += ["--etcd-lease-ttl", str(LEASE_TTL)]
        self.log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, (self.data_dir.parent / f"{self.data_dir.name}.log").read_text()
        try:
            return httpx.get(f"{self.url}/v1/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    with running_etcd(tmp_path / "etcd") as etcd:
        started = [Replica(tmp_path / f"replica-{i}", etcd).start() for i in range(3)]  # all at once
        try:
            for each in started:
                assert wait_for(each.ready, 30), f"{each.url} did not start"
            yield started
        finally:
            for each in started:
                each.stop()


def test_a_killed_replica_loses_no_workload_its_config_or_its_identity(
    tmp_path: Path, replicas: list[Replica]
) -> None:
    first, second, third = replicas
    # Started together, they settled on one admin token (and one CA) in etcd.
    assert first.admin_token == second.admin_token == third.admin_token
    urls = [r.url for r in replicas]
    with ExitStack() as stack:
        admin = stack.enter_context(ControlPlaneClient(second.url, second.admin_token))
        meshes = [
            stack.enter_context(
                Mesh(
                    name,
                    control_plane=urls,  # the first replica first: it is the one killed
                    token=admin.create_token(name)["token"],
                    data_dir=tmp_path / name,
                    certificate_ttl=6,
                )
            )
            for name in SERVICES
        ]
        # reviews serves (registered through the first replica, whose lease keeps it live);
        # so does a ghost that dies with that replica: registered there, and never watching.
        meshes[1].announce([AnnouncedEndpoint(address="127.0.0.1", port=9080)])
        ghost = {"id": "ghost-1", "service": "ghost", "endpoints": [{"address": "127.0.0.1", "port": 9099}]}
        put = httpx.put(
            f"{first.url}/v1/workloads/ghost-1",
            json=ghost,
            headers={"authorization": f"Bearer {first.admin_token}"},
        )
        assert put.status_code == 200, put.text
        version = admin.apply([virtual_service("reviews", v1=80, v2=20)])["version"]
        assert all(m.wait_for_version(version, 5) for m in meshes)
        assert {w.service for w in meshes[0].snapshot.workloads} == {"reviews", "ghost"}
        issued = {}
        for mesh in meshes:
            assert mesh.workload_identity is not None
            expires = mesh.workload_identity.expires
            assert expires is not None
            issued[mesh.service] = expires

        first.kill()
        with ControlPlaneClient(third.url, third.admin_token) as other:
            version = other.apply([virtual_service("reviews", v1=50, v2=50)])["version"]
        applied = time.monotonic()
        assert all(m.wait_for_version(version, 5) for m in meshes)
        converged = time.monotonic() - applied
        assert converged < 1.0, f"the workloads took {converged:.2f}s to reach version {version}"
        for mesh in meshes:
            routes = [r for r in mesh.snapshot.resources if r.kind == "VirtualService"]
            assert [r.name for r in routes] == ["reviews"]

        # The first replica's lease runs out: the ghost is withdrawn everywhere (a replica left
        # moves the version); reviews, taken over by the replica it watches now, stays.
        def registry() -> set[str]:
            return {w.service for w in meshes[0].snapshot.workloads}

        assert wait_for(lambda: registry() == {"reviews"}, LEASE_TTL + 5), registry()
        with ControlPlaneClient(third.url, third.admin_token) as other:
            listed = {i["registration"]["service"]: i["lost"] for i in other.workloads()["items"]}
        assert (listed["ghost"], listed["reviews"]) == (True, False)
        version = meshes[0].snapshot.version  # the one that withdrew the ghost

        # Certificates keep being issued (a 6 s TTL renews every ~3 s), by the replicas left.
        def renewed() -> bool:
            return all(
                m.workload_identity is not None
                and m.workload_identity.expires is not None
                and m.workload_identity.expires > issued[m.service]
                for m in meshes
            )

        assert wait_for(renewed, 10)
        # A workload starting now, its first replica dead, still gets its identity and config.
        late = stack.enter_context(
            Mesh(
                "details",
                control_plane=urls,
                token=admin.create_token("details")["token"],
                data_dir=tmp_path / "details",
            )
        )
        assert late.workload_identity is not None
        assert late.workload_identity.valid()
        assert late.wait_for_version(version, 5)

        # The killed replica, restarted on its data dir, catches up and serves changes again.
        first.log.close()
        first.start()
        assert wait_for(first.ready, 30)
        with ControlPlaneClient(first.url, first.admin_token) as again:
            assert again.list("VirtualService")["version"] == version
            version = again.apply([virtual_service("reviews", v1=0, v2=100)])["version"]
        assert all(m.wait_for_version(version, 5) for m in [*meshes, late])
