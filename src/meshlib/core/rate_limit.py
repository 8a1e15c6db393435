"""Local rate limits (RateLimit): Envoy local_ratelimit token buckets, per workload or per
source principal, kept across snapshots while a limit's spec is unchanged.

A bucket starts full (``maxTokens``) and gains ``tokensPerFill`` every ``fillInterval``
(discrete fills, as Envoy's), never above ``maxTokens``. A request takes one token from every
limit that matches it; when one has none, the answer says how long until its next fill.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..policy.rate_limit import Limit
from ..policy.resources import RateLimit
from .authz import AuthzView, compile_operation

__all__ = ["MAX_PRINCIPAL_BUCKETS", "Bucket", "RateLimiter", "compile_rate_limiter"]

MAX_PRINCIPAL_BUCKETS = 10_000  # per limit; the oldest is dropped beyond (a new caller starts full)


class Bucket:
    __slots__ = ("_lock", "interval", "last", "maximum", "per_fill", "tokens")

    def __init__(self, maximum: int, per_fill: int, interval: float, now: float) -> None:
        self._lock = threading.Lock()
        self.maximum = maximum
        self.per_fill = per_fill
        self.interval = interval
        self.tokens = maximum
        self.last = now

    def take(self, now: float) -> float | None:
        """None: a token taken; else the seconds until the next fill."""
        with self._lock:
            if now >= self.last + self.interval:
                fills = int((now - self.last) // self.interval)
                self.tokens = min(self.maximum, self.tokens + fills * self.per_fill)
                self.last += fills * self.interval
            if self.tokens >= 1:
                self.tokens -= 1
                return None
            return self.last + self.interval - now


@dataclass(slots=True)
class _Compiled:
    key: str  # the policy and the limit's spec: an unchanged limit keeps its buckets
    match: Callable[[AuthzView], bool] | None
    per_principal: bool
    limit: Limit
    shared: Bucket | None = None
    by_principal: dict[str, Bucket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bucket(self, view: AuthzView, now: float) -> Bucket:
        spec = self.limit.token_bucket
        if not self.per_principal:
            shared = self.shared
            if shared is None:
                shared = self.shared = Bucket(spec.max_tokens, spec.per_fill, spec.fill_interval, now)
            return shared
        peer = view.peer
        who = peer.principal if peer is not None else ""  # plaintext callers share one bucket
        found = self.by_principal.get(who)
        if found is None:
            with self.lock:
                found = self.by_principal.get(who)
                if found is None:
                    if len(self.by_principal) >= MAX_PRINCIPAL_BUCKETS:
                        self.by_principal.pop(next(iter(self.by_principal)))
                    found = self.by_principal[who] = Bucket(
                        spec.max_tokens, spec.per_fill, spec.fill_interval, now
                    )
        return found


@dataclass(frozen=True, slots=True)
class RateLimiter:
    limits: tuple[_Compiled, ...]

    def check(self, view: AuthzView, now: float) -> tuple[str, float] | None:
        """None: within every limit; else (the limiting policy, seconds until a token)."""
        for limit in self.limits:
            if limit.match is not None and not limit.match(view):
                continue
            wait = limit.bucket(view, now).take(now)
            if wait is not None:
                return limit.key.split("#", 1)[0], wait
        return None


def compile_rate_limiter(policies: Sequence[RateLimit], previous: RateLimiter | None) -> RateLimiter | None:
    """The workload's limits (None: none apply); limits unchanged since ``previous`` keep
    their buckets, so a config change elsewhere grants no fresh burst."""
    if not policies:
        return None
    kept = {c.key: c for c in previous.limits} if previous is not None else {}
    compiled = []
    for policy in policies:
        for index, limit in enumerate(policy.spec.limits):
            spec = json.dumps(limit.model_dump(mode="json"), sort_keys=True)
            key = f"{policy.namespace}/{policy.name}#{index}#{spec}"
            reused = kept.get(key)
            if reused is None:
                match = compile_operation(limit.match) if limit.match is not None else None
                reused = _Compiled(key, match, limit.per == "sourcePrincipal", limit)
            compiled.append(reused)
    return RateLimiter(tuple(compiled))
