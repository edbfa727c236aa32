"""The propagators of one application, combined: :class:`Propagation`.

And :func:`propagators_from_env`, the propagators ``OTEL_PROPAGATORS`` names.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from tornado import httputil

from divak.logs.ratelimit import RateLimitedLog, describe_error, safe_log
from divak.propagation.b3 import ZipkinPropagation
from divak.propagation.baggage import BaggagePropagation
from divak.propagation.requestid import RequestIdPropagation
from divak.propagation.tracecontext import TraceContextPropagation
from divak.settings import entry_point_factories, env_value, names_variable

__all__ = ["Propagation", "propagators_from_env"]

logger = logging.getLogger("divak.propagation")

#: divak's propagators that extract nothing when none of the headers they
#: read (their ``EXTRACTED_HEADERS``) is there.
_SKIPPED_WITHOUT_HEADERS = (
    TraceContextPropagation,
    BaggagePropagation,
    ZipkinPropagation,
)


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
        # Each propagator, with the names of the headers it reads (in lower
        # case and in Tornado's case) when it is one of divak's trace-context,
        # B3 or baggage propagators (they extract nothing without one of
        # them), else None (always run:
        # a correlation id is made when its header is absent, and another
        # library's propagator may read what it likes).
        self._extractors: tuple[
            tuple[textmap.TextMapPropagator, frozenset[str] | None], ...
        ] = tuple(
            (
                propagator,
                _both_cases(propagator.EXTRACTED_HEADERS)
                if isinstance(propagator, _SKIPPED_WITHOUT_HEADERS)
                else None,
            )
            for propagator in self.propagators
        )
        self._complain = RateLimitedLog(logger)

    def extract(self, carrier: typing.Any) -> Context:
        """Build a new context from the headers in *carrier*.

        The first valid trace context wins; the other values extracted by
        every propagator are kept.  A propagator that raises is logged at
        DEBUG and skipped: bad input never fails a request.  With a mapping
        of headers (:class:`tornado.httputil.HTTPHeaders`, a :class:`dict`),
        divak's trace-context, B3 and baggage propagators whose headers
        are all absent are not asked (they would find nothing).
        """
        context = Context()
        parent: trace.Span | None = None
        current: trace.Span = trace.INVALID_SPAN  # the span of *context*
        present: typing.AbstractSet[str] | None = None
        for propagator, reads in self._extractors:
            if reads is not None:
                if present is None:
                    present = _header_names(carrier)
                if present is not _UNKNOWN and reads.isdisjoint(present):
                    continue
            try:
                extracted = propagator.extract(carrier, context)
            except Exception:  # noqa: BLE001 - a header must never fail a request
                safe_log(
                    logger,
                    logging.DEBUG,
                    "%r failed to extract",
                    propagator,
                    exc_info=True,
                )
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


#: What :func:`_header_names` answers for a carrier it cannot list.
_UNKNOWN: frozenset[str] = frozenset()


def _both_cases(names: typing.AbstractSet[str]) -> frozenset[str]:
    """*names* (lower case) and as Tornado's ``HTTPHeaders`` spells them
    (``Http-Header-Case``: ``x-b3-traceid`` is ``X-B3-Traceid``)."""
    normalized = {
        "-".join(word.capitalize() for word in name.split("-")) for name in names
    }
    return frozenset(names) | normalized


def _header_names(carrier: typing.Any) -> typing.AbstractSet[str]:
    """The header names of *carrier*, to compare with :func:`_both_cases`.

    Tornado's ``HTTPHeaders`` lists its names in ``Http-Header-Case``, and
    finds them in any case; any other mapping's names are lowered (the
    propagators ask for lower-case names, which a case-insensitive
    mapping finds in any case).  :data:`_UNKNOWN` for a carrier that is
    not a mapping: every propagator is asked.
    """
    if type(carrier) is httputil.HTTPHeaders:
        return set(carrier)
    if isinstance(carrier, Mapping):
        return {str(name).lower() for name in carrier}
    return _UNKNOWN


#: ``OTEL_PROPAGATORS`` names and divak's propagator for each.
_PROPAGATORS: dict[str, typing.Callable[[], textmap.TextMapPropagator]] = {
    "tracecontext": TraceContextPropagation,
    "baggage": BaggagePropagation,
    "b3": lambda: ZipkinPropagation(single_header=True),
    "b3multi": lambda: ZipkinPropagation(single_header=False),
}
_DEFAULT_PROPAGATORS = "tracecontext,baggage"


def propagators_from_env() -> list[textmap.TextMapPropagator]:
    """The propagators ``OTEL_PROPAGATORS`` names, as divak propagators.

    A comma-separated list; the default is ``tracecontext,baggage``, as in
    the OpenTelemetry SDK.  ``tracecontext`` is
    :class:`~divak.TraceContextPropagation`, ``baggage``
    :class:`~divak.BaggagePropagation`, ``b3`` the single ``b3`` header
    and ``b3multi`` the ``X-B3-*`` headers
    (:class:`~divak.ZipkinPropagation`).  ``none`` means no propagator.
    Any other name is looked up, as OpenTelemetry's SDK does, among the
    ``opentelemetry_propagator`` entry points of the installed packages
    (``xray``, ``ottrace``, ``jaeger`` once their propagator package is
    installed); a name found nowhere is logged as a WARNING and skipped.
    A :class:`~divak.Recorder` uses these only when the application added
    no trace propagator in code.

    :returns: new propagator instances, in the listed order
    """
    value = env_value("OTEL_PROPAGATORS") or _DEFAULT_PROPAGATORS
    factories: dict[str, typing.Callable[[], typing.Any]] = dict(_PROPAGATORS)
    listed = {name.strip().lower() for name in value.split(",")} - {"", "none"}
    if not listed <= factories.keys():
        factories.update(
            entry_point_factories("opentelemetry_propagator", exclude=_PROPAGATORS)
        )
    built = (
        factories[name]()
        for name in names_variable("OTEL_PROPAGATORS", value, factories)
    )
    return [propagator for propagator in built if propagator is not None]
