"""Tracing on both stacks: W3C trace context propagated on every request, OpenTelemetry spans
for the sampled ones.

Head sampling is meshlib's own (``sampling`` percent, 1 by default as Istio's): it is decided
once where a trace starts (a request that arrives without a trace context, or an outbound one
made outside any) and then followed downstream through the ``sampled`` flag. A caller without
a verified mesh identity cannot force it (``trust_callers``): its flag is decided afresh,
its trace id kept.

Cost: an unsampled request makes no OpenTelemetry object at all. The server keeps the
incoming ``traceparent`` (or a new unsampled one) in a context variable for the handler's own
outbound calls, which send it on; only a sampled request starts SDK spans: a SERVER span per
inbound request, and per outbound request a CLIENT span with one child per attempt, each
attempt sending its own span id as the parent (so retries are visible, and each server span
hangs under the attempt that reached it). Span names and attributes are built once per
destination and reused.
"""

from __future__ import annotations

import random
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from .._version import __version__
from .tracecontext import (
    TraceParent,
    format_tracestate,
    new_traceparent,
    new_traceparent_header,
    parse_baggage,
    parse_traceparent,
    parse_tracestate,
)

if TYPE_CHECKING:
    from ..core.exchange import Exchange, Reply
    from ..core.server_stack import Inbound

__all__ = ["ClientTrace", "ServerTrace", "Tracing", "current_trace"]

_SAMPLED = 0x01


@dataclass(slots=True)
class ServerTrace:
    """One inbound request's trace: what its handler's outbound calls continue."""

    parent: TraceParent  # what outbound calls made in the handler send on (the server span's id)
    tracestate: str | None = None
    baggage: str | None = None
    span: Any = None  # the SERVER span (sampled and an SDK installed), else None
    context: Any = None  # the OpenTelemetry context with that span, for the handler

    @property
    def trace_id(self) -> str:
        return f"{self.parent.trace_id:032x}"

    def end(self, status: int, flags: str, grpc_status: str | None) -> None:
        span = self.span
        if span is None:
            return
        span.set_attribute("http.status_code", status)
        span.set_attribute("response_flags", flags)
        if grpc_status is not None:
            span.set_attribute("grpc.status_code", grpc_status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


_scope: ContextVar[ServerTrace | None] = ContextVar("meshlib_trace", default=None)


def current_trace() -> ServerTrace | None:
    """The trace of the request being served (None outside a handler)."""
    return _scope.get()


@dataclass(slots=True)
class ClientTrace:
    """One sampled outbound request's spans."""

    tracer: Any
    span: Any
    name: str
    trace_id: int
    flags: int
    attempt: Any = None
    context: Any = field(default=None, repr=False)

    def start_attempt(self, number: int) -> str:
        """A span for this attempt; the traceparent it sends (its own id as the parent)."""
        span = self.attempt = self.tracer.start_span(
            f"{self.name} attempt {number}",
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes={"meshlib.attempt": number},
        )
        span_id = span.get_span_context().span_id
        return f"00-{self.trace_id:032x}-{span_id:016x}-{self.flags:02x}"

    def end_attempt(self, ex: Exchange, reply: Reply) -> None:
        span, self.attempt = self.attempt, None
        if span is None:
            return
        endpoint = ex.endpoint
        if endpoint is not None:
            span.set_attribute("upstream.address", f"{endpoint.address}:{endpoint.port}")
        outcome = reply.outcome
        if outcome is not None and outcome.status is not None:
            span.set_attribute("http.status_code", outcome.status)
            if outcome.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        elif outcome is not None and outcome.failure is not None:
            span.set_attribute("meshlib.failure", outcome.failure.name)
            span.set_status(Status(StatusCode.ERROR, outcome.failure.name))
        elif reply.error is not None:
            span.set_attribute("response_flags", reply.error)
        span.end()

    def end(self, status: int, flags: str, attempts: int) -> None:
        if self.attempt is not None:  # an attempt that never reported (the flow was closed)
            self.attempt.end()
            self.attempt = None
        span = self.span
        span.set_attribute("http.status_code", status)
        span.set_attribute("response_flags", flags)
        span.set_attribute("meshlib.attempts", attempts)
        if status == 0 or status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def _span_context(parent: TraceParent, sampled: bool, tracestate: str | None) -> Any:
    """An OpenTelemetry context whose current span is the remote parent."""
    members = parse_tracestate(tracestate) if tracestate else None
    remote = SpanContext(
        parent.trace_id,
        parent.parent_id,
        is_remote=True,
        trace_flags=TraceFlags(_SAMPLED if sampled else 0),
        trace_state=TraceState(list(members)) if members else None,
    )
    return otel_trace.set_span_in_context(NonRecordingSpan(remote))


class Tracing:
    """A workload's tracing settings and tracer; both stacks ask it at each request."""

    def __init__(
        self,
        service: str,
        namespace: str,
        *,
        sampling: float = 1.0,
        trust_callers: bool = False,
        tracer_provider: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        self.set_sampling(sampling)
        self.trust_callers = trust_callers
        self.report_spans = True
        """False (a Telemetry's disableSpanReporting): sampling decided and propagated, no span."""
        self._provider = tracer_provider
        self._tracer: Any = None
        self._rng = rng or random.Random()
        self._service = service
        self._namespace = namespace
        self._client_names: dict[tuple[str, int | None], tuple[str, dict[str, Any]]] = {}
        self._server_names: dict[int | None, tuple[str, dict[str, Any]]] = {}

    def set_sampling(self, sampling: float) -> None:
        """Percent of new traces sampled (MESH_TRACE_SAMPLING, or a Telemetry resource)."""
        if not 0.0 <= sampling <= 100.0:
            raise ValueError(f"trace sampling {sampling!r} is not a percentage between 0 and 100")
        self.sampling = sampling
        self._ratio = sampling / 100.0

    @property
    def tracer(self) -> Any:
        tracer = self._tracer
        if tracer is None:
            tracer = self._tracer = otel_trace.get_tracer("meshlib", __version__, self._provider)
        return tracer

    def _sample(self) -> bool:
        ratio = self._ratio
        return ratio >= 1.0 or (ratio > 0.0 and self._rng.random() < ratio)

    # --- client side --------------------------------------------------------------------

    def client(self, ex: Exchange) -> None:
        """Decide the outbound request's parent and sampling; set what its attempts send."""
        call = ex.call
        parent: TraceParent | None = None
        tracestate: str | None = None
        parent_context: Any = None
        own = call.header("traceparent")
        if own is not None:  # the application propagates itself: its context is the parent
            parent = parse_traceparent(own)
            if parent is not None:
                tracestate = _normalised_tracestate(call.header("tracestate"))
        else:
            # The current OpenTelemetry context, read once; an empty one (no span of the
            # application's, nothing attached: the usual case) skips the span lookup.
            active = otel_context.get_current()
            current = otel_trace.get_current_span(active).get_span_context() if active else None
            if current is not None and current.is_valid:  # the application's span (or our server span)
                parent = TraceParent(current.trace_id, current.span_id, int(current.trace_flags))
                tracestate = current.trace_state.to_header() or None
                parent_context = active
            else:
                scope = _scope.get()
                if scope is not None:
                    parent, tracestate = scope.parent, scope.tracestate
                if scope is not None and scope.baggage is not None and call.header("baggage") is None:
                    ex.baggage = scope.baggage
        sampled = parent.sampled if parent is not None else self._sample()
        ex.tracestate = tracestate
        if sampled and self.report_spans:
            if parent_context is None and parent is not None:
                parent_context = _span_context(parent, True, tracestate)
            name, attributes = self._client_name(ex.fqdn, call.port)
            span = self.tracer.start_span(
                name, context=parent_context, kind=SpanKind.CLIENT, attributes=attributes
            )
            if span.is_recording():
                span_context = span.get_span_context()
                ex.trace = ClientTrace(
                    self.tracer,
                    span,
                    name,
                    span_context.trace_id,
                    _SAMPLED | (parent.flags & 0x02 if parent is not None else 0),
                    context=otel_trace.set_span_in_context(span),
                )
                if span_context.trace_state:
                    ex.tracestate = span_context.trace_state.to_header()
                return
        # Not recorded here: the parent goes on as it is (or a new root, sampled or not).
        ex.traceparent = parent.header() if parent is not None else new_traceparent_header(self._rng, sampled)

    def _client_name(self, fqdn: str, port: int | None) -> tuple[str, dict[str, Any]]:
        found = self._client_names.get((fqdn, port))
        if found is None:
            name = f"{fqdn}:{port}/*" if port else f"{fqdn}/*"  # Istio's operation name
            attributes: dict[str, Any] = {
                "component": "proxy",
                "upstream_cluster": f"outbound|{port or ''}||{fqdn}",
                "istio.canonical_service": self._service,
                "istio.namespace": self._namespace,
            }
            found = self._client_names[(fqdn, port)] = (name, attributes)
            if len(self._client_names) > 10_000:  # bounded: hosts come from callers
                self._client_names.clear()
        return found

    # --- server side --------------------------------------------------------------------

    def server(self, ex: Inbound) -> ServerTrace:
        """The inbound request's trace: continued from a trusted caller, or decided here."""
        call = ex.call
        incoming = parse_traceparent(call.header("traceparent"))
        tracestate = _normalised_tracestate(call.header("tracestate")) if incoming is not None else None
        raw_baggage = call.header("baggage")
        baggage = parse_baggage(raw_baggage) if raw_baggage is not None else None
        if incoming is not None and (ex.peer is not None or self.trust_callers):
            sampled = incoming.sampled
        else:
            sampled = self._sample()
        if sampled and self.report_spans:
            context = _span_context(incoming, True, tracestate) if incoming is not None else None
            name, attributes = self._server_name(call.port)
            span = self.tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
            if span.is_recording():
                span_context = span.get_span_context()
                flags = _SAMPLED | (incoming.flags & 0x02 if incoming is not None else 0)
                peer = ex.peer
                if peer is not None:
                    span.set_attribute("peer.principal", peer.spiffe_id)
                return ServerTrace(
                    TraceParent(span_context.trace_id, span_context.span_id, flags),
                    tracestate,
                    baggage,
                    span,
                    otel_trace.set_span_in_context(span),
                )
        if incoming is None:
            return ServerTrace(new_traceparent(self._rng, sampled), None, baggage)
        if incoming.sampled != sampled:
            incoming = TraceParent(incoming.trace_id, incoming.parent_id, incoming.flags ^ _SAMPLED)
        return ServerTrace(incoming, tracestate, baggage)

    def _server_name(self, port: int | None) -> tuple[str, dict[str, Any]]:
        found = self._server_names.get(port)
        if found is None:
            fqdn = f"{self._service}.{self._namespace}.svc.cluster.local"
            name = f"{fqdn}:{port}/*" if port else f"{fqdn}/*"
            attributes: dict[str, Any] = {
                "component": "proxy",
                "upstream_cluster": f"inbound|{port or ''}||",
                "istio.canonical_service": self._service,
                "istio.namespace": self._namespace,
            }
            found = self._server_names[port] = (name, attributes)
        return found


def _normalised_tracestate(value: str | None) -> str | None:
    if not value:
        return None
    members = parse_tracestate(value)
    return format_tracestate(members) if members else None


def enter(trace: ServerTrace | None) -> tuple[Any, Any]:
    """Make ``trace`` the handler's (its OpenTelemetry context too, when it has a span)."""
    token = _scope.set(trace)
    attached = otel_context.attach(trace.context) if trace is not None and trace.context is not None else None
    return token, attached


def leave(tokens: tuple[Any, Any]) -> None:
    token, attached = tokens
    if attached is not None:
        otel_context.detach(attached)
    _scope.reset(token)
