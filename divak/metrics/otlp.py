"""Pushing metrics over OTLP/HTTP: :class:`OTLPMetricsReporter`."""

from __future__ import annotations

import logging
import threading
import time
import typing

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from divak.logs.ratelimit import describe_error

__all__ = ["OTLPMetricsReporter", "periodic_reader"]

logger = logging.getLogger("divak.reporters")


class OTLPMetricsReporter(MetricExporter):
    """Push the application's metrics to an OpenTelemetry Collector over OTLP/HTTP.

    A thin wrapper around ``opentelemetry-exporter-otlp-proto-http``'s
    ``OTLPMetricExporter`` (install divak with the ``otlp`` extra), which
    encodes protobuf and retries transient failures itself.  Give it to
    the application with ``add_divak_metrics_reporter``; the SDK's
    ``PeriodicExportingMetricReader`` calls it every *interval* seconds on
    its own thread, never on the IOLoop, and once more on shutdown.

    * Bounded: one upload per interval, each at most *timeout* seconds;
      the SDK keeps one aggregate per attribute set (bounded by the
      cardinality limit), so a collector that is down costs no memory.
    * Failures are counted (:attr:`failed_exports`) and logged as one
      WARNING line at most once per *complain_interval* seconds, without a
      traceback.

    :param endpoint: the collector's metrics endpoint, e.g.
        ``http://otel-collector:4318/v1/metrics``; :data:`None` lets the
        exporter read ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
        ``OTEL_EXPORTER_OTLP_ENDPOINT``
    :param interval: seconds between pushes
    :param timeout: seconds per push, retries included
    :param complain_interval: seconds between failure log lines
    :raises ImportError: when ``opentelemetry-exporter-otlp-proto-http`` is
        not installed

    .. attribute:: exported

       Pushes the collector accepted (:class:`int`).

    .. attribute:: failed_exports

       Pushes that failed (:class:`int`).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        interval: float = 60.0,
        timeout: float = 10.0,
        complain_interval: float = 60.0,
    ) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )

        self.exporter = OTLPMetricExporter(endpoint=endpoint, timeout=timeout)
        super().__init__(
            preferred_temporality=self.exporter._preferred_temporality,
            preferred_aggregation=self.exporter._preferred_aggregation,
        )
        self.interval = interval
        self.timeout = timeout
        self.complain_interval = complain_interval
        self.exported = 0
        self.failed_exports = 0
        self._last_complaint = -complain_interval
        self._lock = threading.Lock()
        # The exporter logs every failed attempt; keep its last word for the
        # rate-limited line instead.
        self._last_reason = _LastMessage()
        client = getattr(self.exporter, "_client", None)
        if client is not None and hasattr(client, "_logger"):
            quiet = logging.Logger("divak.otlp-metrics")
            quiet.addHandler(self._last_reason)
            client._logger = quiet

    @property
    def endpoint(self) -> str:
        """The URL metrics are pushed to."""
        return str(getattr(self.exporter, "_endpoint", ""))

    def export(
        self,
        metrics_data: MetricsData,
        timeout_millis: float = 10_000,
        **kwargs: typing.Any,
    ) -> MetricExportResult:
        """Push *metrics_data*; count the result; never raises."""
        try:
            self._last_reason.message = ""
            result = self.exporter.export(metrics_data, timeout_millis=timeout_millis)
            reason = self._last_reason.message or "the collector refused them"
        except Exception as error:  # noqa: BLE001 - export must never raise
            result = MetricExportResult.FAILURE
            reason = describe_error(error)
        with self._lock:
            if result is MetricExportResult.SUCCESS:
                self.exported += 1
                return result
            self.failed_exports += 1
            now = time.monotonic()
            complain = now - self._last_complaint >= self.complain_interval
            if complain:
                self._last_complaint = now
            failed = self.failed_exports
        if complain:
            logger.warning(
                "cannot push metrics to %s: %s (%d failed pushes so far)",
                self.endpoint,
                reason,
                failed,
            )
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered here; :data:`True`."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: typing.Any) -> None:
        """Close the exporter's HTTP connections."""
        self.exporter.shutdown(timeout_millis=timeout_millis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r})"


class _LastMessage(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = " ".join(record.getMessage().split())


def periodic_reader(reporter: MetricExporter) -> PeriodicExportingMetricReader:
    """The SDK reader that pushes to *reporter* every ``reporter.interval`` seconds.

    :param reporter: any ``MetricExporter``; its ``interval`` and
        ``timeout`` attributes (seconds) are used when it has them,
        else 60 s and 10 s
    """
    interval = float(getattr(reporter, "interval", 60.0))
    timeout = float(getattr(reporter, "timeout", 10.0))
    return PeriodicExportingMetricReader(
        reporter,
        export_interval_millis=interval * 1000,
        export_timeout_millis=timeout * 1000,
    )
