"""Instruments: each application's ``MeterProvider`` and what divak records.

:class:`ApplicationMetrics` owns one OpenTelemetry SDK ``MeterProvider``
per application (a forked child builds its own), with the resource of the
application's spans, the instruments of the stable HTTP semantic
conventions, the process and runtime ones (:mod:`divak.metrics.runtime`)
and divak's own.  Where the process already set a global SDK
``MeterProvider``, the instruments come from that one instead
(:func:`new_application_metrics` says when).  The SDK aggregates;
measurements carry the request's context, so samples of sampled requests
get the trace id as exemplar.  Metrics never depend on the trace sampling
rate.
"""

from __future__ import annotations

import asyncio
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

from divak.metrics import peers
from divak.metrics import series as metric_series
from divak.metrics.bound import BoundHistogram, BoundSet
from divak.metrics.otlp import periodic_reader, readers_from_env
from divak.metrics.runtime import RuntimeMetrics
from divak.metrics.snapshot import Exemplars
from divak.metrics.thread import MetricsThread
from divak.settings import sdk_disabled
from divak.version import __version__

__all__ = [
    "ACTIVE_REQUESTS",
    "CLIENT_DURATION",
    "EVENTS",
    "OPERATION_DURATION",
    "RETENTION_DROPPED",
    "SERVER_DURATION",
    "WEBSOCKET_CONNECTIONS",
    "WEBSOCKET_DURATION",
    "WEBSOCKET_DURATION_BUCKETS",
    "WEBSOCKET_MESSAGES",
    "ApplicationMetrics",
    "HandlerMeasurements",
    "MAX_CUSTOM_INSTRUMENTS",
    "MetricsSource",
    "SCHEMA_URL",
    "WebSocketRoute",
    "new_application_metrics",
    "with_instance_id",
]

logger = logging.getLogger("divak.metrics")

SERVER_DURATION = "http.server.request.duration"
ACTIVE_REQUESTS = "http.server.active_requests"
CLIENT_DURATION = "http.client.request.duration"
OPERATION_DURATION = "divak.operation.duration"
EVENTS = "divak.events"
WEBSOCKET_CONNECTIONS = "divak.websocket.connections.active"
WEBSOCKET_DURATION = "divak.websocket.connection.duration"
WEBSOCKET_MESSAGES = "divak.websocket.messages"
#: Bucket boundaries (seconds) of ``divak.websocket.connection.duration``:
#: connections last from a second to hours.
WEBSOCKET_DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)
#: Failed or slow unsampled requests not exported: over the retention rate.
RETENTION_DROPPED = "divak.retention.dropped"
#: Most histograms :meth:`HandlerMeasurements.record_value` creates.
MAX_CUSTOM_INSTRUMENTS = 100
#: The semantic conventions divak's instruments follow (the schema URL of
#: their meter): 1.39.0, the first release with every name they use
#: (``process.unix.file_descriptor.count`` replaced
#: ``process.open_file_descriptor.count`` there).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.39.0"

_ACTIVE_ATTRIBUTE = "_divak_active_attributes"
_BUCKETS = metric_series.DURATION_BUCKETS
Attributes = metric_series.Attributes
_T = typing.TypeVar("_T")


class HandlerMeasurements:
    """Operations, events and values, recorded with bounded attributes.

    Needs from the class it is mixed into: ``enabled`` (:class:`bool`),
    ``meter`` (an OpenTelemetry ``Meter``), ``operation_duration`` and
    ``events`` (the instruments), ``_operation_bound`` (the
    :class:`~divak.metrics.bound.BoundHistogram` of
    ``operation_duration``), ``_custom`` (a :class:`dict` for the
    histograms it creates) and ``_series_of(instrument)`` (the
    :class:`~divak.metrics.series.Series` of an instrument).
    """

    if typing.TYPE_CHECKING:
        enabled: bool
        meter: otel_metrics.Meter
        operation_duration: otel_metrics.Histogram
        events: otel_metrics.Counter
        _operation_bound: BoundHistogram
        _custom: dict[tuple[str, str], otel_metrics.Histogram | None]

        def _series_of(self, instrument: str) -> metric_series.Series: ...

    def record_operation(
        self,
        name: str,
        seconds: float,
        context: otel_context.Context | None = None,
    ) -> None:
        """Record an operation's duration into ``divak.operation.duration``.

        :param name: ``divak.operation.name``, e.g. ``"query-db"``; cut to
            :data:`~divak.metrics.series.MAX_VALUE_LENGTH` characters
        :param seconds: the duration
        :param context: the context of the operation's span (exemplar)
        """
        if not self.enabled:
            return
        value = metric_series.bounded(name)  # the key is the attribute's value
        attributes = self._series_of(OPERATION_DURATION).bind(
            value, lambda: {"divak.operation.name": value}
        )
        bound = self._operation_bound
        bound.record(bound.set_of(attributes), seconds, context)

    def count_event(
        self, name: str, value: int | float = 1, attributes: Attributes | None = None
    ) -> None:
        """Add *value* to the ``divak.events`` counter.

        :param name: ``divak.event.name``, e.g. ``"cache.miss"``
        :param value: a non-negative amount
        :param attributes: more attributes, bounded (see
            :mod:`divak.metrics.series`)
        :raises ValueError: when *value* is negative
        """
        if value < 0:
            raise ValueError("an event count cannot be negative")
        if not self.enabled:
            return
        key, build = metric_series.custom_attributes(
            EVENTS, {"divak.event.name": name}, attributes
        )
        bound = self._series_of(EVENTS).bind(key, build)
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

        :param name: the instrument name, e.g. ``"queue.wait"``; a name the
            OpenTelemetry SDK refuses (longer than 255 characters, not
            ASCII...) records nothing and logs a WARNING
        :param value: the measurement
        :param unit: UCUM unit, e.g. ``"s"`` or ``"By"``; with ``"s"`` the
            histogram uses :data:`~divak.metrics.series.DURATION_BUCKETS`
        :param attributes: as for :meth:`count_event`
        :param context: the current request's context (exemplar)
        :param boundaries: bucket boundaries, used when the histogram is
            created
        """
        if not self.enabled:
            return
        # The SDK refuses names longer than 255 characters: every longer
        # one is refused, so the key keeps at most 256 of them.
        instrument = (name[:256], unit[:64])
        histogram = self._custom.get(instrument)
        if histogram is None:
            if instrument in self._custom:
                return  # refused before, said so then
            if len(self._custom) >= MAX_CUSTOM_INSTRUMENTS:
                logger.warning(
                    "too many histograms, not recording %s", metric_series.bounded(name)
                )
                return
            if boundaries is None and unit == "s":
                boundaries = metric_series.DURATION_BUCKETS
            try:
                histogram = self.meter.create_histogram(
                    name,
                    unit=unit,
                    description=f"Values of {name} handlers recorded.",
                    explicit_bucket_boundaries_advisory=boundaries,
                )
            except Exception as error:  # noqa: BLE001 - a bad name costs the value only
                logger.warning(
                    "not recording %s: %s",
                    metric_series.bounded(name),
                    metric_series.bounded(str(error)),
                )
                self._custom[instrument] = None
                return
            self._custom[instrument] = histogram
        key, build = metric_series.custom_attributes(name, {}, attributes)
        bound = self._series_of(name).bind(key, build)
        histogram.record(value, bound, context)


class ApplicationMetrics(HandlerMeasurements):
    """One application's ``MeterProvider`` and instruments.

    Made by :func:`new_application_metrics`, once per application (and
    again in a forked child).  Every recording method is cheap and never
    raises for bad input: it is called on the IOLoop for every request.
    The instruments come from one meter, ``divak`` with divak's version and
    the :data:`SCHEMA_URL` of the semantic conventions they follow.

    :param service_name: ``service.name`` of the metrics' resource, when
        no *resource* is given
    :param resource: the resource of the application's spans and logs
        (its tracer provider's), which the metrics share; it is given a
        ``service.instance.id``, one per process, when it has none
        (:func:`with_instance_id`)
    :param reporters: OpenTelemetry ``MetricExporter`` objects (e.g.
        :class:`divak.OTLPMetricsReporter`) each pushed to periodically by
        the SDK's ``PeriodicExportingMetricReader``
        (:func:`~divak.metrics.otlp.periodic_reader`)
    :param readers: more SDK ``MetricReader`` objects, used as they are
    :param scrape: keep the in-memory reader that
        :class:`divak.MetricsHandler` reads; without it only the reporters
        receive metrics (each reader costs a share of every measurement)
    :param cardinality_limit: attribute sets per instrument; measurements
        with a new set beyond it are recorded under
        :data:`~divak.metrics.series.OVERFLOW_ATTRIBUTES` and one WARNING is logged
    :param enabled: :data:`False` makes every method do nothing; so does
        having nothing to read the measurements (no scrape reader, reporter
        or reader, and no *provider*)
    :param runtime: add the process and runtime instruments
        (:class:`~divak.metrics.runtime.RuntimeMetrics`, once per provider)
        and start the IOLoop lag probe on the running IOLoop (none running:
        no lag is measured)
    :param provider: an SDK ``MeterProvider`` someone else made (the
        process's global one) to create the instruments from, instead of a
        provider of the application's own; its readers are the only ones
        (no scrape reader; *reporters* and *readers* cannot be added: one
        WARNING), and it is never shut down here
    :param not_scraped: why scrapes are not answered, when they are not
        (see :attr:`not_scraped`); a generic reason when omitted
    :param scope_labels: scrapes label every sample with
        ``otel_scope_name`` and ``otel_scope_version``, as OpenTelemetry's
        Prometheus exporters do (they make the answer about twice as big)

    .. attribute:: provider

       The SDK ``MeterProvider`` the instruments come from (:data:`None`
       when disabled).

    .. attribute:: owns_provider

       :data:`True` when :attr:`provider` is the application's own.

    .. attribute:: reader

       The ``InMemoryMetricReader`` scrapes read, or :data:`None`.

    .. attribute:: not_scraped

       :data:`None` when :class:`divak.MetricsHandler` answers scrapes
       from :attr:`reader`, else why not (the handler answers 404 with it).

    .. attribute:: resource

       The resource of the application's own provider (an adopted
       provider reports with its own).

    .. attribute:: runtime

       The :class:`~divak.metrics.runtime.RuntimeMetrics`, or :data:`None`.

    .. attribute:: exemplars

       The exemplars kept between scrapes
       (:class:`~divak.metrics.snapshot.Exemplars`).
    """

    def __init__(
        self,
        service_name: str = "",
        *,
        resource: Resource | None = None,
        reporters: typing.Sequence[MetricExporter] = (),
        readers: typing.Sequence[MetricReader] = (),
        scrape: bool = True,
        cardinality_limit: int = 2000,
        enabled: bool = True,
        runtime: bool = True,
        provider: MeterProvider | None = None,
        not_scraped: str | None = None,
        scope_labels: bool = True,
    ) -> None:
        if enabled and provider is None and not (scrape or reporters or readers):
            enabled = False  # nothing would ever read a measurement
        self.enabled = enabled
        self.cardinality_limit = cardinality_limit
        self.reader: InMemoryMetricReader | None = None
        self.provider: MeterProvider | None = None
        self.owns_provider = False
        self.not_scraped: str | None = None
        self.runtime: RuntimeMetrics | None = None
        self.exemplars = Exemplars()
        self.scope_labels = scope_labels
        self.pid = os.getpid()
        #: :data:`True` in a process forked after this object was made:
        #: the child makes its own (set once, at the fork).
        self.forked = False
        _watch_forks(self)
        #: The last snapshot, taken by :meth:`shutdown` when the process
        #: serves with siblings (see :mod:`divak.metrics.peers`).
        self.final_snapshot: dict[str, typing.Any] | None = None
        #: The endpoint sibling processes read this one's metrics from.
        self.peer: peers.Peer | None = None
        #: Where scrapes collect and encode (see :meth:`run_off_loop`).
        self.thread = MetricsThread()
        self._custom: dict[tuple[str, str], otel_metrics.Histogram | None] = {}
        self._series: dict[str, metric_series.Series] = {}
        if resource is None:
            resource = Resource.create(
                {SERVICE_NAME: service_name} if service_name else {}
            )
        self.resource = with_instance_id(resource)
        meter: otel_metrics.Meter
        if not enabled:
            self.not_scraped = not_scraped or "metrics are off for this application"
            meter = otel_metrics.NoOpMeter("divak")
        elif provider is not None:
            self.not_scraped = not_scraped or _GLOBAL_PROVIDER_REASON
            if reporters or readers:
                logger.warning(
                    "metrics reporters %s cannot take effect: %s; add them to "
                    "that provider instead",
                    ", ".join(map(repr, [*reporters, *readers])),
                    _GLOBAL_PROVIDER_REASON,
                )
            self.provider = provider
            meter = provider.get_meter("divak", __version__, SCHEMA_URL)
        else:
            all_readers: list[MetricReader] = []
            if scrape:
                self.reader = InMemoryMetricReader()
                all_readers.append(self.reader)
            else:
                self.not_scraped = not_scraped or "the scrape reader is off"
            all_readers.extend(readers)
            all_readers.extend(map(periodic_reader, reporters))
            self.provider = MeterProvider(
                metric_readers=all_readers, resource=self.resource
            )
            self.owns_provider = True
            meter = self.provider.get_meter("divak", __version__, SCHEMA_URL)
        self.meter = meter
        histogram = functools.partial(
            meter.create_histogram, explicit_bucket_boundaries_advisory=_BUCKETS
        )
        self.server_duration = histogram(
            SERVER_DURATION, "s", "Duration of HTTP server requests."
        )
        # Recorded straight into the SDK's aggregations of each attribute
        # set (see divak.metrics.bound), found through the inputs as
        # request_finished gets them: one dictionary lookup per request.
        self._server_bound = BoundHistogram(
            SERVER_DURATION, self.server_duration, self.owns_provider
        )
        self._server_sets: dict[tuple[typing.Any, ...], BoundSet] = {}
        #: Most entries of ``_server_sets``: its keys are raw input.
        self._server_sets_limit = 2 * cardinality_limit + 16
        # Counted in plain integers on the IOLoop, observed by the SDK when
        # it collects: two SDK measurements per request would cost more
        # than the whole request's other metrics.
        # Keyed by the attribute set's (method, scheme), :data:`None` for
        # the overflow set: at most the cardinality limit and one entries.
        self._active: dict[tuple[str, str] | None, list[typing.Any]] = {}
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
        self._client_bound = BoundHistogram(
            CLIENT_DURATION, self.client_duration, self.owns_provider
        )
        self._operation_bound = BoundHistogram(
            OPERATION_DURATION, self.operation_duration, self.owns_provider
        )
        self.events = meter.create_counter(
            EVENTS, "{event}", "Interesting events handlers counted."
        )
        if enabled and runtime and _first_runtime_of(self.provider):
            self.runtime = RuntimeMetrics(meter)
            # Made on the IOLoop's thread (the first request): the probe
            # measures the IOLoop the application serves on.
            self.runtime.start()

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
        key: tuple[str, str] | None = (
            metric_series.method_attribute(request.method),
            metric_series.key_text(request.protocol) or "",
        )
        entry = self._active.get(key)
        if entry is None:
            attributes = self._active_attributes(*key)  # type: ignore[misc]
            if attributes is metric_series.OVERFLOW_ATTRIBUTES:
                key = None  # one entry for all sets past the limit
            entry = self._active.setdefault(key, [attributes, 0])
        entry[1] += 1
        request.__dict__[_ACTIVE_ATTRIBUTE] = entry

    def _active_attributes(self, method: str, scheme: str) -> Attributes:
        return self._series_of(ACTIVE_REQUESTS).bind(
            (method, scheme),
            lambda: {"http.request.method": method, "url.scheme": scheme},
        )

    def _observe_active(
        self, options: otel_metrics.CallbackOptions
    ) -> typing.Iterator[otel_metrics.Observation]:
        # Called on the thread that collects, while the IOLoop may add
        # entries: list() copies the values in one step under the GIL.
        # One entry per attribute set (the overflow set included).
        for attributes, count in list(self._active.values()):
            yield otel_metrics.Observation(count, attributes)

    def request_finished(
        self,
        request: httputil.HTTPServerRequest,
        route: str | None,
        status_code: int | None,
        error_type: str | None = None,
        context: otel_context.Context | None = None,
        seconds: float | None = None,
        sampled: bool | None = None,
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
        :param sampled: whether the span of *context* is sampled (its
            trace flags), when the caller knows: it decides the exemplar
            without asking *context* again; default: read from *context*

        The attribute set of a method, route, status, error type, scheme
        and version seen before is found with one dictionary lookup, and
        the duration goes straight into the SDK's aggregations of that set
        (:class:`~divak.metrics.bound.BoundHistogram`).
        """
        active = request.__dict__.pop(_ACTIVE_ATTRIBUTE, None)
        if active is None:
            return
        active[1] -= 1
        inputs = (
            request.method,
            route,
            status_code,
            error_type,
            request.protocol,
            request.version,
        )
        bound = self._server_sets.get(inputs)
        if bound is None:
            bound = self._server_set(inputs)
        if seconds is None:
            seconds = request.request_time()
        self._server_bound.record(bound, seconds, context, sampled)

    def _server_set(self, inputs: tuple[typing.Any, ...]) -> BoundSet:
        """The bound attribute set of :meth:`request_finished`'s *inputs*,
        remembered for them when the method is a known one and there is
        room (a client's made-up methods never grow the cache)."""
        method, route, status_code, error_type, scheme, version = inputs
        if error_type is None and status_code is not None and status_code >= 500:
            error_type = str(status_code)
        key = (
            metric_series.method_attribute(method),
            metric_series.key_text(route),
            status_code,
            metric_series.key_text(error_type),
            metric_series.key_text(scheme),
            metric_series.key_text(version),
        )
        attributes = self._series_of(SERVER_DURATION).bind(
            key, lambda: metric_series.server_attributes(*key)
        )
        bound = self._server_bound.set_of(attributes)
        if key[0] == method and len(self._server_sets) < self._server_sets_limit:
            self._server_sets[inputs] = bound
        return bound

    # -- WebSocket connections -----------------------------------------------
    #: The WebSocket instruments, made at the first connection.
    _websockets: _WebSocketInstruments | None = None

    def websocket_opened(self, route: str | None) -> WebSocketRoute:
        """Count a new WebSocket connection of *route* as active.

        The first call makes the instruments ``divak.websocket.connections.active``
        (UpDownCounter), ``divak.websocket.connection.duration``
        (histogram, seconds) and ``divak.websocket.messages`` (counter,
        with ``direction`` ``received`` or ``sent``), all with
        ``http.route``; an application without WebSockets has none of them.

        :param route: the route template, or :data:`None`
        :returns: the route's :class:`WebSocketRoute`, whose ``received``
            and ``sent`` the connection adds each message to; give it to
            :meth:`websocket_closed`
        """
        if not self.enabled:
            return WebSocketRoute({}, False)
        instruments = self._websockets
        if instruments is None:
            instruments = self._websockets = _WebSocketInstruments(self.meter)
        route = metric_series.key_text(route)
        series = instruments.routes.get(route)
        if series is None:
            attributes = self._series_of(WEBSOCKET_CONNECTIONS).bind(
                route, lambda: {"http.route": route} if route else {}
            )
            overflow = attributes is metric_series.OVERFLOW_ATTRIBUTES
            key: typing.Hashable = _OVERFLOW_ROUTE if overflow else route
            series = instruments.routes.get(key)
            if series is None:
                series = instruments.routes[key] = WebSocketRoute(attributes, overflow)
        instruments.active.add(1, series.attributes)
        return series

    def websocket_closed(
        self,
        series: WebSocketRoute,
        seconds: float,
        context: otel_context.Context | None = None,
    ) -> None:
        """A WebSocket connection closed: no longer active; record its duration.

        :param series: what :meth:`websocket_opened` returned for it
        :param seconds: how long it was open
        :param context: the connection's context (exemplar)
        """
        instruments = self._websockets
        if instruments is None:  # metrics off
            return
        instruments.active.add(-1, series.attributes)
        instruments.duration.record(seconds, series.attributes, context)
    # -- retention ------------------------------------------------------------
    #: The ``divak.retention.dropped`` counter, made by its first count.
    _retention_dropped: otel_metrics.Counter | None = None

    def count_retention_dropped(self, reason: str) -> None:
        """Count one request retention did not export (``divak.retention.dropped``).

        A request the sampler dropped that retention would have exported
        (see :mod:`divak.tracing.retention`) but for its rate limit.  The
        counter is created by the first count.

        :param reason: ``divak.retained``, ``"error"`` or ``"slow"``
        """
        if not self.enabled:
            return
        counter = self._retention_dropped
        if counter is None:
            counter = self._retention_dropped = self.meter.create_counter(
                RETENTION_DROPPED,
                "{request}",
                "Failed or slow unsampled requests not exported: over the "
                "retention rate limit.",
            )
        counter.add(1, {"divak.retained": reason[:16]})

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
        protocol_version: str | None = None,
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
        :param protocol_version: ``network.protocol.version`` of the
            response, e.g. ``"1.1"``; :data:`None` when unknown (no
            response came)
        """
        if not self.enabled:
            return
        if error_type is None and status_code is not None and status_code >= 400:
            error_type = str(status_code)
        key = (
            metric_series.method_attribute(method),
            metric_series.key_text(host),
            port,
            status_code,
            metric_series.key_text(error_type),
            metric_series.key_text(protocol_version),
        )
        attributes = self._series_of(CLIENT_DURATION).bind(
            key, lambda: metric_series.client_attributes(*key)
        )
        bound = self._client_bound
        bound.record(bound.set_of(attributes), seconds, context)

    def collect(self) -> MetricsData | None:
        """Read the current (cumulative) state from the scrape reader.

        Safe from any thread: the SDK collects under its own locks, and the
        active-requests callback only reads integers.
        """
        if self.reader is None:
            return None
        return self.reader.get_metrics_data()

    def run_off_loop(
        self, function: typing.Callable[..., _T], *args: typing.Any
    ) -> asyncio.Future[_T]:
        """Run ``function(*args)`` on this application's metrics thread.

        Collecting and encoding a big registry takes long enough to stall
        every request of the IOLoop (hundreds of milliseconds for a few
        thousand series), so scrapes and sibling snapshots run there
        instead (see :mod:`divak.metrics.thread`).  Call it on the
        IOLoop's thread.

        :returns: a future of the result, resolved on the current IOLoop
        """
        return self.thread.run(function, *args)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the IOLoop lag probe, push the last metrics to the reporters
        and stop them.

        Blocks the calling thread (call it off the IOLoop), at most about
        *timeout* seconds.  With sibling processes, first leaves the final
        snapshot where they find it, so the sums they answer keep this
        process's counts.  A provider the application did not make is left
        running.
        """
        if self.runtime is not None:
            self.runtime.stop()
        if self.peer is not None and self.provider is not None:
            self.peer.save_final()
        provider, self.provider = self.provider, None
        if provider is not None and self.owns_provider:
            provider.shutdown(int(timeout * 1000))
        self.thread.stop()


#: The key of the WebSocket routes past the cardinality limit.
_OVERFLOW_ROUTE = ("otel.metric.overflow",)


class WebSocketRoute:
    """The WebSocket series of one route and its message counts.

    Shared by the route's connections, which add 1 to :attr:`received` or
    :attr:`sent` per message: plain integers on the IOLoop, observed by
    the SDK when it collects (``divak.websocket.messages``), as a counter
    per message would cost more than the rest of the message's telemetry.

    :param attributes: the route's attribute set (``http.route``)
    :param overflow: :data:`True` for the set of routes past the
        cardinality limit, whose messages carry no ``direction``
    """

    __slots__ = (
        "attributes",
        "received_attributes",
        "sent_attributes",
        "received",
        "sent",
    )

    def __init__(self, attributes: Attributes, overflow: bool) -> None:
        self.attributes = attributes
        self.received_attributes = (
            attributes if overflow else {**attributes, "direction": "received"}
        )
        self.sent_attributes = (
            attributes if overflow else {**attributes, "direction": "sent"}
        )
        #: Data messages received on the route's connections.
        self.received = 0
        #: Data messages sent on the route's connections.
        self.sent = 0


class _WebSocketInstruments:
    """One application's WebSocket instruments.

    See :meth:`ApplicationMetrics.websocket_opened`.
    """

    __slots__ = ("active", "duration", "messages", "routes")

    def __init__(self, meter: otel_metrics.Meter) -> None:
        self.routes: dict[typing.Hashable, WebSocketRoute] = {}
        self.active = meter.create_up_down_counter(
            WEBSOCKET_CONNECTIONS, "{connection}", "Open WebSocket connections."
        )
        self.duration = meter.create_histogram(
            WEBSOCKET_DURATION,
            "s",
            "Duration of WebSocket connections, from the upgrade to the close.",
            explicit_bucket_boundaries_advisory=WEBSOCKET_DURATION_BUCKETS,
        )
        self.messages = meter.create_observable_counter(
            WEBSOCKET_MESSAGES,
            [self._observe_messages],
            "{message}",
            "WebSocket data messages received and sent.",
        )

    def _observe_messages(
        self, options: otel_metrics.CallbackOptions
    ) -> typing.Iterator[otel_metrics.Observation]:
        # Called on the thread that collects: list() copies in one step.
        # Both directions of the overflow entry share one attribute set.
        totals: dict[int, list[typing.Any]] = {}
        for series in list(self.routes.values()):
            for attributes, count in (
                (series.received_attributes, series.received),
                (series.sent_attributes, series.sent),
            ):
                total = totals.get(id(attributes))
                if total is None:
                    totals[id(attributes)] = [attributes, count]
                else:
                    total[1] += count
        for attributes, count in totals.values():
            yield otel_metrics.Observation(count, attributes)


#: Every ApplicationMetrics of this process, flagged ``forked`` in a child.
_ALIVE: weakref.WeakSet[ApplicationMetrics] = weakref.WeakSet()
_fork_hook = False


def _watch_forks(metrics: ApplicationMetrics) -> None:
    global _fork_hook
    if not _fork_hook:  # POSIX only, as divak
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True
    _ALIVE.add(metrics)


def _after_fork_in_child() -> None:
    for metrics in list(_ALIVE):
        metrics.forked = True


def new_application_metrics(
    settings: typing.Mapping[str, typing.Any],
    resource: Resource,
    reporters: typing.Sequence[MetricExporter] = (),
) -> ApplicationMetrics:
    """The :class:`ApplicationMetrics` of an application with *settings*.

    The application's instrumentation (:class:`divak.Recorder`) calls it
    once, on the IOLoop's thread (the first request), and again in a
    forked child; nothing else keeps the result.  What decides:

    * ``settings['metrics']`` (default :data:`True`; :data:`False` turns
      metrics off), and ``OTEL_SDK_DISABLED``
      (:func:`divak.settings.sdk_disabled`), which turns them off too;
    * with ``settings['divak_global_provider']`` true (the default), an
      SDK ``MeterProvider`` the process set globally before (your start-up
      code, ``opentelemetry-instrument``) makes the instruments, so its
      readers see them; divak does not add its scrape reader to a provider
      it did not make, so :class:`divak.MetricsHandler` then answers 404
      and says why;
    * otherwise the application makes its own provider, with the scrape
      reader when ``OTEL_METRICS_EXPORTER`` names ``prometheus`` (the
      default), and the *reporters* added in code, else the exporters the
      variable names (:func:`divak.metrics.otlp.readers_from_env`);
    * ``settings['runtime_metrics']`` (default :data:`True`): the process
      and runtime instruments and the IOLoop lag probe
      (:mod:`divak.metrics.runtime`);
    * ``settings['metrics_cardinality_limit']`` (default 2000);
    * ``settings['metrics_scope_labels']`` (default :data:`True`):
      ``otel_scope_name`` and ``otel_scope_version`` on every sample
      scraped.

    When the process serves with sibling processes (see
    :mod:`divak.metrics.peers`), it also starts answering their scrapes.

    :param settings: the application's settings
    :param resource: the resource of the application's spans (its tracer
        provider's, or the one of the provider it adopted): the metrics
        and the spans share it
    :param reporters: OpenTelemetry ``MetricExporter`` objects to push to
    """
    enabled = bool(settings.get("metrics", True))
    reason = None if enabled else "settings['metrics'] is false"
    if enabled and sdk_disabled():
        enabled, reason = False, "OTEL_SDK_DISABLED is true"
    provider: MeterProvider | None = None
    scrape, readers = False, list[MetricReader]()
    if enabled and settings.get("divak_global_provider", True):
        current = otel_metrics.get_meter_provider()
        if isinstance(current, MeterProvider):
            provider = current
            logger.info(
                "divak's instruments are recorded by the global MeterProvider"
                " the process set; MetricsHandler answers 404"
            )
    if enabled and provider is None:
        scrape, readers = readers_from_env(push=not reporters)
        if not scrape:
            reason = "OTEL_METRICS_EXPORTER does not name prometheus"
    metrics = ApplicationMetrics(
        resource=resource,
        reporters=reporters,
        readers=readers,
        scrape=scrape,
        cardinality_limit=int(settings.get("metrics_cardinality_limit", 2000)),
        enabled=enabled,
        runtime=bool(settings.get("runtime_metrics", True)),
        provider=provider,
        not_scraped=reason,
        scope_labels=bool(settings.get("metrics_scope_labels", True)),
    )
    if metrics.reader is not None:
        peers.join(metrics)
    return metrics


#: Why the instruments of an adopted global provider are not scraped here.
_GLOBAL_PROVIDER_REASON = (
    "the process set a global MeterProvider before divak started, and divak's"
    " instruments are recorded by it (its readers export them); divak adds no"
    " reader to a provider it did not make; set"
    " settings['divak_global_provider'] = False for a provider of the"
    " application's own"
)

#: The providers that have the runtime instruments, one set each.
_RUNTIME_PROVIDERS: weakref.WeakSet[MeterProvider] = weakref.WeakSet()


def _first_runtime_of(provider: MeterProvider | None) -> bool:
    """:data:`True` the first time *provider* is asked, which then gets the
    runtime instruments: applications sharing a provider add them once."""
    if provider is None or provider in _RUNTIME_PROVIDERS:
        return False
    _RUNTIME_PROVIDERS.add(provider)
    return True


#: ``(pid, id)``: the ``service.instance.id`` this process adds to a
#: resource that has none.
_instance_id: tuple[int, str] | None = None


def with_instance_id(resource: Resource) -> Resource:
    """*resource*, with a ``service.instance.id`` when it has none.

    Recent OpenTelemetry SDKs give every resource ``Resource.create``
    makes the same ``service.instance.id`` per process, and *resource* is
    then returned as it is; with an older SDK the id is made here, once
    per process (again in a forked child), so all the applications of a
    process report the same one, and forked children different ones.

    :param resource: a resource, e.g. a tracer provider's
    """
    global _instance_id
    if SERVICE_INSTANCE_ID in resource.attributes:
        return resource
    pid = os.getpid()
    if _instance_id is None or _instance_id[0] != pid:
        _instance_id = (pid, str(uuid.uuid4()))
    return resource.merge(Resource({SERVICE_INSTANCE_ID: _instance_id[1]}))


@typing.runtime_checkable
class MetricsSource(typing.Protocol):
    """An application whose metrics :class:`divak.MetricsHandler` serves.

    :class:`divak.Recorder` is one: its ``divak_metrics`` is the
    :class:`ApplicationMetrics` its instrumentation owns.
    """

    @property
    def divak_metrics(self) -> ApplicationMetrics:
        """The application's metrics."""
