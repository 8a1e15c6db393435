"""The config service against an attacker who can reach its port (the security-hardening
issue's cases 1, 3, 4, 5 and 7), on a real config service over real HTTP. Every refusal
says why and changes nothing."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlib.cli.main import main as meshctl
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.core.hosts import normalize_host
from tests.servers import wait_for

REVIEWS = "reviews.default.svc.cluster.local"


def registration(wid: str, service: str, namespace: str = "default", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": wid,
        "service": service,
        "namespace": namespace,
        "endpoints": [{"address": "127.0.0.1", "port": 9080}],
    }
    body.update(extra)
    return body


def put(server: ConfigServer, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.put(f"{server.url}/v1/workloads/{body['id']}", json=body, headers=headers)


def registry(admin: ControlPlaneClient) -> list[tuple[str, str, str]]:
    return sorted(
        (w["registration"]["id"], w["registration"]["namespace"], w["registration"]["service"])
        for w in admin.workloads()["items"]
    )


def snapshot_hosts(server: ConfigServer, admin_token: str) -> set[tuple[str, str]]:
    """(normalised host, workload id) of every registry entry the snapshot hands out."""
    data = httpx.get(f"{server.url}/v1/snapshot", headers={"authorization": f"Bearer {admin_token}"}).json()
    return {(normalize_host(w["service"], w["namespace"]), w["id"]) for w in data["workloads"]}


# --- case 1: the token binding is checked on the name the snapshot files endpoints under ----

SPELLINGS = [
    "Reviews",
    " reviews",
    "reviews ",
    "reviews:1",
    "reviews.",
    "REVIEWS",
    "reviews.default",
    "reviews.default.svc",
    "reviews.default.svc.cluster.local",
    "reviews\x00",
    "reviews\r\n",
    "reviews\u200b",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_spelling_of_a_protected_service_registers_without_its_token(
    server: ConfigServer, admin: ControlPlaneClient, spelling: str
) -> None:
    admin.create_token("reviews")
    for namespace in ("default", "evil"):
        answer = put(server, registration("attacker-1", spelling, namespace))
        assert answer.status_code in (400, 401), answer.text
    assert registry(admin) == []
    assert snapshot_hosts(server, server.admin_token) == set()


def test_the_exact_name_needs_the_token_and_the_token_registers_it(
    server: ConfigServer, admin: ControlPlaneClient
) -> None:
    token = admin.create_token("reviews")["token"]
    assert put(server, registration("attacker-1", "reviews")).status_code == 401
    assert put(server, registration("reviews-1", "reviews"), token).status_code == 200
    assert snapshot_hosts(server, server.admin_token) == {(REVIEWS, "reviews-1")}


_spelling = st.one_of(
    st.sampled_from(SPELLINGS),
    st.builds(
        lambda first, pre, post, suffix: pre + first + "eviews" + post + suffix,
        st.sampled_from(["r", "R", "\u0440"]),  # the last is Cyrillic
        st.sampled_from(["", " ", "\t", "\u00a0", "."]),
        st.sampled_from(["", " ", ".", ":", ":80", "\n", "\x00"]),
        st.sampled_from(["", ".default", ".default.svc", ".default.svc.cluster.local", ".evil", ".evil.svc"]),
    ),
    st.text(min_size=1, max_size=30),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spelling=_spelling, namespace=st.sampled_from(["default", "evil", "Default", "default "]))
def test_property_no_unauthenticated_registration_lands_on_a_protected_service(
    server: ConfigServer, admin: ControlPlaneClient, spelling: str, namespace: str
) -> None:
    if not admin.list_tokens()["items"]:
        admin.create_token("reviews")
    put(server, registration("attacker-1", spelling, namespace))
    landed = {host for host, wid in snapshot_hosts(server, server.admin_token) if wid == "attacker-1"}
    assert REVIEWS not in landed, (spelling, namespace)


def test_in_the_default_mode_nothing_registers_without_a_token(
    secure_server: ConfigServer, tmp_path: Path
) -> None:
    answer = put(secure_server, registration("ratings-1", "ratings"))
    assert answer.status_code == 401
    assert "needs a bootstrap token" in answer.json()["error"]
    assert "meshctl token create --service ratings" in answer.json()["error"]
    assert httpx.get(f"{secure_server.url}/v1/snapshot").status_code == 401
    assert httpx.get(f"{secure_server.url}/v1/workloads").status_code == 401
    with ControlPlaneClient(secure_server.url, secure_server.admin_token) as admin:
        assert admin.workloads()["items"] == []
        token = admin.create_token("ratings")["token"]
    assert put(secure_server, registration("ratings-1", "ratings"), token).status_code == 200
    assert httpx.get(f"{secure_server.url}/v1/healthz").status_code == 200
    assert httpx.get(f"{secure_server.url}/v1/trust-bundle").status_code == 200


def test_the_open_mode_is_a_flag_that_says_it_is_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshlib.controlplane import server as server_module

    printed: list[str] = []

    class Stop(Exception):
        pass

    def stop_instead_of_serving(*args: object, **kwargs: object) -> None:
        raise Stop

    original = server_module._Server.run
    server_module._Server.run = stop_instead_of_serving  # type: ignore[method-assign]
    try:
        with pytest.raises(Stop):
            meshctl(["serve", "--data-dir", str(tmp_path / "cp"), "--port", "0", "--insecure-open-registry"])
    finally:
        server_module._Server.run = original  # type: ignore[method-assign]
    printed.append(capsys.readouterr().out)
    assert "WARNING: INSECURE: --insecure-open-registry" in printed[0]


# --- case 2 (the registry half): dotted and ServiceEntry hosts cannot be claimed -----------


@pytest.mark.parametrize("service", ["api.bank.example", "api", "*.bank.example"])
def test_registrations_cannot_claim_external_or_declared_hosts(
    server: ConfigServer, admin: ControlPlaneClient, service: str
) -> None:
    admin.apply(
        [
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": "api"},
                "spec": {
                    "hosts": ["api", "api.bank.example"],
                    "location": "MESH_EXTERNAL",
                    "resolution": "DNS",
                    "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
                },
            }
        ]
    )
    answer = put(server, registration("attacker-1", service))
    assert answer.status_code in (400, 409), answer.text
    if service == "api":
        assert "is declared by ServiceEntry default/api" in answer.json()["error"]
    assert registry(admin) == []


# --- case 3: the watch speaks only for the caller's own workloads ---------------------------


def test_a_watch_cannot_report_for_someone_elses_workload(
    secure_server: ConfigServer, tmp_path: Path
) -> None:
    with ControlPlaneClient(secure_server.url, secure_server.admin_token) as admin:
        reviews = admin.create_token("reviews")["token"]
        other = admin.create_token("ratings")["token"]
        assert put(secure_server, registration("reviews-1", "reviews"), reviews).status_code == 200
        body = {"version": 0, "wait": 0, "workload": "reviews-1", "nack": {"version": 1, "reason": "spoofed"}}
        url = f"{secure_server.url}/v1/watch"
        assert httpx.post(url, json=body).status_code == 401
        wrong = httpx.post(url, json=body, headers={"authorization": f"Bearer {other}"})
        assert wrong.status_code == 403
        assert "is for default/ratings, not default/reviews" in wrong.json()["error"]
        (item,) = admin.workloads()["items"]
        assert item["nackVersion"] is None
        assert item["connected"] is False
        own = httpx.post(url, json=body, headers={"authorization": f"Bearer {reviews}"})
        assert own.status_code == 200
        (item,) = admin.workloads()["items"]
        assert item["nackReason"] == "spoofed"


def test_in_the_open_mode_a_watch_cannot_revive_a_protected_workload(tmp_path: Path) -> None:
    with (
        ConfigServer(
            tmp_path / "cp", workload_ttl=0.3, reap_interval=0.1, insecure_open_registry=True
        ) as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        token = admin.create_token("reviews")["token"]
        assert put(server, registration("reviews-1", "reviews"), token).status_code == 200
        assert wait_for(lambda: admin.workloads()["items"][0]["lost"])
        body = {"version": 0, "wait": 0, "workload": "reviews-1", "ack": 1}
        assert httpx.post(f"{server.url}/v1/watch", json=body).status_code == 401
        (item,) = admin.workloads()["items"]
        assert item["lost"] is True
        assert item["ackedVersion"] is None
        assert snapshot_hosts(server, server.admin_token) == set(), "the withdrawn endpoint stays withdrawn"


def test_status_shows_a_nack_reason_with_escape_codes_escaped(
    server: ConfigServer, admin: ControlPlaneClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert put(server, registration("reviews-1", "reviews")).status_code == 200
    evil = "bad\x1b[2J\x1b]0;owned\x07\r\n\u202etxt"
    body = {"version": 0, "wait": 0, "workload": "reviews-1", "nack": {"version": 1, "reason": evil}}
    assert httpx.post(f"{server.url}/v1/watch", json=body).status_code == 200
    assert meshctl(["--server", server.url, "status"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\u202e" not in out
    assert "\r" not in out
    assert "bad\\x1b[2J\\x1b]0;owned\\x07\\x0d\\x0a\\u202etxt" in out


# --- case 4: no registration makes every watcher download megabytes -------------------------


def test_a_huge_registration_is_refused_whole(server: ConfigServer, admin: ControlPlaneClient) -> None:
    many = [{"address": "127.0.0.1", "port": 1 + i % 65000} for i in range(60_000)]
    big = put(server, registration("attacker-1", "reviews", endpoints=many))
    assert big.status_code == 413
    assert "larger than 64 KiB" in big.json()["error"]
    over = put(server, registration("attacker-1", "reviews", endpoints=many[:33]))
    assert over.status_code == 400
    assert "at most 32" in over.json()["error"]
    labels = {f"k{i}": "v" for i in range(65)}
    assert put(server, registration("attacker-1", "reviews", labels=labels)).status_code == 400
    assert registry(admin) == []


def test_a_service_and_the_registry_are_bounded(tmp_path: Path) -> None:
    with (
        ConfigServer(tmp_path / "cp", insecure_open_registry=True) as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        assert server.state is not None
        server.state.max_endpoints_per_service = 64
        server.state.max_workloads = 5
        endpoints = [{"address": "10.0.0.1", "port": 1000 + i} for i in range(32)]
        assert put(server, registration("reviews-1", "reviews", endpoints=endpoints)).status_code == 200
        assert put(server, registration("reviews-2", "reviews", endpoints=endpoints)).status_code == 200
        third = put(server, registration("reviews-3", "reviews", endpoints=endpoints[:1]))
        assert third.status_code == 507
        assert "default/reviews would have more than 64 endpoints" in third.json()["error"]
        # Re-registering with the same endpoints is not growth.
        assert put(server, registration("reviews-2", "reviews", endpoints=endpoints)).status_code == 200
        for i in range(3):
            assert put(server, registration(f"ratings-{i}", "ratings")).status_code == 200
        full = put(server, registration("ratings-9", "ratings"))
        assert full.status_code == 507
        assert "the registry is full: 5 workloads" in full.json()["error"]
        assert len(registry(admin)) == 5
        payload = httpx.get(f"{server.url}/v1/snapshot").content
        assert len(payload) < 64 * 1024


# --- case 5: absurd TTLs and deep JSON are 4xx and store nothing ----------------------------


@pytest.mark.parametrize(
    "ttl", ["9" * 400 + "h", "99999999999999999999h", "0s", "500ms", "1ns", "-1h", "9000h"]
)
def test_token_ttls_out_of_range_are_refused_and_stored_nowhere(
    server: ConfigServer, admin: ControlPlaneClient, ttl: str
) -> None:
    answer = httpx.post(
        f"{server.url}/v1/tokens",
        json={"service": "reviews", "ttl": ttl},
        headers={"authorization": f"Bearer {server.admin_token}"},
    )
    assert answer.status_code == 400, answer.text
    assert admin.list_tokens()["items"] == []
    made = admin.create_token("reviews", ttl="1h")
    assert admin.revoke_token(made["id"])["revoked"] is True


def test_tokens_and_revocation_still_work_after_a_restart_that_follows_refusals(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    with ConfigServer(data) as server:
        httpx.post(
            f"{server.url}/v1/tokens",
            json={"service": "reviews", "ttl": "9" * 400 + "h"},
            headers={"authorization": f"Bearer {server.admin_token}"},
        )
    with ConfigServer(data) as server, ControlPlaneClient(server.url, server.admin_token) as admin:
        assert admin.list_tokens()["items"] == []
        made = admin.create_token("reviews")
        assert admin.revoke_token(made["id"])["revoked"] is True


@pytest.mark.parametrize("ttl", ["99999999999999999999h", "0s", "1ns", "1us", "999ms", "200h"])
def test_certificate_ttls_out_of_range_are_refused(
    server: ConfigServer, admin: ControlPlaneClient, ttl: str
) -> None:
    from meshlib.workload_identity import WorkloadIdentity

    token = admin.create_token("reviews")["token"]
    identity = WorkloadIdentity(server.data_dir / "wl", "spiffe://cluster.local/ns/default/sa/reviews")
    answer = httpx.post(
        f"{server.url}/v1/certificates",
        json={"csr": identity.csr_pem(), "ttl": ttl},
        headers={"authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 400, answer.text
    ok = httpx.post(
        f"{server.url}/v1/certificates",
        json={"csr": identity.csr_pem(), "ttl": "1s"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/v1/apply", "/v1/watch", "/v1/tokens"])
def test_deeply_nested_json_is_a_400(server: ConfigServer, path: str) -> None:
    deep = "[" * 20_000 + "]" * 20_000  # 40 KB: under every body limit
    answer = httpx.post(
        f"{server.url}{path}",
        content=deep,
        headers={"authorization": f"Bearer {server.admin_token}", "content-type": "application/json"},
    )
    assert answer.status_code == 400
    assert "nested deeper than 64 levels" in answer.json()["error"]
    modest = json.dumps({"resources": [], "namespace": "default"})
    assert (
        httpx.post(
            f"{server.url}/v1/apply",
            content=modest,
            headers={"authorization": f"Bearer {server.admin_token}"},
        ).status_code
        == 200
    )


# --- case 7: names and addresses are checked where they enter --------------------------------


@pytest.mark.parametrize("host", ["reviews\x00", "reviews\r\nx-injected: 1", "rev iews", "a..b", "-reviews"])
def test_virtual_service_hosts_are_dns_names(admin: ControlPlaneClient, host: str) -> None:
    from meshlib.errors import ConfigError

    manifest = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
    }
    with pytest.raises(ConfigError) as caught:
        admin.apply([manifest])
    assert "spec.hosts[0]" in str(caught.value)
    assert "invalid host" in str(caught.value)
    assert admin.list()["items"] == []


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "::", "224.0.0.1", "bad\r\naddress", "*.example.com", "x" * 300]
)
def test_endpoint_addresses_are_places_a_client_can_connect_to(
    server: ConfigServer, admin: ControlPlaneClient, address: str
) -> None:
    body = registration("reviews-1", "reviews")
    body["endpoints"] = [{"address": address, "port": 9080}]
    assert put(server, body).status_code == 400
    assert registry(admin) == []


def test_no_endpoint_may_point_at_the_config_service(server: ConfigServer, admin: ControlPlaneClient) -> None:
    for address in ("127.0.0.1", "localhost", "127.0.0.2"):
        body = registration("reviews-1", "reviews")
        body["endpoints"] = [{"address": address, "port": server.port}]
        answer = put(server, body)
        assert answer.status_code == 409
        assert "where the config service listens" in answer.json()["error"]
    assert registry(admin) == []


@pytest.mark.parametrize(
    "body",
    [
        {"version": 0, "wait": 0, "workload": "reviews-1", "ack": 2**64},
        {"version": 2**64, "wait": 0},
        {"version": 0, "wait": 0, "workload": "reviews-1", "nack": {"version": 1, "reason": "\ud800"}},
    ],
)
def test_values_the_store_cannot_hold_are_refused_at_the_door(
    server: ConfigServer, admin: ControlPlaneClient, body: dict[str, Any]
) -> None:
    assert put(server, registration("reviews-1", "reviews")).status_code == 200
    answer = httpx.post(f"{server.url}/v1/watch", content=json.dumps(body))
    assert answer.status_code == 400, answer.text
    (item,) = admin.workloads()["items"]
    assert (item["ackedVersion"], item["nackVersion"]) == (None, None)


@pytest.mark.parametrize("address", ["0x7f000001", "2130706433", "::ffff:0.0.0.0"])
def test_numbers_that_resolve_to_an_ip_are_refused(server: ConfigServer, address: str) -> None:
    body = registration("reviews-1", "reviews")
    body["endpoints"] = [{"address": address, "port": 9080}]
    assert put(server, body).status_code == 400


def test_a_client_that_leaves_mid_request_is_no_service_error(
    server: ConfigServer, admin: ControlPlaneClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A half-sent body (a workload ending its watch to ask again, or one that died) is not
    logged as the service's own failure, and the service goes on answering."""
    caplog.set_level(logging.DEBUG, "meshlib.controlplane")
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b'POST /v1/watch HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"version": ')
    assert wait_for(lambda: any("disconnected before its request was read" in m for m in caplog.messages))
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert admin.workloads()["items"] == []
