"""The registry bound to identities: once a service has bootstrap tokens, only a holder of
one of its tokens may register or withdraw its workloads; a token registers its own
identity only. Refusals say why and change nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration
from tests.conftest import virtual_service
from tests.servers import wait_for


def put(server: ConfigServer, wid: str, service: str, token: str | None = None) -> httpx.Response:
    registration = WorkloadRegistration(
        id=wid, service=service, endpoints=[AnnouncedEndpoint(address="127.0.0.1", port=9080)]
    )
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.put(
        f"{server.url}/v1/workloads/{wid}", content=registration.model_dump_json(), headers=headers
    )


def delete(server: ConfigServer, wid: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.delete(f"{server.url}/v1/workloads/{wid}", headers=headers)


def registry(admin: ControlPlaneClient) -> dict[str, str]:
    return {w["registration"]["id"]: w["registration"]["service"] for w in admin.workloads()["items"]}


def test_services_without_tokens_register_openly(server: ConfigServer, admin: ControlPlaneClient) -> None:
    assert put(server, "ratings-1", "ratings").status_code == 200
    assert delete(server, "ratings-1").status_code == 200
    assert registry(admin) == {}


def test_a_service_with_tokens_registers_only_with_its_own(
    server: ConfigServer, admin: ControlPlaneClient
) -> None:
    orders = admin.create_token("orders")
    payments = admin.create_token("payments")["token"]

    refused = put(server, "orders-1", "orders")
    assert refused.status_code == 401
    assert "default/orders has bootstrap tokens" in refused.json()["error"]

    wrong = put(server, "orders-1", "orders", payments)
    assert wrong.status_code == 403
    assert "is for default/payments, not default/orders" in wrong.json()["error"]

    assert put(server, "orders-1", "orders", "mtk_000000000000.forged").status_code == 401
    assert registry(admin) == {}, "nothing was registered by the refused calls"

    assert put(server, "orders-1", "orders", orders["token"]).status_code == 200
    assert registry(admin) == {"orders-1": "orders"}

    admin.revoke_token(orders["id"])
    revoked = put(server, "orders-1", "orders", orders["token"])
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["error"]


def test_a_registered_workload_cannot_be_taken_over_or_withdrawn(
    server: ConfigServer, admin: ControlPlaneClient
) -> None:
    token = admin.create_token("orders")["token"]
    assert put(server, "orders-1", "orders", token).status_code == 200

    # Its id re-registered as another (open) service, or withdrawn, by someone without the token.
    assert put(server, "orders-1", "evil").status_code == 401
    assert delete(server, "orders-1").status_code == 401
    other = admin.create_token("evil")["token"]
    assert put(server, "orders-1", "evil", other).status_code == 403
    assert delete(server, "orders-1", other).status_code == 403
    assert registry(admin) == {"orders-1": "orders"}

    assert delete(server, "orders-1", token).status_code == 200
    assert registry(admin) == {}


def _hold_watch(
    server: ConfigServer, admin: ControlPlaneClient, service: str, token: str, version: int
) -> tuple[threading.Thread, dict[str, Any]]:
    """The watch of workload ``<service>-1`` (registered) at ``version``, held open in a thread
    (up to 30 s) and seen held by the service before this returns; its answer lands in the dict."""
    wid = f"{service}-1"
    answer: dict[str, Any] = {}

    def watch() -> None:
        started = time.monotonic()
        response = httpx.post(
            f"{server.url}/v1/watch",
            json={"version": version, "wait": 30, "workload": wid},
            headers={"authorization": f"Bearer {token}"},
            timeout=40,
        )
        answer.update(status=response.status_code, body=response.text, seconds=time.monotonic() - started)

    thread = threading.Thread(target=watch)
    thread.start()
    held = wait_for(
        lambda: any(w["registration"]["id"] == wid and w["connected"] for w in admin.workloads()["items"])
    )
    assert held, answer
    return thread, answer


def test_revoking_a_token_ends_the_watch_it_holds_with_401(
    server: ConfigServer, admin: ControlPlaneClient
) -> None:
    token = admin.create_token("orders")
    other = admin.create_token("ratings")["token"]
    admin.apply([virtual_service("reviews")])
    assert put(server, "orders-1", "orders", token["token"]).status_code == 200
    version = put(server, "ratings-1", "ratings", other).json()["version"]
    thread, answer = _hold_watch(server, admin, "orders", token["token"], version)
    kept, kept_answer = _hold_watch(server, admin, "ratings", other, version)
    admin.revoke_token(token["id"])
    thread.join(10)
    assert answer["status"] == 401, answer
    assert f"bootstrap token {token['id']} was revoked" in answer["body"]
    assert answer["seconds"] < 5  # at the revocation, not at the end of the 30 s wait
    assert kept_answer == {}, "a watch on another, valid token is still held"
    admin.apply([virtual_service("reviews", v1=50, v2=50)])
    kept.join(10)
    assert kept_answer["status"] == 200


def test_a_change_is_not_sent_on_a_watch_whose_token_expired_while_it_waited(
    server: ConfigServer, admin: ControlPlaneClient
) -> None:
    token = admin.create_token("orders", ttl="1.5s")["token"]
    admin.apply([virtual_service("reviews")])
    version = put(server, "orders-1", "orders", token).json()["version"]
    thread, answer = _hold_watch(server, admin, "orders", token, version)
    time.sleep(2.0)  # the token (1.5 s) expires while the watch waits
    admin.apply([virtual_service("reviews", v1=50, v2=50)])
    thread.join(10)
    assert answer["status"] == 401, answer
    assert "expired" in answer["body"]
    assert "VirtualService" not in answer["body"]
