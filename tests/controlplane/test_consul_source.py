"""The Consul source end to end: a real config service (``consul=`` as ``meshctl serve --consul``)
watching tests/consul_fake.py, a workload Mesh watching the config service, and real HTTP
servers on 127.0.0.1 as the Consul instances. The fake stands in for a Consul agent because
no Consul server installs here; it follows Consul's documented health API and blocking-query
semantics (its docstring says how)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.consul_source import ConsulSettings
from meshlib.controlplane.server import ConfigServer
from meshlib.errors import ConfigError
from meshlib.policy.discovery import ConsulTarget
from meshlib.policy.resources import ResourceKey
from tests.consul_fake import FakeConsul
from tests.etcd import running_etcd
from tests.servers import Backend, serve, wait_for

WEB = "web.default.svc.cluster.local"
WAIT = 30.0  # the blocking queries' wait: long, so an early answer is plainly a change


def consul_entry(name: str = "web", annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {
            "name": name,
            "annotations": {"discovery.meshlib.io/source": "consul", **(annotations or {})},
        },
        "spec": {
            "hosts": [name],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            **spec,
        },
    }


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    with FakeConsul() as fake:
        yield fake


def settings(fake: FakeConsul, token: str | None = None) -> ConsulSettings:
    return ConsulSettings(fake.url, token, wait=WAIT, backoff=(0.05, 0.2))


@pytest.fixture
def control(tmp_path: Path, consul: FakeConsul) -> Iterator[tuple[ConfigServer, ControlPlaneClient]]:
    with (
        ConfigServer(
            tmp_path / "cs", reap_interval=0.2, insecure_open_registry=True, consul=settings(consul)
        ) as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        yield server, admin


@pytest.fixture
def backends() -> Iterator[dict[str, tuple[Backend, int]]]:
    with ExitStack() as stack:
        found = {}
        for name in ("a", "b", "c", "d"):
            backend = Backend(name)
            found[name] = (backend, stack.enter_context(serve(backend)))
        yield found


def ports(mesh: Mesh, host: str = WEB) -> set[int]:
    return {e.port for e in mesh.snapshot.endpoints(host)}


def names(mesh: Mesh, count: int = 12, path: str = "http://web/") -> set[str]:
    with mesh.http_client() as client:
        return {client.get(path).json()["name"] for _ in range(count)}


def test_requests_reach_passing_instances_only_and_a_critical_check_withdraws_within_a_second(
    control: tuple[ConfigServer, ControlPlaneClient],
    consul: FakeConsul,
    backends: dict[str, tuple[Backend, int]],
    tmp_path: Path,
) -> None:
    server, admin = control
    for name in ("a", "b", "c"):
        consul.register("web", f"web-{name}", "127.0.0.1", backends[name][1], node=f"node-{name}")
    consul.set_status("web-c", "critical")
    admin.apply([consul_entry()])
    with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
        a, b, c = (backends[n][1] for n in "abc")
        assert wait_for(lambda: ports(mesh) == {a, b}, 5)
        assert names(mesh) == {"a", "b"}
        started = time.monotonic()
        consul.set_status("web-b", "critical")
        assert wait_for(lambda: ports(mesh) == {a}, 5)
        assert time.monotonic() - started < 1.0
        assert names(mesh) == {"a"}
        consul.set_status("web-c", "passing")  # back: it serves again
        consul.register("web", "web-d", "127.0.0.1", backends["d"][1], node="node-d")
        assert wait_for(lambda: ports(mesh) == {a, c, backends["d"][1]}, 5)
        assert names(mesh, 20) == {"a", "c", "d"}
        consul.deregister("web-a")
        assert wait_for(lambda: ports(mesh) == {c, backends["d"][1]}, 5)


def test_a_blocking_query_returns_on_change_and_an_unchanged_answer_makes_no_version(
    control: tuple[ConfigServer, ControlPlaneClient], consul: FakeConsul
) -> None:
    server, admin = control
    consul.register("web", "web-1", "10.0.0.1", 8080)
    admin.apply([consul_entry()])
    assert server.state is not None
    state = server.state
    assert wait_for(lambda: len(state.discovered(_target("web")) or ()) == 1, 5)
    # The watch is now held by the fake (index set, wait 30s): received, not answered.
    assert wait_for(lambda: consul.received == len(consul.queries) + 1, 5)
    held = len(consul.queries)
    version = state.version
    consul.register("web", "web-2", "10.0.0.2", 8080)
    assert wait_for(lambda: state.version == version + 1, 5)
    answered = [q for q in consul.queries[held:] if q.index and q.returned_index > q.index]
    assert answered, consul.queries
    first = answered[0]
    assert first.wait == WAIT
    assert first.answered - first.started < 1.0  # returned on the change, long before its wait
    # A write that changes nothing a client sees: the held query returns, the answer is
    # handled (the next query only goes out after), and no version is made.
    assert wait_for(lambda: consul.received == len(consul.queries) + 1, 5)  # one held again
    before = consul.received
    consul.touch("web")
    assert wait_for(lambda: consul.received == before + 1, 5)
    assert state.version == version + 1
    # Held, not spinning: no new query while nothing changes.
    time.sleep(0.5)
    assert consul.received == before + 1


def test_meta_and_tags_become_labels_that_drive_destination_rule_subsets(
    control: tuple[ConfigServer, ControlPlaneClient],
    consul: FakeConsul,
    backends: dict[str, tuple[Backend, int]],
    tmp_path: Path,
) -> None:
    server, admin = control
    consul.register("web", "web-a", "127.0.0.1", backends["a"][1], meta={"version": "v1"})
    consul.register("web", "web-b", "127.0.0.1", backends["b"][1], tags=["version=v2", "canary"])
    consul.register("web", "web-c", "127.0.0.1", backends["c"][1], tags=["version|v2"])  # Istio's form
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "web"},
        "spec": {
            "host": "web",
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
                {"name": "canary", "labels": {"canary": "true"}},
            ],
        },
    }

    def route(subset: str) -> dict[str, Any]:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web"},
            "spec": {
                "hosts": ["web"],
                "http": [{"route": [{"destination": {"host": "web", "subset": subset}}]}],
            },
        }

    admin.apply([consul_entry(), rule, route("v2")])
    with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
        assert wait_for(lambda: len(ports(mesh)) == 3, 5)
        assert names(mesh, 20) == {"b", "c"}
        labels = {e.port: dict(e.labels) for e in mesh.snapshot.endpoints(WEB)}
        assert labels[backends["a"][1]] == {"version": "v1"}
        assert labels[backends["b"][1]] == {"canary": "true", "version": "v2"}
        version = mesh.version
        admin.apply([route("canary")])
        assert wait_for(lambda: mesh.version > version, 5)
        assert names(mesh) == {"b"}
        version = mesh.version
        admin.apply([route("v1")])
        assert wait_for(lambda: mesh.version > version, 5)
        assert names(mesh) == {"a"}


def test_a_consul_outage_keeps_the_last_endpoints_and_says_so(
    control: tuple[ConfigServer, ControlPlaneClient],
    consul: FakeConsul,
    backends: dict[str, tuple[Backend, int]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, admin = control
    consul.register("web", "web-a", "127.0.0.1", backends["a"][1])
    admin.apply([consul_entry()])
    with (
        Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh,
        caplog.at_level(logging.WARNING, logger="meshlib.controlplane.consul"),
    ):
        assert wait_for(lambda: ports(mesh) == {backends["a"][1]}, 5)
        version = mesh.version
        consul.stop()
        assert wait_for(lambda: admin.discovery()["consul"][0]["state"] == "failing", 5)
        status = admin.discovery()["consul"][0]
        assert status["stale"] is True
        assert status["instances"] == 1
        assert "unreachable" in status["error"]
        assert any("keeping the last 1 instance(s)" in r.getMessage() for r in caplog.records)
        assert names(mesh) == {"a"}  # the workload still reaches what Consul said last
        assert mesh.version == version
        consul.start()  # the same port: the agent is back
        consul.register("web", "web-b", "127.0.0.1", backends["b"][1])
        assert wait_for(lambda: ports(mesh) == {backends["a"][1], backends["b"][1]}, 5)
        assert admin.discovery()["consul"][0]["state"] == "watching"


def test_instances_known_by_host_name_are_not_used_by_a_static_entry_and_that_is_said(
    control: tuple[ConfigServer, ControlPlaneClient],
    consul: FakeConsul,
    backends: dict[str, tuple[Backend, int]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, admin = control
    consul.register("web", "web-a", "127.0.0.1", backends["a"][1])
    consul.register("web", "web-h", "web-h.node.consul", backends["b"][1])
    with caplog.at_level(logging.WARNING, logger="meshlib.controlplane.consul"):
        admin.apply([consul_entry()])
        with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
            assert wait_for(lambda: ports(mesh) == {backends["a"][1]}, 5)
            assert names(mesh) == {"a"}  # STATIC: the IP-addressed instance only, as Istio
            status = admin.discovery()["consul"][0]
    assert status["instances"] == 2
    reason = status["skipped"]["default/web"]
    assert "web-h.node.consul" in reason
    assert "set resolution DNS" in reason
    assert any("ServiceEntry default/web: 1 Consul instance" in r.getMessage() for r in caplog.records)
    admin.apply([consul_entry(resolution="DNS")])  # DNS uses host names: nothing is skipped
    assert wait_for(lambda: admin.discovery()["consul"][0]["skipped"] == {}, 5)


def test_the_acl_token_is_sent_and_never_logged_or_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "8f0e6b42-6d5e-4b3c-9a51-4e3c1d2b9f00"
    with FakeConsul(token=secret) as fake, caplog.at_level(logging.DEBUG):
        fake.register("web", "web-1", "10.0.0.1", 8080)
        wrong = ConsulSettings(fake.url, "not-the-token", wait=WAIT, backoff=(0.05, 0.2))
        assert secret not in repr(settings(fake, secret))
        for configured, works in ((settings(fake, secret), True), (wrong, False)):
            with (
                ConfigServer(tmp_path / str(works), insecure_open_registry=True, consul=configured) as server,
                ControlPlaneClient(server.url, server.admin_token) as admin,
            ):
                admin.apply([consul_entry()])
                want = "watching" if works else "failing"
                assert wait_for(lambda w=want: admin.discovery()["consul"][0]["state"] == w, 5)
                status = admin.discovery()["consul"][0]
                if works:
                    assert status["instances"] == 1
                else:
                    assert "ACL token" in status["error"]
                    assert "not-the-token" not in str(status)
        assert secret in fake.seen_tokens
        assert secret not in caplog.text
        assert "not-the-token" not in caplog.text


def test_entries_that_name_consul_are_refused_when_inconsistent(
    control: tuple[ConfigServer, ControlPlaneClient],
) -> None:
    _, admin = control
    cases = [
        (consul_entry(endpoints=[{"address": "10.0.0.1"}]), "spec.endpoints", "remove the listed endpoints"),
        (consul_entry(resolution="NONE"), "spec.resolution", "needs resolution STATIC"),
        (
            consul_entry(ports=[{"number": 80, "name": "http"}, {"number": 81, "name": "admin"}]),
            "spec.ports",
            "exactly one port",
        ),
        (
            consul_entry(workloadSelector={"labels": {"app": "web"}}),
            "spec.workloadSelector",
            "not from the registry",
        ),
        (
            consul_entry(annotations={"discovery.meshlib.io/consul-svc": "web"}),
            "metadata.annotations",
            "unknown annotation",
        ),
        (
            consul_entry(annotations={"discovery.meshlib.io/source": "eureka"}),
            "metadata.annotations",
            "unknown discovery source",
        ),
        (
            consul_entry(annotations={"discovery.meshlib.io/consul-service": "web/../x"}),
            "metadata.annotations",
            "invalid discovery.meshlib.io/consul-service",
        ),
    ]
    for manifest, path, message in cases:
        with pytest.raises(ConfigError) as caught:
            admin.apply([manifest])
        issues = caught.value.issues
        assert any(i.path.startswith(path) and message in i.message for i in issues), (path, issues)
    orphan = consul_entry()
    del orphan["metadata"]["annotations"]["discovery.meshlib.io/source"]
    orphan["metadata"]["annotations"]["discovery.meshlib.io/consul-service"] = "web"
    with pytest.raises(ConfigError, match="has effect only with"):
        admin.apply([orphan])
    assert admin.list("ServiceEntry")["items"] == []


def test_a_config_service_without_consul_refuses_entries_that_name_it(admin: ControlPlaneClient) -> None:
    with pytest.raises(ConfigError, match="start meshctl serve with --consul") as caught:
        admin.apply([consul_entry()])
    assert caught.value.issues[0].path == "metadata.annotations['discovery.meshlib.io/source']"


def test_deleting_the_entry_stops_the_watch_and_forgets_its_instances(
    control: tuple[ConfigServer, ControlPlaneClient], consul: FakeConsul
) -> None:
    server, admin = control
    assert server.state is not None
    state = server.state
    consul.register("web", "web-1", "10.0.0.1", 8080)
    consul.register("api", "api-1", "10.0.0.9", 9090)
    admin.apply([consul_entry(), consul_entry("api")])
    assert wait_for(lambda: [s["instances"] for s in admin.discovery()["consul"]] == [1, 1], 5)
    admin.delete(ResourceKey("ServiceEntry", "default", "api"))
    assert wait_for(lambda: [s["service"] for s in admin.discovery()["consul"]] == ["web"], 5)
    assert wait_for(lambda: state.discovered(_target("api")) is None, 5)
    assert [r["service"] for r in _payload(state)["discovered"]] == ["web"]


def _target(service: str) -> ConsulTarget:
    return ConsulTarget(service)


def _payload(state: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(state.payload())
    return loaded


def test_replicas_on_etcd_store_each_change_once_and_agree_on_its_version(
    tmp_path: Path, consul: FakeConsul
) -> None:
    """Two replicas watch the same Consul; whichever stores a change first makes the version,
    the other finds it stored and writes nothing: one version per change, the same on both."""
    consul.register("web", "web-1", "10.0.0.1", 8080)
    with ExitStack() as stack:
        etcd = stack.enter_context(running_etcd(tmp_path / "etcd"))
        replicas = [
            stack.enter_context(
                ConfigServer(
                    tmp_path / name,
                    store_url=etcd,
                    reap_interval=0.2,
                    insecure_open_registry=True,
                    consul=settings(consul),
                )
            )
            for name in ("a", "b")
        ]
        states = [r.state for r in replicas]
        assert states[0] is not None
        assert states[1] is not None
        one, two = states[0], states[1]
        admin = stack.enter_context(ControlPlaneClient(replicas[0].url, replicas[0].admin_token))
        applied = admin.apply([consul_entry()])["version"]

        def agreed(count: int) -> bool:
            found = [len(s.discovered(_target("web")) or ()) for s in (one, two)]
            return found == [count, count] and one.version == two.version

        assert wait_for(lambda: agreed(1), 5)
        assert one.version == applied + 1  # the first answer: one version, not one per replica
        for step, instance in enumerate(("web-2", "web-3"), start=2):
            consul.register("web", instance, f"10.0.0.{step}", 8080)
            assert wait_for(lambda n=step: agreed(n), 5)
            assert one.version == applied + step
            assert _payload(one)["discovered"] == _payload(two)["discovered"]
