"""Which failures are retried, how often, and after how long (Envoy's rules as Istio sets them).

- ``attempts`` counts retries; a request is sent at most ``1 + attempts`` times.
- ``retryOn`` conditions (Envoy): ``5xx`` = any 5xx response, a connect failure, a
  reset or a per-try timeout; ``gateway-error`` = 502/503/504, connect failure and
  per-try timeout; ``reset`` = the connection dropped or a per-try timeout;
  ``connect-failure``; ``refused-stream``; ``retriable-4xx`` = 409;
  ``retriable-status-codes`` and bare codes = those statuses; gRPC conditions
  (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable) look at
  the grpc-status of a response.
- Without ``retries`` a route gets Istio's default: 2 retries on
  connect-failure, refused-stream, unavailable, cancelled and 503.
- Back-off is Envoy's fully jittered exponential: retry N waits a random time in
  [0, (2^N - 1) × base], at most 10 × base; base is 25 ms (``backoff`` overrides).
- A non-idempotent request (POST, PATCH) is retried only if it cannot have reached
  the server (connect failure, refused stream), unless the request carries an
  ``Idempotency-Key`` or the VirtualService is annotated
  ``retry.meshlib.io/non-idempotent: "true"``.

tenacity is not used per request: a reused ``Retrying`` costs about 17 µs a call on
these machines, a third of the data plane's whole budget; these rules are plain
arithmetic on the outcome instead. tenacity drives the config watch's reconnects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import Enum

from ..policy.virtual_service import HTTPRetry

__all__ = ["DEFAULT_RETRY", "Failure", "RetryPolicy", "compile_retry_policy"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Failure(Enum):
    """How an attempt failed when there is no response to look at."""

    CONNECT = "connect-failure"  # never reached the server
    REFUSED = "refused-stream"  # the server refused before processing
    RESET = "reset"  # the connection broke after the request may have been sent
    TIMEOUT = "per-try-timeout"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    per_try_timeout: float | None = None
    on_5xx: bool = False
    on_gateway_error: bool = False
    on_reset: bool = False
    on_connect_failure: bool = False
    on_refused_stream: bool = False
    on_reset_before_request: bool = False
    on_ratelimited: bool = False  # envoy-ratelimited: a 429 that carries x-envoy-ratelimited
    statuses: frozenset[int] = frozenset()
    grpc_codes: frozenset[str] = frozenset()
    backoff_base: float = 0.025
    non_idempotent: bool = False
    # retryIgnorePreviousHosts (Istio's default: true): a retry avoids endpoints already tried.
    avoid_tried: bool = True
    # retryRemoteLocalities: a retry leaves the locality priorities already tried.
    remote_localities: bool = False

    @property
    def backoff_max(self) -> float:
        return self.backoff_base * 10

    def retriable_status(self, status: int) -> bool:
        if status in self.statuses:
            return True
        if self.on_5xx and 500 <= status <= 599:
            return True
        return self.on_gateway_error and status in (502, 503, 504)

    def retriable_failure(self, failure: Failure) -> bool:
        # Envoy (wouldRetryFromReset): 5xx, gateway-error and reset retry every kind of reset;
        # the narrower conditions only their own kind; reset-before-request only what was
        # never sent.
        if self.on_5xx or self.on_gateway_error or self.on_reset:
            return True
        if failure is Failure.CONNECT:
            return self.on_connect_failure or self.on_reset_before_request
        if failure is Failure.REFUSED:
            return self.on_refused_stream or self.on_reset_before_request
        return False

    def retriable_grpc(self, code: str) -> bool:
        return code in self.grpc_codes

    def may_resend(self, method: str, failure: Failure | None, idempotency_key: bool) -> bool:
        """A request that may have reached the server is resent only if that is safe."""
        if failure in (Failure.CONNECT, Failure.REFUSED):
            return True
        return method in IDEMPOTENT_METHODS or idempotency_key or self.non_idempotent

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (1-based): fully jittered exponential."""
        upper = min(self.backoff_max, ((1 << min(retry, 16)) - 1) * self.backoff_base)
        return rng.random() * upper


_GRPC = {
    "cancelled": "CANCELLED",
    "deadline-exceeded": "DEADLINE_EXCEEDED",
    "internal": "INTERNAL",
    "resource-exhausted": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
}


def compile_retry_policy(retry: HTTPRetry | None, *, non_idempotent: bool = False) -> RetryPolicy:
    """The route's retries, or Istio's default when the route sets none."""
    if retry is None:
        return DEFAULT_RETRY if not non_idempotent else replace(DEFAULT_RETRY, non_idempotent=True)
    conditions = {c.strip() for c in (retry.retry_on or _DEFAULT_ON).split(",") if c.strip()}
    statuses = {int(c) for c in conditions if c.isdigit()}
    if retry.retry_on is None:
        statuses.add(503)  # Istio's default retriable status with its default conditions
    if "retriable-4xx" in conditions:
        statuses.add(409)
    return RetryPolicy(
        attempts=retry.attempts,
        per_try_timeout=retry.per_try_timeout,
        on_5xx="5xx" in conditions,
        on_gateway_error="gateway-error" in conditions,
        on_reset="reset" in conditions,
        on_reset_before_request="reset-before-request" in conditions,
        on_connect_failure="connect-failure" in conditions,
        on_refused_stream="refused-stream" in conditions,
        on_ratelimited="envoy-ratelimited" in conditions,
        statuses=frozenset(statuses),
        grpc_codes=frozenset(_GRPC[c] for c in conditions if c in _GRPC),
        backoff_base=retry.backoff or 0.025,
        non_idempotent=non_idempotent,
        avoid_tried=retry.retry_ignore_previous_hosts is not False,
        remote_localities=bool(retry.retry_remote_localities),
    )


_DEFAULT_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRY = RetryPolicy(
    attempts=2,
    on_connect_failure=True,
    on_refused_stream=True,
    statuses=frozenset({503}),
    grpc_codes=frozenset({"UNAVAILABLE", "CANCELLED"}),
)
"""Istio's mesh default for routes without ``retries``."""
