"""ConfigState: the config service's rules without HTTP, on a real SQLite store and a fake clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshlib.controlplane.state import ApplyOutcome, ConfigState, RegistryFull
from meshlib.controlplane.store import SQLiteStore
from meshlib.errors import ConfigError
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration
from tests.conftest import destination_rule, virtual_service


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path, clock: Clock) -> ConfigState:
    return ConfigState(SQLiteStore(tmp_path / "db"), workload_ttl=30.0, clock=clock)


def reopen(state: ConfigState, tmp_path: Path) -> ConfigState:
    state.store.close()
    return ConfigState(SQLiteStore(tmp_path / "db"))


def actions(outcome: ApplyOutcome) -> list[tuple[str, str]]:
    return [(r.key.name, r.action) for r in outcome.results]


def test_apply_reports_created_configured_unchanged(state: ConfigState) -> None:
    assert actions(state.apply([virtual_service(), destination_rule()])) == [
        ("reviews", "created"),
        ("reviews", "created"),
    ]
    assert state.version == 1
    assert actions(state.apply([virtual_service(v1=50, v2=50), destination_rule()])) == [
        ("reviews", "configured"),
        ("reviews", "unchanged"),
    ]
    assert state.version == 2
    assert actions(state.apply([virtual_service(v1=50, v2=50)])) == [("reviews", "unchanged")]
    assert state.version == 2, "an apply that changes nothing does not bump the version"


def test_stored_manifest_carries_server_bookkeeping(state: ConfigState) -> None:
    state.apply([virtual_service()])
    state.apply([virtual_service(v1=10, v2=90)])
    meta = state.resources("VirtualService")[0].manifest["metadata"]
    assert meta["resourceVersion"] == "2"
    assert meta["generation"] == 2
    assert meta["namespace"] == "default"
    assert meta["creationTimestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (
            {**virtual_service(), "spec": {"hosts": ["r"], "http": [{"route": [], "bogus": 1}]}},
            "unknown field",
        ),
        (virtual_service(v1=50, v2=-40), "must be >= 0; got -40"),
        ({**virtual_service(), "apiVersion": "networking.istio.io/v2"}, "unsupported apiVersion"),
        ([virtual_service()], "must be a mapping"),
    ],
)
def test_invalid_apply_changes_nothing(state: ConfigState, tmp_path: Path, bad: Any, fragment: str) -> None:
    state.apply([virtual_service(), destination_rule()])
    before = (state.version, [r.manifest for r in state.resources()])
    with pytest.raises(ConfigError) as caught:
        state.apply([destination_rule("ratings"), bad])
    assert fragment in str(caught.value)
    assert (state.version, [r.manifest for r in state.resources()]) == before
    reopened = reopen(state, tmp_path)
    assert (reopened.version, [r.manifest for r in reopened.resources()]) == before


def test_duplicate_names_in_one_apply_are_refused(state: ConfigState) -> None:
    with pytest.raises(ConfigError, match=r"duplicate resource in one apply \(also resources\[0\]\)"):
        state.apply([virtual_service(), virtual_service(v1=10, v2=90)])
    assert state.version == 0
    assert state.resources() == []


def test_dry_run_validates_and_stores_nothing(state: ConfigState) -> None:
    assert actions(state.apply([virtual_service()], dry_run=True)) == [("reviews", "created")]
    assert state.version == 0
    assert state.resources() == []


def test_delete_bumps_version_once_and_persists(state: ConfigState, tmp_path: Path) -> None:
    state.apply([virtual_service(), destination_rule()])
    keys = [r.key for r in state.resources()]
    assert state.delete([*keys, keys[0]._replace(name="missing")]) == keys
    assert state.version == 2
    assert state.delete(keys) == []
    assert state.version == 2
    assert reopen(state, tmp_path).resources() == []


def registration(
    workload: str = "w1", *, port: int | None = 8080, ready: bool = True
) -> WorkloadRegistration:
    endpoints = [AnnouncedEndpoint(address="127.0.0.1", port=port, ready=ready)] if port else []
    return WorkloadRegistration(id=workload, service="reviews", labels={"version": "v1"}, endpoints=endpoints)


def test_registration_bumps_version_only_when_clients_would_see_a_change(state: ConfigState) -> None:
    assert state.register(registration()) is True
    assert state.version == 1
    assert state.register(registration()) is False, "a repeated registration is a heartbeat"
    assert state.register(registration(ready=False)) is True
    assert state.version == 2
    assert state.register(registration("w2", port=None)) is False, "no endpoints, nothing to route to"
    assert state.version == 2


def test_payload_lists_resources_and_registered_endpoints(state: ConfigState) -> None:
    state.apply([virtual_service()])
    state.register(registration())
    payload = json.loads(state.payload())
    assert payload["version"] == 2
    assert [r["kind"] for r in payload["resources"]] == ["VirtualService"]
    assert [w["id"] for w in payload["workloads"]] == ["w1"]
    assert state.payload() is state.payload(), "encoded once per version"


def test_silent_workload_is_withdrawn_and_comes_back(state: ConfigState, clock: Clock) -> None:
    state.register(registration())
    clock.now += 29
    assert state.reap() is False
    clock.now += 2
    assert state.reap() is True
    assert json.loads(state.payload())["workloads"] == []
    assert [w.lost for w in state.workloads()] == [True]
    assert state.seen("w1") is True, "calling in again restores its endpoints"
    assert [w["id"] for w in json.loads(state.payload())["workloads"]] == ["w1"]


def test_a_workload_holding_a_watch_is_never_lost(state: ConfigState, clock: Clock) -> None:
    state.register(registration())
    handle = state.watch_begin("w1")
    clock.now += 300
    assert state.reap() is False
    state.watch_end(handle)
    state.seen("w1")
    clock.now += 31
    assert state.reap() is True


def test_ack_and_nack_are_recorded_and_survive_restart(state: ConfigState, tmp_path: Path) -> None:
    state.register(registration())
    state.seen("w1", acked=1)
    assert state.workloads()[0].acked_version == 1
    state.seen("w1", nacked=(2, "VirtualService default/x: spec.foo: unknown field"))
    view = state.workloads()[0]
    assert (view.nack_version, view.nack_reason) == (2, "VirtualService default/x: spec.foo: unknown field")
    state.flush()
    reopened = reopen(state, tmp_path).workloads()[0]
    assert (reopened.acked_version, reopened.nack_version) == (1, 2)


def test_deregistration_withdraws_endpoints(state: ConfigState) -> None:
    state.register(registration())
    assert state.deregister("w1") is True
    assert state.version == 2
    assert state.workloads() == []
    assert state.deregister("w1") is False


def test_a_restart_with_another_trust_bundle_is_a_new_version(tmp_path: Path) -> None:
    first = ConfigState(SQLiteStore(tmp_path / "db"), trust_bundle=("root-a",))
    version = first.version
    first.store.close()
    same = ConfigState(SQLiteStore(tmp_path / "db"), trust_bundle=("root-a",))
    assert same.version == version, "the same roots: watchers have nothing new to fetch"
    same.store.close()
    rotated = ConfigState(SQLiteStore(tmp_path / "db"), trust_bundle=("root-a", "root-b"))
    assert rotated.version == version + 1
    assert json.loads(rotated.payload())["trustBundle"] == ["root-a", "root-b"]
    rotated.store.close()
    again = ConfigState(SQLiteStore(tmp_path / "db"), trust_bundle=("root-a", "root-b"))
    assert again.version == version + 1, "the bumped version and the new digest were stored"


# --- the registry's own accounting (from the security review of the hardening) ---------------


def _workload(wid: str, service: str = "reviews", address: str = "10.0.0.1") -> WorkloadRegistration:
    return WorkloadRegistration(
        id=wid, service=service, endpoints=[AnnouncedEndpoint(address=address, port=9080)]
    )


def test_lost_workloads_do_not_count_against_the_limits_and_are_forgotten(
    state: ConfigState, clock: Clock
) -> None:
    state.max_endpoints_per_service = 3
    for i in range(3):
        state.register(_workload(f"reviews-{i}"))
    clock.now += 31
    assert state.reap()
    assert state.register(_workload("reviews-new")), "crashed replicas do not lock the service out"
    clock.now += state.forget_after + 1
    state.reap()
    assert [w.registration.id for w in state.workloads()] == ["reviews-new"]


def test_a_failed_store_write_changes_nothing_in_memory(state: ConfigState) -> None:
    state.register(_workload("reviews-1"))
    version = state.version

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    state.store.save_workloads = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        state.register(_workload("reviews-1", address="10.0.0.2"))
    with pytest.raises(OSError, match="disk full"):
        state.deregister("reviews-1")
    (view,) = state.workloads()
    assert view.registration.endpoints[0].address == "10.0.0.1"
    assert state.version == version


def test_acks_that_fail_to_flush_are_kept_for_the_next_flush(state: ConfigState, tmp_path: Path) -> None:
    state.register(_workload("reviews-1"))
    state.seen("reviews-1", acked=5)
    save = state.store.save_workloads

    def once_broken(*args: Any, **kwargs: Any) -> None:
        state.store.save_workloads = save  # type: ignore[method-assign]
        raise OSError("busy")

    state.store.save_workloads = once_broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="busy"):
        state.flush()
    state.flush()
    assert reopen(state, tmp_path).workloads()[0].acked_version == 5


def test_a_registration_stored_under_looser_rules_does_not_stop_the_service(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    from meshlib.controlplane.store import StoredWorkload

    bad = {"id": "old-1", "service": "my_svc", "namespace": "default", "endpoints": []}
    store.save_workloads(1, [StoredWorkload(bad, first_seen=1.0, last_seen=1.0)], ())
    state = ConfigState(store)
    assert state.workloads() == []
    assert state.register(_workload("reviews-1"))


def test_a_watch_counts_on_the_entry_it_began_on(state: ConfigState, clock: Clock) -> None:
    assert state.watch_begin("not-yet") is None
    state.watch_end(None)
    state.register(_workload("reviews-1"))
    handle = state.watch_begin("reviews-1")
    state.register(_workload("reviews-1", address="10.0.0.2"))  # re-registered during the watch
    clock.now += 31
    assert not state.reap(), "a workload in its own watch is never reaped"
    state.watch_end(handle)
    assert state.workloads()[0].connected is False
    assert state.reap()


@pytest.mark.parametrize(
    "address", ["LOCALHOST", "localhost.", "::ffff:127.0.0.1", "0:0:0:0:0:ffff:7f00:1", "127.0.0.2"]
)
def test_no_spelling_of_the_config_services_address_is_an_endpoint(state: ConfigState, address: str) -> None:
    from meshlib.controlplane.state import RegistryFull

    state.reserve("127.0.0.1", 15010)
    registration = WorkloadRegistration(
        id="x-1", service="reviews", endpoints=[AnnouncedEndpoint(address=address, port=15010)]
    )
    with pytest.raises(RegistryFull, match="where the config service listens"):
        state.register(registration)


def _counting_writes(state: ConfigState) -> list[int]:
    """The number of workloads in each registry write the store is asked for."""
    writes: list[int] = []
    save = state.store.save_workloads

    def counted(version: int, put: Any, delete: Any, **kwargs: Any) -> None:
        writes.append(len(put))
        save(version, put, delete, **kwargs)

    state.store.save_workloads = counted  # type: ignore[method-assign]
    return writes


def test_registrations_of_one_burst_are_one_store_write_and_one_version(
    state: ConfigState, tmp_path: Path
) -> None:
    writes = _counting_writes(state)
    results = state.register_many([registration(f"w{n}", port=8080 + n) for n in range(3)])
    assert results == [True, True, True]
    assert writes == [3]
    assert state.version == 1, "one new version for the whole burst"
    assert sorted(w.registration.id for w in state.workloads()) == ["w0", "w1", "w2"]
    assert sorted(w.registration.id for w in reopen(state, tmp_path).workloads()) == ["w0", "w1", "w2"]


def test_each_registration_of_a_burst_is_admitted_after_the_ones_before_it(state: ConfigState) -> None:
    state.max_workloads = 2
    assert state.register(registration("w0", port=8080))
    writes = _counting_writes(state)
    results = state.register_many([registration("w1", port=8081), registration("w2", port=8082)])
    assert results[0] is True
    assert isinstance(results[1], RegistryFull)
    assert str(results[1]) == "the registry is full: 2 workloads"
    assert writes == [1], "the refused one was never written"
    assert sorted(w.registration.id for w in state.workloads()) == ["w0", "w1"]
    state.max_endpoints_per_service = 3
    state.max_workloads = 10
    burst = [registration("w3", port=8083), registration("w4", port=8084)]
    outcome = state.register_many(burst)
    assert outcome[0] is True
    assert isinstance(outcome[1], RegistryFull), "w3's endpoint counted against w4's"


def test_a_workload_named_twice_in_a_burst_is_written_twice_in_order(state: ConfigState) -> None:
    writes = _counting_writes(state)
    first, second = registration("w1", port=8081), registration("w1", port=9091)
    assert state.register_many([first, registration("w2"), second]) == [True, True, True]
    assert writes == [2, 1]
    (w1,) = [w for w in state.workloads() if w.registration.id == "w1"]
    assert w1.registration.endpoints[0].port == 9091, "the later one wins"
