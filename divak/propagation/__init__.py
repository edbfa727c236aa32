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
from divak.propagation.combined import Propagation, propagators_from_env
from divak.propagation.requestid import RequestIdPropagation
from divak.propagation.tracecontext import TraceContextPropagation

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
    "propagators_from_env",
]
