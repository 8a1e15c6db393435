"""Default folders: the config service's data and each workload's cache (XDG layout)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_server_dir", "default_workload_dir"]


def _base(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def default_server_dir() -> Path:
    """``$XDG_DATA_HOME/meshlib/server`` (``~/.local/share/meshlib/server``)."""
    return _base("XDG_DATA_HOME", ".local/share") / "meshlib" / "server"


def default_workload_dir(service: str, namespace: str) -> Path:
    """``$XDG_CACHE_HOME/meshlib/<namespace>.<service>``: last-known-good config, keys."""
    return _base("XDG_CACHE_HOME", ".cache") / "meshlib" / f"{namespace}.{service}"
