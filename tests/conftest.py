"""Shared fixtures: a real config service on 127.0.0.1 and helpers to write policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer


def virtual_service(
    name: str = "reviews",
    *,
    v1: int = 80,
    v2: int = 20,
    namespace: str | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    """A canary VirtualService manifest splitting ``host`` between subsets v1 and v2."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    target = host or name
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata,
        "spec": {
            "hosts": [target],
            "http": [
                {
                    "route": [
                        {"destination": {"host": target, "subset": "v1"}, "weight": v1},
                        {"destination": {"host": target, "subset": "v2"}, "weight": v2},
                    ]
                }
            ],
        },
    }


def destination_rule(name: str = "reviews", host: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": {
            "host": host or name,
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ],
        },
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ConfigServer]:
    """A config service on a free port of 127.0.0.1, with its data in tmp_path/config-service.

    In the open registry mode: these tests are about routing, the registry and the API, and
    their workloads use no bootstrap tokens. The default (every workload proves its identity)
    has its own tests: ``secure_server``, tests/controlplane/test_workload_auth.py."""
    with ConfigServer(tmp_path / "config-service", reap_interval=0.2, insecure_open_registry=True) as running:
        yield running


@pytest.fixture
def secure_server(tmp_path: Path) -> Iterator[ConfigServer]:
    """A config service in the default mode: the workload API needs a bootstrap token."""
    with ConfigServer(tmp_path / "config-service", reap_interval=0.2) as running:
        yield running


@pytest.fixture
def admin(server: ConfigServer) -> Iterator[ControlPlaneClient]:
    with ControlPlaneClient(server.url, server.admin_token) as client:
        yield client
