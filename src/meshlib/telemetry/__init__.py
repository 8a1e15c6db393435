"""Observability on both stacks: W3C trace context and OpenTelemetry spans, Istio's metrics
(Prometheus and the OpenTelemetry metrics API), JSON access logs."""
