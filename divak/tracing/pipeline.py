"""The request pipeline: one object owns each request's life.

A :class:`divak.Recorder` application answers Tornado's
:meth:`~tornado.web.Application.get_handler_delegate` with a
:class:`RequestPipeline`, made for the request Tornado just routed.  It
is the only place where a request's span starts and ends, and where its
metrics, its access line, its exceptions and a client that goes away are
handled; handler mix-ins only add API on top of it (see
:class:`~divak.RequestTracker`).

The life of one request, and the Tornado seam each step uses:

1. **Start** (``get_handler_delegate``): the propagators extract the
   incoming context, the sampler decides, the SERVER span starts, the
   :class:`~divak.context.RequestContext` is stored on the request and
   ``http.server.active_requests`` counts it.
2. **Run** (the pipeline is Tornado's ``HTTPMessageDelegate``, wrapping
   Tornado's own): the request's OpenTelemetry context is attached while
   Tornado reads the request and creates the handler's task, and detached
   after; the task copies it, so everything the handler runs (``prepare``,
   the HTTP method, ``write_error``, ``on_finish``, the tasks it starts)
   runs in it, and nothing outside the request does.
3. **Answer** (``Application.log_request``, through
   :class:`~divak.logs.access.AccessLogger`): the access line is written
   with the context current (``settings['log_function']`` if set); the
   status code and the response's end time are kept.  The span ends with
   that end time once the handler's task is done, so code after
   ``finish()`` still runs inside the span and can mark it; when the
   response was finished outside the handler's task it ends at once.
   A ``101`` that opened a WebSocket connection is the exception: the
   request's metrics are recorded at the ``101``, the span ends when the
   connection closes (see below).
4. **Fail** (see below): an unexpected exception marks the span ERROR
   with ``error.type`` (its qualified class name) and one exception event,
   before or after the response.
5. **Disconnect**: a client that closes the connection before the
   response ends the span at once, ERROR with ``error.type``
   ``client_disconnected``.  Tornado tells the delegate only while it
   reads the request; afterwards it tells the handler alone, which
   :class:`~divak.RequestTracker` forwards here.
6. **End**: the span gets ``http.response.status_code`` and its status,
   ``http.server.request.duration`` records the request (with the same
   ``error.type``), and the references that tie the request's objects
   together are dropped.

.. rubric:: How an exception reaches the pipeline

Tornado's ``RequestHandler._execute`` catches whatever a handler raises
and hands it to the handler's ``log_exception``, which for anything but
an :class:`~tornado.web.HTTPError` writes ``Uncaught exception`` with the
exception on the ``tornado.application`` logger — inside the handler's
task, so with the request's context current; then, unless the response
was already finished, it sends the error response.  The application sees
none of that, and the only per-request object Tornado calls is the
handler, which may have no divak mix-in.  So the pipeline listens where
Tornado reports it: a :class:`logging.Filter` on ``tornado.application``
(installed by :func:`watch_uncaught_exceptions`, ahead of any other
filter there, so one that drops Tornado's record — as
:class:`~divak.ErrorLogger` does — runs after it) hands any exception
logged while a request's context is current to that request's pipeline.
It never drops a record.  An exception still being handled when the
response finishes (Tornado sends error responses from its ``except``
block) is taken from there too.  Both reach :meth:`RequestPipeline.record_exception`,
which keeps the first exception only.  This works the same for every
handler, with or without divak mix-ins, and patches nothing; it needs
Tornado's record to be made: a handler that overrides ``log_exception``
without calling ``super()``, or a ``tornado.application`` logger that is
disabled or set above ERROR, leaves an exception raised after
``finish()`` unrecorded (one raised before still ends in a 5xx and
``error.type``).

.. rubric:: WebSocket connections

A ``WebSocketHandler``'s task lasts as long as its connection, and its
``open``, ``on_message`` and ``on_close`` run in it.  When such a handler
answers ``101``, :func:`divak.tracing.websocket.accepted` starts tracking
the connection, and the pipeline keeps the span (and itself, for the
exceptions) until the handler's task is done, that is until the
connection closed: then the connection writes its close line and its
attributes, and the span ends with the time of the close
(:mod:`divak.tracing.websocket`).  This is separate from the request's
end: ``http.server.request.duration`` and ``http.server.active_requests``
count the upgrade request, which ended with the ``101``.

.. rubric:: Unsampled and excluded requests

They have no span to mark: their metrics are recorded when the response
is finished, without waiting for the handler's task.  At that moment an
unsampled request that failed or was slow may be exported anyway
(see :mod:`divak.tracing.retention`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httputil, log, web

from divak import propagation, semconv
from divak.context import Probe, RequestContext, activated, current_request_context
from divak.logs import access
from divak.tracing import websocket
from divak.tracing.instrumentation import Instrumentation
from divak.tracing.provider import unsampled_span

__all__ = ["CLIENT_DISCONNECTED", "RequestPipeline", "watch_uncaught_exceptions"]

#: ``error.type`` of a SERVER span whose client closed the connection
#: before the response was finished.
CLIENT_DISCONNECTED = "client_disconnected"

_T = typing.TypeVar("_T")

#: The pipeline whose handler task Tornado is creating.  Set only around
#: the delegate calls in which Tornado creates that task: the task copies
#: it, the connection's own task does not keep it.  So a response finished
#: with it set was finished in the handler's task (or in one it started).
_HANDLER_TASK_OF: contextvars.ContextVar[RequestPipeline | None] = (
    contextvars.ContextVar("divak_handler_task_of", default=None)
)


class RequestPipeline(httputil.HTTPMessageDelegate):
    """The life of one request: span, context, metrics, access line, errors.

    Made by :meth:`divak.Recorder.get_handler_delegate` for every request
    Tornado routed, whatever its handler (404s and ready-made handlers
    included); the SERVER span starts here.  It is Tornado's
    ``HTTPMessageDelegate`` for the request, wrapping Tornado's own, and
    the request's :class:`~divak.context.RequestLifecycle`
    (:attr:`RequestContext.lifecycle <divak.context.RequestContext.lifecycle>`)
    until it is done.  The steps, and the Tornado seam each uses, are in
    :mod:`divak.tracing.pipeline`.

    :param instrumentation: the application's tracer, propagators, routes
        and metrics
    :param request: the request Tornado routed
    :param handler_class: the handler class that will serve it
    :param delegate: Tornado's delegate for the request (what
        :meth:`tornado.web.Application.get_handler_delegate` returns: an
        ``HTTPMessageDelegate`` with an ``execute`` method)
    """

    __slots__ = (
        "instrumentation",
        "delegate",
        "context",
        "request",
        "end_time",
        "websocket",
        "streams_body",
    )

    def __init__(
        self,
        instrumentation: Instrumentation,
        request: httputil.HTTPServerRequest,
        handler_class: type[web.RequestHandler],
        delegate: typing.Any,
    ) -> None:
        self.instrumentation = instrumentation
        self.delegate = delegate
        #: The request until its metrics were recorded.
        self.request: httputil.HTTPServerRequest | None = request
        #: When the response was finished (ns since the epoch), else None.
        self.end_time: int | None = None
        #: The WebSocket connection the request opened, until it closed.
        self.websocket: websocket.WebSocketConnection | None = None
        #: Whether the handler may start when the headers arrive (it
        #: streams the request body), or whether *delegate* is one divak
        #: cannot tell about: only then does ``headers_received`` need the
        #: request's context.  Tornado's own delegate says so in its
        #: ``stream_request_body`` (a private class: there is no public way).
        self.streams_body = not isinstance(
            delegate, web._HandlerDelegate
        ) or bool(delegate.stream_request_body)
        #: The request's :class:`~divak.context.RequestContext`.
        self.context = self._start(request, handler_class)

    # -- start ----------------------------------------------------------
    def _start(
        self, request: httputil.HTTPServerRequest, handler_class: type
    ) -> RequestContext:
        instrumentation = self.instrumentation
        tracer = instrumentation.tracer  # builds the provider once
        parent = instrumentation.extract(request.headers)
        request_id = propagation.get_request_id(parent)
        route = instrumentation.routes.template(handler_class, request.path)
        request_context = RequestContext(
            parent, request_id, instrumentation.service_name, route
        )
        request_context.lifecycle = self
        instrumentation.metrics.request_started(request)
        instrumentation.requests_in_flight += 1
        request.divak_context = request_context  # type: ignore[attr-defined]
        request.divak_request_id = request_id  # type: ignore[attr-defined]
        excluded = instrumentation.excluded
        if (excluded is not None and excluded(request.uri or "")) or (
            issubclass(handler_class, Probe) and not instrumentation.trace_probes
        ):
            # Not traced: the upstream trace context goes on unchanged.
            request_context.set_span(trace.get_current_span(parent))
            request_context.ended = True
            return request_context
        method = request.method or "GET"
        known = method if method in semconv.KNOWN_METHODS else "_OTHER"
        name = semconv.span_name(known, route)
        span: trace.Span | None = unsampled_span(tracer, name, parent)
        if span is None:
            start_time = time.time_ns() - int(request.request_time() * 1e9)
            if instrumentation.samples_ahead:
                # Sampled: the SDK's span, with its attributes, in one call.
                span = tracer.start_span(
                    name,
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes=self._request_attributes(
                        request, known, route, request_id
                    ),
                    start_time=start_time,
                )
            else:  # the provider's own sampler decides
                span = tracer.start_span(
                    name, context=parent, kind=SpanKind.SERVER, start_time=start_time
                )
                if span.is_recording():
                    span.set_attributes(
                        self._request_attributes(request, known, route, request_id)
                    )
        request_context.set_span(span)
        return request_context

    def _request_attributes(
        self,
        request: httputil.HTTPServerRequest,
        method: str,
        route: str | None,
        request_id: str | None,
    ) -> dict[str, typing.Any]:
        """The SERVER span's attributes taken from *request*.

        Computed only for a span that records: a sampled request at its
        start, a retained one at its end.
        """
        instrumentation = self.instrumentation
        attributes = semconv.server_attributes(
            request,
            method,
            route,
            xheaders=bool(instrumentation.settings.get("xheaders")),
            limit=instrumentation.max_request_attribute_length,
            redacted=instrumentation.redacted_params,
        )
        if request_id:
            attributes["divak.request_id"] = request_id
        captured = instrumentation.captured_server
        if captured.request:
            attributes.update(captured.request_attributes(request.headers))
        return attributes

    # -- Tornado's HTTPMessageDelegate ----------------------------------
    def _creating_handler_task(
        self, method: typing.Callable[..., _T], *args: typing.Any
    ) -> _T:
        # Tornado creates the handler's task inside these calls: it copies
        # the current context, the request's, and the pipeline mark.
        context = self.context.context
        attached = (
            otel_context.attach(context)
            if context is not None and otel_context.get_current() is not context
            else None
        )
        token = _HANDLER_TASK_OF.set(self)
        try:
            return method(*args)
        finally:
            _HANDLER_TASK_OF.reset(token)
            if attached is not None:
                otel_context.detach(attached)

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> typing.Awaitable[None] | None:
        """Tornado's delegate call, with the request's context current.

        Only a handler that streams the request body starts here; for any
        other, Tornado's delegate does nothing that needs the context.
        """
        if not self.streams_body:
            return self.delegate.headers_received(start_line, headers)
        return self._creating_handler_task(
            self.delegate.headers_received, start_line, headers
        )

    def data_received(self, chunk: bytes) -> typing.Awaitable[None] | None:
        """Tornado's delegate call, with the request's context current."""
        with activated(self.context):
            return self.delegate.data_received(chunk)

    def finish(self) -> None:
        """Tornado's delegate call, with the request's context current."""
        self._creating_handler_task(self.delegate.finish)

    def execute(self) -> typing.Awaitable[None] | None:
        """Tornado's delegate call, with the request's context current.

        :meth:`tornado.web.Application.__call__` (the plain-callback
        server interface) calls it.
        """
        return self._creating_handler_task(self.delegate.execute)

    def on_connection_close(self) -> None:
        """The connection closed while Tornado read the request: end the span."""
        with activated(self.context):
            self.delegate.on_connection_close()
        self.client_disconnected()

    # -- the request's events -------------------------------------------
    def response_finished(self, handler: web.RequestHandler) -> None:
        """*handler* sent its whole response: write the access line; end the span.

        Called from the application's ``log_request`` (Tornado calls it
        from :meth:`~tornado.web.RequestHandler.finish`).  The line is
        written with the request's context current.  The span ends with
        the time of this call: when the handler's task is done if the
        response was finished inside it, else now.

        :param handler: the handler that answered the request
        """
        request_context = self.context
        task = _current_task() if _HANDLER_TASK_OF.get() is self else None
        with activated(request_context):
            access.log_access(handler)
        if request_context.status_code is not None:
            return
        request_context.status_code = handler.get_status()
        self.record_exception(sys.exc_info()[1])
        if (
            request_context.status_code == 101
            and task is not None
            and self._websocket_accepted(handler, task)
        ):
            return
        if request_context.ended or not request_context.span.is_recording():
            # Nothing to mark on an unsampled or untraced request: done now.
            if not request_context.ended:
                self._retain()
            request_context.ended = True
            self._record_metrics()
            self._release()
            return
        self.end_time = time.time_ns()
        if task is None or task.done() or request_context.status_code == 101:
            # A 101 that opened no WebSocket connection divak tracks: the
            # request is done, whatever the handler's task does next.
            self._end_span()
        else:
            task.add_done_callback(self._handler_task_done)

    def record_exception(self, value: BaseException | None) -> None:
        """Mark the span with *value*, an exception that escaped the handler.

        The first unexpected exception is recorded (``error.type`` and one
        exception event; the span's status becomes ERROR when it ends);
        later ones, :class:`tornado.web.HTTPError` (an answer, not a
        failure) and Tornado's ``Finish`` are ignored, as is anything once
        the span ended.

        :param value: the exception, or :data:`None`
        """
        request_context = self.context
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
        elif self.instrumentation.retention is not None:
            request_context.exception = value  # see _retain

    def client_disconnected(self) -> None:
        """The client closed the connection before the response was sent.

        The span ends now, without ``http.response.status_code``, with
        status ERROR and ``error.type`` ``"client_disconnected"``; the
        request's metrics are recorded with that ``error.type``.  Nothing
        happens once the response was sent.
        """
        request_context = self.context
        if request_context.status_code is not None:
            return
        request = self.request
        if request is not None:
            self.instrumentation.metrics.request_finished(
                request,
                request_context.route,
                None,
                CLIENT_DISCONNECTED,
                request_context.context,
                sampled=request_context.sampled,
            )
            self._record_for_debug_page(request, None, request.request_time(), True)
            self.request = None
        if not request_context.ended:
            request_context.ended = True
            span = request_context.span
            if span.is_recording():
                span.set_attribute("error.type", CLIENT_DISCONNECTED)
                span.set_status(
                    Status(StatusCode.ERROR, "client closed the connection")
                )
                span.end()
        self._release()

    # -- a WebSocket connection (see divak.tracing.websocket) ------------
    def _websocket_accepted(
        self, handler: web.RequestHandler, task: asyncio.Task[typing.Any]
    ) -> bool:
        """*handler* answered 101: track its connection until the task is done.

        The request's metrics are recorded now and it is no longer in
        flight (it was answered); the span stays open.  Returns
        :data:`False` when the handler opened no connection divak tracks
        (the span then ends as for any request).
        """
        if task.done():
            return False
        connection = websocket.accepted(handler, self.context)
        if connection is None:
            return False
        self.websocket = connection
        self.instrumentation.requests_in_flight -= 1
        self.end_time = time.time_ns()
        self._record_metrics()
        task.add_done_callback(self._websocket_closed)
        return True

    def _websocket_closed(self, task: asyncio.Future[typing.Any]) -> None:
        """The handler's task is done, so the connection closed: end the span."""
        connection = self.websocket
        self.end_time = time.time_ns()
        try:
            if connection is not None:
                connection.ended(self.context)
        finally:
            if self.context.ended:  # excluded from tracing: no span to end
                self._release()
            else:
                self._end_span()
            self.websocket = None

    # -- the end --------------------------------------------------------
    def _handler_task_done(self, task: asyncio.Future[typing.Any]) -> None:
        self._end_span()

    def _end_span(self) -> None:
        """End the SERVER span with the response's status code and end time.

        ERROR with ``error.type`` for a 5xx response and for an unexpected
        exception even when the response had been sent with another
        status; 4xx leave it unset (OpenTelemetry's HTTP conventions).
        """
        request_context = self.context
        if request_context.ended:
            return
        request_context.ended = True
        self._record_metrics()
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
            span.end(self.end_time)
        self._release()

    def _record_metrics(self) -> None:
        """Record the finished request (``http.server.*`` metrics), once."""
        request = self.request
        if request is None:
            return
        self.request = None
        request_context = self.context
        end_time = self.end_time
        seconds = None
        if end_time is not None:
            seconds = request.request_time() - (time.time_ns() - end_time) / 1e9
        self.instrumentation.metrics.request_finished(
            request,
            request_context.route,
            request_context.status_code,
            request_context.exception_type,
            request_context.context,
            seconds,
            sampled=request_context.sampled,
        )
        self._record_for_debug_page(
            request,
            request_context.status_code,
            request.request_time() if seconds is None else seconds,
            request_context.exception_type is not None,
        )

    def _record_for_debug_page(
        self,
        request: httputil.HTTPServerRequest,
        status_code: int | None,
        seconds: float,
        error: bool,
    ) -> None:
        stats = self.instrumentation.debug_stats
        if stats is not None:
            request_context = self.context
            stats.record(
                request_context.route,
                request.method or "GET",
                status_code,
                seconds,
                request_context.trace_id_hex,
                error,
                request.path,
            )

    # -- retention (divak.tracing.retention) -----------------------------
    def _retain(self) -> None:
        """Export the unsampled request that just answered if it is retained.

        Called once, when the response of a request the sampler dropped
        was finished, before its metrics are recorded.  Cheap for a request
        that is not retained: one comparison of its status, exception and
        duration; the attributes and spans are made only for one that is.
        """
        request_context = self.context
        instrumentation = self.instrumentation
        retention = instrumentation.retention
        request = self.request
        if retention is None or request is None:
            return
        reason = retention.reason(
            request_context.status_code, request_context.exception_type, request
        )
        if (
            reason is not None
            and request_context.span.get_span_context().is_valid
            and retention.admit(reason, instrumentation.metrics)
        ):
            seconds = request.request_time()
            end_time = time.time_ns()
            method = request.method or "GET"
            known = method if method in semconv.KNOWN_METHODS else "_OTHER"
            route = request_context.route
            attributes = self._request_attributes(
                request, known, route, request_context.request_id
            )
            status_code = request_context.status_code
            if status_code is not None:
                attributes["http.response.status_code"] = status_code
            error_type = request_context.exception_type
            if error_type is None and status_code is not None and status_code >= 500:
                error_type = str(status_code)
            if error_type is not None:
                attributes["error.type"] = error_type
            spans = retention.spans(
                request_context,
                name=semconv.span_name(known, route),
                attributes=attributes,
                reason=reason,
                start_time=end_time - int(seconds * 1e9),
                end_time=end_time,
                resource=instrumentation.provider.resource,
            )
            for queue in instrumentation.span_queues:
                for span in spans:
                    queue.on_end(span)
        # Judged: the records are of no more use (an exception's traceback
        # would keep the handler's frames alive).
        if request_context.exception is not None:
            request_context.exception = None
        if request_context.operations is not None:
            request_context.operations = None

    def _release(self) -> None:
        # Drop the references that would keep the request's objects alive
        # in a cycle (context <-> OpenTelemetry context, context <-> pipeline).
        request_context = self.context
        if request_context.lifecycle is self and self.websocket is None:
            # (A request that opened a WebSocket left the count at the 101.)
            self.instrumentation.requests_in_flight -= 1
        request_context.context = None
        request_context.lifecycle = None
        self.request = None


def _current_task() -> asyncio.Task[typing.Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: nothing to wait for
        return None


class _UncaughtExceptions(logging.Filter):
    """Hand an exception logged during a request to the request's pipeline.

    On ``tornado.application``, where Tornado reports an exception that
    escaped a handler (see :mod:`divak.tracing.pipeline`).  Never drops a
    record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if exc_info:
            request_context = current_request_context()
            if request_context is not None:
                lifecycle = request_context.lifecycle
                if lifecycle is not None:
                    lifecycle.record_exception(exc_info[1])
        return True


_UNCAUGHT = _UncaughtExceptions()


def watch_uncaught_exceptions() -> None:
    """Let request pipelines see the exceptions Tornado reports; idempotent.

    Installs the filter that hands them over on the ``tornado.application``
    logger, ahead of the filters already there (a filter that drops a
    record stops the ones after it).  :class:`divak.Recorder` calls it.
    """
    filters = log.app_log.filters
    if _UNCAUGHT not in filters:
        filters.insert(0, _UNCAUGHT)
