"""Handler mix-ins for errors: :class:`ErrorLogger`, :class:`ErrorWriter`.

And :class:`LoggingHandler`, which gives the handler its ``logger``.

The names and the behaviour follow sprockets.http's mix-ins, with the
per-request context added: the log record of an error and the error
document both carry the request's trace id and correlation id, read from
the request's :class:`~divak.RequestContext` (see :doc:`errors`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import traceback
import types
import typing

from tornado import httputil, web

from divak.access import redacted_uri
from divak.context import activated, request_context_of
from divak.handlers import Logger, _class_logger

__all__ = ["ErrorLogger", "ErrorWriter", "LoggingHandler"]

#: Tornado's loggers whose records :meth:`ErrorLogger.log_exception`
#: replaces with its own.
_TORNADO_ERROR_LOGGERS = ("tornado.application", "tornado.general")

#: While set: ``_ALL`` drops every record of Tornado's error loggers (the
#: ``super()`` call of ``log_exception``), ``_HEADERS_WRITTEN`` only
#: Tornado's "Cannot send error response" line (``super().send_error``).
_replacing: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "divak_replacing_tornado_error_log", default=None
)
_ALL = "all"
_HEADERS_WRITTEN = "headers-written"


class _ReplacedRecords(logging.Filter):
    """Drop Tornado's records for an error :class:`ErrorLogger` logged itself.

    Active only while :class:`ErrorLogger` chains to ``super()``; every
    other record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        mode = _replacing.get()
        if mode is None:
            return True
        if mode == _ALL:
            return False
        return not str(record.msg).startswith("Cannot send error response")


_FILTER = _ReplacedRecords()


def _install_filter() -> None:
    for name in _TORNADO_ERROR_LOGGERS:
        tornado_logger = logging.getLogger(name)
        if _FILTER not in tornado_logger.filters:
            tornado_logger.addFilter(_FILTER)


class _InheritedLogger:
    """``self.logger``: a base class's own ``logger``, else the class's adapter."""

    def __get__(self, instance: object, owner: type) -> typing.Any:
        for klass in owner.__mro__:
            value = klass.__dict__.get("logger")
            if value is not None and not hasattr(value, "__get__"):
                return _class_logger(owner, value)
        return _class_logger(owner, None)


def _standard_reason(status_code: int) -> str:
    return httputil.responses.get(status_code, "Unknown")


class LoggingHandler(Logger):
    """Handler mix-in that gives the handler a correlation-aware ``logger``.

    sprockets.http's ``LoggingHandler``, made the same adapter as
    :class:`divak.Logger`: ``self.logger`` is a
    :class:`~divak.log.RequestLogger` around the class's own ``logger``
    attribute when it has one, else around the logger named
    ``module.ClassName``; every record it writes carries the request's
    ``otelTraceID``, ``otelSpanID`` and ``divak_request_id``.

    To use it, mix it into a :class:`tornado.web.RequestHandler` subclass
    before ``RequestHandler`` (instead of :class:`divak.Logger`, not
    together with it).  A plain ``logger`` attribute is wrapped in
    :meth:`initialize`, so the adapter is in place before ``prepare``, for
    errors raised before ``prepare`` too.
    """

    def initialize(self) -> None:
        """Wrap a plain ``logger`` attribute; chain to ``super()``.

        A handler whose own ``initialize`` takes the route's keyword
        arguments calls ``super().initialize()`` without them.
        """
        current = self.logger
        if not isinstance(current, logging.LoggerAdapter):
            self.logger = _class_logger(type(self), current)
        super().initialize()  # type: ignore[misc]


class ErrorLogger:
    """Handler mix-in that logs every error response exactly once.

    To use it, mix it into a :class:`tornado.web.RequestHandler` subclass,
    before ``RequestHandler`` in the bases, in any order with
    :class:`ErrorWriter`, :class:`divak.RequestTracker` and
    :class:`divak.Logger`.  A handler that overrides ``log_exception`` or
    ``send_error`` calls ``super()``.

    What it provides: one record on the handler's ``logger`` (the
    :class:`divak.Logger` adapter when the handler has none) per error,
    written before the response is sent::

        GET /items/12 failed with 404: Not Found

    with the method, the URI, the status code and the ``log_message`` of a
    :class:`tornado.web.HTTPError` (or the ``log_message`` keyword of
    ``send_error``) or else the reason phrase (a custom ``reason`` when one
    was given).  The level is WARNING for 4xx status
    codes and ERROR for everything else (5xx and codes outside 400-599).
    The traceback is attached when an unexpected exception (anything but
    :class:`~tornado.web.HTTPError`) is being handled; an ``HTTPError`` is
    an answer, not a crash, and has none.

    The record is written with the request's OpenTelemetry context
    current, so it carries ``otelTraceID``, ``otelSpanID`` and
    ``divak_request_id`` (see :mod:`divak.log`), also for errors
    raised before ``prepare`` (an unsupported method, a failed XSRF check).
    Tornado's own records for the same exception (``Uncaught exception``
    on ``tornado.application``, the ``HTTPError`` warning on
    ``tornado.general``) are dropped, so nothing is logged twice.

    As sprockets.http's ``ErrorLogger`` (a ``LoggingHandler``), it gives
    the handler ``self.logger``: the class's own ``logger`` attribute, else
    the :class:`divak.Logger` adapter (``module.ClassName``).  A class
    attribute, not a base class, so it mixes with :class:`divak.Logger` and
    :class:`LoggingHandler` in any order.
    """

    if typing.TYPE_CHECKING:
        request: httputil.HTTPServerRequest

    logger: typing.Any = _InheritedLogger()
    _divak_logged_error: BaseException | None = None

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        """Log an exception raised by the handler; chain to ``super()``.

        Tornado calls it for an exception that escaped a handler method,
        before ``send_error``.  Tornado's own record for it is dropped.

        :param typ: the exception's class
        :param value: the exception
        :param tb: its traceback
        """
        if value is not None:
            self._divak_logged_error = value
            if isinstance(value, web.HTTPError):
                status_code = value.status_code
                message = value.get_message() or value.reason
                exc_info = None
            else:
                status_code, message, exc_info = 500, None, (typ, value, tb)
            self._divak_log_error(
                status_code, message or _standard_reason(status_code), exc_info
            )
        _install_filter()
        token = _replacing.set(_ALL)
        try:
            super().log_exception(typ, value, tb)  # type: ignore[misc]
        finally:
            _replacing.reset(token)

    def send_error(self, status_code: int = 500, **kwargs: typing.Any) -> None:
        """Log the error unless :meth:`log_exception` did; chain to ``super()``.

        When the response's headers were already sent, Tornado cannot send
        the error and says so on ``tornado.general``; that line is dropped,
        the error itself is logged here (or by :meth:`log_exception`).

        :param status_code: the response's HTTP status code
        :param kwargs: as for :meth:`tornado.web.RequestHandler.send_error`:
            ``reason`` (a custom reason phrase) and ``exc_info`` (the
            exception being handled, a :func:`sys.exc_info` tuple); and, as
            in sprockets.http, ``log_message`` (:class:`str`), logged
            instead of the reason phrase, never sent to the client.
        """
        exc_info = kwargs.get("exc_info")
        value = exc_info[1] if exc_info else None
        logged, self._divak_logged_error = self._divak_logged_error, None
        if value is None or value is not logged:
            reason = kwargs.get("reason")
            log_message = kwargs.get("log_message")
            if isinstance(value, web.HTTPError):
                message = log_message or value.get_message() or value.reason
                message = message or reason
                exc_info = None
            else:
                message = log_message or reason
            self._divak_log_error(
                status_code, message or _standard_reason(status_code), exc_info
            )
        _install_filter()
        token = _replacing.set(_HEADERS_WRITTEN)
        try:
            super().send_error(status_code, **kwargs)  # type: ignore[misc]
        finally:
            _replacing.reset(token)

    def _divak_log_error(
        self, status_code: int, message: str, exc_info: typing.Any
    ) -> None:
        error_logger = getattr(self, "logger", None)
        if error_logger is None:
            error_logger = _class_logger(type(self), None)
        level = logging.WARNING if 400 <= status_code < 500 else logging.ERROR
        if not error_logger.isEnabledFor(level):
            return
        with activated(request_context_of(self.request)):
            error_logger.log(
                level,
                "%s %s failed with %s: %s",
                self.request.method,
                redacted_uri(self),  # type: ignore[arg-type]
                status_code,
                message,
                exc_info=exc_info,
            )


class ErrorWriter:
    """Handler mix-in that answers errors with a JSON document, not HTML.

    To use it, mix it into a :class:`tornado.web.RequestHandler` subclass,
    before ``RequestHandler`` in the bases, in any order with
    :class:`ErrorLogger`.  It replaces ``write_error`` and does not chain
    to ``super()`` (which would write Tornado's HTML page).

    The document (``Content-Type: application/json; charset=utf-8``)::

        {"type": "HTTPError", "message": "HTTP 404: Not Found", "traceback": null,
         "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
         "request_id": "a7c1..."}

    ``type``
        the class name of the exception being handled, or ``null``
    ``message``
        for a :class:`~tornado.web.HTTPError`, ``str(exc)`` as
        sprockets.http writes it, without the ``log_message``:
        ``"HTTP 404: Not Found"`` (the custom ``reason`` when one was
        given); otherwise the response's reason phrase: the custom
        ``reason`` when one was given, else the standard phrase,
        ``"Unknown"`` for a non-standard code.  The ``log_message`` of an
        ``HTTPError`` (or of ``send_error``) and the text of an unexpected
        exception are for the log only and never appear in the document.
    ``traceback``
        the formatted traceback as a list of strings when the application's
        ``serve_traceback`` setting is on (``debug`` turns it on) and an
        exception is being handled, else ``null``
    ``trace_id``
        the request's trace id, 32 hex digits (the same as the span's and
        the log record's ``otelTraceID``); left out when the request has no
        trace (an application that is not a :class:`divak.Recorder`)
    ``request_id``
        the request's correlation id (the same as the echoed
        ``Request-Id`` header); left out when the request has none

    Without ids, the document has exactly sprockets.http's three keys.

    When the handler also has a ``send_response(body)`` method
    (sprockets.mixins.mediatype's ``ContentMixin``), the document is sent
    with it, so the request's ``Accept`` header picks the format.

    .. rubric:: settings['problem_details']

    When true, errors are written as an RFC 9457 problem document instead
    (``Content-Type: application/problem+json``, whatever the ``Accept``
    header): ``type`` (``"about:blank"``), ``title`` (the standard reason
    phrase of the status code), ``status``, ``detail`` (the response's
    reason phrase), ``instance`` (the request's path), and the extension
    members ``trace_id`` and ``request_id`` (each left out when the request
    has none); plus ``traceback`` when ``serve_traceback`` is on.
    """

    if typing.TYPE_CHECKING:
        request: httputil.HTTPServerRequest
        settings: dict[str, typing.Any]

        def set_header(self, name: str, value: typing.Any) -> None: ...
        def write(self, chunk: typing.Any) -> None: ...

    def write_error(self, status_code: int, **kwargs: typing.Any) -> None:
        """Write the error document for *status_code*.

        Called by :meth:`tornado.web.RequestHandler.send_error` after it
        set the status and the reason.

        :param status_code: the response's HTTP status code
        :param kwargs: ``exc_info``, the exception being handled (a
            :func:`sys.exc_info` tuple), when there is one
        """
        exc_info = kwargs.get("exc_info")
        reason = getattr(self, "_reason", None) or _standard_reason(status_code)
        request_context = request_context_of(self.request)
        ids: dict[str, str] = {}
        if request_context is not None:
            if request_context.trace_id_hex is not None:
                ids["trace_id"] = request_context.trace_id_hex
            if request_context.request_id is not None:
                ids["request_id"] = request_context.request_id
        value = exc_info[1] if exc_info else None
        tb = None
        if value is not None and self.settings.get("serve_traceback"):
            tb = traceback.format_exception(value)
        if self.settings.get("problem_details"):
            problem: dict[str, typing.Any] = {
                "type": "about:blank",
                "title": _standard_reason(status_code),
                "status": status_code,
                "detail": reason,
                "instance": self.request.path,
                **ids,
            }
            if tb is not None:
                problem["traceback"] = tb
            self.set_header("Content-Type", "application/problem+json")
            self.write(json.dumps(problem).encode())
            return
        if isinstance(value, web.HTTPError):
            # str(value) without the log message, which is for the log only.
            message = f"HTTP {value.status_code}: {reason}"
        else:
            message = reason
        document = {
            "type": type(value).__name__ if value is not None else None,
            "message": message,
            "traceback": tb,
            **ids,
        }
        send_response = getattr(self, "send_response", None)
        if send_response is not None:
            send_response(document)
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(json.dumps(document).encode())
