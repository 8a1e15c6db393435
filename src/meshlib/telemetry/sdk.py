"""``MESH_TRACING=otlp|console``: meshlib sets up an OpenTelemetry SDK, only when asked.

With neither, the application's own SDK (if it installed one) receives meshlib's spans;
with none at all, meshlib still propagates trace context and makes no span. ``otlp`` needs
the exporter extra (``pip install 'meshlib[otlp]'``) and reads the standard
``OTEL_EXPORTER_OTLP_*`` variables.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry import trace

from ..errors import ConfigError, ConfigIssue

__all__ = ["install_sdk"]

log = logging.getLogger("meshlib")
_lock = threading.Lock()
_installed: str | None = None


def install_sdk(kind: str, service: str, namespace: str) -> None:
    """Install a global TracerProvider exporting to ``kind`` (once per process; an
    application's own provider, set before, is kept and a warning says so)."""
    global _installed
    with _lock:
        if _installed is not None:
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
        except ImportError:
            raise ConfigError(
                ConfigIssue(f"MESH_TRACING={kind} needs the OpenTelemetry SDK: pip install 'meshlib[otel]'")
            ) from None
        exporter: SpanExporter
        if kind == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                    OTLPSpanExporter,
                )
            except ImportError:
                raise ConfigError(
                    ConfigIssue("MESH_TRACING=otlp needs the OTLP exporter: pip install 'meshlib[otlp]'")
                ) from None
            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            log.warning("MESH_TRACING=%s: the application set up its own TracerProvider; kept", kind)
            _installed = kind
            return
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.namespace": namespace})
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _installed = kind
