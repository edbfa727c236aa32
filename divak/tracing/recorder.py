"""Tracing: the application mix-in :class:`Recorder`.

The application owns the life of a request's trace.  :class:`Recorder`
overrides Tornado's :meth:`~tornado.web.Application.get_handler_delegate`
and answers every routed request with a
:class:`~divak.tracing.pipeline.RequestPipeline`, the one object that
starts the request's span, keeps its context current for everything
Tornado runs for it, writes its access line, records its metrics and
exceptions and ends the span — whatever mix-ins the handler has, 404s
and ready-made handlers included.  The application's configuration and
telemetry state live in its
:class:`~divak.tracing.instrumentation.Instrumentation`.
:class:`~divak.RequestTracker` (in :mod:`divak.tracing.tracker`) only
adds conveniences over the request's context.
"""

from __future__ import annotations

import logging
import time
import typing

from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from tornado import httputil, web

from divak import debug, propagation
from divak.context import RequestContext, request_context_of
from divak.export.queue import SpanQueue
from divak.logs.access import AccessLogger
from divak.logs.ids import install_log_ids
from divak.metrics.instruments import ApplicationMetrics
from divak.tracing import headers
from divak.tracing.instrumentation import Instrumentation
from divak.tracing.pipeline import RequestPipeline, watch_uncaught_exceptions
from divak.tracing.retention import RetentionPolicy, new_retention
from divak.tracing.websocket import WebSocketConnections

__all__ = ["Recorder"]

logger = logging.getLogger(__name__)


#: ``hook(request, status_code, headers)``: see
#: :attr:`Recorder.divak_response_hooks`.
ResponseHook = typing.Callable[
    [httputil.HTTPServerRequest, int, httputil.HTTPHeaders], None
]


class Recorder(AccessLogger):
    """Application mix-in that traces every request and exports the spans.

    To use it:

    * mix it into the application class, e.g.
      ``class Application(divak.Recorder, divak.Application)``;
    * in ``__init__``, after calling ``super().__init__()``, call
      :meth:`set_divak_service`, :meth:`add_divak_reporter` and
      :meth:`add_divak_propagator` as needed.

    What it provides, for every request whatever its handler (no handler
    mix-in needed; 404s, :class:`~divak.StatusHandler` and error paths
    included):

    * a SERVER span named ``"{METHOD} {route}"`` (``GET /items/{item_id}``)
      with OpenTelemetry's stable HTTP server attributes, parented by the
      trace context the propagators extracted, current while the handler
      runs (so any OpenTelemetry instrumentation nests under it) and ended
      after the access log line, once the handler's task is done; 5xx
      responses and unexpected exceptions (also ones raised after
      ``finish()``) set status ERROR with ``error.type``, 4xx leave it
      unset; a client that disconnects first ends it with ``error.type``
      ``client_disconnected`` (see
      :class:`~divak.tracing.pipeline.RequestPipeline`);
    * the request's ids on every log record written while it is handled
      (see :mod:`divak.logs.ids`), the correlation id echoed in the response;
    * an access log line per request (:meth:`log_request`, from
      :class:`~divak.logs.access.AccessLogger`);
    * the reporters, each behind a bounded :class:`~divak.export.queue.SpanQueue`
      that counts the spans it drops (:attr:`divak_dropped_spans`);
    * for a :class:`tornado.websocket.WebSocketHandler`, one span from the
      upgrade request until the connection closes, with its message
      counts and close code, its metrics and a second access line at the
      close (see :doc:`websocket`; :attr:`divak_websockets`);
    * failed requests exported even when the sampler dropped them, slow
      ones too when asked (:meth:`set_divak_retention`).

    The OpenTelemetry pipeline: the
    application builds its own SDK ``TracerProvider`` on first use (a
    forked child builds its own) and makes it the global provider when
    none is set, so spans of other instrumentation join the same
    pipeline; when the process already has an SDK provider of its own,
    divak adds its reporters to it instead of making a second one.  Each
    application's reporters receive the spans of its own requests only
    (see "Which side wins" in :doc:`opentelemetry`).

    .. rubric:: settings['service']

    Used as the service name when :meth:`set_divak_service` was not
    called; then the ``OTEL_SERVICE_NAME`` environment variable.

    .. rubric:: settings['divak_global_provider']

    :data:`False` keeps the application's provider private (it never
    becomes, nor uses, the global provider).  Default :data:`True`.

    .. rubric:: settings['divak_websocket_message_spans']

    :data:`True` gives every received WebSocket message a span (default
    :data:`False`; see :mod:`divak.tracing.websocket`).
    """

    #: Functions ``hook(request, status_code, headers)`` that adjust the
    #: headers of every response, called by the application's one divak
    #: output transform before the first chunk is written (after the
    #: correlation id is echoed).  :class:`divak.Application` and
    #: :class:`divak.Runner`'s server add theirs here instead of output
    #: transforms of their own: one transform per response.
    divak_response_hooks: list[ResponseHook]
    #: Functions ``hook(request)`` called when a request's headers arrived
    #: and before it is routed (:meth:`find_handler`), every request:
    #: :class:`divak.Runner`'s server notes there which connections are
    #: busy, instead of wrapping Tornado's delegate in one of its own.
    divak_request_hooks: list[typing.Callable[[httputil.HTTPServerRequest], None]]

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        # Before super().__init__: a divak.Application later in the bases
        # adds its hook there.
        self.divak_response_hooks = []
        self.divak_request_hooks = []
        super().__init__(*args, **kwargs)
        install_log_ids()
        watch_uncaught_exceptions()
        #: The application's :class:`~divak.tracing.instrumentation.Instrumentation`:
        #: its one place of telemetry configuration and state.
        self.divak_instrumentation = Instrumentation(self)
        #: The application's WebSocket connections and the handler classes
        #: that serve them (:class:`~divak.tracing.websocket.WebSocketConnections`).
        self.divak_websockets = WebSocketConnections(self.divak_instrumentation)
        self.add_transform(self._divak_transform)  # type: ignore[arg-type]
        if debug.page_path(self.settings, None) is not None:
            self.set_divak_debug_page()

    # -- configuration ---------------------------------------------------
    def set_divak_service(self, service_name: str) -> None:
        """Set the service name reported as ``service.name``.

        It wins over ``settings['service']`` and is also the default
        ``Server`` header of a :class:`divak.Application`
        (``settings['server_header']`` wins).  It is kept by the
        application's instrumentation only; the settings are left as given.

        Under a global provider the process set before (see "Which side
        wins" in :doc:`opentelemetry`) that provider's ``service.name``
        wins: one WARNING naming both names is logged when tracing starts.

        :param service_name: the name traces show for this service
        :raises RuntimeError: after tracing started (first request)
        """
        self.divak_instrumentation.check_not_started()
        self.divak_instrumentation.service = service_name

    def add_divak_reporter(self, reporter: SpanExporter) -> None:
        """Add a reporter that receives every finished, sampled span.

        :param reporter: a :class:`~divak.ZipkinReporter`,
            :class:`~divak.LoggingReporter` or any OpenTelemetry
            ``SpanExporter``
        :raises RuntimeError: after tracing started (first request)
        """
        self.divak_instrumentation.check_not_started()
        self.divak_instrumentation.reporters.append(reporter)

    def add_divak_propagator(self, propagator: TextMapPropagator) -> None:
        """Add a propagator for incoming and outgoing headers.

        Extraction tries the propagators in the order they were added and
        takes the first valid trace context; injection writes all of them.

        :param propagator: a :class:`~divak.TraceContextPropagation`,
            :class:`~divak.ZipkinPropagation`,
            :class:`~divak.RequestIdPropagation` or any OpenTelemetry
            ``TextMapPropagator``
        """
        self.divak_instrumentation.add_propagator(propagator)

    def set_divak_retention(
        self,
        errors: bool = True,
        slow: float | None = None,
        max_per_second: float = 10.0,
    ) -> None:
        """Export failed and slow requests even when the sampler drops them.

        A request the sampler did not sample is exported anyway, with its
        ``record_operation`` spans and ``divak.retained`` = ``"error"`` or
        ``"slow"``, when it ends with a 5xx status or an unexpected
        exception (*errors*), or when its response took at least *slow*
        seconds.  The decision is local, at the end of the request: the
        headers it sent downstream said "not sampled" (see "Retention" in
        :doc:`tracing` and :mod:`divak.tracing.retention`).  Sampled
        requests are not affected.

        Without a call, the settings ``divak_retention_errors``,
        ``divak_retention_slow`` and ``divak_retention_max_per_second``
        apply, else the environment variables ``DIVAK_RETENTION_ERRORS``,
        ``DIVAK_RETENTION_SLOW`` and ``DIVAK_RETENTION_MAX_PER_SECOND``, else
        the defaults of this method (errors kept, no slow threshold).  A
        call wins over them, with all three arguments.

        :param errors: keep failed requests
        :param slow: keep requests that took at least this many seconds;
            :data:`None` for no threshold
        :param max_per_second: most requests retained per second (a token
            bucket of as many); the others are counted in the
            ``divak.retention.dropped`` counter and logged, one WARNING a
            minute at most
        :raises ValueError: for a negative *slow* or *max_per_second*
        :raises RuntimeError: after tracing started (first request)
        """
        instrumentation = self.divak_instrumentation
        instrumentation.check_not_started()
        policy = RetentionPolicy(
            bool(errors),
            None if slow is None else float(slow),
            float(max_per_second),
        )
        instrumentation.retention = new_retention(self.settings, policy)

    def add_divak_metrics_reporter(self, reporter: typing.Any) -> None:
        """Push the application's metrics to *reporter* periodically.

        :param reporter: an OpenTelemetry ``MetricExporter``, e.g.
            :class:`divak.OTLPMetricsReporter`
        :raises RuntimeError: once the metrics were created (first request)
        """
        self.divak_instrumentation.add_metrics_reporter(reporter)

    @property
    def divak_debug_stats(self) -> debug.RequestStats | None:
        """The debug page's statistics once :meth:`set_divak_debug_page` served it."""
        return self.divak_instrumentation.debug_stats

    def set_divak_debug_page(self, path: str | None = None) -> None:
        """Serve the live debug page at *path* (see :doc:`debug`).

        Called by ``__init__`` when ``settings['divak_debug_page']`` or the
        ``DIVAK_DEBUG_PAGE`` environment variable names a path, so a
        deployment turns the page on without code.  Off by default.

        :param path: e.g. ``"/divak"``; default ``settings['divak_debug_page']``,
            then ``DIVAK_DEBUG_PAGE``; no page when none is set
        :raises ValueError: for a path not starting with ``/``
        :raises RuntimeError: when the page is already served at another path
        """
        path = debug.page_path(self.settings, path)
        served = self.divak_instrumentation.debug_path
        if served is not None:
            if path is None or path == served:
                return
            raise RuntimeError(f"the debug page is already served at {served}")
        if path is not None:
            self.divak_instrumentation.debug_stats = debug.install(
                self, path, source=_ServiceState(self)
            )
            self.divak_instrumentation.debug_path = path

    # -- runtime ---------------------------------------------------------
    @property
    def divak_propagation(self) -> propagation.Propagation:
        """The application's propagators, combined."""
        return self.divak_instrumentation.propagation

    @property
    def divak_metrics(self) -> ApplicationMetrics:
        """The application's metrics (what :class:`divak.MetricsHandler` serves)."""
        return self.divak_instrumentation.metrics

    @property
    def divak_tracer_provider(self) -> TracerProvider:
        """The ``TracerProvider`` of the application's spans, built on first use."""
        return self.divak_instrumentation.provider

    @property
    def divak_tracer(self) -> trace.Tracer:
        """The tracer that makes the application's spans."""
        return self.divak_instrumentation.tracer

    @property
    def divak_service_name(self) -> str:
        """The ``service.name`` of the application's spans."""
        return self.divak_instrumentation.service_name

    @property
    def divak_span_queues(self) -> list[SpanQueue]:
        """The :class:`~divak.export.queue.SpanQueue` of each reporter.

        Empty until tracing started (the first request).
        """
        return list(self.divak_instrumentation.span_queues)

    @property
    def divak_dropped_spans(self) -> int:
        """Finished, sampled spans that never reached a collector.

        The sum over the reporters of the spans dropped because a queue was
        full and the spans a reporter failed to deliver (after its
        retries).  0 while every collector keeps up.
        """
        return self.divak_instrumentation.dropped_spans

    @property
    def divak_websocket_connections(self) -> int:
        """WebSocket connections open now."""
        return len(self.divak_websockets)

    def divak_force_flush(self, timeout: float = 5.0) -> bool:
        """Export every finished span now.

        Blocks the calling thread; call it off the IOLoop (the runner does).

        :param timeout: seconds to wait at most
        :returns: :data:`True` when everything was exported in time
        """
        return self.divak_instrumentation.force_flush(timeout)

    def divak_shutdown(self) -> None:
        """Flush and stop the reporters; the application traces no more.

        Blocks the calling thread until the reporters finished their last
        upload.
        """
        self.divak_instrumentation.shutdown()

    # -- Tornado's hooks -------------------------------------------------
    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: typing.Any
    ) -> typing.Any:
        """Tornado's routing, after the :attr:`divak_request_hooks` ran."""
        for hook in self.divak_request_hooks:
            hook(request)
        return super().find_handler(request, **kwargs)  # type: ignore[misc]

    def get_handler_delegate(
        self,
        request: httputil.HTTPServerRequest,
        target_class: type[web.RequestHandler],
        target_kwargs: dict[str, typing.Any] | None = None,
        path_args: list[bytes] | None = None,
        path_kwargs: dict[str, bytes] | None = None,
    ) -> typing.Any:
        """The request's :class:`~divak.tracing.pipeline.RequestPipeline`.

        Tornado calls it once it routed *request* to *target_class*; the
        pipeline starts the request's span and serves the request with
        Tornado's own delegate, with the request's context current.  A
        :class:`~tornado.websocket.WebSocketHandler` class is served by a
        subclass that counts its messages
        (:meth:`~divak.tracing.websocket.WebSocketConnections.handler_class`).
        """
        delegate = super().get_handler_delegate(
            request,
            self.divak_websockets.handler_class(target_class),
            target_kwargs,
            path_args,
            path_kwargs,
        )
        return RequestPipeline(
            self.divak_instrumentation, request, target_class, delegate
        )

    def _divak_transform(
        self, request: httputil.HTTPServerRequest
    ) -> web.OutputTransform:
        # Called by Tornado for every response, whatever handler serves it.
        instrumentation = self.divak_instrumentation
        request_context = request_context_of(request)
        captured = instrumentation.captured_server
        hooks = self.divak_response_hooks
        if hooks or (
            request_context is not None
            and (instrumentation.echo_headers or captured.response)
        ):
            return _ResponseHeaders(
                request,
                request_context,
                instrumentation.echo_headers,
                captured if captured.response else None,
                hooks,
            )
        return _IDENTITY


class _Identity(web.OutputTransform):
    def __init__(self) -> None:
        pass


_IDENTITY = _Identity()


class _ResponseHeaders(web.OutputTransform):
    """Per request: echo the correlation id, record the listed response
    headers, run the application's response hooks."""

    __slots__ = ("request", "request_context", "echo", "captured", "hooks")

    def __init__(
        self,
        request: httputil.HTTPServerRequest,
        request_context: RequestContext | None,
        echo: tuple[str, ...],
        captured: headers.CapturedHeaders | None,
        hooks: list[ResponseHook],
    ) -> None:
        self.request = request
        self.request_context = request_context
        self.echo = echo
        self.captured = captured
        self.hooks = hooks

    def transform_first_chunk(
        self,
        status_code: int,
        response_headers: httputil.HTTPHeaders,
        chunk: bytes,
        finishing: bool,
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        request_context = self.request_context
        if request_context is not None:
            request_id = request_context.request_id
            if request_id:
                for name in self.echo:
                    if name not in response_headers:
                        response_headers[name] = request_id
            if self.captured is not None:
                span = request_context.span
                if span.is_recording():
                    span.set_attributes(
                        self.captured.response_attributes(response_headers)
                    )
        for hook in self.hooks:
            hook(self.request, status_code, response_headers)
        return status_code, response_headers, chunk


@typing.runtime_checkable
class _Draining(typing.Protocol):
    """An application that knows whether it drains (:class:`divak.Application`)."""

    draining: bool


class _ServiceState:
    """What the debug page shows of a :class:`Recorder` application's state
    (:class:`divak.debug.DebugSource`), read on each view."""

    def __init__(self, application: Recorder) -> None:
        self.application = application
        self.instrumentation = application.divak_instrumentation

    @property
    def divak_queued_spans(self) -> int:
        return sum(queue.pending_spans for queue in self.instrumentation.span_queues)

    @property
    def divak_dropped_spans(self) -> int:
        return self.instrumentation.dropped_spans

    @property
    def divak_requests_in_flight(self) -> int:
        return self.instrumentation.requests_in_flight

    @property
    def divak_websocket_connections(self) -> int:
        return self.application.divak_websocket_connections

    @property
    def divak_uptime(self) -> float:
        return time.monotonic() - self.instrumentation.created

    @property
    def draining(self) -> bool:
        application = self.application
        return isinstance(application, _Draining) and bool(application.draining)
