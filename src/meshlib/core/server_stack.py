"""The default server stack: what happens to every inbound request before the application.

Protocol-neutral like the client stack: ASGI, WSGI and gRPC adapters drive it. The
terminal action is ``Handle``: the adapter runs the application and sends back the status
it answered with. ``CheckCustom`` asks a CUSTOM authorization provider (the driver sends
back its verdict). Rate limits plug in by role (before "handle").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..peer import PeerIdentity
from .authz import AuthorizationCheck, Authorizer, CheckCustom, RequestAuth
from .call import Call
from .deadline import DEADLINE_HEADER, parse_timeout_ms
from .flags import RBAC, RL, UAEX, UT
from .rate_limit import RateLimiter
from .snapshot import WorkloadSecurity
from .stack import Flow, Next, Stack

__all__ = [
    "DENIED_BODY",
    "LIVE_PATH",
    "METRICS_PATH",
    "READY_PATH",
    "Answer",
    "Handle",
    "Inbound",
    "default_server_stack",
    "edited_headers",
]

DENIED_BODY = b"RBAC: access denied\n"  # Envoy's body: says nothing of the policies
READY_PATH = "/.well-known/meshlib/ready"
LIVE_PATH = "/.well-known/meshlib/live"
METRICS_PATH = "/.well-known/meshlib/metrics"


@dataclass(slots=True)
class Handle:
    """Action: run the application (under ``Inbound.deadline``); the adapter sends back its status."""


@dataclass(slots=True)
class Answer:
    """How the server stack ended. ``local``: the mesh answered, the application never ran."""

    status: int
    local: bool = False
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"  # of a local answer's body
    grpc_status: str | None = None  # a local answer to a gRPC call (None: from the HTTP status)


@dataclass(slots=True)
class Inbound:
    call: Call
    clock: Callable[[], float]
    started: float
    ready: Callable[[], bool]
    peer: PeerIdentity | None = None
    report: Callable[[bool], bytes] | None = None  # the readiness probe's body (details for people)
    timeout: float | None = None  # the caller's remaining time, from the protocol (gRPC's deadline)
    deadline: float | None = None
    flags: list[str] = field(default_factory=list)
    security: WorkloadSecurity | None = None  # this workload's policies (of the request's snapshot)
    source_ip: str | None = None  # the connection's peer address
    destination_ip: str | None = None  # the connection's local address
    sni: str | None = None  # the TLS server name the caller asked for
    path_error: str | None = None  # the path could not be normalized: why (a 400)
    request_auth: RequestAuth | None = None  # the verified JWT, once RequestAuthentication ran
    authenticate: Callable[[Inbound], str | None] | None = None  # JWT rules: why a token failed
    header_edits: list[tuple[str, str | None]] | None = None  # for the application (None: remove)
    rate_limiter: RateLimiter | None = None  # this workload's RateLimit buckets
    limited_by: str | None = None  # the RateLimit that refused
    reveal_denials: bool = False  # name the deciding policy in a denial's body (operators only)
    denied_by: str | None = None  # the policy that denied ("" when no ALLOW matched)
    audit: tuple[str, ...] = ()  # AUDIT policies that matched
    tracing: Any = None  # telemetry.tracing.Tracing: this workload's (None: no trace context)
    trace: Any = None  # telemetry.tracing.ServerTrace, once the trace filter ran
    grpc_status: str | None = None  # a gRPC call's status name, when the adapter knows it
    response_bytes: int = 0  # the answer's body, when the adapter counted it
    request_bytes: int | None = None  # the request's body as the adapter counted it (else Content-Length)
    metrics_page: Callable[[Inbound], Answer] | None = None  # the Prometheus scrape (when served)


ServerFlow = Flow[Answer]
ServerNext = Next[Inbound, Answer]


def edited_headers(
    pairs: list[tuple[str, str]], edits: list[tuple[str, str | None]]
) -> list[tuple[str, str]]:
    """Header pairs (lower-case names) after the stack's edits: each edited name's old values
    go, then the new value (None: removed only)."""
    names = {name for name, _ in edits}
    kept = [(k, v) for k, v in pairs if k.lower() not in names]
    kept.extend((name, value) for name, value in edits if value is not None)
    return kept


# The filters below are plain functions (see core/stack.py): one that lets a request through
# returns ``next(ex)`` itself, one that answers returns ``_answered(...)``, so an admitted
# request's flow is the ``handle`` generator alone rather than one generator frame per filter
# for every send through it. Their code runs when the driver makes the flow, at admit() and
# inside its accounting: an exception there fails the request as a generator filter's would.


def _answered(answer: Answer) -> ServerFlow:
    """The flow of a request the mesh answers itself: it ends at once with ``answer``."""
    return answer
    yield  # a generator


def _answered_by(make: Callable[[], Answer]) -> ServerFlow:
    """The same, with the answer made when the flow runs (a page that is built, and may fail,
    inside the driver's accounting, as any filter's work)."""
    return make()
    yield  # a generator


def health(ex: Inbound, next: ServerNext) -> ServerFlow:
    """Readiness and liveness on reserved paths, answered before anything else runs."""
    path = ex.call.path
    if path == READY_PATH:
        return _answered_by(lambda: _readiness(ex))
    if path == LIVE_PATH:
        return _answered(Answer(200, local=True, body=b"live\n"))
    page = ex.metrics_page
    if path == METRICS_PATH and page is not None:
        return _answered_by(lambda: page(ex))
    return next(ex)


def _readiness(ex: Inbound) -> Answer:
    ok = ex.ready()
    status = 200 if ok else 503
    if ex.report is not None:
        return Answer(status, local=True, body=ex.report(ok), content_type="application/json")
    return Answer(status, local=True, body=b"ready\n" if ok else b"not ready\n")


def trace(ex: Inbound, next: ServerNext) -> ServerFlow:
    """W3C trace context: continued from the caller (sampling only from a verified one) or
    started here; a SERVER span when sampled. Probes are not traced (health runs first)."""
    tracing = ex.tracing
    if tracing is not None:
        ex.trace = tracing.server(ex)
    return next(ex)


def path(ex: Inbound, next: ServerNext) -> ServerFlow:
    """A path that cannot be normalized (NUL, broken escapes) is refused before any policy."""
    if ex.path_error is not None:
        return _answered(
            Answer(
                400,
                local=True,
                body=f"bad request path: {ex.path_error}\n".encode(),
                grpc_status="INTERNAL",
            )
        )
    return next(ex)


_STRICT_REFUSAL = (
    b"mutual TLS required: this workload's PeerAuthentication is STRICT and the request "
    b"has no verified peer certificate; serve it with meshlib.serve_asgi, "
    b"meshlib.serve_wsgi or meshlib_grpc.serve, which terminate mTLS with the mesh identity\n"
)


def mutual_tls(ex: Inbound, next: ServerNext) -> ServerFlow:
    """STRICT means a verified peer certificate on every request, also on a server meshlib did
    not start (which cannot have checked one): refused with how to serve mTLS."""
    security = ex.security
    if ex.peer is None and security is not None and security.mode_for_port(ex.call.port) == "STRICT":
        return _answered(Answer(403, local=True, body=_STRICT_REFUSAL, grpc_status="UNAUTHENTICATED"))
    return next(ex)


def authenticate(ex: Inbound, next: ServerNext) -> ServerFlow:
    """RequestAuthentication: a token that fails verification is a 401; none, no principal."""
    check = ex.authenticate
    if check is not None:
        failure = check(ex)
        if failure is not None:
            return _answered(
                Answer(
                    401,
                    local=True,
                    body=f"{failure}\n".encode(),
                    headers=(("www-authenticate", 'Bearer realm="meshlib", error="invalid_token"'),),
                    grpc_status="UNAUTHENTICATED",
                )
            )
    return next(ex)


def authorize(ex: Inbound, next: ServerNext) -> ServerFlow:
    """AuthorizationPolicy: CUSTOM, then DENY, then ALLOW (none: allowed); AUDIT marks."""
    security = ex.security
    authorizer = security.authorizer if security is not None else None
    if authorizer is None:
        return next(ex)
    if authorizer.custom:
        return _authorize_custom(ex, next, authorizer)
    return _authorize_local(ex, next, authorizer)


def _authorize_custom(ex: Inbound, next: ServerNext, authorizer: Authorizer) -> ServerFlow:
    """CUSTOM policies first: the driver asks each matching one's provider (``CheckCustom``)."""
    for policy in authorizer.custom:
        if policy.matches(ex):
            assert policy.provider is not None
            check = AuthorizationCheck(
                policy.provider, policy.name, ex.call, ex.peer, ex.source_ip, ex.request_auth
            )
            allowed = yield CheckCustom(check)
            if allowed is not True:
                return _denied(ex, policy.name, UAEX)
    return (yield from _authorize_local(ex, next, authorizer))


def _authorize_local(ex: Inbound, next: ServerNext, authorizer: Authorizer) -> ServerFlow:
    """DENY, then ALLOW, then the AUDIT marks."""
    denied_by = authorizer.denied_by(ex)
    if denied_by is not None:
        return _answered(_denied(ex, denied_by, RBAC))
    if authorizer.audit:
        ex.audit = authorizer.audited_by(ex)
    return next(ex)


def _denied(ex: Inbound, policy: str, flag: str) -> Answer:
    ex.denied_by = policy
    ex.flags.append(flag)
    body = DENIED_BODY
    if ex.reveal_denials:
        reason = f"denied by {policy}" if policy else "no ALLOW policy matched"
        body = f"RBAC: access denied ({reason})\n".encode()
    return Answer(403, local=True, body=body, grpc_status="PERMISSION_DENIED")


def rate_limit(ex: Inbound, next: ServerNext) -> ServerFlow:
    """RateLimit: one token from every matching limit; none left: 429 with Retry-After."""
    limiter = ex.rate_limiter
    if limiter is not None:
        refused = limiter.check(ex, ex.clock())
        if refused is not None:
            ex.limited_by, wait = refused
            ex.flags.append(RL)
            return _answered(
                Answer(
                    429,
                    local=True,
                    body=b"local_rate_limited\n",  # Envoy's body
                    headers=(("retry-after", str(max(1, math.ceil(wait)))), ("x-envoy-ratelimited", "true")),
                    grpc_status="RESOURCE_EXHAUSTED",
                )
            )
    return next(ex)


def deadline(ex: Inbound, next: ServerNext) -> ServerFlow:
    """The caller's remaining time (gRPC's deadline, or Envoy's header): bounds the handler's
    own outbound calls; none left, 504 (gRPC: DEADLINE_EXCEEDED) without running it."""
    remaining = parse_timeout_ms(ex.call.header(DEADLINE_HEADER))
    if ex.timeout is not None and (remaining is None or ex.timeout < remaining):
        remaining = ex.timeout  # both: the tighter one (a gRPC deadline and Envoy's header)
    if remaining is not None:
        if remaining <= 0:
            ex.flags.append(UT)
            return _answered(
                Answer(
                    504,
                    local=True,
                    body=b"deadline exceeded before the request was handled\n",
                    grpc_status="DEADLINE_EXCEEDED",
                )
            )
        ex.deadline = ex.started + remaining
    return next(ex)


def handle(ex: Inbound, next: ServerNext) -> ServerFlow:
    """The application itself."""
    status: int = yield Handle()
    return Answer(status)


def default_server_stack() -> Stack[Inbound, Answer]:
    """Outermost first; telemetry wraps it from the adapter, seeing every answer."""
    return Stack(
        [
            ("health", health),  # probes must answer even when everything below would refuse
            ("trace", trace),  # before any refusal: denied requests are traced too
            ("path", path),  # a path that cannot be normalized: 400 before any policy
            ("mtls", mutual_tls),  # STRICT without a verified peer: refused
            ("deadline", deadline),  # before any work: an expired request costs nothing more
            ("authn", authenticate),  # RequestAuthentication (JWT): 401 for a bad token
            ("authz", authorize),  # AuthorizationPolicy (CUSTOM, DENY, ALLOW)
            ("ratelimit", rate_limit),  # after authorization: a denied caller spends no tokens
            ("handle", handle),
        ]
    )
