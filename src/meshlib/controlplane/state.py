"""The config service's state and its rules, free of HTTP: apply, delete, registry, acks.

One global version counts every change that reaches workloads (resources and the
endpoints of the registry). A change set is validated whole and committed to the
store in one transaction before memory changes, so an invalid or failed apply
changes nothing anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from ..core.hosts import CLUSTER_DOMAIN, normalize_host
from ..core.snapshot import entry_selects
from ..egress_scope import EgressScope, Hosts
from ..errors import ConfigError, ConfigIssue
from ..policy.discovery import SOURCE_ANNOTATION, ConsulTarget, consul_target
from ..policy.resources import Resource, ResourceKey, ServiceEntry
from ..policy.skipped import SkippedResource
from ..policy.validate import format_path, parse_document, parse_resource, resource_label
from ..registry import WorkloadRegistration
from ..snapshot_delta import SECTIONS, item_key
from .snapshot_log import NOTHING_NEW, Encoded, SnapshotLog
from .store import Store, StoreChanges, StoreConflict, StoredResource, StoredWorkload

__all__ = [
    "DISCOVERED_KIND",
    "MAX_ENDPOINTS_PER_SERVICE",
    "MAX_REGISTRY_ENDPOINTS",
    "MAX_WORKLOADS",
    "ApplyOutcome",
    "ApplyResult",
    "ConfigState",
    "RegistryFull",
    "WorkloadView",
]

# What one registry may hold. A workload announces at most 32 endpoints (registry.py); these
# bound what all of them together make every watcher download (about 150 bytes each).
MAX_WORKLOADS = 10_000
MAX_ENDPOINTS_PER_SERVICE = 1_000
MAX_REGISTRY_ENDPOINTS = 20_000

log = logging.getLogger("meshlib.controlplane")
R = TypeVar("R")
_RACE_RETRIES = 8
_MAX_SCOPES = 4096  # distinct egress-host lists remembered (parsed) at once
# Scoped snapshots kept per version. Workloads that learn their egress hosts each ask with
# their own list, and one that just learned a host asks again at the same version.
_MAX_SCOPED = 256

Action = Literal["created", "configured", "unchanged"]

# What a discovery source found is stored as a resource of this kind (no policy kind starts
# with "_": a user cannot apply one), one per Consul service: written once at a new version by
# whichever replica sees the change first, read by the others with the rest of the store.
DISCOVERED_KIND = "_Discovered"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    key: ResourceKey
    action: Action

    def to_json(self) -> dict[str, str]:
        return {
            "kind": self.key.kind,
            "namespace": self.key.namespace,
            "name": self.key.name,
            "action": self.action,
        }


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What an apply did to each resource, and the resources of kinds meshlib does not apply."""

    results: list[ApplyResult]
    skipped: list[SkippedResource]


@dataclass
class _Admitted:
    """What the registrations admitted so far into one store write add to the registry."""

    live: int = 0
    endpoints: Counter[tuple[str, str]] = field(default_factory=Counter)
    total: int = 0


class RegistryFull(Exception):
    """A registration the registry refuses as a whole (nothing is stored); ``status`` is the
    HTTP answer: 409 for a host it may not claim or an address it may not use, 507 for a
    limit."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Workload:
    stored: StoredWorkload
    registration: WorkloadRegistration
    watching: int = 0
    lost: bool = False
    # (acked, through): a watch from version ``acked`` found nothing for its egress hosts up
    # to ``through``; it is as current as one that acked ``through``.
    current: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class WorkloadView:
    """What ``meshctl status`` shows for one workload."""

    registration: WorkloadRegistration
    stored: Mapping[str, Any]  # the registration's JSON form, as stored: read, never changed
    identity: str
    acked_version: int | None
    nack_version: int | None
    nack_reason: str | None
    first_seen: float
    last_seen: float
    connected: bool
    lost: bool
    synced_version: int | None  # acked, or the later version it is known to be current at

    def to_json(self) -> dict[str, Any]:
        return {
            "registration": self.stored,  # dumping each again cost ~10 µs apiece at 5,000
            "identity": self.identity,
            "ackedVersion": self.acked_version,
            "syncedVersion": self.synced_version,
            "nackVersion": self.nack_version,
            "nackReason": self.nack_reason,
            "firstSeen": self.first_seen,
            "lastSeen": self.last_seen,
            "connected": self.connected,
            "lost": self.lost,
        }


@dataclass
class ConfigState:
    store: Store
    trust_domain: str = CLUSTER_DOMAIN
    workload_ttl: float = 90.0
    clock: Callable[[], float] = time.time
    trust_bundle: tuple[str, ...] = ()  # the CA roots (PEM) workloads must trust
    max_workloads: int = MAX_WORKLOADS
    max_endpoints_per_service: int = MAX_ENDPOINTS_PER_SERVICE
    max_registry_endpoints: int = MAX_REGISTRY_ENDPOINTS
    # Where the config service itself listens: no workload may announce an endpoint there
    # (clients would send their requests, and their credentials, to the config service).
    reserved: set[tuple[str, int]] = field(default_factory=set)
    forget_after: float = 0.0  # seconds a lost workload stays listed (0: ten times the TTL)
    # Discovery sources this config service runs ("consul": meshctl serve --consul); an entry
    # naming another is refused at apply.
    discovery_sources: frozenset[str] = frozenset()
    version: int = field(init=False, default=0)
    _resources: dict[ResourceKey, StoredResource] = field(init=False, default_factory=dict)
    _parsed: dict[ResourceKey, Resource] = field(init=False, default_factory=dict)
    _workloads: dict[str, _Workload] = field(init=False, default_factory=dict)
    _dirty: set[str] = field(init=False, default_factory=set)
    _payload: tuple[int, bytes] | None = field(init=False, default=None)
    _per_service: Counter[tuple[str, str]] = field(init=False, default_factory=Counter)  # live endpoints
    _live: int = field(init=False, default=0)  # workloads not lost
    _own_addresses: set[str] = field(init=False, default_factory=set)
    _entries: dict[str, ServiceEntry] | None = field(init=False, default=None)  # host -> its ServiceEntry
    _discovered: dict[ResourceKey, StoredResource] = field(init=False, default_factory=dict)
    _encoded: dict[tuple[str, str], tuple[object, bytes]] = field(init=False, default_factory=dict)
    _log: SnapshotLog = field(init=False, default_factory=SnapshotLog)
    # A store with leases (etcd): workload id -> the replica keeping it live (None: no leases).
    _live_map: dict[str, str] | None = field(init=False, default=None)
    # Workloads watching here whose live key another replica holds: taken over at the next flush.
    _take_over: set[str] = field(init=False, default_factory=set)
    _unannounced: bool = field(init=False, default=False)  # liveness moved with no new version
    _lists: dict[str, list[bytes]] = field(init=False, default_factory=dict)  # each section's items
    _registry: list[tuple[bytes, Hosts]] = field(init=False, default_factory=list)  # entries, hosts
    _scoped: dict[tuple[str, ...], bytes] = field(init=False, default_factory=dict)  # per egress hosts
    _scopes: dict[tuple[str, ...], EgressScope] = field(init=False, default_factory=dict)
    _selecting: tuple[ServiceEntry, ...] = field(init=False, default=())  # entries with a workloadSelector
    # workload id -> (registration, the selecting entries, its hosts): computed when either changes
    _served: dict[str, tuple[WorkloadRegistration, tuple[ServiceEntry, ...], Hosts]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if not self.forget_after:
            self.forget_after = 10 * self.workload_ttl
        loaded = self.store.load()
        self.version = loaded.version
        now = self.clock()
        self._take_resources(loaded.resources)
        for stored in loaded.workloads:
            registration = _registration_of(stored)
            if registration is None:
                continue
            # Give every known workload a full TTL to reconnect after a restart.
            stored.last_seen = max(stored.last_seen, now)
            entry = self._workloads[stored.id] = _Workload(stored, registration)
            self._account(entry, 1)
        if loaded.live is not None:
            self._start_leases(loaded.live)
        served = loaded.trust_bundle
        for _ in range(_RACE_RETRIES):  # replicas starting together race to record the bundle
            try:
                self._note_trust_bundle(served)
                break
            except StoreConflict:
                self.resync()
                served = self.store.load().trust_bundle

    def _take_resources(self, stored: Sequence[StoredResource]) -> None:
        """Serve ``stored`` (parsed again only where it changed)."""
        resources: dict[ResourceKey, StoredResource] = {}
        parsed: dict[ResourceKey, Resource] = {}
        self._discovered = {}
        for item in stored:
            if item.key.kind == DISCOVERED_KIND:
                self._discovered[item.key] = item
                continue
            old = self._resources.get(item.key)
            if old is not None and old.version == item.version and old.manifest == item.manifest:
                resources[item.key], parsed[item.key] = old, self._parsed[item.key]
                continue
            resource, problems = parse_resource(item.manifest, item.key.namespace)
            if resource is None:
                # Stored by an older meshlib whose rules were looser: keep it in the store
                # (nothing is lost), leave it out of snapshots, and say so.
                detail = "; ".join(f"{format_path(p)}: {m}" for p, m in problems)
                log.error("stored %s is no longer valid and is not served: %s", item.key, detail)
                continue
            resources[item.key], parsed[item.key] = item, resource
        self._resources, self._parsed = resources, parsed
        self._payload = self._entries = None

    def resync(self, changes: StoreChanges | None = None) -> bool:
        """Read the store again: another replica changed it (a shared store), or a write of
        ours lost a race. What this replica alone knows is kept: watches in progress, which
        workloads it judged lost, acks and last-seen times it has not flushed yet.

        ``changes``: only what changed, as the store's watch told it (``EtcdStore.changes``),
        at the cost of those entries rather than of everything stored. True when what
        workloads receive may have changed (a version, a resource, a registry entry)."""
        if changes is not None:
            return self._take_changes(changes)
        loaded = self.store.load()
        version, was_lost = (
            self.version,
            {i: w.lost for i, w in self._workloads.items() if w.registration.endpoints},
        )
        self._take_resources(loaded.resources)
        workloads: dict[str, _Workload] = {}
        for stored in loaded.workloads:
            taken = self._take_workload(self._workloads.get(stored.id), stored, loaded.live)
            if taken is not None:
                workloads[stored.id] = taken
        self._workloads = workloads
        self._dirty &= workloads.keys()
        self._per_service.clear()
        self._live = 0
        for item in workloads.values():
            self._account(item, 1)
        self.version = loaded.version
        self._payload = None
        if loaded.live is not None:
            self._live_map = dict(loaded.live)
            self._take_over &= workloads.keys()
            # A lease ran out (a replica died) or was put again with no new version: what this
            # replica serves at this version changed, and workloads must hear (``announce``).
            flipped = any(was_lost.get(i, w.lost) != w.lost for i, w in workloads.items())
            self._unannounced = loaded.version == version and (self._unannounced or flipped)
        return True

    def _take_workload(
        self, current: _Workload | None, stored: StoredWorkload, live: Mapping[str, str] | None
    ) -> _Workload | None:
        """A registry entry as the store has it now, merged with what this replica knows of it
        (``current``); None when it is no longer valid."""
        if current is not None and current.stored.registration == stored.registration:
            registration: WorkloadRegistration | None = current.registration
        else:
            registration = _registration_of(stored)
        if registration is None:
            return None
        if current is None:
            return _Workload(stored, registration, lost=live is not None and stored.id not in live)
        mine = current.stored
        stored.last_seen = max(stored.last_seen, mine.last_seen)
        if stored.id in self._dirty:  # our acks are newer than the store's
            stored.acked_version, stored.nack_version = mine.acked_version, mine.nack_version
            stored.nack_reason = mine.nack_reason
        current.stored, current.registration = stored, registration
        if live is not None:
            current.lost = stored.id not in live  # the store's leases decide
        elif current.lost and self.clock() - stored.last_seen <= self.workload_ttl:
            current.lost = False  # seen through another replica
        return current

    def _take_changes(self, changes: StoreChanges) -> bool:
        """``resync`` of only the entries in ``changes``, to the same result as reading all."""
        version, served = self.version, False
        if changes.resources:
            stored = {**self._resources, **self._discovered}
            for key, item in changes.resources.items():
                if item is None:
                    stored.pop(key, None)
                else:
                    stored[key] = item
            self._take_resources(sorted(stored.values(), key=lambda r: (r.version, *r.key)))
            served = True
        live = self._live_map
        if live is not None:
            for workload_id, holder in changes.live.items():
                if holder is None:
                    live.pop(workload_id, None)
                else:
                    live[workload_id] = holder
        flipped = False
        for workload_id in dict.fromkeys([*changes.workloads, *changes.live]):
            current = self._workloads.get(workload_id)
            before = None if current is None else (current.registration, current.lost)
            if current is not None:
                self._account(current, -1)
            if workload_id in changes.workloads:
                entry = changes.workloads[workload_id]
                taken = None if entry is None else self._take_workload(current, entry, live)
            elif current is not None and live is not None:
                current.lost = workload_id not in live
                taken = current
            else:
                taken = current  # a live key of a workload this replica has not read yet
            if taken is None:
                self._workloads.pop(workload_id, None)
                self._dirty.discard(workload_id)
                self._take_over.discard(workload_id)
                served = served or before is not None
                continue
            self._workloads[workload_id] = taken
            self._account(taken, 1)
            if before != (taken.registration, taken.lost):
                served = True
                flipped = flipped or (
                    before is not None and before[1] != taken.lost and bool(taken.registration.endpoints)
                )
        if changes.version is not None and changes.version != self.version:
            self.version = changes.version
            served = True
        if served:
            self._payload = None
        if live is not None:
            self._unannounced = self.version == version and (self._unannounced or flipped)
        return served

    def announce(self) -> bool:
        """With leases: a new version when the store's live workloads changed without one
        (another replica's lease ran out); True if clients must hear. The first replica to
        see it moves the version; the others, re-reading, find it announced."""
        if not self._unannounced:
            return False
        return self._raced(self._announce_once)

    def _announce_once(self) -> bool:
        if not self._unannounced:
            return False
        self._bump_once()
        self._unannounced = False
        return True

    def _start_leases(self, live: dict[str, str]) -> None:
        """A replica starting on a store with leases. When no replica keeps any workload live
        (the whole control plane was down), it holds them all, giving each a TTL to call in
        again, as a restarted single replica does; else the store's leases say who is lost."""
        self._live_map = dict(live)
        orphans = [] if live else list(self._workloads)
        if orphans:
            self._raced(lambda: self._hold(orphans))
        for item in self._workloads.values():
            if item.stored.id not in self._live_map and not item.lost:
                self._account(item, -1)
                item.lost = True

    def _revive(self, ids: Sequence[str]) -> None:
        """Lost workloads calling in here: live under this replica's lease, with a new version."""
        self._raced(lambda: self._hold(ids, self.version + 1))
        for workload_id in ids:
            item = self._workloads.get(workload_id)
            if item is not None and item.lost:  # (a re-read on the way may have found it live)
                item.lost = False
                self._account(item, 1)

    def _hold(self, ids: Sequence[str], version: int | None = None) -> None:
        """Put ``ids`` live under this replica's lease (at ``version``: moving it)."""
        self.store.save_workloads(self.version if version is None else version, (), (), hold=ids)
        if self._live_map is not None and self.store.holder is not None:
            self._live_map.update(dict.fromkeys(ids, self.store.holder))
        if version is not None:
            self._moved_to(version)

    def _raced(self, action: Callable[[], R]) -> R:
        """Run ``action``; when another replica moved the version first, re-read and run it
        again (a few times: each loss means the other side made progress)."""
        for _ in range(_RACE_RETRIES):
            try:
                return action()
            except StoreConflict:
                self.resync()
        return action()

    def _note_trust_bundle(self, served: str) -> None:
        """A restart with other roots (a root rotation) is a new version: watchers that are
        up to date would otherwise never receive the new bundle."""
        digest = hashlib.sha256("".join(self.trust_bundle).encode()).hexdigest()
        if digest == served:
            return
        if served:
            self.version += 1
            log.info("the trust bundle changed: served from version %d", self.version)
        self.store.save_trust_bundle(self.version, digest)

    # --- resources --------------------------------------------------------------------

    def resources(self, kind: str | None = None, namespace: str | None = None) -> list[StoredResource]:
        return [
            item
            for key, item in sorted(self._resources.items())
            if (kind is None or key.kind == kind) and (namespace is None or key.namespace == namespace)
        ]

    def get(self, key: ResourceKey) -> StoredResource | None:
        return self._resources.get(key)

    def parsed_resources(self) -> list[Resource]:
        return list(self._parsed.values())

    def apply(
        self,
        manifests: Sequence[object],
        *,
        namespace: str = "default",
        dry_run: bool = False,
        strict: bool = False,
    ) -> ApplyOutcome:
        """Validate every manifest, then store all of them at one new version, or none.
        Manifests of kinds meshlib does not apply are skipped, or refused when ``strict``."""
        return self._raced(lambda: self._apply(manifests, namespace, dry_run, strict))

    def _apply(
        self, manifests: Sequence[object], namespace: str, dry_run: bool, strict: bool
    ) -> ApplyOutcome:
        parsed, skipped = self._validate(manifests, namespace, strict)
        results: list[ApplyResult] = []
        changed: list[tuple[Resource, StoredResource | None]] = []
        for resource in parsed:
            old = self._resources.get(resource.key)
            if old is None:
                results.append(ApplyResult(resource.key, "created"))
                changed.append((resource, None))
            elif self._parsed[resource.key].content() == resource.content():
                results.append(ApplyResult(resource.key, "unchanged"))
            else:
                results.append(ApplyResult(resource.key, "configured"))
                changed.append((resource, old))
        outcome = ApplyOutcome(results, skipped)
        if dry_run or not changed:
            return outcome
        version = self.version + 1
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        put = [self._stamped(resource, old, version, stamp) for resource, old in changed]
        self.store.commit(version, put, ())
        self.version = version
        for item, (resource, _) in zip(put, changed, strict=True):
            self._resources[item.key] = item
            self._parsed[item.key] = resource
        self._payload = self._entries = None
        return outcome

    def delete(self, keys: Iterable[ResourceKey]) -> list[ResourceKey]:
        """Remove the resources that exist; return them. One version for the lot."""
        wanted = list(keys)
        return self._raced(lambda: self._delete(wanted))

    def _delete(self, keys: Sequence[ResourceKey]) -> list[ResourceKey]:
        present = [key for key in keys if key in self._resources]
        if not present:
            return []
        version = self.version + 1
        self.store.commit(version, (), present)
        self.version = version
        for key in present:
            del self._resources[key]
            del self._parsed[key]
        self._payload = self._entries = None
        return present

    def _validate(
        self, manifests: Sequence[object], namespace: str, strict: bool
    ) -> tuple[list[Resource], list[SkippedResource]]:
        issues: list[ConfigIssue] = []
        parsed: list[Resource] = []
        skipped: list[SkippedResource] = []
        first: dict[ResourceKey, int] = {}
        for index, manifest in enumerate(manifests):
            resource, problems = parse_document(manifest, namespace)
            if isinstance(resource, SkippedResource):
                if strict:
                    issues.append(ConfigIssue(resource.refusal, resource=resource.label, path="kind"))
                else:
                    skipped.append(resource)
                continue
            label = resource_label(manifest, namespace) or f"resources[{index}]"
            issues.extend(ConfigIssue(m, resource=label, path=format_path(p)) for p, m in problems)
            if resource is None:
                continue
            if resource.key in first:
                issues.append(
                    ConfigIssue(
                        f"duplicate resource in one apply (also resources[{first[resource.key]}])",
                        resource=label,
                    )
                )
                continue
            first[resource.key] = index
            parsed.append(resource)
            if (
                isinstance(resource, ServiceEntry)
                and consul_target(resource.metadata.annotations, resource.spec.hosts) is not None
                and "consul" not in self.discovery_sources
            ):
                issues.append(
                    ConfigIssue(
                        "consul: this config service has no Consul agent to ask; start meshctl serve "
                        "with --consul http://<agent>:8500, or list the endpoints",
                        resource=label,
                        path=format_path(("metadata", "annotations", SOURCE_ANNOTATION)),
                    )
                )
        if issues:
            raise ConfigError(issues)
        return parsed, skipped

    @staticmethod
    def _stamped(resource: Resource, old: StoredResource | None, version: int, stamp: str) -> StoredResource:
        manifest = resource.manifest()
        meta = manifest.setdefault("metadata", {})
        old_meta = old.manifest.get("metadata", {}) if old is not None else {}
        meta["namespace"] = resource.namespace
        meta["resourceVersion"] = str(version)
        meta["generation"] = int(old_meta.get("generation", 0)) + 1
        meta["creationTimestamp"] = old_meta.get("creationTimestamp", stamp)
        meta.pop("uid", None)
        return StoredResource(resource.key, manifest, version)

    # --- registry ---------------------------------------------------------------------

    def register(self, registration: WorkloadRegistration) -> bool:
        """Record a workload; True when what clients see (its endpoints, labels) changed.
        Raises RegistryFull for a registration the registry may not take; the store is
        written first, so a refusal or a failed write changes nothing."""
        (result,) = self.register_many([registration])
        if isinstance(result, RegistryFull):
            raise result
        return result

    def register_many(self, registrations: Sequence[WorkloadRegistration]) -> list[bool | RegistryFull]:
        """Several registrations in one store write (a burst of them, gathered by the API):
        for each, what ``register`` returns, or the RegistryFull it would raise. Each is
        admitted against the registry as the ones before it in the list leave it; a workload
        named twice is written twice, in order (two writes: a failed second one leaves the
        first written, and raises). A failed write changes nothing of its own part."""
        results: list[bool | RegistryFull] = []
        start = 0
        while start < len(registrations):
            seen: set[str] = set()
            end = start
            while end < len(registrations) and registrations[end].id not in seen:
                seen.add(registrations[end].id)
                end += 1
            part = registrations[start:end]
            results.extend(self._raced(functools.partial(self._register_part, part)))
            start = end
        return results

    def _register_part(self, registrations: Sequence[WorkloadRegistration]) -> list[bool | RegistryFull]:
        """``register_many`` for registrations of distinct workloads: one store write."""
        batch = _Admitted()
        results: list[bool | RegistryFull] = []
        admitted: list[tuple[WorkloadRegistration, StoredWorkload, _Workload | None]] = []
        now = self.clock()
        bump = False
        for registration in registrations:
            try:
                self._admit(registration, batch)
            except RegistryFull as refused:
                results.append(refused)
                continue
            current = self._workloads.get(registration.id)
            data = registration.model_dump(mode="json")
            if current is None:
                stored = StoredWorkload(data, first_seen=now, last_seen=now)
                visible = bool(registration.endpoints)
            else:
                stored = dataclasses.replace(current.stored, registration=data, last_seen=now)
                visible = current.lost or _visible(current.registration) != _visible(registration)
            bump = bump or visible
            results.append(visible)
            admitted.append((registration, stored, current))
        if not admitted:
            return results
        version = self.version + 1 if bump else self.version
        ids = [registration.id for registration, _, _ in admitted]
        hold = ids if self._live_map is not None else []
        self.store.save_workloads(version, [stored for _, stored, _ in admitted], (), hold=hold)
        for registration, stored, current in admitted:
            if self._live_map is not None and self.store.holder is not None:
                self._live_map[registration.id] = self.store.holder
                self._take_over.discard(registration.id)
            if current is None:
                item = self._workloads[registration.id] = _Workload(stored, registration)
            else:  # the same entry, changed in place (a watch of it holds it)
                self._account(current, -1)
                current.stored, current.registration, current.lost = stored, registration, False
                item = current
            self._account(item, 1)
            self._dirty.discard(registration.id)  # the store has it as it is now
        self._moved_to(version)
        return results

    def _account(self, item: _Workload, sign: int) -> None:
        """Limits count what clients can be sent: live workloads and their endpoints."""
        if item.lost:
            return
        registration = item.registration
        self._per_service[(registration.namespace, registration.service)] += sign * len(
            registration.endpoints
        )
        self._live += sign

    def _moved_to(self, version: int) -> None:
        if version != self.version:
            self.version = version
            self._payload = None
            self._unannounced = False  # what this replica serves now has its own version

    def _admit(self, registration: WorkloadRegistration, batch: _Admitted) -> None:
        """The registry's rules for one registration, checked before anything changes (with
        ``batch``: what the registrations admitted before it in the same write add)."""
        current = self._workloads.get(registration.id)
        live = current is not None and not current.lost
        if not live and self._live + batch.live >= self.max_workloads:
            raise RegistryFull(507, f"the registry is full: {self.max_workloads} workloads")
        service = (registration.namespace, registration.service)
        old = current.registration if live and current is not None else None
        before = len(old.endpoints) if old is not None else 0
        same = old is not None and (old.namespace, old.service) == service
        count = len(registration.endpoints)
        in_service = self._per_service[service] + batch.endpoints[service]
        if in_service - (before if same else 0) + count > self.max_endpoints_per_service:
            raise RegistryFull(
                507,
                f"{registration.namespace}/{registration.service} would have more than "
                f"{self.max_endpoints_per_service} endpoints",
            )
        if sum(self._per_service.values()) + batch.total - before + count > self.max_registry_endpoints:
            raise RegistryFull(507, f"the registry is full: {self.max_registry_endpoints} endpoints")
        for endpoint in registration.endpoints:
            if self._is_self(endpoint.address, endpoint.port):
                raise RegistryFull(
                    409, f"endpoint {endpoint.address}:{endpoint.port} is where the config service listens"
                )
        fqdn = normalize_host(registration.service, registration.namespace)
        entry = self.service_entries().get(fqdn)
        if entry is not None and not entry_selects(entry, registration):
            raise RegistryFull(
                409,
                f"{fqdn} is declared by ServiceEntry {entry.namespace}/{entry.name}: its endpoints come "
                "from there (registered workloads join it only through its workloadSelector)",
            )
        batch.live += 0 if live else 1
        batch.endpoints[service] += count
        batch.total += count - before
        if old is not None:
            batch.endpoints[(old.namespace, old.service)] -= before

    def reserve(self, host: str, port: int) -> None:
        """Where the config service listens (no workload may announce an endpoint there)."""
        self.reserved.add((host, port))
        if _unspecified(host):  # every address of this machine
            self._own_addresses.update(_machine_addresses())

    def _is_self(self, address: str, port: int) -> bool:
        """Is ``address:port`` the config service? Addresses are compared as what they connect
        to (``LOCALHOST.``, ``::ffff:127.0.0.1`` and 127.0.0.2 are all this machine)."""
        target = _canonical(address)
        for host, own_port in self.reserved:
            if port != own_port:
                continue
            own = _canonical(host)
            if target == own or (_local(target) and (_local(own) or _unspecified(own))):
                return True
            if _unspecified(own) and target in self._own_addresses:
                return True
        return False

    def service_entries(self) -> dict[str, ServiceEntry]:
        """Every host a ServiceEntry declares, the oldest entry first (as the snapshot has it)."""
        if self._entries is None:
            entries: dict[str, ServiceEntry] = {}
            ordered = sorted(
                (r for r in self._parsed.values() if isinstance(r, ServiceEntry)),
                key=lambda r: (r.metadata.creation_timestamp or "", r.name, r.namespace),
            )
            for resource in ordered:
                for host in resource.spec.hosts:
                    entries.setdefault(normalize_host(host, resource.namespace), resource)
            self._entries = entries
        return self._entries

    def registration(self, workload_id: str) -> WorkloadRegistration | None:
        current = self._workloads.get(workload_id)
        return current.registration if current is not None else None

    def deregister(self, workload_id: str) -> bool:
        return self._raced(lambda: self._deregister(workload_id))

    def _deregister(self, workload_id: str) -> bool:
        current = self._workloads.get(workload_id)
        if current is None:
            return False
        visible = bool(current.registration.endpoints) and not current.lost
        version = self.version + 1 if visible else self.version
        self.store.save_workloads(version, (), [workload_id])
        if self._live_map is not None:
            self._live_map.pop(workload_id, None)
        del self._workloads[workload_id]
        self._account(current, -1)
        self._dirty.discard(workload_id)
        self._moved_to(version)
        return visible

    def watch_begin(self, workload_id: str) -> _Workload | None:
        """A watch of a registered workload starts: it is connected (never reaped) until
        ``watch_end`` with what this returned (the same entry, even if re-registered since)."""
        current = self._workloads.get(workload_id)
        if current is not None:
            current.watching += 1
        return current

    def watch_end(self, handle: _Workload | None) -> None:
        if handle is not None:
            handle.watching -= 1

    @property
    def epoch(self) -> str:
        """The history the snapshots served here belong to (``SnapshotLog.epoch``)."""
        self.payload()
        return self._log.epoch

    def answer(
        self,
        base: int,
        hosts: tuple[str, ...] | None,
        *,
        delta: bool,
        epoch: str | None,
        since: int | None = None,
    ) -> bytes:
        """What a watch holding ``base`` of ``epoch`` is sent now: a delta (if it asks and one
        can be made), the whole snapshot, or NOTHING_NEW (it has egress hosts, and none of
        theirs changed since ``since``, the version this was last asked at, or ``base``).
        A snapshot of another epoch (another replica's, or before a restore) gets it whole."""
        if (hosts is not None or delta) and epoch == self.epoch:
            found = self.delta(base, hosts, since=since)
            if found is not None and (delta or found == NOTHING_NEW):
                return found
        return self.payload(hosts)

    def current_at(self, handle: _Workload | None, base: int, version: int) -> None:
        """A watch from ``base`` had nothing to receive up to ``version`` (for the status)."""
        if handle is not None:
            handle.current = (base, version)

    def seen(
        self, workload_id: str, *, acked: int | None = None, nacked: tuple[int, str] | None = None
    ) -> bool:
        """A workload called in (a watch, an ack, a NACK). True if it came back from lost."""
        current = self._workloads.get(workload_id)
        if current is None:
            return False
        current.stored.last_seen = self.clock()
        if acked is not None:
            current.stored.acked_version = acked
            current.stored.nack_version = current.stored.nack_reason = None
        if nacked is not None:
            current.stored.nack_version, current.stored.nack_reason = nacked[0], nacked[1][:2000]
        self._dirty.add(workload_id)
        if self._live_map is not None and self._live_map.get(workload_id) != self.store.holder:
            if not current.lost:
                self._take_over.add(workload_id)  # live through another replica: at the next flush
                return False
            self._revive([workload_id])
            return True
        if current.lost:
            self._bump()
            current.lost = False
            self._account(current, 1)
            return True
        return False

    def reap(self) -> bool:
        """Mark workloads silent for longer than the TTL as lost, and forget those lost for
        ``forget_after``; True if clients must hear."""
        now = self.clock()
        changed = False
        forget = []
        released: list[str] = []
        mine = self.store.holder
        for item in self._workloads.values():
            silent = now - item.stored.last_seen
            if item.lost and silent > self.forget_after:
                forget.append(item.stored.id)
            elif self._live_map is not None and self._live_map.get(item.stored.id) != mine:
                continue  # with leases, only the replica keeping a workload live judges it
            elif not item.lost and item.watching <= 0 and silent > self.workload_ttl:
                log.warning(
                    "workload %s (%s.%s) not seen for %.0fs: its endpoints are withdrawn",
                    item.stored.id,
                    item.registration.service,
                    item.registration.namespace,
                    silent,
                )
                if self._live_map is not None:
                    released.append(item.stored.id)  # lost once the store has let it go
                    continue
                self._account(item, -1)
                item.lost = True
                changed = changed or bool(item.registration.endpoints)
        if forget:
            self.store.save_workloads(self.version, (), forget)
            for workload_id in forget:
                del self._workloads[workload_id]
                self._dirty.discard(workload_id)
        if released:
            return self._raced(lambda: self._release(released))
        if changed:
            self._bump()
        return changed

    def _release(self, candidates: list[str]) -> bool:
        """Let go of the workloads of ``candidates`` this replica still holds (a re-read on
        the way may show another replica took one over); True if the version moved."""
        mine = self.store.holder
        ids = [i for i in candidates if self._live_map is not None and self._live_map.get(i) == mine]
        items = [self._workloads[i] for i in ids if i in self._workloads]
        bump = any(not w.lost and w.registration.endpoints for w in items)
        if not ids:
            return False
        self.store.save_workloads(self.version + 1 if bump else self.version, (), (), release=ids)
        for workload_id in ids:
            if self._live_map is not None:
                self._live_map.pop(workload_id, None)
        for item in items:
            if not item.lost:
                self._account(item, -1)
                item.lost = True
        if bump:
            self._moved_to(self.version + 1)
        return bump

    def flush(self) -> bool:
        """Write acks and last-seen times collected since the last flush (kept for the next
        flush if the store refuses them now), and take over the workloads that came here from
        another replica; True if clients must hear (one of those was lost meanwhile)."""
        revived = False
        lost = sorted(i for i in self._take_over if i in self._workloads and self._workloads[i].lost)
        if lost:  # its replica's lease ran out before this flush: back, with a new version
            self._revive(lost)
            self._take_over.difference_update(lost)
            revived = True
        if self._dirty or self._take_over:
            self._raced(self._flush_once)
        return revived

    def _flush_once(self) -> None:
        dirty, taken = set(self._dirty), sorted(self._take_over & self._workloads.keys())
        items = [self._workloads[i].stored for i in dirty if i in self._workloads]
        self.store.save_workloads(self.version, items, (), hold=taken)
        if self._live_map is not None and self.store.holder is not None:
            self._live_map.update(dict.fromkeys(taken, self.store.holder))
        self._dirty -= dirty
        self._take_over.difference_update(taken)

    def summary(self) -> dict[str, int]:
        """How many workloads are in each state ``meshctl status`` shows, without listing them
        (a listing of 5,000 takes 60 ms or more of the service's event loop)."""
        counts = dict.fromkeys(("workloads", "synced", "stale", "notAcked", "nacked", "lost", "connected"), 0)
        for item in self._workloads.values():
            counts["workloads"] += 1
            acked = item.stored.acked_version
            if item.stored.nack_version is not None:
                counts["nacked"] += 1
            elif _synced(item) == self.version:
                counts["synced"] += 1
            elif acked is None:
                counts["notAcked"] += 1
            else:
                counts["stale"] += 1
            if item.lost:
                counts["lost"] += 1
            elif item.watching > 0:
                counts["connected"] += 1
        return {"version": self.version, **counts}

    def workloads(self) -> list[WorkloadView]:
        out = []
        for item in self._workloads.values():
            s = item.stored
            out.append(
                WorkloadView(
                    item.registration,
                    s.registration,
                    item.registration.identity(self.trust_domain),
                    s.acked_version,
                    s.nack_version,
                    s.nack_reason,
                    s.first_seen,
                    s.last_seen,
                    item.watching > 0,
                    item.lost,
                    _synced(item),
                )
            )
        return out

    def _bump(self) -> None:
        self._raced(self._bump_once)

    def _bump_once(self) -> None:
        version = self.version + 1
        self.store.save_workloads(version, (), ())
        self._moved_to(version)

    # --- discovered endpoints (controlplane/consul_source.py) ---------------------------

    def consul_targets(self) -> dict[ConsulTarget, list[ServiceEntry]]:
        """Every Consul service a ServiceEntry takes its endpoints from, with those entries."""
        out: dict[ConsulTarget, list[ServiceEntry]] = {}
        for resource in self._parsed.values():
            if isinstance(resource, ServiceEntry):
                target = consul_target(resource.metadata.annotations, resource.spec.hosts)
                if target is not None:
                    out.setdefault(target, []).append(resource)
        return out

    def discovered(self, target: ConsulTarget) -> list[dict[str, Any]] | None:
        """The instances stored for ``target`` (None: none stored yet)."""
        item = self._discovered.get(_discovered_key(target))
        return list(item.manifest["instances"]) if item is not None else None

    def put_discovered(self, target: ConsulTarget, instances: list[dict[str, Any]]) -> bool:
        """Store what a source found for ``target``; True when that is a new version (the
        instances differ from those stored, by this replica or another). Nothing for a target
        no entry uses any more."""
        return self._raced(lambda: self._put_discovered(target, instances))

    def _put_discovered(self, target: ConsulTarget, instances: list[dict[str, Any]]) -> bool:
        key = _discovered_key(target)
        current = self._discovered.get(key)
        if target not in self.consul_targets() or (
            current is not None and current.manifest["instances"] == instances
        ):
            return False
        version = self.version + 1
        item = StoredResource(key, {"source": "consul", **target.to_json(), "instances": instances}, version)
        self.store.commit(version, [item], ())
        self.version = version
        self._discovered[key] = item
        self._payload = None
        return True

    def drop_unused_discovered(self) -> bool:
        """Remove records no ServiceEntry uses any more (an entry deleted or changed); they
        are in no snapshot, but the version moves so that replicas agree on the store."""
        return self._raced(self._drop_unused)

    def _drop_unused(self) -> bool:
        used = {_discovered_key(t) for t in self.consul_targets()}
        unused = [key for key in self._discovered if key not in used]
        if not unused:
            return False
        version = self.version + 1
        self.store.commit(version, (), unused)
        self.version = version
        for key in unused:
            del self._discovered[key]
        self._payload = None
        return True

    # --- what workloads receive -------------------------------------------------------

    def payload(self, hosts: tuple[str, ...] | None = None) -> bytes:
        """The snapshot at the current version as JSON: encoded once per version, and each item
        only when it changed; for a watch with egress ``hosts``, with only their registry
        entries. Each version encoded is recorded for deltas (``delta``)."""
        if self._payload is None or self._payload[0] != self.version:
            self._encode()
        if hosts is None:
            return self._payload[1] if self._payload is not None else b""
        body = self._scoped.get(hosts)
        if body is None:
            scope = self._scope(hosts)
            lists = {**self._lists, "workloads": [d for d, h in self._registry if scope.admits(h)]}
            if len(self._scoped) >= _MAX_SCOPED:
                self._scoped.clear()  # each holds the whole policy: bounded, not kept per list
            body = self._scoped[hosts] = self._assemble(lists)
        return body

    def _encode(self) -> None:
        items: Encoded = {
            ("meta", "trustDomain"): _json(self.trust_domain),
            ("meta", "trustBundle"): _json(list(self.trust_bundle)),
        }
        hosts: dict[tuple[str, str], Hosts] = {}
        cache, self._encoded = self._encoded, {}
        selecting = tuple(
            r for r in self._parsed.values() if isinstance(r, ServiceEntry) and r.spec.workload_selector
        )
        old_selecting = self._selecting
        if len(selecting) == len(old_selecting) and all(
            a is b for a, b in zip(selecting, old_selecting, strict=True)
        ):
            selecting = old_selecting  # the same entries: each workload's hosts are as before
        self._selecting = selecting
        served_cache, self._served = self._served, {}
        self._lists, self._registry = {}, []
        for section, sources in self._sources():
            encoded = self._lists[section] = []
            for key, source in sources:
                hit = cache.get((section, key))
                data = hit[1] if hit is not None and hit[0] is source else _json(_dump(source))
                self._encoded[(section, key)] = (source, data)
                items[(section, key)] = data
                encoded.append(data)
                if isinstance(source, WorkloadRegistration):
                    was = served_cache.get(key)
                    if was is not None and was[0] is source and was[1] is selecting:
                        served = was[2]
                    else:
                        served = _served_hosts(source, selecting)
                    self._served[key] = (source, selecting, served)
                    hosts[(section, key)] = served
                    self._registry.append((data, served))
        self._log.record(self.version, items, hosts)
        self._scoped = {}
        self._payload = (self.version, self._assemble(self._lists))

    def _assemble(self, lists: Mapping[str, list[bytes]]) -> bytes:
        return b'{"version":%d,"trustDomain":%s,"trustBundle":%s,%s}' % (
            self.version,
            _json(self.trust_domain),
            _json(list(self.trust_bundle)),
            b",".join(b'"%s":[%s]' % (s.encode(), b",".join(lists[s])) for s in SECTIONS),
        )

    def _scope(self, hosts: tuple[str, ...]) -> EgressScope:
        scope = self._scopes.get(hosts)
        if scope is None:
            if len(self._scopes) >= _MAX_SCOPES:
                self._scopes.clear()
            scope = self._scopes[hosts] = EgressScope(hosts)
        return scope

    def delta(
        self, base: int, hosts: tuple[str, ...] | None = None, *, since: int | None = None
    ) -> bytes | None:
        """What changed from ``base`` to the current version (``meshlib.snapshot_delta``) for a
        watch with egress ``hosts`` or without; NOTHING_NEW when that is nothing for it; None
        when only the full snapshot will do: ``base`` is current, or was not served here.
        ``since``: a later version at which that watch's snapshot was the same as at ``base``
        (nothing of its hosts changed in between): the delta is made from there."""
        self.payload()
        scope = self._scope(hosts) if hosts is not None else None
        return self._log.delta(base if since is None else since, scope, hosts, label=base)

    def _sources(self) -> Iterator[tuple[str, list[tuple[str, StoredResource | WorkloadRegistration]]]]:
        """Per section, what each item of the snapshot is made from: (key, source)."""
        resources = (r for _, r in sorted(self._resources.items()))
        yield "resources", [(item_key("resources", r.manifest), r) for r in resources]
        # By id: every replica lists them in one order, however it came to hold them.
        workloads = (w for _, w in sorted(self._workloads.items()))
        yield (
            "workloads",
            [
                (w.registration.id, w.registration)
                for w in workloads
                if not w.lost and w.registration.endpoints
            ],
        )
        keys = sorted({_discovered_key(t) for t in self.consul_targets()} & self._discovered.keys())
        found = (self._discovered[key] for key in keys)
        yield "discovered", [(item_key("discovered", f.manifest), f) for f in found]


def _synced(item: _Workload) -> int | None:
    acked = item.stored.acked_version
    if item.current is not None and acked == item.current[0]:
        return item.current[1]
    return acked


def _served_hosts(registration: WorkloadRegistration, selecting: Sequence[ServiceEntry]) -> Hosts:
    """The (namespace, host) pairs a registry entry's endpoints serve: its own service's, and
    those of each ServiceEntry whose workloadSelector takes it."""
    served = {(registration.namespace, normalize_host(registration.service, registration.namespace))}
    for entry in selecting:
        if entry_selects(entry, registration):
            served.update((entry.namespace, normalize_host(h, entry.namespace)) for h in entry.spec.hosts)
    return frozenset(served)


def _dump(source: StoredResource | WorkloadRegistration) -> Any:
    if isinstance(source, WorkloadRegistration):
        return source.model_dump(mode="json")
    return source.manifest


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _discovered_key(target: ConsulTarget) -> ResourceKey:
    return ResourceKey(DISCOVERED_KIND, "consul", target.name)


def _canonical(address: str) -> str:
    """An address as what it connects to: names lower-cased without the final dot, IPv4
    written in IPv6 (``::ffff:127.0.0.1``) as IPv4."""
    name = address.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


def _local(address: str) -> bool:
    if address == "localhost" or address.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(_canonical(address)).is_unspecified
    except ValueError:
        return address == ""


def _machine_addresses() -> set[str]:
    """This machine's own addresses, as far as its host name resolves."""
    found = {socket.gethostname().lower()}
    try:
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            found.add(_canonical(str(sockaddr[0])))
    except OSError:
        pass
    return found


def _registration_of(stored: StoredWorkload) -> WorkloadRegistration | None:
    try:
        return WorkloadRegistration.model_validate(stored.registration)
    except ValidationError as exc:
        # Registered under an older meshlib's looser rules: kept in the store, not served.
        log.error("stored workload %r is no longer valid and is not served: %s", stored.id, exc)
        return None


def _visible(registration: WorkloadRegistration) -> Mapping[str, Any]:
    data = registration.model_dump(mode="json")
    return {k: data[k] for k in ("service", "namespace", "labels", "endpoints")}
