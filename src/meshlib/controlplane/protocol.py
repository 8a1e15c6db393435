"""The /v1 wire contract shared by the config service and its clients (Mesh, meshctl)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..policy.base import MeshModel
from ..registry import WorkloadRegistration

__all__ = [
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_WATCH_WAIT",
    "ApplyRequest",
    "Nack",
    "WatchRequest",
    "WorkloadRegistration",
]

DEFAULT_PORT = 15010
MAX_WATCH_WAIT = 60.0
"""Longest a watch request is held open; clients wait a little longer than they ask for."""
MAX_BODY_BYTES = 8 * 1024 * 1024


class ApplyRequest(MeshModel):
    resources: list[Any] = Field(max_length=10_000)
    namespace: str = "default"
    dry_run: bool = False


class Nack(MeshModel):
    version: int
    reason: str = Field(max_length=10_000)


class WatchRequest(MeshModel):
    """Long poll: answered at once when the service's version differs from ``version``,
    otherwise when it changes or after ``wait`` seconds (204). Carries ACK/NACK."""

    version: int = -1
    wait: float = Field(default=30.0, ge=0.0, le=MAX_WATCH_WAIT)
    workload: str | None = None
    ack: int | None = None
    nack: Nack | None = None
