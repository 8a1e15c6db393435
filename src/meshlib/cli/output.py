"""Plain-text output for meshctl: kubectl-style tables, ages, YAML and JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import yaml

from ..names import printable

__all__ = ["age", "dump", "printable", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl; control characters in
    cells (a NACK reason, a host from the network) are shown escaped, never sent raw."""
    cells = [[str(h) for h in headers], *[[printable(str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def age(timestamp: str | float | None, now: float | None = None) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` since an RFC 3339 time or a Unix time."""
    if timestamp is None or timestamp == "":
        return "<unknown>"
    if isinstance(timestamp, str):
        try:
            seconds = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return "<unknown>"
    else:
        seconds = float(timestamp)
    delta = max(0, int((now if now is not None else time.time()) - seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta // size}{unit}"
    return f"{delta}s"


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    if isinstance(data, list):
        return yaml.safe_dump_all(data, sort_keys=False, default_flow_style=False).rstrip()
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()
