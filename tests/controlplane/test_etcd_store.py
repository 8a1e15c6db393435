"""Config-service replicas sharing one real etcd: policy, registry, tokens, CA and versions."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.etcd_store import EtcdStore, parse_etcd_url
from meshlib.controlplane.server import ConfigServer
from meshlib.controlplane.state import ConfigState
from meshlib.controlplane.store import StoreConflict
from meshlib.errors import MeshError
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration
from tests.conftest import destination_rule, virtual_service
from tests.etcd import running_etcd
from tests.servers import wait_for


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    with running_etcd(tmp_path / "etcd") as url:
        yield url


def replica(tmp_path: Path, etcd: str, name: str) -> ConfigServer:
    return ConfigServer(tmp_path / name, store_url=etcd, reap_interval=0.2)


def named(name: str) -> dict[str, object]:
    return virtual_service(name, host=name)


def test_three_replicas_share_policy_tokens_the_ca_and_the_registry(tmp_path: Path, etcd: str) -> None:
    with ExitStack() as stack:
        a, b, c = (stack.enter_context(replica(tmp_path, etcd, n)) for n in ("a", "b", "c"))
        # One admin token and one CA for all: the first replica's, settled in etcd.
        assert a.admin_token == b.admin_token == c.admin_token
        assert (tmp_path / "b" / "admin.token").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "c" / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
        assert a.state is not None
        assert b.state is not None
        assert c.state is not None
        assert a.state.trust_bundle == b.state.trust_bundle == c.state.trust_bundle
        admin_a = stack.enter_context(ControlPlaneClient(a.url, a.admin_token))
        admin_b = stack.enter_context(ControlPlaneClient(b.url, b.admin_token))
        admin_c = stack.enter_context(ControlPlaneClient(c.url, c.admin_token))
        # A token made on A proves the identity to B's CA; the workload watches B.
        token = admin_a.create_token("frontend")["token"]
        mesh = stack.enter_context(
            Mesh("frontend", control_plane=b.url, token=token, data_dir=tmp_path / "frontend")
        )
        identity = mesh.workload_identity
        assert identity is not None
        leaf = identity.certificate
        assert leaf is not None
        root = x509.load_pem_x509_certificate(c.state.trust_bundle[0].encode())
        assert leaf.issuer == root.subject
        leaf.verify_directly_issued_by(root)
        # Policy applied on C reaches the workload watching B within a second.
        version = admin_c.apply([destination_rule(), virtual_service()])["version"]
        started = time.monotonic()
        assert mesh.wait_for_version(version, 5)
        assert time.monotonic() - started < 1.0
        assert sorted((r.kind, r.name) for r in mesh.snapshot.resources) == [
            ("DestinationRule", "reviews"),
            ("VirtualService", "reviews"),
        ]
        # The workload registered with B is listed by A.
        assert wait_for(
            lambda: [w["registration"]["service"] for w in admin_a.workloads()["items"]] == ["frontend"],
            2,
        )
        # A revoked token is refused by every replica.
        token_id = token.split("_", 1)[1].split(".", 1)[0]
        admin_a.revoke_token(token_id)
        assert wait_for(
            lambda: any(t["revoked"] for t in admin_b.list_tokens()["items"]),
            2,
        )


def test_racing_applies_on_two_replicas_never_share_a_version(tmp_path: Path, etcd: str) -> None:
    with ExitStack() as stack:
        a, b = (stack.enter_context(replica(tmp_path, etcd, n)) for n in ("a", "b"))
        clients = [stack.enter_context(ControlPlaneClient(s.url, s.admin_token)) for s in (a, b)]
        start = clients[0].apply([named("base")])["version"]
        versions: list[int] = []
        lock = threading.Lock()

        def apply_many(client: ControlPlaneClient, prefix: str) -> None:
            for i in range(10):
                got = client.apply([named(f"{prefix}{i}")])["version"]
                with lock:
                    versions.append(got)

        threads = [
            threading.Thread(target=apply_many, args=(c, p)) for c, p in zip(clients, "xy", strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(versions) == list(range(start + 1, start + 21))  # 20 changes, 20 versions, no gap
        assert a.state is not None
        assert b.state is not None
        assert wait_for(lambda: a.state.version == b.state.version == start + 20, 2)
        for state in (a.state, b.state):
            names = {r.key.name for r in state.resources("VirtualService")}
            assert names == {"base", *(f"{p}{i}" for p in "xy" for i in range(10))}


def test_a_restarted_replica_catches_up_and_keeps_its_identity(tmp_path: Path, etcd: str) -> None:
    with replica(tmp_path, etcd, "a") as a, ControlPlaneClient(a.url, a.admin_token) as admin:
        b = replica(tmp_path, etcd, "b").start()
        assert b.state is not None
        assert a.state is not None
        bundle = b.state.trust_bundle
        b.stop()
        version = admin.apply([named("while-b-was-down")])["version"]
        with replica(tmp_path, etcd, "b") as again:
            assert again.state is not None
            assert again.state.version == version
            assert again.state.trust_bundle == bundle == a.state.trust_bundle
            assert [r.key.name for r in again.state.resources("VirtualService")] == ["while-b-was-down"]


def test_an_unreachable_etcd_is_a_clear_error(tmp_path: Path) -> None:
    from tests.servers import free_port

    port = free_port()
    with pytest.raises(MeshError, match=rf"no etcd endpoint answers \(127\.0\.0\.1:{port}"):
        EtcdStore([("127.0.0.1", port)], timeout=1.0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:2379", "expected etcd://"),
        ("etcd://", "expected etcd://"),
        ("etcd://127.0.0.1", "'127.0.0.1' is not host:port"),
        ("etcd://127.0.0.1:2379,:12", "':12' is not host:port"),
        ("etcd://h:99999", "'h:99999' is not host:port"),
    ],
)
def test_store_urls_are_checked(url: str, message: str) -> None:
    with pytest.raises(MeshError, match=message):
        parse_etcd_url(url)


def test_store_urls_keep_their_order() -> None:
    assert parse_etcd_url("etcd://10.0.0.1:2379,[::1]:2380") == [("10.0.0.1", 2379), ("::1", 2380)]


def test_a_replica_never_writes_back_an_older_registration_over_a_newer_one(etcd: str) -> None:
    """A workload acked on A, then re-registered on B with a new endpoint, then A flushes the
    ack before it has heard of B's change (no follower here: the worst order, every time).
    The store ends with B's endpoint and A's ack, and A with B's version."""
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(2)]
    try:
        a, b = (ConfigState(store) for store in stores)
        registration = WorkloadRegistration(
            id="w-1", service="reviews", endpoints=[{"address": "127.0.0.1", "port": 9080}]
        )
        assert a.register(registration)
        version = a.version
        b.resync()
        a.seen("w-1", acked=version)
        assert b.register(
            registration.model_copy(update={"endpoints": [AnnouncedEndpoint(address="127.0.0.1", port=9090)]})
        )
        assert b.version == version + 1
        a.flush()
        (stored,) = stores[0].load().workloads
        assert [e["port"] for e in stored.registration["endpoints"]] == [9090]
        assert stored.acked_version == version
        assert a.version == version + 1
    finally:
        for store in stores:
            store.close()


def test_changes_larger_than_one_etcd_transaction_are_written_whole(etcd: str) -> None:
    """etcd takes at most 128 operations per transaction (--max-txn-ops): 200 workloads'
    acks and an apply of 300 resources still land, and another replica reads all of them."""
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(2)]
    try:
        a, b = (ConfigState(store) for store in stores)
        for i in range(200):
            endpoint = AnnouncedEndpoint(address="127.0.0.1", port=10000 + i)
            assert a.register(WorkloadRegistration(id=f"w-{i}", service=f"svc{i}", endpoints=[endpoint]))
        acked = a.version
        for i in range(200):
            a.seen(f"w-{i}", acked=acked)
        a.flush()
        manifests = [named(f"vs{i}") for i in range(300)]
        a.apply(manifests)
        b.resync()
        assert b.version == a.version
        assert {w.registration.id: w.acked_version for w in b.workloads()} == {
            f"w-{i}": acked for i in range(200)
        }
        assert len(b.resources("VirtualService")) == 300
        assert b.delete([r.key for r in b.resources("VirtualService")])
        a.resync()
        assert a.resources("VirtualService") == []
        assert a.version == b.version
    finally:
        for store in stores:
            store.close()


_ENDPOINT = AnnouncedEndpoint(address="127.0.0.1", port=9080)


def test_a_large_change_left_half_written_is_finished_by_the_next_reader(
    etcd: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer stops (dies) right after it stored the change as one intent with the new
    version: the next replica to read writes the change out, and the version moves on."""
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(2)]
    try:
        a, b = (ConfigState(store) for store in stores)

        async def dies(*_: object) -> None:
            return None

        monkeypatch.setattr(stores[0], "_finish", dies)
        assert a.register(WorkloadRegistration(id="w-1", service="reviews", endpoints=[_ENDPOINT]))
        b.resync()
        assert a.apply([named(f"vs{i}") for i in range(150)]).results
        version = a.version
        # A write at the version B holds is refused while the intent is there: B re-reads
        # (finishing the intent) and writes again, never under a half-written change.
        b.seen("w-1", acked=version - 1)
        with pytest.raises(StoreConflict):
            b._flush_once()
        b.resync()
        assert b.version == version
        assert len(b.resources("VirtualService")) == 150
        assert b.apply([named("after")]).results
        assert b.version == version + 1
        raw = stores[1]._call(stores[1]._retrying(lambda c: c.get(stores[1]._key("pending"))))
        assert raw is None  # the intent is gone once written out
    finally:
        for store in stores:
            store.close()


def _entry(workload: str, port: int) -> WorkloadRegistration:
    return WorkloadRegistration(
        id=workload, service="reviews", endpoints=[AnnouncedEndpoint(address="127.0.0.1", port=port)]
    )


def _listed(state: ConfigState) -> list[str]:
    return sorted(w["id"] for w in json.loads(state.payload())["workloads"])


def test_a_dead_replicas_workloads_are_withdrawn_everywhere_when_its_lease_runs_out(
    tmp_path: Path, etcd: str
) -> None:
    """Registry entries live under the etcd lease of the replica a workload watches. A dies
    (its store closed without a word: no keep-alive, no revoke): once its lease runs out every
    other replica sees its workloads lost and one moves the version. w2 had failed over to B
    and was taken over at B's flush, so it stays; w1 comes back when it calls in again."""
    stores = [EtcdStore(parse_etcd_url(etcd), lease_ttl=2) for _ in range(3)]
    try:
        a, b = ConfigState(stores[0]), ConfigState(stores[1])
        assert a.register(_entry("w1", 9081))
        assert a.register(_entry("w2", 9082))
        b.resync()
        assert _listed(b) == ["w1", "w2"]
        assert not b.seen("w2")  # its next watch, on B: live through A until B's flush
        b.flush()
        stores[0].close()
        version = b.version

        def lost() -> dict[str, bool]:
            b.resync()
            return {w.registration.id: w.lost for w in b.workloads()}

        assert wait_for(lambda: lost() == {"w1": True, "w2": False}, 10)
        assert b.version == version, "etcd ended the keys: no version says so yet"
        assert b.announce()
        assert b.version == version + 1
        assert not b.announce(), "announced once"
        assert _listed(b) == ["w2"]
        # A third replica agrees, from the store alone.
        c = ConfigState(stores[2])
        assert (c.version, _listed(c)) == (b.version, ["w2"])
        # w1 calls in through B: live again, under B's lease, and a new version for it.
        assert b.seen("w1")
        assert (b.version, _listed(b)) == (version + 2, ["w1", "w2"])
        c.resync()
        assert _listed(c) == ["w1", "w2"]
        assert not c.announce(), "B moved the version with it"
    finally:
        for store in stores:
            store.close()


@contextmanager
def _w1_on_a_silent_past_the_ttl(
    etcd: str, others: int = 0
) -> Iterator[tuple[ConfigState, ConfigState, list[EtcdStore]]]:
    """Replicas A and B; w1 registered through A (A holds it), B has read it; then w1's
    registry TTL passes without a word from it (and from ``others`` more, w2...)."""
    now = [1000.0]
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(2)]
    try:
        a = ConfigState(stores[0], clock=lambda: now[0])
        b = ConfigState(stores[1], clock=lambda: now[0])
        for n in range(1, others + 2):
            assert a.register(_entry(f"w{n}", 9080 + n))
        b.resync()
        now[0] += a.workload_ttl + 1
        yield a, b, stores
    finally:
        for store in stores:
            store.close()


def test_a_workload_silent_past_the_ttl_is_released_by_its_holder_alone(etcd: str) -> None:
    with _w1_on_a_silent_past_the_ttl(etcd) as (a, b, _):
        assert not b.reap(), "B does not hold w1: A judges it"
        assert b.version == a.version
        assert a.reap()
        b.resync()
        assert [w.lost for w in b.workloads()] == [True]
        assert not b.announce(), "A moved the version when it let w1 go"
        assert (b.version, _listed(b)) == (a.version, [])


def test_a_replica_starting_when_no_replica_holds_any_workload_gives_each_a_ttl(
    tmp_path: Path, etcd: str
) -> None:
    store = EtcdStore(parse_etcd_url(etcd), lease_ttl=2)
    a = ConfigState(store)
    assert a.register(_entry("w1", 9081))
    store.close()
    probe = EtcdStore(parse_etcd_url(etcd))
    try:
        assert wait_for(lambda: probe.load().live == {}, 10), "the whole control plane was down"
    finally:
        probe.close()
    again = EtcdStore(parse_etcd_url(etcd))
    try:
        restarted = ConfigState(again)
        assert _listed(restarted) == ["w1"], "held again: a TTL to call in"
        assert again.load().live == {"w1": again.holder}
    finally:
        again.close()


def test_a_replica_is_not_told_of_its_own_writes_however_fast_they_come(etcd: str) -> None:
    """The watch can bring the event of a write before the write's own answer; such an event
    is judged once the answer is in. Before, under a burst of registrations about every one
    came back as another replica's (5,785 of 3,000 registrations' events), and each made
    the replica read the whole store again."""
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(2)]
    try:
        state = ConfigState(stores[0])
        told: list[float] = []
        stores[0].follow(lambda _: told.append(time.monotonic()))
        for n in range(300):
            state.register(WorkloadRegistration(id=f"w-{n}", service="frontend"))
            if n % 100 == 0:
                state.flush()
        time.sleep(0.5)
        assert told == [], f"told of {len(told)} of its own writes"
        ConfigState(stores[1]).register(_entry("other", 9090))  # another replica's: told
        assert wait_for(lambda: len(told) > 0, 5)
    finally:
        for store in stores:
            store.close()


def test_another_replicas_change_seen_during_a_failed_write_is_still_told(etcd: str) -> None:
    """An event that came while a write of ours was in flight waits for that write's answer;
    when the write fails instead, the event is told then (not at some later write)."""
    import asyncio

    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(2)]
    try:
        told: list[float] = []
        stores[0].follow(lambda _: told.append(time.monotonic()))
        other = ConfigState(stores[1])
        client = stores[0]._client

        async def failing(*args: object, **kwargs: object) -> None:
            await asyncio.to_thread(other.register, _entry("other", 9090))  # another replica writes
            await asyncio.sleep(0.5)  # its event comes while this write is in flight
            raise RuntimeError("etcd went away mid-write")

        client.transaction = failing
        with pytest.raises(RuntimeError, match="mid-write"):
            stores[0].save_workloads(0, [], ["nobody"])
        assert wait_for(lambda: len(told) > 0, 5), "the other replica's change was never told"
    finally:
        for store in stores:
            store.close()


def test_a_lease_that_ran_out_is_renewed_with_every_live_key_put_again(etcd: str) -> None:
    store = EtcdStore(parse_etcd_url(etcd), lease_ttl=2)
    probe = EtcdStore(parse_etcd_url(etcd))
    try:
        state = ConfigState(store)
        assert state.register(_entry("w1", 9081))
        store._call(store._client.revoke_lease(store._lease))  # as if etcd had been away for its TTL
        assert probe.load().live == {}
        store.load()  # a re-read in between (the watch saw the keys go) must not forget them
        assert wait_for(lambda: probe.load().live == {"w1": store.holder}, 5), "put again under a new lease"
    finally:
        store.close()
        probe.close()


def test_a_workload_taken_over_after_its_replicas_lease_ran_out_comes_back_with_a_version(
    etcd: str,
) -> None:
    stores = [EtcdStore(parse_etcd_url(etcd), lease_ttl=2) for _ in range(2)]
    try:
        a, b = ConfigState(stores[0]), ConfigState(stores[1])
        assert a.register(_entry("w1", 9081))
        b.resync()
        assert not b.seen("w1")  # it watches B now; taken over at B's next flush
        stores[0].close()

        def lost() -> bool:
            b.resync()
            return b.workloads()[0].lost

        assert wait_for(lost, 10), "A's lease ran out before B's flush"
        version = b.version
        assert b.flush(), "clients must hear: w1 is back"
        assert (b.version, _listed(b)) == (version + 1, ["w1"])
        assert stores[1].load().live == {"w1": stores[1].holder}
    finally:
        for store in stores:
            store.close()


def test_a_workload_is_lost_only_once_the_store_has_let_it_go(etcd: str) -> None:
    now = [1000.0]
    store = EtcdStore(parse_etcd_url(etcd))
    try:
        state = ConfigState(store, clock=lambda: now[0])
        assert state.register(_entry("w1", 9081))
        now[0] += state.workload_ttl + 1
        save = store.save_workloads

        def broken(*args: Any, **kwargs: Any) -> None:
            raise OSError("etcd away")

        store.save_workloads = broken  # type: ignore[method-assign]
        with pytest.raises(OSError, match="etcd away"):
            state.reap()
        assert not state.workloads()[0].lost, "still live in the store: still live here"
        store.save_workloads = save  # type: ignore[method-assign]
        assert state.reap()
        assert state.workloads()[0].lost
        assert store.load().live == {}
    finally:
        store.close()


def test_a_replica_never_lets_go_of_a_workload_another_replica_has_taken_over(etcd: str) -> None:
    """A holds w1, which fails over to B; A reaps it before it has read B's take-over. Its
    release is refused (the live key is B's now), and after a re-read A leaves w1 alone."""
    with _w1_on_a_silent_past_the_ttl(etcd) as (a, b, stores):
        assert not b.seen("w1")
        b.flush()  # B holds w1 now; A has not read it
        version = a.version
        assert not a.reap(), "not A's to let go any more"
        assert stores[0].load().live == {"w1": stores[1].holder}
        assert [w.lost for w in a.workloads()] == [False]
        assert a.version == version


def test_a_release_too_large_for_one_transactions_compares_is_refused_all_the_same(etcd: str) -> None:
    """As above with 120 more silent workloads: more live keys than etcd takes comparisons in
    one transaction. The release is checked by a read first and refused; after the re-read A
    lets go of its own 120 and leaves w1 alone."""
    with _w1_on_a_silent_past_the_ttl(etcd, others=120) as (a, b, stores):
        assert not b.seen("w1")
        b.flush()
        assert a.reap(), "A's own 120 are let go"
        assert stores[0].load().live == {"w1": stores[1].holder}, "w1's live key is still B's"
        lost = {w.registration.id for w in a.workloads() if w.lost}
        assert len(lost) == 120
        assert "w1" not in lost


class _Told:
    """What a store's watch tells (``follow``), kept for the test to hand to ``changes``."""

    def __init__(self, store: EtcdStore) -> None:
        self.events: list[Any] = []
        self.unknown = 0
        self._lock = threading.Lock()
        store.follow(self._changed)

    def _changed(self, events: list[Any] | None) -> None:
        with self._lock:
            if events is None:
                self.unknown += 1
            else:
                self.events += events

    def take(self, settle: float = 0.3) -> list[Any]:
        """Every event told until none has come for ``settle`` seconds."""
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < settle:
            time.sleep(0.02)
            with self._lock:
                if len(self.events) != seen:
                    seen, quiet_since = len(self.events), time.monotonic()
        with self._lock:
            taken, self.events = self.events, []
        return taken


def _as_read(state: ConfigState) -> tuple[object, ...]:
    """What a replica serves and shows, without the times (a whole read merges the same)."""
    views = sorted(
        (v.registration.id, v.stored, v.acked_version, v.nack_version, v.lost, v.synced_version)
        for v in state.workloads()
    )
    resources = [(r.key, r.manifest, r.version) for r in state.resources()]
    return state.version, json.loads(state.payload()), views, resources


def test_a_replica_follows_the_others_by_what_changed_to_what_a_whole_read_gives(etcd: str) -> None:
    """B takes what the watch told of A's writes (registrations, an ack, a withdrawal, a new
    endpoint, a take-over, policy applied and deleted) entry by entry, without reading the
    store, and ends where a replica reading everything ends. A change too large for one
    etcd transaction (written out in pieces behind an intent) is read whole instead."""
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(3)]
    try:
        a, b = ConfigState(stores[0]), ConfigState(stores[1])
        told = _Told(stores[1])
        loads = []
        load = stores[1].load
        stores[1].load = lambda: (loads.append(1), load())[1]  # type: ignore[method-assign]

        def follow() -> bool | None:
            changes = stores[1].changes(told.take())
            if changes is None:
                return None
            b.resync(changes)
            return True

        steps: list[tuple[str, Any]] = [
            ("three registered", lambda: [a.register(_entry(f"w{n}", 9080 + n)) for n in (1, 2, 3)]),
            ("policy applied", lambda: a.apply([named("reviews"), destination_rule()])),
            ("w1 acked, flushed", lambda: (a.seen("w1", acked=a.version), a.flush())),
            ("w2 withdrawn", lambda: a.deregister("w2")),
            ("w3 on a new port", lambda: a.register(_entry("w3", 9999))),
            ("w4 registered on B itself", lambda: b.register(_entry("w4", 9084))),
            ("w1 taken over by B", lambda: (b.seen("w1"), b.flush())),
            ("a resource deleted", lambda: a.delete([a.resources("VirtualService")[0].key])),
            # A's ack of w3 is written before B withdraws w3, and told to B after: never back.
            (
                "w3 acked on A, withdrawn on B",
                lambda: (a.seen("w3", acked=a.version), a.flush(), b.deregister("w3")),
            ),
        ]
        for name, step in steps:
            step()
            assert follow(), f"{name}: read whole"
            assert _as_read(b) == _as_read(ConfigState(stores[2])), name
        assert loads == [], "followed without reading the store"
        assert told.unknown == 0
        assert [(v.registration.id, v.lost) for v in b.workloads()] == [
            ("w1", False),
            ("w4", False),
        ]
        many = [_entry(f"m{n}", 10000 + n) for n in range(120)]
        a.register_many(many)  # past etcd's 128 operations: an intent, then its pieces
        assert follow() is None, "an intent was told: only a whole read will do"
        b.resync()
        assert loads == [1]
        assert _as_read(b) == _as_read(ConfigState(stores[2]))
        assert len(b.workloads()) == 122
    finally:
        for store in stores:
            store.close()


def _stored_registration(store: EtcdStore, workload: str) -> dict[str, Any]:
    found = store._call(store._retrying(lambda c: c.get(store._key("workloads", workload))))
    assert found is not None
    registration: dict[str, Any] = json.loads(found.value)["registration"]
    return registration


@contextmanager
def _w1_on_a_followed_by_b(etcd: str) -> Iterator[tuple[list[EtcdStore], ConfigState, ConfigState, _Told]]:
    """Replicas A and B and a third store to read with; w1 registered on A, and B following
    A by what it is told (the test hands the told events over itself)."""
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(3)]
    try:
        a, b = ConfigState(stores[0]), ConfigState(stores[1])
        told = _Told(stores[1])
        assert a.register(_entry("w1", 9081))
        b.resync(stores[1].changes(told.take()))
        yield stores, a, b, told
    finally:
        for store in stores:
            store.close()


def test_what_is_told_moves_nothing_until_the_state_has_taken_it(etcd: str) -> None:
    """Events up to an intent (``pending``) come to nothing (a whole read instead). Until that
    read, B's writes compare against what B holds: its ack flush of w1 must not write its old
    copy over A's re-registration, nor its next version skip moving etcd's."""
    with _w1_on_a_followed_by_b(etcd) as (stores, a, b, told):
        version = b.version
        # w1 restarted and registered again on A (new pid: no new version), then A's large change
        a.register(_entry("w1", 9081).model_copy(update={"pid": 4242}))  # nothing served changes
        a.register_many([_entry(f"m{n}", 10000 + n) for n in range(120)])
        assert stores[1].changes(told.take()) is None
        # Say the whole read fails now. w1 acks on B, B flushes; B registers w3.
        b.seen("w1", acked=b.version)
        b.flush()
        assert _stored_registration(stores[2], "w1")["pid"] == 4242, "B wrote its old copy over A's"
        assert b.register(_entry("w3", 9083))
        assert b.version > version + 1, "B took A's versions before moving past them"
        assert _as_read(b) == _as_read(ConfigState(stores[2]))


def test_after_a_failed_take_every_write_reads_everything_first(etcd: str) -> None:
    """``forget`` (the follower's answer to a failure halfway): B's next same-version write
    conflicts, B reads the store, and A's newer registration survives."""
    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(3)]
    try:
        a, b = ConfigState(stores[0]), ConfigState(stores[1])
        assert a.register(_entry("w1", 9081))
        b.resync()
        a.register(_entry("w1", 9081).model_copy(update={"pid": 4242}))
        # B's store took A's event, and then B's state failed to: the baseline says B holds
        # A's copy, which it does not.
        key = stores[1]._key("workloads", "w1")
        found = stores[1]._call(stores[1]._retrying(lambda c: c.get(key)))
        stores[1]._seen[key] = int(found.mod_revision)
        stores[1].forget()
        b.seen("w1", acked=b.version)
        b.flush()
        assert _stored_registration(stores[2], "w1")["pid"] == 4242
        assert _as_read(b) == _as_read(ConfigState(stores[2]))
    finally:
        for store in stores:
            store.close()


def test_an_older_live_key_told_late_does_not_undo_a_take_over(etcd: str) -> None:
    """A puts w1's live key again (as after its lease ran out); before B is told, w1 calls in
    on B and B's flush takes it over. A's older put, told then, must not make B think A
    holds w1 (neither would reap it) nor drop it from what B puts again after a lease lapse."""
    with _w1_on_a_followed_by_b(etcd) as (stores, _, b, told):
        key = stores[0]._key("live", "w1")
        stores[0]._call(stores[0]._txn([], [], [], [key]))  # EtcdStore._renew's put
        b.seen("w1")
        b.flush()
        assert key in stores[1]._holding
        b.resync(stores[1].changes(told.take()))
        assert b._live_map == ConfigState(stores[2])._live_map == {"w1": stores[1].holder}
        assert key in stores[1]._holding


async def test_a_revocation_taken_by_another_read_first_is_still_reloaded(etcd: str) -> None:
    """A revokes a token. Before B's follower takes the event, a write of B's lost a race and
    B read the store (``ConfigState._raced``): the event is then old news for the registry,
    but the tokens must be read again all the same, and B refuse the token."""
    from meshlib.ca.tokens import TokenError, TokenRegistry
    from meshlib.controlplane.app import VersionNotifier, _follower

    stores = [EtcdStore(parse_etcd_url(etcd)) for _ in range(2)]
    try:
        b = ConfigState(stores[1])
        tokens_a, tokens_b = TokenRegistry(stores[0]), TokenRegistry(stores[1])
        record, secret = tokens_a.create("reviews", "default", 3600)
        tokens_b.reload()
        tokens_b.verify(secret)
        # A follower whose burst timer fires late (a busy loop), so the read comes first.
        stores[1].follow(_follower(b, stores[1], VersionNotifier(), tokens_b, delay=0.3))
        await asyncio.sleep(0.1)
        tokens_a.revoke(record.id)
        await asyncio.sleep(0.05)
        b.resync()
        await asyncio.sleep(0.6)
        with pytest.raises(TokenError):
            tokens_b.verify(secret)
    finally:
        for store in stores:
            store.close()
