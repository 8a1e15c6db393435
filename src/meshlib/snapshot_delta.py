"""Snapshot deltas: what changed between the version a workload holds and the current one.

A watch that sends ``"delta": true`` with the version it holds is answered, when the config
service served that version itself, with only the items that changed since (a registration is
a few hundred bytes, not the whole registry), and else with the full snapshot as before:

    {"version": V, "base": B,
     "changed": {"resources": [manifest, ...], "workloads": [...], "discovered": [...]},
     "removed": {"resources": ["kind/namespace/name", ...], ...},
     "trustDomain": ..., "trustBundle": [...]}     # these two only when they changed

Items are named by ``item_key`` on both sides, so a delta names nothing the full snapshot
does not. ``HeldSnapshot`` applies one to what a workload holds and gives the full payload
back: the workload compiles and saves exactly what a full snapshot would have brought.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["META_FIELDS", "SECTIONS", "HeldSnapshot", "item_key"]

SECTIONS = ("resources", "workloads", "discovered")
META_FIELDS = ("trustDomain", "trustBundle")


def item_key(section: str, item: Mapping[str, Any]) -> str:
    """The name of one item of a snapshot section, the same on the service and the workload."""
    if section == "workloads":
        return str(item.get("id"))
    if section == "discovered":
        return f"{item.get('source')}/{item.get('service')}/{item.get('datacenter')}"
    meta = item.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return f"{item.get('kind')}/{meta.get('namespace')}/{meta.get('name')}"


def _resource_order(item: Mapping[str, Any]) -> tuple[str, str, str]:
    # The config service lists resources by (kind, namespace, name); keep its order.
    meta = item.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return (str(item.get("kind")), str(meta.get("namespace")), str(meta.get("name")))


class HeldSnapshot:
    """A full snapshot payload kept by item, so that a delta can be applied to it."""

    __slots__ = ("_items", "_meta", "version")

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.version = int(payload["version"])
        self._meta = {name: payload.get(name) for name in META_FIELDS}
        self._items: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            listed = payload.get(section) or []
            self._items[section] = {
                item_key(section, item): item for item in listed if isinstance(item, Mapping)
            }

    def apply(self, delta: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``delta`` (which must start at the version held) and return the full payload.

        Raises ConfigError, leaving what is held unchanged, when the delta does not start here
        or is malformed: the caller then asks for a full snapshot."""
        base, version = delta.get("base"), delta.get("version")
        if base != self.version or not isinstance(version, int):
            raise ConfigError(
                f"snapshot delta from version {base!r} to {version!r} does not start at {self.version}"
            )
        changed, removed = delta.get("changed", {}), delta.get("removed", {})
        if not isinstance(changed, Mapping) or not isinstance(removed, Mapping):
            raise ConfigError("snapshot delta: 'changed' and 'removed' must be objects")
        items = {section: dict(held) for section, held in self._items.items()}
        for section in SECTIONS:
            gone, new = removed.get(section, []), changed.get(section, [])
            if not isinstance(gone, list) or not isinstance(new, list):
                raise ConfigError(f"snapshot delta: {section} must be lists")
            for key in gone:
                items[section].pop(str(key), None)
            for item in new:
                if not isinstance(item, Mapping):
                    raise ConfigError(f"snapshot delta: an item of {section} is not an object")
                items[section][item_key(section, item)] = item
        meta = {name: delta[name] if name in delta else self._meta[name] for name in META_FIELDS}
        self.version, self._items, self._meta = version, items, meta
        return self.payload()

    def payload(self) -> dict[str, Any]:
        """The full snapshot held, as the config service would have sent it."""
        out: dict[str, Any] = {"version": self.version, **self._meta}
        out["resources"] = sorted(self._items["resources"].values(), key=_resource_order)
        out["workloads"] = list(self._items["workloads"].values())
        out["discovered"] = [self._items["discovered"][k] for k in sorted(self._items["discovered"])]
        return out
