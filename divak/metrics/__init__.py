"""Metrics: how long requests and operations take, how often events happen.

Each application owns one OpenTelemetry SDK ``MeterProvider``
(:class:`ApplicationMetrics`, in :mod:`divak.metrics.instruments`), with
the resource of its spans, the stable HTTP semantic-convention
instruments, the process and runtime ones (:mod:`divak.metrics.runtime`)
and divak's own; or uses the process's global SDK ``MeterProvider``.
Attribute sets are built once and bounded (:mod:`divak.metrics.series`),
and recorded straight into the SDK's aggregations of each set
(:mod:`divak.metrics.bound`).
Scrapes are answered by :class:`MetricsHandler` (Prometheus text or
OpenMetrics, :mod:`divak.metrics.prometheus`), summed over forked
processes (:mod:`divak.metrics.peers`, through
:mod:`divak.metrics.snapshot`); :class:`OTLPMetricsReporter` and the
exporters ``OTEL_METRICS_EXPORTER`` names push (:mod:`divak.metrics.otlp`).
"""

from divak.metrics.instruments import (
    ACTIVE_REQUESTS,
    CLIENT_DURATION,
    EVENTS,
    OPERATION_DURATION,
    SCHEMA_URL,
    SERVER_DURATION,
    ApplicationMetrics,
    MetricsSource,
    new_application_metrics,
)
from divak.metrics.otlp import OTLPMetricsReporter
from divak.metrics.prometheus import MetricsHandler

__all__ = [
    "ACTIVE_REQUESTS",
    "CLIENT_DURATION",
    "EVENTS",
    "OPERATION_DURATION",
    "SCHEMA_URL",
    "SERVER_DURATION",
    "ApplicationMetrics",
    "MetricsHandler",
    "MetricsSource",
    "OTLPMetricsReporter",
    "new_application_metrics",
]
