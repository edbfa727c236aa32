"""Outgoing HTTP requests that continue the trace: :class:`HttpClientMixin`."""

from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import logging
import random
import time
import typing
import urllib.parse

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httpclient, httputil

from divak import headers as divak_headers
from divak.tracing import Recorder, RequestTracker

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "HttpClientMixin",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "redact_url",
]

logger = logging.getLogger(__name__)

#: Seconds one attempt may take (connecting included).
DEFAULT_TIMEOUT = 10.0
#: Attempts after the first one.
DEFAULT_RETRIES = 3
#: Seconds the whole call may take, attempts and waits between them included.
DEFAULT_DEADLINE = 30.0
#: Upper bound of the first backoff, in seconds; it doubles per retry.
BACKOFF_BASE = 0.1
#: Longest backoff between two attempts, in seconds.
BACKOFF_MAX = 5.0

#: Response statuses that are retried.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Methods retried without being asked (RFC 9110, section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: Query parameters whose values never appear in ``url.full`` (compared
#: without regard to case): the HTTP semantic conventions' list plus common
#: credentials.
SECRET_QUERY_PARAMETERS = frozenset(
    name.lower()
    for name in (
        "AWSAccessKeyId",
        "Signature",
        "sig",
        "X-Goog-Signature",
        "access_token",
        "api_key",
        "apikey",
        "client_secret",
        "code",
        "password",
        "secret",
        "token",
    )
)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSET: typing.Any = object()


def redact_url(url: str) -> str:
    """Return *url* fit for the ``url.full`` attribute and for logs.

    User name and password become ``REDACTED:REDACTED``, the values of
    secret query parameters (:data:`SECRET_QUERY_PARAMETERS`) become
    ``REDACTED``, and the fragment is dropped, as the HTTP semantic
    conventions ask.

    :param url: an absolute URL
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, sep, _value = piece.partition("=")
            if sep and urllib.parse.unquote_plus(name).lower() in (
                SECRET_QUERY_PARAMETERS
            ):
                piece = f"{name}=REDACTED"
            pieces.append(piece)
        query = "&".join(pieces)
    return urllib.parse.urlunsplit(
        parts._replace(netloc=netloc, query=query, fragment="")
    )


def _retry_after(response: httpclient.HTTPResponse) -> float | None:
    """Seconds the server asked to wait (RFC 9110, section 10.2.3), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_type(error: BaseException) -> str:
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _retryable_error(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return True
    return isinstance(error, httpclient.HTTPClientError) and error.code == 599


def _host_allowed(host: str, allowed: typing.Iterable[str] | None) -> bool:
    if allowed is None:
        return True
    if isinstance(allowed, str):
        allowed = [allowed]
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            pattern = pattern[1:]
        if pattern.startswith("."):
            if host == pattern[1:] or host.endswith(pattern):
                return True
        elif host == pattern:
            return True
    return False


class HttpClientMixin:
    """Handler mix-in: traced, retried outgoing HTTP requests.

    To use it:

    * mix it into a :class:`tornado.web.RequestHandler` subclass that also
      mixes in :class:`~divak.RequestTracker`;
    * the application must mix in :class:`~divak.Recorder`; its
      propagators decide which headers go downstream.

    What it provides: :meth:`send_request`.

    .. rubric:: Application settings

    ``divak_propagation_hosts``
        host names that receive the trace, correlation and baggage headers
        (``"api.example.com"``, or ``".example.com"`` / ``"*.example.com"``
        for a domain and its subdomains).  Default :data:`None`: all
        hosts.  Requests to other hosts still get a CLIENT span, but no
        propagated header, so ids and baggage do not leak to third
        parties.
    ``divak_capture_request_headers``, ``divak_capture_response_headers``
        headers recorded on the CLIENT spans (see
        :class:`divak.headers.CapturedHeaders`).  Headers are never logged.
    """

    if typing.TYPE_CHECKING:
        application: Recorder

    async def send_request(
        self,
        url: str,
        method: str = "GET",
        *,
        body: bytes | str | None = None,
        headers: typing.Mapping[str, str] | httputil.HTTPHeaders | None = None,
        json: typing.Any = _UNSET,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        deadline: float = DEFAULT_DEADLINE,
        retry_non_idempotent: bool = False,
        **kwargs: typing.Any,
    ) -> httpclient.HTTPResponse:
        """Send a request with Tornado's ``AsyncHTTPClient``, retrying when it helps.

        One CLIENT span per attempt, each a child of the current span (the
        request span, or the innermost
        :meth:`~divak.RequestTracker.record_operation`), named after the
        method, with the stable HTTP client attributes
        (``http.request.method``, ``url.full`` redacted by
        :func:`redact_url`, ``server.address``, ``server.port``,
        ``http.response.status_code``, ``http.request.resend_count`` from
        the second attempt on, ``error.type``).  A 4xx or 5xx answer sets
        the span status to ERROR, as the conventions say for clients.  The
        application's propagators write their headers into every attempt
        (see ``divak_propagation_hosts``).

        Retried, with exponential backoff and full jitter (up to 0.1 s
        before the first retry, doubling, at most 5 s), are connection
        errors, timeouts and the statuses 429, 502, 503 and 504, when the
        method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or
        *retry_non_idempotent* is true.  A ``Retry-After`` header (seconds
        or HTTP date) replaces the backoff.  No attempt starts after
        *deadline*, and no attempt lasts beyond it; when ``Retry-After``
        asks for a wait past the deadline, the answer is returned as it is.

        HTTP error statuses do not raise: the last
        :class:`tornado.httpclient.HTTPResponse` is returned unchanged.

        :param url: absolute URL to request
        :param method: HTTP method
        :param body: request body
        :param headers: request headers
        :param json: a JSON-serialisable value sent as the body, with
            ``Content-Type: application/json`` unless *headers* set one
        :param timeout: seconds one attempt may take
        :param retries: attempts after the first one (0 disables retries)
        :param deadline: seconds the whole call may take
        :param retry_non_idempotent: retry POST and PATCH too
        :param kwargs: any other :class:`tornado.httpclient.HTTPRequest`
            argument (``request_timeout`` is taken as *timeout*,
            ``connect_timeout`` bounds connecting within it)
        :raises OSError: when the last attempt could not connect
        :raises tornado.httpclient.HTTPClientError: code 599 when the last
            attempt timed out or the connection closed
        :raises TypeError: when *json* cannot be serialised
        """
        application = self.application
        method = method.upper()
        # Tornado's own names are accepted too.
        timeout = float(kwargs.pop("request_timeout", None) or timeout)
        connect_timeout = float(kwargs.pop("connect_timeout", None) or timeout)
        request_headers = httputil.HTTPHeaders()
        if headers:
            request_headers.update(headers)
        if json is not _UNSET:
            body = jsonlib.dumps(json).encode("utf-8")
            if "Content-Type" not in request_headers:
                request_headers["Content-Type"] = "application/json; charset=utf-8"
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:
            port = _DEFAULT_PORTS.get(parts.scheme, 80)
        full_url = redact_url(url)
        propagate = _host_allowed(
            host, application.settings.get("divak_propagation_hosts")
        )
        captured = divak_headers.captured_headers(application, "client")
        if isinstance(self, RequestTracker):
            parent = self.divak_context.current_context()
        else:
            parent = otel_context.get_current()
        may_retry = method in IDEMPOTENT_METHODS or retry_non_idempotent
        started = time.monotonic()
        attempt = 0
        while True:
            remaining = deadline - (time.monotonic() - started)
            attempt_timeout = max(min(timeout, remaining), 0.001)
            attributes: dict[str, typing.Any] = {
                "http.request.method": method,
                "url.full": full_url,
                "server.address": host,
                "server.port": port,
            }
            if attempt:
                attributes["http.request.resend_count"] = attempt
            span = application.divak_tracer.start_span(
                method, context=parent, kind=SpanKind.CLIENT, attributes=attributes
            )
            attempt_headers = httputil.HTTPHeaders(request_headers)
            if propagate:
                application.divak_propagation.inject(
                    attempt_headers, trace.set_span_in_context(span, parent)
                )
            if captured.request and span.is_recording():
                span.set_attributes(captured.request_attributes(attempt_headers))
            request = httpclient.HTTPRequest(
                url,
                method=method,
                headers=attempt_headers,
                body=body,
                connect_timeout=min(connect_timeout, attempt_timeout),
                request_timeout=attempt_timeout,
                **kwargs,
            )
            error: BaseException | None = None
            response: httpclient.HTTPResponse | None = None
            try:
                response = await httpclient.AsyncHTTPClient().fetch(
                    request, raise_error=False
                )
            except Exception as exc:  # noqa: BLE001 - recorded, then retried or raised
                error = exc
                if span.is_recording():
                    span.record_exception(exc)
                    span.set_attribute("error.type", _error_type(exc))
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
            else:
                if span.is_recording():
                    span.set_attribute("http.response.status_code", response.code)
                    if captured.response:
                        span.set_attributes(
                            captured.response_attributes(response.headers)
                        )
                    if response.code >= 400:
                        span.set_attribute("error.type", str(response.code))
                        span.set_status(Status(StatusCode.ERROR))
            finally:
                span.end()

            retryable = (
                _retryable_error(error)
                if error is not None
                else response is not None and response.code in RETRY_STATUSES
            )
            delay: float | None = None
            if retryable and may_retry and attempt < retries:
                wait = _retry_after(response) if response is not None else None
                if wait is None:
                    cap = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
                    wait = random.uniform(0, cap)
                if time.monotonic() - started + wait < deadline:
                    delay = wait
            if delay is None:
                if error is not None:
                    raise error
                return typing.cast(httpclient.HTTPResponse, response)
            logger.debug(
                "retrying %s %s after %s in %.3fs (retry %d of %d)",
                method,
                full_url,
                _error_type(error) if error is not None else response.code,  # type: ignore[union-attr]
                delay,
                attempt + 1,
                retries,
            )
            await asyncio.sleep(delay)
            attempt += 1
