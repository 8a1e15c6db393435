"""The last snapshot a workload applied, kept on disk so it can start without the config service."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["LKG_FILE", "load_last_known_good", "save_last_known_good"]

log = logging.getLogger("meshlib")
LKG_FILE = "last-known-good.json"


def save_last_known_good(data_dir: Path, payload: dict[str, Any], source: str) -> None:
    """Write atomically (temp file + rename), readable by the owner only."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"savedAt": time.time(), "source": source, "snapshot": payload}
    fd, tmp = tempfile.mkstemp(prefix=".lkg-", dir=data_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, data_dir / LKG_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_last_known_good(data_dir: Path) -> dict[str, Any] | None:
    """The saved snapshot payload, or None when there is none or it cannot be read."""
    path = data_dir / LKG_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable last-known-good config %s: %s", path, exc)
        return None
    snapshot = record.get("snapshot") if isinstance(record, dict) else None
    return snapshot if isinstance(snapshot, dict) else None
