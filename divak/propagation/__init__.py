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
leaves the context as it was, and the request starts a new trace.  A
propagator that raises while injecting is skipped (and logged at most twice
a minute): the outgoing request goes on with the other headers.

Where OpenTelemetry's own propagators follow their specification, divak
uses them as they are.  The places where they deviate are fixed here, each
in one method: :meth:`TraceContextPropagation.parse_tracestate` (W3C Trace
Context Level 2 ``tracestate``), :class:`ZipkinPropagation` (B3 sampling
states) and :class:`BaggagePropagation` (W3C Baggage encoding and limits).
"""

from __future__ import annotations

import logging
import typing

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap

from divak.propagation._common import (
    B3_DEBUG_ATTRIBUTE,
    B3_DEBUG_KEY,
    B3_DECISION_KEY,
    B3_DEFERRED_KEY,
    REQUEST_ID_KEY,
    get_request_id,
)
from divak.propagation.b3 import B3DebugMarker, PropagatedSampler, ZipkinPropagation
from divak.propagation.baggage import BaggagePropagation
from divak.propagation.requestid import RequestIdPropagation
from divak.propagation.tracecontext import TraceContextPropagation
from divak.ratelimit import RateLimitedLog, describe_error

__all__ = [
    "B3_DEBUG_ATTRIBUTE",
    "B3_DEBUG_KEY",
    "B3DebugMarker",
    "B3_DECISION_KEY",
    "B3_DEFERRED_KEY",
    "BaggagePropagation",
    "Propagation",
    "PropagatedSampler",
    "REQUEST_ID_KEY",
    "RequestIdPropagation",
    "TraceContextPropagation",
    "ZipkinPropagation",
    "get_request_id",
]

logger = logging.getLogger(__name__)


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
        self._complain = RateLimitedLog(logger)

    def extract(self, carrier: typing.Any) -> Context:
        """Build a new context from the headers in *carrier*.

        The first valid trace context wins; the other values extracted by
        every propagator are kept.  A propagator that raises is logged at
        DEBUG and skipped: bad input never fails a request.
        """
        context = Context()
        parent: trace.Span | None = None
        current: trace.Span = trace.INVALID_SPAN  # the span of *context*
        for propagator in self.propagators:
            try:
                extracted = propagator.extract(carrier, context)
            except Exception:  # noqa: BLE001 - a header must never fail a request
                logger.debug("%r failed to extract", propagator, exc_info=True)
                continue
            if extracted is context:
                continue
            span = trace.get_current_span(extracted)
            if span is not current:
                if parent is None and span.get_span_context().is_valid:
                    parent = current = span
                else:
                    extracted = trace.set_span_in_context(
                        parent or trace.INVALID_SPAN, extracted
                    )
            context = extracted
        return context

    def inject(self, carrier: typing.Any, context: Context | None = None) -> None:
        """Write the headers of every propagator into *carrier*.

        A propagator that raises is skipped, so one broken propagator costs
        its own headers, never the request; the failure is logged as a
        WARNING with its traceback at most twice a minute, with the number
        of failures not logged.

        :param carrier: the outgoing headers, e.g. a
            :class:`tornado.httputil.HTTPHeaders` or a :class:`dict`
        :param context: the context to propagate; the current one when
            :data:`None`
        """
        for propagator in self.propagators:
            try:
                propagator.inject(carrier, context)
            except Exception as error:  # noqa: BLE001 - never fail the request
                self._complain(
                    logging.WARNING,
                    "%r failed to inject, its headers are not sent: %s",
                    propagator,
                    describe_error(error),
                    exc_info=True,
                )
