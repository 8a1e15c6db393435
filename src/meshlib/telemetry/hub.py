"""Where every request ends, both stacks: counted (Istio's labels), its span ended, logged."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..core.flags import flags_label
from ..core.grpc_status import grpc_status_for_http
from ..core.metrics import RequestMetrics
from .access_log import AccessLog
from .labels import LabelSets
from .tracing import Tracing

if TYPE_CHECKING:
    from ..core.call import Call
    from ..core.exchange import Exchange, Reply
    from ..core.server_stack import Inbound

__all__ = ["GRPC_CODES", "Telemetry"]

# gRPC status names as the numbers Istio's grpc_response_status label carries.
GRPC_CODES = {
    name: str(number)
    for number, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}


def _content_length(call: Call) -> int:
    value = call.header("content-length")
    return int(value) if value is not None and value.isdigit() else 0


class Telemetry:
    """A workload's metrics, tracing and access log."""

    def __init__(
        self,
        service: str,
        namespace: str,
        labels: Mapping[str, str],
        identity: Callable[[], str | None],
        *,
        metrics: RequestMetrics | None = None,
        tracing: Tracing | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.metrics = metrics or RequestMetrics()
        self.tracing = tracing
        self.access_log = access_log
        self.labels = LabelSets(service, namespace, labels, identity)

    def outbound_done(self, ex: Exchange, reply: Reply | None, code: int, duration_ms: float) -> None:
        grpc = ""
        if ex.call.protocol == "grpc" and reply is not None:
            name = reply.synthetic.grpc_status if reply.synthetic is not None else None
            if name is None and reply.outcome is not None:
                name = reply.outcome.grpc_status
            if name is None and code:
                name = grpc_status_for_http(code)
            grpc = GRPC_CODES.get(name, "") if name else ""
        flags = flags_label(ex.flags)
        sent = _content_length(ex.call)
        received = reply.outcome.body_size if reply is not None and reply.outcome is not None else 0
        self.metrics.record(
            "outbound", ex.fqdn, code, flags, duration_ms, self.labels.outbound(ex), grpc, sent, received
        )
        trace = ex.trace
        if trace is not None:
            ex.trace = None
            trace.end(code, flags, ex.attempts)
        log = self.access_log
        if log is not None:
            log.outbound(ex, code, grpc, flags, duration_ms, sent, received)

    def inbound_done(self, ex: Inbound, fqdn: str, status: int, duration_ms: float) -> None:
        grpc = ""
        name: str | None = None
        if ex.call.protocol == "grpc":
            name = ex.grpc_status or grpc_status_for_http(status)
            grpc = GRPC_CODES.get(name, "")
        flags = flags_label(ex.flags)
        received = _content_length(ex.call)
        self.metrics.record(
            "inbound",
            fqdn,
            status,
            flags,
            duration_ms,
            self.labels.inbound(fqdn, ex.peer, ex.call.protocol),
            grpc,
            received,
            ex.response_bytes,
        )
        trace = ex.trace
        if trace is not None:
            trace.end(status, flags, name)
        log = self.access_log
        if log is not None:
            log.inbound(ex, fqdn, status, grpc, flags, duration_ms, received)
