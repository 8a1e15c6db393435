"""Where the config service keeps its state. The embedded default is one SQLite file.

The interface is small on purpose (load everything at start, commit a change set
atomically) so that an etcd-backed store for several replicas can stand in later.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..policy.resources import ResourceKey

__all__ = [
    "SQLiteStore",
    "Store",
    "StoreChanges",
    "StoreConflict",
    "StoreState",
    "StoredResource",
    "StoredWorkload",
]


class StoreConflict(Exception):
    """A write refused because another replica moved the version first (shared stores only):
    nothing was written; re-read the store and decide again."""


@dataclass(frozen=True, slots=True)
class StoredResource:
    key: ResourceKey
    manifest: dict[str, Any]
    version: int  # the global version at which it last changed


@dataclass(slots=True)
class StoredWorkload:
    """A registry entry: the registration plus what the config service saw of it."""

    registration: dict[str, Any]
    acked_version: int | None = None
    nack_version: int | None = None
    nack_reason: str | None = None
    first_seen: float = 0.0
    last_seen: float = 0.0

    @property
    def id(self) -> str:
        return str(self.registration["id"])


@dataclass(slots=True)
class StoreState:
    version: int = 0
    resources: list[StoredResource] = field(default_factory=list)
    workloads: list[StoredWorkload] = field(default_factory=list)
    trust_bundle: str = ""  # digest of the trust bundle last served ("" before any)
    # A store with leases (etcd): workload id -> the replica whose lease keeps it live. A
    # registered workload not in it is lost, for every replica alike. None: no leases (each
    # replica judges from the last-seen times; SQLite has one replica).
    live: dict[str, str] | None = None


@dataclass(slots=True)
class StoreChanges:
    """What other replicas changed in a shared store since this replica last read it or was
    told (``EtcdStore.changes``): each changed entry as it is now, None where it was deleted.
    Read from the events of the store's watch, so that a replica follows the others at the
    cost of what changed, not of everything stored."""

    version: int | None = None  # the global version, when it moved
    resources: dict[ResourceKey, StoredResource | None] = field(default_factory=dict)
    workloads: dict[str, StoredWorkload | None] = field(default_factory=dict)
    live: dict[str, str | None] = field(default_factory=dict)  # workload id -> its holder now
    tokens: bool = False  # a bootstrap token was created or revoked (read again: all of them)
    policy: bool = False  # a resource changed (even one a read since has taken already)


class Store(Protocol):
    def load(self) -> StoreState: ...

    def commit(self, version: int, put: Sequence[StoredResource], delete: Sequence[ResourceKey]) -> None:
        """Write a change set and the new version in one transaction, or nothing at all."""

    # The replica's name as the holder of live workloads (a store with leases), else None.
    holder: str | None

    def save_workloads(
        self,
        version: int,
        put: Sequence[StoredWorkload],
        delete: Sequence[str],
        *,
        hold: Sequence[str] = (),
        release: Sequence[str] = (),
    ) -> None:
        """Write registry entries (``delete``: removed with their live keys); with leases,
        ``hold`` makes workloads live under this replica's lease and ``release`` ends that
        (a store without leases ignores both)."""

    def save_trust_bundle(self, version: int, digest: str) -> None:
        """Record the digest of the trust bundle served from ``version`` on."""

    def load_tokens(self) -> list[dict[str, Any]]: ...

    def put_token(self, token: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    manifest TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, digest TEXT NOT NULL, namespace TEXT NOT NULL, service TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS workloads (
    id TEXT PRIMARY KEY, registration TEXT NOT NULL,
    acked_version INTEGER, nack_version INTEGER, nack_reason TEXT,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
"""


class SQLiteStore:
    """One file, ``<data-dir>/meshlib.db``, in WAL mode; survives restarts with the version."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        if fresh:
            os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def load(self) -> StoreState:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            state = StoreState(version=int(row[0]) if row else 0)
            row = self._db.execute("SELECT value FROM meta WHERE key='trust_bundle'").fetchone()
            state.trust_bundle = str(row[0]) if row else ""
            for kind, namespace, name, manifest, version in self._db.execute(
                "SELECT kind, namespace, name, manifest, version FROM resources "
                "ORDER BY version, kind, namespace, name"
            ):
                state.resources.append(
                    StoredResource(ResourceKey(kind, namespace, name), json.loads(manifest), version)
                )
            for reg, acked, nack_v, nack_r, first, last in self._db.execute(
                "SELECT registration, acked_version, nack_version, nack_reason, first_seen, last_seen "
                "FROM workloads ORDER BY first_seen"
            ):
                state.workloads.append(StoredWorkload(json.loads(reg), acked, nack_v, nack_r, first, last))
            return state

    def commit(self, version: int, put: Sequence[StoredResource], delete: Sequence[ResourceKey]) -> None:
        with self._lock, self._transaction():
            for item in put:
                self._db.execute(
                    "INSERT OR REPLACE INTO resources (kind, namespace, name, manifest, version) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (*item.key, json.dumps(item.manifest, sort_keys=True), item.version),
                )
            for key in delete:
                self._db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?", tuple(key))
            self._set_version(version)

    holder: str | None = None  # one replica: no leases, liveness is judged from last-seen times

    def save_workloads(
        self,
        version: int,
        put: Sequence[StoredWorkload],
        delete: Sequence[str],
        *,
        hold: Sequence[str] = (),
        release: Sequence[str] = (),
    ) -> None:
        with self._lock, self._transaction():
            for item in put:
                self._db.execute(
                    "INSERT OR REPLACE INTO workloads (id, registration, acked_version, nack_version, "
                    "nack_reason, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.id,
                        json.dumps(item.registration, sort_keys=True),
                        item.acked_version,
                        item.nack_version,
                        item.nack_reason,
                        item.first_seen,
                        item.last_seen,
                    ),
                )
            for workload_id in delete:
                self._db.execute("DELETE FROM workloads WHERE id=?", (workload_id,))
            self._set_version(version)

    def save_trust_bundle(self, version: int, digest: str) -> None:
        with self._lock, self._transaction():
            self._set_version(version)
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('trust_bundle', ?)", (digest,))

    def load_tokens(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, digest, namespace, service, created, expires, revoked FROM tokens "
                "ORDER BY created"
            ).fetchall()
        keys = ("id", "digest", "namespace", "service", "created", "expires", "revoked")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def put_token(self, token: dict[str, Any]) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO tokens (id, digest, namespace, service, created, expires, revoked) "
                "VALUES (:id, :digest, :namespace, :service, :created, :expires, :revoked)",
                token,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _set_version(self, version: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('version', ?)", (str(version),))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
