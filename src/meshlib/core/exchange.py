"""The per-request state that flows through the client stack, and the actions it yields."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..policy.destination_rule import ClientTLSSettings
from .attempt import CONNECT_TIMEOUT, CertificateState
from .call import Call
from .cluster_state import Clusters, ClusterState
from .flags import flags_label
from .metrics import RequestMetrics
from .retry_policy import Failure, RetryPolicy
from .routing_table import Cluster, HeaderOps, Route, RoutingTable, Target
from .snapshot import Endpoint

__all__ = [
    "Attempt",
    "Exchange",
    "Mirror",
    "Outcome",
    "Reply",
    "Send",
    "Sleep",
    "Synthetic",
    "record_outbound",
]


@dataclass(slots=True)
class Attempt:
    """One request to go upstream, fully decided (the adapter translates, it does not choose).

    ``endpoint`` None: to the requested host as it is (not a mesh endpoint). ``mtls``: speak
    mutual TLS and check that the peer proves ``endpoint.identity``. ``tls``: the
    DestinationRule's own TLS settings (mode SIMPLE or MUTUAL): originate TLS with them, even
    when the caller asked for ``http://``. ``server_name``: the SNI of TLS that is not mesh
    mTLS, and the name its server must prove unless ``tls`` lists subjectAltNames (the
    requested host, or the DestinationRule's sni).
    ``path`` / ``authority``: the request target and authority after the route's rewrite
    (None: as the caller sent them). ``headers``: request header edits, applied in order.
    ``timeout``: this attempt's time (per-try timeout, bounded by the deadline); connecting is
    bounded by ``connect_timeout`` as well. ``retry``: the policy that could still retry this
    attempt's answer (None: no retry is left), so an adapter reads such an answer whole."""

    endpoint: Endpoint | None
    target: Target
    timeout: float | None
    connect_timeout: float = CONNECT_TIMEOUT
    mtls: bool = False
    server_name: str | None = None
    path: str | None = None
    authority: str | None = None
    headers: tuple[HeaderOps, ...] = ()
    retry: RetryPolicy | None = None
    tls: ClientTLSSettings | None = None

    def retriable(self, status: int | None, grpc_status: str | None = None) -> bool:
        """Could the stack retry an answer with this status? (Read it whole, then.)"""
        policy = self.retry
        if policy is None:
            return False
        if grpc_status is not None and grpc_status != "OK":
            return bool(policy.retriable_grpc(grpc_status))
        return status is not None and policy.retriable_status(status)


@dataclass(slots=True)
class Send(Attempt):
    """Action: send this attempt; the adapter sends back its ``Outcome``."""


@dataclass(slots=True)
class Mirror(Attempt):
    """Action: send a copy in the background (authority marked ``-shadow``); never wait for it."""


@dataclass(slots=True)
class Sleep:
    """Action: wait (fault delay, retry back-off)."""

    seconds: float


@dataclass(slots=True)
class Outcome:
    """What the adapter reports back for a Send: a status, or a failure and its error."""

    status: int | None = None
    failure: Failure | None = None
    error: BaseException | None = None
    response: Any = None
    grpc_status: str | None = None
    # The body is still arriving (handed to the caller as a stream): the attempt's pool slot
    # stays taken until the adapter calls ``release`` when the stream closes.
    streaming: bool = False
    release: Callable[[], None] | None = None
    # The attempt never left this process (no certificate to open mTLS with): a connect
    # failure for retries and flags (UF), but nothing outlier detection holds against the endpoint.
    local: bool = False
    # Set by the client driver for a streamed answer: the request is counted when it ends.
    on_end: Callable[[], None] | None = None
    # The server's Retry-After (seconds) on a 429 or 503: a retry waits at least that long.
    retry_after: float | None = None
    ratelimited: bool = False  # the answer carries x-envoy-ratelimited (a mesh rate limit)
    body_size: int = 0  # bytes of the answer's body, when read whole (for istio_response_bytes)

    def end(self) -> None:
        """A streamed answer ended (read or closed): give its pool slot back, count the request."""
        release, self.release = self.release, None
        on_end, self.on_end = self.on_end, None
        if release is not None:
            release()
        if on_end is not None:
            on_end()


@dataclass(slots=True)
class Synthetic:
    """A response the mesh makes itself: redirect, direct response, fault abort."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    grpc_status: str | None = None


@dataclass(slots=True)
class Reply:
    """How the stack ended: an upstream outcome, a synthetic response, or a mesh error."""

    outcome: Outcome | None = None
    synthetic: Synthetic | None = None
    error: str | None = None  # a response flag naming the mesh failure (UH, UO, NR, UT, URX)
    message: str = ""


@dataclass(slots=True)
class Exchange:
    call: Call
    table: RoutingTable
    clusters: Clusters
    rng: random.Random
    clock: Callable[[], float]
    fqdn: str
    source: str = ""  # this workload, for consistentHash useSourceIp
    identity: CertificateState | None = None  # this workload's certificate (None: no mesh identity)
    request: Any = None  # the adapter's own request object; the stack never looks at it
    replayable: bool = True  # the request body can be sent again (not a one-shot stream)
    route: Route | None = None
    target: Target | None = None
    cluster: Cluster | None = None  # from this request's own RoutingTable: endpoints, limits, policy
    state: ClusterState | None = None  # shared with every request to the cluster: counters
    deadline: float | None = None
    started: float = 0.0
    attempts: int = 0
    endpoint: Endpoint | None = None
    tried: list[Endpoint] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    # consistentHash httpCookie with a ttl, the request without the cookie: the value made
    # up for it (every attempt hashes on it) and the Set-Cookie the caller's answer carries.
    sticky_value: str | None = None
    set_cookie: str | None = None
    # Telemetry (telemetry.Telemetry): where the request is counted, traced and logged when it ends.
    telemetry: Any = None
    trace: Any = None  # the sampled request's spans (telemetry.tracing.ClientTrace), else None
    traceparent: str | None = None  # what every attempt sends (unsampled; sampled: per attempt)
    tracestate: str | None = None
    baggage: str | None = None  # to add (the caller's request has none)
    mtls: bool = False  # the last attempt spoke mesh mTLS

    def count(self, kind: str, cluster: Cluster) -> None:
        """One of the mesh's own events (a retry, an ejection, an overflow) on ``cluster``."""
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.metrics.count(kind, cluster.stat_name)


def record_outbound(metrics: RequestMetrics, ex: Exchange, reply: Reply | None) -> None:
    """Count one outbound request: the answer's status (0 when none came back), its flags and
    its duration; end its span and log it. ``reply`` is None when an error escaped the stack."""
    code = 0
    if reply is not None:
        if reply.synthetic is not None:
            code = reply.synthetic.status
        elif reply.outcome is not None and reply.outcome.status is not None:
            code = reply.outcome.status
    duration_ms = (ex.clock() - ex.started) * 1000.0
    telemetry = ex.telemetry
    if telemetry is not None:
        telemetry.outbound_done(ex, reply, code, duration_ms)
    else:
        metrics.record("outbound", ex.fqdn, code, flags_label(ex.flags), duration_ms)
