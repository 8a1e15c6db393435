"""What the config service needs to answer a watch with a delta (``meshlib.snapshot_delta``).

Each time a replica encodes the snapshot of a new version it records it here, item by item
(every item already encoded once): the version at which each item last changed, and the
version at which each removed one went. A delta from version B is every item stamped after B
plus every removal after B. It is offered only from a version this replica encoded itself
(and still remembers): a version it never saw, say one another replica served while this one
skipped it, gets the full snapshot, as does a workload on first contact or after a gap.
"""

from __future__ import annotations

import json
from collections import deque

from ..snapshot_delta import SECTIONS

__all__ = ["Encoded", "SnapshotLog"]

# (section, key) -> the item's JSON; section "meta" holds trustDomain and trustBundle.
Encoded = dict[tuple[str, str], bytes]


class SnapshotLog:
    def __init__(self, keep: int = 512) -> None:
        self._keep = keep
        self._reset()

    def _reset(self) -> None:
        self._items: dict[tuple[str, str], tuple[bytes, int]] = {}  # -> (JSON, version it changed)
        self._removed: dict[tuple[str, str], int] = {}  # -> version it went
        self._seen: deque[int] = deque()  # versions encoded here, oldest first
        self._bases: set[int] = set()
        self._deltas: dict[int, bytes] = {}  # base -> the delta to the newest version

    @property
    def version(self) -> int | None:
        return self._seen[-1] if self._seen else None

    def record(self, version: int, items: Encoded) -> None:
        """The snapshot at ``version`` is ``items``."""
        if self._seen and version < self._seen[-1]:
            self._reset()  # the store went back (restored from a backup): forget it all
        for key, data in items.items():
            old = self._items.get(key)
            if old is None or old[0] != data:
                self._items[key] = (data, version)
                self._removed.pop(key, None)
        for key in [k for k in self._items if k not in items]:
            del self._items[key]
            self._removed[key] = version
        if not self._seen or self._seen[-1] != version:
            self._seen.append(version)
            self._bases.add(version)
        while len(self._seen) > self._keep:
            self._bases.discard(self._seen.popleft())
        oldest = self._seen[0]
        if len(self._removed) > 4 * self._keep:  # nothing older than the oldest base is asked for
            self._removed = {k: v for k, v in self._removed.items() if v > oldest}
        self._deltas.clear()

    def delta(self, base: int) -> bytes | None:
        """The delta from ``base`` to the newest version recorded, or None when there is none
        to offer (not a version seen here, or already the newest)."""
        if base not in self._bases or base == self.version:
            return None
        cached = self._deltas.get(base)
        if cached is not None:
            return cached
        meta: list[bytes] = []
        changed: dict[str, list[bytes]] = {s: [] for s in SECTIONS}
        for (section, key), (data, stamp) in self._items.items():
            if stamp > base:
                if section == "meta":
                    meta.append(b'"%s":%s,' % (key.encode(), data))
                else:
                    changed[section].append(data)
        removed: dict[str, list[str]] = {s: [] for s in SECTIONS}
        for (section, key), stamp in self._removed.items():
            if stamp > base and section in removed:
                removed[section].append(key)
        body = b"".join(
            (
                b'{"version":%d,"base":%d,' % (self.version or 0, base),
                *meta,
                b'"changed":{',
                b",".join(b'"%s":[%s]' % (s.encode(), b",".join(changed[s])) for s in SECTIONS),
                b'},"removed":',
                json.dumps(removed, separators=(",", ":")).encode(),
                b"}",
            )
        )
        self._deltas[base] = body
        return body
