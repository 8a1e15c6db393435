"""Locality-aware load balancing, as Istio configures Envoy for it.

A locality is ``region/zone/subzone`` (``MESH_LOCALITY`` for this process; each endpoint's
from its registration or ServiceEntry). With a DestinationRule's ``localityLbSetting``
(on unless ``enabled: false``) Istio does one of two things:

- ``distribute``: for a caller matching ``from``, traffic is split between the localities
  of ``to`` by their weights (``*`` matches any part); endpoints in no listed locality get
  none. An endpoint's own weight counts inside its locality.
- failover, only when outlier detection is configured (Envoy never leaves a priority
  otherwise): endpoints get priorities, 0 = same region, zone and subzone as the caller,
  1 = same zone, 2 = same region, 3 = elsewhere; a ``failover`` entry whose ``from`` is the
  caller's region puts its ``to`` region at 3 and every other region at 4.
  ``failoverPriority`` (labels) comes first: the more of its labels, in order, an endpoint
  shares with the caller, the higher its priority; the locality rule then orders within.

Traffic goes to priority 0 while it is healthy enough: Envoy gives a level
``min(100, 140 * healthy / total)`` percent (overprovisioning factor 1.4) and the rest
spills to the next level; when the levels together are under 100 the shares are scaled up.
``retryRemoteLocalities`` (Envoy's previous_priorities retry predicate): a retry leaves out
the priorities already tried, so it lands in another locality.

Planning is done once per cluster and snapshot; per request, ``choose`` counts healthy
endpoints per level and draws one random number.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ..policy.destination_rule import LocalityLoadBalancerSetting
from .snapshot import Endpoint

__all__ = ["Locality", "LocalityPlan", "lb_priority", "locality_matches", "plan_localities"]

OVERPROVISIONING = 1.4  # Envoy's default overprovisioning_factor (140)

# failoverPriority keys Istio reads from the locality (and the network) rather than labels.
_REGION = "topology.kubernetes.io/region"
_ZONE = "topology.kubernetes.io/zone"
_SUBZONE = "topology.istio.io/subzone"


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""

    @staticmethod
    def parse(text: str | None) -> Locality:
        """``us-east/us-east-1a/rack-4`` (trailing parts optional); None or "": unknown."""
        parts = (text or "").strip().split("/")
        parts += [""] * (3 - len(parts))
        return Locality(parts[0], parts[1], "/".join(parts[2:]))

    def __bool__(self) -> bool:
        return bool(self.region)

    def __str__(self) -> str:
        return "/".join(p for p in (self.region, self.zone, self.subzone) if p)

    def label(self, key: str) -> str | None:
        return {_REGION: self.region, _ZONE: self.zone, _SUBZONE: self.subzone}.get(key) or None


def lb_priority(caller: Locality, endpoint: Locality) -> int:
    """0: same region/zone/subzone; 1: same region/zone; 2: same region; 3: elsewhere."""
    if caller.region != endpoint.region:
        return 3
    if caller.zone != endpoint.zone:
        return 2
    return 0 if caller.subzone == endpoint.subzone else 1


def locality_matches(locality: Locality, pattern: str) -> bool:
    """``us-east/*`` or ``us-east/zone-a/*``: each part equal or ``*``; missing parts match."""
    wanted = pattern.strip().split("/")
    for want, have in zip(wanted, (locality.region, locality.zone, locality.subzone), strict=False):
        if want == "*":
            return True
        if want != have:
            return False
    return True


@dataclass(frozen=True, slots=True)
class LocalityPlan:
    """Endpoints by priority (0 first), or, for ``distribute``, one level split by weight."""

    levels: tuple[tuple[Endpoint, ...], ...]
    # distribute: (weight, endpoints) per ``to`` entry
    shares: tuple[tuple[float, tuple[Endpoint, ...]], ...] = ()
    distribute: bool = False

    def choose(
        self, healthy: Sequence[Endpoint], rng: random.Random, avoid: Collection[int] = ()
    ) -> Sequence[Endpoint]:
        """The endpoints of ``healthy`` this request may go to: one priority level (or one
        distribute share), drawn by Envoy's priority load. ``avoid``: levels already tried
        (retryRemoteLocalities), left out unless nothing else is healthy."""
        keys = {e.key for e in healthy}
        if self.distribute:
            return self._share(keys, rng)
        loads: list[float] = []
        members: list[list[Endpoint]] = []
        for index, level in enumerate(self.levels):
            alive = [e for e in level if e.key in keys]
            members.append(alive)
            fraction = len(alive) / len(level) if level and index not in avoid else 0.0
            loads.append(min(100.0, 100.0 * OVERPROVISIONING * fraction))
        if not any(members):
            return healthy
        if sum(loads) == 0:  # only avoided levels are healthy: retry there rather than fail
            return next(m for m in members if m)
        shares = _spill(loads)
        point = rng.random() * sum(shares)
        for share, alive in zip(shares, members, strict=True):
            if point < share and alive:
                return alive
            point -= share
        return next(m for m, s in zip(members, shares, strict=True) if m and s)

    def _share(self, keys: set[tuple[str, int]], rng: random.Random) -> Sequence[Endpoint]:
        weighted: list[tuple[float, list[Endpoint]]] = []
        for weight, group in self.shares:
            alive = [e for e in group if e.key in keys]
            if alive:
                availability = min(1.0, OVERPROVISIONING * len(alive) / len(group))
                weighted.append((weight * availability, alive))
        if not weighted:
            return ()  # the caller's localities are all down: Envoy sends nowhere else either
        point = rng.random() * sum(w for w, _ in weighted)
        for weight, alive in weighted:
            if point < weight:
                return alive
            point -= weight
        return weighted[-1][1]

    def level_of(self, endpoint: Endpoint) -> int | None:
        for index, level in enumerate(self.levels):
            if endpoint in level:
                return index
        return None


def _spill(health: list[float]) -> list[float]:
    """Envoy's priority load: each level takes what it can, the rest goes further down."""
    total = sum(health)
    if total < 100.0:
        return [h * 100.0 / total for h in health]
    out: list[float] = []
    left = 100.0
    for h in health:
        take = min(left, h)
        out.append(take)
        left -= take
    return out


def plan_localities(
    endpoints: Sequence[Endpoint],
    caller: Locality,
    caller_labels: Mapping[str, str],
    setting: LocalityLoadBalancerSetting | None,
    outlier_detection: bool,
) -> LocalityPlan | None:
    """The plan for a cluster, or None: plain load balancing over every endpoint."""
    if not caller or not endpoints or (setting is not None and setting.enabled is False):
        return None
    if setting is not None and setting.distribute:
        return _distribute(endpoints, caller, setting)
    if not outlier_detection:
        return None  # Istio applies failover priorities only with outlier detection
    labels = setting.failover_priority if setting is not None else ()
    failover = setting.failover if setting is not None else ()
    if labels and not failover:  # Istio: failoverPriority alone orders by the labels only
        ranks = [_label_rank(e, caller, caller_labels, labels) for e in endpoints]
    else:
        ranks = [
            _label_rank(e, caller, caller_labels, labels) * 5
            + _failover_rank(caller, Locality.parse(e.locality), failover)
            for e in endpoints
        ]
    levels: dict[int, list[Endpoint]] = {}
    for rank, endpoint in zip(ranks, endpoints, strict=True):
        levels.setdefault(rank, []).append(endpoint)
    return LocalityPlan(tuple(tuple(levels[r]) for r in sorted(levels)))


def _failover_rank(caller: Locality, endpoint: Locality, failover: Sequence[Mapping[str, str]]) -> int:
    rank = lb_priority(caller, endpoint)
    if rank == 3:
        for entry in failover:
            if entry.get("from") == caller.region:
                if endpoint.region != entry.get("to"):
                    rank = 4
                break
    return rank


def _label_rank(
    endpoint: Endpoint, caller: Locality, caller_labels: Mapping[str, str], keys: Sequence[str]
) -> int:
    """How many of ``keys``, from the first, the endpoint does not share with the caller."""
    own = Locality.parse(endpoint.locality)
    matched = 0
    for key in keys:
        name, eq, value = key.partition("=")
        want = value if eq else (caller.label(name) or caller_labels.get(name))
        have = own.label(name) or endpoint.labels.get(name)
        if want is None or have != want:
            break
        matched += 1
    return len(keys) - matched


def _distribute(
    endpoints: Sequence[Endpoint], caller: Locality, setting: LocalityLoadBalancerSetting
) -> LocalityPlan | None:
    for entry in setting.distribute:
        source = entry.get("from")
        if not isinstance(source, str) or not locality_matches(caller, source):
            continue
        targets = entry.get("to")
        left = list(endpoints)
        shares: list[tuple[float, tuple[Endpoint, ...]]] = []
        for pattern, weight in targets.items() if isinstance(targets, Mapping) else ():
            group = tuple(e for e in left if locality_matches(Locality.parse(e.locality), str(pattern)))
            left = [e for e in left if e not in group]
            if group and float(weight) > 0:
                shares.append((float(weight), group))
        kept = tuple(e for _, group in shares for e in group)
        return LocalityPlan((kept,), tuple(shares), distribute=True)
    return None
