"""Reporters: where finished spans go.

A reporter is an OpenTelemetry
:class:`~opentelemetry.sdk.trace.export.SpanExporter`.  An application runs
each of its reporters behind its own :class:`~divak.export.SpanQueue`, a
bounded queue
with a background thread, so exporting never happens on the IOLoop and a
slow or dead collector costs the service nothing but the spans it drops
(counted and reported).  Any OpenTelemetry exporter can be added as a
reporter, too.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
import time
import typing

import requests
from opentelemetry import trace
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from divak.export import describe_error
from divak.propagation._common import B3_DEBUG_ATTRIBUTE

__all__ = [
    "B3_DEBUG_ATTRIBUTE",
    "LoggingReporter",
    "OTLPReporter",
    "ZipkinReporter",
]

logger = logging.getLogger(__name__)

_ENDPOINT_ENV = "OTEL_EXPORTER_ZIPKIN_ENDPOINT"
_DEFAULT_ENDPOINT = "http://localhost:9411/api/v2/spans"


@functools.lru_cache(maxsize=1024)
def _endpoint(address: str, port: typing.Any) -> dict[str, typing.Any]:
    # Cached: a service sees few peers, and parsing an address is slow.  The
    # dict is only ever serialised, never changed.
    endpoint: dict[str, typing.Any] = {}
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        endpoint["serviceName"] = address
    else:
        endpoint["ipv4" if ip.version == 4 else "ipv6"] = str(ip)
    if isinstance(port, int):
        endpoint["port"] = port
    return endpoint


class ZipkinV2Encoder(JsonV2Encoder):
    """OpenTelemetry's Zipkin v2 JSON encoder with its spec deviations fixed.

    * ``kind`` is omitted for INTERNAL spans (the exporter writes ``null``,
      which the Zipkin v2 ``Span`` schema rejects);
    * ``debug`` is written only for spans of a B3 debug trace (the exporter
      marks every sampled span as debug, which makes Zipkin bypass its own
      sampling);
    * CLIENT spans get a ``remoteEndpoint`` from ``server.address`` and
      ``server.port``, SERVER spans from ``client.address``;
    * ``duration`` is at least one microsecond, as the schema requires.

    The output is the library's, but the tags of the resource and of the
    instrumentation scope are computed once per resource and scope rather
    than for every span, and plain string and number attributes take a
    short path: encoding runs on the export thread, which shares the CPU
    with the IOLoop.
    """

    def __init__(self, max_tag_value_length: int | None = None) -> None:
        super().__init__(max_tag_value_length)  # type: ignore[arg-type]
        self._constant_tags: dict[tuple[int, int], tuple[typing.Any, ...]] = {}

    def _extract_tags_from_dict(self, tags_dict: typing.Any) -> dict[str, str]:
        if not tags_dict:
            return {}
        limit = self.max_tag_value_length
        if not limit or limit <= 0:
            limit = None
        tags: dict[str, str] = {}
        rest: dict[str, typing.Any] = {}
        for key, value in tags_dict.items():
            kind = type(value)
            if kind is str:
                tags[key] = value[:limit]
            elif kind is int or kind is float:
                tags[key] = str(value)[:limit]
            else:
                rest[key] = value
                tags[key] = ""  # keeps the key's position
        if rest:
            converted = super()._extract_tags_from_dict(rest)
            for key in rest:
                if key in converted:
                    tags[key] = converted[key]
                else:
                    del tags[key]
        return tags

    def _extract_tags_from_span(self, span: ReadableSpan) -> dict[str, str]:
        resource = span.resource
        scope = span.instrumentation_scope
        cache_key = (id(resource), id(scope))
        cached = self._constant_tags.get(cache_key)
        # The cache holds the resource and scope, so their ids stay unique.
        if cached is None or cached[0] is not resource or cached[1] is not scope:
            constant: dict[str, str] = {}
            if resource:
                constant.update(self._extract_tags_from_dict(resource.attributes))
            if scope is not None:
                constant.update(
                    {
                        "otel.library.name": scope.name,
                        "otel.library.version": scope.version,  # type: ignore[dict-item]
                        "otel.scope.name": scope.name,
                        "otel.scope.version": scope.version,  # type: ignore[dict-item]
                    }
                )
            if len(self._constant_tags) >= 64:
                self._constant_tags.clear()
            cached = (resource, scope, constant)
            self._constant_tags[cache_key] = cached
        tags = self._extract_tags_from_dict(span.attributes)
        tags.update(cached[2])
        status = span.status
        if status.status_code is not StatusCode.UNSET:
            tags["otel.status_code"] = status.status_code.name
            if status.status_code is StatusCode.ERROR:
                tags["error"] = status.description or ""
        if span.dropped_attributes:
            tags["otel.dropped_attributes_count"] = str(span.dropped_attributes)
        if span.dropped_events:
            tags["otel.dropped_events_count"] = str(span.dropped_events)
        if span.dropped_links:
            tags["otel.dropped_links_count"] = str(span.dropped_links)
        return tags

    def _encode_span(self, span: ReadableSpan, encoded_local_endpoint: dict) -> dict:
        encoded = super()._encode_span(span, encoded_local_endpoint)
        if encoded.get("kind") is None:
            encoded.pop("kind", None)
        encoded.pop("debug", None)
        attributes = span.attributes or {}
        tags = encoded.get("tags")
        if tags is not None and B3_DEBUG_ATTRIBUTE in tags:
            del tags[B3_DEBUG_ATTRIBUTE]
        if attributes.get(B3_DEBUG_ATTRIBUTE):
            encoded["debug"] = True
        if span.kind is trace.SpanKind.CLIENT and "server.address" in attributes:
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["server.address"]), attributes.get("server.port")
            )
        elif span.kind is trace.SpanKind.SERVER and "client.address" in attributes:
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["client.address"]), attributes.get("client.port")
            )
        if encoded.get("duration", 1) < 1:
            encoded["duration"] = 1
        return encoded


class _Complaints:
    """One log line per *interval* seconds at most, whatever goes wrong."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last = -interval
        self._lock = threading.Lock()

    def __call__(self, message: str, *args: typing.Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                return
            self._last = now
        logger.warning(message, *args)


#: HTTP statuses after which an upload is tried again (the collector is
#: overloaded, restarting or behind a proxy that has no backend yet).
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ZipkinReporter(ZipkinExporter):
    """Send spans to a Zipkin collector as Zipkin v2 JSON.

    Built on ``opentelemetry-exporter-zipkin-json`` with the encoding fixed
    to validate against the Zipkin v2 API (see :class:`ZipkinV2Encoder`).
    ``localEndpoint.serviceName`` is the application's service name.

    * Uploads carry ``b3: 0`` so that a traced collector (or proxy) does
      not trace them, and run with OpenTelemetry's "suppress
      instrumentation" flag set (by :class:`SpanQueue`), so an instrumented
      HTTP library never makes spans of them.
    * A collector that is briefly down is retried: when the connection is
      refused or the collector answers 429, 502, 503 or 504, the upload is
      tried again after 0.5 s, 1 s, 2 s... (at most 5 s apart) for up to
      *retry_for* seconds in all; then the batch is dropped.  A read
      timeout is not retried (the collector may have stored the batch).
      While a batch is being retried new spans wait in the bounded
      :class:`SpanQueue`, which drops and counts what does not fit.
    * Failures are logged as one WARNING line at most once a minute, never
      with a traceback.

    :param url: the collector, either its API base
        (``http://zipkin:9411/api/v2``, as divak-tornado writes it) or the
        full spans endpoint (``http://zipkin:9411/api/v2/spans``).
        :data:`None` reads the ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` environment
        variable, then falls back to ``http://localhost:9411/api/v2/spans``.
    :param timeout: seconds to wait for the collector per upload
    :param retry_for: seconds to keep retrying one batch; ``0`` disables
        retries

    .. attribute:: exported_spans

       Spans the collector accepted (:class:`int`).

    .. attribute:: failed_spans

       Spans whose upload failed, after retries (:class:`int`).
    """

    def __init__(
        self, url: str | None = None, *, timeout: float = 5.0, retry_for: float = 10.0
    ) -> None:
        if url is None:
            url = os.environ.get(_ENDPOINT_ENV) or _DEFAULT_ENDPOINT
        url = url.rstrip("/")
        if url.endswith("/api/v2"):
            url += "/spans"
        session = requests.Session()
        session.headers["b3"] = "0"
        super().__init__(endpoint=url, timeout=timeout, session=session)  # type: ignore[arg-type]
        self.encoder = ZipkinV2Encoder(self.encoder.max_tag_value_length)
        self.url = url
        self.retry_for = retry_for
        self.exported_spans = 0
        self.failed_spans = 0
        self._complain = _Complaints()
        self._stop_retrying = threading.Event()
        self._lock = threading.Lock()

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Upload *spans*, retrying as described above; never raises.

        Blocks the calling thread (the :class:`SpanQueue` worker) for up to
        *retry_for* seconds plus one *timeout*.
        """
        if self._closed or not spans:
            return SpanExportResult.FAILURE if spans else SpanExportResult.SUCCESS
        service_name = spans[0].resource.attributes.get("service.name")
        if service_name:
            self.local_node.service_name = service_name
        try:
            body = self.encoder.serialize(spans, self.local_node)
        except Exception as error:  # noqa: BLE001 - a bad span must not kill export
            self._complain("cannot encode %d spans for Zipkin: %r", len(spans), error)
            return self._count(spans, SpanExportResult.FAILURE)
        deadline = time.monotonic() + self.retry_for
        delay = 0.5
        while True:
            retry = False
            try:
                response = self.session.post(self.url, data=body, timeout=self.timeout)
            except requests.ConnectionError as error:
                retry, problem = True, describe_error(error)
            except requests.RequestException as error:
                problem = describe_error(error)
            else:
                if response.status_code < 300:
                    return self._count(spans, SpanExportResult.SUCCESS)
                retry = response.status_code in _RETRY_STATUSES
                problem = f"HTTP {response.status_code} {response.text[:200]!r}"
            if (
                not retry
                or time.monotonic() + delay > deadline
                or self._stop_retrying.wait(delay)
            ):
                self._complain(
                    "cannot send %d spans to Zipkin at %s: %s",
                    len(spans),
                    self.url,
                    problem,
                )
                return self._count(spans, SpanExportResult.FAILURE)
            delay = min(delay * 2, 5.0)

    def _count(
        self, spans: typing.Sequence[ReadableSpan], result: SpanExportResult
    ) -> SpanExportResult:
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported_spans += len(spans)
            else:
                self.failed_spans += len(spans)
        return result

    def stop_retrying(self) -> None:
        """Give every upload one more attempt at most (the service stops)."""
        self._stop_retrying.set()

    def shutdown(self) -> None:
        """Stop retrying and close the HTTP session; idempotent."""
        self._stop_retrying.set()
        if not self._closed:
            self.session.close()
            self._closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class OTLPReporter(SpanExporter):
    """Send spans to an OpenTelemetry Collector (or Jaeger, Tempo) over OTLP/HTTP.

    A thin wrapper around ``opentelemetry-exporter-otlp-proto-http``'s
    ``OTLPSpanExporter`` (install divak with the ``otlp`` extra), which
    encodes protobuf and retries transient failures with backoff itself.
    divak adds the counters and the rate-limited, one-line error log that
    :class:`ZipkinReporter` has.  The OpenTelemetry specification
    deprecated the Zipkin exporter, so this is the reporter to use when the
    backend speaks OTLP.

    :param endpoint: the collector's traces endpoint, e.g.
        ``http://otel-collector:4318/v1/traces``; :data:`None` lets the
        exporter read ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` and fall back to
        ``http://localhost:4318/v1/traces``
    :param timeout: seconds per upload (retries included)
    :raises ImportError: when ``opentelemetry-exporter-otlp-proto-http`` is
        not installed

    .. attribute:: exported_spans

       Spans the collector accepted (:class:`int`).

    .. attribute:: failed_spans

       Spans whose upload failed (:class:`int`).
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        self.exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
        self.exported_spans = 0
        self.failed_spans = 0
        self._complain = _Complaints()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """The URL spans are sent to."""
        return str(getattr(self.exporter, "_endpoint", ""))

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Upload *spans*; count them; never raises."""
        try:
            result = self.exporter.export(spans)
        except Exception as error:  # noqa: BLE001 - export must never raise
            self._complain(
                "cannot send %d spans to %s: %s",
                len(spans),
                self.endpoint,
                describe_error(error),
            )
            result = SpanExportResult.FAILURE
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported_spans += len(spans)
            else:
                self.failed_spans += len(spans)
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here; :data:`True`."""
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
        self.logger = logging.getLogger(logger_name)

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Log *spans*, one line each."""
        if not self.logger.isEnabledFor(logging.INFO):
            return SpanExportResult.SUCCESS
        for span in spans:
            context = span.get_span_context()
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
