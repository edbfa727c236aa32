"""The per-request context: everything divak knows about one request.

One :class:`RequestContext` is made when the application routes a request
(by its :class:`~divak.tracing.pipeline.RequestPipeline`, see
:class:`divak.Recorder`) and stored in one place, the request object
(``request.divak_context``).  Its OpenTelemetry context (parent, SERVER
span and the :class:`RequestContext` itself under
:data:`REQUEST_CONTEXT_KEY`) is current for the whole time the handler
runs, so logs, error documents, the access log, response headers and
outgoing headers all read the same ids.

:class:`RequestLifecycle` names what the modules below the request
pipeline may ask of it (the access log tells it that the response was
sent); :attr:`RequestContext.lifecycle` is the way to it.  :class:`Probe`
marks the handlers whose requests are probes (health checks, scrapes),
which get no span by default.

:class:`OperationRecords` keeps, for a request the sampler dropped, a
minimal record of each ``record_operation`` block (name, times, span,
exception), at most :data:`MAX_OPERATION_RECORDS`: what
:mod:`divak.tracing.retention` needs to export them if the request turns
out to fail or to be slow.
"""

from __future__ import annotations

import itertools
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace

if typing.TYPE_CHECKING:
    from tornado import httputil, web

__all__ = [
    "MAX_OPERATION_RECORDS",
    "OperationRecord",
    "OperationRecords",
    "REQUEST_CONTEXT_KEY",
    "Probe",
    "RequestContext",
    "RequestLifecycle",
    "activated",
    "current_request_context",
    "request_context_of",
]

#: Key under which the request's :class:`RequestContext` is stored in the
#: OpenTelemetry context.
REQUEST_CONTEXT_KEY = otel_context.create_key("divak.request")

#: Operations of one unsampled request kept for retention, at most.
MAX_OPERATION_RECORDS = 64


class OperationRecord(typing.NamedTuple):
    """One finished ``record_operation`` block of a request the sampler dropped.

    Its span was not recording: this is what retention needs to export it
    after all (see :mod:`divak.tracing.retention`).  Times are
    nanoseconds since the epoch.
    """

    #: The operation's name.
    name: str
    #: The attributes it was opened with (not copied), or :data:`None`.
    attributes: typing.Mapping[str, typing.Any] | None
    #: Its (non-recording) span, which has its ids.
    span: trace.Span
    #: The context it was started under, whose span is its parent (the
    #: SERVER span or an enclosing operation).
    parent: otel_context.Context
    #: When the block was entered.
    start_time: int
    #: When it was left.
    end_time: int
    #: The exception that left the block, else :data:`None`.
    exception: BaseException | None


class OperationRecords:
    """The operations recorded for one unsampled request, bounded.

    Recording is cheap (a tuple appended); iterating gives
    :class:`OperationRecord` objects, in the order the blocks ended.

    .. attribute:: dropped

       Operations that ended once :data:`MAX_OPERATION_RECORDS` were kept
       (:class:`int`).
    """

    __slots__ = ("_records", "dropped")

    def __init__(self) -> None:
        self._records: list[tuple[typing.Any, ...]] = []
        self.dropped = 0

    def add(
        self,
        name: str,
        attributes: typing.Mapping[str, typing.Any] | None,
        span: trace.Span,
        parent: otel_context.Context,
        start_time: int,
        end_time: int,
        exception: BaseException | None,
    ) -> None:
        """Keep a finished operation (the fields of :class:`OperationRecord`),
        or count it once :data:`MAX_OPERATION_RECORDS` are kept."""
        records = self._records
        if len(records) < MAX_OPERATION_RECORDS:
            records.append(
                (name, attributes, span, parent, start_time, end_time, exception)
            )
        else:
            self.dropped += 1

    def __iter__(self) -> typing.Iterator[OperationRecord]:
        return itertools.starmap(OperationRecord, self._records)

    def __len__(self) -> int:
        return len(self._records)


class RequestLifecycle(typing.Protocol):
    """The object that owns one request's life, from routing to the span's end.

    :class:`divak.tracing.pipeline.RequestPipeline` is the implementation;
    this module sits below it, so it names here the three events the
    request's other parts report to it.
    """

    def response_finished(self, handler: web.RequestHandler) -> None:
        """*handler* sent the whole response: write the access line, end the span."""

    def record_exception(self, value: BaseException | None) -> None:
        """An exception escaped the handler: mark the request's span with it."""

    def client_disconnected(self) -> None:
        """The client closed the connection before the response was sent."""


class Probe:
    """Marks a request handler as a probe: the service's machinery calls it.

    A readiness check, a metrics scrape, the debug page: requests a load
    balancer, Prometheus or an operator sends every few seconds, which
    would fill the trace store with spans nobody reads.  Requests routed
    to a handler class that derives from :class:`Probe` get no span unless
    ``settings['divak_trace_probes']`` is true (see
    :func:`divak.tracing.excluded.trace_probes`); they are still counted in
    the request metrics and written to the access log.
    :class:`~divak.StatusHandler`, :class:`~divak.MetricsHandler` and the
    debug page's handler derive from it; derive your own health checks
    from it too (``class Health(divak.context.Probe, web.RequestHandler)``).

    It adds nothing to the class: the request pipeline asks
    ``issubclass(handler_class, Probe)`` once per request.
    """

    __slots__ = ()


class RequestContext:
    """Everything divak knows about one request: the single source of truth.

    .. attribute:: parent

       The :class:`~opentelemetry.context.Context` the propagators
       extracted from the request headers (remote parent span, correlation
       id, baggage).

    .. attribute:: request_id

       The correlation id (:class:`str`), or :data:`None` when the
       application has no :class:`~divak.RequestIdPropagation`.

    .. attribute:: span

       The SERVER span (a non-recording span when the request is not
       sampled or is excluded from tracing).

    .. attribute:: context

       The OpenTelemetry context that is current while the handler runs:
       :attr:`parent` plus :attr:`span` plus this object.  Set back to
       :data:`None` once the span ended, so that this object and its
       context do not keep each other alive.

    .. attribute:: route

       The route template that matched (``/items/{item_id}``), or
       :data:`None`.

    .. attribute:: status_code

       The response's status code once it was sent, else :data:`None`.

    .. attribute:: exception_type

       ``error.type`` of the unexpected exception the request raised (the
       first one), else :data:`None`.

    .. attribute:: ended

       :data:`True` once the span was ended (from the start for a request
       excluded from tracing); it is ended only once.

    .. attribute:: lifecycle

       The :class:`RequestLifecycle` that owns the request (its
       :class:`~divak.tracing.pipeline.RequestPipeline`) until it is done
       with it, then :data:`None`.

    .. attribute:: exception

       For an unsampled request, while retention may still export it: the
       unexpected exception whose type is :attr:`exception_type`, else
       :data:`None` (a sampled span records it at once).

    .. attribute:: operations

       For an unsampled request, while retention may still export it: its
       :class:`OperationRecords`, made by its first ``record_operation``;
       else :data:`None`.
    """

    __slots__ = (
        "parent",
        "request_id",
        "service_name",
        "span",
        "context",
        "route",
        "status_code",
        "exception_type",
        "ended",
        "lifecycle",
        "exception",
        "operations",
        "_log_ids",
        "__weakref__",
    )

    def __init__(
        self,
        parent: otel_context.Context,
        request_id: str | None,
        service_name: str,
        route: str | None = None,
    ) -> None:
        self.parent = parent
        self.request_id = request_id
        self.service_name = service_name
        self.route = route
        self.span: trace.Span = trace.INVALID_SPAN
        self.context: otel_context.Context | None = None
        self.status_code: int | None = None
        self.exception_type: str | None = None
        self.ended = False
        self.lifecycle: RequestLifecycle | None = None
        self.exception: BaseException | None = None
        self.operations: OperationRecords | None = None
        self._log_ids: dict[str, typing.Any] | None = None

    def set_span(self, span: trace.Span) -> None:
        """Make *span* the request's SERVER span and build :attr:`context`."""
        self.span = span
        self._log_ids = None
        self.context = otel_context.set_value(
            REQUEST_CONTEXT_KEY, self, trace.set_span_in_context(span, self.parent)
        )

    @property
    def trace_id_hex(self) -> str | None:
        """The trace id, 32 lower-case hex digits, or :data:`None` outside a trace."""
        span_context = self.span.get_span_context()
        if not span_context.is_valid:
            return None
        return trace.format_trace_id(span_context.trace_id)

    @property
    def span_id_hex(self) -> str | None:
        """The SERVER span's id, 16 lower-case hex digits, or :data:`None`."""
        span_context = self.span.get_span_context()
        if not span_context.is_valid:
            return None
        return trace.format_span_id(span_context.span_id)

    @property
    def sampled(self) -> bool:
        """:data:`True` when the request's trace is sampled."""
        return bool(self.span.get_span_context().trace_flags.sampled)

    @property
    def log_ids(self) -> dict[str, typing.Any]:
        """The log record attributes of the SERVER span, computed on first use."""
        ids = self._log_ids
        if ids is None:
            span_context = self.span.get_span_context()
            valid = span_context.is_valid
            ids = self._log_ids = {
                "otelTraceID": trace.format_trace_id(span_context.trace_id)
                if valid
                else "0",
                "otelSpanID": trace.format_span_id(span_context.span_id)
                if valid
                else "0",
                "otelTraceSampled": bool(span_context.trace_flags.sampled),
                "otelServiceName": self.service_name,
                "divak_request_id": self.request_id or "",
            }
        return ids

    def current_context(self) -> otel_context.Context:
        """The current OpenTelemetry context if it belongs to this request.

        Otherwise (code running outside the handler's task, e.g. a callback
        scheduled before the request arrived) the request's own
        :attr:`context`, so child spans always join the request's trace.
        """
        current = otel_context.get_current()
        if current.get(REQUEST_CONTEXT_KEY) is self or self.context is None:
            return current
        return self.context


def request_context_of(request: httputil.HTTPServerRequest) -> RequestContext | None:
    """The :class:`RequestContext` of *request*, or :data:`None` outside divak."""
    # A probe on a foreign object: Tornado's request carries divak's mark only
    # when a divak.Recorder application routed it.
    return getattr(request, "divak_context", None)


def current_request_context() -> RequestContext | None:
    """The :class:`RequestContext` of the request being handled, if any."""
    return otel_context.get_value(REQUEST_CONTEXT_KEY)  # type: ignore[return-value]


class activated:  # noqa: N801 - used like a function
    """Make *request_context* current for the ``with`` block, if it is not.

    Does nothing when the context is already current (the common case
    inside a handler) or when *request_context* is :data:`None` or its
    span already ended.

    :param request_context: the request's context, or :data:`None`
    """

    __slots__ = ("context", "token")

    def __init__(self, request_context: RequestContext | None) -> None:
        self.context = request_context.context if request_context else None
        self.token: object | None = None

    def __enter__(self) -> None:
        context = self.context
        if context is not None and otel_context.get_current() is not context:
            self.token = otel_context.attach(context)

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
            self.token = None
