"""Metrics: each application's ``MeterProvider`` and the instruments divak records.

:class:`ApplicationMetrics` owns one OpenTelemetry SDK ``MeterProvider``
per application (never the global one; a forked child builds its own), the
instruments of the stable HTTP semantic conventions and divak's own.  The
SDK aggregates; measurements carry the request's context, so samples of
sampled requests get the trace id as exemplar.  Metrics never depend on
the trace sampling rate.
"""

from __future__ import annotations

import functools
import logging
import os
import typing
import uuid
import weakref

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    MetricsData,
)
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from tornado import httputil

from divak import metric_events, metric_series, metrics_otlp

__all__ = [
    "ACTIVE_REQUESTS",
    "CLIENT_DURATION",
    "EVENTS",
    "OPERATION_DURATION",
    "SERVER_DURATION",
    "ApplicationMetrics",
    "add_metrics_reporter",
    "application_metrics",
    "shutdown_metrics",
]

logger = logging.getLogger(__name__)

SERVER_DURATION = "http.server.request.duration"
ACTIVE_REQUESTS = "http.server.active_requests"
CLIENT_DURATION = "http.client.request.duration"
OPERATION_DURATION = metric_events.OPERATION_DURATION
EVENTS = metric_events.EVENTS

_ACTIVE_ATTRIBUTE = "_divak_active_attributes"
_BUCKETS = metric_series.DURATION_BUCKETS
Attributes = metric_series.Attributes


class ApplicationMetrics(metric_events.HandlerMeasurements):
    """One application's ``MeterProvider`` and instruments.

    Create it with :func:`application_metrics`, which keeps one per
    application.  Every recording method is cheap and never raises for
    bad input: it is called on the IOLoop for every request.

    :param service_name: ``service.name`` of the metrics' resource
    :param reporters: OpenTelemetry ``MetricExporter`` objects (e.g.
        :class:`divak.OTLPMetricsReporter`) each pushed to periodically by
        the SDK's ``PeriodicExportingMetricReader``
    :param scrape: keep the in-memory reader that
        :class:`divak.MetricsHandler` reads; without it only the reporters
        receive metrics (each reader costs a share of every measurement)
    :param cardinality_limit: attribute sets per instrument; measurements
        with a new set beyond it are recorded under
        :data:`~divak.metric_series.OVERFLOW_ATTRIBUTES` and one WARNING is logged
    :param enabled: :data:`False` makes every method do nothing

    .. attribute:: provider

       The SDK ``MeterProvider`` (:data:`None` when disabled).

    .. attribute:: reader

       The ``InMemoryMetricReader`` scrapes read, or :data:`None`.
    """

    def __init__(
        self,
        service_name: str = "",
        *,
        reporters: typing.Sequence[MetricExporter] = (),
        scrape: bool = True,
        cardinality_limit: int = 2000,
        enabled: bool = True,
    ) -> None:
        from divak import __version__

        self.enabled = enabled
        self.cardinality_limit = cardinality_limit
        self.reader: InMemoryMetricReader | None = None
        self.provider: MeterProvider | None = None
        self.pid = os.getpid()
        #: :data:`True` in a process forked after this object was made:
        #: the child makes its own (set once, at the fork).
        self.forked = False
        _watch_forks(self)
        #: The last snapshot, taken by :meth:`shutdown` when the process
        #: serves with siblings (see :mod:`divak.metrics_peers`).
        self.final_snapshot: dict[str, typing.Any] | None = None
        #: The endpoint sibling processes read this one's metrics from.
        self.peer: typing.Any = None
        self._custom: dict[tuple[str, str], otel_metrics.Histogram] = {}
        self._series: dict[str, metric_series.Series] = {}
        readers: list[MetricReader] = []
        if enabled and scrape:
            self.reader = InMemoryMetricReader()
            readers.append(self.reader)
        if enabled:
            readers.extend(map(metrics_otlp.periodic_reader, reporters))
        attributes = {SERVICE_INSTANCE_ID: str(uuid.uuid4())}
        if service_name:
            attributes[SERVICE_NAME] = service_name
        self.resource = Resource.create(attributes)
        if enabled:
            self.provider = MeterProvider(
                metric_readers=readers, resource=self.resource
            )
            meter = self.provider.get_meter("divak", __version__)
        else:
            meter = otel_metrics.NoOpMeter("divak")
        self.meter = meter
        histogram = functools.partial(
            meter.create_histogram, explicit_bucket_boundaries_advisory=_BUCKETS
        )
        self.server_duration = histogram(
            SERVER_DURATION, "s", "Duration of HTTP server requests."
        )
        # Counted in plain integers on the IOLoop, observed by the SDK when
        # it collects: two SDK measurements per request would cost more
        # than the whole request's other metrics.
        self._active: dict[tuple[str | None, str], list[typing.Any]] = {}
        self.active_requests = meter.create_observable_up_down_counter(
            ACTIVE_REQUESTS,
            [self._observe_active],
            "{request}",
            "Number of active HTTP server requests.",
        )
        self.client_duration = histogram(
            CLIENT_DURATION, "s", "Duration of HTTP client requests."
        )
        self.operation_duration = histogram(
            OPERATION_DURATION, "s", "Duration of operations handlers recorded."
        )
        self.events = meter.create_counter(
            EVENTS, "{event}", "Interesting events handlers counted."
        )

    def _series_of(self, instrument: str) -> metric_series.Series:
        series = self._series.get(instrument)
        if series is None:
            series = self._series[instrument] = metric_series.Series(
                instrument, self.cardinality_limit
            )
        return series

    # -- server requests ----------------------------------------------------
    def request_started(self, request: httputil.HTTPServerRequest) -> None:
        """Count *request* as active; call once when it arrives.

        Marks the request, so that :meth:`request_finished` undoes exactly
        what was done here: ``http.server.active_requests`` never goes
        negative, whichever error path ends the request.
        """
        if not self.enabled or _ACTIVE_ATTRIBUTE in request.__dict__:
            return
        key = (request.method, request.protocol)
        entry = self._active.get(key)
        if entry is None:
            entry = self._active.setdefault(key, [self._active_attributes(*key), 0])
        entry[1] += 1
        request.__dict__[_ACTIVE_ATTRIBUTE] = entry

    def _active_attributes(self, method: str | None, scheme: str) -> Attributes:
        return self._series_of(ACTIVE_REQUESTS).bind(
            (method, scheme),
            lambda: {
                "http.request.method": metric_series.method_attribute(method),
                "url.scheme": scheme,
            },
        )

    def _observe_active(
        self, options: otel_metrics.CallbackOptions
    ) -> typing.Iterator[otel_metrics.Observation]:
        counts: dict[typing.Any, int] = {}
        for attributes, count in list(self._active.values()):
            key = tuple(attributes.items())  # overflowed keys share a set
            counts[key] = counts.get(key, 0) + count
        for key, count in counts.items():
            yield otel_metrics.Observation(count, dict(key))

    def request_finished(
        self,
        request: httputil.HTTPServerRequest,
        route: str | None,
        status_code: int | None,
        error_type: str | None = None,
        context: otel_context.Context | None = None,
        seconds: float | None = None,
    ) -> None:
        """Record the duration of *request* and count it as no longer active.

        Does something only the first time it is called after
        :meth:`request_started` for the same request, so calling it from
        every place a request can end is safe.

        :param route: the route template (``/items/{item_id}``), never the
            raw path; :data:`None` when no route matched
        :param status_code: the response's status, :data:`None` when the
            client went away before a response was sent
        :param error_type: ``error.type``, e.g. the exception's qualified
            name or ``"client_disconnected"``; a 5xx status without one is
            recorded with the status as ``error.type``
        :param context: the request's OpenTelemetry context, so that a
            sampled request's trace id becomes the sample's exemplar
        :param seconds: the request's duration; default: from its arrival
            until now
        """
        active = request.__dict__.pop(_ACTIVE_ATTRIBUTE, None)
        if active is None:
            return
        active[1] -= 1
        if error_type is None and status_code is not None and status_code >= 500:
            error_type = str(status_code)
        method, scheme, version = request.method, request.protocol, request.version
        key = (method, route, status_code, error_type, scheme, version)
        series = self._series_of(SERVER_DURATION)
        attributes = series.bound.get(key) or series.bind(
            key, lambda: metric_series.server_attributes(*key)
        )
        if seconds is None:
            seconds = request.request_time()
        self.server_duration.record(seconds, attributes, context)

    # -- client requests ----------------------------------------------------
    def client_request_finished(
        self,
        method: str,
        host: str,
        port: int,
        status_code: int | None,
        seconds: float,
        error_type: str | None = None,
        context: otel_context.Context | None = None,
    ) -> None:
        """Record one outgoing request attempt into ``http.client.request.duration``.

        :param method: the request method
        :param host: ``server.address``, the host name the request went to
        :param port: ``server.port``
        :param status_code: the response's status, :data:`None` when no
            response came (timeout, refused connection)
        :param seconds: how long the attempt took
        :param error_type: ``error.type`` (exception name, or the status
            for a 4xx/5xx answer when omitted)
        :param context: the context of the attempt's CLIENT span
        """
        if not self.enabled:
            return
        if error_type is None and status_code is not None and status_code >= 400:
            error_type = str(status_code)
        attributes = self._series_of(CLIENT_DURATION).bind(
            (method, host, port, status_code, error_type),
            lambda: metric_series.client_attributes(
                method, host, port, status_code, error_type
            ),
        )
        self.client_duration.record(seconds, attributes, context)

    def collect(self) -> MetricsData | None:
        """Read the current (cumulative) state from the scrape reader."""
        if self.reader is None:
            return None
        return self.reader.get_metrics_data()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Push the last metrics to the reporters and stop them.

        Blocks the calling thread (call it off the IOLoop), at most about
        *timeout* seconds.  With sibling processes, first leaves the final
        snapshot where they find it, so the sums they answer keep this
        process's counts.
        """
        if self.peer is not None and self.provider is not None:
            self.peer.save_final()
        provider, self.provider = self.provider, None
        if provider is not None:
            provider.shutdown(int(timeout * 1000))


#: Every ApplicationMetrics of this process, flagged ``forked`` in a child.
_ALIVE: weakref.WeakSet[ApplicationMetrics] = weakref.WeakSet()
_fork_hook = False


def _watch_forks(metrics: ApplicationMetrics) -> None:
    global _fork_hook
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True
    _ALIVE.add(metrics)


def _after_fork_in_child() -> None:
    for metrics in list(_ALIVE):
        metrics.forked = True


def application_metrics(application: typing.Any) -> ApplicationMetrics:
    """The :class:`ApplicationMetrics` of *application*, created on first use.

    Uses ``application.divak_service_name`` (a :class:`divak.Recorder`)
    as ``service.name``, the reporters given to :func:`add_metrics_reporter`,
    ``settings['metrics']`` (default :data:`True`; :data:`False` turns
    metrics off) and ``settings['metrics_cardinality_limit']`` (default
    2000).  When the process serves with sibling processes (see
    :mod:`divak.metrics_peers`), it also starts answering their scrapes.

    :param application: a :class:`tornado.web.Application`
    """
    metrics: ApplicationMetrics | None = application.__dict__.get("_divak_metrics")
    if metrics is None or metrics.pid != os.getpid():
        settings = getattr(application, "settings", {})
        metrics = ApplicationMetrics(
            str(getattr(application, "divak_service_name", "") or ""),
            reporters=application.__dict__.get("_divak_metrics_reporters", ()),
            cardinality_limit=int(settings.get("metrics_cardinality_limit", 2000)),
            enabled=bool(settings.get("metrics", True)),
        )
        application.__dict__["_divak_metrics"] = metrics
        if metrics.enabled:
            from divak import metrics_peers

            metrics_peers.join(metrics)
    return metrics


def add_metrics_reporter(application: typing.Any, reporter: MetricExporter) -> None:
    """Push *application*'s metrics to *reporter* (an OpenTelemetry ``MetricExporter``).

    :raises RuntimeError: once the application's metrics were created
        (first request)
    """
    if application.__dict__.get("_divak_metrics") is not None:
        raise RuntimeError("metrics already started for this application")
    application.__dict__.setdefault("_divak_metrics_reporters", []).append(reporter)


def shutdown_metrics(application: typing.Any, timeout: float = 5.0) -> None:
    """Flush and stop *application*'s metrics, if it has any; for the runner.

    Blocks the calling thread, about *timeout* seconds at most.
    """
    metrics: ApplicationMetrics | None = application.__dict__.get("_divak_metrics")
    if metrics is not None and metrics.pid == os.getpid():
        metrics.shutdown(timeout)
