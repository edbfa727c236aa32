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
import os
import sys
import threading
import time
import typing
import weakref

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httputil, web

from divak import environment, export, headers, metrics, propagation, redaction
from divak.context import RequestContext
from divak.propagation.b3 import B3DebugMarker
from divak.routes import RouteTable

__all__ = ["CLIENT_DISCONNECTED", "Instrumentation", "exception_type"]

logger = logging.getLogger(__name__)

#: ``error.type`` of a SERVER span whose client closed the connection
#: before the response was finished.
CLIENT_DISCONNECTED = "client_disconnected"

#: Longest value, in characters, of a span attribute taken from the
#: request (``user_agent.original``, ``server.address``, ``url.path``...);
#: ``settings['divak_max_request_attribute_length']`` changes it.
MAX_REQUEST_ATTRIBUTE_LENGTH = 256

_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}

_DEFAULT_FLAGS = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_RANDOM_FLAGS = trace.TraceFlags(
    trace.TraceFlags.DEFAULT | getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0)
)

#: Providers divak made; another application never adopts one of them.
_OWN_PROVIDERS: weakref.WeakSet[TracerProvider] = weakref.WeakSet()


def exception_type(value: BaseException) -> str:
    """``error.type`` of an exception: its fully qualified class name."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=1024)
def _span_name(method: str, route: str | None) -> str:
    """``"{METHOD} {route}"`` (``HTTP`` for a method outside the known set)."""
    if method == "_OTHER":
        method = "HTTP"
    return f"{method} {route}" if route else method


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
        #: The :class:`~divak.export.SpanQueue` of each reporter.
        self.span_queues: list[export.SpanQueue] = []
        self.service_name = ""
        self._propagation: propagation.Propagation | None = None
        self._provider: TracerProvider | None = None
        self._own_provider = False
        self._tracer: trace.Tracer | None = None
        self._metrics: metrics.ApplicationMetrics | None = None
        #: Query parameter names whose values are redacted wherever a URL
        #: is logged or recorded (:func:`divak.redaction.redacted_query_params`).
        self.redacted_params = redaction.redacted_query_params(self.settings)
        #: ``function(uri) -> bool``, true for a request left untraced
        #: (:func:`divak.environment.excluded_urls`); :data:`None` when no
        #: pattern is configured.
        self.excluded: typing.Callable[[str], bool] | None = (
            environment.excluded_urls(self.settings)
            if environment.excluded_url_patterns(self.settings)
            else None
        )
        self._max_length = int(
            self.settings.get(
                "divak_max_request_attribute_length", MAX_REQUEST_ATTRIBUTE_LENGTH
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
                propagators[0:0] = environment.propagators()
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
        from divak import __version__

        name = self.service or self.settings.get("service")
        span_reporters = self.reporters or environment.reporters_from_env()
        self.span_queues = [export.SpanQueue(reporter) for reporter in span_reporters]
        current = trace.get_tracer_provider()
        use_global = self.settings.get("divak_global_provider", True)
        if (
            use_global
            and isinstance(current, TracerProvider)
            and current not in _OWN_PROVIDERS
        ):
            # An OpenTelemetry set-up of the user's own: one pipeline.
            provider = current
            self._own_provider = False
            if name and not self.service and not self.settings.get("service"):
                name = None
        else:
            resource = Resource.create({SERVICE_NAME: name} if name else {})
            sampler = self.sampler or _default_sampler()
            provider = TracerProvider(
                sampler=propagation.PropagatedSampler(sampler),
                resource=resource,
                id_generator=_PresetTraceIds(),
                shutdown_on_exit=False,
                span_limits=SpanLimits(
                    max_span_attribute_length=self.settings.get(
                        "divak_max_attribute_length"
                    )
                ),
            )
            _OWN_PROVIDERS.add(provider)
            self._own_provider = True
            if use_global and isinstance(current, trace.ProxyTracerProvider):
                trace.set_tracer_provider(provider)
        provider.add_span_processor(B3DebugMarker())
        for queue in self.span_queues:
            provider.add_span_processor(queue)
        self.service_name = str(provider.resource.attributes.get(SERVICE_NAME, ""))
        self._tracer = provider.get_tracer("divak", __version__)
        self._provider = provider
        _warn_if_tornado_instrumented()

    @property
    def metrics(self) -> metrics.ApplicationMetrics:
        """The application's :class:`~divak.metrics.ApplicationMetrics`.

        Made on first use, after the provider (for the service name), and
        again in a forked child.
        """
        current = self._metrics
        if current is None:
            self.provider  # noqa: B018 - the service name first
            current = self._metrics = metrics.application_metrics(self.application)
            _forget_metrics_in_children(self)
        return current

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
        if current is not None and current.pid == os.getpid():
            current.shutdown()
        if self._provider is None:
            return
        if self._own_provider:
            self._provider.shutdown()
        else:
            for queue in self.span_queues:
                queue.shutdown()

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
        parent = self.propagation.extract(request.headers)
        request_id = propagation.get_request_id(parent)
        route = self.routes.template(handler_class, request.path)
        request_context = RequestContext(parent, request_id, self.service_name, route)
        request_context.request = request
        self.metrics.request_started(request)
        request.divak_context = request_context  # type: ignore[attr-defined]
        request.divak_request_id = request_id  # type: ignore[attr-defined]
        method = request.method or "GET"
        known = method if method in _KNOWN_METHODS else "_OTHER"
        name = _span_name(known, route)
        excluded = self.excluded
        span: trace.Span | None
        if excluded is not None and excluded(request.uri or ""):
            # Not traced: the upstream trace context goes on unchanged.
            request_context.set_span(trace.get_current_span(parent))
            request_context.ended = True
            return request_context
        span = self._unsampled_span(name, parent)
        if span is None:
            span = tracer.start_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                start_time=time.time_ns() - int(request.request_time() * 1e9),
            )
            if span.is_recording():
                span.set_attributes(self._server_attributes(request, known, route))
                if request_id:
                    span.set_attribute("divak.request_id", request_id)
                captured = headers.captured_headers(self.application)
                if captured.request:
                    span.set_attributes(captured.request_attributes(request.headers))
        request_context.set_span(span)
        return request_context

    def _unsampled_span(
        self, name: str, parent: otel_context.Context
    ) -> trace.NonRecordingSpan | None:
        """The span of a request the sampler drops, made without the SDK's span.

        The same decision and ids the SDK's ``Tracer.start_span`` would
        make (the provider's own sampler and id generator, the parent's
        trace id, sampled flag off, the W3C Level 2 random flag as the SDK
        sets it), for a fraction of the cost.  :data:`None` when the trace
        is sampled (the SDK then starts the span) or the tracer is not the
        SDK's (``OTEL_SDK_DISABLED``).
        """
        tracer = self._tracer
        sampler = getattr(tracer, "sampler", None)
        ids = getattr(tracer, "id_generator", None)
        if sampler is None or ids is None:
            return None
        parent_context = trace.get_current_span(parent).get_span_context()
        valid = parent_context.is_valid
        if valid:
            trace_id = parent_context.trace_id
        elif isinstance(ids, _PresetTraceIds):
            trace_id = ids.generate_trace_id()
        else:  # a provider of the user's: its ids, its way
            return None
        result = sampler.should_sample(parent, trace_id, name, SpanKind.SERVER)
        if result.decision.is_recording():
            if not valid:
                # The SDK starts the span: with the trace id just decided on.
                ids.preset(trace_id)
            return None
        if valid:
            random_id = getattr(parent_context.trace_flags, "random_trace_id", False)
        else:
            random_id = getattr(ids, "is_trace_id_random", bool)()
        return trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id,
                ids.generate_span_id(),
                is_remote=False,
                trace_flags=_RANDOM_FLAGS if random_id else _DEFAULT_FLAGS,
                trace_state=result.trace_state,
            )
        )

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
        request_context.exception_type = exception_type(value)
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

    def _server_attributes(
        self, request: httputil.HTTPServerRequest, method: str, route: str | None
    ) -> dict[str, typing.Any]:
        limit = self._max_length
        headers = request.headers
        host = request.host
        if self.settings.get("xheaders"):
            host = headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        address, port = _split_host(host)
        attributes: dict[str, typing.Any] = {
            "http.request.method": method,
            "url.path": redaction.redact_uri(request.path, self.redacted_params)[
                :limit
            ],
            "url.scheme": request.protocol,
            "server.address": address[:limit],
            "server.port": port or _DEFAULT_PORTS.get(request.protocol, 80),
            "client.address": request.remote_ip,
            "network.protocol.version": request.version.partition("/")[2] or "1.1",
        }
        if request.query:
            attributes["url.query"] = redaction.redact_query(
                request.query, self.redacted_params
            )[:limit]
        if method == "_OTHER":
            attributes["http.request.method_original"] = request.method[:limit]
        if route:
            attributes["http.route"] = route
        peer = getattr(getattr(request.connection, "context", None), "address", None)
        if isinstance(peer, tuple) and len(peer) >= 2:
            attributes["network.peer.address"] = str(peer[0])
            attributes["network.peer.port"] = peer[1]
        user_agent = headers.get("User-Agent")
        if user_agent:
            attributes["user_agent.original"] = user_agent[:limit]
        return attributes


#: Instrumentations whose metrics a forked child must make anew.
_METERED: weakref.WeakSet[Instrumentation] = weakref.WeakSet()
_fork_hook = False


def _forget_metrics_in_children(instrumentation: Instrumentation) -> None:
    """After a fork, *instrumentation* makes its metrics again, in the child.

    Checked once per fork rather than once per request (``os.getpid``).
    """
    global _fork_hook
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True
    _METERED.add(instrumentation)


def _after_fork_in_child() -> None:
    for instrumentation in list(_METERED):
        instrumentation._metrics = None


class _PresetTraceIds(RandomIdGenerator):
    """Random ids, as the SDK's default; the next trace id may be set first.

    The unsampled fast path asks the sampler with a new trace id; when the
    answer is "sample", the SDK must start the span with that same id, or
    the sampler would decide again on another one.
    """

    def __init__(self) -> None:
        self._next = threading.local()

    def preset(self, trace_id: int) -> None:
        """Make *trace_id* the next trace id this thread generates."""
        self._next.value = trace_id

    def generate_trace_id(self) -> int:
        """The preset trace id, once, else a random one."""
        value = getattr(self._next, "value", None)
        if value is not None:
            self._next.value = None
            return value
        return super().generate_trace_id()


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):  # [IPv6]:port
        address, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    return address, int(port) if port.isdigit() and len(port) <= 5 else None


def _default_sampler() -> sampling.Sampler:
    from divak.sampling import default_sampler

    return default_sampler()


_warned_tornado = False


def _warn_if_tornado_instrumented() -> None:
    """One WARNING when OpenTelemetry's tornado instrumentation is active too."""
    global _warned_tornado
    module = sys.modules.get("opentelemetry.instrumentation.tornado")
    if _warned_tornado or module is None:
        return
    instrumentor = getattr(module, "TornadoInstrumentor", None)
    if instrumentor is None or not instrumentor().is_instrumented_by_opentelemetry:
        return
    _warned_tornado = True
    logger.warning(
        "OpenTelemetry's tornado instrumentation is active: it adds a second "
        "span to every request divak traces; divak traces Tornado itself, so "
        "disable it (OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tornado)"
    )
