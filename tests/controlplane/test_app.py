"""The /v1 API over real HTTP on 127.0.0.1: auth, validation, watch, restart."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib.controlplane.app import RegistrationBatches, VersionNotifier
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import GC_THRESHOLDS, ConfigServer
from meshlib.controlplane.state import ConfigState
from meshlib.controlplane.store import SQLiteStore
from meshlib.errors import ConfigError, UnauthorizedError
from meshlib.protocol import EPOCH_HEADER, MAX_BODY_BYTES
from meshlib.registry import WorkloadRegistration
from meshlib.snapshot_delta import HeldSnapshot
from tests.conftest import destination_rule, virtual_service
from tests.servers import wait_for


def test_writes_without_token_are_refused_and_change_nothing(server: ConfigServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        missing = http.post("/v1/apply", json={"resources": [virtual_service()]})
        wrong = http.post(
            "/v1/apply",
            json={"resources": [virtual_service()]},
            headers={"authorization": "Bearer not-the-token"},
        )
        delete = http.delete("/v1/resources/vs/default/reviews")
        assert (missing.status_code, missing.json()["error"]) == (401, "missing admin token")
        assert (wrong.status_code, wrong.json()["error"]) == (401, "wrong admin token")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert delete.status_code == 401
        assert http.get("/v1/resources").json() == {"version": 0, "items": []}


def test_client_reports_a_wrong_token_clearly(server: ConfigServer) -> None:
    with (
        ControlPlaneClient(server.url, "wrong") as client,
        pytest.raises(UnauthorizedError, match="wrong admin token"),
    ):
        client.apply([virtual_service()])


def test_admin_token_file_is_private(server: ConfigServer) -> None:
    assert server.token_path is not None
    assert stat.S_IMODE(server.token_path.stat().st_mode) == 0o600
    assert len(server.admin_token) >= 32


def test_invalid_apply_returns_issues_and_changes_nothing(admin: ControlPlaneClient) -> None:
    admin.apply([destination_rule()])
    with pytest.raises(ConfigError) as caught:
        admin.apply([virtual_service(), virtual_service(v1=10, v2=-10, host="ratings", name="ratings")])
    (issue,) = caught.value.issues
    assert issue.resource == "VirtualService default/ratings"
    assert issue.path == "spec.http[0].route[1].weight"
    assert issue.message == "must be >= 0; got -10"
    listed = admin.list()
    assert listed["version"] == 1
    assert [i["kind"] for i in listed["items"]] == ["DestinationRule"]


def test_bad_request_bodies(server: ConfigServer) -> None:
    headers = {"authorization": f"Bearer {server.admin_token}", "content-type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers) as http:
        not_json = http.post("/v1/apply", content=b"{nope")
        assert not_json.status_code == 400
        assert "not valid JSON" in not_json.json()["error"]
        wrong_shape = http.post("/v1/apply", json={"resources": "x"})
        assert wrong_shape.status_code == 400
        too_big = http.post("/v1/apply", content=b" " * (MAX_BODY_BYTES + 1))
        assert too_big.status_code == 413
        assert http.get("/v1/resources/nosuchkind/default/x").status_code == 404
        assert http.get("/v1/healthz").json()["version"] == 0


def test_get_and_delete_by_kind_alias(admin: ControlPlaneClient, server: ConfigServer) -> None:
    admin.apply([virtual_service()])
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/resources/vs/default/reviews").json()["spec"]["hosts"] == ["reviews"]
        assert (
            http.get("/v1/resources?kind=virtualservices").json()["items"][0]["metadata"]["name"] == "reviews"
        )
    assert admin.delete(admin_key())["version"] == 2
    with pytest.raises(Exception, match="not found"):
        admin.delete(admin_key())


def admin_key():  # type: ignore[no-untyped-def]
    from meshlib.policy.resources import ResourceKey

    return ResourceKey("VirtualService", "default", "reviews")


def test_watch_answers_at_once_when_behind_and_204_when_nothing_changes(server: ConfigServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        first = http.post("/v1/watch", json={"version": -1, "wait": 5})
        assert first.status_code == 200
        assert first.json()["version"] == 0
        started = time.monotonic()
        idle = http.post("/v1/watch", json={"version": 0, "wait": 0.3})
        assert idle.status_code == 204
        assert 0.25 <= time.monotonic() - started < 2.0


def test_watch_wakes_within_a_second_of_an_apply(server: ConfigServer, admin: ControlPlaneClient) -> None:
    results: list[tuple[float, int]] = []

    def watch() -> None:
        with httpx.Client(base_url=server.url, timeout=15) as http:
            response = http.post("/v1/watch", json={"version": 0, "wait": 10})
            results.append((time.monotonic(), response.json()["version"]))

    waiters = [threading.Thread(target=watch) for _ in range(20)]
    for t in waiters:
        t.start()
    time.sleep(0.3)
    applied = time.monotonic()
    admin.apply([virtual_service()])
    for t in waiters:
        t.join(15)
    assert len(results) == 20
    assert all(version == 1 for _, version in results)
    assert max(at for at, _ in results) - applied < 1.0


def test_restarted_service_keeps_every_resource_and_the_version(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    with ConfigServer(data) as first, ControlPlaneClient(first.url, first.admin_token) as client:
        client.apply([virtual_service(), destination_rule()])
        client.apply([virtual_service(v1=10, v2=90)])
        before = client.list()
        token = first.admin_token
    with ConfigServer(data) as second, ControlPlaneClient(second.url, second.admin_token) as client:
        assert second.admin_token == token, "the admin token is created once"
        assert client.list() == before
        assert client.health()["version"] == 2
        assert client.apply([virtual_service(v1=20, v2=80)])["version"] == 3


def test_serve_prints_the_token_path_never_the_token(tmp_path: Path) -> None:
    data = tmp_path / "served"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "serve", "--data-dir", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        url = lines[0].split()[4]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # SIGTERM is handled once uvicorn runs
            try:
                httpx.get(f"{url}/v1/healthz").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=15)[0]
    token = (data / "admin.token").read_text().strip()
    output = "".join(lines) + rest
    assert f"admin token created {data / 'admin.token'}" in output
    assert token not in output
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
    assert proc.returncode == -signal.SIGTERM


def test_a_watch_that_asks_for_a_delta_gets_only_what_changed(
    server: ConfigServer, admin: ControlPlaneClient
) -> None:
    admin.apply([virtual_service(), destination_rule()])
    registration = {"id": "w-1", "service": "ratings", "endpoints": [{"address": "127.0.0.1", "port": 9081}]}
    with httpx.Client(base_url=server.url) as http:
        first = http.post("/v1/watch", json={"version": -1, "wait": 5, "delta": True})
        assert "base" not in first.json(), "first contact: the whole snapshot"
        held, epoch = HeldSnapshot(first.json()), first.headers[EPOCH_HEADER]
        assert http.put("/v1/workloads/w-1", json=registration).status_code == 200
        ask = {"version": held.version, "wait": 5, "delta": True}
        for other in ({}, {"epoch": "another-replica"}):
            whole = http.post("/v1/watch", json={**ask, **other}).json()
            assert "base" not in whole, "no epoch, or another one: the whole snapshot"
        answer = http.post("/v1/watch", json={**ask, "epoch": epoch})
        assert answer.headers[EPOCH_HEADER] == epoch
        delta = answer.json()
        assert (delta["base"], delta["version"]) == (held.version, held.version + 1)
        assert delta["changed"]["resources"] == []
        assert [w["id"] for w in delta["changed"]["workloads"]] == ["w-1"]
        assert len(answer.content) < len(http.get("/v1/snapshot").content) / 2
        assert held.apply(delta) == http.get("/v1/snapshot").json()
        # A version this service never served, or no delta asked for: the whole snapshot.
        for body in ({"version": 1234, "delta": True, "epoch": epoch}, {"version": held.version - 1}):
            whole = http.post("/v1/watch", json={**body, "wait": 5}).json()
            assert "base" not in whole
            assert whole["version"] == held.version


def test_workloads_endpoint_shows_ack_and_nack(server: ConfigServer) -> None:
    registration = {
        "id": "w-1",
        "service": "reviews",
        "labels": {"version": "v1"},
        "endpoints": [{"address": "127.0.0.1", "port": 9080}],
    }
    with httpx.Client(base_url=server.url) as http:
        put = http.put("/v1/workloads/w-1", content=json.dumps(registration))
        assert put.json()["identity"] == "spiffe://cluster.local/ns/default/sa/reviews"
        assert http.put("/v1/workloads/other", json=registration).status_code == 400
        http.post("/v1/watch", json={"version": 1, "wait": 0, "workload": "w-1", "ack": 1})
        (item,) = http.get("/v1/workloads").json()["items"]
        assert (item["ackedVersion"], item["nackVersion"]) == (1, None)
        http.post(
            "/v1/watch",
            json={"version": 1, "wait": 0, "workload": "w-1", "nack": {"version": 2, "reason": "bad thing"}},
        )
        (item,) = http.get("/v1/workloads").json()["items"]
        assert (item["nackVersion"], item["nackReason"]) == (2, "bad thing")
        summary = http.get("/v1/workloads", params={"summary": "true"}).json()
        assert summary == {
            "version": 1,
            "workloads": 1,
            "synced": 0,
            "stale": 0,
            "notAcked": 0,
            "nacked": 1,
            "lost": 0,
            "connected": 0,
        }
        bad = http.get("/v1/workloads", params={"summary": "yes"})
        assert (bad.status_code, bad.json()["error"]) == (400, "summary must be true or false, not 'yes'")
        assert http.delete("/v1/workloads/w-1").json()["version"] == 2
        assert http.get("/v1/workloads").json()["items"] == []


def test_a_watch_whose_caller_hung_up_is_released(server: ConfigServer) -> None:
    """A held watch counts its workload as connected; once the caller has gone, the service
    notices at the end of its current 5 s slice, well before the watch's own wait is up."""
    registration = {"id": "w-1", "service": "reviews", "endpoints": [{"address": "127.0.0.1", "port": 9080}]}

    def connected(http: httpx.Client) -> bool:
        (item,) = http.get("/v1/workloads").json()["items"]
        return bool(item["connected"])

    with httpx.Client(base_url=server.url) as http:
        version = http.put("/v1/workloads/w-1", json=registration).json()["version"]
        body = json.dumps({"version": version, "wait": 60, "workload": "w-1"}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as caller:
            caller.sendall(
                b"POST /v1/watch HTTP/1.1\r\nhost: cp\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            assert wait_for(lambda: connected(http), timeout=5)
        hung_up = time.monotonic()
        assert wait_for(lambda: not connected(http), timeout=15)
        assert time.monotonic() - hung_up < 12  # not the 60 s the watch asked for


def test_listening_sockets_turn_nagle_off() -> None:
    """With proto 0, asyncio leaves Nagle on and every response waits ~40 ms for a delayed ACK."""
    import socket

    from meshlib._net import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def test_a_kept_alive_connection_outlives_uvicorns_default_idle_timeout(server: ConfigServer) -> None:
    # A workload comes back on its connection with its next watch, after compiling what the
    # last one brought; uvicorn's default closes a connection idle for 5 s, and a watch sent
    # as it closes fails (seen as thousands of errors with 5,000 watchers on two cores).
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5.0)
    try:
        conn.request("GET", "/v1/healthz")
        first = conn.getresponse()
        assert (first.status, json.loads(first.read())["status"]) == (200, "ok")
        sock = conn.sock
        time.sleep(5.5)
        conn.request("GET", "/v1/healthz")  # http.client reconnects only if it saw the close
        again = conn.getresponse()
        assert (again.status, json.loads(again.read())["status"]) == (200, "ok")
        assert conn.sock is sock, "the same connection"
    finally:
        conn.close()


def test_a_watch_behind_during_a_registration_burst_takes_the_whole_burst_in_one_answer(
    server: ConfigServer,
) -> None:
    """A watch that is behind while registrations are still being gathered (the coalescing
    window is open) is answered when the window closes, with all of them, not with the first."""
    assert server._server is not None
    server._server._notifier._coalesce = 1.0  # a window wide enough to land a burst in, on any machine

    def registration(n: int) -> dict[str, object]:
        endpoint = {"address": "127.0.0.1", "port": 9000 + n}
        return {"id": f"w-{n}", "service": "reviews", "endpoints": [endpoint]}

    answers: list[tuple[float, int]] = []
    with httpx.Client(base_url=server.url, timeout=15) as http:
        version = http.post("/v1/watch", json={"version": -1, "wait": 0}).json()["version"]
        started = time.monotonic()
        http.put("/v1/workloads/w-1", json=registration(1))  # opens the window

        def watch() -> None:
            with httpx.Client(base_url=server.url, timeout=15) as own:
                response = own.post("/v1/watch", json={"version": version, "wait": 10})
                answers.append((time.monotonic() - started, response.json()["version"]))

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.2)
        http.put("/v1/workloads/w-2", json=registration(2))  # within the window
        watcher.join(15)
        last = http.get("/v1/workloads", params={"summary": "true"}).json()["version"]
    assert len(answers) == 1
    took, answered = answers[0]
    assert answered == last, "one answer carried both registrations"
    assert took >= 0.9, "held until the window closed (1 s after the first registration)"


def test_registrations_arriving_together_are_written_together(server: ConfigServer) -> None:
    """While one store write holds the event loop, the registrations that arrive meanwhile
    are gathered and written in a few writes, not one each; every caller gets its answer."""
    assert server.state is not None
    assert server._server is not None
    batches = server._server.config.app.state.registrations
    save = server.state.store.save_workloads

    def slow(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.1)  # as an etcd round trip under load
        save(*args, **kwargs)

    server.state.store.save_workloads = slow  # type: ignore[method-assign]

    def endpoint(n: int) -> dict[str, object]:
        return {"address": "127.0.0.1", "port": 9000 + n}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            answers = await asyncio.gather(
                *(
                    http.put(
                        f"/v1/workloads/w-{n}",
                        json={"id": f"w-{n}", "service": "reviews", "endpoints": [endpoint(n)]},
                    )
                    for n in range(40)
                )
            )
        return [answer.status_code for answer in answers]

    before = batches.writes
    assert asyncio.run(burst()) == [200] * 40
    writes = batches.writes - before
    assert writes <= 8, f"{writes} store writes for 40 registrations"
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/workloads", params={"summary": "true"}).json()["workloads"] == 40


def test_a_registration_is_checked_again_when_its_batch_is_written(tmp_path: Path) -> None:
    """Two callers register the same id in one turn of the loop; the second may replace the
    first's only if it speaks for the first's service, and that is checked when its batch is
    built (the registry then holds the first), not only when its request came in."""
    state = ConfigState(SQLiteStore(tmp_path / "db"))
    batches = RegistrationBatches(state, VersionNotifier())
    first = WorkloadRegistration(id="w", service="ratings")
    second = WorkloadRegistration(id="w", service="reviews")

    def second_may_replace() -> None:
        previous = state.registration("w")
        if previous is not None and previous.service != "reviews":
            raise PermissionError(f"may not replace {previous.service}")

    async def both() -> list[object]:
        return await asyncio.gather(
            batches.register(first, lambda: None),
            batches.register(second, second_may_replace),
            return_exceptions=True,
        )

    outcome = asyncio.run(both())
    assert outcome[0] is False  # registered (no endpoints: nothing clients see)
    assert isinstance(outcome[1], PermissionError)
    assert str(outcome[1]) == "may not replace ratings"
    registered = state.registration("w")
    assert registered is not None
    assert registered.service == "ratings"
    state.store.close()


def test_the_dedicated_service_collects_garbage_less_often_an_embedded_one_leaves_it(tmp_path: Path) -> None:
    code = (
        "import gc, sys\n"
        "from pathlib import Path\n"
        "from meshlib.controlplane import server\n"
        "server._Server.run = lambda self, sockets: print('thresholds', gc.get_threshold())\n"
        "server.serve_forever(Path(sys.argv[1]), port=0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "served")], capture_output=True, text=True, timeout=60
    )
    assert f"thresholds {GC_THRESHOLDS}" in done.stdout, done.stdout + done.stderr
    before = gc.get_threshold()
    with ConfigServer(tmp_path / "embedded"):
        assert gc.get_threshold() == before


def test_the_notifier_wakes_each_watch_by_change_or_by_its_clock_and_holds_nothing_after() -> None:
    """Watches waiting on their own futures: a change wakes them all (False); otherwise each
    is woken by the clock (True) no earlier than it asked and within one tick; a cancelled
    watch cancels nothing the others wait on; woken or fired, nothing stays armed."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        notifier = VersionNotifier()
        start = loop.time()
        soon, later, cancelled = (
            notifier.arm(start + 0.2),
            notifier.arm(start + 0.6),
            notifier.arm(start + 0.2),
        )
        cancelled.cancel()
        # The clock wakes a watch on the first tick at or after the time it asked for.
        whens = sorted(timer.when() for timer, _ in notifier._ticks.values())
        assert len(whens) == 2
        assert start + 0.2 <= whens[0] < start + 0.2 + VersionNotifier.TICK
        assert await soon is True
        assert loop.time() - start >= 0.2 - 0.001  # (asyncio may run a timer a clock resolution early)
        assert not later.done()
        notifier.notify()
        assert await later is False
        assert notifier._ticks == {}  # the notify took every armed future and its timer
        at = loop.time() + 0.05
        after = [notifier.arm(at) for _ in range(100)]
        assert len(notifier._ticks) == 1  # futures due together share one timer
        assert all(await asyncio.gather(*after))
        assert notifier._ticks == {}  # fired: nothing held

    asyncio.run(run())


def test_a_notifier_served_again_on_another_loop_still_wakes_its_watches_by_the_clock() -> None:
    notifier = VersionNotifier()

    async def arm_and_leave() -> None:
        notifier.arm(asyncio.get_running_loop().time() + 0.1)

    async def arm_and_wait() -> bool:
        return await asyncio.wait_for(notifier.arm(asyncio.get_running_loop().time() + 0.1), 5.0)

    asyncio.run(arm_and_leave())
    assert asyncio.run(arm_and_wait()) is True
