"""What the config service needs to answer a watch with a delta (``meshlib.snapshot_delta``).

Each time a replica encodes the snapshot of a new version it records it here, item by item
(every item already encoded once): the version at which each item last changed, and the
version at which each removed one went. A delta from version B is every item stamped after B
plus every removal after B. It is offered only from a version this replica encoded itself
(and still remembers): a version it never saw, say one another replica served while this one
skipped it, gets the full snapshot, as does a workload on first contact or after a gap.

Versions alone do not name a snapshot: replicas judge lost workloads each for itself, so two
may serve different contents at one version, and a store restored from a backup numbers its
versions again. ``epoch`` names this log's history (random, new with each process and each
restart of the numbering); a watch asks for a delta only from the epoch it was served by.
"""

from __future__ import annotations

import bisect
import json
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from ..egress_scope import EgressScope, Hosts
from ..snapshot_delta import SECTIONS

__all__ = ["NOTHING_NEW", "Encoded", "SnapshotLog"]

# (section, key) -> the item's JSON; section "meta" holds trustDomain and trustBundle.
Encoded = dict[tuple[str, str], bytes]
# A delta with nothing in it for a watch's egress hosts: the watch goes on waiting.
NOTHING_NEW = b""


@dataclass(slots=True)
class _Item:
    data: bytes
    stamp: int  # the version at which it last changed
    hosts: Hosts | None  # a registry entry's hosts (None: in every scope)
    touched: Hosts | None  # every host it has had: a scope it left hears that it went


class SnapshotLog:
    """Per item, the version at which it last changed; per removal, the version it went; and
    in version order which items changed, so a delta costs what changed since its base."""

    def __init__(self, keep: int = 512) -> None:
        self._keep = keep
        self._reset()

    def _reset(self) -> None:
        self.epoch = secrets.token_hex(8)
        self._items: dict[tuple[str, str], _Item] = {}
        self._removed: dict[tuple[str, str], tuple[int, Hosts | None]] = {}  # -> (version, hosts)
        self._stamps: list[int] = []  # ascending: the version of each entry of _changed
        self._changed: list[tuple[str, str]] = []  # the item changed or removed then
        self._seen: deque[int] = deque()  # versions encoded here, oldest first
        self._bases: set[int] = set()
        # (base, egress hosts or None) -> the delta's body after its version and base
        self._deltas: dict[tuple[int, tuple[str, ...] | None], bytes] = {}

    @property
    def version(self) -> int | None:
        return self._seen[-1] if self._seen else None

    def record(self, version: int, items: Encoded, hosts: Mapping[tuple[str, str], Hosts]) -> None:
        """The snapshot at ``version`` is ``items``; registry entries serve ``hosts``."""
        if self._seen and version < self._seen[-1]:
            self._reset()  # the store went back (restored from a backup): forget it all
        changed: list[tuple[str, str]] = []
        for key, data in items.items():
            old, now = self._items.get(key), hosts.get(key)
            if old is None:
                gone = self._removed.pop(key, None)  # back after a removal: its old hosts too
                touched = now if gone is None or gone[1] is None or now is None else gone[1] | now
                self._items[key] = _Item(data, version, now, touched)
                changed.append(key)
            elif old.data != data or old.hosts != now:
                touched = None if old.touched is None or now is None else old.touched | now
                old.data, old.stamp, old.hosts, old.touched = data, version, now, touched
                changed.append(key)
        for key in [k for k in self._items if k not in items]:
            self._removed[key] = (version, self._items.pop(key).touched)
            changed.append(key)
        self._stamps.extend(version for _ in changed)
        self._changed.extend(changed)
        if not self._seen or self._seen[-1] != version:
            self._seen.append(version)
            self._bases.add(version)
        elif changed:
            # The snapshot changed with no new version (a store re-read; a workload back from
            # lost): watches holding this version may hold either content, so none gets a
            # delta from it.
            self._bases.discard(version)
        while len(self._seen) > self._keep:
            self._bases.discard(self._seen.popleft())
        self._forget_before(self._seen[0])
        self._deltas.clear()

    def _forget_before(self, oldest: int) -> None:
        """Drop what no delta can need: changes and removals at or before the oldest base."""
        cut = bisect.bisect_right(self._stamps, oldest)
        if cut > len(self._stamps) // 2 and cut > 64:
            del self._stamps[:cut], self._changed[:cut]
            self._removed = {k: v for k, v in self._removed.items() if v[0] > oldest}

    def delta(
        self,
        base: int,
        scope: EgressScope | None = None,
        hosts: tuple[str, ...] | None = None,
        *,
        label: int | None = None,
    ) -> bytes | None:
        """The delta from ``base`` to the newest version recorded, for a watch with egress
        ``hosts`` (``scope``, parsed) or without; NOTHING_NEW when it would carry nothing for
        that watch; None when there is none to offer (not a version seen here, or current).
        ``label``: the base it names (default ``base``), for a watch whose snapshot, for its
        hosts, is the same at ``label`` as at ``base``."""
        if base not in self._bases:
            return None
        if base == self.version:  # nothing after it: already current, or current for its hosts
            return None if label is None or label == base else NOTHING_NEW
        rest = self._deltas.get((base, hosts))
        if rest is None:
            rest = self._deltas[(base, hosts)] = self._since(base, scope)
        if rest == NOTHING_NEW:
            return NOTHING_NEW
        return b'{"version":%d,"base":%d,%s' % (self.version or 0, base if label is None else label, rest)

    def _since(self, base: int, scope: EgressScope | None) -> bytes:
        meta: list[bytes] = []
        changed: dict[str, list[bytes]] = {s: [] for s in SECTIONS}
        removed: dict[str, list[str]] = {s: [] for s in SECTIONS}
        start = bisect.bisect_right(self._stamps, base)
        for section, key in dict.fromkeys(self._changed[start:]):
            item = self._items.get((section, key))
            if item is not None:
                if section == "meta":
                    meta.append(b'"%s":%s,' % (key.encode(), item.data))
                elif scope is None or item.hosts is None or scope.admits(item.hosts):
                    changed[section].append(item.data)
                elif item.touched is not None and scope.admits(item.touched):
                    removed[section].append(key)  # out of this scope now: the watch drops it
                continue
            gone = self._removed.get((section, key))
            if (
                gone is not None
                and section in removed
                and (scope is None or gone[1] is None or scope.admits(gone[1]))
            ):
                removed[section].append(key)
        if scope is not None and not meta and not any(changed.values()) and not any(removed.values()):
            return NOTHING_NEW
        return b"".join(
            (
                *meta,
                b'"changed":{',
                b",".join(b'"%s":[%s]' % (s.encode(), b",".join(changed[s])) for s in SECTIONS),
                b'},"removed":',
                json.dumps(removed, separators=(",", ":")).encode(),
                b"}",
            )
        )
