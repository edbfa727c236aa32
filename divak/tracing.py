"""Tracing: the application's tracer and one SERVER span per request.

:class:`Recorder` is the application side (service name, reporters,
propagators, the OpenTelemetry ``TracerProvider``, the access log) and
:class:`RequestTracker` the handler side (the span, child operations,
tags).  Everything divak knows about one request lives in one
:class:`RequestContext`; logs, error documents, response headers and
outgoing headers all read it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httputil, log, routing, web

from divak import environment, export, headers, propagation, reporters, sampling
from divak.logging import REQUEST_CONTEXT_KEY

__all__ = ["Recorder", "RequestContext", "RequestTracker", "route_template"]

logger = logging.getLogger(__name__)

#: ``error.type`` of a server span whose client closed the connection
#: before the response was finished.
CLIENT_DISCONNECTED = "client_disconnected"

_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)


class RequestContext:
    """Everything divak knows about one request: the single source of truth.

    Created once per request, when the application first needs it, and
    stored on the request as ``request.divak_context``.

    .. attribute:: parent

       The :class:`~opentelemetry.context.Context` extracted from the
       request headers (remote parent span, correlation id, baggage).

    .. attribute:: request_id

       The correlation id (:class:`str`), or :data:`None` when the
       application has no :class:`~divak.RequestIdPropagation`.

    .. attribute:: span

       The SERVER span, once started.

    .. attribute:: context

       The OpenTelemetry context that is current while the handler runs:
       :attr:`parent` plus :attr:`span` plus this object.  Set back to
       :data:`None` once the request finished and its span ended: the
       context refers to this object, and dropping the reference lets
       reference counting free both at once instead of leaving the pair
       to Python's cyclic garbage collector (which measurably costs
       throughput and tail latency under load).

    .. attribute:: ended

       :data:`True` once the span was ended (the response finished or the
       client went away); it is ended only once.
    """

    __slots__ = (
        "parent",
        "request_id",
        "service_name",
        "span",
        "context",
        "trace_id_hex",
        "span_id_hex",
        "sampled",
        "exception_type",
        "ended",
        "log_ids",
    )

    def __init__(self, parent: otel_context.Context, service_name: str) -> None:
        self.parent = parent
        self.request_id: str | None = propagation.get_request_id(parent)
        self.service_name = service_name
        self.span: trace.Span | None = None
        self.context: otel_context.Context | None = None
        self.trace_id_hex: str | None = None
        self.span_id_hex: str | None = None
        self.sampled = False
        self.exception_type: str | None = None
        self.ended = False
        #: The log record attributes of the server span, computed once.
        self.log_ids: dict[str, typing.Any] | None = None

    def current_context(self) -> otel_context.Context:
        """The current OpenTelemetry context if it belongs to this request.

        Otherwise (code running outside the handler's task) the request's
        own :attr:`context`, so child spans always join the request's trace.
        """
        current = otel_context.get_current()
        span_context = trace.get_current_span(current).get_span_context()
        if self.span is not None and (
            span_context.trace_id == self.span.get_span_context().trace_id
        ):
            return current
        return self.context if self.context is not None else current

    def set_span(self, span: trace.Span) -> None:
        """Make *span* the request's server span and build :attr:`context`."""
        self.span = span
        span_context = span.get_span_context()
        self.trace_id_hex = trace.format_trace_id(span_context.trace_id)
        self.span_id_hex = trace.format_span_id(span_context.span_id)
        self.sampled = span_context.trace_flags.sampled
        self.context = otel_context.set_value(
            REQUEST_CONTEXT_KEY, self, trace.set_span_in_context(span, self.parent)
        )
        self.log_ids = {
            "otelTraceID": self.trace_id_hex,
            "otelSpanID": self.span_id_hex,
            "otelTraceSampled": self.sampled,
            "otelServiceName": self.service_name,
            "divak_request_id": self.request_id or "",
        }


def route_template(pattern: str) -> str:
    """Turn a Tornado URL pattern into a route template.

    ``r"/items/(?P<item_id>[^/]+)"`` becomes ``"/items/{item_id}"`` and an
    unnamed group becomes ``{0}``, ``{1}``...; the ``http.route`` attribute
    and the span name use it.

    :param pattern: the regular expression of a :class:`tornado.web.URLSpec`
    """
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    out: list[str] = []
    depth = 0
    index = 0
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\" and position + 1 < len(pattern):
            if depth == 0:
                out.append(pattern[position + 1])
            position += 2
            continue
        if char == "(":
            if depth == 0:
                named = re.match(r"\(\?P<(\w+)>", pattern[position:])
                if named:
                    out.append("{" + named.group(1) + "}")
                elif pattern.startswith("(?", position):
                    out.append("{...}")
                else:
                    out.append(f"{{{index}}}")
                    index += 1
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            out.append(char)
        position += 1
    return "".join(out) or "/"


def _walk_rules(router: typing.Any) -> typing.Iterator[routing.Rule]:
    for rule in getattr(router, "rules", ()):
        yield rule
        if isinstance(rule.target, routing.Router):
            yield from _walk_rules(rule.target)


class _B3DebugMarker(SpanProcessor):
    """Mark every span of a B3 debug trace for the Zipkin reporter."""

    def on_start(
        self, span: typing.Any, parent_context: otel_context.Context | None = None
    ) -> None:
        if otel_context.get_value(propagation.B3_DEBUG_KEY, parent_context):
            span.set_attribute(reporters.B3_DEBUG_ATTRIBUTE, True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Nothing is buffered.  The SDK's base method returned None before
        # 1.40, which made the provider's force_flush stop at this
        # processor and report failure without flushing the span queues.
        return True


class Recorder(web.Application):
    """Application mix-in that traces requests and exports the spans.

    To use it:

    * put it first in the bases of the application class, e.g.
      ``class Application(divak.Recorder, divak.Application)``;
    * in ``__init__``, after calling ``super().__init__()``, call
      :meth:`set_divak_service`, :meth:`add_divak_reporter` and
      :meth:`add_divak_propagator` as needed;
    * mix :class:`RequestTracker` into the request handlers.

    What it provides:

    * its own OpenTelemetry SDK ``TracerProvider`` (never the global one),
      created on first use, so two applications in one process never share
      spans, and a forked child builds its own;
    * the reporters, each behind a bounded :class:`~divak.export.SpanQueue`
      that counts the spans it drops (:attr:`divak_dropped_spans`);
    * the propagators (default: the ``OTEL_PROPAGATORS`` environment variable,
      else W3C Trace Context and Baggage);
    * an access log line per request (:meth:`log_request`);
    * a SERVER span even for requests whose handler does not mix in
      :class:`RequestTracker` (Tornado's 404 handler, for example).

    .. rubric:: settings['service']

    Used as the service name when :meth:`set_divak_service` was not
    called; then the ``OTEL_SERVICE_NAME`` environment variable.
    """

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        self._divak_service: str | None = None
        self._divak_reporters: list[SpanExporter] = []
        self._divak_propagators: list[TextMapPropagator] = []
        self._divak_propagation: propagation.Propagation | None = None
        self._divak_provider: TracerProvider | None = None
        self._divak_tracer: trace.Tracer | None = None
        self._divak_span_queues: list[export.SpanQueue] = []
        self._divak_echo_headers: tuple[str, ...] = ()
        self._divak_service_name = ""
        self._divak_routes: dict[type, list[tuple[re.Pattern[str], str]]] = {}
        super().__init__(*args, **kwargs)
        self.add_transform(self._divak_transform)  # type: ignore[arg-type]

    # -- configuration ---------------------------------------------------
    def set_divak_service(self, service_name: str) -> None:
        """Set the service name reported as ``service.name``.

        :param service_name: the name traces show for this service
        :raises RuntimeError: after tracing started (first request)
        """
        self._divak_check_not_started()
        self._divak_service = service_name

    def add_divak_reporter(self, reporter: SpanExporter) -> None:
        """Add a reporter that receives every finished, sampled span.

        :param reporter: a :class:`~divak.ZipkinReporter`,
            :class:`~divak.LoggingReporter` or any OpenTelemetry
            ``SpanExporter``
        :raises RuntimeError: after tracing started (first request)
        """
        self._divak_check_not_started()
        self._divak_reporters.append(reporter)

    def add_divak_propagator(self, propagator: TextMapPropagator) -> None:
        """Add a propagator for incoming and outgoing headers.

        Extraction tries the propagators in the order they were added and
        takes the first valid trace context; injection writes all of them.

        :param propagator: a :class:`~divak.TraceContextPropagation`,
            :class:`~divak.ZipkinPropagation`,
            :class:`~divak.RequestIdPropagation` or any OpenTelemetry
            ``TextMapPropagator``
        """
        self._divak_propagators.append(propagator)
        self._divak_propagation = None
        if isinstance(propagator, propagation.RequestIdPropagation):
            if propagator.header_name not in self._divak_echo_headers:
                self._divak_echo_headers += (propagator.header_name,)

    def _divak_check_not_started(self) -> None:
        if self._divak_provider is not None:
            raise RuntimeError("tracing already started for this application")

    # -- runtime ---------------------------------------------------------
    @property
    def divak_propagation(self) -> propagation.Propagation:
        """The application's propagators, combined."""
        if self._divak_propagation is None:
            propagators = list(self._divak_propagators)
            if not any(
                not isinstance(p, propagation.RequestIdPropagation) for p in propagators
            ):
                propagators[0:0] = environment.propagators()
            self._divak_propagation = propagation.Propagation(propagators)
        return self._divak_propagation

    @property
    def divak_tracer_provider(self) -> TracerProvider:
        """The application's own ``TracerProvider``, created on first use."""
        if self._divak_provider is None:
            self._divak_start_tracing()
        return typing.cast(TracerProvider, self._divak_provider)

    @property
    def divak_tracer(self) -> trace.Tracer:
        """The tracer that makes the application's spans."""
        if self._divak_tracer is None:
            self._divak_start_tracing()
        return typing.cast(trace.Tracer, self._divak_tracer)

    @property
    def divak_service_name(self) -> str:
        """The ``service.name`` of the application's spans."""
        self.divak_tracer_provider  # noqa: B018 - builds it
        return self._divak_service_name

    def _divak_start_tracing(self) -> None:
        from divak import __version__

        name = self._divak_service or self.settings.get("service")
        resource = Resource.create({SERVICE_NAME: name} if name else {})
        sampler = getattr(self, "_divak_sampler", None) or sampling.default_sampler()
        provider = TracerProvider(
            sampler=propagation.PropagatedSampler(sampler), resource=resource
        )
        provider.add_span_processor(_B3DebugMarker())
        span_reporters = self._divak_reporters or environment.reporters_from_env()
        for reporter in span_reporters:
            queue = export.SpanQueue(reporter)
            self._divak_span_queues.append(queue)
            provider.add_span_processor(queue)
        self._divak_service_name = str(resource.attributes.get(SERVICE_NAME, ""))
        self._divak_provider = provider
        self._divak_tracer = provider.get_tracer("divak", __version__)

    @property
    def divak_span_queues(self) -> list[export.SpanQueue]:
        """The :class:`~divak.export.SpanQueue` of each reporter.

        Empty until tracing started (the first request).
        """
        return list(self._divak_span_queues)

    @property
    def divak_dropped_spans(self) -> int:
        """Finished, sampled spans that never reached a collector.

        The sum over the reporters of the spans dropped because a queue was
        full and the spans a reporter failed to deliver (after its
        retries).  0 while every collector keeps up.
        """
        return sum(q.dropped_spans + q.failed_spans for q in self._divak_span_queues)

    def divak_force_flush(self, timeout: float = 5.0) -> bool:
        """Export every finished span now.

        Blocks the calling thread; call it off the IOLoop (the runner does).

        :param timeout: seconds to wait at most
        :returns: :data:`True` when everything was exported in time
        """
        if self._divak_provider is None:
            return True
        return self._divak_provider.force_flush(int(timeout * 1000))

    def divak_shutdown(self) -> None:
        """Flush and stop the reporters; the application traces no more.

        Blocks the calling thread until the reporters finished their last
        upload.
        """
        if self._divak_provider is not None:
            self._divak_provider.shutdown()

    def divak_request_context(
        self, request: httputil.HTTPServerRequest
    ) -> RequestContext:
        """Return the request's :class:`RequestContext`, extracting it once.

        Reads the propagators' headers the first time it is called for
        *request* and stores the result as ``request.divak_context`` (and
        the correlation id as ``request.divak_request_id``, as
        divak-tornado did).
        """
        request_context: RequestContext | None = getattr(request, "divak_context", None)
        if request_context is None:
            parent = self.divak_propagation.extract(request.headers)
            request_context = RequestContext(parent, self.divak_service_name)
            request.divak_context = request_context  # type: ignore[attr-defined]
            request.divak_request_id = request_context.request_id  # type: ignore[attr-defined]
        return request_context

    def _divak_transform(
        self, request: httputil.HTTPServerRequest
    ) -> web.OutputTransform:
        # Called by Tornado for every request, whatever handler serves it.
        request_context = self.divak_request_context(request)
        captured = headers.captured_headers(self)
        if self._divak_echo_headers or captured.response:
            return _ResponseHeaders(
                request_context,
                self._divak_echo_headers,
                captured if captured.response else None,
            )
        return _IDENTITY

    def divak_route(self, handler: web.RequestHandler) -> str | None:
        """Return the route template that matched *handler*'s request.

        Computed once per handler class from the application's rules.
        """
        routes = self._divak_routes.get(type(handler))
        if routes is None:
            self._divak_routes = _route_table(self)
            routes = self._divak_routes.setdefault(type(handler), [])
        if len(routes) == 1:
            return routes[0][1]
        for regex, template in routes:
            if regex.match(handler.request.path):
                return template
        return None

    def divak_start_span(
        self,
        request: httputil.HTTPServerRequest,
        route: str | None = None,
        name: str | None = None,
    ) -> RequestContext:
        """Start the request's SERVER span (once) and return its context.

        :param request: the request being served
        :param route: the matched route template, for ``http.route``
        :param name: span name; default ``"{METHOD} {route}"``
        """
        request_context = self.divak_request_context(request)
        if request_context.span is not None:
            return request_context
        method = request.method or "GET"
        known = method if method in _KNOWN_METHODS else "_OTHER"
        if name is None:
            name = _span_name(known, route)
        start = time.time_ns() - int(request.request_time() * 1e9)
        span = self.divak_tracer.start_span(
            name, context=request_context.parent, kind=SpanKind.SERVER, start_time=start
        )
        if span.is_recording():
            span.set_attributes(_server_attributes(request, known, route))
            if request_context.request_id:
                span.set_attribute("divak.request_id", request_context.request_id)
            captured = headers.captured_headers(self)
            if captured.request:
                span.set_attributes(captured.request_attributes(request.headers))
        request_context.set_span(span)
        return request_context

    def divak_end_span(self, request_context: RequestContext, status_code: int) -> None:
        """End the request's SERVER span with the response's *status_code*.

        The status is ERROR, with ``error.type``, for a 5xx response and
        for an unexpected exception even when the response had already
        been sent with another status (OpenTelemetry's HTTP conventions);
        4xx responses leave it unset.
        """
        span = request_context.span
        if span is None or request_context.ended:
            return
        request_context.ended = True
        if span.is_recording():
            span.set_attribute("http.response.status_code", status_code)
            if status_code >= 500 or request_context.exception_type:
                error_type = request_context.exception_type or str(status_code)
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status_code}"))
        span.end()

    def log_request(self, handler: web.RequestHandler) -> None:
        """Write the access log line for *handler*'s request.

        One line on the ``tornado.access`` logger: client address (the
        real one when ``xheaders`` is on), method, URI, status and duration
        in milliseconds.  INFO below 400, WARNING for 4xx, ERROR for 5xx.
        The record is emitted with the request's context current, so it
        carries the request's ``otelTraceID``, ``otelSpanID`` and
        ``divak_request_id`` attributes, which divak's default log format
        prints on every line.  For a handler that
        does not mix in :class:`RequestTracker`, the request's SERVER span
        is started and ended here, named after its route when it has one
        (``GET /status``), else after the method alone.
        """
        status = handler.get_status()
        request = handler.request
        if isinstance(handler, RequestTracker):
            request_context = handler.divak_context
            own_span = False
        else:
            # Started here, or earlier by an error mix-in; ended here.
            request_context = self.divak_start_span(request, self.divak_route(handler))
            own_span = True
        if "log_function" in self.settings:
            self.settings["log_function"](handler)
        else:
            level = (
                logging.INFO
                if status < 400
                else logging.WARNING
                if status < 500
                else logging.ERROR
            )
            if log.access_log.isEnabledFor(level):
                with activated(request_context):
                    log.access_log.log(
                        level,
                        '%s "%s %s" %d %.2fms',
                        request.remote_ip,
                        request.method,
                        request.uri,
                        status,
                        1000.0 * request.request_time(),
                    )
        if own_span:
            self.divak_end_span(request_context, status)
            request_context.context = None  # no reference cycle left


class _Identity(web.OutputTransform):
    def __init__(self) -> None:
        pass


_IDENTITY = _Identity()


class _ResponseHeaders(web.OutputTransform):
    """Per request: echo the correlation id, record the listed response headers.

    Tornado runs it for every response, 404s and errors included.
    """

    __slots__ = ("request_context", "echo", "captured")

    def __init__(
        self,
        request_context: RequestContext,
        echo: tuple[str, ...],
        captured: headers.CapturedHeaders | None,
    ) -> None:
        self.request_context = request_context
        self.echo = echo
        self.captured = captured

    def transform_first_chunk(
        self,
        status_code: int,
        response_headers: httputil.HTTPHeaders,
        chunk: bytes,
        finishing: bool,
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        request_id = self.request_context.request_id
        if request_id:
            for name in self.echo:
                if name not in response_headers:
                    response_headers[name] = request_id
        if self.captured is not None:
            span = self.request_context.span
            if span is not None and span.is_recording():
                attributes = self.captured.response_attributes(response_headers)
                span.set_attributes(attributes)
        return status_code, response_headers, chunk


@functools.lru_cache(maxsize=1024)
def _span_name(method: str, route: str | None) -> str:
    """``"{METHOD} {route}"``, once per method and route (semantic conventions:
    ``HTTP`` stands for a method outside the known set)."""
    if method == "_OTHER":
        method = "HTTP"
    return f"{method} {route}" if route else method


def _route_table(
    application: web.Application,
) -> dict[type, list[tuple[re.Pattern[str], str]]]:
    table: dict[type, list[tuple[re.Pattern[str], str]]] = {}
    for router in (application.wildcard_router, application.default_router):
        for rule in _walk_rules(router):
            regex = getattr(rule.matcher, "regex", None)
            if isinstance(rule.target, type) and regex is not None:
                entry = (regex, route_template(regex.pattern))
                if entry not in table.setdefault(rule.target, []):
                    table[rule.target].append(entry)
    return table


def _server_attributes(
    request: httputil.HTTPServerRequest, method: str, route: str | None
) -> dict[str, typing.Any]:
    attributes: dict[str, typing.Any] = {
        "http.request.method": method,
        "url.path": request.path,
        "url.scheme": request.protocol,
        "server.address": request.host_name,
        "client.address": request.remote_ip,
        "network.protocol.version": request.version.partition("/")[2] or "1.1",
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = request.method
    if route:
        attributes["http.route"] = route
    host, _, port = request.host.rpartition(":")
    if host and port.isdigit():
        attributes["server.port"] = int(port)
    user_agent = request.headers.get("User-Agent")
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return attributes


class activated:  # noqa: N801 - used like the function it replaced
    """Make *request_context* current for the ``with`` block, if it is not.

    A plain class rather than a generator-based context manager: it runs
    twice per request, and usually finds the context already current.
    """

    __slots__ = ("context", "token")

    def __init__(self, request_context: RequestContext) -> None:
        self.context = request_context.context
        self.token: object | None = None

    def __enter__(self) -> None:
        context = self.context
        if context is not None and otel_context.get_current() is not context:
            self.token = otel_context.attach(context)

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
            self.token = None


class RequestTracker:
    """Handler mix-in: one SERVER span per request, current while it runs.

    To use it:

    * mix it into a :class:`tornado.web.RequestHandler` subclass, before
      ``RequestHandler`` in the bases;
    * the application must mix in :class:`Recorder`;
    * if the handler overrides ``prepare``, ``on_finish``,
      ``log_exception`` or ``on_connection_close``, it calls ``super()``.

    What it provides:

    * a SERVER span named ``"{METHOD} {route}"`` (``GET /items/{item_id}``)
      with OpenTelemetry's stable HTTP server attributes, started at the
      time the request arrived, parented by the trace context the
      propagators extracted, and ended after Tornado wrote its error and
      access log lines (so those carry the trace id too);
    * the span as the *current* OpenTelemetry span from ``prepare`` on, so
      :func:`opentelemetry.trace.get_current_span` and any other
      OpenTelemetry instrumentation inside the handler nest under it;
    * 5xx responses set the span status to ERROR with ``error.type`` and
      record the exception; 4xx leave the status unset (the semantic
      conventions: a client error is not a server failure);
    * a client that disconnects before the response is finished ends the
      span at once, with ``error.type`` (:meth:`on_connection_close`);
    * :meth:`record_operation`, :meth:`add_divak_tag`,
      :meth:`set_divak_name`.
    """

    if typing.TYPE_CHECKING:
        application: Recorder
        request: httputil.HTTPServerRequest

        def get_status(self) -> int: ...

    _divak_token: object | None = None
    _divak_request_context: RequestContext | None = None

    @property
    def divak_context(self) -> RequestContext:
        """The request's :class:`RequestContext`, with its span started."""
        request_context = self._divak_request_context
        if request_context is None:
            request_context = self.application.divak_start_span(
                self.request,
                self.application.divak_route(self),  # type: ignore[arg-type]
            )
            self._divak_request_context = request_context
        return request_context

    def _divak_attach(self) -> RequestContext:
        request_context = self.divak_context
        if self._divak_token is None:
            self._divak_token = otel_context.attach(request_context.context)  # type: ignore[arg-type]
        return request_context

    def prepare(self) -> typing.Awaitable[None] | None:
        """Start the span and make its context current; chain to ``super()``."""
        self._divak_attach()
        return super().prepare()  # type: ignore[misc]

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: typing.Any,
    ) -> None:
        """Record an unexpected exception on the span; chain to ``super()``.

        A :class:`tornado.web.HTTPError` is an answer, not a failure, and
        is not recorded.  Runs with the request's context current, so the
        log record Tornado writes carries the ids.
        """
        request_context = self._divak_attach()
        if value is not None and not isinstance(value, web.HTTPError):
            request_context.exception_type = (
                f"{type(value).__module__}.{type(value).__qualname__}"
                if type(value).__module__ != "builtins"
                else type(value).__qualname__
            )
            span = request_context.span
            if span is not None and span.is_recording():
                span.record_exception(value)
        super().log_exception(typ, value, tb)  # type: ignore[misc]

    def on_finish(self) -> None:
        """End the span (after the access log line); chain to ``super()``."""
        request_context = self.divak_context
        try:
            with activated(request_context):
                super().on_finish()  # type: ignore[misc]
        finally:
            self.application.divak_end_span(request_context, self.get_status())
            token, self._divak_token = self._divak_token, None
            if (
                token is not None
                and otel_context.get_current() is request_context.context
            ):
                otel_context.detach(token)  # type: ignore[arg-type]
            if request_context.ended:
                request_context.context = None  # no reference cycle left

    def on_connection_close(self) -> None:
        """End the span if the client went away first; chain to ``super()``.

        Tornado calls it when the client closes the connection before the
        response is finished.  The span ends now, without
        ``http.response.status_code`` (no response was sent), with status
        ERROR and ``error.type`` ``"client_disconnected"``, instead of
        staying open until (or if ever) the handler finishes.
        """
        request_context = self._divak_request_context
        if request_context is not None and request_context.span is not None:
            span = request_context.span
            if not request_context.ended:
                request_context.ended = True
                if span.is_recording():
                    span.set_attribute("error.type", CLIENT_DISCONNECTED)
                    span.set_status(
                        Status(StatusCode.ERROR, "client closed the connection")
                    )
                span.end()
        super().on_connection_close()  # type: ignore[misc]

    def set_divak_name(self, name: str) -> None:
        """Rename the request's span (default ``"{METHOD} {route}"``).

        :param name: the new span name; keep it low-cardinality
        """
        span = self.divak_context.span
        if span is not None:
            span.update_name(name)

    @contextlib.contextmanager
    def record_operation(
        self, name: str, attributes: dict[str, typing.Any] | None = None
    ) -> typing.Iterator[trace.Span]:
        """Open an INTERNAL child span for the ``with`` block.

        The span is the current span inside the block (also across
        ``await``), so nested operations and :meth:`add_divak_tag` apply to
        it.  An exception leaving the block is recorded on the span, which
        then has status ERROR, and re-raised.

        :param name: the operation's name, e.g. ``"query-db"``
        :param attributes: initial span attributes
        :returns: the child span
        """
        with self.application.divak_tracer.start_as_current_span(
            name, context=self.divak_context.current_context(), attributes=attributes
        ) as span:
            yield span

    def add_divak_tag(self, name: str, value: typing.Any) -> None:
        """Set an attribute on the innermost open operation, else the request span.

        :param name: attribute name; prefer OpenTelemetry semantic
            convention names
        :param value: a :class:`str`, :class:`bool`, :class:`int`,
            :class:`float` or a sequence of one of them
        """
        request_context = self.divak_context
        span = trace.get_current_span()
        if (
            span.get_span_context().trace_id
            != request_context.span.get_span_context().trace_id
        ):  # type: ignore[union-attr]
            span = request_context.span  # type: ignore[assignment]
        span.set_attribute(name, value)
