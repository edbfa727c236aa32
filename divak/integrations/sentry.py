"""Error reports to Sentry that point at the request's trace.

Opt-in, like sprockets.http's: nothing happens unless a DSN is given or the
``SENTRY_DSN`` environment variable is set, and ``sentry-sdk`` 2 is
installed (``pip install 'divak[sentry]'``).  Then :func:`install` starts
the Sentry SDK with its Tornado integration, so an unexpected exception in
a handler (and an ERROR log record) becomes a Sentry event, and every event
carries the ids that divak's logs, error documents and spans carry:

* the tags ``otel.trace_id`` (32 hex digits) and ``divak.request_id``
  (the correlation id), searchable in Sentry;
* the event's trace context (``contexts.trace.trace_id`` and
  ``span_id``) set to the OpenTelemetry trace and span, so Sentry's
  "trace" link and the Zipkin trace have the same id.

The ids are read from the log record that made the event, when there is
one (its ``otelTraceID``, ``otelSpanID`` and ``divak_request_id``
attributes, see :mod:`divak.logs.ids`), else from the current OpenTelemetry
context, which :class:`divak.RequestTracker` makes current while a handler
runs.  Sentry's own OpenTelemetry span processor needs the global tracer
provider, which divak does not use, hence this event processor.
"""

from __future__ import annotations

import logging
import os
import threading
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace

from divak import propagation
from divak.context import REQUEST_CONTEXT_KEY

__all__ = ["TRACE_ID_TAG", "REQUEST_ID_TAG", "add_ids", "install"]

logger = logging.getLogger(__name__)

#: Sentry tag holding the OpenTelemetry trace id.
TRACE_ID_TAG = "otel.trace_id"
#: Sentry tag holding the request's correlation id.
REQUEST_ID_TAG = "divak.request_id"

_lock = threading.Lock()
_processor_added = False

Event = dict[str, typing.Any]


def _ids_from_context() -> tuple[str, str, str]:
    current = otel_context.get_current()
    span_context = trace.get_current_span(current).get_span_context()
    request = current.get(REQUEST_CONTEXT_KEY)
    request_id = getattr(request, "request_id", None) or propagation.get_request_id(
        current
    )
    if not span_context.is_valid:
        return "", "", request_id or ""
    return (
        trace.format_trace_id(span_context.trace_id),
        trace.format_span_id(span_context.span_id),
        request_id or "",
    )


def add_ids(event: Event, hint: dict[str, typing.Any] | None = None) -> Event:
    """Tag a Sentry *event* with the trace id and request id; link its trace.

    A Sentry event processor (the signature of ``before_send``):
    :func:`install` registers it.  Sets the ``otel.trace_id`` and
    ``divak.request_id`` tags and the trace context's ``trace_id`` and
    ``span_id`` when there is a trace; leaves the event as it was outside
    a request.

    :param event: the event Sentry is about to send
    :param hint: Sentry's hint; its ``log_record`` is used when present
    :returns: *event*
    """
    record = (hint or {}).get("log_record")
    trace_id = getattr(record, "otelTraceID", "") if record is not None else ""
    if record is not None and trace_id and trace_id != "0":
        span_id = str(getattr(record, "otelSpanID", ""))
        request_id = str(getattr(record, "divak_request_id", "") or "")
    else:
        trace_id, span_id, request_id = _ids_from_context()
    tags = event.setdefault("tags", {})
    if trace_id:
        tags[TRACE_ID_TAG] = trace_id
        trace_context = event.setdefault("contexts", {}).setdefault("trace", {})
        trace_context["trace_id"] = trace_id
        if span_id and span_id != "0":
            trace_context["span_id"] = span_id
    if request_id:
        tags[REQUEST_ID_TAG] = request_id
    return event


def install(dsn: str | None = None, **options: typing.Any) -> bool:
    """Start the Sentry SDK when a DSN is known; tag its events with divak's ids.

    :func:`divak.run` calls it when ``SENTRY_DSN`` is set.  Calls
    ``sentry_sdk.init`` with the DSN, Sentry's Tornado integration (added
    to *options*' ``integrations``, unless one is there already) and the
    other *options* as given, for example ``environment``, ``release``
    (both also read by Sentry from ``SENTRY_ENVIRONMENT`` and
    ``SENTRY_RELEASE``) or ``traces_sample_rate``.  Then registers
    :func:`add_ids`, once per process.

    :param dsn: the project's DSN; default the ``SENTRY_DSN`` environment
        variable
    :param options: keyword arguments of ``sentry_sdk.init``
    :returns: :data:`True` when Sentry was started, :data:`False` when
        there is no DSN or ``sentry-sdk`` is not installed (logged as a
        WARNING)
    """
    global _processor_added
    dsn = dsn or os.environ.get("SENTRY_DSN", "").strip()
    if not dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.tornado import TornadoIntegration
        from sentry_sdk.scope import add_global_event_processor
    except ImportError:
        logger.warning(
            "SENTRY_DSN is set but sentry-sdk is not installed "
            "(pip install 'divak[sentry]'): errors are not reported to Sentry"
        )
        return False
    integrations = list(options.pop("integrations", None) or [])
    if not any(isinstance(i, TornadoIntegration) for i in integrations):
        integrations.append(TornadoIntegration())
    sentry_sdk.init(dsn=dsn, integrations=integrations, **options)
    with _lock:
        if not _processor_added:
            add_global_event_processor(add_ids)  # type: ignore[arg-type]
            _processor_added = True
    return True
