"""The handler mix-in :class:`ErrorLogger`: every error response logged once.

The name and the behaviour follow sprockets.http's mix-in, with the
per-request context added: the log record of an error carries the
request's trace id and correlation id, read from the request's
:class:`~divak.RequestContext` (see :doc:`errors`).
"""

from __future__ import annotations

import contextvars
import logging
import types
import typing

from tornado import httputil, web

from divak import semconv
from divak.context import activated, request_context_of
from divak.logs.access import redacted_uri
from divak.logs.adapter import class_logger
from divak.logs.ratelimit import safe_log

__all__ = ["ErrorLogger"]

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
            if isinstance(value, (logging.Logger, logging.LoggerAdapter)):
                return class_logger(owner, value)
        return class_logger(owner, None)



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

    When the error happens after the response's status line and headers
    were sent (the handler called ``flush()``), the error status cannot be
    sent any more; the record says what the client got instead::

        GET /stream failed after sending 200: Internal Server Error

    Logging never fails the request: when a log filter, formatter or
    handler raises, the record is lost and the failure reported, one line
    per interval at most (:func:`divak.logs.ratelimit.safe_log`).

    The record is written with the request's OpenTelemetry context
    current, so it carries ``otelTraceID``, ``otelSpanID`` and
    ``divak_request_id`` (see :mod:`divak.logs.ids`), also for errors
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
    #: The status sent with the headers, once ``flush`` sent them.
    _divak_sent_status: int | None = None

    def flush(self, include_footers: bool = False) -> typing.Any:
        """Remember the status the headers go out with; chain to ``super()``.

        The first ``flush`` sends the status line and the headers (also
        when ``finish`` calls it); an error after that is logged with the
        status the client got (see the class).

        :param include_footers: as for
            :meth:`tornado.web.RequestHandler.flush`
        :returns: what ``super().flush()`` returns (a future)
        """
        if self._divak_sent_status is None:
            self._divak_sent_status = self.get_status()  # type: ignore[attr-defined]
        return super().flush(include_footers)  # type: ignore[misc]

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
                status_code, message or semconv.reason_phrase(status_code), exc_info
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
                status_code, message or semconv.reason_phrase(status_code), exc_info
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
        error_logger = self.logger
        if error_logger is None:  # a class that set ``logger = None``
            error_logger = class_logger(type(self), None)
        level = logging.WARNING if 400 <= status_code < 500 else logging.ERROR
        if not error_logger.isEnabledFor(level):
            return
        sent = self._divak_sent_status
        with activated(request_context_of(self.request)):
            safe_log(
                error_logger,
                level,
                "%s %s failed with %s: %s"
                if sent is None
                else "%s %s failed after sending %s: %s",
                self.request.method,
                redacted_uri(self),  # type: ignore[arg-type]
                status_code if sent is None else sent,
                message,
                exc_info=exc_info,
            )
