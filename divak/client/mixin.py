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
from tornado import httpclient, httputil, simple_httpclient

from divak import semconv
from divak.context import request_context_of
from divak.redaction import redact_url
from divak.tracing import headers as divak_headers
from divak.tracing.recorder import Recorder

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "HttpClientMixin",
    "IDEMPOTENT_METHODS",
    "MIN_ATTEMPT_TIME",
    "RETRY_STATUSES",
    "redact_url",
]

logger = logging.getLogger("divak.client")

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
#: Seconds an attempt needs at least: no retry starts with less time left
#: before the deadline (it could only time out).
MIN_ATTEMPT_TIME = 0.1

#: Response statuses that are retried.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Methods retried without being asked (RFC 9110, section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSET: typing.Any = object()


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


def _status_line(response: httpclient.HTTPResponse) -> str:
    reason = response.reason or semconv.reason_phrase(response.code)
    return f"{response.code} {reason}"


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
        :class:`divak.tracing.headers.CapturedHeaders`).  Headers are never logged.
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
        min_attempt_time: float = MIN_ATTEMPT_TIME,
        url_template: str | None = None,
        peer_service: str | None = None,
        **kwargs: typing.Any,
    ) -> httpclient.HTTPResponse:
        """Send a request with Tornado's ``AsyncHTTPClient``, retrying when it helps.

        One CLIENT span per attempt, each a child of the current span (the
        request span, or the innermost
        :meth:`~divak.RequestTracker.record_operation`), named as
        OpenTelemetry's HTTP client conventions say: ``{method}``, or
        ``{method} {url_template}`` when *url_template* is given.  It
        carries the stable HTTP client attributes
        (``http.request.method``, ``url.full`` redacted by
        :func:`redact_url`, ``server.address``, ``server.port``,
        ``network.protocol.version``, ``http.response.status_code``,
        ``http.request.resend_count`` from the second attempt on,
        ``error.type``), plus ``url.template`` and ``peer.service`` when
        given.  A 4xx or 5xx answer sets the span status to ERROR with the
        status line as description (``503 Service Unavailable``), as the
        conventions say for clients; a failed attempt has the error as
        description.  The application's propagators write their headers
        into every attempt (see ``divak_propagation_hosts``).

        Retried, with exponential backoff and full jitter (up to 0.1 s
        before the first retry, doubling, at most 5 s), are connection
        errors, timeouts and the statuses 429, 502, 503 and 504, when the
        method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or
        *retry_non_idempotent* is true.  A ``Retry-After`` header (seconds
        or HTTP date) replaces the backoff.  No attempt lasts beyond
        *deadline*, and no retry starts with less than *min_attempt_time*
        seconds left before it: when the wait (backoff or ``Retry-After``)
        would leave less, the answer is returned as it is.  When the
        deadline cuts a retry short (it times out only because the deadline
        shortened it), the previous answer is returned.

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
        :param min_attempt_time: seconds a retry needs at least
        :param url_template: the URL's template, low in cardinality
            (``"/items/{id}"``): the span is named ``"{method} {template}"``
            and gets the ``url.template`` attribute
        :param peer_service: the called service's name, set as the
            ``peer.service`` attribute (Zipkin shows it as the remote
            service)
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
        instrumentation = getattr(application, "divak_instrumentation", None)
        if instrumentation is not None:
            full_url = redact_url(url, instrumentation.redacted_params)
        else:
            full_url = redact_url(url)
        propagate = _host_allowed(
            host, application.settings.get("divak_propagation_hosts")
        )
        captured = divak_headers.captured_headers(application, "client")
        request = getattr(self, "request", None)
        request_context = request_context_of(request) if request is not None else None
        if request_context is not None:
            parent = request_context.current_context()
        else:
            parent = otel_context.get_current()
        may_retry = method in IDEMPOTENT_METHODS or retry_non_idempotent
        span_name = f"{method} {url_template}" if url_template else method
        base_attributes: dict[str, typing.Any] = {
            "http.request.method": method,
            "url.full": full_url,
            "server.address": host,
            "server.port": port,
        }
        if url_template:
            base_attributes["url.template"] = url_template
        if peer_service:
            base_attributes["peer.service"] = peer_service
        instrumentation = getattr(application, "divak_instrumentation", None)
        metrics = instrumentation.metrics if instrumentation is not None else None
        client = httpclient.AsyncHTTPClient()
        simple = isinstance(client, simple_httpclient.SimpleAsyncHTTPClient)
        started = time.monotonic()
        attempt = 0
        previous: httpclient.HTTPResponse | None = None
        while True:
            remaining = deadline - (time.monotonic() - started)
            attempt_timeout = max(min(timeout, remaining), 0.001)
            attributes = dict(base_attributes)
            if attempt:
                attributes["http.request.resend_count"] = attempt
            span = application.divak_tracer.start_span(
                span_name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
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
            attempt_started = time.monotonic()
            try:
                response = await client.fetch(request, raise_error=False)
            except Exception as exc:  # noqa: BLE001 - recorded, then retried or raised
                error = exc
                if span.is_recording():
                    span.record_exception(exc)
                    span.set_attribute("error.type", _error_type(exc))
                    span.set_status(
                        Status(StatusCode.ERROR, str(exc) or _error_type(exc))
                    )
            else:
                if span.is_recording():
                    span.set_attribute("http.response.status_code", response.code)
                    if simple:  # Tornado's own client speaks HTTP/1.1 only
                        span.set_attribute("network.protocol.version", "1.1")
                    if captured.response:
                        span.set_attributes(
                            captured.response_attributes(response.headers)
                        )
                    if response.code >= 400:
                        span.set_attribute("error.type", str(response.code))
                        span.set_status(
                            Status(StatusCode.ERROR, _status_line(response))
                        )
            finally:
                span.end()
            if metrics is not None:
                code = response.code if response is not None else None
                metrics.client_request_finished(
                    method,
                    host,
                    port,
                    code if code != 599 else None,
                    time.monotonic() - attempt_started,
                    _error_type(error) if error is not None else None,
                    trace.set_span_in_context(span, parent),
                )

            cut = attempt_timeout < timeout and time.monotonic() - started >= deadline
            if error is not None and previous is not None and cut:
                return previous  # the deadline, not the server, cut it short

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
                left = deadline - (time.monotonic() - started) - wait
                if left >= min(min_attempt_time, timeout):
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
            if response is not None:
                previous = response
            attempt += 1
