"""Context keys and carrier helpers shared by divak's propagators."""

from __future__ import annotations

import typing

from opentelemetry.context import Context, get_value

__all__ = [
    "B3_DEBUG_ATTRIBUTE",
    "B3_DEBUG_KEY",
    "B3_DECISION_KEY",
    "B3_DEFERRED_KEY",
    "REQUEST_ID_KEY",
    "get_request_id",
]

#: Context key holding the request's correlation id (:class:`str`).
REQUEST_ID_KEY = "divak.request_id"

#: Context key that is :data:`True` when an upstream B3 header asked for a
#: *debug* trace (``b3: {trace}-{span}-d`` or ``X-B3-Flags: 1``).
B3_DEBUG_KEY = "divak.b3.debug"

#: Span attribute that marks a span of a B3 *debug* trace, for the Zipkin
#: reporter (which writes ``"debug": true`` instead of exporting it).
B3_DEBUG_ATTRIBUTE = "divak.b3.debug"

#: Context key that is :data:`True` when upstream B3 headers carried trace
#: identifiers but no sampling state (B3 *defer*): the local sampler decides,
#: and an unsampled trace is sent on still deferred (no ``X-B3-Sampled``).
B3_DEFERRED_KEY = "divak.b3.deferred"

#: Context key holding a B3 sampling decision that arrived *without* trace
#: identifiers (``b3: 0``, ``b3: 1``, ``X-B3-Sampled: 0`` alone):
#: :data:`True` (accept) or :data:`False` (deny) for the new trace.
B3_DECISION_KEY = "divak.b3.decision"


def get_request_id(context: Context | None = None) -> str | None:
    """Return the correlation id stored in *context* (default: current)."""
    return typing.cast("str | None", get_value(REQUEST_ID_KEY, context))


def _first(values: typing.Iterable[str] | None) -> str | None:
    if not values:
        return None
    return next(iter(values), None)


def _joined(values: typing.Iterable[str] | None) -> str | None:
    """All values of a header, combined with ``,`` as RFC 9110 section 5.3 says."""
    if not values:
        return None
    if isinstance(values, str):
        return values
    return ",".join(values)
