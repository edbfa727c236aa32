"""Reporters: where finished spans go.

A reporter is an OpenTelemetry
:class:`~opentelemetry.sdk.trace.export.SpanExporter`.  An application runs
each of its reporters behind its own :class:`~divak.export.queue.SpanQueue`, a
bounded queue
with a background thread, so exporting never happens on the IOLoop and a
slow or dead collector costs the service nothing but the spans it drops
(counted and reported by the queue, the one place that counts spans).  A
reporter only answers success or failure for each batch.  Any
OpenTelemetry exporter can be added as a reporter, too.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import ssl
import threading
import time
import typing
import urllib.parse
import urllib.request

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from divak.export.zipkin_json import B3_DEBUG_ATTRIBUTE, ZipkinV2Encoder
from divak.logs.ratelimit import RateLimitedLog, describe_error, muffled
from divak.semconv import DEFAULT_PORTS, RETRY_STATUSES
from divak.settings import (
    entry_point_factories,
    env_value,
    milliseconds_variable,
    names_variable,
    otlp_endpoint,
    warn_once,
)
from divak.version import __version__

__all__ = [
    "B3_DEBUG_ATTRIBUTE",
    "LoggingReporter",
    "OTLPReporter",
    "ZipkinReporter",
    "ZipkinV2Encoder",
    "reporters_from_env",
    "warn_if_spans_go_to_log",
]

logger = logging.getLogger("divak.reporters")

_ENDPOINT_ENV = "OTEL_EXPORTER_ZIPKIN_ENDPOINT"
_DEFAULT_ENDPOINT = "http://localhost:9411/api/v2/spans"


class _Target(typing.NamedTuple):
    """Where an upload goes: the connection to open and the request target."""

    https: bool
    host: str  # the collector's, or the proxy's
    port: int
    request_target: str  # the path, or the whole URL through an HTTP proxy
    tunnel: tuple[str, int] | None  # the collector, through an HTTPS proxy
    headers: dict[str, str]  # the proxy's credentials, if any


def _target(url: str) -> _Target:
    """Parse a collector URL, and the proxy the environment names for it.

    ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` (any case) are read
    once per URL, as :mod:`urllib.request` reads them.

    :raises ValueError: for a URL that is not ``http`` or ``https``, or
        has a malformed port
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http or https URL: {url!r}")
    https = parts.scheme == "https"
    host, port = parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return _Target(https, host, port, path, None, {})
    via = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    headers = {}
    if via.username is not None:
        user = urllib.parse.unquote(via.username)
        password = urllib.parse.unquote(via.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Proxy-Authorization"] = f"Basic {token}"
    proxy_port = via.port or DEFAULT_PORTS.get(via.scheme, 80)
    if https:  # a CONNECT tunnel: TLS end to end
        tunnel = (host, port)
        return _Target(True, via.hostname or "", proxy_port, path, tunnel, headers)
    return _Target(False, via.hostname or "", proxy_port, url, None, headers)


def _problem(error: BaseException) -> str:
    """One line saying what went wrong with an upload."""
    if isinstance(error, ssl.SSLError):  # its reason alone says too little
        return " ".join(f"{type(error).__name__}: {error}".split())
    return describe_error(error)


class ZipkinReporter(SpanExporter):
    """Send spans to a Zipkin collector as Zipkin v2 JSON.

    Each batch is encoded in one pass by
    :class:`~divak.export.zipkin_json.ZipkinV2Encoder`, which validates against
    the Zipkin v2 API and corrects the places where OpenTelemetry's Zipkin
    exporter does not, and sent as one ``POST`` over a kept-alive
    :class:`http.client.HTTPConnection` (HTTPS with the system's
    certificate authorities, the ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``
    variables honoured).  ``localEndpoint.serviceName`` is the
    application's service name, in lower case.

    * Uploads carry ``b3: 0`` so that a traced collector (or proxy) does
      not trace them, and run with OpenTelemetry's "suppress
      instrumentation" flag set (by :class:`~divak.export.queue.SpanQueue`), so
      an instrumented HTTP library never makes spans of them.
    * A collector that is briefly down is retried: when the connection is
      refused or lost or the collector answers 429, 502, 503 or 504, the
      upload is tried again after 0.5 s, 1 s, 2 s... (at most 5 s apart)
      for up to *retry_for* seconds in all; then the batch is dropped.  A
      read timeout is not retried (the collector may have stored the
      batch).  While a batch is being retried new spans wait in the bounded
      :class:`~divak.export.queue.SpanQueue`, which drops and counts what does
      not fit, and counts what was exported or failed.  A kept-alive
      connection the collector closed while idle is replaced at once.
    * Failures are logged as one WARNING line at most twice a minute, with
      the number of failures not logged, never with a traceback; they are
      returned as ``FAILURE``, never raised.

    .. attribute:: url

       The spans endpoint (:class:`str`); setting it sends the next batch
       to the new URL.

    .. attribute:: timeout

       Seconds to wait for the collector per connection attempt and per
       read (:class:`float`).

    .. attribute:: retry_for

       Seconds to keep retrying one batch (:class:`float`).
    """

    def __init__(
        self, url: str | None = None, *, timeout: float = 5.0, retry_for: float = 10.0
    ) -> None:
        """Prepare the reporter; nothing is sent before the first batch.

        :param url: the collector, either its API base
            (``http://zipkin:9411/api/v2``, as divak-tornado writes it) or
            the full spans endpoint (``http://zipkin:9411/api/v2/spans``).
            :data:`None` reads the ``OTEL_EXPORTER_ZIPKIN_ENDPOINT``
            environment variable, then falls back to
            ``http://localhost:9411/api/v2/spans``.  A URL that is not
            ``http`` or ``https`` fails every batch, with a WARNING.
        :param timeout: seconds to wait for the collector per connection
            attempt and per read
        :param retry_for: seconds to keep retrying one batch; ``0`` disables
            retries
        """
        self.encoder = ZipkinV2Encoder()
        self.timeout = timeout
        self.retry_for = retry_for
        self._connection: http.client.HTTPConnection | None = None
        self._connection_pid = 0
        self._target: _Target | None = None
        self._problem = ""
        self.url = url if url is not None else (
            os.environ.get(_ENDPOINT_ENV) or _DEFAULT_ENDPOINT
        )
        self._headers = {
            "Content-Type": self.encoder.content_type,
            "b3": "0",
            "User-Agent": f"divak/{__version__}",
        }
        self._complain = RateLimitedLog(logger)
        self._stop_retrying = threading.Event()
        self._closed = False

    @property
    def url(self) -> str:
        """The spans endpoint batches are sent to."""
        return self._url

    @url.setter
    def url(self, url: str) -> None:
        url = url.rstrip("/")
        if url.endswith("/api/v2"):
            url += "/spans"
        try:
            self._target, self._problem = _target(url), ""
        except ValueError as error:
            self._target, self._problem = None, str(error)
        self._url = url
        self._drop_connection()

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Upload *spans*, retrying as described above; never raises.

        Blocks the calling thread (the :class:`~divak.export.queue.SpanQueue`
        worker) for up to *retry_for* seconds plus one *timeout*.

        :param spans: the batch
        :returns: ``SUCCESS`` when the collector accepted it, else
            ``FAILURE``
        """
        if self._closed or not spans:
            return SpanExportResult.FAILURE if spans else SpanExportResult.SUCCESS
        try:
            body = self.encoder.serialize(spans)
        except Exception as error:  # noqa: BLE001 - a bad span must not kill export
            self._complain(
                logging.WARNING,
                "cannot encode %d spans for Zipkin: %r",
                len(spans),
                error,
            )
            return SpanExportResult.FAILURE
        deadline = time.monotonic() + self.retry_for
        delay = 0.5
        while True:
            accepted, retry, problem = self._attempt(body)
            if accepted:
                return SpanExportResult.SUCCESS
            if (
                not retry
                or self._closed
                or time.monotonic() + delay > deadline
                or self._stop_retrying.wait(delay)
            ):
                self._complain(
                    logging.WARNING,
                    "cannot send %d spans to Zipkin at %s: %s",
                    len(spans),
                    self.url,
                    problem,
                )
                return SpanExportResult.FAILURE
            delay = min(delay * 2, 5.0)

    def _attempt(self, body: bytes) -> tuple[bool, bool, str]:
        """POST *body* once: (accepted, worth retrying, what went wrong)."""
        target = self._target
        if target is None:
            return False, False, self._problem
        connection = self._connection
        if connection is not None and self._connection_pid == os.getpid():
            try:
                return self._exchange(connection, target, body)
            except TimeoutError as error:  # the collector may have stored it
                self._drop_connection()
                return False, False, _problem(error)
            except (OSError, http.client.HTTPException):
                # Closed by the collector while idle: a new connection, now.
                self._drop_connection()
        try:
            connection = self._connect(target)
        except OSError as error:  # refused, unreachable, unknown name, timeout
            return False, True, _problem(error)
        try:
            return self._exchange(connection, target, body)
        except TimeoutError as error:
            self._drop_connection()
            return False, False, _problem(error)
        except (OSError, http.client.HTTPException) as error:  # lost
            self._drop_connection()
            return False, True, _problem(error)

    def _connect(self, target: _Target) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if target.https:
            connection = http.client.HTTPSConnection(
                target.host,
                target.port,
                timeout=self.timeout,
                context=ssl.create_default_context(),
            )
        else:
            connection = http.client.HTTPConnection(
                target.host, target.port, timeout=self.timeout
            )
        if target.tunnel is not None:
            connection.set_tunnel(*target.tunnel, headers=target.headers)
        connection.connect()
        self._drop_connection()
        if self._closed:
            connection.close()
            raise ConnectionAbortedError("the reporter was shut down")
        self._connection, self._connection_pid = connection, os.getpid()
        return connection

    def _exchange(
        self, connection: http.client.HTTPConnection, target: _Target, body: bytes
    ) -> tuple[bool, bool, str]:
        headers = self._headers
        if target.headers and target.tunnel is None:
            headers = {**headers, **target.headers}
        connection.request("POST", target.request_target, body, headers)
        response = connection.getresponse()
        text = response.read()
        # RFC 9112, section 9.3: the connection persists unless either side
        # says "close" (or the response is HTTP/1.0).
        if response.version < 11 or "close" in (
            response.getheader("Connection") or ""
        ).lower():
            self._drop_connection()
        if response.status < 300:
            return True, False, ""
        reply = text[:200].decode("utf-8", "replace")
        return (
            False,
            response.status in RETRY_STATUSES,
            f"HTTP {response.status} {reply!r}",
        )

    def _drop_connection(self) -> None:
        # In a forked child this closes the child's copy of the socket only:
        # the parent's connection stays open.
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here; :data:`True`.

        :param timeout_millis: unused (OpenTelemetry's exporter interface
            counts in milliseconds)
        """
        return True

    def stop_retrying(self) -> None:
        """Give every upload one more attempt at most (the service stops)."""
        self._stop_retrying.set()

    def shutdown(self) -> None:
        """Stop retrying and close the connection; idempotent.

        Batches exported afterwards fail.
        """
        self._stop_retrying.set()
        self._closed = True
        self._drop_connection()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class OTLPReporter(SpanExporter):
    """Send spans to an OpenTelemetry Collector (or Jaeger, Tempo) over OTLP/HTTP.

    A thin wrapper around ``opentelemetry-exporter-otlp-proto-http``'s
    ``OTLPSpanExporter`` (install divak with the ``otlp`` extra), which
    encodes protobuf and retries transient failures with backoff itself.
    The :class:`~divak.export.queue.SpanQueue` in front of it counts the
    spans.  The OpenTelemetry specification deprecated the Zipkin exporter,
    so this is the reporter to use when the backend speaks OTLP.

    Failures are logged as :class:`ZipkinReporter` logs them: one WARNING
    line at most twice a minute, with the reason and the number of
    failures not logged, never with a traceback.  The exporter answers a
    failed batch with ``FAILURE`` and logs its own lines about it (one per
    attempt); those lines are kept out of the log while this reporter's
    export runs (:func:`divak.logs.ratelimit.muffled`), and the last of
    them is the reason its WARNING gives.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0) -> None:
        """Build the OTLP exporter; nothing is sent before the first batch.

        :param endpoint: the collector's traces endpoint, e.g.
            ``http://otel-collector:4318/v1/traces``; :data:`None` reads
            ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` and falls back to
            ``http://localhost:4318/v1/traces``
        :param timeout: seconds per upload (retries included)
        :raises ImportError: when ``opentelemetry-exporter-otlp-proto-http``
            is not installed
        """
        # The otlp extra is optional: its package is imported when an OTLP
        # reporter is made, never by "import divak".
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        #: The URL spans are sent to (:class:`str`).
        self.endpoint = endpoint or otlp_endpoint("traces")
        self.exporter = OTLPSpanExporter(endpoint=self.endpoint, timeout=timeout)
        self._complain = RateLimitedLog(logger)
        # The exporter logs on the logger of its module.
        self._exporter_logger = type(self.exporter).__module__

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Upload *spans*; never raises.

        Blocks the calling thread (the :class:`~divak.export.queue.SpanQueue`
        worker) for up to *timeout* seconds, retries included.  A failure
        is logged rate-limited (see the class).

        :param spans: the batch
        :returns: ``SUCCESS`` when the collector accepted it, else
            ``FAILURE``
        """
        with muffled(self._exporter_logger) as said:
            try:
                result = self.exporter.export(spans)
            except Exception as error:  # noqa: BLE001 - export must never raise
                result, reason = SpanExportResult.FAILURE, describe_error(error)
            else:
                reason = said.message or "the collector did not accept them"
        if result is not SpanExportResult.SUCCESS:
            self._complain(
                logging.WARNING,
                "cannot send %d spans to %s: %s",
                len(spans),
                self.endpoint,
                reason,
            )
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here; :data:`True`.

        :param timeout_millis: unused (OpenTelemetry's exporter interface
            counts in milliseconds)
        """
        return True

    def shutdown(self) -> None:
        """Close the exporter's HTTP session."""
        self.exporter.shutdown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r})"


class LoggingReporter(SpanExporter):
    """Write one INFO line per finished span to the ``divak.spans`` logger.

    The line holds the service name, the span name, its kind, trace id,
    span id, parent span id and duration in milliseconds.  Handy in
    development; it is what an application reports to when no reporter
    was added and ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` is not set.
    """

    def __init__(self, logger_name: str = "divak.spans") -> None:
        """Write to the logger named *logger_name*.

        :param logger_name: e.g. ``"divak.spans"``
        """
        self.logger = logging.getLogger(logger_name)

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Log *spans*, one line each."""
        if not self.logger.isEnabledFor(logging.INFO):
            return SpanExportResult.SUCCESS
        for span in spans:
            context = span.get_span_context()
            if context is None:
                continue
            parent = span.parent
            self.logger.info(
                "%s %s %s trace_id=%s span_id=%s parent_id=%s duration=%.3fms",
                span.resource.attributes.get("service.name", ""),
                span.kind.name,
                span.name,
                trace.format_trace_id(context.trace_id),
                trace.format_span_id(context.span_id),
                trace.format_span_id(parent.span_id) if parent else "-",
                ((span.end_time or 0) - (span.start_time or 0)) / 1e6,
            )
        return SpanExportResult.SUCCESS


def _zipkin() -> SpanExporter:
    return ZipkinReporter(
        timeout=milliseconds_variable("OTEL_EXPORTER_ZIPKIN_TIMEOUT", 10.0)
    )


def _otlp() -> SpanExporter:
    protocol = (
        env_value("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env_value("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol != "http/protobuf":
        warn_once(
            "otlp-protocol",
            "OTLP protocol %r is not supported, using http/protobuf",
            protocol,
        )
    timeout = milliseconds_variable(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        milliseconds_variable("OTEL_EXPORTER_OTLP_TIMEOUT", 10.0),
    )
    # The exporter reads the endpoint, headers, compression and
    # certificates from the OTEL_EXPORTER_OTLP_* variables itself.
    return OTLPReporter(timeout=timeout)


def _console() -> SpanExporter:
    return ConsoleSpanExporter()


_EXPORTERS: dict[str, typing.Callable[[], SpanExporter]] = {
    "zipkin": _zipkin,
    "otlp": _otlp,
    "console": _console,
}


def reporters_from_env() -> list[SpanExporter]:
    """The reporters ``OTEL_TRACES_EXPORTER`` names.

    A comma-separated list of ``zipkin`` (:class:`~divak.ZipkinReporter`
    to ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` with ``OTEL_EXPORTER_ZIPKIN_TIMEOUT``),
    ``otlp`` (:class:`~divak.OTLPReporter`, configured by the
    ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_EXPORTER_OTLP_TRACES_*`` endpoint,
    headers and timeout variables; needs the ``otlp`` extra), ``console``
    (the OpenTelemetry SDK's ``ConsoleSpanExporter``, JSON on standard
    output) and ``none`` (no reporter: spans are made, and exported
    nowhere).  Timeouts are in milliseconds, as the specification says.

    Any other name is looked up, as OpenTelemetry's SDK does, among the
    ``opentelemetry_traces_exporter`` entry points of the installed
    packages (``zipkin_json`` from opentelemetry-exporter-zipkin-json,
    ``otlp_proto_http`` from opentelemetry-exporter-otlp-proto-http, a
    vendor's exporter): the class registered there is made with no
    arguments (it reads its own variables) and runs behind a
    :class:`~divak.export.queue.SpanQueue` like divak's reporters.
    divak's built-in names win over entry points of the same name.

    When the variable is not set: ``zipkin`` if
    ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` is set, else ``otlp`` if an OTLP
    endpoint variable is set, else a :class:`~divak.LoggingReporter` (see
    :func:`warn_if_spans_go_to_log`).  A name found nowhere, ``otlp``
    without its package, or an entry point that fails to load or is not a
    ``SpanExporter`` is logged once as a WARNING and skipped.  A
    :class:`~divak.Recorder` uses these only when the application added no
    reporter in code, and only in a provider divak made
    (:func:`divak.tracing.provider.application_reporters`).

    :returns: new reporter instances, in the listed order
    """
    value = env_value("OTEL_TRACES_EXPORTER").lower()
    if not value:
        if env_value("OTEL_EXPORTER_ZIPKIN_ENDPOINT"):
            value = "zipkin"
        elif env_value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env_value(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ):
            value = "otlp"
        else:
            return [LoggingReporter()]
    factories: dict[str, typing.Callable[[], typing.Any]] = dict(_EXPORTERS)
    listed = {name.strip() for name in value.split(",")} - {"", "none"}
    if not listed <= factories.keys():
        factories.update(
            entry_point_factories("opentelemetry_traces_exporter", exclude=_EXPORTERS)
        )
    result: list[SpanExporter] = []
    for name in names_variable("OTEL_TRACES_EXPORTER", value, factories):
        try:
            reporter = factories[name]()
        except ImportError as error:
            warn_once(
                "exporter-import:" + name,
                "cannot export spans with %r: %s (install divak[%s])",
                name,
                error,
                name,
            )
            continue
        if reporter is None:
            continue  # an entry point that failed: logged by its factory
        if not isinstance(reporter, SpanExporter):
            warn_once(
                "exporter-type:" + name,
                "ignoring %r in OTEL_TRACES_EXPORTER: its entry point made a %s, "
                "not a SpanExporter",
                name,
                type(reporter).__name__,
            )
            continue
        result.append(reporter)
    return result


def _exporter_configured() -> bool:
    return any(
        env_value(name)
        for name in (
            "OTEL_TRACES_EXPORTER",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    )


def warn_if_spans_go_to_log(reporters: typing.Sequence[SpanExporter]) -> bool:
    """Log one WARNING per process when an application's spans will only be logged.

    That is when the application added no reporter in code (*reporters*
    is empty) and none of ``OTEL_TRACES_EXPORTER``,
    ``OTEL_EXPORTER_ZIPKIN_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set.  The message names the
    variable to set.  :class:`divak.Runner` calls it at start-up.

    :param reporters: the reporters the application was given in code
    :returns: :data:`True` when the spans go to the log
    """
    if reporters or _exporter_configured():
        return False
    warn_once(
        "no-exporter",
        "no reporter configured: spans go to the log (logger divak.spans); "
        "set OTEL_EXPORTER_ZIPKIN_ENDPOINT (or OTEL_TRACES_EXPORTER) "
        "to export them",
    )
    return True
