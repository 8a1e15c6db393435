"""HeldSnapshot: a workload applies a delta to what it holds, or refuses it and keeps it."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.errors import ConfigError
from meshlib.snapshot_delta import HeldSnapshot, item_key


def resource(kind: str, name: str, namespace: str = "default", weight: int = 1) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": {"w": weight}}


def workload(workload_id: str, port: int = 80) -> dict[str, Any]:
    return {"id": workload_id, "service": "reviews", "endpoints": [{"address": "127.0.0.1", "port": port}]}


BASE: dict[str, Any] = {
    "version": 7,
    "trustDomain": "cluster.local",
    "trustBundle": ["ROOT"],
    "resources": [resource("DestinationRule", "a"), resource("VirtualService", "a")],
    "workloads": [workload("w1"), workload("w2")],
    "discovered": [{"source": "consul", "service": "db", "datacenter": "", "instances": []}],
}


def test_item_keys_name_kind_namespace_and_name() -> None:
    assert item_key("resources", resource("VirtualService", "r", "shop")) == "VirtualService/shop/r"
    assert item_key("workloads", workload("w9")) == "w9"
    assert item_key("discovered", BASE["discovered"][0]) == "consul/db/"


def test_a_delta_changes_adds_and_removes_items() -> None:
    held = HeldSnapshot(BASE)
    payload = held.apply(
        {
            "version": 9,
            "base": 7,
            "changed": {
                "resources": [resource("VirtualService", "a", weight=5), resource("Gateway", "g")],
                "workloads": [workload("w3"), workload("w1", 81)],
                "discovered": [],
            },
            "removed": {"resources": ["DestinationRule/default/a"], "workloads": ["w2"], "discovered": []},
        }
    )
    assert held.version == payload["version"] == 9
    assert payload["trustBundle"] == ["ROOT"]
    assert payload["trustDomain"] == "cluster.local"
    # Resources in the config service's order: kind, namespace, name.
    assert payload["resources"] == [resource("Gateway", "g"), resource("VirtualService", "a", weight=5)]
    assert payload["workloads"] == [workload("w1", 81), workload("w3")]
    assert payload["discovered"] == BASE["discovered"]
    assert held.payload() == payload


def test_a_new_trust_bundle_replaces_the_old_one() -> None:
    payload = HeldSnapshot(BASE).apply({"version": 8, "base": 7, "trustBundle": ["ROOT", "NEW"]})
    assert payload["trustBundle"] == ["ROOT", "NEW"]
    assert payload["resources"] == BASE["resources"]


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({"version": 9, "base": 6}, "does not start at 7"),
        ({"version": "9", "base": 7}, "does not start at 7"),
        ({"version": 9, "base": 7, "changed": []}, "must be objects"),
        ({"version": 9, "base": 7, "removed": {"workloads": "w1"}}, "workloads must be lists"),
        ({"version": 9, "base": 7, "changed": {"resources": ["x"]}}, "is not an object"),
    ],
)
def test_a_delta_that_does_not_fit_is_refused_and_kept_out(delta: dict[str, Any], message: str) -> None:
    held = HeldSnapshot(BASE)
    before = held.payload()
    with pytest.raises(ConfigError, match=message):
        held.apply(delta)
    assert held.version == 7
    assert held.payload() == before
