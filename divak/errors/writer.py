"""The handler mix-in :class:`ErrorWriter`: errors answered with a document.

The name and the behaviour follow sprockets.http's mix-in, with the
per-request context added: the document carries the request's trace id
and correlation id, read from the request's :class:`~divak.RequestContext`
(see :doc:`errors`).
"""

from __future__ import annotations

import json
import traceback
import typing

from tornado import httputil, web

from divak import semconv
from divak.context import request_context_of
from divak.logs.access import redacted_uri

__all__ = ["ContentNegotiation", "ErrorWriter"]


@typing.runtime_checkable
class ContentNegotiation(typing.Protocol):
    """A handler that picks the response's format from its ``Accept`` header.

    sprockets.mixins.mediatype's ``ContentMixin`` is one: an
    :class:`ErrorWriter` handler that also is one sends its error document
    with :meth:`send_response`.
    """

    def send_response(self, body: typing.Any, set_content_type: bool = True) -> None:
        """Encode *body* in the format the request accepts and write it.

        :param body: the document (JSON-like: dicts, lists, strings, numbers)
        :param set_content_type: also set the ``Content-Type`` header
        """


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

    When the handler also is a :class:`ContentNegotiation` (it has
    sprockets.mixins.mediatype's ``ContentMixin``), the document is sent
    with its ``send_response``, so the request's ``Accept`` header picks
    the format.

    .. rubric:: settings['problem_details']

    When true, errors are written as an RFC 9457 problem document instead
    (``Content-Type: application/problem+json``, whatever the ``Accept``
    header): ``type`` (``"about:blank"``), ``title`` (the standard reason
    phrase of the status code), ``status``, ``detail`` (the response's
    reason phrase), ``instance`` (the request's path, its secrets redacted
    as in the logs: see :mod:`divak.redaction`), and the extension
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
        handler = typing.cast(web.RequestHandler, self)
        reason = semconv.response_reason(handler) or semconv.reason_phrase(status_code)
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
                "title": semconv.reason_phrase(status_code),
                "status": status_code,
                "detail": reason,
                # The path as the logs show it: the redacted target without
                # its query.
                "instance": redacted_uri(handler).partition("?")[0],
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
        if isinstance(self, ContentNegotiation):
            self.send_response(document)
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(json.dumps(document).encode())
