"""Request metrics with Istio's names and labels, aggregated in process (cheap on the request path).

Every request through either stack lands in one series: its Istio label set (built once per
source/destination pair and cached by ``telemetry.labels``), its response code, gRPC status
and response flags. Recording one request costs a dictionary update and three bisects. The
exporters read the series when they are scraped: ``telemetry.prometheus`` (Istio's names:
``istio_requests_total``, ``istio_request_duration_milliseconds``, ``istio_request_bytes``,
``istio_response_bytes``) and the OpenTelemetry bridge (observable instruments).

Why not OpenTelemetry's synchronous instruments on the hot path: with the SDK, one
``Counter.add`` or ``Histogram.record`` with Istio's ~20 attributes measured 20 µs here
(the SDK freezes the attribute dict on every call); four of them per request would be the
whole cost budget several times over.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "BUCKETS_MS",
    "BYTES_BUCKETS",
    "SERIES_LABELS",
    "IstioLabels",
    "RequestMetrics",
    "Series",
    "quantile",
    "series_label_values",
]

# Istio's default buckets (ms) for istio_request_duration_milliseconds.
BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip
# The same bounds as floats, for bisect: a float duration against int bounds compares
# through the slow mixed-type path at every step.
_BOUNDS_MS = tuple(float(bound) for bound in BUCKETS_MS)
# Istio's buckets for istio_request_bytes / istio_response_bytes (powers of ten).
BYTES_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)


def quantile(buckets: Sequence[int], q: float, bounds: Sequence[float] = BUCKETS_MS) -> float | None:
    """The ``q`` quantile of a histogram (counts per bucket, the last one above every bound),
    interpolated within its bucket as Prometheus' ``histogram_quantile`` does; one in the
    open top bucket is the highest bound. None for an empty histogram."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    running = 0
    for index, count in enumerate(buckets):
        if count and running + count >= rank:
            if index >= len(bounds):
                return float(bounds[-1])
            lower = float(bounds[index - 1]) if index else 0.0
            return lower + (float(bounds[index]) - lower) * (rank - running) / count
        running += count
    return float(bounds[-1])


class IstioLabels(NamedTuple):
    """Istio's standard labels but the per-answer ones (code, gRPC status, flags)."""

    reporter: str  # "source" (client side) or "destination" (server side)
    source_workload: str
    source_workload_namespace: str
    source_principal: str
    source_app: str
    source_version: str
    source_canonical_service: str
    source_canonical_revision: str
    destination_workload: str
    destination_workload_namespace: str
    destination_principal: str
    destination_app: str
    destination_version: str
    destination_service: str
    destination_service_name: str
    destination_service_namespace: str
    destination_canonical_service: str
    destination_canonical_revision: str
    request_protocol: str
    connection_security_policy: str


# Every label of a request series, as exported: Istio's and the per-answer ones.
SERIES_LABELS = (*IstioLabels._fields, "response_code", "grpc_response_status", "response_flags")


def series_label_values(
    labels: IstioLabels | None, service: str, code: int, grpc: str, flags: str
) -> list[str]:
    """The values of SERIES_LABELS for one series."""
    if labels is None:  # recorded without a label set (a stack driven outside a Mesh)
        base = ["unknown"] * len(IstioLabels._fields)
        base[IstioLabels._fields.index("destination_service")] = service
    else:
        base = list(labels)
    return [*base, str(code), grpc, flags]


@dataclass
class Series:
    count: int = 0
    sum_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))
    request_bytes: float = 0.0
    request_buckets: list[int] = field(default_factory=lambda: [0] * (len(BYTES_BUCKETS) + 1))
    response_bytes: float = 0.0
    response_buckets: list[int] = field(default_factory=lambda: [0] * (len(BYTES_BUCKETS) + 1))


# (direction, destination service, response code, flags, labels, gRPC status)
Key = tuple[str, str, int, str, "IstioLabels | None", str]


class RequestMetrics:
    def __init__(self) -> None:
        self._series: dict[Key, Series] = {}
        self._denials: dict[str, int] = {}
        self._limited: dict[str, int] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def record_denial(self, policy: str) -> None:
        """An authorization denial, by the deciding policy (``ns/name``; ``none``: no ALLOW matched)."""
        with self._lock:
            self._denials[policy] = self._denials.get(policy, 0) + 1

    def record_rate_limited(self, policy: str) -> None:
        """A request refused by a RateLimit (``ns/name``)."""
        with self._lock:
            self._limited[policy] = self._limited.get(policy, 0) + 1

    def count(self, name: str, label: str) -> None:
        """One event of the mesh's own counters (``retries``, ``retry_budget_exhausted``,
        ``pool_overflow``, ...), by destination service or policy."""
        key = (name, label)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1

    def counters(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counters)

    def rate_limited(self) -> dict[str, int]:
        """Requests refused by rate limits so far, by RateLimit."""
        with self._lock:
            return dict(self._limited)

    def denials(self) -> dict[str, int]:
        """Authorization denials so far, by deciding policy."""
        with self._lock:
            return dict(self._denials)

    def record(
        self,
        direction: str,
        service: str,
        code: int,
        flags: str,
        duration_ms: float,
        labels: IstioLabels | None = None,
        grpc_status: str = "",
        request_bytes: int = 0,
        response_bytes: int = 0,
    ) -> None:
        key = (direction, service, code, flags, labels, grpc_status)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series()
            series.count += 1
            series.sum_ms += duration_ms
            series.buckets[bisect.bisect_left(_BOUNDS_MS, duration_ms)] += 1
            series.request_bytes += request_bytes
            series.request_buckets[bisect.bisect_left(BYTES_BUCKETS, request_bytes)] += 1
            series.response_bytes += response_bytes
            series.response_buckets[bisect.bisect_left(BYTES_BUCKETS, response_bytes)] += 1

    def requests_total(
        self,
        service: str | None = None,
        code: int | None = None,
        flags: str | None = None,
        direction: str = "outbound",
    ) -> int:
        with self._lock:
            return sum(
                s.count
                for (d, svc, c, f, _, _), s in self._series.items()
                if d == direction
                and (service is None or svc == service)
                and (code is None or c == code)
                and (flags is None or f == flags)
            )

    def snapshot(self) -> dict[tuple[str, str, int, str], tuple[int, float, tuple[int, ...]]]:
        """Counts, duration sums and buckets by (direction, service, code, flags), over labels."""
        merged: dict[tuple[str, str, int, str], tuple[int, float, list[int]]] = {}
        with self._lock:
            for (d, svc, c, f, _, _), s in self._series.items():
                count, total, buckets = merged.get((d, svc, c, f), (0, 0.0, [0] * len(s.buckets)))
                merged[(d, svc, c, f)] = (
                    count + s.count,
                    total + s.sum_ms,
                    [a + b for a, b in zip(buckets, s.buckets, strict=True)],
                )
        return {k: (count, total, tuple(b)) for k, (count, total, b) in merged.items()}

    def series(self) -> Iterator[tuple[Key, Series]]:
        """Every series, copied under the lock (for exporters)."""
        with self._lock:
            items = [
                (
                    k,
                    Series(
                        s.count,
                        s.sum_ms,
                        list(s.buckets),
                        s.request_bytes,
                        list(s.request_buckets),
                        s.response_bytes,
                        list(s.response_buckets),
                    ),
                )
                for k, s in self._series.items()
            ]
        return iter(items)
