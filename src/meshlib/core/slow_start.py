"""Slow start (DestinationRule ``warmup``/``warmupDurationSecs``), as Envoy does it.

An endpoint that joins a cluster after it was first seen gets a growing share of traffic
over the window: its weight is scaled by ``max(minimumPercent, (age / window) ** (1 /
aggression))`` (Envoy's slow_start_config; Istio's defaults: 10% and 1.0). The endpoints a
cluster starts with are not warmed up, as in Envoy. Only ROUND_ROBIN and LEAST_REQUEST use
weights this way (validation refuses warmup with the others).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from ..policy.destination_rule import LoadBalancerSettings
from .snapshot import Endpoint

__all__ = ["SlowStart", "slow_start_of"]

DEFAULT_MINIMUM_PERCENT = 10.0
DEFAULT_AGGRESSION = 1.0
_SCALE = 100  # weights are integers: scaled up so a 10% share of weight 1 stays above 0


@dataclass(frozen=True, slots=True)
class SlowStart:
    window: float
    minimum: float  # a fraction, 0.1 for 10%
    aggression: float

    def factor(self, age: float) -> float:
        if age >= self.window:
            return 1.0
        ramp: float = (max(age, 0.001) / self.window) ** (1.0 / self.aggression)
        return max(self.minimum, ramp)

    def weighted(
        self, endpoints: Sequence[Endpoint], born: dict[tuple[str, int], float], now: float
    ) -> Sequence[Endpoint] | None:
        """``endpoints`` with warming ones weighed down, or None when none is warming (the
        common case: nothing is copied)."""
        warming = {
            e.key: f for e in endpoints if e.key in born and (f := self.factor(now - born[e.key])) < 1.0
        }
        if not warming:
            return None
        return tuple(
            dataclasses.replace(e, weight=max(1, round(e.weight * _SCALE * warming.get(e.key, 1.0))))
            for e in endpoints
        )


def slow_start_of(settings: LoadBalancerSettings | None) -> SlowStart | None:
    if settings is None:
        return None
    if settings.warmup is not None:
        warmup = settings.warmup
        minimum = warmup.minimum_percent if warmup.minimum_percent is not None else DEFAULT_MINIMUM_PERCENT
        return SlowStart(warmup.duration, minimum / 100.0, warmup.aggression or DEFAULT_AGGRESSION)
    if settings.warmup_duration_secs:
        return SlowStart(settings.warmup_duration_secs, DEFAULT_MINIMUM_PERCENT / 100.0, DEFAULT_AGGRESSION)
    return None
