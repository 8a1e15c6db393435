"""The embedded SQLite store: survives reopening, commits all or nothing, stays private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshlib.controlplane.store import SQLiteStore, StoredResource, StoredWorkload
from meshlib.policy.resources import ResourceKey

KEY = ResourceKey("VirtualService", "default", "reviews")


def test_reopened_store_has_every_resource_and_the_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "meshlib.db")
    store.commit(7, [StoredResource(KEY, {"spec": {"hosts": ["reviews"]}}, 7)], ())
    store.save_workloads(
        8, [StoredWorkload({"id": "w1", "service": "a"}, acked_version=7, first_seen=1.0, last_seen=2.0)], ()
    )
    store.close()

    state = SQLiteStore(tmp_path / "meshlib.db").load()
    assert state.version == 8
    assert [(r.key, r.manifest, r.version) for r in state.resources] == [
        (KEY, {"spec": {"hosts": ["reviews"]}}, 7)
    ]
    assert [(w.id, w.acked_version) for w in state.workloads] == [("w1", 7)]


def test_failed_commit_leaves_nothing_behind(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "meshlib.db")
    store.commit(1, [StoredResource(KEY, {"a": 1}, 1)], ())
    unserialisable = StoredResource(ResourceKey("VirtualService", "default", "bad"), {"x": object()}, 2)
    with pytest.raises(TypeError):
        store.commit(2, [StoredResource(KEY, {"a": 2}, 2), unserialisable], ())
    state = store.load()
    assert state.version == 1
    assert [r.manifest for r in state.resources] == [{"a": 1}]


def test_database_file_is_private(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "meshlib.db").close()
    assert stat.S_IMODE((tmp_path / "meshlib.db").stat().st_mode) == 0o600


def test_delete_removes_only_named_resources(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "meshlib.db")
    other = ResourceKey("DestinationRule", "default", "reviews")
    store.commit(1, [StoredResource(KEY, {}, 1), StoredResource(other, {}, 1)], ())
    store.commit(2, (), [KEY])
    assert [r.key for r in store.load().resources] == [other]
