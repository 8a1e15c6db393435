"""What DNS answers mean to the data plane, and when to ask again (pure: no sockets, no loop).

An answer is the addresses a name resolved to (A/AAAA: each one an endpoint on the
endpoint's own port) or SRV targets (each address of each target an endpoint on the
target's port, weighted), with the TTL it may be kept for.

When to ask again, as Envoy's STRICT_DNS with Istio's ``respect_dns_ttl: true``:

- an answer is refreshed when its TTL runs out, held between ``TTL_FLOOR`` and
  ``TTL_CEILING``; an answer without a TTL (the system resolver) at the fixed refresh rate;
- a failed lookup keeps the last answer and is retried on a jittered exponential backoff
  (Envoy's ``dns_failure_refresh_rate``), reset by the next answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "FAILURE_BASE",
    "FAILURE_MAX",
    "TTL_CEILING",
    "TTL_FLOOR",
    "DnsAnswer",
    "FailureBackoff",
    "NoRecords",
    "Record",
    "SrvRecord",
    "SrvTarget",
    "refresh_delay",
    "srv_targets",
]

# A TTL of 0 (or 1) would have every name asked for as fast as the loop turns; 1 s is the
# finest a record can ask for here. Envoy's floor (dns_min_refresh_rate) is 5 s; meshlib's is
# lower so short-TTL failover records (often 1-5 s) are followed as their owners intend.
TTL_FLOOR = 1.0
# A record served with a day-long TTL (a mistake, or a CDN's) is still asked again every
# 5 minutes, so a stale answer cannot pin dead addresses for a day; re-asking costs one query
# per name per 5 minutes. Envoy has no ceiling.
TTL_CEILING = 300.0
# Failures: retried after 1 s, then 2, 4, ... up to 30 s (each between half and all of that,
# so workloads that failed together do not retry together).
FAILURE_BASE = 1.0
FAILURE_MAX = 30.0


@dataclass(frozen=True, slots=True, order=True)
class SrvTarget:
    """One address of one SRV target: an endpoint on ``port`` with ``weight``."""

    address: str
    port: int
    weight: int


Record = str | SrvTarget
"""An address (A/AAAA: the endpoint's own port) or an SRV target's address and port."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What a lookup found, and for how long it may be kept (None: no TTL known)."""

    records: tuple[Record, ...]
    ttl: float | None = None


class NoRecords(LookupError):
    """The name does not exist, or has no records of the kinds asked for: no endpoints.
    ``ttl``: how long that answer may be kept (the zone's negative TTL), if known."""

    def __init__(self, message: str, ttl: float | None = None) -> None:
        super().__init__(message)
        self.ttl = ttl


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV record as the server sent it (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


def srv_targets(records: Iterable[SrvRecord]) -> list[list[SrvRecord]]:
    """The records by priority, lowest first (RFC 2782: try the lowest priority first);
    weights as endpoint weights: a weight of 0 counts as 1 (the load balancers give every
    endpoint at least weight 1, as Envoy does, so a weight-0 target beside weighted ones
    gets a small share rather than none). A target of "." (service not offered) is left out."""
    levels: dict[int, list[SrvRecord]] = {}
    for record in records:
        if record.target in (".", ""):
            continue
        weighted = SrvRecord(record.priority, max(record.weight, 1), record.port, record.target)
        levels.setdefault(record.priority, []).append(weighted)
    return [levels[p] for p in sorted(levels)]


def refresh_delay(ttl: float | None, default: float) -> float:
    """Seconds until an answer is asked for again: its TTL, held within the floor and the
    ceiling, or ``default`` (the refresh rate) when it came without one."""
    if ttl is None:
        return default
    return min(max(ttl, TTL_FLOOR), TTL_CEILING)


class FailureBackoff:
    """Delays between retries of a failing lookup: doubling from ``base`` up to ``ceiling``,
    each drawn between half and all of that (``rng`` injected for tests)."""

    def __init__(
        self, base: float = FAILURE_BASE, ceiling: float = FAILURE_MAX, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.ceiling = ceiling
        self.failures = 0
        self._rng = rng or random.Random()

    def failed(self) -> float:
        """Another failure: the delay before the next try."""
        interval = min(self.base * 2.0**self.failures, self.ceiling)
        if interval < self.ceiling:  # no further: 2.0 ** failures would overflow in a long outage
            self.failures += 1
        return interval * (0.5 + self._rng.random() / 2)

    def succeeded(self) -> None:
        self.failures = 0
