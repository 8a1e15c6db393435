"""Where every request ends, both stacks: counted (Istio's labels), its span ended, logged."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..core.flags import flags_label
from ..core.grpc_status import grpc_status_for_http
from ..core.metrics import RequestMetrics
from ..core.telemetry_policy import NO_TELEMETRY_POLICY, SideLog, TelemetryPolicy, code_passes
from ..policy.telemetry import CodeFilter
from .access_log import AccessLog, open_access_log
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
        self.labels = LabelSets(service, namespace, labels, identity)
        self._sampling = tracing.sampling if tracing is not None else 1.0  # the MESH_* default
        self._base_log = access_log
        self._policy_log: AccessLog | None = None  # stdout, when only a policy turns logging on
        self._policy = NO_TELEMETRY_POLICY
        self.client_log: AccessLog | None = access_log
        self.server_log: AccessLog | None = access_log
        self._client_codes: CodeFilter | None = None
        self._server_codes: CodeFilter | None = None

    @property
    def access_log(self) -> AccessLog | None:
        """The workload's own access log (MESH_ACCESS_LOG); a Telemetry resource may turn a
        side off, narrow it to some response codes, or turn it on (to stdout when unset)."""
        return self._base_log

    @access_log.setter
    def access_log(self, log: AccessLog | None) -> None:
        self._base_log = log
        self.apply(self._policy)

    def _side(self, side: SideLog | None) -> tuple[AccessLog | None, CodeFilter | None]:
        if side is None:
            return self._base_log, None
        if not side.enabled:
            return None, None
        log = self._base_log
        if log is None:
            if self._policy_log is None:
                self._policy_log = open_access_log("stdout")
            log = self._policy_log
        return log, side.codes

    def apply(self, policy: TelemetryPolicy) -> None:
        """Follow what the Telemetry resources say for this workload (at each snapshot)."""
        self._policy = policy
        self.client_log, self._client_codes = self._side(policy.client_log)
        self.server_log, self._server_codes = self._side(policy.server_log)
        tracing = self.tracing
        if tracing is not None:
            tracing.set_sampling(policy.sampling if policy.sampling is not None else self._sampling)
            tracing.report_spans = policy.report_spans is not False

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
        log = self.client_log
        if log is not None:
            codes = self._client_codes
            if codes is None or code_passes(codes, code):
                log.outbound(ex, code, grpc, flags, duration_ms, sent, received)

    def inbound_done(self, ex: Inbound, fqdn: str, status: int, duration_ms: float) -> None:
        grpc = ""
        name: str | None = None
        if ex.call.protocol == "grpc":
            name = ex.grpc_status or grpc_status_for_http(status)
            grpc = GRPC_CODES.get(name, "")
        flags = flags_label(ex.flags)
        received = ex.request_bytes if ex.request_bytes is not None else _content_length(ex.call)
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
        log = self.server_log
        if log is not None:
            codes = self._server_codes
            if codes is None or code_passes(codes, status):
                log.inbound(ex, fqdn, status, grpc, flags, duration_ms, received)
