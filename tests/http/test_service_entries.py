"""ServiceEntry as Istio users write it, against real servers on 127.0.0.1 (and 127.0.0.2).

Names under ``test.internal`` are made to resolve by patching the resolver the process uses
(``socket.getaddrinfo``, which httpx's connections and the mesh's background DNS both ask),
never /etc/hosts; the mesh's own DNS refresher is given a lookup of its own where a test
needs several addresses for one name.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from meshlib import Mesh
from meshlib._net import bind
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.registry import AnnouncedEndpoint
from tests.http.conftest import backend_of
from tests.servers import Backend, serve, wait_for

Scope = dict[str, Any]


@contextmanager
def serve_at(app: Any, host: str, port: int = 0) -> Iterator[int]:
    """``app`` under uvicorn on ``host``:``port`` (0: a free one); yields the port."""
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10), "test server did not start"
    try:
        yield bound
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def twin_servers(first: Any, second: Any) -> Iterator[int]:
    """Two servers on one port: ``first`` on 127.0.0.1, ``second`` on 127.0.0.2."""
    for _ in range(20):
        with ExitStack() as stack:
            port = stack.enter_context(serve_at(first, "127.0.0.1"))
            try:
                stack.enter_context(serve_at(second, "127.0.0.2", port))
            except OSError:
                continue  # the port is taken on 127.0.0.2: try another
            yield port
            return
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """``names[host] = [addresses]``: what the process's resolver answers for those hosts."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in table:
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0)) for address in table[name]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Mesh]]:
    """A frontend Mesh in static mode on the given policy (``lookup``: the DNS refresher's)."""
    meshes: list[Mesh] = []

    def make(policy: str, lookup: Any = None, refresh: float = 0.05) -> Mesh:
        path = tmp_path / f"policy-{len(meshes)}.yaml"
        path.write_text(policy)
        mesh = Mesh("frontend", config=path, static_poll_interval=0.05)
        if lookup is not None:
            mesh.dns.lookup = lookup
            mesh.dns.refresh = refresh
        mesh.rng.seed(20261122)
        meshes.append(mesh.start())
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()


class Flaky:
    """Answers 500 to the paths in ``fail`` (every time) and 503 to the first ``first`` requests."""

    def __init__(self, first: int = 0, fail: tuple[str, ...] = ()) -> None:
        self.first = first
        self.fail = fail
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append((scope["path"], headers))
        status = 500 if scope["path"] in self.fail else 503 if len(self.seen) <= self.first else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"down"})


def entry(name: str, hosts: str, resolution: str, ports: str, extra: str = "") -> str:
    return (
        f"---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\n"
        f"spec:\n  hosts: {hosts}\n  location: MESH_EXTERNAL\n  resolution: {resolution}\n"
        f"  ports: {ports}\n{extra}"
    )


# --- resolution NONE: the original destination, with the entry's policy applied ----------


def test_resolution_none_sends_to_the_requested_host_and_port_with_retries_and_header_edits(
    start: Callable[..., Mesh], names: dict[str, list[str]]
) -> None:
    app = Flaky(first=1)
    with serve_at(app, "127.0.0.1") as port:
        names["legacy.test.internal"] = ["127.0.0.1"]
        mesh = start(
            entry(
                "legacy",
                "[legacy.test.internal]",
                "NONE",
                f"[{{number: {port}, name: http, protocol: HTTP}}]",
            )
            + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy}
spec:
  hosts: [legacy.test.internal]
  http:
  - route: [{destination: {host: legacy.test.internal}}]
    retries: {attempts: 2, retryOn: 5xx}
    headers: {request: {set: {x-through: mesh}}}
"""
        )
        with mesh.http_client() as client:
            answer = client.get(f"http://legacy.test.internal:{port}/orders")
    assert answer.status_code == 200, answer.text
    assert [path for path, _ in app.seen] == ["/orders", "/orders"], "the 503 was retried"
    for _, headers in app.seen:
        assert headers["host"] == f"legacy.test.internal:{port}"  # the host the app asked for
        assert headers["x-through"] == "mesh"


def test_resolution_none_outlier_detection_counts_each_original_address(
    start: Callable[..., Mesh], names: dict[str, list[str]]
) -> None:
    """A wildcard entry (Istio's usual pairing with NONE) and its wildcard DestinationRule:
    each host asked for is its own original destination, ejected on its own."""
    app = Flaky(fail=("/fail",))
    with serve_at(app, "127.0.0.1") as port:
        names["a.test.internal"] = names["b.test.internal"] = ["127.0.0.1"]
        mesh = start(
            entry("wild", '["*.test.internal"]', "NONE", f"[{{number: {port}, name: http, protocol: HTTP}}]")
            + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wild}
spec:
  host: "*.test.internal"
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
"""
        )
        with mesh.http_client() as client:
            assert client.get(f"http://a.test.internal:{port}/fail").status_code == 500
            with pytest.raises(httpx.ConnectError, match=r"no healthy endpoint for a\.test\.internal"):
                client.get(f"http://a.test.internal:{port}/ok")
            assert client.get(f"http://b.test.internal:{port}/ok").status_code == 200
    assert [(path, headers["host"]) for path, headers in app.seen] == [
        ("/fail", f"a.test.internal:{port}"),
        ("/ok", f"b.test.internal:{port}"),
    ]


def test_wildcard_entries_match_most_specific_first(
    start: Callable[..., Mesh], names: dict[str, list[str]]
) -> None:
    eu, anywhere = Backend("eu"), Backend("anywhere")
    with serve(eu) as eu_port, serve_at(anywhere, "127.0.0.1") as port:
        names["shop.test.internal"] = ["127.0.0.1"]
        mesh = start(
            entry("all", '["*.test.internal"]', "NONE", f"[{{number: {port}, name: http}}]")
            + entry(
                "eu",
                '["*.eu.test.internal"]',
                "STATIC",
                "[{number: 80, name: http}]",
                f"  endpoints: [{{address: 127.0.0.1, ports: {{http: {eu_port}}}}}]\n",
            )
        )
        with mesh.http_client() as client:
            assert backend_of(client.get("http://shop.eu.test.internal/")) == "eu"
            assert backend_of(client.get(f"http://shop.test.internal:{port}/")) == "anywhere"
            # A port the wildcard entry does not declare is not its traffic: straight through.
            assert mesh.http_table.resolve("shop.test.internal", port + 1) is None


def test_an_address_in_the_entry_takes_requests_to_that_ip_on_its_ports(start: Callable[..., Mesh]) -> None:
    db, other = Flaky(), Flaky()
    with serve_at(db, "127.0.0.1") as port, serve_at(other, "127.0.0.1") as other_port:
        mesh = start(
            entry(
                "db",
                "[db.test.internal]",
                "NONE",
                f"[{{number: {port}, name: http}}]",
                "  addresses: [127.0.0.0/8]\n",
            )
            + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.test.internal]
  http:
  - route: [{destination: {host: db.test.internal}}]
    headers: {request: {set: {x-entry: db}}}
"""
        )
        with mesh.http_client() as client:
            assert client.get(f"http://127.0.0.1:{port}/").status_code == 200
            assert client.get(f"http://127.0.0.1:{other_port}/").status_code == 200
    assert db.seen[0][1]["x-entry"] == "db"
    assert "x-entry" not in other.seen[0][1], "a port the entry does not declare is not its traffic"


# --- workloadSelector: registered workloads, by labels, in the entry's namespace ----------


def test_a_workload_selector_sends_to_the_registered_workloads_it_selects(tmp_path: Path) -> None:
    selected, other = Backend("selected"), Backend("other")
    with (
        ConfigServer(tmp_path / "cs", reap_interval=0.2, insecure_open_registry=True) as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
        twin_servers(selected, other) as port,
    ):
        admin.apply(
            [
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "ServiceEntry",
                    "metadata": {"name": "details"},
                    "spec": {
                        "hosts": ["details.bookinfo.test"],
                        "location": "MESH_INTERNAL",
                        "resolution": "STATIC",
                        "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": port}],
                        "workloadSelector": {"labels": {"app": "details", "version": "v1"}},
                    },
                }
            ]
        )
        with (
            Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "f") as frontend,
            Mesh(
                "details", labels={"version": "v1"}, control_plane=server.url, data_dir=tmp_path / "a"
            ) as v1,
            Mesh(
                "details", labels={"version": "v2"}, control_plane=server.url, data_dir=tmp_path / "b"
            ) as v2,
            Mesh(
                "details",
                namespace="elsewhere",
                labels={"version": "v1"},
                control_plane=server.url,
                data_dir=tmp_path / "c",
            ) as foreign,
        ):
            v1.announce([AnnouncedEndpoint(address="127.0.0.1", port=port)])
            v2.announce([AnnouncedEndpoint(address="127.0.0.2", port=port)])
            foreign.announce([AnnouncedEndpoint(address="127.0.0.2", port=port)])
            assert wait_for(lambda: len(frontend.snapshot.workloads) == 3)
            (endpoint,) = frontend.snapshot.endpoints("details.bookinfo.test")
            assert (endpoint.address, endpoint.port, endpoint.service_port, endpoint.identity) == (
                "127.0.0.1",
                port,
                80,
                "spiffe://cluster.local/ns/default/sa/details",
            )
            with frontend.http_client() as client:
                answers = [backend_of(client.get("http://details.bookinfo.test/")) for _ in range(6)]
    assert answers == ["selected"] * 6
    assert other.hits == 0


# --- DNS (STRICT_DNS) and DNS_ROUND_ROBIN (LOGICAL_DNS) ----------------------------------


def test_dns_balances_over_every_address_and_dns_round_robin_uses_the_first(
    start: Callable[..., Mesh], names: dict[str, list[str]]
) -> None:
    first, second = Backend("first"), Backend("second")
    answers = {"pool.test.internal": ("127.0.0.1", "127.0.0.2")}
    looked_up: list[str] = []

    async def lookup(name: str) -> tuple[str, ...]:
        looked_up.append(name)
        await asyncio.sleep(0)
        return answers[name]

    with twin_servers(first, second) as port:
        names["pool.test.internal"] = ["127.0.0.2", "127.0.0.1"]  # the system resolver's order
        ports = f"[{{number: 80, name: http, targetPort: {port}}}]"
        endpoints = "  endpoints: [{address: pool.test.internal}]\n"
        mesh = start(
            entry("strict", "[strict.test.internal]", "DNS", ports, endpoints)
            + entry("logical", "[logical.test.internal]", "DNS_ROUND_ROBIN", ports, endpoints)
            + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: strict}
spec: {host: strict.test.internal, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
""",
            lookup=lookup,
        )
        assert wait_for(lambda: mesh.dns.current[0] >= 1)
        assert looked_up[0] == "pool.test.internal", (
            "only resolution DNS names are resolved in the background"
        )
        with mesh.http_client() as client:
            strict = [backend_of(client.get("http://strict.test.internal/")) for _ in range(8)]
            logical = [backend_of(client.get("http://logical.test.internal/")) for _ in range(8)]
            assert sorted(strict) == ["first"] * 4 + ["second"] * 4, "round robin over both addresses"
            assert logical == ["second"] * 8, "one address: the first the resolver returns"
            table = mesh.http_table
            target = table.default_route("strict.test.internal").targets[0]
            assert {e.key for e in table.cluster(target, 80).endpoints} == {
                ("127.0.0.1", port),
                ("127.0.0.2", port),
            }
            target = table.default_route("logical.test.internal").targets[0]
            assert [e.key for e in table.cluster(target, 80).endpoints] == [("pool.test.internal", port)]
            # The background refresh follows a changed answer; requests never wait for DNS.
            generation = mesh.dns.current[0]
            answers["pool.test.internal"] = ("127.0.0.1",)
            assert wait_for(lambda: mesh.dns.current[0] > generation)
            deadline = time.monotonic() + 5
            while (
                time.monotonic() < deadline
                and backend_of(client.get("http://strict.test.internal/")) != "first"
            ):
                pass
            assert {backend_of(client.get("http://strict.test.internal/")) for _ in range(6)} == {"first"}


# --- endpoint weights, through every load balancer ------------------------------------


@pytest.mark.parametrize("lb", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_endpoint_weights_are_honoured_by_the_load_balancer(start: Callable[..., Mesh], lb: str) -> None:
    light, heavy = Backend("light"), Backend("heavy")
    with serve(light) as light_port, serve(heavy) as heavy_port:
        mesh = start(
            entry(
                "weighted",
                "[weighted.test.internal]",
                "STATIC",
                "[{number: 80, name: http}]",
                f"  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {light_port}}}, weight: 1}}\n"
                f"  - {{address: 127.0.0.1, ports: {{http: {heavy_port}}}, weight: 3}}\n",
            )
            + f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: weighted}}
spec: {{host: weighted.test.internal, trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}}}
"""
        )
        count = 400
        with mesh.http_client() as client:
            for _ in range(count):
                assert client.get("http://weighted.test.internal/").status_code == 200
    # Expected 300 of 400 to the heavy one. RANDOM draws: binomial, sd = sqrt(400 * 3/4 * 1/4)
    # = 8.7, allowed 5 sd (the seeded generator makes the run repeatable). One request at a
    # time leaves LEAST_REQUEST with no active counts to weigh: its weighted schedule, like
    # ROUND_ROBIN's, gives exact shares.
    tolerance = 44 if lb == "RANDOM" else 1
    assert abs(heavy.hits - 300) <= tolerance, (lb, heavy.hits, light.hits)
    assert heavy.hits + light.hits == count
