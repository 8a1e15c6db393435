"""The workload's metrics through the OpenTelemetry metrics API, for applications that export
with an OpenTelemetry SDK (OTLP, ...) rather than scrape Prometheus.

Asynchronous instruments only: their callbacks read the in-process series when the SDK
collects, so the request path never touches OpenTelemetry. The names and attributes are
those of the Prometheus endpoint (an OpenTelemetry Prometheus exporter adds ``_total`` to
``istio_requests``, as Istio's). Durations and sizes stay Prometheus-only: the API has no
asynchronous histogram, and an SDK ``Histogram.record`` with Istio's 23 attributes costs
about 24 µs per call on these machines (measured) — more than the whole server stack.

Instruments are made once per MeterProvider (the SDK keeps the first callbacks of a name);
each live Mesh is a source they read. The mesh's own instruments carry ``workload`` and
``workload_namespace`` so that two meshes in one process stay apart.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from .._version import __version__
from ..core.metrics import SERIES_LABELS, RequestMetrics, series_label_values

__all__ = ["MetricSource", "observe", "unobserve"]


class MetricSource(Protocol):
    @property
    def metrics(self) -> RequestMetrics: ...

    def metric_gauges(self) -> dict[str, float]:
        """``config_version``, ``config_age_seconds``, ``certificate_expiry_seconds``, ..."""
        ...

    def metric_owner(self) -> tuple[str, str]:
        """(workload, namespace)."""
        ...


class _Bridge:
    def __init__(self, provider: Any) -> None:
        self.sources: weakref.WeakSet[Any] = weakref.WeakSet()
        meter = provider.get_meter("meshlib", __version__)
        meter.create_observable_counter(
            "istio_requests", [self._requests], unit="{request}", description="Requests, by Istio's labels"
        )
        for name, read, description in (
            ("meshlib_events", self._events, "Mesh events, by kind and subject"),
            ("meshlib_authorization_denials", self._denials, "Requests denied by authorization, by policy"),
            ("meshlib_rate_limited", self._limited, "Requests refused by a RateLimit, by policy"),
        ):
            meter.create_observable_counter(name, [read], description=description)
        for gauge, unit in (
            ("config_version", ""),
            ("config_age_seconds", "s"),
            ("certificate_expiry_seconds", "s"),
        ):
            meter.create_observable_gauge(
                f"meshlib_{gauge}", [self._gauge(gauge)], unit=unit, description=gauge.replace("_", " ")
            )

    def _each(self) -> list[Any]:
        return list(self.sources)

    def _requests(self, _options: CallbackOptions) -> Iterator[Observation]:
        for source in self._each():
            for (_direction, service, code, flags, labels, grpc), series in source.metrics.series():
                values = series_label_values(labels, service, code, grpc, flags)
                yield Observation(series.count, dict(zip(SERIES_LABELS, values, strict=True)))

    def _owned(
        self, read: Callable[[RequestMetrics], Iterable[tuple[dict[str, str], int]]]
    ) -> Iterator[Observation]:
        for source in self._each():
            workload, namespace = source.metric_owner()
            for attributes, value in read(source.metrics):
                yield Observation(
                    value, {**attributes, "workload": workload, "workload_namespace": namespace}
                )

    def _events(self, _options: CallbackOptions) -> Iterator[Observation]:
        return self._owned(
            lambda m: (({"kind": kind, "subject": subject}, n) for (kind, subject), n in m.counters().items())
        )

    def _denials(self, _options: CallbackOptions) -> Iterator[Observation]:
        return self._owned(lambda m: (({"policy": policy}, n) for policy, n in m.denials().items()))

    def _limited(self, _options: CallbackOptions) -> Iterator[Observation]:
        return self._owned(lambda m: (({"policy": policy}, n) for policy, n in m.rate_limited().items()))

    def _gauge(self, name: str) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def read(_options: CallbackOptions) -> Iterator[Observation]:
            for source in self._each():
                value = source.metric_gauges().get(name)
                if value is not None:
                    workload, namespace = source.metric_owner()
                    yield Observation(value, {"workload": workload, "workload_namespace": namespace})

        return read


_lock = threading.Lock()
_bridges: dict[int, tuple[Any, _Bridge]] = {}  # id(provider) → (provider, its instruments)


def observe(source: MetricSource, provider: Any = None) -> None:
    """Report ``source``'s metrics through ``provider`` (default: the global MeterProvider,
    which may be set later: the API's proxy instruments then bind to it)."""
    if provider is None:
        from opentelemetry import metrics

        provider = metrics.get_meter_provider()
    with _lock:
        entry = _bridges.get(id(provider))
        if entry is None or entry[0] is not provider:
            entry = _bridges[id(provider)] = (provider, _Bridge(provider))
        entry[1].sources.add(source)


def unobserve(source: MetricSource) -> None:
    with _lock:
        for _provider, bridge in _bridges.values():
            bridge.sources.discard(source)
