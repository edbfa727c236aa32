"""Instrumentation: everything one application traces and measures with.

:class:`Instrumentation` is the composed object an application holds
(:attr:`divak.Recorder.divak_instrumentation`), and the one place of its
telemetry state: the service name, the reporters and their span queues,
the propagators, the sampler, the retention policy, the route table, the
OpenTelemetry ``TracerProvider`` and the application's metrics.  Each request's
:class:`~divak.tracing.pipeline.RequestPipeline` reads it; nothing copies
it into the application or its settings.
"""

from __future__ import annotations

import logging
import time
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SpanExporter
from tornado import web

from divak import propagation, redaction, semconv
from divak.debug import RequestStats
from divak.export.queue import SpanQueue
from divak.export.reporters import warn_if_spans_go_to_log
from divak.logs.export import export_logs
from divak.metrics.instruments import ApplicationMetrics, new_application_metrics
from divak.tracing import headers
from divak.tracing.excluded import excluded_url_patterns, excluded_urls, trace_probes
from divak.tracing.provider import (
    SpanOwner,
    adopted_provider,
    application_reporters,
    join,
    tracer_provider,
    turn_off_tornado_instrumentation,
)
from divak.tracing.retention import Retention, new_retention
from divak.tracing.routes import RouteTable
from divak.version import __version__

__all__ = ["Instrumentation"]

logger = logging.getLogger(__name__)


class Instrumentation:
    """The telemetry of one application: configuration, provider, metrics.

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
        #: The service name given in code (:meth:`divak.Recorder.set_divak_service`).
        self.service: str | None = None
        self.reporters: list[SpanExporter] = []
        self.propagators: list[TextMapPropagator] = []
        self.sampler: sampling.Sampler | None = None
        self.routes = RouteTable(application)
        #: Response headers that echo the correlation id.
        self.echo_headers: tuple[str, ...] = ()
        #: The :class:`~divak.export.queue.SpanQueue` of each reporter.
        self.span_queues: list[SpanQueue] = []
        self._propagation: propagation.Propagation | None = None
        self._provider: TracerProvider | None = None
        self._own_provider = False
        self._service_name: str | None = None
        self._span_owner: SpanOwner | None = None
        self._tracer: trace.Tracer | None = None
        #: Whether :func:`~divak.tracing.provider.unsampled_span` takes the
        #: request's one sampling decision (a provider divak made, whose
        #: sampler is a :class:`~divak.propagation.PropagatedSampler`): a
        #: request it does not drop is sampled.  Set with the tracer.
        self.samples_ahead = False
        self._metrics: ApplicationMetrics | None = None
        #: The debug page's statistics, when the page is served
        #: (:meth:`divak.Recorder.set_divak_debug_page`); :data:`None` costs
        #: a request nothing.
        self.debug_stats: RequestStats | None = None
        #: The debug page's path, when it is served.
        self.debug_path: str | None = None
        #: Requests received and not finished yet.
        self.requests_in_flight = 0
        #: :func:`time.monotonic` when the application was made.
        self.created = time.monotonic()
        #: OpenTelemetry ``MetricExporter`` objects the metrics are pushed to.
        self.metrics_reporters: list[MetricExporter] = []
        #: The request and response headers recorded on SERVER spans, and
        #: those recorded on the CLIENT spans of ``send_request``.
        self.captured_server = headers.CapturedHeaders(self.settings, "server")
        self.captured_client = headers.CapturedHeaders(self.settings, "client")
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
        #: Whether requests to :class:`~divak.context.Probe` handlers are
        #: traced (:func:`~divak.tracing.excluded.trace_probes`).
        self.trace_probes = trace_probes(self.settings)
        #: The failed and slow unsampled requests exported anyway
        #: (:mod:`divak.tracing.retention`); :data:`None` when none are.
        self.retention: Retention | None = new_retention(self.settings)
        #: Characters kept of a value taken from the request
        #: (``settings['divak_max_request_attribute_length']``).
        self.max_request_attribute_length = int(
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

    @property
    def requested_service_name(self) -> str | None:
        """The service name the application asks for, or :data:`None`.

        The one given in code (:meth:`divak.Recorder.set_divak_service`),
        else ``settings['service']``.  It is also the default ``Server``
        header of a :class:`divak.Application`.
        """
        return self.service or self.settings.get("service") or None

    @property
    def service_name(self) -> str:
        """The ``service.name`` of the application's spans (builds the provider).

        The provider's resource has it: :attr:`requested_service_name`,
        else ``OTEL_SERVICE_NAME``, else OpenTelemetry's default (or the
        name of a provider the process already had).  Read once: a
        provider's resource does not change.
        """
        name = self._service_name
        if name is None:
            name = self._service_name = str(
                self.provider.resource.attributes.get(SERVICE_NAME, "")
            )
        return name

    def _start(self) -> None:
        name = self.requested_service_name
        sdk_provider, self._own_provider = tracer_provider(
            self.settings, name, self.sampler
        )
        span_reporters = application_reporters(self.reporters, self._own_provider)
        self.span_queues = [SpanQueue(reporter) for reporter in span_reporters]
        self._span_owner = join(sdk_provider, self.span_queues)
        self._tracer = tracer = sdk_provider.get_tracer("divak", __version__)
        self.samples_ahead = isinstance(tracer, sdk_trace.Tracer) and isinstance(
            tracer.sampler, propagation.PropagatedSampler
        )
        self._provider = sdk_provider
        turn_off_tornado_instrumentation()

    @property
    def metrics(self) -> ApplicationMetrics:
        """The application's :class:`~divak.metrics.instruments.ApplicationMetrics`.

        Made on first use, after the provider (whose resource the metrics
        share), and again in a forked child.
        """
        current = self._metrics
        if current is None or current.forked:
            current = self._metrics = new_application_metrics(
                self.settings, self.provider.resource, self.metrics_reporters
            )
            export_logs(current.resource)  # OTEL_LOGS_EXPORTER, once per process
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
        if adopted_provider(self.settings) is not None:
            return False  # the provider the process set exports them
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

    def extract(self, carrier: typing.Mapping[str, str]) -> otel_context.Context:
        """The context the propagators extract from *carrier*, marked as ours.

        Every span started under the returned context, by any tracer, goes
        to this application's reporters only
        (:class:`~divak.tracing.provider.SpanOwner`); builds the provider
        on first use.

        :param carrier: a request's headers
        """
        owner = self._span_owner
        if owner is None:
            self._start()
            owner = typing.cast(SpanOwner, self._span_owner)
        return owner.mark(self.propagation.extract(carrier))
