"""Snapshot deltas on the config service's side: ConfigState.delta on a real SQLite store.

The rule every test here checks: what a workload holds at version B, with the delta from B
applied, is exactly the full snapshot at the current version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from meshlib.controlplane.snapshot_log import NOTHING_NEW
from meshlib.controlplane.state import ConfigState
from meshlib.controlplane.store import SQLiteStore
from meshlib.policy.resources import ResourceKey
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration
from meshlib.snapshot_delta import HeldSnapshot
from tests.conftest import destination_rule, virtual_service

SVC = "svc.cluster.local"


@pytest.fixture
def state(tmp_path: Path) -> ConfigState:
    return ConfigState(SQLiteStore(tmp_path / "db"), trust_bundle=("ROOT-A",))


def registration(workload: str, port: int = 8080, service: str = "reviews") -> WorkloadRegistration:
    return WorkloadRegistration(
        id=workload,
        service=service,
        labels={"version": "v1"},
        endpoints=[AnnouncedEndpoint(address="127.0.0.1", port=port)],
    )


def full(state: ConfigState) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(state.payload())
    return payload


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal snapshots; the registry's order is not part of a snapshot's meaning."""

    def by_id(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "workloads": sorted(p["workloads"], key=lambda w: w["id"])}

    return by_id(a) == by_id(b)


def test_a_registration_is_sent_as_itself_not_as_the_whole_registry(state: ConfigState) -> None:
    state.apply([virtual_service(), destination_rule()])
    for n in range(200):
        state.register(registration(f"w{n}", 8000 + n))
    held = HeldSnapshot(full(state))
    whole = len(state.payload())
    state.register(registration("newcomer", 9999))
    delta = state.delta(held.version)
    assert delta is not None
    answer = json.loads(delta)
    assert answer["base"] == held.version
    assert answer["version"] == state.version
    assert [w["id"] for w in answer["changed"]["workloads"]] == ["newcomer"]
    assert answer["changed"]["resources"] == []
    assert "trustBundle" not in answer
    assert len(delta) * 50 < whole, (len(delta), whole)
    assert same(held.apply(answer), full(state))


def test_removals_are_named(state: ConfigState) -> None:
    state.apply([virtual_service(), destination_rule()])
    state.register(registration("w1"))
    state.register(registration("w2", 8081))
    held = HeldSnapshot(full(state))
    state.delete([ResourceKey("DestinationRule", "default", "reviews")])
    state.deregister("w1")
    answer = json.loads(state.delta(held.version) or b"null")
    assert answer["removed"]["resources"] == ["DestinationRule/default/reviews"]
    assert answer["removed"]["workloads"] == ["w1"]
    payload = held.apply(answer)
    assert same(payload, full(state))
    assert [r["kind"] for r in payload["resources"]] == ["VirtualService"]


def test_only_a_version_this_replica_served_is_a_base(state: ConfigState) -> None:
    state.apply([virtual_service()])
    served = state.version
    state.payload()
    state.apply([destination_rule()])  # never encoded: no watcher asked for it
    skipped = state.version
    state.register(registration("w1"))
    assert state.delta(skipped) is None, "a version never served here gets the full snapshot"
    assert state.delta(state.version) is None, "nothing to send to a workload that is current"
    assert state.delta(12345) is None
    answer = json.loads(state.delta(served) or b"null")
    assert {r["kind"] for r in answer["changed"]["resources"]} == {"DestinationRule"}


def test_the_trust_bundle_travels_only_when_it_changed(state: ConfigState) -> None:
    state.apply([virtual_service()])
    held = HeldSnapshot(full(state))
    state.trust_bundle = ("ROOT-A", "ROOT-B")  # as a root rotation does, at a new version
    state.register(registration("w1"))
    answer = json.loads(state.delta(held.version) or b"null")
    assert answer["trustBundle"] == ["ROOT-A", "ROOT-B"]
    assert same(held.apply(answer), full(state))


def test_any_served_version_plus_its_delta_is_the_current_snapshot(state: ConfigState) -> None:
    rng = random.Random(1414)
    held: dict[int, dict[str, Any]] = {}
    live: set[str] = set()
    for step in range(300):
        roll = rng.random()
        if roll < 0.45 or not live:
            name = f"w{rng.randrange(40)}"
            state.register(registration(name, 8000 + rng.randrange(3), rng.choice(["reviews", "ratings"])))
            live.add(name)
        elif roll < 0.8:
            name = rng.choice(sorted(live))
            state.deregister(name)
            live.discard(name)
        elif roll < 0.9:
            state.apply([virtual_service(v1=step % 100, v2=100 - step % 100)])
        else:
            state.delete([ResourceKey("VirtualService", "default", "reviews")])
        if rng.random() < 0.5:  # a watcher asked: this version was served
            held[state.version] = full(state)
        current = full(state)
        for base in rng.sample(sorted(held), min(5, len(held))):
            delta = state.delta(base)
            if base == state.version:
                assert delta is None
                continue
            assert delta is not None
            assert same(HeldSnapshot(held[base]).apply(json.loads(delta)), current), (step, base)


REVIEWS_ONLY: tuple[str, ...] = (f"default/reviews.default.{SVC}",)


def test_a_watch_with_egress_hosts_gets_only_their_registry_entries(state: ConfigState) -> None:
    state.apply([virtual_service(), destination_rule()])
    state.register(registration("r1", 8001))
    state.register(registration("x1", 8002, service="ratings"))
    scoped = json.loads(state.payload(REVIEWS_ONLY))
    assert [w["id"] for w in scoped["workloads"]] == ["r1"]
    assert len(scoped["resources"]) == 2, "policy comes whole"
    base = state.version
    state.register(registration("x2", 8003, service="ratings"))
    assert state.delta(base, REVIEWS_ONLY) == NOTHING_NEW, "another service's endpoints: no answer"
    assert state.answer(base, REVIEWS_ONLY, delta=False, epoch=state.epoch) == NOTHING_NEW
    assert state.answer(base, None, delta=False, epoch=state.epoch) == state.payload(), (
        "no egress hosts: as before"
    )
    state.register(registration("r2", 8004))
    answer = json.loads(state.answer(base, REVIEWS_ONLY, delta=True, epoch=state.epoch))
    assert [w["id"] for w in answer["changed"]["workloads"]] == ["r2"]
    assert same(HeldSnapshot(scoped).apply(answer), json.loads(state.payload(REVIEWS_ONLY)))


def test_a_service_entry_that_selects_a_workload_brings_it_into_its_hosts_scope(state: ConfigState) -> None:
    state.register(registration("db-1", 5432, service="postgres"))
    hosts = ("*/db.example.com",)
    held = HeldSnapshot(json.loads(state.payload(hosts)))
    assert held.payload()["workloads"] == []
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "hosts": ["db.example.com"],
            "ports": [{"number": 5432, "name": "http", "protocol": "HTTP"}],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "workloadSelector": {"labels": {"version": "v1"}},
        },
    }
    state.apply([entry])
    answer = json.loads(state.answer(held.version, hosts, delta=True, epoch=state.epoch))
    assert [w["id"] for w in answer["changed"]["workloads"]] == ["db-1"]
    held.apply(answer)
    state.delete([ResourceKey("ServiceEntry", "default", "db")])
    answer = json.loads(state.answer(held.version, hosts, delta=True, epoch=state.epoch))
    assert answer["removed"]["workloads"] == ["db-1"], "it left the scope: the watch drops it"
    assert same(held.apply(answer), json.loads(state.payload(hosts)))


def test_any_served_version_plus_its_scoped_delta_is_the_current_scoped_snapshot(state: ConfigState) -> None:
    rng = random.Random(2718)
    scopes: list[tuple[str, ...]] = [REVIEWS_ONLY, ("*/*",), (f"*/ratings.default.{SVC}", "other/*")]
    held: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
    for step in range(300):
        roll = rng.random()
        name = f"w{rng.randrange(30)}"
        if roll < 0.5:
            service = rng.choice(["reviews", "ratings", "details"])
            state.register(registration(name, 8000 + rng.randrange(3), service))
        elif roll < 0.9:
            state.deregister(name)
        else:
            state.apply([virtual_service(v1=step % 100, v2=100 - step % 100)])
        if rng.random() < 0.5:
            for hosts in scopes:
                held[(state.version, hosts)] = json.loads(state.payload(hosts))
        for (base, hosts), payload in rng.sample(sorted(held.items()), min(6, len(held))):
            current = json.loads(state.payload(hosts))
            answer = state.answer(base, hosts, delta=True, epoch=state.epoch)
            if answer == NOTHING_NEW:
                assert same({**payload, "version": current["version"]}, current), (step, base, hosts)
            elif base != state.version:
                assert same(HeldSnapshot(payload).apply(json.loads(answer)), current), (step, base, hosts)


def test_a_watch_that_waits_on_gets_each_delta_from_where_nothing_changed(state: ConfigState) -> None:
    # As the watch handler does: after NOTHING_NEW it asks again from the version it was told
    # so at (``since``), still naming the version it holds as the base.
    rng = random.Random(31)
    watches: dict[tuple[str, ...], list[Any]] = {}
    for hosts in (REVIEWS_ONLY, (f"*/ratings.default.{SVC}",)):
        watches[hosts] = [state.version, state.version, HeldSnapshot(json.loads(state.payload(hosts)))]
    quiet = 0
    for _ in range(400):
        name = f"w{rng.randrange(20)}"
        if rng.random() < 0.6:
            state.register(registration(name, 8000 + rng.randrange(3), rng.choice(["reviews", "details"])))
        else:
            state.deregister(name)
        for hosts, watch in watches.items():
            base, since, held = watch
            if state.version == since:
                continue  # the handler asks only when the version moved
            answer = state.answer(base, hosts, delta=True, epoch=state.epoch, since=since)
            current = json.loads(state.payload(hosts))
            if answer == NOTHING_NEW:
                quiet += 1
                watch[1] = state.version
                assert same({**held.payload(), "version": current["version"]}, current)
                continue
            delta = json.loads(answer)
            assert delta.get("base") == base, (base, since, state.version, delta)
            assert same(held.apply(delta), current)
            watch[0] = watch[1] = state.version
    assert quiet > 200, "the ratings watch never had anything: it was never answered"


def test_a_replica_whose_snapshot_changes_at_its_version_offers_no_delta_from_it(tmp_path: Path) -> None:
    # Two replicas on one store. B judges w1 lost (a new version without it); w1 then calls
    # in through A, and B's re-read brings w1 back at that same version. A watch holding B's
    # first snapshot of that version must not be brought forward by deltas from it.
    store, now = SQLiteStore(tmp_path / "db"), 1000.0
    a = ConfigState(store, trust_bundle=("ROOT-A",), clock=lambda: now)
    b = ConfigState(store, trust_bundle=("ROOT-A",), clock=lambda: now)
    a.register(registration("w1", 8001))
    b.resync()
    now += 200.0
    assert b.reap(), "w1 is silent for longer than the TTL"
    held = json.loads(b.payload())
    assert held["workloads"] == []
    a.resync()
    a.seen("w1")
    a.flush()
    b.resync()
    assert b.version == held["version"]
    assert [w["id"] for w in json.loads(b.payload())["workloads"]] == ["w1"], "back at the same version"
    assert b.delta(held["version"]) is None
    a.register(registration("w2", 8002))
    b.resync()
    answer = json.loads(b.answer(held["version"], None, delta=True, epoch=b.epoch))
    assert "base" not in answer, "the whole snapshot, not a delta from a version of two contents"
    assert {w["id"] for w in answer["workloads"]} == {"w1", "w2"}


def test_a_snapshot_of_another_epoch_gets_the_whole_snapshot(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    a, b = ConfigState(store), ConfigState(store)
    a.register(registration("w1", 8001))
    b.resync()
    base = a.version
    assert a.payload() == b.payload()
    assert a.epoch != b.epoch, "each replica's history is its own"
    a.register(registration("w2", 8002))
    b.resync()
    for answer in (
        a.answer(base, None, delta=True, epoch=b.epoch),
        b.answer(base, None, delta=True, epoch=a.epoch),
    ):
        assert "base" not in json.loads(answer)
    assert "base" in json.loads(b.answer(base, None, delta=True, epoch=b.epoch))
    # A store restored from a backup numbers versions again: a new epoch on that replica.
    epoch = b.epoch
    b.version = base - 1
    b.payload()
    assert b.epoch != epoch
