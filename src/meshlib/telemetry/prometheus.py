"""Prometheus exposition of a workload's metrics, with Istio's names (prometheus_client).

A collector reads the in-process series when scraped; the request path never touches
prometheus_client. Served on an opt-in port of its own (``MESH_METRICS_PORT``) or on the
serving ports under ``/.well-known/meshlib/metrics`` (``MESH_METRICS_PATH``), there only to
scrapers without a mesh identity (as Istio's merged metrics port) and to the mesh principals
the workload names (``Mesh.metrics_principals``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..core.metrics import BUCKETS_MS, BYTES_BUCKETS, SERIES_LABELS, RequestMetrics, series_label_values

__all__ = ["CONTENT_TYPE_LATEST", "MeshCollector", "registry_for", "scrape", "seconds_until", "serve_metrics"]


def _buckets(
    bounds: tuple[float, ...], counts: list[int], total: float
) -> tuple[list[tuple[str, float]], float]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        out.append((_bound(bound), running))
    running += counts[-1]
    out.append(("+Inf", running))
    return out, total


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class MeshCollector:
    """Istio's standard metrics and the mesh's own, from a workload's RequestMetrics."""

    def __init__(self, metrics: RequestMetrics, gauges: Callable[[], dict[str, float]] | None = None) -> None:
        self._metrics = metrics
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("istio_requests", "Requests, by Istio's labels", labels=SERIES_LABELS)
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds", "Request duration (ms)", labels=SERIES_LABELS
        )
        request_bytes = HistogramMetricFamily(
            "istio_request_bytes", "Request body sizes", labels=SERIES_LABELS
        )
        response_bytes = HistogramMetricFamily(
            "istio_response_bytes", "Response body sizes", labels=SERIES_LABELS
        )
        for (_direction, service, code, flags, labels, grpc), series in self._metrics.series():
            values = series_label_values(labels, service, code, grpc, flags)
            requests.add_metric(values, series.count)
            buckets, total = _buckets(BUCKETS_MS, series.buckets, series.sum_ms)
            duration.add_metric(values, buckets, total)
            buckets, total = _buckets(BYTES_BUCKETS, series.request_buckets, series.request_bytes)
            request_bytes.add_metric(values, buckets, total)
            buckets, total = _buckets(BYTES_BUCKETS, series.response_buckets, series.response_bytes)
            response_bytes.add_metric(values, buckets, total)
        yield requests
        yield duration
        yield request_bytes
        yield response_bytes
        own = CounterMetricFamily(
            "meshlib_events", "Mesh events, by kind and subject", labels=("kind", "subject")
        )
        for (kind, subject), count in self._metrics.counters().items():
            own.add_metric([kind, subject], count)
        yield own
        denials = CounterMetricFamily(
            "meshlib_authorization_denials", "Requests denied by authorization, by policy", labels=("policy",)
        )
        for policy, count in self._metrics.denials().items():
            denials.add_metric([policy], count)
        yield denials
        limited = CounterMetricFamily(
            "meshlib_rate_limited", "Requests refused by a RateLimit, by policy", labels=("policy",)
        )
        for policy, count in self._metrics.rate_limited().items():
            limited.add_metric([policy], count)
        yield limited
        if self._gauges is not None:
            for name, value in self._gauges().items():
                yield GaugeMetricFamily(f"meshlib_{name}", name.replace("_", " "), value=value)


def registry_for(metrics: RequestMetrics, gauges: Callable[[], dict[str, float]] | None = None) -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(metrics, gauges))
    return registry


def scrape(registry: Any) -> bytes:
    """The exposition text of ``registry`` now."""
    return bytes(generate_latest(registry))


def seconds_until(when: dt.datetime | None) -> float:
    """For expiry gauges: seconds from now until ``when`` (negative once past; -1 when unknown)."""
    if when is None:
        return -1.0
    return (when - dt.datetime.now(dt.UTC)).total_seconds()


def serve_metrics(registry: Any, address: str, port: int) -> Any:
    """prometheus_client's own HTTP server for ``registry`` on ``address:port`` (a thread);
    the server, for ``shutdown()`` and ``server_close()``. Port 0 picks a free port
    (``server.server_port``)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
