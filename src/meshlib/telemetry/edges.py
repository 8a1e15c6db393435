"""The service graph from a workload's side: what it sent (and what callers outside the mesh
sent it) since its last report, per edge, for ``meshctl top``.

Read from the request series every report interval, never on the request path. An edge is
who called whom: this workload calling a destination service (reporter ``source``), or a
caller without a mesh identity calling this workload (reporter ``destination``; a mesh
caller reports that edge itself). Counts are deltas against the totals of the last report
that reached the config service, so a report that fails is folded into the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.metrics import BUCKETS_MS, RequestMetrics
from ..protocol import MAX_EDGES, Edge, EdgeReport
from .labels import UNKNOWN

__all__ = ["EdgeTracker"]

# (reporter, source, source namespace, source version, destination service,
#  destination workload, destination version, protocol)
EdgeKey = tuple[str, str, str, str, str, str, str, str]
Totals = tuple[int, int, tuple[int, ...]]  # requests, errors, duration buckets


def _failed(code: int, grpc: str) -> bool:
    return code == 0 or code >= 500 or grpc not in ("", "0")


class EdgeTracker:
    def __init__(self, metrics: RequestMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._reported: dict[EdgeKey, Totals] = {}
        self._since = clock()
        self._last_empty = True

    def _totals(self) -> dict[EdgeKey, Totals]:
        totals: dict[EdgeKey, tuple[int, int, list[int]]] = {}
        for (direction, service, code, _flags, labels, grpc), series in self._metrics.series():
            if labels is None:
                continue
            if direction == "outbound":
                reporter = "source"
            elif labels.source_principal == UNKNOWN:
                reporter = "destination"
            else:
                continue  # a mesh caller reports this edge from its side
            key = (
                reporter,
                labels.source_workload,
                labels.source_workload_namespace,
                labels.source_version,
                service,
                labels.destination_workload,
                labels.destination_version,
                labels.request_protocol,
            )
            requests, errors, buckets = totals.get(key, (0, 0, [0] * (len(BUCKETS_MS) + 1)))
            for index, count in enumerate(series.buckets):
                buckets[index] += count
            failed = series.count if _failed(code, grpc) else 0
            totals[key] = (requests + series.count, errors + failed, buckets)
        return {k: (r, e, tuple(b)) for k, (r, e, b) in totals.items()}

    def report(self) -> tuple[EdgeReport, Callable[[], None]] | None:
        """The edges since the last committed report and a ``commit`` to call once it was
        delivered; None when there is nothing new to say (idle since an empty report)."""
        now = self._clock()
        totals = self._totals()
        edges: list[Edge] = []
        for key, (requests, errors, buckets) in totals.items():
            before = self._reported.get(key)
            if before is not None:
                requests -= before[0]
                errors -= before[1]
                buckets = tuple(a - b for a, b in zip(buckets, before[2], strict=True))
            if requests <= 0:
                continue
            reporter, source, source_ns, source_version, destination, workload, version, protocol = key
            edges.append(
                Edge(
                    reporter=reporter,
                    source=source,
                    source_namespace=source_ns,
                    source_version=source_version,
                    destination=destination,
                    destination_workload=workload,
                    destination_version=version,
                    protocol=protocol,
                    requests=requests,
                    errors=errors,
                    buckets=list(buckets),
                )
            )
        if not edges and self._last_empty:
            return None
        edges.sort(key=lambda e: e.requests, reverse=True)
        report = EdgeReport(window=max(now - self._since, 1e-3), edges=edges[:MAX_EDGES])

        def commit() -> None:
            self._reported = totals
            self._since = now
            self._last_empty = not edges

        return report, commit
