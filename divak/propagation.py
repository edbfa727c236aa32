"""Propagators: how trace context and correlation ids cross process borders.

Every propagator here is an OpenTelemetry
:class:`~opentelemetry.propagators.textmap.TextMapPropagator`, so any other
OpenTelemetry propagator may be added to an application too.  An
application combines the ones it was given with :class:`Propagation`:

* extraction runs them in the order they were added; the **first** one that
  finds a valid trace context wins (later trace headers are ignored), while
  the other values they extract (correlation id, baggage, ...) are all kept;
* injection writes the headers of **all** of them.

Invalid input never raises: a propagator that cannot parse its header
leaves the context as it was, and the request starts a new trace.
"""

from __future__ import annotations

import logging
import typing
import uuid

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.trace.propagation import tracecontext

__all__ = [
    "B3_DEBUG_KEY",
    "Propagation",
    "REQUEST_ID_KEY",
    "RequestIdPropagation",
    "TraceContextPropagation",
    "ZipkinPropagation",
    "get_request_id",
]

logger = logging.getLogger(__name__)

#: Context key holding the request's correlation id (:class:`str`).
REQUEST_ID_KEY = "divak.request_id"

#: Context key that is :data:`True` when an upstream B3 header asked for a
#: *debug* trace (``b3: {trace}-{span}-d`` or ``X-B3-Flags: 1``).
B3_DEBUG_KEY = "divak.b3.debug"


def get_request_id(context: Context | None = None) -> str | None:
    """Return the correlation id stored in *context* (default: current)."""
    from opentelemetry.context import get_value

    return typing.cast("str | None", get_value(REQUEST_ID_KEY, context))


class TraceContextPropagation(tracecontext.TraceContextTextMapPropagator):
    """W3C Trace Context: the ``traceparent`` and ``tracestate`` headers.

    Follows the W3C Trace Context recommendation through OpenTelemetry's
    own ``TraceContextTextMapPropagator``.
    This is the propagator an application uses when none was added.
    """


class ZipkinPropagation(textmap.TextMapPropagator):
    """Zipkin's B3 headers, as openzipkin/b3-propagation specifies them.

    Extraction reads the single ``b3`` header when present and the
    ``X-B3-TraceId``, ``X-B3-SpanId``, ``X-B3-Sampled`` and ``X-B3-Flags``
    headers otherwise.  Injection writes the multi-header form, or the
    single ``b3`` header when *single_header* is true.  A *debug* trace
    (``d`` sampling state or ``X-B3-Flags: 1``) is sampled, marked
    ``"debug": true`` in the Zipkin export and propagated downstream as
    ``X-B3-Flags: 1``.

    :param single_header: inject the single ``b3`` header instead of the
        ``X-B3-*`` headers
    """

    SINGLE_HEADER = "b3"
    FLAGS_HEADER = "x-b3-flags"

    def __init__(self, single_header: bool = False) -> None:
        self.single_header = single_header
        self._format = B3SingleFormat() if single_header else B3MultiFormat()

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the B3 parent added when the headers are valid."""
        extracted = self._format.extract(carrier, context, getter)
        if (
            extracted is context
            or not trace.get_current_span(extracted).get_span_context().is_valid
        ):
            return context if context is not None else Context()
        if _is_debug(carrier, getter):
            from opentelemetry.context import set_value

            extracted = set_value(B3_DEBUG_KEY, True, extracted)
        return extracted

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write the B3 headers of the span in *context* (default: current)."""
        from opentelemetry.context import get_value

        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        debug = bool(get_value(B3_DEBUG_KEY, context))
        if self.single_header:
            fields = [
                trace.format_trace_id(span_context.trace_id),
                trace.format_span_id(span_context.span_id),
                "d" if debug else ("1" if span_context.trace_flags.sampled else "0"),
            ]
            setter.set(carrier, self.SINGLE_HEADER, "-".join(fields))
            return
        setter.set(
            carrier,
            B3MultiFormat.TRACE_ID_KEY,
            trace.format_trace_id(span_context.trace_id),
        )
        setter.set(
            carrier,
            B3MultiFormat.SPAN_ID_KEY,
            trace.format_span_id(span_context.span_id),
        )
        if debug:
            # Debug implies an accept decision: the spec sends X-B3-Flags: 1
            # instead of X-B3-Sampled.
            setter.set(carrier, self.FLAGS_HEADER, "1")
        else:
            setter.set(
                carrier,
                B3MultiFormat.SAMPLED_KEY,
                "1" if span_context.trace_flags.sampled else "0",
            )

    @property
    def fields(self) -> set[str]:
        """The header names this propagator writes."""
        if self.single_header:
            return {self.SINGLE_HEADER}
        return B3MultiFormat().fields | {self.FLAGS_HEADER}


def _first(values: typing.Iterable[str] | None) -> str | None:
    if not values:
        return None
    return next(iter(values), None)


def _is_debug(carrier: typing.Any, getter: textmap.Getter[typing.Any]) -> bool:
    single = _first(getter.get(carrier, ZipkinPropagation.SINGLE_HEADER))
    if single:
        parts = single.split("-")
        return len(parts) >= 3 and parts[2] == "d"
    return _first(getter.get(carrier, ZipkinPropagation.FLAGS_HEADER)) == "1"


def _valid_request_id(value: str | None, max_length: int) -> bool:
    if not value or len(value) > max_length:
        return False
    return all("!" <= ch <= "~" for ch in value)


class RequestIdPropagation(textmap.TextMapPropagator):
    """A correlation id header, taken from the request or made up.

    The incoming header is accepted when it is 1 to *max_length* visible
    ASCII characters (``!`` to ``~``: no spaces, no control characters,
    so no CR or LF); otherwise *value_factory* makes a new one (an invalid
    value is logged at DEBUG and never echoed).  The id is echoed on every
    response (errors and 404s included), written into every log record as
    ``divak_request_id``, set on the server span as the ``divak.request_id``
    attribute, and sent on every outgoing request.

    :param header_name: the header to read, echo and send; divak-tornado
        uses ``Request-Id``, sprockets.mixins.correlation ``Correlation-ID``
    :param value_factory: callable returning a new id; its :func:`str` is
        used.  :data:`None` disables generation: requests without a valid
        header then have no id.
    :param max_length: longest accepted id, in characters
    """

    def __init__(
        self,
        header_name: str = "Request-Id",
        value_factory: typing.Callable[[], typing.Any] | None = uuid.uuid4,
        *,
        max_length: int = 128,
    ) -> None:
        self.header_name = header_name
        self.value_factory = value_factory
        self.max_length = max_length

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the request's correlation id added."""
        from opentelemetry.context import set_value

        value = _first(getter.get(carrier, self.header_name))
        if not _valid_request_id(value, self.max_length):
            if value is not None:
                logger.debug(
                    "ignoring invalid %s header of %d characters",
                    self.header_name,
                    len(value),
                )
            value = None
            if self.value_factory is not None:
                value = str(self.value_factory())
        if value is None:
            return context if context is not None else Context()
        return set_value(REQUEST_ID_KEY, value, context)

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write the correlation id of *context* (default: current)."""
        value = get_request_id(context)
        if value is not None:
            setter.set(carrier, self.header_name, value)

    @property
    def fields(self) -> set[str]:
        """The header name this propagator writes."""
        return {self.header_name}


class Propagation:
    """The propagators of one application, combined.

    :param propagators: OpenTelemetry text-map propagators, in order of
        precedence for extraction
    """

    def __init__(self, propagators: typing.Sequence[textmap.TextMapPropagator]):
        self.propagators = tuple(propagators)
        self.request_id: RequestIdPropagation | None = next(
            (p for p in self.propagators if isinstance(p, RequestIdPropagation)),
            None,
        )

    def extract(self, carrier: typing.Any) -> Context:
        """Build a new context from the headers in *carrier*.

        The first valid trace context wins; the other values extracted by
        every propagator are kept.  A propagator that raises is logged at
        DEBUG and skipped: bad input never fails a request.
        """
        context = Context()
        parent: trace.Span | None = None
        for propagator in self.propagators:
            try:
                extracted = propagator.extract(carrier, context)
            except Exception:  # noqa: BLE001 - a header must never fail a request
                logger.debug("%r failed to extract", propagator, exc_info=True)
                continue
            span = trace.get_current_span(extracted)
            if span is not trace.get_current_span(context):
                if parent is None and span.get_span_context().is_valid:
                    parent = span
                else:
                    extracted = trace.set_span_in_context(
                        parent or trace.INVALID_SPAN, extracted
                    )
            context = extracted
        return context

    def inject(self, carrier: typing.Any, context: Context | None = None) -> None:
        """Write the headers of every propagator into *carrier*."""
        for propagator in self.propagators:
            propagator.inject(carrier, context)
