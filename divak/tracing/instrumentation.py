"""Instrumentation: one application's tracer, and the SERVER span of a request.

:class:`Instrumentation` is the composed object an application holds
(:attr:`divak.Recorder.divak_instrumentation`): the service name, the
reporters and their span queues, the propagators, the sampler, the route
table and the OpenTelemetry ``TracerProvider``, plus the three steps of a
request's span — :meth:`~Instrumentation.start_request`,
:meth:`~Instrumentation.finish_request` and
:meth:`~Instrumentation.client_disconnected`.  The application mix-in
calls them from Tornado's public hooks; the handler mix-ins only read the
:class:`~divak.context.RequestContext` they produce.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import typing

from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httputil, web

from divak import propagation, redaction, semconv
from divak.context import RequestContext
from divak.export.queue import SpanQueue
from divak.export.reporters import reporters_from_env, warn_if_spans_go_to_log
from divak.metrics.instruments import ApplicationMetrics, new_application_metrics
from divak.tracing import headers
from divak.tracing.excluded import excluded_url_patterns, excluded_urls
from divak.tracing.provider import (
    SpanOwner,
    join,
    tracer_provider,
    unsampled_span,
    warn_if_tornado_instrumented,
)
from divak.tracing.routes import RouteTable
from divak.version import __version__

__all__ = ["CLIENT_DISCONNECTED", "Instrumentation"]

logger = logging.getLogger(__name__)

#: ``error.type`` of a SERVER span whose client closed the connection
#: before the response was finished.
CLIENT_DISCONNECTED = "client_disconnected"


class Instrumentation:
    """The tracing of one application: configuration, provider, request spans.

    Made by :class:`divak.Recorder`; configure it through the
    application's ``set_divak_service``, ``add_divak_reporter``,
    ``add_divak_propagator`` and ``set_divak_sample_probability``.  The
    provider is built on first use (the first request), so a forked
    child builds its own; the configuration is fixed from then on.

    :param application: the Tornado application it instruments
    """

    def __init__(self, application: web.Application) -> None:
        self.application = application
        self.settings = application.settings
        self.service: str | None = None
        self.reporters: list[SpanExporter] = []
        self.propagators: list[TextMapPropagator] = []
        self.sampler: sampling.Sampler | None = None
        self.routes = RouteTable(application)
        #: Response headers that echo the correlation id.
        self.echo_headers: tuple[str, ...] = ()
        #: The :class:`~divak.export.queue.SpanQueue` of each reporter.
        self.span_queues: list[SpanQueue] = []
        self.service_name = ""
        self._propagation: propagation.Propagation | None = None
        self._provider: TracerProvider | None = None
        self._own_provider = False
        self._span_owner: SpanOwner | None = None
        self._tracer: trace.Tracer | None = None
        self._metrics: ApplicationMetrics | None = None
        #: OpenTelemetry ``MetricExporter`` objects the metrics are pushed to.
        self.metrics_reporters: list[MetricExporter] = []
        #: Query parameter names whose values are redacted wherever a URL
        #: is logged or recorded (:func:`divak.redaction.redacted_query_params`).
        self.redacted_params = redaction.redacted_query_params(self.settings)
        #: ``function(uri) -> bool``, true for a request left untraced
        #: (:func:`~divak.tracing.excluded.excluded_urls`); :data:`None` when no
        #: pattern is configured.
        self.excluded: typing.Callable[[str], bool] | None = (
            excluded_urls(self.settings)
            if excluded_url_patterns(self.settings)
            else None
        )
        self._max_length = int(
            self.settings.get(
                "divak_max_request_attribute_length",
                semconv.MAX_REQUEST_ATTRIBUTE_LENGTH,
            )
        )

    # -- configuration -------------------------------------------------
    @property
    def started(self) -> bool:
        """:data:`True` once the provider was built (the configuration is fixed)."""
        return self._provider is not None

    def check_not_started(self) -> None:
        """:raises RuntimeError: when the provider was already built"""
        if self._provider is not None:
            raise RuntimeError("tracing already started for this application")

    def add_propagator(self, propagator: TextMapPropagator) -> None:
        """Add *propagator*; see :meth:`divak.Recorder.add_divak_propagator`."""
        self.propagators.append(propagator)
        self._propagation = None
        if isinstance(propagator, propagation.RequestIdPropagation):
            if propagator.header_name not in self.echo_headers:
                self.echo_headers += (propagator.header_name,)

    @property
    def propagation(self) -> propagation.Propagation:
        """The application's propagators, combined.

        When none but :class:`~divak.RequestIdPropagation` was given in
        code, the ones ``OTEL_PROPAGATORS`` names come first (default: W3C
        Trace Context and Baggage, as OpenTelemetry's SDK).
        """
        combined = self._propagation
        if combined is None:
            propagators = list(self.propagators)
            if all(
                isinstance(p, propagation.RequestIdPropagation) for p in propagators
            ):
                # No trace context given in code: OTEL_PROPAGATORS, else W3C
                # Trace Context and Baggage, as OpenTelemetry's SDK.
                propagators[0:0] = propagation.propagators_from_env()
            combined = self._propagation = propagation.Propagation(propagators)
        return combined

    # -- the provider --------------------------------------------------
    @property
    def provider(self) -> TracerProvider:
        """The ``TracerProvider`` the application's spans come from."""
        if self._provider is None:
            self._start()
        return typing.cast(TracerProvider, self._provider)

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer that makes the application's spans."""
        tracer = self._tracer
        if tracer is None:
            self._start()
            tracer = typing.cast(trace.Tracer, self._tracer)
        return tracer

    def _start(self) -> None:
        name = self.service or self.settings.get("service")
        span_reporters = self.reporters or reporters_from_env()
        self.span_queues = [SpanQueue(reporter) for reporter in span_reporters]
        sdk_provider, self._own_provider = tracer_provider(
            self.settings, name, self.sampler
        )
        self._span_owner = join(sdk_provider, self.span_queues)
        resource = sdk_provider.resource
        self.service_name = str(resource.attributes.get(SERVICE_NAME, ""))
        self._tracer = sdk_provider.get_tracer("divak", __version__)
        self._provider = sdk_provider
        warn_if_tornado_instrumented()

    @property
    def metrics(self) -> ApplicationMetrics:
        """The application's :class:`~divak.metrics.instruments.ApplicationMetrics`.

        Made on first use, after the provider (for the service name), and
        again in a forked child.
        """
        current = self._metrics
        if current is None or current.forked:
            self.provider  # noqa: B018 - the service name first
            current = self._metrics = new_application_metrics(
                self.settings, self.service_name, self.metrics_reporters
            )
        return current

    def add_metrics_reporter(self, reporter: MetricExporter) -> None:
        """Push the metrics to *reporter*.

        See :meth:`divak.Recorder.add_divak_metrics_reporter`.

        :raises RuntimeError: once the metrics were created (first request)
        """
        if self._metrics is not None:
            raise RuntimeError("metrics already started for this application")
        self.metrics_reporters.append(reporter)

    def spans_go_to_log(self) -> bool:
        """Log one WARNING when no reporter is configured; see
        :func:`divak.export.reporters.warn_if_spans_go_to_log`."""
        return warn_if_spans_go_to_log(self.reporters)

    @property
    def dropped_spans(self) -> int:
        """Finished, sampled spans that never reached a collector."""
        return sum(q.dropped_spans + q.failed_spans for q in self.span_queues)

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export every finished span now; blocks up to *timeout* seconds.

        :returns: :data:`True` when everything was exported in time
        """
        if self._provider is None:
            return True
        if self._own_provider:
            return self._provider.force_flush(int(timeout * 1000))
        deadline = time.monotonic() + timeout
        return all(
            queue.force_flush(int(max(deadline - time.monotonic(), 0) * 1000))
            for queue in self.span_queues
        )

    def shutdown(self) -> None:
        """Flush and stop the reporters (not a provider divak did not make).

        The application's metrics are flushed and stopped too.
        """
        current = self._metrics
        if current is not None and not current.forked:
            current.shutdown()
        if self._provider is None:
            return
        if self._own_provider:
            self._provider.shutdown()
        elif self._span_owner is not None:
            self._span_owner.shutdown()

    # -- one request ---------------------------------------------------
    def start_request(
        self, request: httputil.HTTPServerRequest, handler_class: type
    ) -> RequestContext:
        """Extract the request's context and start its SERVER span.

        Stores the :class:`~divak.context.RequestContext` as
        ``request.divak_context`` (and the correlation id as
        ``request.divak_request_id``, divak-tornado's name).

        :param request: the request Tornado routed
        :param handler_class: the handler class that will serve it
        """
        tracer = self.tracer  # builds the provider (and the service name) once
        owner = typing.cast(SpanOwner, self._span_owner)
        parent = owner.mark(self.propagation.extract(request.headers))
        request_id = propagation.get_request_id(parent)
        route = self.routes.template(handler_class, request.path)
        request_context = RequestContext(parent, request_id, self.service_name, route)
        request_context.request = request
        self.metrics.request_started(request)
        request.divak_context = request_context  # type: ignore[attr-defined]
        request.divak_request_id = request_id  # type: ignore[attr-defined]
        method = request.method or "GET"
        known = method if method in semconv.KNOWN_METHODS else "_OTHER"
        name = semconv.span_name(known, route)
        excluded = self.excluded
        span: trace.Span | None
        if excluded is not None and excluded(request.uri or ""):
            # Not traced: the upstream trace context goes on unchanged.
            request_context.set_span(trace.get_current_span(parent))
            request_context.ended = True
            return request_context
        span = unsampled_span(tracer, name, parent)
        if span is None:
            span = tracer.start_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                start_time=time.time_ns() - int(request.request_time() * 1e9),
            )
            if span.is_recording():
                span.set_attributes(
                    semconv.server_attributes(
                        request,
                        known,
                        route,
                        xheaders=bool(self.settings.get("xheaders")),
                        limit=self._max_length,
                        redacted=self.redacted_params,
                    )
                )
                if request_id:
                    span.set_attribute("divak.request_id", request_id)
                captured = headers.captured_headers(self.application)
                if captured.request:
                    span.set_attributes(captured.request_attributes(request.headers))
        request_context.set_span(span)
        return request_context

    def record_exception(
        self, request_context: RequestContext, value: BaseException | None
    ) -> None:
        """Record an unexpected exception on the request's span, once.

        A :class:`tornado.web.HTTPError` (and Tornado's ``Finish``) is an
        answer, not a failure, and is ignored.
        """
        if (
            value is None
            or isinstance(value, (web.HTTPError, web.Finish))
            or request_context.exception_type is not None
            or request_context.ended
        ):
            return
        request_context.exception_type = semconv.exception_type(value)
        span = request_context.span
        if span.is_recording():
            span.record_exception(value)

    def finish_request(self, request_context: RequestContext, status_code: int) -> None:
        """The response was sent with *status_code*: end the span.

        Called by the application's ``log_request``.  An exception being
        handled (Tornado sends error responses from inside its ``except``
        block) is recorded.  When the handler's own task is still running
        (code after ``finish()``), the span ends when that task is done,
        with the time of the response, so an exception raised after the
        response still marks it.
        """
        if request_context.status_code is not None:
            return
        request_context.status_code = status_code
        if request_context.ended or not request_context.span.is_recording():
            # Nothing to mark on an unsampled or untraced request: done now.
            self._measure(request_context)
            request_context.ended = True
            request_context.context = request_context.task = None
            request_context.request = None
            return
        request_context.end_time = time.time_ns()
        self.record_exception(request_context, sys.exc_info()[1])
        task = request_context.task
        if task is not None and not task.done():
            task.add_done_callback(functools.partial(self._task_done, request_context))
        else:
            self.end_span(request_context)

    def _task_done(self, request_context: RequestContext, task: object) -> None:
        self.end_span(request_context)

    def end_span(self, request_context: RequestContext) -> None:
        """End the SERVER span with its status code (once).

        ERROR with ``error.type`` for a 5xx response and for an unexpected
        exception even when the response had been sent with another
        status; 4xx leave it unset (OpenTelemetry's HTTP conventions).
        """
        if request_context.ended:
            return
        self._measure(request_context)
        request_context.ended = True
        span = request_context.span
        status_code = request_context.status_code
        if span.is_recording():
            if status_code is not None:
                span.set_attribute("http.response.status_code", status_code)
            error_type = request_context.exception_type
            if error_type is None and status_code is not None and status_code >= 500:
                error_type = str(status_code)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR))
            span.end(request_context.end_time)
        # Drop the references that would keep the request alive in a cycle.
        request_context.context = request_context.task = None
        request_context.request = None

    def client_disconnected(self, request_context: RequestContext) -> None:
        """The client closed the connection before the response was sent.

        The span ends now, without ``http.response.status_code``, with
        status ERROR and ``error.type`` ``"client_disconnected"``.
        """
        if request_context.status_code is not None:
            return
        request = request_context.request
        if request is not None:
            self.metrics.request_finished(
                request,
                request_context.route,
                None,
                CLIENT_DISCONNECTED,
                request_context.context,
            )
            request_context.request = None
        if request_context.ended:
            return
        request_context.ended = True
        span = request_context.span
        if span.is_recording():
            span.set_attribute("error.type", CLIENT_DISCONNECTED)
            span.set_status(Status(StatusCode.ERROR, "client closed the connection"))
            span.end()
        request_context.context = request_context.task = None
        request_context.request = None

    def _measure(self, request_context: RequestContext) -> None:
        """Record the finished request's duration (``http.server.*`` metrics)."""
        request = request_context.request
        if request is None:
            return
        end_time = request_context.end_time
        seconds = None
        if end_time is not None:
            seconds = request.request_time() - (time.time_ns() - end_time) / 1e9
        self.metrics.request_finished(
            request,
            request_context.route,
            request_context.status_code,
            request_context.exception_type,
            request_context.context,
            seconds,
        )
