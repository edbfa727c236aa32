"""The access log: one line per request on the ``tornado.access`` logger.

A WebSocket connection gets a second line when it closes
(:func:`log_websocket_close`), with its duration, close code and message
counts.

:class:`AccessLogger` is the application base that both
:class:`divak.Recorder` and :class:`divak.Application` build on: its
:meth:`~AccessLogger.log_request` (Tornado's seam for the line) hands
the finished request to the request's
:class:`~divak.context.RequestLifecycle` when it has one (a
:class:`divak.Recorder` application's
:class:`~divak.tracing.pipeline.RequestPipeline`, which writes the line
with the request's context current and then ends the span), and
otherwise writes the line itself with :func:`log_access`.
:func:`write_access_log` formats the line; the record carries the
request's ``otelTraceID``, ``otelSpanID`` and ``divak_request_id`` as
attributes (see :mod:`divak.logs.ids`), never in the message.

.. rubric:: Levels

INFO below 400, WARNING for 4xx, ERROR for 5xx (and anything above).  A
handler with ``access_log_failures_only = True`` (a class or instance
attribute, as in sprockets.http) logs its 1xx, 2xx and 3xx responses at
DEBUG, so a health check stays out of an INFO log while its failures show.

.. rubric:: settings['access_log_format']

``"divak"`` (the default)::

   127.0.0.1 "GET /items/12" 200 3.21ms

client address (the real one when ``xheaders`` is on), method, URI,
status and duration in milliseconds.

``"combined"``: sprockets.http's combined log wording (one line)::

   127.0.0.1 - alice [01/Dec/2026:10:27:22 +0000] "GET /items/12 HTTP/1.1"
   200 "OK" - "-" "curl/8.5.0" (secs:0.003)

client address, ``-`` (RFC 1413 identity), the handler's
``current_user`` or ``-``, the request's start time in UTC, the request
line, the status, the reason phrase in quotes, the bytes written (the
handler's ``response_bytes_written`` attribute when it sets one, else
``-``, as in sprockets.http), the ``Referer`` (its secrets redacted, see
:mod:`divak.redaction`) and ``User-Agent`` headers (``-`` when absent) and
the duration in seconds.
"""

from __future__ import annotations

import datetime
import logging
import time
import typing

from tornado import httputil, log, web

from divak import redaction, semconv
from divak.context import request_context_of

__all__ = [
    "AccessLogger",
    "log_access",
    "log_websocket_close",
    "redacted_uri",
    "write_access_log",
]

logger = logging.getLogger(__name__)

#: The value of ``settings['access_log_format']`` for sprockets.http's wording.
COMBINED = "combined"


def _level(handler: web.RequestHandler, status: int) -> int:
    if status >= 500:
        return logging.ERROR
    if status >= 400:
        return logging.WARNING
    # A user's per-handler setting, on any handler class (sprockets.http's
    # convention, no base class to declare it): read where it may be unset.
    if getattr(handler, "access_log_failures_only", False):
        return logging.DEBUG
    return logging.INFO


def _user(handler: web.RequestHandler) -> str:
    try:
        user = handler.current_user
    except Exception:  # a failing user look-up must not cost the log line
        return "-"
    return str(user) if user else "-"


def redacted_uri(handler: web.RequestHandler) -> str:
    """The request's URI as logs may show it: secret parameters redacted.

    :param handler: the handler serving the request; its application's
        redaction list is used (``settings['divak_redacted_query_params']``,
        see :mod:`divak.redaction`)
    """
    names = redaction.redacted_query_params(handler.settings)
    return redaction.redact_uri(handler.request.uri or "", names)


def write_access_log(handler: web.RequestHandler) -> None:
    """Write the access log line of *handler*'s finished request.

    Call it with the request's context current (the log record takes its
    ids from there); it computes no ids itself.  Nothing is formatted when
    ``tornado.access`` does not log the line's level.

    :param handler: the handler that answered the request; its
        ``access_log_failures_only`` attribute (:class:`bool`) lowers the
        level of successful responses to DEBUG, and its application's
        ``access_log_format`` setting (``"divak"`` or ``"combined"``) picks
        the wording

    The URI is written with secret query parameters redacted
    (:mod:`divak.redaction`).  The record also carries the fields
    ``http.response.status_code``, ``http.request.method``, ``http.route``
    (the route template, or :data:`None`) and ``duration_ms``, which the
    JSON log format writes as keys of their own.
    """
    status = handler.get_status()
    level = _level(handler, status)
    if not log.access_log.isEnabledFor(level):
        return
    request = handler.request
    request_context = request_context_of(request)
    seconds = request.request_time()
    fields = {
        "http.response.status_code": status,
        "http.request.method": request.method,
        "http.route": request_context.route if request_context else None,
        "duration_ms": round(1000.0 * seconds, 3),
    }
    uri = redacted_uri(handler)
    if handler.settings.get("access_log_format") != COMBINED:
        log.access_log.log(
            level,
            '%s "%s %s" %d %.2fms',
            request.remote_ip,
            request.method,
            uri,
            status,
            1000.0 * seconds,
            extra=fields,
        )
        return
    started_at = datetime.datetime.fromtimestamp(time.time() - seconds, datetime.UTC)
    reason = semconv.response_reason(handler) or httputil.responses.get(status, "-")
    # A user's handler attribute (sprockets.http's convention), set by few
    # handlers and declared by no base class: read where it may be unset.
    bytes_written: typing.Any = getattr(handler, "response_bytes_written", "-")
    log.access_log.log(
        level,
        '%s %s %s [%s] "%s %s %s" %d "%s" %s "%s" "%s" (secs:%.03f)',
        request.remote_ip,
        "-",
        _user(handler),
        started_at.strftime("%d/%b/%Y:%H:%M:%S %z"),
        request.method,
        uri,
        request.version,
        status,
        reason,
        bytes_written,
        redaction.redact_header(
            "Referer",
            request.headers.get("Referer", "-"),
            redaction.redacted_query_params(handler.settings),
        ),
        request.headers.get("User-Agent", "-"),
        seconds,
        extra=fields,
    )


def log_websocket_close(
    handler: web.RequestHandler,
    seconds: float,
    received: int,
    sent: int,
    close_code: int,
    failed: bool = False,
) -> None:
    """Write the second access line of a WebSocket connection, at its close.

    Call it with the connection's context current (the record takes its
    ids from there); it never raises.  The ``divak`` wording::

       127.0.0.1 "GET /ws/lobby" 101 websocket closed 1000 after 61.21s,
       12 received, 30 sent

    (one line): client address, method, URI, status, close code,
    duration in seconds, data messages received and sent.

    The ``combined`` wording is the request's combined line with the
    connection's duration in ``(secs:...)``, followed by
    ``websocket closed 1000, 12 received, 30 sent``.

    The level is that of a 101 answer (INFO, DEBUG with
    ``access_log_failures_only``), ERROR when ``open``, ``on_message`` or
    ``on_close`` raised.  The record carries the request line's fields
    (``duration_ms`` is the connection's) and
    ``divak.websocket.close_code``, ``divak.websocket.messages_received``
    and ``divak.websocket.messages_sent``.  With
    ``settings['log_function']`` set, that function owns the access log
    (Tornado calls it once per request) and no close line is written.

    :param handler: the ``WebSocketHandler`` of the connection
    :param seconds: how long the connection was open, from the upgrade
    :param received: data messages received
    :param sent: data messages sent
    :param close_code: the connection's close code (RFC 6455)
    :param failed: :data:`True` when a handler method raised
    """
    try:
        if handler.settings.get("log_function") is not None:
            return
        status = handler.get_status()
        level = logging.ERROR if failed else _level(handler, status)
        if not log.access_log.isEnabledFor(level):
            return
        request = handler.request
        request_context = request_context_of(request)
        fields = {
            "http.response.status_code": status,
            "http.request.method": request.method,
            "http.route": request_context.route if request_context else None,
            "duration_ms": round(1000.0 * seconds, 3),
            "divak.websocket.close_code": close_code,
            "divak.websocket.messages_received": received,
            "divak.websocket.messages_sent": sent,
        }
        uri = redacted_uri(handler)
        if handler.settings.get("access_log_format") != COMBINED:
            log.access_log.log(
                level,
                '%s "%s %s" %d websocket closed %d after %.2fs, %d received, %d sent',
                request.remote_ip,
                request.method,
                uri,
                status,
                close_code,
                seconds,
                received,
                sent,
                extra=fields,
            )
            return
        # The request took request_time() up to the 101, then the
        # connection lasted *seconds*.
        started_at = datetime.datetime.fromtimestamp(
            time.time() - seconds - request.request_time(), datetime.UTC
        )
        log.access_log.log(
            level,
            '%s %s %s [%s] "%s %s %s" %d "%s" %s "%s" "%s" (secs:%.03f) '
            "websocket closed %d, %d received, %d sent",
            request.remote_ip,
            "-",
            _user(handler),
            started_at.strftime("%d/%b/%Y:%H:%M:%S %z"),
            request.method,
            uri,
            request.version,
            status,
            httputil.responses.get(status, "-"),
            "-",
            redaction.redact_header(
                "Referer",
                request.headers.get("Referer", "-"),
                redaction.redacted_query_params(handler.settings),
            ),
            request.headers.get("User-Agent", "-"),
            seconds,
            close_code,
            received,
            sent,
            extra=fields,
        )
    except Exception:  # noqa: BLE001 - the access log must not lose the connection
        logger.debug("the access log failed", exc_info=True)


def log_access(handler: web.RequestHandler) -> None:
    """Write the access line of *handler*'s finished request; never raises.

    ``settings['log_function']`` writes it when set (as in Tornado),
    otherwise :func:`write_access_log`.  The caller makes the request's
    context current first.  A failing log function or handler costs the
    line (logged at DEBUG on this module's logger), never the request.

    :param handler: the handler that answered the request
    """
    try:
        log_function = handler.settings.get("log_function")
        if log_function is not None:
            log_function(handler)
        else:
            write_access_log(handler)
    except Exception:  # noqa: BLE001 - the access log must not lose the request
        logger.debug("the access log failed", exc_info=True)


class AccessLogger(web.Application):
    """Application base: divak's access line for every request.

    :class:`divak.Application` and :class:`divak.Recorder` both derive
    from it, so an application gets the same line (and, with
    :class:`~divak.Recorder`, the same end of the span) whichever of them
    comes first in its bases, or with only one of them.

    .. rubric:: settings['access_log_format']

    ``"divak"`` (default) or ``"combined"``; see :mod:`divak.logs.access`.

    .. rubric:: settings['log_function']

    As in Tornado: ``function(handler)`` writes the line instead of
    :func:`write_access_log` (with the request's context current).
    """

    def log_request(self, handler: web.RequestHandler) -> None:
        """Tornado calls it once *handler* sent its whole response.

        The request's :class:`~divak.context.RequestLifecycle` (in a
        :class:`divak.Recorder` application) writes the line with the
        request's context current and ends the request's span; without
        one, :func:`log_access` writes the line.

        :param handler: the handler that answered the request
        """
        request_context = request_context_of(handler.request)
        lifecycle = request_context.lifecycle if request_context is not None else None
        if lifecycle is not None:
            lifecycle.response_finished(handler)
        else:
            log_access(handler)
