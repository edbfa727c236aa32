"""Outgoing HTTP requests that continue the trace: :class:`HttpClientMixin`."""

from __future__ import annotations

import typing
import urllib.parse

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httpclient, httputil

from divak.tracing import Recorder, RequestTracker

__all__ = ["HttpClientMixin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _redacted_url(parts: urllib.parse.SplitResult) -> str:
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, fragment=""))


class HttpClientMixin:
    """Handler mix-in: traced outgoing HTTP requests with propagated headers.

    To use it:

    * mix it into a :class:`tornado.web.RequestHandler` subclass that also
      mixes in :class:`~divak.RequestTracker`;
    * the application must mix in :class:`~divak.Recorder`; its
      propagators decide which headers go downstream.

    Each call of :meth:`send_request` makes a CLIENT span, child of the
    current span (the request span, or the innermost
    :meth:`~divak.RequestTracker.record_operation`), named after the HTTP
    method as OpenTelemetry's HTTP client conventions say, with
    ``http.request.method``, ``url.full`` (credentials redacted),
    ``server.address``, ``server.port`` and ``http.response.status_code``.
    """

    if typing.TYPE_CHECKING:
        application: Recorder

    async def send_request(
        self, url: str, method: str = "GET", **kwargs: typing.Any
    ) -> httpclient.HTTPResponse:
        """Send a request with Tornado's ``AsyncHTTPClient`` and return the response.

        HTTP error statuses do not raise: the
        :class:`tornado.httpclient.HTTPResponse` is returned as it is, and
        the span's status is ERROR for 5xx.  A connection failure or
        timeout sets the span's status to ERROR with ``error.type`` and
        re-raises.

        :param url: absolute URL to request
        :param method: HTTP method
        :param kwargs: any other :class:`tornado.httpclient.HTTPRequest`
            argument (``body``, ``headers``, ``request_timeout`` in
            seconds, ...)
        :raises OSError: when the connection fails
        :raises tornado.httpclient.HTTPClientError: status 599, e.g. a
            timeout
        """
        application = self.application
        parts = urllib.parse.urlsplit(url)
        attributes: dict[str, typing.Any] = {
            "http.request.method": method.upper(),
            "url.full": _redacted_url(parts),
            "server.address": parts.hostname or "",
            "server.port": parts.port or _DEFAULT_PORTS.get(parts.scheme, 80),
        }
        if isinstance(self, RequestTracker):
            context = self.divak_context.current_context()
        else:
            context = otel_context.get_current()
        headers = httputil.HTTPHeaders(kwargs.pop("headers", None) or {})
        with application.divak_tracer.start_as_current_span(
            method.upper(),
            context=context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            application.divak_propagation.inject(headers)
            request = httpclient.HTTPRequest(
                url, method=method.upper(), headers=headers, **kwargs
            )
            try:
                response = await httpclient.AsyncHTTPClient().fetch(
                    request, raise_error=False
                )
            except Exception as error:
                if span.is_recording():
                    span.record_exception(error)
                    span.set_attribute("error.type", type(error).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                raise
            if span.is_recording():
                span.set_attribute("http.response.status_code", response.code)
                if response.code >= 500:
                    span.set_attribute("error.type", str(response.code))
                    span.set_status(Status(StatusCode.ERROR))
            return response
