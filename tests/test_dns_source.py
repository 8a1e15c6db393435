"""The DNS discovery source against a real DNS server the test starts on 127.0.0.1.

dnslib serves A, AAAA and SRV records with 1 s TTLs that the tests change while real
uvicorn servers on 127.0.0.1 answer behind a ServiceEntry ``resolution: DNS``; the Mesh
asks that server (``dns_servers``) and every request goes through the mesh client.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshlib import Mesh, NoHealthyUpstreamError
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.dns_resolver import DefaultLookup, DnsResolver
from meshlib.errors import ConfigError
from meshlib.settings import parse_dns_server
from tests.conftest import virtual_service
from tests.dns_server import RunningDns, dns_server
from tests.http.test_service_entries import entry as service_entry
from tests.servers import Backend, serve, wait_for

HOST = "api.mesh.test"
TTL = 1.0  # every record below; the negative TTL (SOA minimum) is 1 s too
# A change is seen within the TTL, plus the time to ask (a query on loopback) and to rebuild
# the tables, which a loaded two-core machine may stretch: still well under the 5 s a fixed
# refresh (no TTL) would take. tests/core/test_dns.py checks the scheduling itself exactly.
FOLLOWED_WITHIN = TTL + 1.0


def entry(address: str, port: str, name: str = "api", host: str = HOST) -> str:
    """``host`` as a ServiceEntry resolution DNS whose one endpoint is ``address``, balanced
    round robin."""
    return service_entry(
        name, f"[{host}]", "DNS", f"[{port}]", f"  endpoints: [{{address: {address}}}]\n"
    ) + (
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {name}}}\n"
        f"spec: {{host: {host}, trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}}}\n"
    )


@pytest.fixture
def dns() -> Iterator[RunningDns]:
    with dns_server() as running:
        yield running


@pytest.fixture
def start(tmp_path: Path, dns: RunningDns) -> Iterator[Callable[[str], Mesh]]:
    """A Mesh in static mode on ``policy``, resolving through the test's DNS server."""
    meshes: list[Mesh] = []

    def make(policy: str) -> Mesh:
        path = tmp_path / f"policy-{len(meshes)}.yaml"
        path.write_text(policy)
        mesh = Mesh("frontend", config=path, static_poll_interval=0.05, dns_servers=[dns.address])
        meshes.append(mesh.start())
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()


def endpoints(mesh: Mesh) -> set[tuple[str, int]]:
    table = mesh.http_table
    return {e.key for e in table.cluster(table.default_route(HOST).targets[0], 80).endpoints}


def weights(mesh: Mesh) -> dict[tuple[str, int], int]:
    table = mesh.http_table
    return {e.key: e.weight for e in table.cluster(table.default_route(HOST).targets[0], 80).endpoints}


def followed(mesh: Mesh, expected: set[tuple[str, int]]) -> float:
    """Seconds until the mesh's endpoints are ``expected`` (fails past the TTL's bound)."""
    changed = time.monotonic()
    assert wait_for(lambda: endpoints(mesh) == expected, FOLLOWED_WITHIN), (
        f"not followed within {FOLLOWED_WITHIN} s: {endpoints(mesh)} != {expected}"
    )
    return time.monotonic() - changed


def served_by(client: httpx.Client, count: int) -> list[str]:
    return [client.get(f"http://{HOST}/").headers["x-backend"] for _ in range(count)]


def test_a_and_aaaa_answers_are_the_endpoints_and_changes_are_followed_within_the_ttl(
    start: Callable[[str], Mesh], dns: RunningDns
) -> None:
    backend = Backend("api")
    zone = dns.zone
    with serve(backend) as port:
        zone.a("api.dns.test", "127.0.0.1")
        mesh = start(entry("api.dns.test", f"{{number: 80, name: http, targetPort: {port}}}"))
        assert wait_for(lambda: endpoints(mesh) == {("127.0.0.1", port)}, 10)
        with mesh.http_client() as client:
            assert served_by(client, 3) == ["api"] * 3
            # The A record goes, an AAAA record comes (IPv4-mapped: the same server on 127.0.0.1).
            zone.aaaa("api.dns.test", "::ffff:127.0.0.1")
            zone.a("api.dns.test")
            followed(mesh, {("::ffff:127.0.0.1", port)})
            assert served_by(client, 3) == ["api"] * 3
            # Both families: both addresses are endpoints.
            zone.a("api.dns.test", "127.0.0.1")
            followed(mesh, {("127.0.0.1", port), ("::ffff:127.0.0.1", port)})
            assert served_by(client, 4) == ["api"] * 4
            assert {c[0] for c in backend.clients if c} == {"127.0.0.1"}
            # NXDOMAIN: no endpoints, requests fail at once (UH) instead of waiting for DNS.
            zone.a("api.dns.test")
            zone.aaaa("api.dns.test")
            followed(mesh, set())
            with pytest.raises(NoHealthyUpstreamError):
                client.get(f"http://{HOST}/")
            # Back again, within the negative TTL of the zone's SOA.
            zone.a("api.dns.test", "127.0.0.1")
            followed(mesh, {("127.0.0.1", port)})
            assert served_by(client, 2) == ["api"] * 2


def test_ttls_are_respected_with_a_floor_for_ttl_zero(start: Callable[[str], Mesh], dns: RunningDns) -> None:
    zone = dns.zone
    zone.a("zero.dns.test", "127.0.0.1", ttl=0)
    zone.a("long.dns.test", "127.0.0.1", ttl=60)
    # Both families: an AAAA that does not exist could be kept only for the SOA's negative TTL.
    zone.aaaa("long.dns.test", "::ffff:127.0.0.1", ttl=60)
    port = "{number: 80, name: http, targetPort: 9}"
    start(entry("zero.dns.test", port) + entry("long.dns.test", port, "long", "long.mesh.test"))
    assert wait_for(
        lambda: zone.queries[("zero.dns.test", "A")] >= 1 and zone.queries[("long.dns.test", "A")]
    )
    first = time.monotonic()
    assert wait_for(lambda: zone.queries[("zero.dns.test", "A")] >= 3, 5), "TTL 0 re-asked about every 1 s"
    elapsed = time.monotonic() - first
    assert elapsed >= 2 * 1.0 - 0.1, f"TTL 0 was asked for again sooner than the 1 s floor ({elapsed:.2f} s)"
    assert zone.queries[("long.dns.test", "A")] == 1, "a 60 s TTL is not asked for again within seconds"


def test_srv_spreads_over_the_targets_at_their_ports_by_weight_and_lowest_priority(
    start: Callable[[str], Mesh], dns: RunningDns
) -> None:
    zone = dns.zone
    one, two, spare = Backend("one"), Backend("two"), Backend("spare")
    with serve(one) as p1, serve(two) as p2, serve(spare) as p3:
        for target in ("a", "b", "c"):
            zone.a(f"{target}.dns.test", "127.0.0.1")
        name = "_http._tcp.api.dns.test"
        zone.srv(name, (0, 1, p1, "a.dns.test"), (0, 1, p2, "b.dns.test"), (1, 1, p3, "c.dns.test"))
        mesh = start(entry(name, "{number: 80, name: http}"))
        assert wait_for(lambda: endpoints(mesh) == {("127.0.0.1", p1), ("127.0.0.1", p2)}, 10)
        assert zone.queries[("a.dns.test", "A")] == 0, "the additional section gave the targets"
        with mesh.http_client() as client:
            assert sorted(served_by(client, 8)) == ["one"] * 4 + ["two"] * 4, "priority 1 is a spare"
            # Weights: SRV weight 3 against 1 is three times the share. Smooth weighted round
            # robin gives each its share of every 4 picks, but a newcomer starts at a random
            # point of its first round: the counts may be one pick off the exact 10/30.
            zone.srv(name, (0, 1, p1, "a.dns.test"), (0, 3, p2, "b.dns.test"), (1, 1, p3, "c.dns.test"))
            assert wait_for(
                lambda: weights(mesh) == {("127.0.0.1", p1): 1, ("127.0.0.1", p2): 3}, FOLLOWED_WITHIN
            )
            picks = served_by(client, 40)
            assert abs(picks.count("one") - 10) <= 1, picks
            assert picks.count("one") + picks.count("two") == 40
            # The lowest priority's targets stop resolving: the next priority takes over. The
            # server no longer sends addresses along, so the targets are looked up.
            zone.additional = False
            zone.a("a.dns.test")
            zone.a("b.dns.test")
            followed(mesh, {("127.0.0.1", p3)})
            assert zone.queries[("a.dns.test", "A")] >= 1
            assert served_by(client, 3) == ["spare"] * 3
            # The SRV name is gone: no endpoints.
            zone.srv(name)
            followed(mesh, set())
            with pytest.raises(NoHealthyUpstreamError):
                client.get(f"http://{HOST}/")


def test_a_failing_dns_server_keeps_the_last_answer_and_is_asked_again(
    start: Callable[[str], Mesh], dns: RunningDns, caplog: pytest.LogCaptureFixture
) -> None:
    zone = dns.zone
    caplog.set_level(logging.DEBUG, logger="meshlib")
    one, two = Backend("one"), Backend("two")
    with serve(one) as p1, serve(two) as p2:
        zone.a("a.dns.test", "127.0.0.1")
        name = "_http._tcp.api.dns.test"
        zone.srv(name, (0, 1, p1, "a.dns.test"))
        mesh = start(entry(name, "{number: 80, name: http}"))
        assert wait_for(lambda: endpoints(mesh) == {("127.0.0.1", p1)}, 10)
        with mesh.http_client() as client:
            zone.servfail = True
            asked = zone.queries[(name, "SRV")]
            assert wait_for(lambda: zone.queries[(name, "SRV")] >= asked + 2, 10), "retried on a backoff"
            assert any("keeping its last answer" in r.getMessage() for r in caplog.records)
            assert endpoints(mesh) == {("127.0.0.1", p1)}
            assert served_by(client, 3) == ["one"] * 3
            # The record changed meanwhile; the server recovers: the new answer is taken on the
            # next retry (at most 2 s into the backoff).
            zone.srv(name, (0, 1, p2, "a.dns.test"))
            zone.servfail = False
            assert wait_for(lambda: endpoints(mesh) == {("127.0.0.1", p2)}, 2 + FOLLOWED_WITHIN)
            assert served_by(client, 3) == ["two"] * 3
            # The server dies (queries time out): still the last answer.
            caplog.clear()
            dns.stop()
            assert wait_for(lambda: any("timed out" in r.getMessage() for r in caplog.records), 10)
            assert endpoints(mesh) == {("127.0.0.1", p2)}
            assert served_by(client, 3) == ["two"] * 3


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("10.0.0.2", ("10.0.0.2", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[fd00::2]", ("fd00::2", 53)),
        ("fd00::2", ("fd00::2", 53)),
    ],
)
def test_dns_servers_are_ip_and_optional_port(text: str, parsed: tuple[str, int]) -> None:
    assert parse_dns_server(text) == parsed


@pytest.mark.parametrize(
    "text", ["dns.example.com:53", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:x", "[::1]53"]
)
def test_a_bad_dns_server_is_refused_naming_the_variable_and_the_value(text: str) -> None:
    with pytest.raises(ConfigError, match=r"MESH_DNS_SERVERS: .* is not a DNS server address") as raised:
        Mesh.from_env({"MESH_SERVICE": "frontend", "MESH_DNS_SERVERS": f"127.0.0.1,{text}"})
    assert repr(text) in str(raised.value)


def test_the_setting_chooses_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = Mesh.from_env({"MESH_SERVICE": "frontend", "MESH_DNS_SERVERS": "127.0.0.1:5353, [::1]:53"})
    assert mesh.settings.dns_server_addresses == (("127.0.0.1", 5353), ("::1", 53))
    assert isinstance(mesh.dns.lookup, DnsResolver)
    assert isinstance(Mesh("frontend", dns_servers="127.0.0.1:5353").dns.lookup, DnsResolver)
    assert isinstance(Mesh("frontend").dns.lookup, DefaultLookup), "unset: the system resolver for A/AAAA"
    monkeypatch.setitem(sys.modules, "dns.asyncresolver", None)  # dnspython not installed
    with pytest.raises(ConfigError, match=r"MESH_DNS_SERVERS=127.0.0.1:5353: .*pip install 'meshlib\[dns\]'"):
        Mesh("frontend", dns_servers=["127.0.0.1:5353"])


async def test_unset_a_and_aaaa_go_to_the_system_resolver_and_srv_needs_dnspython(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookup = DefaultLookup()
    assert "127.0.0.1" in await lookup("localhost")  # /etc/hosts, as the application resolves
    monkeypatch.setitem(sys.modules, "dns.asyncresolver", None)
    with pytest.raises(LookupError, match=r"SRV lookups need dnspython .*meshlib\[dns\]"):
        await lookup("_http._tcp.api.example.com")


SRV_ENTRY = entry("_http._tcp.api.mesh.test", "{number: 80, name: http}")


def test_without_dnspython_a_policy_file_with_an_srv_endpoint_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(SRV_ENTRY)
    monkeypatch.setitem(sys.modules, "dns.asyncresolver", None)  # dnspython not installed
    with pytest.raises(ConfigError) as raised:
        Mesh("frontend", config=path).start()
    assert str(raised.value).count("ServiceEntry default/api: spec.endpoints[0].address:") == 1
    assert "'_http._tcp.api.mesh.test' is an SRV name" in str(raised.value)
    assert "pip install 'meshlib[dns]'" in str(raised.value)
    monkeypatch.delitem(sys.modules, "dns.asyncresolver")  # installed again: the same file works
    with Mesh("frontend", config=path) as mesh:
        assert mesh.version == 1


def test_without_dnspython_a_watching_workload_nacks_an_srv_endpoint_and_keeps_its_config(
    server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dns.asyncresolver", None)
    admin.apply([virtual_service()])
    with Mesh("frontend", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
        assert mesh.version == 1
        admin.apply(list(yaml.safe_load_all(SRV_ENTRY)))  # the config service takes it: others can use it
        assert wait_for(lambda: admin.workloads()["items"][0]["nackVersion"] == 2)
        reason = admin.workloads()["items"][0]["nackReason"]
        assert "ServiceEntry default/api: spec.endpoints[0].address" in reason
        assert "pip install 'meshlib[dns]'" in reason
        assert mesh.version == 1, "the snapshot it cannot use is not applied"
