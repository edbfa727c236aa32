"""Where metrics go besides scrapes: :class:`OTLPMetricsReporter`, the variables.

* :class:`OTLPMetricsReporter` pushes over OTLP/HTTP, with the
  temporality and histogram aggregation the ``OTEL_EXPORTER_OTLP_METRICS_*``
  variables ask for (:func:`preferred_temporality`,
  :func:`preferred_aggregation`).
* :func:`periodic_reader` is the SDK reader that pushes to an exporter
  every ``OTEL_METRIC_EXPORT_INTERVAL`` (:func:`export_interval`).
* :func:`readers_from_env` reads ``OTEL_METRICS_EXPORTER``: whether
  divak keeps the reader :class:`divak.MetricsHandler` answers scrapes
  from (``prometheus``, the default), and the readers that push
  (``otlp``, ``console``, and any name an installed package registers as
  an ``opentelemetry_metrics_exporter`` entry point, as OpenTelemetry's
  SDK resolves them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import typing

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
)

from divak.logs.ratelimit import describe_error
from divak.settings import (
    entry_point_factories,
    env_value,
    milliseconds_variable,
    names_variable,
    otlp_endpoint,
    warn_once,
)

__all__ = [
    "OTLPMetricsReporter",
    "export_interval",
    "export_timeout",
    "periodic_reader",
    "preferred_aggregation",
    "preferred_temporality",
    "readers_from_env",
]

logger = logging.getLogger("divak.reporters")

_CUMULATIVE = AggregationTemporality.CUMULATIVE
_DELTA = AggregationTemporality.DELTA

#: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: the temporality of
#: each kind of instrument (OpenTelemetry specification, OTLP metrics
#: exporter); an up-down counter is always cumulative.
_TEMPORALITIES: dict[str, dict[type, AggregationTemporality]] = {
    "cumulative": {
        Counter: _CUMULATIVE,
        UpDownCounter: _CUMULATIVE,
        Histogram: _CUMULATIVE,
        ObservableCounter: _CUMULATIVE,
        ObservableUpDownCounter: _CUMULATIVE,
        ObservableGauge: _CUMULATIVE,
    },
    "delta": {
        Counter: _DELTA,
        UpDownCounter: _CUMULATIVE,
        Histogram: _DELTA,
        ObservableCounter: _DELTA,
        ObservableUpDownCounter: _CUMULATIVE,
        ObservableGauge: _CUMULATIVE,
    },
    "lowmemory": {
        Counter: _DELTA,
        UpDownCounter: _CUMULATIVE,
        Histogram: _DELTA,
        ObservableCounter: _CUMULATIVE,
        ObservableUpDownCounter: _CUMULATIVE,
        ObservableGauge: _CUMULATIVE,
    },
}


def preferred_temporality() -> dict[type, AggregationTemporality]:
    """The temporality per instrument class the environment asks for.

    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``: ``cumulative``
    (the default), ``delta`` or ``lowmemory``, in any case, as the
    OpenTelemetry specification defines them; another value is logged once
    as a WARNING and ``cumulative`` is used.
    """
    name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    value = env_value(name).lower() or "cumulative"
    if value not in _TEMPORALITIES:
        warn_once(f"{name}:{value}", "ignoring %s=%r: using cumulative", name, value)
        value = "cumulative"
    return dict(_TEMPORALITIES[value])


def preferred_aggregation() -> dict[type, Aggregation]:
    """The default histogram aggregation the environment asks for.

    ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION``:
    ``explicit_bucket_histogram`` (the default) or
    ``base2_exponential_bucket_histogram``, in any case; another value is
    logged once as a WARNING and the default is used.  Histograms that a
    view gives their own aggregation (divak's duration buckets) keep it.
    """
    name = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
    value = env_value(name).lower() or "explicit_bucket_histogram"
    if value == "base2_exponential_bucket_histogram":
        return {Histogram: ExponentialBucketHistogramAggregation()}
    if value != "explicit_bucket_histogram":
        warn_once(
            f"{name}:{value}",
            "ignoring %s=%r: using explicit_bucket_histogram",
            name,
            value,
        )
    return {Histogram: ExplicitBucketHistogramAggregation()}


class _ExporterLog(logging.Filter):
    """Keeps, instead of logging, what the OTLP exporter says while divak exports.

    The exporter logs every failed attempt; a reporter keeps its last word
    for its own rate-limited line instead.  Records logged on other threads,
    or while no divak reporter exports, pass unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sinks: dict[int, list[str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        sink = self.sinks.get(threading.get_ident())
        if sink is None:
            return True
        sink.append(" ".join(record.getMessage().split()))
        return False

    @contextlib.contextmanager
    def kept(self) -> typing.Iterator[list[str]]:
        """Keep the messages logged on this thread inside the block."""
        sink: list[str] = []
        self.sinks[threading.get_ident()] = sink
        try:
            yield sink
        finally:
            del self.sinks[threading.get_ident()]


_EXPORTER_LOG = _ExporterLog()
_EXPORTER_LOG_LOCK = threading.Lock()


def _quiet(logger_name: str) -> None:
    """Add :data:`_EXPORTER_LOG` to the logger *logger_name*, once."""
    with _EXPORTER_LOG_LOCK:
        exporter_logger = logging.getLogger(logger_name)
        if _EXPORTER_LOG not in exporter_logger.filters:
            exporter_logger.addFilter(_EXPORTER_LOG)


def export_interval() -> float:
    """``OTEL_METRIC_EXPORT_INTERVAL``: seconds between two pushes (default 60).

    The variable is in milliseconds, as the specification says.
    """
    return milliseconds_variable("OTEL_METRIC_EXPORT_INTERVAL", 60.0)


def export_timeout() -> float:
    """``OTEL_METRIC_EXPORT_TIMEOUT``: seconds one push may take (default 30).

    The variable is in milliseconds, as the specification says.
    """
    return milliseconds_variable("OTEL_METRIC_EXPORT_TIMEOUT", 30.0)


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

    * Temporality and the default histogram aggregation follow
      ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` and
      ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION``
      (:func:`preferred_temporality`, :func:`preferred_aggregation`); the
      headers, compression and certificates, the exporter's own
      ``OTEL_EXPORTER_OTLP_*`` variables.

    :param endpoint: the collector's metrics endpoint, e.g.
        ``http://otel-collector:4318/v1/metrics``; :data:`None` reads
        ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` and falls back to
        ``http://localhost:4318/v1/metrics``
    :param interval: seconds between pushes; default
        ``OTEL_METRIC_EXPORT_INTERVAL`` (:func:`export_interval`, 60 s)
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
        interval: float | None = None,
        timeout: float = 10.0,
        complain_interval: float = 60.0,
    ) -> None:
        # The otlp extra is optional: its package is imported when an OTLP
        # reporter is made, never by "import divak".
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )

        temporality = preferred_temporality()
        aggregation = preferred_aggregation()
        super().__init__(
            preferred_temporality=temporality, preferred_aggregation=aggregation
        )
        #: The URL metrics are pushed to (:class:`str`).
        self.endpoint = endpoint or otlp_endpoint("metrics")
        self.exporter = OTLPMetricExporter(
            endpoint=self.endpoint,
            timeout=timeout,
            preferred_temporality=temporality,
            preferred_aggregation=aggregation,
        )
        self.interval = export_interval() if interval is None else interval
        self.timeout = timeout
        self.complain_interval = complain_interval
        self.exported = 0
        self.failed_exports = 0
        self._last_complaint = -complain_interval
        self._lock = threading.Lock()
        # The exporter logs to its module's logger (named after the module,
        # as Python's logging convention has it).
        _quiet(OTLPMetricExporter.__module__)

    def export(
        self,
        metrics_data: MetricsData,
        timeout_millis: float = 10_000,
        **kwargs: typing.Any,
    ) -> MetricExportResult:
        """Push *metrics_data*; count the result; never raises."""
        with _EXPORTER_LOG.kept() as said:
            try:
                result = self.exporter.export(
                    metrics_data, timeout_millis=timeout_millis
                )
                reason = said[-1] if said else "the collector refused them"
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


def periodic_reader(reporter: MetricExporter) -> PeriodicExportingMetricReader:
    """The SDK reader that pushes to *reporter* periodically.

    :param reporter: any ``MetricExporter``; an :class:`OTLPMetricsReporter`
        is pushed to every ``reporter.interval`` seconds, each push bounded
        by ``reporter.timeout``; any other every
        ``OTEL_METRIC_EXPORT_INTERVAL``, bounded by
        ``OTEL_METRIC_EXPORT_TIMEOUT`` (:func:`export_interval`,
        :func:`export_timeout`)
    """
    if isinstance(reporter, OTLPMetricsReporter):
        interval, timeout = reporter.interval, reporter.timeout
    else:
        interval, timeout = export_interval(), export_timeout()
    return PeriodicExportingMetricReader(
        reporter,
        export_interval_millis=interval * 1000,
        export_timeout_millis=timeout * 1000,
    )


#: The names of ``OTEL_METRICS_EXPORTER`` divak builds itself.
_BUILT_IN = ("prometheus", "otlp", "console")


def readers_from_env(push: bool = True) -> tuple[bool, list[MetricReader]]:
    """``OTEL_METRICS_EXPORTER``: where an application's metrics go.

    A comma-separated list, default ``prometheus``:

    * ``prometheus``: divak keeps the reader :class:`divak.MetricsHandler`
      answers scrapes from;
    * ``otlp``: an :class:`OTLPMetricsReporter` (``otlp`` extra), to the
      endpoint of ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
      ``OTEL_EXPORTER_OTLP_ENDPOINT``;
    * ``console``: the SDK's ``ConsoleMetricExporter`` (standard output);
    * ``none``: none of them;
    * any other name is looked up, as OpenTelemetry's SDK does, among the
      ``opentelemetry_metrics_exporter`` entry points of the installed
      packages (an exporter is pushed to periodically, a reader is used
      as it is).

    Exporters push every ``OTEL_METRIC_EXPORT_INTERVAL``.  An unknown
    name, or ``otlp`` without its package, is logged once as a WARNING and
    skipped.

    :param push: build the readers that push; :data:`False` when the
        application added its reporters in code (code wins)
    :returns: whether scrapes are answered, and the readers that push
    """
    value = env_value("OTEL_METRICS_EXPORTER") or "prometheus"
    factories: dict[str, typing.Callable[[], typing.Any]] = {
        "prometheus": lambda: None,
        "otlp": OTLPMetricsReporter,
        "console": ConsoleMetricExporter,
    }
    listed = {name.strip().lower() for name in value.split(",")} - {"", "none"}
    if not listed <= factories.keys():
        factories.update(
            entry_point_factories("opentelemetry_metrics_exporter", exclude=_BUILT_IN)
        )
    names = names_variable("OTEL_METRICS_EXPORTER", value, factories)
    readers: list[MetricReader] = []
    for name in names:
        if name == "prometheus" or not push:
            continue
        try:
            built = factories[name]()
        except ImportError as error:
            warn_once(
                "metrics-exporter-import:" + name,
                "cannot export metrics with %r: %s (install divak[otlp])",
                name,
                error,
            )
            continue
        if isinstance(built, MetricReader):
            readers.append(built)
        elif isinstance(built, MetricExporter):
            readers.append(periodic_reader(built))
        elif built is not None:
            warn_once(
                "metrics-exporter-kind:" + name,
                "ignoring %r in OTEL_METRICS_EXPORTER: %r is neither a metric "
                "exporter nor a reader",
                name,
                built,
            )
    return "prometheus" in names, readers
