"""Request metrics with Istio's names, kept as plain counters (cheap on the request path).

``istio_requests_total`` and ``istio_request_duration_milliseconds`` by destination
service, response code and response flags. An OpenTelemetry exporter reads these;
recording one request costs a dictionary update and a bisect.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

__all__ = ["BUCKETS_MS", "RequestMetrics"]

BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)

Key = tuple[str, str, int, str]  # (direction, destination service, response code, flags)


@dataclass
class _Series:
    count: int = 0
    sum_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))


class RequestMetrics:
    def __init__(self) -> None:
        self._series: dict[Key, _Series] = {}
        self._denials: dict[str, int] = {}
        self._limited: dict[str, int] = {}
        self._lock = threading.Lock()

    def record_denial(self, policy: str) -> None:
        """An authorization denial, by the deciding policy (``ns/name``; ``none``: no ALLOW matched)."""
        with self._lock:
            self._denials[policy] = self._denials.get(policy, 0) + 1

    def record_rate_limited(self, policy: str) -> None:
        """A request refused by a RateLimit (``ns/name``)."""
        with self._lock:
            self._limited[policy] = self._limited.get(policy, 0) + 1

    def rate_limited(self) -> dict[str, int]:
        """Requests refused by rate limits so far, by RateLimit."""
        with self._lock:
            return dict(self._limited)

    def denials(self) -> dict[str, int]:
        """Authorization denials so far, by deciding policy."""
        with self._lock:
            return dict(self._denials)

    def record(self, direction: str, service: str, code: int, flags: str, duration_ms: float) -> None:
        key = (direction, service, code, flags)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            series.count += 1
            series.sum_ms += duration_ms
            series.buckets[bisect.bisect_left(BUCKETS_MS, duration_ms)] += 1

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
                for (d, svc, c, f), s in self._series.items()
                if d == direction
                and (service is None or svc == service)
                and (code is None or c == code)
                and (flags is None or f == flags)
            )

    def snapshot(self) -> dict[Key, tuple[int, float, tuple[int, ...]]]:
        with self._lock:
            return {k: (s.count, s.sum_ms, tuple(s.buckets)) for k, s in self._series.items()}
