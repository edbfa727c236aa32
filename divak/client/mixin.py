"""Outgoing HTTP requests that continue the trace: :class:`HttpClientMixin`.

:meth:`HttpClientMixin.send_request` reads as the steps of a call:

1. build the request every attempt sends (``_build_request``);
2. per attempt, start its CLIENT span and inject the span's context into
   the attempt's headers (``_Telemetry``);
3. attempt, bounded by the call's deadline (``_attempt``);
4. record the outcome on the span and in the metrics (``_Telemetry``);
5. decide whether to try again (:class:`divak.client.retry.RetryPolicy`).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import time
import typing
import urllib.parse

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httpclient, httputil, simple_httpclient, web

from divak import semconv
from divak.client.retry import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    DEFAULT_DEADLINE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    IDEMPOTENT_METHODS,
    MIN_ATTEMPT_TIME,
    RETRY_STATUSES,
    RetryPolicy,
)
from divak.context import request_context_of
from divak.metrics.instruments import ApplicationMetrics
from divak.propagation import Propagation
from divak.redaction import redact_url
from divak.tracing import headers as divak_headers
from divak.tracing.recorder import Recorder

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
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

_UNSET: typing.Any = object()


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
        request = _build_request(url, method, body, headers, json, timeout, kwargs)
        client = httpclient.AsyncHTTPClient()
        telemetry = _Telemetry(
            self.application, request, client, url_template, peer_service
        )
        parent = _parent_context(self)
        policy = RetryPolicy(
            request.method,
            timeout=request.timeout,
            retries=retries,
            deadline=deadline,
            min_attempt_time=min_attempt_time,
            retry_non_idempotent=retry_non_idempotent,
        )
        attempt = 0
        previous: httpclient.HTTPResponse | None = None
        while True:
            outcome = await _attempt(
                client, request, telemetry, parent, attempt, policy.attempt_timeout()
            )
            if (
                outcome.error is not None
                and previous is not None
                and policy.cut_short(outcome.timeout)
            ):
                return previous  # the deadline, not the server, cut it short
            delay = policy.delay(attempt, outcome.response, outcome.error)
            if delay is None:
                return outcome.answer()
            logger.debug(
                "retrying %s %s after %s in %.3fs (retry %d of %d)",
                request.method,
                telemetry.full_url,
                outcome.failure(),
                delay,
                attempt + 1,
                retries,
            )
            await asyncio.sleep(delay)
            if outcome.response is not None:
                previous = outcome.response
            attempt += 1


class _Request(typing.NamedTuple):
    """What every attempt of one call sends; made by :func:`_build_request`."""

    url: str
    method: str
    body: bytes | str | None
    #: the caller's headers; each attempt sends a copy, with the
    #: propagators' headers added
    headers: httputil.HTTPHeaders
    #: seconds one attempt may take
    timeout: float
    #: seconds connecting may take, within an attempt's time
    connect_timeout: float
    #: the other :class:`tornado.httpclient.HTTPRequest` arguments
    options: dict[str, typing.Any]
    host: str
    port: int

    def for_attempt(
        self, headers: httputil.HTTPHeaders, timeout: float
    ) -> httpclient.HTTPRequest:
        """Tornado's request for one attempt.

        :param headers: the attempt's headers
        :param timeout: seconds the attempt may take, connecting included
        """
        return httpclient.HTTPRequest(
            self.url,
            method=self.method,
            headers=headers,
            body=self.body,
            connect_timeout=min(self.connect_timeout, timeout),
            request_timeout=timeout,
            **self.options,
        )


def _build_request(
    url: str,
    method: str,
    body: bytes | str | None,
    headers: typing.Mapping[str, str] | httputil.HTTPHeaders | None,
    json: typing.Any,
    timeout: float,
    options: dict[str, typing.Any],
) -> _Request:
    """The request of one :meth:`HttpClientMixin.send_request` call.

    *options* are its other keyword arguments: ``request_timeout`` is taken
    (out of them) as the attempt's timeout in seconds, ``connect_timeout``
    as the seconds connecting may take (default: the attempt's timeout).

    :raises TypeError: when *json* cannot be serialised
    """
    timeout = float(options.pop("request_timeout", None) or timeout)
    connect_timeout = float(options.pop("connect_timeout", None) or timeout)
    request_headers = httputil.HTTPHeaders()
    if headers:
        request_headers.update(headers)
    if json is not _UNSET:
        body = jsonlib.dumps(json).encode("utf-8")
        if "Content-Type" not in request_headers:
            request_headers["Content-Type"] = "application/json; charset=utf-8"
    host, port = _address(url)
    return _Request(
        url,
        method.upper(),
        body,
        request_headers,
        timeout,
        connect_timeout,
        options,
        host,
        port,
    )


def _address(url: str) -> tuple[str, int]:
    """The host name and port *url* names (the scheme's default port if none)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    return parts.hostname or "", port or semconv.DEFAULT_PORTS.get(parts.scheme, 80)


def _parent_context(caller: object) -> otel_context.Context:
    """The context whose span the CLIENT spans are children of.

    In a handler of a request divak traces, the request's current context
    (see :meth:`divak.context.RequestContext.current_context`); anywhere
    else, OpenTelemetry's current context.

    :param caller: the object :meth:`HttpClientMixin.send_request` was
        called on
    """
    if isinstance(caller, web.RequestHandler):
        request_context = request_context_of(caller.request)
        if request_context is not None:
            return request_context.current_context()
    return otel_context.get_current()


class _Telemetry:
    """The CLIENT spans and metrics of one call's attempts.

    Made once per call from the application: what each span is named and
    carries, whether the propagators write into the attempts' headers
    (``divak_propagation_hosts``), which headers are recorded, and where
    the attempts' durations go.  An application that is not a
    :class:`~divak.Recorder` but provides ``settings``, ``divak_tracer``
    and ``divak_propagation`` gets the default URL redaction and no
    metrics.

    :param application: the application of the object making the call
    :param request: the call's request
    :param client: the client that sends it
    :param url_template: see :meth:`HttpClientMixin.send_request`
    :param peer_service: see :meth:`HttpClientMixin.send_request`
    :raises re.error: when a capture-headers environment variable holds
        an invalid regular expression
    """

    __slots__ = (
        "tracer",
        "propagation",
        "captured",
        "metrics",
        "method",
        "host",
        "port",
        "full_url",
        "name",
        "attributes",
        "protocol_version",
    )

    def __init__(
        self,
        application: Recorder,
        request: _Request,
        client: httpclient.AsyncHTTPClient,
        url_template: str | None,
        peer_service: str | None,
    ) -> None:
        instrumentation = (
            application.divak_instrumentation
            if isinstance(application, Recorder)
            else None
        )
        if instrumentation is not None:
            self.full_url = redact_url(request.url, instrumentation.redacted_params)
        else:
            self.full_url = redact_url(request.url)
        allowed = _host_allowed(
            request.host, application.settings.get("divak_propagation_hosts")
        )
        #: the application's propagators, or None: no header goes to this host
        self.propagation: Propagation | None = (
            application.divak_propagation if allowed else None
        )
        self.captured = (
            instrumentation.captured_client
            if instrumentation is not None
            else divak_headers.CapturedHeaders(application.settings, "client")
        )
        self.metrics: ApplicationMetrics | None = (
            instrumentation.metrics if instrumentation is not None else None
        )
        self.tracer = application.divak_tracer
        self.method = request.method
        self.host = request.host
        self.port = request.port
        self.name = (
            f"{request.method} {url_template}" if url_template else request.method
        )
        self.attributes: dict[str, typing.Any] = {
            "http.request.method": request.method,
            "url.full": self.full_url,
            "server.address": request.host,
            "server.port": request.port,
        }
        if url_template:
            self.attributes["url.template"] = url_template
        if peer_service:
            self.attributes["peer.service"] = peer_service
        # Tornado's own client speaks HTTP/1.1 only.
        self.protocol_version = (
            "1.1"
            if isinstance(client, simple_httpclient.SimpleAsyncHTTPClient)
            else None
        )

    def start_span(self, parent: otel_context.Context, attempt: int) -> trace.Span:
        """Start the CLIENT span of *attempt* (0 for the first), child of *parent*."""
        attributes = dict(self.attributes)
        if attempt:
            attributes["http.request.resend_count"] = attempt
        return self.tracer.start_span(
            self.name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )

    def inject(
        self,
        span: trace.Span,
        context: otel_context.Context,
        headers: httputil.HTTPHeaders,
    ) -> httputil.HTTPHeaders:
        """The headers of one attempt: a copy of *headers* with *context* injected.

        The propagators write *context* (the attempt's span's) into the
        copy when the host may receive it; the listed request headers are
        recorded on *span*.
        """
        attempt_headers = httputil.HTTPHeaders(headers)
        if self.propagation is not None:
            self.propagation.inject(attempt_headers, context)
        if self.captured.request and span.is_recording():
            span.set_attributes(self.captured.request_attributes(attempt_headers))
        return attempt_headers

    def record_response(
        self, span: trace.Span, response: httpclient.HTTPResponse
    ) -> None:
        """Record the answer an attempt got on its *span*.

        A 4xx or 5xx status sets status ERROR, with the status line as
        description and the code as ``error.type``.
        """
        if not span.is_recording():
            return
        span.set_attribute("http.response.status_code", response.code)
        if self.protocol_version is not None:
            span.set_attribute("network.protocol.version", self.protocol_version)
        if self.captured.response:
            span.set_attributes(self.captured.response_attributes(response.headers))
        if response.code >= 400:
            span.set_attribute("error.type", str(response.code))
            reason = response.reason or semconv.reason_phrase(response.code)
            span.set_status(Status(StatusCode.ERROR, f"{response.code} {reason}"))

    @staticmethod
    def record_error(span: trace.Span, error: Exception) -> None:
        """Record on its *span* the *error* an attempt raised instead of an answer."""
        if not span.is_recording():
            return
        error_type = semconv.exception_type(error)
        span.record_exception(error)
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, str(error) or error_type))

    def record_duration(self, outcome: _Outcome, context: otel_context.Context) -> None:
        """Record an ended attempt in ``http.client.request.duration``.

        :param outcome: the attempt's outcome; its duration runs until now
        :param context: the context of the attempt's span (for exemplars)
        """
        if self.metrics is None:
            return
        response = outcome.response
        code = response.code if response is not None else None
        error = outcome.error
        answered = code is not None and code != 599
        self.metrics.client_request_finished(
            self.method,
            self.host,
            self.port,
            code if answered else None,
            time.monotonic() - outcome.started,
            semconv.exception_type(error) if error is not None else None,
            context,
            self.protocol_version if answered else None,
        )


class _Outcome(typing.NamedTuple):
    """What one attempt got: an answer, or the error it raised instead."""

    response: httpclient.HTTPResponse | None
    error: Exception | None
    #: when the attempt started (:func:`time.monotonic`, seconds)
    started: float
    #: seconds the attempt was given
    timeout: float

    def answer(self) -> httpclient.HTTPResponse:
        """The answer, to return to the caller.

        :raises Exception: the attempt's error, when it got no answer
        """
        if self.error is not None:
            raise self.error
        return typing.cast(httpclient.HTTPResponse, self.response)

    def failure(self) -> str | int:
        """What went wrong, for the log: the error's type or the status code."""
        if self.error is not None:
            return semconv.exception_type(self.error)
        return typing.cast(httpclient.HTTPResponse, self.response).code


async def _attempt(
    client: httpclient.AsyncHTTPClient,
    request: _Request,
    telemetry: _Telemetry,
    parent: otel_context.Context,
    attempt: int,
    timeout: float,
) -> _Outcome:
    """Send *request* once, in its own CLIENT span, within *timeout* seconds.

    The span starts, the propagators inject its context, the answer or
    the error is recorded on it, and it ends (also when the call is
    cancelled); then the attempt's duration is recorded.  HTTP error
    statuses are answers, not errors.

    :param client: the client that sends it
    :param request: the call's request
    :param telemetry: the call's spans and metrics
    :param parent: the context of the spans' parent
    :param attempt: 0 for the first attempt, then 1, 2, ...
    :param timeout: seconds the attempt may take, connecting included
    """
    span = telemetry.start_span(parent, attempt)
    context = trace.set_span_in_context(span, parent)
    headers = telemetry.inject(span, context, request.headers)
    tornado_request = request.for_attempt(headers, timeout)
    started = time.monotonic()
    try:
        response = await client.fetch(tornado_request, raise_error=False)
    except Exception as exc:  # noqa: BLE001 - recorded, then retried or raised
        telemetry.record_error(span, exc)
        outcome = _Outcome(None, exc, started, timeout)
    else:
        telemetry.record_response(span, response)
        outcome = _Outcome(response, None, started, timeout)
    finally:
        span.end()
    telemetry.record_duration(outcome, context)
    return outcome


def _host_allowed(host: str, allowed: typing.Iterable[str] | None) -> bool:
    """Whether *host* may receive the propagated headers.

    :param host: the request's host name
    :param allowed: ``settings['divak_propagation_hosts']``: names, or
        domains as ``".example.com"`` or ``"*.example.com"``; :data:`None`
        allows every host
    """
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
