"""The default client stack: what happens to every outbound request, in order.

Read top to bottom, outermost first; each line says why a filter sits where it does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from ..errors import CertificateUnavailableError
from ..policy.destination_rule import ConsistentHashLB, HTTPCookie
from .attempt import (
    CONNECT_TIMEOUT,
    MIRROR_TIMEOUT,
    ORIGINATED,
    needs_mtls,
    request_ops,
    rewrite_path,
    shadow_authority,
)
from .balancer import hash_key_for
from .call import Call
from .exchange import Attempt, Exchange, Mirror, Outcome, Reply, Send, Sleep, Synthetic
from .flags import DI, FI, NC, NR, UF, UH, UO, URX, UT
from .outlier import Outcome as Health
from .outlier import outcome_for_status
from .retry_policy import Failure, RetryPolicy
from .routing_table import Cluster, Fault, Target
from .snapshot import Endpoint
from .stack import Flow, Next, Stack

__all__ = ["default_client_stack", "retriable"]

ClientFlow = Flow[Reply]
A = TypeVar("A", bound=Attempt)
ClientNext = Next[Exchange, Reply]


def trace(ex: Exchange, next: ClientNext) -> ClientFlow:
    """W3C trace context: the parent (the caller's own header, its current span, or the request
    being served) and the sampling decision; spans only for a sampled request."""
    telemetry = ex.telemetry
    tracing = telemetry.tracing if telemetry is not None else None
    if tracing is not None:
        tracing.client(ex)
    return next(ex)


def route(ex: Exchange, next: ClientNext) -> ClientFlow:
    """VirtualService: the first matching route, then a weighted target; or a redirect."""
    host_routes = ex.table.host_routes(ex.fqdn)
    chosen = ex.table.default_route(ex.fqdn) if host_routes is None else host_routes.match(ex.call)
    if chosen is None:
        ex.flags.append(NR)
        return Reply(
            error=NR,
            message=f"no route of the VirtualService for {ex.fqdn} matches {ex.call.method} {ex.call.path}",
        )
    ex.route = chosen
    if chosen.redirect is not None:
        return Reply(synthetic=_redirect(ex.call, chosen.redirect, chosen.prefixes))
    if chosen.direct_response is not None:
        body = chosen.direct_response.body
        text = body.content() if body is not None else b""  # validated when the policy loaded
        return Reply(synthetic=Synthetic(chosen.direct_response.status, body=text))
    ex.target = chosen.pick(ex.rng)
    return (yield from next(ex))


# Filters with nothing to do for a request hand back the rest of the stack's flow itself
# (a plain function returning ``next(ex)``) instead of wrapping it in a generator of their
# own: every action and every answer would otherwise pass through one more frame.


def fault(ex: Exchange, next: ClientNext) -> ClientFlow:
    """Fault injection: before mirroring and retries, as Envoy's fault filter sits before the router."""
    spec = ex.route.fault if ex.route is not None else None
    if spec is None:
        return next(ex)
    return _fault(ex, next, spec)


def _fault(ex: Exchange, next: ClientNext, spec: Fault) -> ClientFlow:
    if spec.delay is not None and ex.rng.random() < spec.delay_fraction:
        ex.flags.append(DI)
        yield Sleep(spec.delay)
    if (
        spec.abort_status is not None or spec.abort_grpc is not None
    ) and ex.rng.random() < spec.abort_fraction:
        ex.flags.append(FI)
        return Reply(
            synthetic=Synthetic(
                spec.abort_status or 200, body=b"fault filter abort", grpc_status=spec.abort_grpc
            )
        )
    return (yield from next(ex))


def mirror(ex: Exchange, next: ClientNext) -> ClientFlow:
    """Mirroring: fire-and-forget copies; the adapter never waits for them."""
    if ex.route is None or not ex.route.mirrors:
        return next(ex)
    return _mirror(ex, next, ex.route.mirrors)


def _mirror(ex: Exchange, next: ClientNext, mirrors: tuple[tuple[Target, float], ...]) -> ClientFlow:
    for target, share in mirrors:
        if share >= 1.0 or ex.rng.random() < share:
            cluster = ex.table.cluster(target, ex.call.port, ex.call.host)
            state = ex.clusters.get(cluster, ex.table.version)
            endpoint = state.pick(cluster, None) if cluster.endpoints else None
            if endpoint is not None or (not cluster.known and cluster.host == ex.fqdn):
                try:
                    copy = decide(ex, Mirror, endpoint, target, cluster, MIRROR_TIMEOUT, None)
                except CertificateUnavailableError:
                    continue  # a copy is never sent in plaintext either
                yield copy
    return (yield from next(ex))


def timeout(ex: Exchange, next: ClientNext) -> ClientFlow:
    """The route timeout, bounded by the inbound deadline; it covers every retry."""
    limit = ex.route.timeout if ex.route is not None else None
    if limit:
        candidate = ex.started + limit
        if ex.deadline is None or candidate < ex.deadline:
            ex.deadline = candidate
    if ex.deadline is None:
        return next(ex)
    return _timeout(ex, next)


def _timeout(ex: Exchange, next: ClientNext) -> ClientFlow:
    assert ex.deadline is not None
    if ex.clock() >= ex.deadline:
        ex.flags.append(UT)
        return Reply(error=UT, message=f"deadline for {ex.fqdn} passed before the request was sent")
    reply = yield from next(ex)
    outcome = reply.outcome
    if (
        outcome is not None
        and outcome.failure is Failure.TIMEOUT
        and ex.deadline is not None
        and ex.clock() >= ex.deadline - 0.001
    ):
        if UT not in ex.flags:
            ex.flags.append(UT)
        return Reply(
            error=UT, message=f"no answer within the route timeout or deadline ({ex.attempts} attempt(s))"
        )
    return reply


MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is not waited for (the answer is returned)


def retry(ex: Exchange, next: ClientNext) -> ClientFlow:
    """Retries: inside the timeout (which bounds them all), outside the upstream filter, so
    each attempt picks its endpoint afresh and is admitted by the pool limits on its own."""
    assert ex.route is not None
    assert ex.target is not None
    policy = ex.route.retry
    cluster = ex.cluster = ex.table.cluster(ex.target, ex.call.port, ex.call.host)
    state = ex.state = ex.clusters.get(cluster, ex.table.version)
    budget = state.budget
    if budget is not None:
        budget.deposit()
    retries = 0
    holding = False  # a maxRetries slot, held from the back-off through the retried attempt
    try:
        while True:
            reply = yield from next(ex)
            if holding:
                state.release_retry()
                holding = False
            outcome = reply.outcome
            if outcome is None:
                return reply  # UH, UO: local decisions, not retried (as Envoy)
            if not retriable(policy, outcome):
                return reply
            if ex.deadline is not None and ex.clock() >= ex.deadline:
                return reply  # the timeout filter above names it
            # gRPC calls are retried by retryOn alone, as Envoy does (every call is a POST).
            if ex.call.protocol != "grpc" and not policy.may_resend(
                ex.call.method, outcome.failure, ex.call.header("idempotency-key") is not None
            ):
                return reply
            if not ex.replayable and outcome.failure not in (Failure.CONNECT, Failure.REFUSED):
                return reply  # a streamed body is gone once sent; only an unsent one can go again
            if retries >= policy.attempts:
                if policy.attempts:
                    ex.flags.append(URX)
                    ex.count("retry_limit_exceeded", cluster)
                return reply
            wait = outcome.retry_after
            if wait is not None and (
                wait > MAX_RETRY_AFTER or (ex.deadline is not None and ex.clock() + wait >= ex.deadline)
            ):
                return reply  # the server asked for more time than there is: its answer stands
            if not state.admit_retry(cluster):  # maxRetries first: a refused slot must not spend budget
                ex.flags.append(URX)
                ex.count("retry_overflow", cluster)
                return reply
            if budget is not None and not budget.try_withdraw():
                state.release_retry()
                ex.flags.append(URX)
                ex.count("retry_budget_exhausted", cluster)
                return reply
            holding = True
            retries += 1
            ex.count("retries", cluster)
            pause = policy.backoff(retries, ex.rng)
            if outcome.retry_after is not None:  # the server said when (a rate limit): not sooner
                pause = max(pause, outcome.retry_after)
            if ex.deadline is not None:
                pause = min(pause, max(0.0, ex.deadline - ex.clock()))
            if pause > 0:
                yield Sleep(pause)
            if ex.deadline is not None and ex.clock() >= ex.deadline:
                ex.flags.append(UT)  # the route timeout fired during the back-off (as Envoy's)
                return Reply(
                    error=UT,
                    message=f"route timeout passed during retry back-off after {ex.attempts} attempt(s)",
                )
    finally:
        if holding:
            state.release_retry()


def retriable(policy: RetryPolicy, outcome: Outcome) -> bool:
    """Would ``policy`` retry this answer (status, gRPC status or failure)? Adapters ask it
    too: an answer that may be retried is read whole, never streamed to the caller."""
    if outcome.failure is not None:
        return policy.retriable_failure(outcome.failure)
    if outcome.grpc_status is not None and outcome.grpc_status != "OK":
        return policy.retriable_grpc(outcome.grpc_status)
    if outcome.ratelimited and policy.on_ratelimited:
        return True
    return outcome.status is not None and policy.retriable_status(outcome.status)


def upstream(ex: Exchange, next: ClientNext) -> ClientFlow:
    """One attempt: pick a healthy endpoint, take a pool slot, send, and feed outlier detection."""
    state, cluster, target = ex.state, ex.cluster, ex.target
    assert state is not None
    assert cluster is not None
    assert target is not None
    endpoint = None
    if cluster.endpoints:
        lb = cluster.policy.load_balancer
        hash_key = _hash_key(ex, lb.consistent_hash) if lb is not None and lb.consistent_hash else None
        retry = ex.route.retry if ex.route is not None else None
        avoid = ex.tried if hash_key is None and (retry is None or retry.avoid_tried) else ()
        remote = ex.tried if retry is not None and retry.remote_localities else ()
        endpoint = state.pick(cluster, hash_key, avoid, remote)
        if endpoint is None:
            ex.flags.append(UH)
            return Reply(error=UH, message=f"no healthy endpoint for {_name(cluster.host, cluster.subset)}")
    elif cluster.known:
        ex.flags.append(UH)
        return Reply(error=UH, message=f"no endpoints for {_name(cluster.host, cluster.subset)}")
    elif cluster.host != ex.fqdn:
        # Envoy: a route to a cluster that does not exist answers 503 NC. Only the host the
        # caller asked for itself may go on as if there were no mesh (to its own URL).
        ex.flags.append(NC)
        return Reply(
            error=NC,
            message=f"destination {cluster.host} is not a mesh host (no ServiceEntry, workload or rule)",
        )
    if not state.admit(cluster, endpoint):
        ex.flags.append(UO)
        ex.count("pool_overflow", cluster)
        return Reply(error=UO, message=f"connection pool of {_name(cluster.host, cluster.subset)} is full")
    ex.attempts += 1
    ex.endpoint = endpoint
    if endpoint is not None:
        ex.tried.append(endpoint)
    trace = ex.trace
    if trace is not None:  # sampled: a span per attempt, which its server span hangs under
        ex.traceparent = trace.start_attempt(ex.attempts)
    per_try = ex.route.retry.per_try_timeout if ex.route is not None else None
    limit = per_try
    if ex.deadline is not None:
        remaining = max(0.0, ex.deadline - ex.clock())
        limit = remaining if limit is None else min(limit, remaining)
    handed_over = False
    try:
        try:
            send = decide(ex, Send, endpoint, target, cluster, limit, ex.route.retry if ex.route else None)
            ex.mtls = send.mtls
        except CertificateUnavailableError as refused:
            # Nothing leaves the process: a connect failure (UF) for retries, never held
            # against the endpoint by outlier detection.
            outcome = Outcome(failure=Failure.CONNECT, error=refused, local=True)
        else:
            outcome = yield send
        if outcome.streaming:  # the slot is held until the caller closes the body (as Envoy
            outcome.release = functools.partial(state.release, endpoint)  # counts open streams)
            handed_over = True
    finally:
        if not handed_over:
            state.release(endpoint)
    if outcome.failure is not None:
        if outcome.failure is Failure.CONNECT:
            ex.flags.append(UF)
        if not outcome.local and state.record(endpoint, Health.LOCAL_ORIGIN_FAILURE):
            ex.count("outlier_ejections", cluster)
    elif outcome.status is not None and state.record(endpoint, outcome_for_status(outcome.status)):
        ex.count("outlier_ejections", cluster)
    reply = Reply(outcome=outcome)
    if trace is not None:
        trace.end_attempt(ex, reply)
    return reply


def decide(
    ex: Exchange,
    kind: type[A],
    endpoint: Endpoint | None,
    target: Target,
    cluster: Cluster,
    limit: float | None,
    retry: RetryPolicy | None,
) -> A:
    """One attempt (or a mirrored copy) decided whole: raises CertificateUnavailableError
    when it would need mTLS this workload cannot speak now."""
    tls = cluster.policy.tls
    mode = tls.mode if tls is not None else None
    # Per attempt: the common case (plaintext or automatic mTLS, no rewrite, no edits) is a
    # handful of attribute reads; the rules themselves are in attempt.py.
    mtls = (
        needs_mtls(ex.identity, mode, endpoint)
        if endpoint is not None and (mode is not None or endpoint.tls)
        else False
    )
    call, route = ex.call, ex.route
    server_name = None
    originate = tls if mode in ORIGINATED else None
    if originate is not None:  # Istio's auto SNI: the requested host unless the rule names one
        server_name = originate.sni or call.host
    elif endpoint is not None and not mtls and endpoint.protocol == "https":
        server_name = call.host
    path = authority = None
    if route is not None and route.rewrite is not None:
        path = rewrite_path(call.path, call.query, route.rewrite, route.prefixes)
        authority = route.rewrite.authority or None
    if kind is Mirror:
        authority = shadow_authority(authority or call.header("host") or call.authority or call.host)
    connect = CONNECT_TIMEOUT
    state = ex.state if kind is Send else None
    if state is not None:
        connect = state.limits(cluster).connect_timeout or CONNECT_TIMEOUT
    headers = (
        request_ops(route, target) if (route is not None and route.request_ops) or target.request_ops else ()
    )
    if retry is not None and not retry.attempts:
        retry = None
    return kind(
        endpoint, target, limit, connect, mtls, server_name, path, authority, headers, retry, originate
    )


class _Headers(Mapping[str, str]):
    """The call's headers as the Mapping hash_key_for reads (lookups only)."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def __getitem__(self, name: str) -> str:
        value = self._call.header(name.lower())
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: object = None) -> Any:
        value = self._call.header(name.lower())
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _hash_key(ex: Exchange, settings: ConsistentHashLB) -> bytes | None:
    call = ex.call
    cookies: dict[str, str] = {}
    cookie = settings.http_cookie
    if cookie is not None:
        for part in (call.header("cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]  # Envoy: a quoted cookie value hashes without its quotes
            cookies.setdefault(name, value)
        if not cookies.get(cookie.name) and cookie.ttl is not None:
            cookies[cookie.name] = _sticky_cookie(ex, cookie)
    query = call.query_params if settings.http_query_parameter_name is not None else {}
    return hash_key_for(settings, _Headers(call), cookies, query, ex.source)


def _sticky_cookie(ex: Exchange, cookie: HTTPCookie) -> str:
    """Envoy with httpCookie.ttl: a request without the cookie gets one made up (16 hex
    digits), is hashed on it, and its answer sets it (Max-Age = ttl; ttl 0: a session
    cookie; HttpOnly, path and attributes as configured), so the caller's cookie jar keeps
    the next requests on the same endpoint. Made once per request: retries hash alike."""
    if ex.sticky_value is None:
        ex.sticky_value = f"{ex.rng.getrandbits(64):016x}"
        ex.set_cookie = set_cookie_header(cookie, ex.sticky_value)
    return ex.sticky_value


def set_cookie_header(cookie: HTTPCookie, value: str) -> str:
    parts = [f'{cookie.name}="{value}"']  # as Envoy writes it
    if cookie.ttl:
        parts.append(f"Max-Age={int(cookie.ttl)}")
    if cookie.path:
        parts.append(f"Path={cookie.path}")
    parts += [a.name if a.value is None else f"{a.name}={a.value}" for a in cookie.attributes]
    parts.append("HttpOnly")
    return "; ".join(parts)


def _name(host: str, subset: str | None) -> str:
    return host if subset is None else f"{host} subset {subset}"


def _redirect(call: Call, spec: object, prefixes: tuple[tuple[str, bool], ...]) -> Synthetic:
    from ..policy.virtual_service import HTTPRedirect

    assert isinstance(spec, HTTPRedirect)
    # Envoy: the request's authority (port included) and query string are kept unless the
    # redirect replaces them; FROM_PROTOCOL_DEFAULT drops the port, FROM_REQUEST_PORT keeps it.
    scheme = spec.scheme or call.scheme
    request_host, _, request_port = (call.authority or call.host).partition(":")
    if spec.authority:
        host, _, port = spec.authority.partition(":")
    else:
        host, port = request_host, request_port
    if spec.port is not None:
        port = str(spec.port)
    elif spec.derive_port == "FROM_PROTOCOL_DEFAULT":
        port = ""
    elif spec.derive_port == "FROM_REQUEST_PORT":
        port = request_port or (str(call.port) if call.port else "")
    path = spec.uri if spec.uri is not None else call.path
    if spec.prefix_rewrite is not None:
        # Envoy: the prefix the route matched is swapped for the value (no prefix: the path).
        matched = next((p for p, fold in prefixes if (path.lower() if fold else path).startswith(p)), path)
        path = spec.prefix_rewrite + path[len(matched) :]
    if "?" not in path and call.query:
        path = f"{path}?{call.query}"
    netloc = f"{host}:{port}" if port else host
    return Synthetic(spec.redirect_code, headers=(("location", f"{scheme}://{netloc}{path}"),))


def default_client_stack() -> Stack[Exchange, Reply]:
    """Outermost first. Telemetry wraps this from the adapter, seeing every flag set here."""
    return Stack(
        [
            ("trace", trace),  # outermost: every request carries trace context, faults included
            ("route", route),  # decides everything below: timeout, retries, faults, mirrors
            ("fault", fault),  # Istio: faults apply before retries and are not retried
            ("mirror", mirror),  # copies go out once per request, not once per retry
            ("timeout", timeout),  # one deadline for the whole request, retries included
            ("retry", retry),  # re-runs everything below for each attempt
            ("upstream", upstream),  # per attempt: endpoint choice, pool limits, outlier accounting
        ]
    )
