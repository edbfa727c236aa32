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

The request an event describes is redacted as divak's logs and spans are
(:func:`redact_event`, see :mod:`divak.redaction`): its URL, its query
string, which Sentry's Tornado integration copies raw, and its headers.
"""

from __future__ import annotations

import logging
import os
import threading
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace

from divak import propagation, redaction
from divak.context import REQUEST_CONTEXT_KEY, RequestContext

__all__ = ["TRACE_ID_TAG", "REQUEST_ID_TAG", "add_ids", "install", "redact_event"]

logger = logging.getLogger(__name__)

#: Sentry tag holding the OpenTelemetry trace id.
TRACE_ID_TAG = "otel.trace_id"
#: Sentry tag holding the request's correlation id.
REQUEST_ID_TAG = "divak.request_id"

_lock = threading.Lock()
_processor_added = False

Event = dict[str, typing.Any]

#: The log record attributes holding the trace id, span id and request id.
_RECORD_IDS = ("otelTraceID", "otelSpanID", "divak_request_id")


def _ids_from_context() -> tuple[str, str, str]:
    current = otel_context.get_current()
    span_context = trace.get_current_span(current).get_span_context()
    request = current.get(REQUEST_CONTEXT_KEY)
    request_id = (
        request.request_id if isinstance(request, RequestContext) else None
    ) or propagation.get_request_id(current)
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
    trace_id = span_id = request_id = ""
    if isinstance(record, logging.LogRecord):
        # A probe on a foreign object: divak's record factory, OpenTelemetry's
        # logging instrumentation, both or neither set these attributes.
        trace_id, span_id, request_id = (
            str(getattr(record, name, "") or "") for name in _RECORD_IDS
        )
    if not trace_id or trace_id == "0":
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


def redact_event(
    event: Event,
    hint: dict[str, typing.Any] | None = None,
    names: typing.AbstractSet[str] = redaction.DEFAULT_REDACTED_QUERY_PARAMS,
) -> Event:
    """Redact the request of a Sentry *event* as divak's logs are redacted.

    In the event's ``request``: ``url`` by :func:`divak.redaction.redact_uri`,
    ``query_string`` by :func:`divak.redaction.redact_query` (Sentry's
    Tornado integration copies it raw), each of ``headers`` by
    :func:`divak.redaction.redact_header` (``Referer``, ``X-Api-Key``...).
    Values of other types than strings are left as they are.  Has the
    signature of Sentry's ``before_send``: :func:`install` runs it before
    the application's own ``before_send``, after every event processor
    (Sentry's Tornado integration fills ``request`` in one of those).

    :param event: the event Sentry is about to send
    :param hint: Sentry's hint (unused)
    :param names: lower-case query parameter names to redact
    :returns: *event*, changed in place
    """
    request = event.get("request")
    if not isinstance(request, dict):
        return event
    url = request.get("url")
    if isinstance(url, str):
        request["url"] = redaction.redact_uri(url, names)
    query = request.get("query_string")
    if isinstance(query, str):
        request["query_string"] = redaction.redact_query(query, names)
    headers = request.get("headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if isinstance(name, str) and isinstance(value, str):
                headers[name] = redaction.redact_header(name, value, names)
    return event


def _redacting(
    then: typing.Callable[[Event, dict[str, typing.Any]], Event | None] | None,
    names: typing.AbstractSet[str],
) -> typing.Callable[[Event, dict[str, typing.Any]], Event | None]:
    """A ``before_send`` that redacts the event, then calls *then*."""

    def before_send(event: Event, hint: dict[str, typing.Any]) -> Event | None:
        event = redact_event(event, hint, names)
        return then(event, hint) if then is not None else event

    return before_send


def install(dsn: str | None = None, **options: typing.Any) -> bool:
    """Start the Sentry SDK when a DSN is known; tag its events with divak's ids.

    :func:`divak.run` calls it when ``SENTRY_DSN`` is set.  Calls
    ``sentry_sdk.init`` with the DSN, Sentry's Tornado integration (added
    to *options*' ``integrations``, unless one is there already) and the
    other *options* as given, for example ``environment``, ``release``
    (both also read by Sentry from ``SENTRY_ENVIRONMENT`` and
    ``SENTRY_RELEASE``) or ``traces_sample_rate``.  Then registers
    :func:`add_ids`, once per process.

    Every event and transaction goes through :func:`redact_event` before
    it is sent (then through the ``before_send`` or
    ``before_send_transaction`` given in *options*, if any).

    :param dsn: the project's DSN; default the ``SENTRY_DSN`` environment
        variable
    :param options: keyword arguments of ``sentry_sdk.init``; and
        ``divak_redacted_query_params``, names added to the redacted query
        parameters as the application setting of that name adds them (see
        :func:`divak.redaction.redacted_query_params`)
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
    names = redaction.redacted_query_params(
        {redaction.SETTING: options.pop(redaction.SETTING, None)}
    )
    options["before_send"] = _redacting(options.get("before_send"), names)
    options["before_send_transaction"] = _redacting(
        options.get("before_send_transaction"), names
    )
    sentry_sdk.init(dsn=dsn, integrations=integrations, **options)
    with _lock:
        if not _processor_added:
            add_global_event_processor(add_ids)  # type: ignore[arg-type]
            _processor_added = True
    return True
