"""The service graph on the config service: each workload's latest edge report, merged into
one row per edge for ``meshctl top`` (``GET /v1/edges``).

A row's rate, errors and latency are those of the latest window of every workload that
reported the edge; its totals count every request reported since the workload's first
report. Kept in memory only: it is a live view, rebuilt within one report interval after a
restart. A workload's reports are dropped when it deregisters or once its latest is older
than three of its windows (it stopped reporting, or its traffic stopped).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.metrics import BUCKETS_MS, quantile
from ..protocol import Edge, EdgeReport

__all__ = ["EdgeBoard"]

MIN_STALE_AFTER = 10.0  # seconds: a report stays on the board at least this long


RowKey = tuple[str, str, str, str, str, str]


def _key(edge: Edge) -> RowKey:
    return (
        edge.source,
        edge.source_namespace,
        edge.destination,
        edge.destination_workload,
        edge.destination_version,
        edge.protocol,
    )


@dataclass
class _Workload:
    at: float
    report: EdgeReport
    totals: dict[RowKey, tuple[int, int]]  # requests, errors since its first report


@dataclass
class _Row:
    rate: float = 0.0
    requests: int = 0
    errors: int = 0
    total_requests: int = 0
    total_errors: int = 0
    newest: float = 0.0
    reporters: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))


class EdgeBoard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._workloads: dict[str, _Workload] = {}

    def put(self, workload: str, report: EdgeReport) -> None:
        known = self._workloads.get(workload)
        totals = dict(known.totals) if known is not None else {}
        for edge in report.edges:
            requests, errors = totals.get(_key(edge), (0, 0))
            totals[_key(edge)] = (requests + edge.requests, errors + edge.errors)
        self._workloads[workload] = _Workload(self._clock(), report, totals)

    def drop(self, workload: str) -> None:
        self._workloads.pop(workload, None)

    def _fresh(self, now: float) -> list[_Workload]:
        stale = [
            name
            for name, w in self._workloads.items()
            if now - w.at > max(3 * w.report.window, MIN_STALE_AFTER)
        ]
        for name in stale:
            del self._workloads[name]
        return list(self._workloads.values())

    def edges(self) -> list[dict[str, Any]]:
        """One row per edge (caller workload → destination service and version), over every
        replica that reported it: requests per second, error ratio, p50 and p99 (ms)."""
        now = self._clock()
        rows: dict[RowKey, _Row] = {}
        for workload in self._fresh(now):
            for key, (requests, errors) in workload.totals.items():
                row = rows.setdefault(key, _Row())
                row.total_requests += requests
                row.total_errors += errors
                row.newest = max(row.newest, workload.at)
                row.reporters += 1
            window = workload.report.window
            for edge in workload.report.edges:
                row = rows[_key(edge)]
                row.rate += edge.requests / window
                row.requests += edge.requests
                row.errors += edge.errors
                for index, count in enumerate(edge.buckets):
                    row.buckets[index] += count
        out = []
        for (source, source_ns, destination, dest_workload, version, protocol), row in rows.items():
            p50 = quantile(row.buckets, 0.5)
            p99 = quantile(row.buckets, 0.99)
            out.append(
                {
                    "source": source,
                    "sourceNamespace": source_ns,
                    "destination": destination,
                    "destinationWorkload": dest_workload,
                    "destinationVersion": version,
                    "protocol": protocol,
                    "rps": round(row.rate, 3),
                    "requests": row.requests,
                    "errors": row.errors,
                    "errorRate": round(row.errors / row.requests, 4) if row.requests else 0.0,
                    "totalRequests": row.total_requests,
                    "totalErrors": row.total_errors,
                    "p50Ms": None if p50 is None else round(p50, 3),
                    "p99Ms": None if p99 is None else round(p99, 3),
                    "reporters": row.reporters,
                    "ageSeconds": round(now - row.newest, 1),
                }
            )
        out.sort(key=lambda r: (r["sourceNamespace"], r["source"], r["destination"], r["destinationVersion"]))
        return out
