"""Metrics: each application's ``MeterProvider`` and the instruments divak records.

:class:`ApplicationMetrics` owns one OpenTelemetry SDK ``MeterProvider``
per application (never the global one; a forked child builds its own) and
the instruments of OpenTelemetry's stable HTTP semantic conventions:

* ``http.server.request.duration`` (histogram, seconds),
* ``http.server.active_requests`` (up-down counter),
* ``http.client.request.duration`` (histogram, seconds),

plus divak's own ``divak.operation.duration`` (histogram, seconds),
``divak.events`` (counter) and the histograms handlers record with
:meth:`ApplicationMetrics.record_value`.  The SDK aggregates; divak binds
the attribute sets once per method, route and status, bounds attribute
values and the number of series per instrument, and passes the request's
context so that histogram samples of sampled requests carry the trace id
as an exemplar.  Metrics never depend on the trace sampling rate.
"""

from __future__ import annotations

import logging
import os
import typing
import uuid

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from tornado import httputil

__all__ = [
    "ACTIVE_REQUESTS",
    "CLIENT_DURATION",
    "DURATION_BUCKETS",
    "EVENTS",
    "OPERATION_DURATION",
    "OVERFLOW_ATTRIBUTES",
    "SERVER_DURATION",
    "ApplicationMetrics",
    "add_metrics_reporter",
    "application_metrics",
]

logger = logging.getLogger(__name__)

SERVER_DURATION = "http.server.request.duration"
ACTIVE_REQUESTS = "http.server.active_requests"
CLIENT_DURATION = "http.client.request.duration"
OPERATION_DURATION = "divak.operation.duration"
EVENTS = "divak.events"

#: Bucket boundaries (seconds) the HTTP semantic conventions recommend for
#: ``http.server.request.duration`` and ``http.client.request.duration``.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

#: The attribute set a measurement is recorded under once its instrument
#: reached the cardinality limit (OpenTelemetry metrics SDK specification).
OVERFLOW_ATTRIBUTES: typing.Mapping[str, typing.Any] = {"otel.metric.overflow": True}

#: Longest attribute value kept (characters); longer strings are cut.
MAX_VALUE_LENGTH = 128
#: Most attributes a handler may add to one event or value; more are dropped.
MAX_ATTRIBUTES = 8
#: Most histograms :meth:`ApplicationMetrics.record_value` creates.
MAX_CUSTOM_INSTRUMENTS = 100

_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_ACTIVE_ATTRIBUTE = "_divak_active_attributes"

Attributes = typing.Mapping[str, typing.Any]


class _Series:
    """The bound attribute sets of one instrument, at most *limit* of them."""

    __slots__ = ("instrument", "limit", "bound", "warned")

    def __init__(self, instrument: str, limit: int) -> None:
        self.instrument = instrument
        self.limit = limit
        self.bound: dict[typing.Hashable, Attributes] = {}
        self.warned = False

    def bind(
        self, key: typing.Hashable, build: typing.Callable[[], Attributes]
    ) -> Attributes:
        attributes = self.bound.get(key)
        if attributes is not None:
            return attributes
        if len(self.bound) >= self.limit:
            if not self.warned:
                self.warned = True
                logger.warning(
                    "%s reached %d attribute sets: new ones are recorded as"
                    " otel.metric.overflow=true",
                    self.instrument,
                    self.limit,
                )
            return OVERFLOW_ATTRIBUTES
        attributes = self.bound[key] = build()
        return attributes


def _bounded(value: typing.Any) -> typing.Any:
    if isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_VALUE_LENGTH]


def _method(method: str | None) -> str:
    method = method or "GET"
    return method if method in _KNOWN_METHODS else "_OTHER"


class ApplicationMetrics:
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
        :data:`OVERFLOW_ATTRIBUTES` and one WARNING is logged
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
        #: The last snapshot, taken by :meth:`shutdown` when the process
        #: serves with siblings (see :mod:`divak.metrics_peers`).
        self.final_snapshot: dict[str, typing.Any] | None = None
        #: The endpoint sibling processes read this one's metrics from.
        self.peer: typing.Any = None
        self._custom: dict[tuple[str, str], otel_metrics.Histogram] = {}
        self._series: dict[str, _Series] = {}
        readers: list[MetricReader] = []
        if enabled and scrape:
            self.reader = InMemoryMetricReader()
            readers.append(self.reader)
        for reporter in reporters if enabled else ():
            interval = float(getattr(reporter, "interval", 60.0))
            timeout = float(getattr(reporter, "timeout", 10.0))
            readers.append(
                PeriodicExportingMetricReader(
                    reporter,
                    export_interval_millis=interval * 1000,
                    export_timeout_millis=timeout * 1000,
                )
            )
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
        self.server_duration = meter.create_histogram(
            SERVER_DURATION,
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.active_requests = meter.create_up_down_counter(
            ACTIVE_REQUESTS,
            unit="{request}",
            description="Number of active HTTP server requests.",
        )
        self.client_duration = meter.create_histogram(
            CLIENT_DURATION,
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.operation_duration = meter.create_histogram(
            OPERATION_DURATION,
            unit="s",
            description="Duration of the operations handlers recorded.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.events = meter.create_counter(
            EVENTS, unit="{event}", description="Interesting events handlers counted."
        )

    def _series_of(self, instrument: str) -> _Series:
        series = self._series.get(instrument)
        if series is None:
            series = self._series[instrument] = _Series(
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
        method, scheme = request.method, request.protocol
        attributes = self._series_of(ACTIVE_REQUESTS).bind(
            (method, scheme),
            lambda: {"http.request.method": _method(method), "url.scheme": scheme},
        )
        self.active_requests.add(1, attributes)
        request.__dict__[_ACTIVE_ATTRIBUTE] = attributes

    def request_finished(
        self,
        request: httputil.HTTPServerRequest,
        route: str | None,
        status_code: int | None,
        error_type: str | None = None,
        context: otel_context.Context | None = None,
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
        """
        active = request.__dict__.pop(_ACTIVE_ATTRIBUTE, None)
        if active is None:
            return
        self.active_requests.add(-1, active)
        if error_type is None and status_code is not None and status_code >= 500:
            error_type = str(status_code)
        method, scheme, version = request.method, request.protocol, request.version
        attributes = self._series_of(SERVER_DURATION).bind(
            (method, route, status_code, error_type, scheme, version),
            lambda: _server_attributes(
                method, route, status_code, error_type, scheme, version
            ),
        )
        self.server_duration.record(request.request_time(), attributes, context)

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
            lambda: _client_attributes(method, host, port, status_code, error_type),
        )
        self.client_duration.record(seconds, attributes, context)

    # -- what handlers add --------------------------------------------------
    def record_operation(
        self,
        name: str,
        seconds: float,
        context: otel_context.Context | None = None,
    ) -> None:
        """Record an operation's duration into ``divak.operation.duration``.

        :param name: ``divak.operation.name``, e.g. ``"query-db"``
        :param seconds: the duration
        :param context: the context of the operation's span (exemplar)
        """
        if not self.enabled:
            return
        attributes = self._series_of(OPERATION_DURATION).bind(
            name, lambda: {"divak.operation.name": _bounded(name)}
        )
        self.operation_duration.record(seconds, attributes, context)

    def count_event(
        self, name: str, value: int | float = 1, attributes: Attributes | None = None
    ) -> None:
        """Add *value* to the ``divak.events`` counter.

        :param name: ``divak.event.name``, e.g. ``"cache.miss"``
        :param value: a non-negative amount
        :param attributes: more attributes; at most :data:`MAX_ATTRIBUTES`,
            values cut to :data:`MAX_VALUE_LENGTH` characters
        :raises ValueError: when *value* is negative
        """
        if value < 0:
            raise ValueError("an event count cannot be negative")
        if not self.enabled:
            return
        bound = self._bind_custom(EVENTS, {"divak.event.name": name}, attributes)
        self.events.add(value, bound)

    def record_value(
        self,
        name: str,
        value: float,
        unit: str = "",
        attributes: Attributes | None = None,
        context: otel_context.Context | None = None,
        boundaries: typing.Sequence[float] | None = None,
    ) -> None:
        """Record *value* into the histogram *name*, created on first use.

        :param name: the instrument name, e.g. ``"queue.wait"``
        :param value: the measurement
        :param unit: UCUM unit, e.g. ``"s"`` or ``"By"``; with ``"s"`` the
            histogram uses :data:`DURATION_BUCKETS`
        :param attributes: as for :meth:`count_event`
        :param context: the current request's context (exemplar)
        :param boundaries: bucket boundaries, used when the histogram is
            created
        """
        if not self.enabled:
            return
        histogram = self._custom.get((name, unit))
        if histogram is None:
            if len(self._custom) >= MAX_CUSTOM_INSTRUMENTS:
                logger.warning("too many histograms, not recording %s", name)
                return
            if boundaries is None and unit == "s":
                boundaries = DURATION_BUCKETS
            histogram = self._custom[(name, unit)] = self.meter.create_histogram(
                name,
                unit=unit,
                description=f"Values of {name} handlers recorded.",
                explicit_bucket_boundaries_advisory=boundaries,
            )
        bound = self._bind_custom(name, {}, attributes)
        histogram.record(value, bound, context)

    def _bind_custom(
        self, instrument: str, fixed: Attributes, attributes: Attributes | None
    ) -> Attributes:
        extra = tuple(sorted(attributes.items())) if attributes else ()
        key = (tuple(fixed.items()), extra)

        def build() -> Attributes:
            built = {k: _bounded(v) for k, v in fixed.items()}
            if len(extra) > MAX_ATTRIBUTES:
                logger.warning(
                    "%s: keeping %d of %d attributes",
                    instrument,
                    MAX_ATTRIBUTES,
                    len(extra),
                )
            for attribute, value in extra[:MAX_ATTRIBUTES]:
                built[str(attribute)[:MAX_VALUE_LENGTH]] = _bounded(value)
            return built

        return self._series_of(instrument).bind(key, build)

    # -- reading, flushing --------------------------------------------------
    def collect(self) -> MetricsData | None:
        """Read the current (cumulative) state from the scrape reader."""
        if self.reader is None:
            return None
        return self.reader.get_metrics_data()

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Push the reporters' pending metrics now; blocks the calling thread.

        :param timeout: seconds to wait at most
        :returns: :data:`True` when every reporter finished in time
        """
        if self.provider is None:
            return True
        return self.provider.force_flush(int(timeout * 1000))

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


def _server_attributes(
    method: str | None,
    route: str | None,
    status_code: int | None,
    error_type: str | None,
    scheme: str,
    version: str,
) -> Attributes:
    attributes: dict[str, typing.Any] = {
        "http.request.method": _method(method),
        "url.scheme": scheme,
        "network.protocol.version": version.partition("/")[2] or "1.1",
    }
    if route:
        attributes["http.route"] = _bounded(route)
    if status_code is not None:
        attributes["http.response.status_code"] = status_code
    if error_type:
        attributes["error.type"] = _bounded(error_type)
    return attributes


def _client_attributes(
    method: str,
    host: str,
    port: int,
    status_code: int | None,
    error_type: str | None,
) -> Attributes:
    attributes: dict[str, typing.Any] = {
        "http.request.method": _method(method),
        "server.address": _bounded(host),
        "server.port": port,
    }
    if status_code is not None:
        attributes["http.response.status_code"] = status_code
    if error_type:
        attributes["error.type"] = _bounded(error_type)
    return attributes


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
