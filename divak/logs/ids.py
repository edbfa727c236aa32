"""Log correlation: every log record carries the current request's ids.

A divak application (:class:`divak.Recorder`), :func:`divak.run` or an
explicit call to :func:`install_log_ids` installs a log record factory (the
hook that :func:`logging.setLogRecordFactory` documents for this purpose)
that adds these attributes to *every* :class:`logging.LogRecord`, whichever
logger creates it; importing divak changes nothing process-wide:

================================  ==========================================
attribute                         value
================================  ==========================================
``otelTraceID``                   32 lowercase hex digits, ``"0"`` outside a
                                  trace (and when the OpenTelemetry SDK is
                                  disabled)
``otelSpanID``                    16 lowercase hex digits, ``"0"`` outside a
                                  trace
``otelTraceSampled``              :data:`True` when the trace is sampled
                                  (its spans are exported), else
                                  :data:`False`
``otelServiceName``               the service name of the request's
                                  application, ``""`` outside a request
``divak_request_id``              the request's correlation id, or ``""``
================================  ==========================================

The first four names are the ones OpenTelemetry's logging instrumentation
uses, so format strings written for it keep working; ``divak_request_id``
is divak-tornado's name.  The values are read from the current
OpenTelemetry context, which :class:`divak.Recorder` makes current for the
whole time a handler runs.  The factory chains to whatever factory
was installed before it, and records that a logger filters out by level
are never created, so they cost nothing.
"""

from __future__ import annotations

import logging
import logging.config
import os
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace

from divak.context import REQUEST_CONTEXT_KEY
from divak.logs.ratelimit import LOGGING_FAILURES

if typing.TYPE_CHECKING:
    from divak.context import RequestContext

__all__ = [
    "DEFAULT_FORMAT",
    "REQUEST_CONTEXT_KEY",
    "RequestLogger",
    "configure_default_logging",
    "default_logging_config",
    "exports_to_opentelemetry",
    "install_log_ids",
    "logging_configured",
]

_INVALID_TRACE_ID = "0"
_INVALID_SPAN_ID = "0"


def _add_ids(record: logging.LogRecord) -> None:
    current = otel_context.get_current()
    request = typing.cast("RequestContext | None", current.get(REQUEST_CONTEXT_KEY))
    span = trace.get_current_span(current)
    if request is not None and span is request.span:
        # The common case, the request's own span: ids computed once.
        record.__dict__.update(request.log_ids)
        return
    span_context = span.get_span_context()
    if span_context.is_valid:
        record.otelTraceID = trace.format_trace_id(span_context.trace_id)
        record.otelSpanID = trace.format_span_id(span_context.span_id)
        record.otelTraceSampled = span_context.trace_flags.sampled
    else:
        record.otelTraceID = _INVALID_TRACE_ID
        record.otelSpanID = _INVALID_SPAN_ID
        record.otelTraceSampled = False
    if request is not None:
        record.otelServiceName = request.service_name
        record.divak_request_id = request.request_id or ""
    else:
        record.otelServiceName = ""
        record.divak_request_id = ""


def install_log_ids() -> None:
    """Install divak's log record factory, chaining the current one.

    Idempotent: calling it again does not stack a second copy.
    :class:`divak.Recorder` and :func:`divak.run` call it, so format
    strings may use ``%(otelTraceID)s`` and ``%(divak_request_id)s`` from
    then on, inside a request or not.  Call it yourself when records are
    formatted before the application exists.
    """
    previous = logging.getLogRecordFactory()
    if not isinstance(previous, _IdsFactory):
        logging.setLogRecordFactory(_IdsFactory(previous))


class _IdsFactory:
    """divak's log record factory: the previous factory's record, plus ids."""

    __slots__ = ("previous",)

    def __init__(self, previous: typing.Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: typing.Any, **kwargs: typing.Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        _add_ids(record)
        return record


class RequestLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A :class:`logging.LoggerAdapter` for request handlers.

    The correlation ids come from the record factory, so this adapter only
    merges its own ``extra`` with the ``extra`` of each call instead of
    replacing it (the standard adapter drops the caller's ``extra``).

    A logging call never raises: when a filter (of the logger or of a
    handler), a formatter or a handler raises, the record is lost, the
    handler goes on serving its request, and the failure is reported on
    standard error, one line per interval at most
    (:data:`divak.logs.ratelimit.LOGGING_FAILURES`).  The standard library
    already keeps a handler's ``emit`` from raising; it lets a filter's
    exception through.
    """

    def process(
        self, msg: typing.Any, kwargs: typing.MutableMapping[str, typing.Any]
    ) -> tuple[typing.Any, typing.MutableMapping[str, typing.Any]]:
        """Merge the adapter's ``extra`` with the call's."""
        if self.extra:
            kwargs["extra"] = {**self.extra, **(kwargs.get("extra") or {})}
        return msg, kwargs

    def log(
        self, level: int, msg: typing.Any, *args: typing.Any, **kwargs: typing.Any
    ) -> None:
        """Log *msg* at *level* as :meth:`logging.Logger.log` does; never raise.

        The record's ``funcName`` and ``lineno`` are those of the code that
        called the adapter, as without this method.
        """
        # One more frame (this one) between the caller and the logger.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        try:
            super().log(level, msg, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - logging must not fail a request
            LOGGING_FAILURES.report(self.name, error)


def exports_to_opentelemetry(handler: logging.Handler) -> bool:
    """Whether *handler* is one of OpenTelemetry's log bridges.

    OpenTelemetry's ``LoggingHandler`` (the SDK's, which
    ``opentelemetry-instrument`` adds to the root logger when
    ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true``, and the one
    of opentelemetry-instrumentation-logging) hands records to a
    ``LoggerProvider`` for export; it writes nothing a person reads.  It is
    recognised by the package that defines its class, so divak imports
    neither package to ask.

    :param handler: a handler of the root logger
    """
    return type(handler).__module__.partition(".")[0] == "opentelemetry"


def logging_configured() -> bool:
    """Whether the root logger already writes records somewhere.

    :data:`True` when it has a handler other than OpenTelemetry's log
    bridges (:func:`exports_to_opentelemetry`): then :func:`divak.run`
    leaves logging as it is.  A root logger whose only handler sends
    records to OpenTelemetry still gets divak's console output
    (:func:`configure_default_logging`), or the service would go silent.
    """
    return not all(
        exports_to_opentelemetry(handler) for handler in logging.getLogger().handlers
    )


def configure_default_logging(debug: bool = False) -> None:
    """Apply :func:`default_logging_config`, keeping OpenTelemetry's log bridges.

    :func:`logging.config.dictConfig` replaces the root logger's handlers;
    the bridges (:func:`exports_to_opentelemetry`) the root logger had are
    added back, so records are still exported as well as written to
    standard output, with the root logger's new level.

    :param debug: whether the service runs in debug mode
    :raises RuntimeError: as :func:`default_logging_config`
    """
    root = logging.getLogger()
    bridges = [h for h in root.handlers if exports_to_opentelemetry(h)]
    logging.config.dictConfig(default_logging_config(debug))
    for handler in bridges:
        if handler not in root.handlers:
            root.addHandler(handler)


#: The ``%``-style format of divak's text log lines.
DEFAULT_FORMAT = (
    "%(asctime)s %(levelname)-8s %(name)s: %(message)s "
    "[trace_id=%(otelTraceID)s request_id=%(divak_request_id)s]"
)


def default_logging_config(debug: bool = False) -> dict[str, typing.Any]:
    """The :func:`logging.config.dictConfig` dict :func:`divak.run` applies.

    One line per record on standard output with the time, level, logger
    name, message, trace id and request id (:data:`DEFAULT_FORMAT`),
    written by :class:`divak.logs.formatters.TextFormatter`, which escapes line
    breaks and other control characters in the message and the fields
    (``\\n``, ``\\x1b``), so that request data cannot forge log lines; a
    traceback keeps its lines, indented under its record.  ``DEBUG`` level
    when *debug* is true, ``INFO`` otherwise.  Existing loggers are never
    disabled.

    The handler is a :class:`divak.logs.ratelimit.StreamHandler`: a filter
    added to it, its formatter or its stream may raise; the record is lost
    and the failure reported on standard error, one line per 30 s at most,
    instead of an exception in the code that logged or a traceback per
    record.

    Setting the environment variable ``LOG_FORMAT=json`` switches to one
    JSON object per line (:class:`divak.logs.formatters.JsonFormatter`) with the
    keys ``time`` (ISO 8601 with the zone), ``level``, ``logger``,
    ``message``, ``otelTraceID``, ``otelSpanID``, ``divak_request_id``,
    ``exc_info`` for exceptions and one key per ``extra`` attribute,
    written by python-json-logger (``pip install divak[json]``).

    :param debug: whether the service runs in debug mode
    :raises RuntimeError: when ``LOG_FORMAT`` is ``json`` and
        python-json-logger is not installed, or ``LOG_FORMAT`` is neither
        ``text`` nor ``json``
    """
    log_format = os.environ.get("LOG_FORMAT", "text").strip().lower() or "text"
    formatter: dict[str, typing.Any]
    if log_format == "text":
        formatter = {"()": "divak.logs.formatters.TextFormatter", "fmt": DEFAULT_FORMAT}
    elif log_format == "json":
        try:
            import pythonjsonlogger.json  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "LOG_FORMAT=json needs python-json-logger: pip install divak[json]"
            ) from None
        formatter = {"()": "divak.logs.formatters.JsonFormatter"}
    else:
        raise RuntimeError(f"LOG_FORMAT must be text or json, not {log_format!r}")
    level = "DEBUG" if debug else "INFO"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"divak": formatter},
        "handlers": {
            "console": {
                "class": "divak.logs.ratelimit.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "divak",
            }
        },
        "root": {"level": level, "handlers": ["console"]},
    }
