"""policy.meshlib.io RateLimit: local token buckets on a workload's servers.

    apiVersion: policy.meshlib.io/v1
    kind: RateLimit
    metadata: {name: orders, namespace: default}
    spec:
      selector: {matchLabels: {app: orders}}     # none: every workload of the namespace
      limits:
      - match: {paths: ["/api/*"], methods: [POST]}   # an AuthorizationPolicy operation; none: all
        per: sourcePrincipal                          # or workload (one bucket, the default)
        tokenBucket: {maxTokens: 100, tokensPerFill: 10, fillInterval: 1s}

Envoy's local_ratelimit token bucket: ``maxTokens`` at start and at most, ``tokensPerFill``
added every ``fillInterval``. A request takes a token from every limit that matches it;
without one it gets 429 (gRPC RESOURCE_EXHAUSTED) with ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from .base import FieldPath, MeshModel, WorkloadSelector
from .duration import Duration
from .security import Operation

__all__ = ["Limit", "RateLimitSpec", "TokenBucket"]


class TokenBucket(MeshModel):
    max_tokens: int = Field(ge=1, le=1_000_000_000)
    tokens_per_fill: int | None = Field(default=None, ge=1, le=1_000_000_000)
    fill_interval: Duration

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.fill_interval < 0.05:
            yield ("fillInterval",), "fillInterval must be at least 50ms (as Envoy's)"

    @property
    def per_fill(self) -> int:
        return self.tokens_per_fill if self.tokens_per_fill is not None else self.max_tokens


class Limit(MeshModel):
    match: Operation | None = None
    per: Literal["workload", "sourcePrincipal"] = "workload"
    token_bucket: TokenBucket


class RateLimitSpec(MeshModel):
    selector: WorkloadSelector | None = None
    limits: tuple[Limit, ...] = Field(min_length=1)
